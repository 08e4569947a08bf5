"""``clconv bench``: time a suite (or one case) on a device, beside TensorFlow and
PyTorch when they are installed, and print useful GFLOP/s and peer/clconv ratios."""

from __future__ import annotations

import argparse
import math
import platform
from typing import Optional

from clconv import cpu_vectors, host_cpu, overhead, worker_affinity
from clconv.commands import json_output
from clconv.bench import (
    AGREEMENT_RTOL,
    MIN_RUNS,
    PEERS,
    ROUND_WARM_UP_S,
    ROUNDS,
    SELF_PEERS,
    BenchCase,
    CaseResult,
    SuiteError,
    all_algorithms,
    geometric_mean,
    load_peers,
    machine_line,
    op_algorithms,
    phase_breakdown,
    run_case,
    tuning_database_line,
    versions,
)
from clconv.cli import UsageError, add_device_argument
from clconv.commands.case_args import OP_LABELS, add_case_arguments, cases_from_args
from clconv.commands.devices import format_table
from clconv.device_select import find_device
from clconv.gemm import tile_rule

HELP = "time ops on a benchmark suite (or one case), side by side with TensorFlow/PyTorch"

# Each contender (clconv device-resident, clconv end to end, each peer) takes ROUNDS
# turns of up to REPEAT runs, a turn ending after MAX_SECONDS of runs (at least
# bench.MIN_RUNS over all rounds).  On a 2-core CPU with PoCL this keeps the shipped
# suite to about a minute with the GEMM kernels and a few minutes with the direct
# ones (1-5 s a call on the large cases).
DEFAULT_REPEAT = 10
DEFAULT_MAX_SECONDS = 0.5
# The loss past which the report lists a case as slower with the tuning database than
# without (issue 10's bound for `clconv autotune`).
TUNING_LOSS = 0.10
PEER_ALIASES = {"tensorflow": "tensorflow", "tf": "tensorflow", "torch": "torch",
                "pytorch": "torch", "untuned": "untuned"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_case_arguments(parser, "time")
    add_device_argument(parser)
    parser.add_argument("--rounds", type=int, default=ROUNDS, metavar="R",
                        help=f"turns each contender takes, in turn with the others; its time "
                             f"is the median of its best turn (default {ROUNDS})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="N",
                        help=f"timed runs per turn (default {DEFAULT_REPEAT})")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, metavar="S",
                        help=f"end a turn once its runs add up to S seconds, after at least "
                             f"{MIN_RUNS} runs over all turns (default {DEFAULT_MAX_SECONDS:g}; "
                             f"0: no cap)")
    parser.add_argument("--algorithm", choices=all_algorithms(),
                        help="force this algorithm on every case whose op has it (the others "
                             "keep the library's choice); default: the library's choice")
    parser.add_argument("--peers", default="auto", metavar="LIST",
                        help="auto (every installed one of tensorflow, torch), none, or a "
                             "comma-separated list of those and untuned: clconv itself "
                             "with no tuning database, timed in alternation with the tuned "
                             "runs, to see what `clconv autotune` gained (default auto)")
    json_output.add_json_argument(parser, "every figure")
    parser.add_argument("--phases", action="store_true",
                        help="after the table, where each case's time goes: each kernel "
                             "(e.g. filter packing, the GEMM), host side and launches")
    parser.add_argument("--overhead", action="store_true",
                        help="instead of the suite: the per-call time of small ops (the op, a "
                             "held plan, pre-packed filters, TensorFlow's eager op) against "
                             "one bare OpenCL launch + read-back, in the same run")


def _peer_names(text: str) -> list[str]:
    text = text.strip().lower()
    if text in ("auto", "all"):
        return list(PEERS)
    if text in ("none", ""):
        return []
    names = []
    for part in text.split(","):
        part = part.strip()
        if part not in PEER_ALIASES:
            raise UsageError(f"--peers: unknown peer {part!r}; expected auto, none or a list "
                             f"of {', '.join(PEERS + SELF_PEERS)}")
        names.append(PEER_ALIASES[part])
    return list(dict.fromkeys(names))


def _fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


class _Table:
    """Rows printed as each case completes, so the columns are sized up front."""

    def __init__(self, cases: list[BenchCase], peers: list) -> None:
        name_width = max(4, *(len(c.name) for c in cases))
        algorithm_width = max(9, *(len(a) for a in all_algorithms()))
        self.columns = [("case", name_width), ("op", 9), ("algorithm", algorithm_width),
                        ("GFLOP", 7), ("ms", 9), ("cores", 5), ("GFLOP/s", 7), ("e2e ms", 9)]
        for peer in peers:
            self.columns += [(f"{peer.label} ms", 9), (f"{peer.label}/clconv", 12)]
        self.columns.append(("check", 5))

    def _line(self, cells: list[str]) -> str:
        left = (0, 1, 2, len(self.columns) - 1)  # the text columns
        parts = [c.ljust(w) if i in left else c.rjust(w)
                 for i, (c, (_, w)) in enumerate(zip(cells, self.columns))]
        return "  ".join(parts).rstrip()

    def header(self) -> str:
        return (self._line([name for name, _ in self.columns]) + "\n"
                + "  ".join("-" * w for _, w in self.columns))

    def row(self, r: CaseResult, peers: list) -> str:
        cells = [r.case.name, OP_LABELS[r.case.op], r.algorithm or "-",
                 _fmt(r.flops / 1e9), _fmt(r.clconv_ms), _fmt(r.cores, 2),
                 _fmt(r.gflops), _fmt(r.end_to_end_ms)]
        checks = []
        for peer in peers:
            p = r.peers[peer.name]
            cells += [_fmt(p.ms) if p.error is None else "n/a", _fmt(p.ratio)]
            if p.error is not None:
                checks.append(f"{peer.label} n/a")
            elif not p.agrees:
                checks.append(f"{peer.label} DIFFERS ({p.max_rel_diff:.1e})")
        cells.append("; ".join(checks) or "ok")
        return self._line(cells)


def _pocl_workers(info) -> Optional[str]:
    """How PoCL's worker threads run (clconv.worker_affinity), on a PoCL device."""
    return worker_affinity.decision() if "Portable Computing Language" in info.platform else None


def _print_pocl_workers(info) -> None:
    line = _pocl_workers(info)
    if line:
        print(f"  PoCL worker threads: {line}")


def _tuning_losses(results: list[CaseResult]) -> str:
    """The cases the tuning database made more than TUNING_LOSS slower: tuned ms over
    untuned ms past 1 + TUNING_LOSS."""
    slower = [f"{r.case.name} ({_fmt(r.peers['untuned'].ratio)})" for r in results
              if r.peers["untuned"].ratio is not None
              and r.peers["untuned"].ratio * (1 + TUNING_LOSS) < 1]
    return (f"cases more than {TUNING_LOSS:.0%} slower tuned than untuned: "
            + (", ".join(slower) or "none"))


def _overhead(info, json_path) -> int:
    print(f"clconv bench --overhead on {info.label}")
    print(f"  machine: {machine_line()}")
    _print_pocl_workers(info)
    print(f"  timing {len(overhead.CASES)} cases in {overhead.ROUNDS} rounds (up to "
          f"{overhead.MAX_SECONDS:g} s per contender) ...", flush=True)
    bare, rows = overhead.measure(info.spec)
    print(f"  microseconds per call (the median of each one's best turn), numpy in and "
          f"numpy out but resident: pyopencl arrays; bare: one trivial kernel launch + "
          f"read-back = {bare:.0f} us")
    contenders = list(dict.fromkeys(k for r in rows for k in r.us))
    table = []
    for r in rows:
        cells = [r.name, OP_LABELS[r.op]] + [_fmt(r.us.get(k)) for k in contenders]
        cells.append(_fmt(r.us["op"] / bare))
        tf = r.us.get("tensorflow")
        cells.append(_fmt(tf / r.us["op"]) if tf else "-")
        table.append(cells)
    print(format_table(table, ["case", "op", *(f"{k} us" for k in contenders), "op/bare",
                               "tf/op"]))
    print("  op/bare: the op's time in bare launches; tf/op > 1: clconv is faster per call")
    json_output.write(json_path, "bench", {
        "mode": "overhead", "device": dict(info.__dict__), "cpu": host_cpu.describe(),
        "bare_launch_us": bare, "cases": [{"name": r.name, "op": r.op, "us": r.us}
                                          for r in rows]})
    return 0


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {args.repeat}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {args.rounds}")
    if args.max_seconds < 0:
        raise UsageError(f"--max-seconds must be 0 (no cap) or more, got {args.max_seconds}")
    try:
        cases, origin = cases_from_args(args)
    except SuiteError as exc:
        raise UsageError(str(exc)) from None
    _, info = find_device(args.device)
    json_output.check_target(args.json)  # before the benchmark, not after it
    peers, missing = load_peers(_peer_names(args.peers))
    with json_output.report_stream(args.json):
        if args.overhead:
            return _overhead(info, args.json)
        return _run(args, cases, origin, info, peers, missing)


def _run(args, cases, origin, info, peers, missing) -> int:
    print(f"clconv bench: {len(cases)} case(s) from {origin} on {info.label}")
    print(f"  machine: {machine_line()}")
    _print_pocl_workers(info)
    vectors = cpu_vectors.describe(info)
    if vectors:
        print(f"  {vectors}")
    tiles = tile_rule(info)
    if tiles:
        print(f"  {tiles}")
    cap = (f" (fewer once they take {args.max_seconds:g} s, at least {MIN_RUNS} in all)"
           if args.max_seconds else "")
    print(f"  timing: per contender, {args.rounds} turn(s), taken in turn with the others, of "
          f"{ROUND_WARM_UP_S:g} s of untimed calls and {args.repeat} timed runs{cap}; "
          f"its time: the median of its best turn")
    print("  ms: device-resident (pyopencl arrays in and out, the call + queue.finish()); "
          "e2e ms: numpy in, numpy out")
    print("  cores: the process's CPU time over the wall time of the ms runs (how many "
          "cores the runtime kept busy)")
    print("  GFLOP: useful FLOPs, 2 x the multiply-adds of the forward conv (inserted zeros "
          "do not count); GFLOP/s from ms")
    if args.algorithm:
        without = sorted({OP_LABELS[c.op] for c in cases
                          if args.algorithm not in op_algorithms(c.op)})
        print(f"  algorithm: {args.algorithm}, forced"
              + (f" (not on {', '.join(without)} cases: no such algorithm there, the "
                 "library chooses)" if without else ""))
    else:
        print("  algorithm: the library's choice")
    print(f"  tuning database: {tuning_database_line(info)}")
    for peer in peers:
        if peer.is_clconv:
            print(f"  peer {peer.label}: {peer.config}")
        else:
            print(f"  peer {peer.label}: {peer.name} {peer.version}, {peer.config}")
    for name in missing:
        print(f"  peer {name}: not installed, skipped")
    if peers:
        print("  X/clconv: X's ms / clconv's ms (> 1: clconv is faster); check: each peer's "
              f"output within {AGREEMENT_RTOL:.1e} x max|y| of clconv's")
    table = _Table(cases, peers)
    print()
    print(table.header(), flush=True)

    results: list[CaseResult] = []
    for case in cases:
        result = run_case(case, info.spec, peers, args.repeat, args.algorithm,
                          args.max_seconds or None, args.rounds)
        results.append(result)
        print(table.row(result, peers), flush=True)

    geomeans = {p.name: geometric_mean([r.peers[p.name].ratio for r in results]) for p in peers}
    for peer in peers:
        counted = sum(1 for r in results if r.peers[peer.name].ratio is not None)
        print(f"\ngeometric mean {peer.label}/clconv over {counted} case(s): "
              f"{_fmt(geomeans[peer.name])}", end="")
    best = None
    frameworks = [p for p in peers if not p.is_clconv]
    if len(frameworks) > 1:  # the faster peer of each case: the bar a user compares against
        best = geometric_mean([min(r.peers[p.name].ms for p in frameworks
                                   if r.peers[p.name].ms is not None) / r.clconv_ms
                               for r in results
                               if any(r.peers[p.name].ms is not None for p in frameworks)])
        print(f"\ngeometric mean of the faster peer/clconv: {_fmt(best)}", end="")
    if peers:
        print()
    if any(p.is_clconv for p in peers):
        print(_tuning_losses(results))
    problems = []
    for r in results:
        for peer in peers:
            p = r.peers[peer.name]
            if p.error is not None:
                problems.append(f"  {r.case.name}: {peer.label} n/a: {p.error}")
            elif not p.agrees:
                problems.append(f"  {r.case.name}: {peer.label} differs from clconv: "
                                f"max|diff|/max|y| = {p.max_rel_diff:.2e} > "
                                f"{AGREEMENT_RTOL:.1e}")
    if problems:
        print("\n" + "\n".join(problems))
    phases = {}
    if args.phases:
        phases = {r.case.name: phase_breakdown(r.case, info.spec, args.repeat * args.rounds,
                                               r.clconv_ms, r.algorithm)
                  for r in results}
        print("\nwhere the device-resident time goes (ms; kernels from profiling events):")
        names = list(dict.fromkeys(n for p in phases.values() for n in p))
        rows = [[case] + [f"{p.get(n, 0.0):.2f}" for n in names] for case, p in phases.items()]
        print(format_table(rows, ["case"] + names))

    if args.json:
        document = {
            "suite": origin, "device": dict(info.__dict__), "host": platform.platform(),
            "cpu": host_cpu.describe(), "tile_rule": tile_rule(info),
            "vector_width": cpu_vectors.vector_width(info),
            "vector_registers": cpu_vectors.vector_registers(info),
            "pocl_workers": _pocl_workers(info),
            "versions": versions(), "rounds": args.rounds, "repeat": args.repeat, "warmup": 1,
            "round_warm_up_s": ROUND_WARM_UP_S,
            "max_seconds": args.max_seconds or None, "min_runs": MIN_RUNS,
            "algorithm": args.algorithm,
            "peers": {p.name: {"version": p.version, "config": p.config} for p in peers},
            "agreement_rtol": AGREEMENT_RTOL,
            "cases": [r.to_json() for r in results],
            "geomean_ratio": geomeans,
            "geomean_faster_peer_ratio": best,
            "phases_ms": phases,
        }
        json_output.write(args.json, "bench", document)
    disagree = any(r.peers[p.name].agrees is False for r in results for p in peers)
    return 1 if disagree else 0
