"""``clconv autotune``: tune ops on a device, one case or a suite, into the tuning
database that the ops then use with no further action."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from typing import Any, Optional

from clconv import config, search_space, tuner, tuning_db
from clconv.cli import UsageError, add_device_argument
from clconv.commands import json_output
from clconv.commands.case_args import OP_LABELS, add_case_arguments, cases_from_args
from clconv.commands.devices import format_table
from clconv.device_select import find_device, runtime

HELP = "tune ops/shapes (a suite file or one case) on a device into the tuning database"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_case_arguments(parser, "tune")
    add_device_argument(parser)
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="bound on the wall-clock time of the whole run, shared out "
                             "among the cases; a launch under way is waited for, which for a "
                             "kernel's first (compiling) launch can be seconds (default: none)")
    parser.add_argument("--strategy", choices=tuner.STRATEGIES,
                        help="exhaustive: every candidate; random: a random order; greedy: "
                             "coordinate descent from the defaults, then random while the "
                             "budget lasts (default: greedy with --budget, else exhaustive)")
    parser.add_argument("--db", metavar="FILE",
                        help=f"tuning database (default: {tuning_db.ENV_DB} or "
                             f"{tuning_db.FILE_NAME} in the per-user cache folder)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the size of each search space before and after its "
                             "constraints and the device limits; tune nothing")
    json_output.add_json_argument(parser, "every trial and result")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw default vs tuned times (needs matplotlib: clconv[plot])")
    parser.add_argument("--retune", action="store_true",
                        help="tune cases the database already holds current results for "
                             "(default: skip them, so an interrupted run resumes)")
    parser.add_argument("--runs", type=int, default=tuner.MAX_RUNS, metavar="N",
                        help=f"timed runs per candidate at most, after the checked warm-up "
                             f"(default {tuner.MAX_RUNS}; fewer when runs are long or the "
                             "budget short)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random orders "
                                                            "and the test data (default 0)")


# --------------------------------------------------------------------------- cases


def _cases(args: argparse.Namespace) -> list[tuner.TuneCase]:
    found, _ = cases_from_args(args)
    cases = []
    for c in found:  # a 1-D or 3-D case tunes the 2-D plans it runs as
        planes = c.planes()
        for i, (op, geometry) in enumerate(planes):
            name = c.name if len(planes) == 1 else f"{c.name}/depth-phase-{i}"
            cases.append(tuner.TuneCase(name, op, geometry))
    return cases


# --------------------------------------------------------------------------- helpers


def _current_entry(entries: list, info, case: tuner.TuneCase) -> Optional[dict]:
    entry, level = tuning_db.find(entries, info, case.op, case.geometry,
                                  config.op_source_hash(case.op), config.clconv_version())
    if level == "exact" and entry["op"] == case.op:
        return entry
    return None


def _ms(value: Optional[float]) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _chosen(trial: Optional[tuner.Trial]) -> str:
    return trial.candidate.describe() if trial is not None else "-"


def _dry_run(rt, cases: list[tuner.TuneCase], db_path) -> int:
    rows = []
    for case in cases:
        pools, sizes = tuner.pools_for(case, rt.info)
        for algorithm, size in sizes.items():
            pruned = ", ".join(f"{k} {v}" for k, v in {**size.by_constraint,
                                                       **size.by_limit}.items())
            rows.append([case.name, OP_LABELS[case.op], algorithm, size.family,
                         str(size.total), str(size.after_constraints), str(size.after_limits),
                         pruned or "-"])
    print(f"search spaces on {rt.info.label}")
    print(format_table(rows, ["case", "op", "algorithm", "family", "space",
                              "constraints", "device limits", "pruned by"]))
    entries = tuning_db.entries(db_path)
    here = [e for e in entries if tuning_db.same_device(e, rt.info)]
    current = [e for e in here if tuning_db.is_current(
        e, rt.info, config.op_source_hash(e["op"]), config.clconv_version())]
    tuned = sum(_current_entry(entries, rt.info, c) is not None for c in cases)
    print(f"\ndatabase {db_path}: {len(entries)} entries, {len(current)} current for this "
          f"device, {len(here) - len(current)} stale; {tuned} of these {len(cases)} cases "
          "tuned already")
    print("space: every combination of candidate values; constraints: what the family's "
          "constraints keep; device limits: what this device can run (checks that need "
          "the built kernel come later)")
    return 0


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install matplotlib (or, from a clone, "
                         "pip install '.[plot]')") from None
    return plt


def _speedups(results: list[tuner.CaseResult], kept: dict[str, dict]) -> list[tuple[str, float]]:
    """(case, default ms / tuned ms) of every case tuned now or kept from the database."""
    found = [(r.case.name, r.speedup) for r in results if r.speedup is not None]
    for name, entry in kept.items():
        default = (entry.get("default") or {}).get("ms")
        tuned = (entry["results"].get(entry["algorithm"]) or {}).get("ms")
        if default and tuned:
            found.append((name, default / tuned))
    return found


def _plot(path: str, results: list[tuner.CaseResult], kept: dict[str, dict],
          device: str) -> None:
    """Speedup per case as bars up from 1.0 on a linear axis, each labelled."""
    found = _speedups(results, kept)
    if not found:
        print(f"--plot {path}: no case has both a default and a tuned time; nothing drawn",
              file=sys.stderr)
        return
    plt = _pyplot()
    names, speedups = zip(*found)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(found) + 2.5), 4.5))
    xs = range(len(found))
    bars = ax.bar(xs, [s - 1.0 for s in speedups], 0.6, bottom=1.0, color="tab:green")
    for bar, speedup in zip(bars, speedups):
        ax.annotate(f"{speedup:.2f}x", (bar.get_x() + bar.get_width() / 2, max(speedup, 1.0)),
                    xytext=(0, 3), textcoords="offset points", ha="center", fontsize=9)
    ax.axhline(1.0, color="black", linewidth=0.8)
    top = max(speedups)
    ax.set_ylim(min(1.0, min(speedups)) - 0.02, 1.0 + (top - 1.0) * 1.2 + 0.05)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("speedup: default ms / tuned ms")
    ax.yaxis.get_major_locator().set_params(nbins=6)
    ax.grid(axis="y", alpha=0.3)
    width = int(fig.get_figwidth() * 11)  # characters that fit the figure at this size
    ax.set_title("clconv autotune: speedup over the shipped defaults\n"
                 + "\n".join(textwrap.wrap(device, width)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {path}", file=sys.stderr)


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()  # the budget counts from here: device set-up included
    cases = _cases(args)
    if args.budget is not None and args.budget <= 0:
        raise UsageError(f"--budget must be a positive number of seconds, got {args.budget:g}")
    if args.runs < 1:
        raise UsageError(f"--runs must be at least 1, got {args.runs}")
    if args.plot:
        _pyplot()  # fail before tuning, not after
    json_output.check_target(args.json)
    _, info = find_device(args.device)
    if info.kind == "simulator" and not args.dry_run:
        print(f"clconv autotune: note: {info.name} is a simulator; its timings say nothing "
              "about real hardware", file=sys.stderr)
    rt = runtime(info.spec)
    db_path = tuning_db.resolve_path(args.db)
    search_space.shipped_spaces()  # a malformed family file fails here, with its name
    if args.dry_run:
        return _dry_run(rt, cases, db_path)

    try:  # before any tuning: a database that cannot be written would lose it all
        tuning_db.writable_path(db_path)
    except tuning_db.TuningDatabaseError as exc:
        raise UsageError(str(exc)) from None
    strategy = args.strategy or ("greedy" if args.budget is not None else "exhaustive")
    entries = tuning_db.entries(db_path)
    todo, kept = [], {}
    for case in cases:
        entry = _current_entry(entries, rt.info, case) if not args.retune else None
        if entry is not None and entry.get("search", {}).get("status") != "interrupted":
            kept[case.name] = entry
        else:
            todo.append(case)
    if kept:
        print(f"{len(kept)} case(s) already tuned in {db_path}, kept (--retune tunes them "
              f"again): {', '.join(kept)}", file=sys.stderr)

    done = 0

    def write(result: tuner.CaseResult) -> None:
        nonlocal done
        done += 1
        entry = result.to_entry()
        if entry is not None:
            tuning_db.record([entry], db_path)
            config.invalidate()
        speed = f" ({result.speedup:.2f}x)" if result.speedup else ""
        print(f"[{done}/{len(todo)}] {result.case.name}: default {_ms(result.default_ms)} ms "
              f"-> {_ms(result.tuned_ms)} ms{speed}, {len(result.trials)} tried, "
              f"{result.status}, {result.seconds:.0f} s", file=sys.stderr)

    try:
        budget = None if args.budget is None else args.budget - (time.monotonic() - started)
        results = tuner.tune_all(rt, todo, strategy=strategy, budget=budget,
                                 max_runs=args.runs, seed=args.seed,
                                 progress=True, on_result=write)
    except tuning_db.TuningDatabaseError as exc:
        print(f"clconv autotune: error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    interrupted = any(r.status == "interrupted" for r in results)

    with json_output.report_stream(args.json):
        _print_table(rt, results, kept, strategy, args.budget, elapsed, db_path)
    json_output.write(args.json, "autotune", {
        "device": dict(rt.info.__dict__), "db": str(db_path), "strategy": strategy,
        "budget_s": args.budget, "seconds": round(elapsed, 2), "kept": sorted(kept),
        "results": [r.to_json() for r in results]})
    if args.plot:
        _plot(args.plot, results, kept, f"{rt.info.name} ({rt.info.platform}, "
                                        f"{rt.info.driver_version})")
    return 130 if interrupted else 0


def _print_table(rt, results, kept, strategy, budget, elapsed, db_path) -> None:
    rows, speedups = [], []
    for r in results:
        default = r.default
        if r.speedup:
            speedups.append(r.speedup)
        notes = [r.status] if r.status != "complete" else []
        for status in ("wrong", "build failed", "launch failed", "pruned"):
            if r.count(status):
                notes.append(f"{r.count(status)} {status}")
        if r.detail:
            notes.append(r.detail)
        rows.append([r.case.name, OP_LABELS[r.case.op],
                     default.candidate.algorithm if default else "-", _ms(r.default_ms),
                     _ms(r.tuned_ms), f"{r.speedup:.2f}x" if r.speedup else "-",
                     _chosen(r.chosen),
                     f"{len(r.trials)}/{sum(s.after_limits for s in r.spaces.values())}",
                     "; ".join(notes) or "-"])
    for name, entry in kept.items():
        default = entry.get("default") or {}
        tuned = entry["results"].get(entry["algorithm"]) or {}
        ms, tuned_ms = default.get("ms"), tuned.get("ms")
        config_text_ = " ".join(f"{k}={v}" for k, v in (tuned.get("config") or {}).items())
        rows.append([name, OP_LABELS[entry["op"]], default.get("algorithm", "-"), _ms(ms),
                     _ms(tuned_ms), f"{ms / tuned_ms:.2f}x" if ms and tuned_ms else "-",
                     f"{entry['algorithm']} {config_text_}", "-", "from database"])
    print(f"clconv autotune on {rt.info.label}: strategy {strategy}, budget "
          f"{'none' if budget is None else f'{budget:g} s'}, took {elapsed:.0f} s")
    print(format_table(rows, ["case", "op", "default", "default ms", "tuned ms", "speedup",
                              "chosen", "tried", "notes"]))
    print("default ms / tuned ms: medians of the default and the winner timed again, run for "
          "run alternately, at the end of each case")
    if speedups:
        mean = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
        print(f"\ngeometric mean speedup over {len(speedups)} tuned case(s): {mean:.2f}x")
    rejected = [(r.case.name, t) for r in results for t in r.trials
                if t.status in ("wrong", "build failed", "launch failed")]
    if rejected:
        print("\nrejected candidates:")
        for name, t in rejected:
            print(f"  {name}: {t.candidate.describe()}: {t.status}: {t.detail}")
    print(f"\nresults written to {db_path}")
