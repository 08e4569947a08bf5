"""``clconv conformance``: does this device compute every op correctly?

Runs the shipped conformance cases (configs/conformance.yaml) through every op,
algorithm and shipped configuration on one device (or all of them), prints a
report per device and exits non-zero when any run fails.  ``--memcheck`` runs
them under the Oclgrind simulator's checks instead.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional

from clconv import conformance, memcheck
from clconv.commands import json_output
from clconv.cli import UsageError
from clconv.commands.devices import _size, format_table
from clconv.device_select import DeviceInfo, devices, find_device

HELP = "check every op, algorithm and configuration on a device against the float64 reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--device", help="P:D or P, cpu, gpu, accelerator, or a substring of "
                                        "one device's name (default: CLCONV_DEVICE or "
                                        "clconv's choice)")
    where.add_argument("--all-devices", action="store_true", help="every OpenCL device in turn")
    parser.add_argument("--quick", action="store_true",
                        help="a small representative subset (under a minute on a CPU)")
    json_output.add_json_argument(parser, "the full report")
    parser.add_argument("--memcheck", action="store_true",
                        help="run on the Oclgrind simulator with its out-of-bounds, data-race "
                             "and uninitialised-read checks; any report fails (one process "
                             "per run: slow, combine with --quick or --cases)")
    parser.add_argument("--cases", metavar="PATTERNS",
                        help="only the cases matching these comma-separated globs "
                             "(see --list)")
    parser.add_argument("--dtypes", metavar="LIST",
                        help=f"only these dtypes (comma-separated; default all of "
                             f"{','.join(conformance.DTYPES)})")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (a name or a .py file) and call its register(), "
                             "which may add kernel launchers; for kernel developers")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="--memcheck processes at a time (default: the CPU count)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")


def _split(text: Optional[str]) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _targets(args: argparse.Namespace) -> list[DeviceInfo]:
    if args.memcheck:
        if args.all_devices:
            raise UsageError("--memcheck runs on the Oclgrind device only; drop --all-devices")
        if args.device is not None:
            info = find_device(args.device)[1]
            if info.kind != "simulator":
                raise UsageError(f"--memcheck needs the Oclgrind device, not {info.label}")
            return [info]
        simulators = [d for d in devices() if d.kind == "simulator"]
        if not simulators:
            raise UsageError("--memcheck needs the Oclgrind simulator, which is not installed "
                             "(Debian: apt install oclgrind, then register "
                             "liboclgrind-rt-icd.so in /etc/OpenCL/vendors)")
        return simulators[:1]
    if args.all_devices:
        found = devices()
        if not found:
            raise UsageError("no OpenCL device found")
        return found
    return [find_device(args.device)[1]]


def _list_cases(cases: list[conformance.Case]) -> None:
    rows = [[c.name, c.op, c.data_format, ",".join(c.dtypes),
             " ".join(t for t, on in (("quick", c.quick), ("large", c.large)) if on)]
            for c in cases]
    print(format_table(rows, ["case", "op", "format", "dtypes", "tags"]))


def run(args: argparse.Namespace) -> int:
    # Files, not names, for the --memcheck workers: they survive another cwd and sys.path.
    plugin_files = [conformance.load_plugin(p) for p in args.plugin]
    all_cases = conformance.load_cases()
    if args.list:
        _list_cases(all_cases)
        return 0
    dtypes = _split(args.dtypes) or list(conformance.DTYPES)
    unknown = sorted(set(dtypes) - set(conformance.DTYPES))
    if unknown:
        raise UsageError(f"--dtypes {','.join(unknown)}: expected some of "
                         f"{','.join(conformance.DTYPES)}")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: expected at least 1")
    cases = conformance.select_cases(all_cases, args.quick, _split(args.cases))
    targets = _targets(args)
    json_output.check_target(args.json)  # before a long run, not after it
    with json_output.report_stream(args.json):
        return _run(args, targets, cases, all_cases, dtypes, plugin_files)


def _run(args, targets, cases, all_cases, dtypes, plugin_files) -> int:

    reports = []
    for info in targets:
        runs = conformance.plan(info, cases, dtypes)
        start = time.perf_counter()
        with _Progress(len(runs), info) as progress:
            if args.memcheck:
                results = memcheck.run_memcheck(info, runs, plugin_files, args.jobs, progress)
            else:
                results = conformance.run_in_process(info, runs, progress)
        report = conformance.device_report(info, results, time.perf_counter() - start, cases,
                                           args.quick, args.memcheck)
        report["cases_total"] = len(all_cases)
        reports.append(report)
        print(format_report(report), flush=True)
    failed = sum(r["failed"] for r in reports)
    if len(reports) > 1:
        print("\nSummary")
        for r in reports:
            print(f"  {_verdict(r)}  {r['device']['spec']} {r['device']['name']} "
                  f"({r['device']['driver_version']}): {r['passed']} passed, {r['failed']} "
                  f"failed, {r['skipped']} skipped; worst relative error "
                  f"{_error(r['worst_rel_error'])}; {r['seconds']:.1f} s")
    json_output.write(args.json, "conformance", {"passed": failed == 0, "devices": reports})
    return 1 if failed else 0


class _Progress:
    """A tqdm bar on stderr while a device runs (silent when stderr is not a terminal)."""

    def __init__(self, total: int, info: DeviceInfo) -> None:
        from tqdm import tqdm

        self.failed = 0
        self.bar = tqdm(total=total, desc=f"{info.spec} {info.name[:24]}", unit="run",
                        leave=False, disable=None)

    def __call__(self, result: dict) -> None:
        if result["status"] == "failed":
            self.failed += 1
            self.bar.set_postfix(failed=self.failed)
        self.bar.update(1)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _verdict(report: dict) -> str:
    if report["failed"]:
        return "FAIL"
    return "PASS" if report["passed"] else "SKIP"  # SKIP: every run was skipped


def _error(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1e}"


def format_report(report: dict) -> str:
    """The per-device report: device, capabilities, one row per op/algorithm/configuration,
    skip reasons, failures, verdict."""
    d = report["device"]
    subset = "--quick subset, " if report["quick"] else ""
    lines = [
        "",
        f"Device {d['spec']}: {d['name']} ({d['platform']})"
        + ("  [Oclgrind memcheck]" if report["memcheck"] else ""),
        f"  driver        {d['driver_version']}; {d['device_version']}; {d['opencl_c_version']}",
        (f"  capabilities  {d['kind']}, {d['compute_units']} compute units, max work-group "
         f"{d['max_work_group_size']}, local memory {_size(d['local_mem_size'])}, max buffer "
         f"{_size(d['max_mem_alloc_size'])}, fp64 {'yes' if d['fp64'] else 'no'}, fp16 "
         f"{'yes' if d['fp16'] else 'no'}"),
        (f"  cases         {len(report['cases'])} of {report.get('cases_total', '?')} "
         f"({subset}each per dtype, op variant and configuration)"),
        "",
    ]
    rows = []
    for row in report["rows"]:
        config = row["config_label"]
        if row["config"]:
            config += f": {conformance.format_config(row['config'])}"
        rows.append([row["op"], row["algorithm"], config, str(row["passed"]),
                     str(row["failed"]), str(row["skipped"]), _error(row["worst_rel_error"])])
    lines.append(format_table(rows, ["op", "algorithm", "configuration", "passed", "failed",
                                     "skipped", "worst rel. error"]))
    reasons: dict[str, int] = {}
    for row in report["rows"]:
        for reason, count in row["skip_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    if reasons:
        lines.append("")
        lines.append("Skipped: " + "; ".join(f"{count} x {reason}" for reason, count
                                             in sorted(reasons.items(), key=lambda i: -i[1])))
    failures = [r for r in report["runs"] if r["status"] == "failed"]
    if failures:
        lines.append("")
        lines.append(f"Failures ({len(failures)}):")
        for r in failures:
            config = r["config_label"]
            if r["config"]:
                config += f": {conformance.format_config(r['config'])}"
            lines.append(f"  {r['op']} {r['algorithm']} [{config}] case {r['case']} "
                         f"{r['dtype']}: {r['reason']}")
            for error in r.get("memcheck", [])[:3]:
                lines.extend("      " + line for line in error["details"].splitlines())
    lines.append("")
    lines.append(f"{_verdict(report)} {d['spec']} {d['name']}: {report['passed']} passed, "
                 f"{report['failed']} failed, {report['skipped']} skipped; worst relative error "
                 f"{_error(report['worst_rel_error'])}; {report['seconds']:.1f} s")
    return "\n".join(lines)
