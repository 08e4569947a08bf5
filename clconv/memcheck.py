"""Conformance runs under the Oclgrind simulator's checks.

Every run gets a process of its own, ``python -m clconv.memcheck JOB``, with
OCLGRIND_LOG, OCLGRIND_DATA_RACES=1 and OCLGRIND_UNINITIALIZED=1 in its
environment: Oclgrind reads its settings only when its runtime loads, and
Oclgrind 21.10's uninitialised-value checker reports false positives once a
process reuses the address of a released buffer (measured: the same via_forward
run twice in one process is flagged the second time, never the first).  Any
out-of-bounds access, data race or uninitialised read in the log fails the
run, naming the kernel and the configuration.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from clconv import conformance
from clconv.device_select import DeviceInfo, runtime

RESULT_MARK = "CLCONV-CONFORMANCE-RESULT "
CHECKS_ENV = {"OCLGRIND_DATA_RACES": "1", "OCLGRIND_UNINITIALIZED": "1"}


def _job(info: DeviceInfo, run: conformance.Run, plugins: list[str]) -> dict:
    return {"device": info.spec, "case": run.case.name, "dtype": run.dtype,
            "op": run.case.op, "algorithm": run.variant.algorithm,
            "config_label": run.config_label, "config": run.config, "plugins": plugins}


_ADDRESS = re.compile(r"\s+(?:at|to|from)\s+(?:\w+\s+)?memory address 0x[0-9a-fA-F]+")


def parse_oclgrind_log(text: str) -> list[dict]:
    """Oclgrind's reports: each one's kind (its first line without the address), the
    kernel it names and its first lines.  Oclgrind's own notes ("1000 errors
    generated - suppressing further errors") are not reports."""
    errors = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.rstrip() for line in block.strip().splitlines() if line.strip()]
        if not lines or lines[0].startswith("Oclgrind:"):
            continue
        kernel = next((m.group(1) for m in map(re.compile(r"Kernel:\s*(\S+)").search, lines)
                       if m), None)
        errors.append({"error": _ADDRESS.sub("", lines[0].strip()), "kernel": kernel,
                       "details": "\n".join(lines[:6])})
    return errors


def memcheck_summary(errors: list[dict], capped: bool = False) -> str:
    """One line: how many reports of which kind, in which kernels."""
    kinds: dict[str, int] = {}
    for e in errors:
        kinds[e["error"]] = kinds.get(e["error"], 0) + 1
    kernels = sorted({e["kernel"] for e in errors if e["kernel"]}) or ["?"]
    total = f"{len(errors)}{'+' if capped else ''}"
    return (f"Oclgrind reported {total} problem(s) in kernel {', '.join(kernels)}: "
            + "; ".join(f"{count} x {kind}" for kind, count in kinds.items()))


def _run_one(info: DeviceInfo, run: conformance.Run, plugins: list[str], folder: str,
                  index: int, timeout: float) -> dict:
    log = Path(folder) / f"run-{index}.log"
    env = dict(os.environ, OCLGRIND_LOG=str(log), **CHECKS_ENV)
    command = [sys.executable, "-m", "clconv.memcheck", json.dumps(_job(info, run, plugins))]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return conformance.result(run, "failed",
                                  f"timed out after {timeout:.0f} s under Oclgrind")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)), None)
    if line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        result = conformance.result(run, "failed", f"worker exited with status "
                                                   f"{proc.returncode}: {' | '.join(tail)}")
    else:
        result = json.loads(line[len(RESULT_MARK):])
    log_text = log.read_text() if log.exists() else ""
    errors = parse_oclgrind_log(log_text)
    if log_text.strip() and not errors:  # a log with only notes: still worth failing on
        errors = [{"error": log_text.strip().splitlines()[0], "kernel": None,
                   "details": log_text.strip()[:2000]}]
    if errors:
        memcheck = memcheck_summary(errors, "suppressing further errors" in log_text)
        # One example of each kind is enough for a report (Oclgrind stops at 1000).
        examples = {}
        for e in errors:
            examples.setdefault(e["error"], e)
        result["memcheck"] = list(examples.values())
        result["memcheck_reports"] = len(errors)
        result["reason"] = memcheck if result["status"] != "failed" else \
            f"{memcheck}; and {result['reason']}"
        result["status"] = "failed"
    return result


def run_memcheck(info: DeviceInfo, runs: list[conformance.Run], plugins: list[str],
                 jobs: int = 1, progress: Optional[Callable[[dict], None]] = None,
                 timeout: float = 1800.0) -> list[dict]:
    """Execute every run in its own process with Oclgrind's checks on; any report of
    an out-of-bounds access, data race or uninitialised read fails the run."""
    results: list[Optional[dict]] = [None] * len(runs)
    with tempfile.TemporaryDirectory(prefix="clconv-memcheck-") as folder, \
            concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {}
        for index, run in enumerate(runs):
            if run.skip is not None:
                results[index] = conformance.result(run, "skipped", run.skip)
                if progress is not None:
                    progress(results[index])
            else:
                futures[pool.submit(_run_one, info, run, plugins, folder, index,
                                    timeout)] = index
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
            if progress is not None:
                progress(results[futures[future]])
    return results  # type: ignore[return-value]


def _worker(job: dict) -> dict:
    """One run in this process (the memcheck child)."""
    for plugin in job["plugins"]:
        conformance.load_plugin(plugin)
    case = next(c for c in conformance.load_cases() if c.name == job["case"])
    rt = runtime(job["device"])
    variant = next(v for v in conformance.variants_for(case.op, rt.info)
                   if v.algorithm == job["algorithm"])
    run = conformance.Run(case, job["dtype"], variant, job["config_label"], job["config"])
    result = conformance.execute(rt, run, conformance.Operands(rt, case, job["dtype"]))
    rt.queue.finish()
    return result


if __name__ == "__main__":
    print(RESULT_MARK + json.dumps(_worker(json.loads(sys.argv[1]))), flush=True)
