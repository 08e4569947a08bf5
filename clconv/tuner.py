"""The autotuner: for one op and shape on one device, find the fastest correct
(algorithm, configuration) among the search spaces of configs/<family>.yaml.

For each family that computes the op (its ``algorithms`` key) and has a
launcher registered here, the candidates are the space's configurations that
pass its constraints and the device limits that need no build.  Each
candidate is then, in the order the strategy picks:

1. built (a build failure is recorded with the compiler's reason, and skipped);
2. checked against the limits only the built kernel knows
   (CL_KERNEL_WORK_GROUP_SIZE, its local memory);
3. run once on a NaN-poisoned output and checked against the float64
   reference (clconv.reference, tolerance of clconv.tolerance): a wrong
   result is rejected and reported, never timed, never chosen.  This run is
   also the warm-up (it includes any compilation at first launch);
4. timed: the median of several runs, each measured with profiling events
   from a marker to the end of the launch's last kernel, all enqueued behind
   a user event and then released (Session._run_once), so every kernel of a
   multi-kernel algorithm counts and the host's enqueue time does not.  A
   candidate whose first timed run is over SLOW_FACTOR times the best so far
   is recorded as "slow" and not timed further.

At the end of a case, the default and the FINALISTS fastest candidates are
timed again, run for run alternately (CONFIRM_ROUNDS rounds; time for them is
kept back from the search): the fastest median is chosen (the default on a
tie) and these are the reported times.

Strategies: ``exhaustive`` (every candidate), ``random`` (a random order,
skipping algorithms whose fastest run so far is HOPELESS_FACTOR times the
best) and ``greedy`` (coordinate descent from the default, one tunable at a
time, then from each other algorithm's default; with a budget, what time
remains goes to random candidates).  The first
candidate is always the shipped default, the baseline of the speedup.  A
budget is a hard wall-clock bound: before each candidate, its first launch
and each timed run the tuner checks that what it is about to do fits in the
time left (estimated from what it has seen); a build, which no estimate bounds,
runs in a thread the tuner stops waiting for when the budget ends.  What can
still pass the budget is one launch already under way (BUDGET_SLACK_S, the
most measured on a 2-core machine).  The best result so far is kept at every
moment.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pyopencl as cl

from clconv import config as config_module
from clconv import plans, registry, search_space, tensors, tuning_db
from clconv.device_select import DeviceInfo, Runtime
from clconv.errors import KernelBuildError, UnimplementedError
from clconv.programs import TypedKernel, dtype_defines
from clconv.reference import backprop_input_reference, conv2d_reference
from clconv.search_space import ConstraintError, SearchSpace, SearchSpaceError
from clconv.shapes import ConvGeometry
from clconv.tolerance import compare

STRATEGIES = ("exhaustive", "random", "greedy")
MAX_RUNS = 5  # timed runs per candidate at most
MIN_RUNS = 3  # ... and at least, while the budget allows
RUN_SECONDS = 1.0  # timed runs stop adding up beyond this (never below MIN_RUNS)
CONFIRM_ROUNDS = 5  # the default and the finalists timed again, alternating, at the end
FINALISTS = 3  # ... the fastest candidates of the search that are re-timed
BLAS_SETTLE_S = 0.3  # see Session._prepare
RECENT = 5  # first launches the time estimates look back on
# A program this process has not built may be in pyopencl's disk cache (a few ms) or
# not (a compile: about a second on a 2-core PoCL machine, more when it is busy, and
# more for a larger unrolled tile); the tuner cannot tell which before it starts, so
# it expects the slowest build it has seen for the family on the device, and at least
# COLD_BUILD_S; and since no estimate bounds a compile, a build runs in a thread the
# tuner stops waiting for when the budget ends (Session._trial).
COLD_BUILD_S = 0.5
BUDGET_SLACK_S = 0.5  # how far past its budget a run may end (one launch under way)
GATE_TIMEOUT_S = 2.0  # see Session._run_once
HOPELESS_FACTOR = 10.0  # see Session.hopeless
SLOW_FACTOR = 3.0  # a first timed run this many times the best so far: not worth more


# --------------------------------------------------------------------------- launchers

Run = Callable[[Runtime, tensors.DeviceTensor, tensors.DeviceTensor, tensors.DeviceTensor,
                ConvGeometry, dict], cl.Event]


@dataclass(frozen=True)
class Launcher:
    """How the tuner runs one family for one op.

    ``prepare(rt, g, config)`` builds what a launch needs and returns a function
    ``(src, w, out) -> event`` (a build failure raises KernelBuildError, a limit of
    the built kernel UnimplementedError); the registry's algorithms prepare a
    ConvPlan.  A launcher of a family outside the registry (a test's, or one being
    written) gives ``run(rt, src, w, out, g, config)`` instead, and the tuner builds
    its family's kernel itself first.  ``kernel_geometry`` is the conv the tuned
    kernel itself computes (what the constraints read); ``resolve`` turns values a
    launch fills in itself ("auto") into concrete ones."""

    run: Optional[Run] = None
    kernel_geometry: Callable[[ConvGeometry], ConvGeometry] = lambda g: g
    resolve: Optional[Callable[[dict, ConvGeometry, DeviceInfo], dict]] = None
    prepare: Optional[Callable[[Runtime, ConvGeometry, dict, np.dtype],
                               Callable[..., cl.Event]]] = None


def registry_launcher(algorithm: str, op: str) -> Launcher:
    """The launcher of a registered algorithm: plans with an explicit configuration."""
    found = registry.get(algorithm)

    def prepare(rt: Runtime, g: ConvGeometry, config: dict, dtype: np.dtype):
        plan = plans.build_plan(rt, op, g, dtype, algorithm, config)
        return lambda src, w, out: plan.enqueue(rt.queue, src, w, out)

    return Launcher(kernel_geometry=lambda g: found.kernel_geometry(op, g),
                    resolve=lambda c, g, info: found.resolve(c, op, g, info), prepare=prepare)


def launcher_for(space: SearchSpace, algorithm: str, op: str,
                 launchers: Optional[Mapping[tuple[str, str], Launcher]] = None
                 ) -> Optional[Launcher]:
    """A caller's launcher for (family, op), else the registry's, else None."""
    if launchers is not None and (space.family, op) in launchers:
        return launchers[(space.family, op)]
    if algorithm in registry.algorithms_for(op) and registry.space_for(algorithm, op) is space:
        return registry_launcher(algorithm, op)
    return None


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TuneCase:
    """One op on one shape (NHWC), named for reports."""

    name: str
    op: str
    geometry: ConvGeometry


@dataclass(frozen=True)
class Candidate:
    algorithm: str
    family: str
    config: Mapping[str, Any]

    @property
    def key(self) -> tuple:
        return (self.algorithm, tuple(sorted(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in self.config.items())))

    def describe(self) -> str:
        return f"{self.algorithm} {search_space.format_config(self.config)}"


@dataclass
class Trial:
    """What became of one candidate: status is ok, wrong, build failed, launch failed,
    pruned (a limit of the built kernel), slow (warm-up only) or untimed (budget)."""

    candidate: Candidate
    status: str
    ms: Optional[float] = None
    runs: int = 0
    detail: str = ""
    wall: float = 0.0  # seconds of wall time per timed run (median)


@dataclass
class SpaceSize:
    family: str
    total: int
    after_constraints: int
    after_limits: int
    by_constraint: dict[str, int]
    by_limit: dict[str, int]


@dataclass
class CaseResult:
    case: TuneCase
    device: DeviceInfo
    strategy: str
    spaces: dict[str, SpaceSize] = field(default_factory=dict)  # by algorithm
    trials: list[Trial] = field(default_factory=list)
    default: Optional[Trial] = None
    status: str = "complete"  # complete, budget, interrupted, skipped
    seconds: float = 0.0
    detail: str = ""

    # Medians of the final, alternating re-timing (see _confirm), by candidate key.
    confirmed: dict[tuple, float] = field(default_factory=dict)
    confirm_runs: int = 0

    @property
    def best(self) -> Optional[Trial]:
        """The fastest correct candidate of the search."""
        timed = [t for t in self.trials if t.status == "ok"]
        return min(timed, key=lambda t: t.ms) if timed else None

    def _trial_of(self, key: tuple) -> Trial:
        return next(t for t in self.trials if t.candidate.key == key)

    @property
    def chosen(self) -> Optional[Trial]:
        """The fastest of the re-timed finalists (the default among them, which wins
        ties), else the search's best."""
        if self.confirmed:
            fastest = min(self.confirmed.values())
            default_key = self.default.candidate.key if self.default else None
            if self.confirmed.get(default_key) == fastest:
                return self.default
            return self._trial_of(min(self.confirmed, key=self.confirmed.get))
        return self.best

    @property
    def default_ms(self) -> Optional[float]:
        if self.default is None or self.default.status != "ok":
            return None
        return self.confirmed.get(self.default.candidate.key, self.default.ms)

    @property
    def tuned_ms(self) -> Optional[float]:
        if self.confirmed:
            return min(self.confirmed.values())
        return self.best.ms if self.best is not None else None

    def best_per_algorithm(self) -> dict[str, Trial]:
        found: dict[str, Trial] = {}
        for t in self.trials:
            if t.status == "ok":
                alg = t.candidate.algorithm
                if alg not in found or t.ms < found[alg].ms:
                    found[alg] = t
        chosen = self.chosen
        if chosen is not None:
            found[chosen.candidate.algorithm] = chosen
        return found

    @property
    def speedup(self) -> Optional[float]:
        default_ms, tuned_ms = self.default_ms, self.tuned_ms
        if default_ms is None or tuned_ms is None or tuned_ms <= 0:
            return None
        return default_ms / tuned_ms

    def count(self, *statuses: str) -> int:
        return sum(t.status in statuses for t in self.trials)

    def to_entry(self) -> Optional[dict[str, Any]]:
        """The database entry of this result, or None when nothing was timed."""
        best = self.chosen
        if best is None:
            return None
        g = self.case.geometry
        # Each algorithm's best, at its re-timed median where the final round re-timed
        # it; a search-time figure (timed once, not against the default) says so.
        results = {}
        for alg, t in sorted(self.best_per_algorithm().items()):
            retimed = self.confirmed.get(t.candidate.key)
            results[alg] = {"family": t.candidate.family, "config": dict(t.candidate.config),
                            "ms": round(retimed if retimed is not None else t.ms, 4),
                            "retimed": retimed is not None}
        entry = {
            "case": self.case.name,
            "op": self.case.op,
            "device": tuning_db.device_key(self.device),
            "clconv": config_module.clconv_version(),
            "source_hash": config_module.op_source_hash(self.case.op),
            "geometry": tuning_db.geometry_dict(g),
            "algorithm": best.candidate.algorithm,
            "results": results,
            "search": {"strategy": self.strategy, "status": self.status,
                       "tried": len(self.trials),
                       "candidates": sum(s.after_limits for s in self.spaces.values()),
                       "rejected": self.count("wrong"),
                       "failed": self.count("build failed", "launch failed"),
                       "seconds": round(self.seconds, 1), "when": tuning_db.now_text()},
        }
        results[best.candidate.algorithm].update(ms=round(self.tuned_ms, 4),
                                                 retimed=bool(self.confirmed))
        if self.default_ms is not None:
            entry["default"] = {"algorithm": self.default.candidate.algorithm,
                                "ms": round(self.default_ms, 4)}
        return entry

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case.name, "op": self.case.op, "device": self.device.spec,
            "strategy": self.strategy, "status": self.status, "seconds": round(self.seconds, 2),
            "default": _trial_json(self.default), "best": _trial_json(self.best),
            "chosen": _trial_json(self.chosen),  # its ms: the search's; tuned_ms: re-timed
            "confirmed": [{**_trial_json(self._trial_of(k)), "retimed_ms": round(ms, 4)}
                          for k, ms in self.confirmed.items()],
            "confirm_runs": self.confirm_runs,
            "default_ms": self.default_ms, "tuned_ms": self.tuned_ms,
            "speedup": None if self.speedup is None else round(self.speedup, 3),
            "spaces": {alg: dataclasses.asdict(s) for alg, s in self.spaces.items()},
            "trials": [_trial_json(t) for t in self.trials],
            "detail": self.detail,
        }


def _trial_json(trial: Optional[Trial]) -> Optional[dict[str, Any]]:
    if trial is None:
        return None
    return {"algorithm": trial.candidate.algorithm, "family": trial.candidate.family,
            "config": dict(trial.candidate.config), "status": trial.status,
            "ms": None if trial.ms is None else round(trial.ms, 4), "runs": trial.runs,
            "detail": trial.detail}


class OutOfTime(Exception):
    """The budget has no room for the next step."""


# --------------------------------------------------------------------------- spaces of a case


@dataclass
class Pool:
    """The candidates of one algorithm for one case."""

    algorithm: str
    space: SearchSpace
    launcher: Launcher
    candidates: list[Candidate]
    start: Candidate  # the family's shipped default, resolved


def pools_for(case: TuneCase, info: DeviceInfo,
              spaces: Optional[Mapping[str, SearchSpace]] = None,
              launchers: Optional[Mapping[tuple[str, str], Launcher]] = None,
              dtype_size: int = 4) -> tuple[list[Pool], dict[str, SpaceSize]]:
    """Every algorithm's candidates for ``case`` on ``info``, after the constraints and
    the device limits that need no build; and the size of each space at each stage."""
    pools, sizes = [], {}
    dtype = np.dtype({2: np.float16, 4: np.float32, 8: np.float64}.get(dtype_size, np.float32))
    for algorithm, space in search_space.spaces_for(case.op, spaces):
        launcher = launcher_for(space, algorithm, case.op, launchers)
        if launcher is None:
            raise SearchSpaceError(f"{space.origin}: computes {case.op} as {algorithm!r} but no "
                                   f"such algorithm is registered (clconv.registry) and no "
                                   f"launcher was given for ({space.family!r}, {case.op!r})")
        if (algorithm in registry.algorithms_for(case.op)
                and registry.unsupported(algorithm, case.op, dtype, case.geometry, info)):
            continue  # e.g. the GEMMs on a grouped conv: every candidate would be refused
        ctx = search_space.context(launcher.kernel_geometry(case.geometry), info, case.op,
                                   algorithm, dtype_size)
        try:
            pruned = space.prune(ctx)
        except ConstraintError as exc:
            raise SearchSpaceError(f"{space.origin}: {exc}") from None
        candidates = [Candidate(algorithm, space.family, c) for c in pruned.candidates]
        sizes[algorithm] = SpaceSize(space.family, pruned.total, pruned.after_constraints,
                                     pruned.after_limits, pruned.by_constraint, pruned.by_limit)
        start = _resolved(Candidate(algorithm, space.family,
                                    _family_default(space, info)), launcher, case, info)
        pools.append(Pool(algorithm, space, launcher, candidates, start))
    return pools, sizes


def _family_default(space: SearchSpace, info: DeviceInfo) -> dict[str, Any]:
    """The shipped configuration of the family, or the space's own defaults for a
    family clconv does not ship (a test's, or one being written)."""
    try:
        config = config_module.shipped_config(space.family, info)
    except KeyError:
        return space.default_config()
    return config if set(config) == set(space.names) else space.default_config()


def _resolved(candidate: Candidate, launcher: Launcher, case: TuneCase,
              info: DeviceInfo) -> Candidate:
    if launcher.resolve is None:
        return candidate
    config = launcher.resolve(dict(candidate.config), case.geometry, info)
    return dataclasses.replace(candidate, config=config)


def default_candidate(case: TuneCase, info: DeviceInfo, pools: Sequence[Pool]) -> Candidate:
    """What the op runs untuned: the shipped algorithm for its shape (defaults.yaml's
    algorithm_rules too, those for unprepared filters included: a candidate is timed
    with a raw filter; else the first one tunable here) with its family's shipped
    configuration.  The shipped algorithm is followed along its fallbacks as a call
    follows them (a depthwise conv: gemm cannot, grouped runs it)."""
    algorithm = config_module.shipped_algorithm(case.op, info, case.geometry, prepared=False)
    algorithm = registry.runnable(algorithm, case.op, np.dtype(np.float32), case.geometry, info)
    for pool in pools:
        if pool.algorithm == algorithm:
            return pool.start
    return pools[0].start


# --------------------------------------------------------------------------- one case


_slowest_build: dict[tuple, float] = {}  # (device, family) -> seconds, over the process
# The first launches of programs new to this process, the RECENT last per (device,
# family): PoCL compiles a kernel for its work-group size at its first launch, which
# nothing can interrupt, and that compile may miss PoCL's cache where the build hit
# pyopencl's (pip PoCL on a busy 2-core Zen 3: a 0.18 s build, then a 2.5 s first
# launch that ended 1.4 s past a 3 s budget, when the case's earlier first launches,
# all cached, had taken 20 ms).  Recent ones, not the slowest ever: once PoCL's cache
# holds the kernels, a run of cached launches lowers the estimate again.  A program
# launched once in this process, in any case, launches without a compile.
_new_program_firsts: dict[tuple, collections.deque] = {}
_launched: set[tuple] = set()  # (device, program) that have had their first launch
_builder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="clconv-build")


class Session:
    """Evaluates candidates of one case within a deadline; keeps every trial."""

    def __init__(self, rt: Runtime, case: TuneCase, pools: Sequence[Pool], result: CaseResult,
                 deadline: float, max_runs: int, progress: Any, seed: int = 0) -> None:
        self.rt, self.case, self.result = rt, case, result
        self.pools = {p.algorithm: p for p in pools}
        self.deadline = deadline
        self.max_runs = max(1, max_runs)
        self.progress = progress
        self.trials: dict[tuple, Trial] = {}
        self.launches: dict[tuple, Callable[[], cl.Event]] = {}
        self.built: set[tuple] = set()
        # First launches in this case (which include compiling for the work-group size):
        # the longest of them is what the next candidate is expected to need, with a
        # build (see COLD_BUILD_S) when its program is new to this process.
        self.firsts: collections.deque = collections.deque(maxlen=RECENT)
        self.first_by_algorithm: dict[str, float] = {}  # longest first launch in this case
        self.dtype = np.dtype(np.float32)
        self._prepare(seed)

    # -- data and reference
    def _prepare(self, seed: int) -> None:
        g, rt = self.case.geometry, self.rt
        rng = np.random.default_rng(seed)
        src_shape = g.x_shape() if self.case.op == "conv2d" else g.y_shape()
        w_shape = (g.k_h, g.k_w, g.in_c // g.groups, g.out_c)
        src = rng.uniform(-1, 1, size=src_shape).astype(self.dtype)
        w = rng.uniform(-1, 1, size=w_shape).astype(self.dtype)
        if self.case.op == "conv2d":
            self.expected = conv2d_reference(src, w, g)
            self.reduction = g.k_h * g.k_w * (g.in_c // g.groups)
            out_shape = g.y_shape()
        else:
            self.expected = backprop_input_reference(src, w, g)
            self.reduction = g.k_h * g.k_w * g.out_c
            out_shape = g.x_shape()
        # BLAS worker threads spin for a while after the reference's matmuls; on a CPU
        # device they would steal cores from the first timings.
        time.sleep(max(0.0, min(BLAS_SETTLE_S, self.time_left())))
        self.src = tensors.to_device(src, self.dtype, rt.queue, rt.info, "input", False)
        self.w = tensors.to_device(w, self.dtype, rt.queue, rt.info, "filters", False)
        self.out = tensors.empty_output(out_shape, self.dtype, rt.queue, rt.info, zero=False)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def ms(self, candidate: Candidate) -> Optional[float]:
        trial = self.trials.get(candidate.key)
        return trial.ms if trial is not None and trial.status == "ok" else None

    def best(self) -> Optional[Trial]:
        return self.result.best

    # -- one candidate
    def evaluate(self, candidate: Candidate) -> Optional[float]:
        """Time ``candidate`` (once: later calls return the same answer); None unless it
        is correct and timed.  OutOfTime when the budget has no room for it."""
        if candidate.key in self.trials:
            return self.ms(candidate)
        if self.time_left() <= self._expected_seconds(candidate):
            best = self.best()
            if best is None or candidate.algorithm == best.candidate.algorithm or \
                    self.time_left() <= self._expected_seconds(
                        dataclasses.replace(best.candidate, config={})):
                raise OutOfTime()
            return None  # a slower algorithm's candidate does not fit; others may
        trial = self._trial(candidate)
        self.trials[candidate.key] = trial
        self.result.trials.append(trial)
        if self.progress is not None:
            self.progress.update(1)
            best = self.best()
            if best is not None:
                self.progress.set_postfix_str(f"best {best.ms:.3g} ms", refresh=False)
        if trial.status == "untimed":
            raise OutOfTime()
        return trial.ms if trial.status == "ok" else None

    def _expected_seconds(self, candidate: Candidate) -> float:
        """What evaluating ``candidate`` should take at least: a build (unless its
        program exists), a first launch (before any, as long as the build) and a timed
        run.  An algorithm not run yet in
        this case is assumed as fast per multiply-add as the slowest one that has,
        scaled by the multiply-adds its kernels do (via_forward's stride-1 conv over
        the dilated input does s_h*s_w times those of the others)."""
        best = self.best()
        first = self.first_by_algorithm.get(candidate.algorithm)
        run = max([best.ms if best else 0.0] + [
            t.ms for t in self.result.trials
            if t.ms is not None and t.candidate.algorithm == candidate.algorithm]) / 1e3
        needs_build = self._program_key(candidate) not in self.built
        build = max(COLD_BUILD_S, _slowest_build.get((self.rt.info.spec, candidate.family),
                                                      0.0)) if needs_build else 0.0
        if first is None:
            first = max(self.firsts, default=build)  # none yet: a compile, as its build
            if self.first_by_algorithm:
                scale = max(1.0, self._work(candidate.algorithm) / min(
                    self._work(a) for a in self.first_by_algorithm))
                first, run = first * scale, run * scale
        if self._never_launched(candidate):
            first = max(first, self._new_program_first(candidate))
        return build + first + run

    def _never_launched(self, candidate: Candidate) -> bool:
        """True for a program this process has not launched yet (in any case)."""
        return (self.rt.info.spec,) + self._program_key(candidate) not in _launched

    def _new_program_first(self, candidate: Candidate) -> float:
        """What the first launch of a program new to this process may take: the slowest
        of the recent such launches of the family on the device, at least COLD_BUILD_S."""
        recent = _new_program_firsts.get((self.rt.info.spec, candidate.family), ())
        return max((COLD_BUILD_S, *recent))

    def hopeless(self, algorithm: str) -> bool:
        """True when even the fastest run of ``algorithm`` so far is HOPELESS_FACTOR
        times slower than the best: no configuration of it is likely to win, and its
        runs are the long ones that eat a budget."""
        best = self.best()
        seen = [t.ms for t in self.result.trials
                if t.ms is not None and t.candidate.algorithm == algorithm]
        return bool(best and seen and min(seen) > HOPELESS_FACTOR * best.ms)

    def _work(self, algorithm: str) -> int:
        geometry = self.pools[algorithm].launcher.kernel_geometry(self.case.geometry)
        return max(1, geometry.macs())

    def _program_key(self, candidate: Candidate) -> tuple:
        return (candidate.family,) + candidate.key[1:]

    def _trial(self, candidate: Candidate) -> Trial:
        pool = self.pools[candidate.algorithm]
        started = time.monotonic()
        new_program = self._never_launched(candidate)
        building = _builder.submit(self._prepare_launch, pool, candidate)
        try:
            left = self.time_left()
            launch = building.result(timeout=None if math.isinf(left) else max(0.0, left))
        except concurrent.futures.TimeoutError:
            # The compile goes on in its thread; this case's budget is spent.
            return Trial(candidate, "untimed", detail="the budget ran out during its build")
        except KernelBuildError as exc:
            return Trial(candidate, "build failed", detail=_first_lines(str(exc)))
        except UnimplementedError as exc:
            return Trial(candidate, "pruned", detail=_first_lines(str(exc)))
        finally:
            if self._program_key(candidate) not in self.built:
                self.built.add(self._program_key(candidate))
                key = (self.rt.info.spec, candidate.family)
                _slowest_build[key] = max(_slowest_build.get(key, 0.0),
                                          time.monotonic() - started)
        # The first launch compiles for the work-group size too: only with time for it.
        # Before any first launch of this case, expect one to take as long as this build
        # (both are compiles, or both come from PoCL's cache): a cold first launch of
        # the default ran 0.45 s past a busy machine's budget when it counted as free.
        first = self.first_by_algorithm.get(
            candidate.algorithm, max(self.firsts, default=time.monotonic() - started))
        if new_program:
            first = max(first, self._new_program_first(candidate))
        if self.time_left() <= first:
            return Trial(candidate, "untimed", detail="the budget ran out after its build")
        # Check before timing: NaN in the output shows any element the kernel skips.
        try:
            self.out.fill(self.rt.queue, np.nan)
            self.rt.queue.finish()
            _, first_wall = self._run_once(launch)
            got = self.out.get(self.rt.queue)
        except (cl.Error, cl.RuntimeError, RuntimeError, ValueError) as exc:
            self.rt.queue.finish()
            return Trial(candidate, "launch failed", detail=_first_lines(str(exc)))
        self.firsts.append(first_wall)
        _launched.add((self.rt.info.spec,) + self._program_key(candidate))
        if new_program:
            _new_program_firsts.setdefault((self.rt.info.spec, candidate.family),
                                           collections.deque(maxlen=RECENT)).append(first_wall)
        self.first_by_algorithm[candidate.algorithm] = max(
            first_wall, self.first_by_algorithm.get(candidate.algorithm, 0.0))
        check = compare(got, self.expected, self.dtype, self.reduction)
        if not check.ok:
            return Trial(candidate, "wrong", detail=check.describe())
        runs = min(self.max_runs, max(MIN_RUNS, int(RUN_SECONDS / max(first_wall, 1e-6))))
        best = self.best()
        times: list[float] = []
        walls: list[float] = []
        wall = first_wall
        for _ in range(runs):
            if self.time_left() <= wall:
                break
            ms, wall = self._run_once(launch)
            times.append(ms)
            walls.append(wall)
            # The warm-up includes compilation (PoCL compiles per work-group size at the
            # first launch), so only a timed run can show a candidate is hopeless.
            if best is not None and ms > SLOW_FACTOR * best.ms:
                return Trial(candidate, "slow", ms=ms, runs=1,
                             detail=f"first timed run {ms:.3g} ms > {SLOW_FACTOR:g} x best")
        if not times:
            return Trial(candidate, "untimed", detail="the budget ran out after the check")
        return Trial(candidate, "ok", ms=statistics.median(times), runs=len(times),
                     wall=statistics.median(walls))

    def _prepare_launch(self, pool: Pool, candidate: Candidate) -> Callable[[], cl.Event]:
        """Build what ``candidate`` launches (memoised per candidate): a plan for a
        registered algorithm, else the family's kernel, checked against the limits
        only the built kernel knows, then the launcher's run."""
        found = self.launches.get(candidate.key)
        if found is not None:
            return found
        config = dict(candidate.config)
        g = self.case.geometry
        if pool.launcher.prepare is not None:
            run = pool.launcher.prepare(self.rt, g, config, self.dtype)
            launch = lambda: run(self.src, self.w, self.out)  # noqa: E731
        else:
            self._check_built_kernel(pool, candidate)
            launch = lambda: pool.launcher.run(  # noqa: E731
                self.rt, self.src, self.w, self.out, g, dict(config))
        self.launches[candidate.key] = launch
        return launch

    def _check_built_kernel(self, pool: Pool, candidate: Candidate) -> None:
        space, config = pool.space, dict(candidate.config)
        defines, _ = config_module.split_config(config)
        defines.update(dtype_defines(self.dtype))
        kernel = TypedKernel(self.rt.context, space.kernel[0], space.kernel[1], defines, None)
        if not space.after_build_limits:
            return
        context = search_space.context(
            pool.launcher.kernel_geometry(self.case.geometry), self.rt.info, self.case.op,
            candidate.algorithm, self.dtype.itemsize)
        rule = space.broken_after_build(config, context, kernel.work_group_info(self.rt.device))
        if rule is not None:
            raise UnimplementedError(f"{rule.name}: {rule.reason}")

    def _launch(self, candidate: Candidate) -> Callable[[], cl.Event]:
        return self._prepare_launch(self.pools[candidate.algorithm], candidate)

    def time_once(self, candidate: Candidate) -> tuple[float, float]:
        """One more timed run of an evaluated candidate: (ms, wall seconds)."""
        return self._run_once(self._launch(candidate))

    def _run_once(self, launch: Callable[[], cl.Event]) -> tuple[float, float]:
        """(milliseconds on the device's clock, seconds of wall time) of one launch.

        The launch enqueues its kernels behind a marker held by a user event, then the
        event is released: the kernels run back to back, and marker end -> last kernel
        end measures the device's work without the host's enqueue time, which on a
        busy CPU device is noise.  A launch that blocks on its queue would wait for
        the gate forever: a watchdog releases it after GATE_TIMEOUT_S."""
        started = time.monotonic()
        gate = cl.UserEvent(self.rt.context)
        marker = cl.enqueue_marker(self.rt.queue, wait_for=[gate])
        opened = threading.Lock()

        def release() -> None:
            with opened:
                if gate.command_execution_status != cl.command_execution_status.COMPLETE:
                    gate.set_status(cl.command_execution_status.COMPLETE)

        watchdog = threading.Timer(GATE_TIMEOUT_S, release)
        watchdog.start()
        try:
            event = launch()
        finally:
            watchdog.cancel()
            release()
        event.wait()
        wall = time.monotonic() - started
        try:
            ms = (event.profile.end - marker.profile.end) * 1e-6
        except cl.Error:  # a queue without profiling: wall time it is
            ms = wall * 1e3
        return ms, wall


def _first_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:count])


# --------------------------------------------------------------------------- strategies


def _exhaustive(session: Session, pools: Sequence[Pool], rng: random.Random) -> None:
    for pool in pools:
        for candidate in pool.candidates:
            session.evaluate(candidate)


def _random(session: Session, pools: Sequence[Pool], rng: random.Random) -> None:
    """A random order, leaving out algorithms that have shown themselves hopeless."""
    everything = [c for pool in pools for c in pool.candidates]
    rng.shuffle(everything)
    for candidate in everything:
        if not session.hopeless(candidate.algorithm):
            session.evaluate(candidate)


def _neighbours(current: Candidate, pool: Pool, name: str) -> list[Candidate]:
    """Candidates of ``pool`` that differ from ``current`` in tunable ``name`` only."""
    rest = {k: v for k, v in current.config.items() if k != name}
    return [c for c in pool.candidates
            if c.key != current.key and {k: v for k, v in c.config.items() if k != name} == rest]


def _descend(session: Session, pool: Pool, start: Candidate) -> None:
    """Coordinate descent: try every value of one tunable at a time, move to the
    fastest, until a whole pass over the tunables finds nothing faster."""
    current = start
    improved = True
    while improved:
        improved = False
        for tunable in pool.space.tunables:
            neighbours = _neighbours(current, pool, tunable.name)
            for candidate in neighbours:
                session.evaluate(candidate)
            timed = [c for c in [current] + neighbours if session.ms(c) is not None]
            if not timed:
                continue
            best = min(timed, key=session.ms)
            if best.key != current.key and (session.ms(current) is None
                                            or session.ms(best) < session.ms(current)):
                current, improved = best, True


def _greedy(session: Session, pools: Sequence[Pool], rng: random.Random) -> None:
    """Coordinate descent from the default (in its algorithm's space), then from each
    other algorithm's default that is not far slower than the best so far; then, with
    a budget, random candidates until it runs out."""
    default = session.result.default.candidate
    ordered = sorted(pools, key=lambda p: p.algorithm != default.algorithm)
    for pool in ordered:
        start = default if pool.algorithm == default.algorithm else pool.start
        if start.key not in {c.key for c in pool.candidates}:
            # The default is outside the space (e.g. a value the file does not list):
            # start from the space's member that agrees with it on the most tunables.
            if not pool.candidates:
                continue
            start = max(pool.candidates, key=lambda c: sum(
                c.config.get(k) == v for k, v in start.config.items()))
        ms, best = session.evaluate(start), session.best()
        if ms is None or (best is not None and ms > SLOW_FACTOR * best.ms):
            continue
        _descend(session, pool, start)
    if math.isfinite(session.deadline):
        _random(session, pools, rng)


_STRATEGY = {"exhaustive": _exhaustive, "random": _random, "greedy": _greedy}


def _confirm(session: Session, result: CaseResult, deadline: float) -> None:
    """Time the default and the FINALISTS fastest candidates of the search again,
    alternating run for run, so that all see the same machine: the minimum over
    many noisy candidates is biased low, and a shared machine drifts.  The
    fastest median wins and these are the numbers reported."""
    default = result.default
    if default is None or default.status != "ok":
        return
    timed = sorted((t for t in result.trials if t.status == "ok"), key=lambda t: t.ms)
    finalists = [default] + [t for t in timed if t.candidate.key != default.candidate.key]
    finalists = finalists[:FINALISTS + 1]
    if len(finalists) < 2:
        return
    times: dict[tuple, list[float]] = {t.candidate.key: [] for t in finalists}
    for _ in range(CONFIRM_ROUNDS):
        if time.monotonic() + 1.5 * sum(t.wall for t in finalists) >= deadline:
            break
        for trial in finalists:
            times[trial.candidate.key].append(session.time_once(trial.candidate)[0])
        result.confirm_runs += 1
    if result.confirm_runs:
        result.confirmed = {key: statistics.median(ms) for key, ms in times.items()}


def available_host_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo (Linux), else free physical pages, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_problem(case: TuneCase, info: DeviceInfo,
                   available: Optional[int] = None) -> Optional[str]:
    """Why ``case`` cannot be tuned in this machine's memory, or None: its float32
    tensors must each fit the device's largest buffer, and they, the float64 reference
    and its work arrays must fit the host's available memory (checked before anything
    is allocated, so an oversized case is skipped, not a MemoryError after minutes)."""
    g = case.geometry
    src = g.x_size() if case.op == "conv2d" else g.y_size()
    out = g.y_size() if case.op == "conv2d" else g.x_size()
    w = g.k_h * g.k_w * (g.in_c // max(g.groups, 1)) * g.out_c
    for what, elements in (("input", src), ("filter", w), ("output", out)):
        if elements * 4 > info.max_mem_alloc_size:
            return (f"its {what} needs {elements * 4 / 2**30:.1f} GiB, more than the largest "
                    f"buffer of {info.name} ({info.max_mem_alloc_size / 2**30:.1f} GiB)")
    products = g.batch * g.out_h * g.out_w * g.in_c  # the reference's per-tap work array
    needed = 4 * (src + w + out) + 8 * (3 * (src + out) + w + products)
    available = available_host_bytes() if available is None else available
    if available is not None and needed > available:
        return (f"it needs about {needed / 2**30:.1f} GiB of host memory (operands and the "
                f"float64 reference), more than the {available / 2**30:.1f} GiB available")
    return None


def tune_case(rt: Runtime, case: TuneCase, *, strategy: str = "exhaustive",
              deadline: float = math.inf, max_runs: int = MAX_RUNS, seed: int = 0,
              progress: bool = False,
              spaces: Optional[Mapping[str, SearchSpace]] = None,
              launchers: Optional[Mapping[tuple[str, str], Launcher]] = None) -> CaseResult:
    """Tune ``case`` on ``rt``'s device until the strategy is done or ``deadline``
    (time.monotonic()) comes.  KeyboardInterrupt ends it with status "interrupted"."""
    if strategy not in _STRATEGY:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    started = time.monotonic()
    result = CaseResult(case, rt.info, strategy)
    problem = memory_problem(case, rt.info)
    if problem is not None:
        result.status, result.detail = "skipped", problem
        return result
    pools, result.spaces = pools_for(case, rt.info, spaces, launchers)
    if not pools:
        result.status, result.detail = "skipped", f"no tunable algorithm computes {case.op}"
        return result
    total = sum(len(p.candidates) for p in pools)
    bar = None
    if progress:
        from tqdm import tqdm

        # disable=None: a bar only on a terminal, never frames in a redirected log.
        bar = tqdm(total=total + 1, desc=case.name, unit="cfg", leave=False, file=sys.stderr,
                   dynamic_ncols=True, disable=None)
    session = None
    try:
        if time.monotonic() >= deadline:
            raise OutOfTime()
        session = Session(rt, case, pools, result, deadline, max_runs, bar, seed)
        default = default_candidate(case, rt.info, pools)
        session.evaluate(default)
        result.default = session.trials[default.key]
        # Keep time to confirm the finalists against the default at the end.
        session.deadline = deadline - CONFIRM_ROUNDS * (FINALISTS + 1) * 1.5 * result.default.wall
        _STRATEGY[strategy](session, pools, random.Random(seed))
    except OutOfTime:
        result.status = "budget" if result.trials else "skipped"
        if not result.trials:
            result.detail = "the budget ran out before the default was timed"
    except KeyboardInterrupt:
        result.status = "interrupted"
    try:
        if session is not None and result.status != "interrupted" and result.default:
            _confirm(session, result, deadline)
    except KeyboardInterrupt:
        result.status = "interrupted"
    finally:
        if bar is not None:
            bar.close()
        rt.queue.finish()
        result.seconds = time.monotonic() - started
    return result


def tune_all(rt: Runtime, cases: Sequence[TuneCase], *, strategy: str = "exhaustive",
             budget: Optional[float] = None, max_runs: int = MAX_RUNS, seed: int = 0,
             progress: bool = False, on_result: Optional[Callable[[CaseResult], None]] = None,
             spaces: Optional[Mapping[str, SearchSpace]] = None,
             launchers: Optional[Mapping[tuple[str, str], Launcher]] = None
             ) -> list[CaseResult]:
    """Tune every case, cheapest first so that time a small case leaves over goes to
    the larger ones: each case gets an equal share of the budget that remains.
    ``on_result`` sees each result as soon as it is ready (the command writes the
    database there).  Results come back in the order of ``cases``; after a
    KeyboardInterrupt, only those done so far, the last one "interrupted"."""
    end = math.inf if budget is None else time.monotonic() + budget
    order = sorted(range(len(cases)), key=lambda i: cases[i].geometry.macs())
    results: dict[int, CaseResult] = {}
    for position, index in enumerate(order):
        left = len(order) - position
        deadline = (math.inf if budget is None
                    else time.monotonic() + (end - time.monotonic()) / left)
        result = tune_case(rt, cases[index], strategy=strategy, deadline=deadline,
                           max_runs=max_runs, seed=seed, progress=progress, spaces=spaces,
                           launchers=launchers)
        results[index] = result
        if on_result is not None:
            on_result(result)
        if result.status == "interrupted":
            break
    return [results[i] for i in sorted(results)]
