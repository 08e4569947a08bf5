"""The autotuner: search-space files, pruning by device limits, check-before-time,
the budget, resuming, concurrent tuners and the ops using what it found.

Timing runs on the PoCL devices only (never on a simulator) with tiny shapes and
budgets of a few seconds."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time

import numpy as np
import pyopencl as cl
import pytest
from conftest import DEVICES, is_simulator
from helpers import assert_close, conv2d_reference, random_array

import clconv
from clconv import config, conformance, cpu_vectors, search_space, tuner, tuning_db
from clconv.cli import main
from clconv.device_select import Runtime, runtime
from clconv.search_space import SearchSpaceError, load_space
from clconv.shapes import backprop_input_geometry, conv2d_geometry, parse_attrs

# The direct conv2d kernel as a family-agnostic launch, for the test-only families
# below (their configs are this kernel's).
DIRECT = conformance.registered_launch("direct", "conv2d")

TIMING_DEVICES = [d for d in DEVICES if not is_simulator(d)]


@pytest.fixture
def rt(device):
    if is_simulator(device):
        pytest.skip(f"no timing on the simulator {device.name}")
    return runtime(device.spec)


@pytest.fixture
def one_rt():
    """One timing device for the slower tests."""
    if not TIMING_DEVICES:
        pytest.skip("no non-simulator OpenCL device")
    return runtime(TIMING_DEVICES[-1].spec)


def small_conv2d(name="small", h=6, c_in=4, c_out=8):
    g = conv2d_geometry((1, h, h, c_in), (3, 3, c_in, c_out), parse_attrs(1, "SAME", "NHWC", None))
    return tuner.TuneCase(name, "conv2d", g)


def space_text(family, values="[2, 4]", local="[null, [1, 8]]", extra_limits=""):
    return f"""
family: {family}
kernel: {{source: conv2d_direct.cl, name: conv2d_direct}}
algorithms: {{conv2d: {family}}}
tunables:
  CO_BLOCK: {{values: {values}, default: {values.strip('[]').split(',')[0]!s}, doc: channels}}
  LOCAL_SIZE: {{values: {local}, default: null, doc: work-group}}
device_limits:
  - name: max_work_group_size
    expr: LOCAL_SIZE is None or prod(LOCAL_SIZE) <= max_work_group_size
    reason: the device's limit
  - name: max_work_item_sizes
    expr: LOCAL_SIZE is None or (LOCAL_SIZE[0] <= max_work_item_sizes[0]
      and LOCAL_SIZE[1] <= max_work_item_sizes[1])
    reason: the device's limit per dimension
{extra_limits}
"""


# --------------------------------------------------------------------------- search spaces


def test_shipped_spaces_load_and_every_algorithm_has_a_launcher():
    spaces = search_space.shipped_spaces()
    assert {"conv2d_direct", "backprop_direct"} <= set(spaces)
    for space in spaces.values():
        assert space.default_config() in list(space.configs())
        for op in space.algorithms:
            assert tuner.launcher_for(space, space.algorithms[op], op) is not None, \
                (space.family, op)
    backprop = {alg for alg, _ in search_space.spaces_for("conv2d_transpose")}
    assert {"direct", "via_forward"} <= backprop


@pytest.mark.parametrize("text, key, expected", [
    ("family: x\n", "kernel", "a mapping {source"),
    (space_text("bad_values", values="[]"), "tunables.CO_BLOCK.values",
     "a non-empty list"),
    (space_text("bad_default").replace("default: 2", "default: 3"),
     "tunables.CO_BLOCK.default", "one of the candidate values"),
    (space_text("bad_local", local="[null, [0, 8]]"), "tunables.LOCAL_SIZE.values[1]",
     "positive integers"),
    (space_text("bad_expr", extra_limits="  - {name: evil, expr: \"__import__('os')\", "
                                          "reason: test}"),
     "device_limits[2].expr", "only the functions"),
    (space_text("bad_attr", extra_limits="  - {name: attr, expr: \"LOCAL_SIZE.count\", "
                                          "reason: test}"),
     "device_limits[2].expr", "Attribute is not allowed"),
    (space_text("bad_name", extra_limits="  - {name: typo, expr: \"max_wg <= 1\", reason: test}"),
     "device_limits[2].expr", "unknown: max_wg"),
    (space_text("no_reason", extra_limits="  - {name: r, expr: \"1 < 2\"}"),
     "device_limits[2]", "exactly name, expr and reason"),
    ("family: x\nkernel: {source: a.cl, name: a}\nalgorithms: {conv2d: a}\ntunables: [1]\n",
     "tunables", "a mapping NAME"),
    ("family: [x\n", "", "not valid YAML at line"),
])
def test_malformed_space_file_names_file_key_and_expectation(text, key, expected):
    with pytest.raises(SearchSpaceError) as info:
        load_space(text, "configs/test.yaml")
    message = str(info.value)
    assert message.startswith("configs/test.yaml: "), message
    assert key in message and expected in message, message


def test_constraints_read_the_device_but_not_the_built_kernel():
    """Constraints prune candidates before anything is built: the device's values they
    may read (what is worth timing can depend on it), the built kernel's they may not."""
    device_rule = ("constraints:\n  - {name: wg, expr: \"max_work_group_size > 1\", "
                   "reason: r}\ndevice_limits:")
    load_space(space_text("leaky").replace("device_limits:", device_rule), "configs/test.yaml")
    kernel_rule = ("constraints:\n  - {name: wg, expr: \"kernel_work_group_size > 1\", "
                   "reason: r}\ndevice_limits:")
    with pytest.raises(SearchSpaceError, match=r"constraints\[0\].expr.*unknown: "
                                               r"kernel_work_group_size"):
        load_space(space_text("leaky").replace("device_limits:", kernel_rule),
                   "configs/test.yaml")


def test_cpu_candidates_keep_enough_groups_for_every_thread():
    """A fixed group shape that leaves fewer than 32 groups per compute unit is not
    worth timing on a CPU (its threads split them before a late one could take any
    over); on a GPU the same shape stays a candidate, and null (clconv's groups) stays
    everywhere.  u_mobilenet_1x1's GEMM: 1,568 pixels, 256 channels."""
    g = conv2d_geometry((8, 14, 14, 256), (1, 1, 256, 256), parse_attrs(1, "VALID", "NHWC", None))
    space = search_space.spaces_for("conv2d")
    gemm = dict(space)["gemm"]
    base = DEVICES[0]
    cpu = dataclasses.replace(base, kind="CPU", compute_units=2)
    gpu = dataclasses.replace(base, kind="GPU", compute_units=2)

    def rule_broken(info, local, tm=4, tn=64):
        config = {"TM": tm, "TN": tn, "VEC": 16, "LOCAL_SIZE": local}
        rule = gemm.violated(config, search_space.context(g, info, "conv2d", "gemm"),
                             gemm.constraints)
        return None if rule is None else rule.name

    # 4 x 392 tiles = 1,568 work-items: groups of 4 x 8 make 49, fewer than 64.
    assert rule_broken(cpu, [4, 8]) == "groups_for_every_thread"
    assert rule_broken(cpu, [1, 16]) is None and rule_broken(cpu, [4, 4]) is None  # 98
    assert rule_broken(cpu, None) is None
    assert rule_broken(dataclasses.replace(cpu, compute_units=1), [4, 8]) is None  # 49 >= 32
    assert rule_broken(gpu, [4, 8]) is None


def test_pruning_by_device_limits_before_building():
    small = dataclasses.replace(TIMING_DEVICES[0] if TIMING_DEVICES else DEVICES[0],
                                max_work_group_size=16, max_work_item_sizes=(4, 16, 1))
    case = small_conv2d(c_out=64)
    pools, sizes = tuner.pools_for(case, small)
    for pool in pools:
        size = sizes[pool.algorithm]
        assert size.after_limits < size.after_constraints <= size.total
        assert set(size.by_limit) <= {"max_work_group_size", "max_work_item_sizes",
                                      "accumulators_in_registers"}
        for candidate in pool.candidates:
            config = candidate.config  # tiled's group is (NDIMC, MDIMC), not LOCAL_SIZE
            local = config["LOCAL_SIZE"] if "LOCAL_SIZE" in config else \
                [config["NDIMC"], config["MDIMC"]]
            if local is not None:
                assert np.prod(local) <= 16 and local[0] <= 4 and local[1] <= 16, candidate


def test_limits_of_the_built_kernel_prune_after_building(rt):
    # A limit that reads CL_KERNEL_WORK_GROUP_SIZE (here a test-only, much tighter one)
    # can only be checked once the kernel is built: such candidates end as "pruned".
    limit = ("  - name: quarter_of_kernel_limit\n"
             "    expr: LOCAL_SIZE is None or prod(LOCAL_SIZE) * 4 <= "
             "kernel_work_group_size // 64\n"
             "    reason: test-only limit read from the built kernel\n")
    space = load_space(space_text("test_built_limit", local="[null, [1, 8], [4, 64]]",
                                  extra_limits=limit), "test_built_limit.yaml")
    launchers = {("test_built_limit", "conv2d"): tuner.Launcher(DIRECT)}
    result = tuner.tune_case(rt, small_conv2d(), spaces={space.family: space},
                             launchers=launchers)
    by_local = {str(t.candidate.config["LOCAL_SIZE"]): t.status for t in result.trials}
    assert by_local["[4, 64]"] == "pruned"
    assert result.best is not None and result.best.candidate.config["LOCAL_SIZE"] != [4, 64]


def test_tuning_under_small_device_limits_never_launches_beyond_them(one_rt):
    rt = one_rt
    info = dataclasses.replace(rt.info, max_work_group_size=8, max_work_item_sizes=(2, 8, 1))
    small = Runtime(rt.device, info, rt.context, rt.queue)
    space = search_space.shipped_spaces()["conv2d_direct"]
    launchers = {("conv2d_direct", "conv2d"): tuner.registry_launcher("direct", "conv2d")}
    result = tuner.tune_case(small, small_conv2d(), strategy="random",
                             deadline=time.monotonic() + 2, spaces={space.family: space},
                             launchers=launchers)
    assert result.spaces["direct"].by_limit
    assert result.trials
    for trial in result.trials:
        local = trial.candidate.config["LOCAL_SIZE"]
        assert local is None or (np.prod(local) <= 8 and local[0] <= 2), trial


# --------------------------------------------------------------------------- check before time


def _corrupting(mode):
    """Test-only launchers whose answer is wrong: "zeros" writes zeros and runs no
    kernel at all (faster than any correct candidate), "nudge" runs the real kernel
    and then shifts one element by 0.05."""
    run = DIRECT

    def launch(rt, x, w, y, g, config):
        if mode == "zeros":
            y.fill(rt.queue, 0)
        else:
            run(rt, x, w, y, g, config)
            host = y.get(rt.queue)
            host.reshape(-1)[host.size // 2] += np.float32(0.05)
            y.set(rt.queue, host)
        return cl.enqueue_marker(rt.queue)
    return launch


def test_wrong_candidates_are_rejected_and_never_chosen(rt):
    good = load_space(space_text("test_good", values="[2, 4, 8]"), "test_good.yaml")
    zeros = load_space(space_text("test_zeros", values="[4]"), "test_zeros.yaml")
    nudge = load_space(space_text("test_nudge", values="[4]"), "test_nudge.yaml")
    broken = load_space(space_text("test_broken", values="['4 +', 2]"), "test_broken.yaml")
    spaces = {s.family: s for s in (good, zeros, nudge, broken)}
    plain = tuner.Launcher(DIRECT)
    launchers = {("test_good", "conv2d"): plain, ("test_broken", "conv2d"): plain,
                 ("test_zeros", "conv2d"): tuner.Launcher(_corrupting("zeros")),
                 ("test_nudge", "conv2d"): tuner.Launcher(_corrupting("nudge"))}
    result = tuner.tune_case(rt, small_conv2d(), strategy="exhaustive", spaces=spaces,
                             launchers=launchers)
    assert result.status == "complete"
    statuses = {(t.candidate.family, str(t.candidate.config["CO_BLOCK"])): t.status
                for t in result.trials}
    for family in ("test_zeros", "test_nudge"):
        assert {statuses[(family, "4")]} == {"wrong"}, statuses
    assert statuses[("test_broken", "4 +")] == "build failed"
    failed = next(t for t in result.trials if t.status == "build failed")
    assert "-DCO_BLOCK=4 +" in failed.detail, failed.detail
    wrong = [t for t in result.trials if t.status == "wrong"]
    assert all("outside tolerance" in t.detail for t in wrong)
    assert result.best.candidate.family in ("test_good", "test_broken")
    assert result.chosen.candidate.family in ("test_good", "test_broken")
    entry = result.to_entry()
    assert set(entry["results"]) <= {"test_good", "test_broken"}
    assert entry["search"]["rejected"] == len(wrong) >= 2


# --------------------------------------------------------------------------- budget


def test_budget_is_a_hard_bound(one_rt, monkeypatch):
    cases = [small_conv2d("a"), small_conv2d("b", h=8, c_out=16)]
    # A launch under way is waited for: the run may end BUDGET_SLACK_S past the
    # budget, or one launch past it where a launch took longer (a first launch, which
    # PoCL compiles and nothing can interrupt: 2.5 s on a busy machine).  Every launch
    # of these tiny convs is otherwise microseconds.
    launches: list[float] = []
    real_run_once = tuner.Session._run_once

    def run_once(self, launch):
        started = time.monotonic()
        try:
            return real_run_once(self, launch)
        finally:
            launches.append(time.monotonic() - started)

    monkeypatch.setattr(tuner.Session, "_run_once", run_once)
    # On a machine whose cores are busy a short budget may end before a candidate is
    # timed; the budget doubles until each case keeps one, and it is a hard bound
    # every time.
    for budget in (3.0, 6.0, 12.0, 24.0):
        launches.clear()
        started = time.monotonic()
        results = tuner.tune_all(one_rt, cases, strategy="random", budget=budget)
        elapsed = time.monotonic() - started
        slack = max(tuner.BUDGET_SLACK_S, max(launches, default=0.0))
        assert elapsed <= budget + slack, f"{elapsed:.2f} s for {budget} s (+ {slack:.2f} s)"
        if all(r.best is not None for r in results):
            break
    assert {r.status for r in results} == {"budget"}
    assert all(r.best is not None for r in results), "the best so far is kept"
    assert all(r.best.ms <= r.default.ms for r in results if r.default.status == "ok")


# --------------------------------------------------------------------------- the ops use it


def test_ops_run_the_tuned_configuration(one_rt, db, monkeypatch):
    case = small_conv2d("ops", h=5, c_in=3, c_out=6)
    result = tuner.tune_case(one_rt, case, strategy="greedy", deadline=time.monotonic() + 3)
    tuning_db.record([result.to_entry()], db)
    best = result.chosen.candidate
    info = one_rt.info
    assert config.choose_algorithm("conv2d", info, case.geometry) == best.algorithm
    assert config.explain_config(best.family, info, "conv2d", case.geometry).source == "exact"

    built = []
    real_build = clconv.plans.build_plan
    lookups = []
    real_entries = tuning_db.entries
    monkeypatch.setattr(tuning_db, "entries", lambda p=None: lookups.append(p) or real_entries(p))
    monkeypatch.setattr(clconv.plans, "build_plan",
                        lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    config.invalidate()
    clconv.plans.forget_all()
    x, w = random_array((1, 5, 5, 3)), random_array((3, 3, 3, 6), seed=1)
    for _ in range(3):
        y = clconv.conv2d(x, w, 1, "SAME", device=info.spec)
    assert_close(y, conv2d_reference(x, w, case.geometry), np.float32, 27)
    assert len(lookups) <= 2, "one database look-up per shape (config + algorithm), not per call"
    (plan,) = built  # one plan for the three calls
    assert (plan.algorithm, plan.algorithm_source) == (best.algorithm, "exact")
    assert (plan.config, plan.config_source) == (dict(best.config), "exact")
    assert "exact" in plan.describe() and best.algorithm in plan.describe()


def test_the_baseline_is_what_the_op_runs_untuned(one_rt, db):
    """The default a tuning run measures against (and keeps unless beaten) is the
    shipped choice for the shape, defaults.yaml's algorithm_rules included: on a CPU a
    transpose from 128 channels to 3 runs direct untuned, so that is the baseline."""
    info = one_rt.info
    chosen = {}
    for dx_channels in (3, 64):
        g = conv2d_geometry((1, 16, 16, dx_channels), (5, 5, dx_channels, 128),
                            parse_attrs(2, "SAME", "NHWC", None))
        case = tuner.TuneCase("t", "conv2d_transpose", g)
        pools, _ = tuner.pools_for(case, info)
        default = tuner.default_candidate(case, info, pools)
        assert default.algorithm == config.choose_algorithm("conv2d_transpose", info, g)
        plan = clconv.plan("conv2d_transpose", (1, 8, 8, 128), (5, 5, dx_channels, 128), 2,
                           "SAME", (1, 16, 16, dx_channels), device=info.spec)
        assert (plan.algorithm, plan.config) == (default.algorithm, dict(default.config))
        chosen[dx_channels] = default.algorithm
    if info.kind == "CPU":
        assert chosen == {3: "direct", 64: "gemm"}
    # A batch-1 transpose from a 4 x 4 dy: the tuner times raw filters, so its baseline
    # is what a call with an unprepared filter runs (direct on a CPU), not the GEMM a
    # prepared filter gets.
    g = conv2d_geometry((1, 8, 8, 64), (4, 4, 64, 128), parse_attrs(2, "SAME", "NHWC", None))
    case = tuner.TuneCase("tiny", "conv2d_transpose", g)
    pools, _ = tuner.pools_for(case, info)
    plan = clconv.plan("conv2d_transpose", (1, 4, 4, 128), (4, 4, 64, 128), 2, "SAME",
                       (1, 8, 8, 64), device=info.spec)
    assert tuner.default_candidate(case, info, pools).algorithm == plan.runs(prepared=False)
    if info.kind == "CPU":
        assert (plan.runs(prepared=False), plan.runs(prepared=True)) == ("direct", "gemm")
    # A depthwise conv: the shipped gemm cannot compute it and a call falls back to
    # grouped, so grouped (with its configuration) is the baseline, not the first pool.
    g = conv2d_geometry((2, 16, 16, 16), (3, 3, 1, 16), parse_attrs(1, "SAME", "NHWC", None))
    case = tuner.TuneCase("depthwise", "conv2d", g)
    pools, _ = tuner.pools_for(case, info)
    default = tuner.default_candidate(case, info, pools)
    plan = clconv.plan("conv2d", (2, 16, 16, 16), (3, 3, 1, 16), 1, "SAME", device=info.spec)
    assert (default.algorithm, dict(default.config)) == ("grouped", plan.config)
    assert plan.algorithm == "grouped"


# --------------------------------------------------------------------------- the command


SUITE = """
cases:
  - {name: a, op: conv2d, input: [1, 5, 5, 4], filter: [3, 3, 4, 4], strides: 1, padding: SAME}
  - {name: b, op: conv2d_transpose, input: [1, 3, 3, 4], filter: [3, 3, 2, 4],
     output: [1, 6, 6, 2], strides: 2, padding: SAME}
  - {name: c, op: conv2d, input: [1, 4, 4, 2], filter: [1, 1, 2, 4], strides: 1, padding: VALID}
"""


def test_dry_run_prints_space_sizes(one_rt, db, capsys):
    assert main(["autotune", "--dry-run", "--device", one_rt.info.spec, "--op", "conv2d",
                 "--input", "1,6,6,4", "--filter", "3,3,4,8"]) == 0
    out = capsys.readouterr().out
    assert "constraints" in out and "device limits" in out and "conv2d_direct" in out
    assert not db.exists()


def test_interrupted_run_resumes(one_rt, db, tmp_path, monkeypatch, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    argv = ["autotune", str(suite), "--device", one_rt.info.spec, "--budget", "6",
            "--strategy", "random"]
    real = tuner.Session.evaluate

    def interrupt_in_b(self, candidate):
        if self.case.name == "b" and self.trials:  # after the default, at the next one
            raise KeyboardInterrupt
        return real(self, candidate)

    monkeypatch.setattr(tuner.Session, "evaluate", interrupt_in_b)
    assert main(argv) == 130
    statuses = {e["case"]: e["search"]["status"] for e in tuning_db.entries(db)}
    assert statuses.get("b") == "interrupted"
    finished_first = set(statuses) - {"b"}  # cases are tuned cheapest first

    monkeypatch.setattr(tuner.Session, "evaluate", real)
    tuned = []
    real_tune_case = tuner.tune_case
    monkeypatch.setattr(tuner, "tune_case",
                        lambda rt, case, **kw: tuned.append(case.name) or
                        real_tune_case(rt, case, **kw))
    # Room for both cases left: in 6 s a fresh CI checkout once spent 5 on b (builds new
    # to the machine's program cache), and a was then rightly skipped, untimed.
    argv[argv.index("--budget") + 1] = "15"
    assert main(argv) == 0
    assert set(tuned) == {"a", "b", "c"} - finished_first
    assert "b" in tuned
    entries = {e["case"]: e for e in tuning_db.entries(db)}
    assert set(entries) == {"a", "b", "c"}
    assert entries["b"]["search"]["status"] != "interrupted"
    # On a loaded machine the first run's 6 s can end before the cheapest case got a
    # timing (no entry, so nothing to take from the database): the resumed run then
    # tunes all three, which the set comparison above already demands.
    assert ("from database" in capsys.readouterr().out) == bool(finished_first)


def test_two_tuners_at_once_keep_both_results(one_rt, db, tmp_path):
    env = dict(os.environ, **{tuning_db.ENV_DB: str(db)})
    common = ["--device", one_rt.info.spec, "--budget", "4", "--strategy", "random", "--json", "-"]
    cases = [["--op", "conv2d", "--input", "1,5,5,4", "--filter", "3,3,4,4", "--name", "p"],
             ["--op", "conv2d", "--input", "1,4,4,8", "--filter", "1,1,8,4", "--name", "q"]]
    procs = [subprocess.Popen([sys.executable, "-m", "clconv.cli", "autotune", *case, *common],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for case in cases]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert sorted(e["case"] for e in tuning_db.entries(db)) == ["p", "q"]


# ------------------------------------------------------------------ defaults from the device


def test_gemm_tiles_follow_the_devices_vector_width_and_registers(monkeypatch):
    from clconv import gemm

    monkeypatch.setattr(gemm, "_two_wide_fma_pipes", lambda info: False)  # as on a Zen 4
    monkeypatch.setattr(cpu_vectors, "compiled_width", lambda info: None)  # as reported
    avx512 = dataclasses.replace(clconv.devices()[0], kind="CPU", preferred_float_vector_width=16)
    avx2 = dataclasses.replace(avx512, preferred_float_vector_width=8)
    gpu = dataclasses.replace(avx512, kind="GPU", preferred_float_vector_width=1)
    auto = {"TM": "auto", "TN": "auto", "VEC": "auto", "LOCAL_SIZE": None}
    assert gemm.vector_width(avx512) == 16 and gemm.vector_width(avx2) == 8
    assert gemm.vector_width(gpu) == 4  # the narrowest width the kernel has
    # fcn8s_up8's 21 channels: one 24-wide tile of 8-wide vectors, 6 pixels where 32
    # registers hold its 6 x 3 accumulators, 4 with 16 registers (AVX2: 6 would spill).
    tile = {name: tuple(gemm.tile_for(auto, 21, info)[key] for key in ("TM", "TN", "VEC"))
            for name, info in (("avx512", avx512), ("avx2", avx2))}
    assert tile == {"avx512": (6, 24, 8), "avx2": (4, 24, 8)}
    assert gemm.tile_for({**auto, "TM": 6}, 21, avx2)["TN"] == 8  # a caller's TM that cannot
    assert gemm.tile_for(auto, 256, avx512)["VEC"] == 16
    assert gemm.tile_for(auto, 256, avx2)["VEC"] == 8
    # 4 x 64 for few source channels is for cores with two 512-bit FMA pipes only.
    assert (gemm.tile_for(auto, 64, avx512, 3)["TM"], gemm.tile_for(auto, 64, avx512, 3)["TN"]) \
        == (6, 16)
    space = search_space.shipped_spaces()["gemm_implicit"]
    g = conv2d_geometry((1, 8, 8, 8), (3, 3, 8, 64), parse_attrs(1, "SAME", "NHWC", None))
    for info, fits in ((avx512, True), (avx2, False)):  # 6 x 24/8 + 3 + 1 = 22 registers
        context = search_space.context(g, info, "conv2d", "gemm")
        config = {"TM": 6, "TN": 24, "VEC": 8, "LOCAL_SIZE": None}
        assert (space.problem(config, context) is None) == fits
    context = search_space.context(g, avx2, "conv2d", "gemm")  # 4 x 24/8 + 3 + 1 = 16
    assert space.problem({**gemm.tile_for(auto, 21, avx2), "LOCAL_SIZE": None}, context) is None


def test_avx2_cores_get_wide_tiles_for_pointwise_convs_over_few_channels(monkeypatch):
    from clconv import gemm

    monkeypatch.setattr(gemm, "_two_wide_fma_pipes", lambda info: False)
    monkeypatch.setattr(cpu_vectors, "compiled_width", lambda info: None)  # as reported
    avx2 = dataclasses.replace(clconv.devices()[0], kind="CPU", preferred_float_vector_width=8)
    avx512 = dataclasses.replace(avx2, preferred_float_vector_width=16)
    auto = {"TM": "auto", "TN": "auto", "VEC": "auto", "LOCAL_SIZE": None}

    def tile(n_out, ch, pointwise, info=avx2, config=auto):
        resolved = gemm.tile_for(config, n_out, info, ch, pointwise=pointwise)
        return tuple(resolved[key] for key in ("TM", "TN", "VEC"))

    # A 1x1 conv over up to 32 channels to whole 32-channel tiles: 2 x 32.
    assert [tile(n, ch, True) for n, ch in ((192, 32), (96, 16), (64, 3))] == [(2, 32, 8)] * 3
    # Not over more channels, to other counts, for 3x3 filters, on AVX-512, or where the
    # caller set part of the tile.
    assert tile(192, 33, True) == tile(48, 32, True) == tile(192, 32, False) == (6, 16, 8)
    assert tile(80, 32, True, avx512) == (6, 16, 16)  # AVX-512: the test below
    assert tile(192, 32, True, dataclasses.replace(avx2, kind="GPU")) == (6, 16, 8)
    assert tile(192, 32, True, config={**auto, "TM": 6}) == (6, 16, 8)
    # What 2 x 32 resolves to for a 1x1 conv is a configuration the search space allows.
    space = search_space.shipped_spaces()["gemm_implicit"]
    g = conv2d_geometry((2, 28, 28, 32), (1, 1, 32, 192), parse_attrs(1, "SAME", "NHWC", None))
    context = search_space.context(g, avx2, "conv2d", "gemm")
    assert space.problem({**gemm._resolve(dict(auto), "conv2d", g, avx2), "LOCAL_SIZE": None},
                         context) is None
    assert gemm._resolve(dict(auto), "conv2d", g, avx2)["TN"] == 32


def test_avx512_cores_with_one_fma_pipe_get_wide_tiles_for_pointwise_convs(monkeypatch):
    from clconv import gemm

    two_pipes = False
    monkeypatch.setattr(gemm, "_two_wide_fma_pipes", lambda info: two_pipes)
    monkeypatch.setattr(cpu_vectors, "compiled_width", lambda info: None)  # as reported
    avx512 = dataclasses.replace(clconv.devices()[0], kind="CPU", preferred_float_vector_width=16)
    auto = {"TM": "auto", "TN": "auto", "VEC": "auto", "LOCAL_SIZE": None}

    def tile(n_out, ch, pointwise=True, config=auto):
        resolved = gemm.tile_for(config, n_out, avx512, ch, pointwise=pointwise)
        return tuple(resolved[key] for key in ("TM", "TN", "VEC"))

    # The widest row of whole tiles over few source channels: 64 where it divides, 48.
    assert [tile(n, ch) for n, ch in ((192, 32), (128, 64), (64, 3))] == [(4, 64, 16)] * 3
    assert [tile(n, ch) for n, ch in ((96, 16), (144, 24), (48, 64))] == [(4, 48, 16)] * 3
    # Not over more channels, to other counts, for 3x3 filters, or a caller's tile.
    assert tile(192, 65) == tile(80, 32) == tile(192, 32, pointwise=False) == (6, 16, 16)
    assert tile(192, 32, config={**auto, "TM": 6}) == (6, 16, 16)
    # Cores with two 512-bit pipes keep their own rules (twelve accumulators).
    two_pipes = True
    assert tile(192, 32) == (6, 32, 16)
    two_pipes = False
    space = search_space.shipped_spaces()["gemm_implicit"]
    for n_out in (192, 96):  # both tiles are configurations the search space allows
        g = conv2d_geometry((2, 28, 28, 32), (1, 1, 32, n_out), parse_attrs(1, "SAME", "NHWC",
                                                                             None))
        resolved = gemm._resolve(dict(auto), "conv2d", g, avx512)
        assert (resolved["TM"], resolved["TN"]) == (4, 64 if n_out == 192 else 48)
        context = search_space.context(g, avx512, "conv2d", "gemm")
        assert space.problem({**resolved, "LOCAL_SIZE": None}, context) is None


def test_cores_with_two_wide_fma_pipes_get_twelve_accumulators(monkeypatch):
    from clconv import gemm

    monkeypatch.setattr(gemm, "_two_wide_fma_pipes", lambda info: True)  # as on a Zen 5
    monkeypatch.setattr(cpu_vectors, "compiled_width", lambda info: None)  # as reported
    avx512 = dataclasses.replace(clconv.devices()[0], kind="CPU", preferred_float_vector_width=16)
    auto = {"TM": "auto", "TN": "auto", "VEC": "auto", "LOCAL_SIZE": None}
    tiles = {n: (gemm.tile_for(auto, n, avx512)["TM"], gemm.tile_for(auto, n, avx512)["TN"],
                 gemm.tile_for(auto, n, avx512)["VEC"])
             for n in (3, 16, 21, 48, 64, 96, 144, 256)}
    # 48 and 144: one 48-wide tile row (18 accumulators), no padded channels.
    assert tiles == {3: (6, 4, 4), 16: (6, 16, 16), 21: (6, 32, 16), 48: (6, 48, 16),
                     64: (6, 32, 16), 96: (6, 32, 16), 144: (6, 48, 16), 256: (6, 32, 16)}
    space = search_space.shipped_spaces()["gemm_implicit"]
    g = conv2d_geometry((1, 8, 8, 8), (3, 3, 8, 48), parse_attrs(1, "SAME", "NHWC", None))
    context = search_space.context(g, avx512, "conv2d", "gemm")
    assert space.problem({**gemm.tile_for(auto, 48, avx512), "LOCAL_SIZE": None}, context) is None
    # A caller's own VEC keeps the channel rule.
    assert gemm.tile_for({**auto, "VEC": 8}, 256, avx512)["TN"] == 16
    # Few source channels per tap (an RGB stem): 4 x 64 where the channels are whole
    # 64-wide tiles; more source channels, or other counts, keep the rules above.
    few = {(n, ch): tuple(gemm.tile_for(auto, n, avx512, ch)[key] for key in ("TM", "TN", "VEC"))
           for n in (32, 64, 128) for ch in (3, 16, 17)}
    assert few == {(32, 3): (6, 32, 16), (32, 16): (6, 32, 16), (32, 17): (6, 32, 16),
                   (64, 3): (4, 64, 16), (64, 16): (4, 64, 16), (64, 17): (6, 32, 16),
                   (128, 3): (4, 64, 16), (128, 16): (4, 64, 16), (128, 17): (6, 32, 16)}
    assert gemm.tile_for({**auto, "TM": 6}, 64, avx512, 3)["TN"] == 32  # a caller's TM
    stem = conv2d_geometry((1, 16, 16, 3), (7, 7, 3, 64), parse_attrs(2, "SAME", "NHWC", None))
    context = search_space.context(stem, avx512, "conv2d", "gemm")
    assert space.problem({**gemm.tile_for(auto, 64, avx512, 3), "LOCAL_SIZE": None},
                         context) is None
    space = search_space.shipped_spaces()["gemm_implicit"]
    g = conv2d_geometry((1, 8, 8, 8), (3, 3, 8, 21), parse_attrs(1, "SAME", "NHWC", None))
    context = search_space.context(g, avx512, "conv2d", "gemm")
    assert space.problem({**gemm.tile_for(auto, 21, avx512), "LOCAL_SIZE": None}, context) is None


def test_two_pipe_cores_take_twenty_four_accumulators_over_large_phases(monkeypatch):
    """On cores with two 512-bit FMA pipes a GEMM to a multiple of 32 channels whose
    reduction (taps x channels a phase) reaches DEEP_REDUCTION, over DEEP_MIN_PIXELS
    pixels a phase or more, takes 12 x 32 tiles (24 accumulators), a shorter one to a
    multiple of 64 channels 6 x 64; smaller phases, other channel counts and unknown
    reductions keep 6 x 32."""
    from clconv import gemm, registry

    monkeypatch.setattr(gemm, "_two_wide_fma_pipes", lambda info: True)
    monkeypatch.setattr(cpu_vectors, "compiled_width", lambda info: None)
    avx512 = dataclasses.replace(clconv.devices()[0], kind="CPU", preferred_float_vector_width=16)
    auto = {"TM": "auto", "TN": "auto", "VEC": "auto", "LOCAL_SIZE": None}
    assert (gemm.DEEP_REDUCTION, gemm.DEEP_MIN_PIXELS) == (1024, 256)

    def tile(n_out, reduction, pixels, config=auto):
        chosen = gemm.tile_for(config, n_out, avx512, 256, reduction=reduction, pixels=pixels)
        return chosen["TM"], chosen["TN"], chosen["VEC"]

    assert tile(256, 1024, 256) == (12, 32, 16)
    assert tile(256, 1024, 255) == (6, 32, 16)
    # Shorter reductions to multiples of 64: 6 x 64 (also 24 accumulators).
    assert tile(256, 1023, 256) == (6, 64, 16)
    assert tile(64, 32, 256) == (6, 64, 16)
    assert tile(64, 576, 255) == (6, 32, 16)
    assert tile(96, 576, 4096) == (6, 32, 16)  # not a multiple of 64
    assert tile(21, 4096, 4096) == (6, 32, 16)  # padded channels: not a multiple of 32
    assert tile(144, 4096, 4096) == (6, 48, 16)
    assert tile(256, 4096, 4096, {**auto, "TM": 8}) == (8, 32, 16)  # a caller's TM
    assert tile(256, 576, 4096, {**auto, "TM": 8}) == (8, 32, 16)
    assert tile(256, None, None) == (6, 32, 16)  # nothing known: 6 x 32
    # From geometries: deeplab's 3x3 over 256 channels (K 2304); a k4 s2 transpose from 256
    # channels (four phases of 4 taps: K 1024); the same from 128 channels (K 512).
    resolve = registry.get("gemm").resolve
    attrs = parse_attrs(1, "SAME", "NHWC", None)
    deeplab = conv2d_geometry((2, 64, 64, 256), (3, 3, 256, 256), attrs)
    assert resolve(dict(auto), "conv2d", deeplab, avx512)["TM"] == 12
    up = parse_attrs(2, "SAME", "NHWC", None)
    pix2pix = backprop_input_geometry((1, 128, 128, 128), (4, 4, 128, 256), (1, 64, 64, 256), up)
    assert resolve(dict(auto), "conv2d_transpose", pix2pix, avx512)["TM"] == 12
    narrow = backprop_input_geometry((1, 128, 128, 64), (4, 4, 64, 128), (1, 64, 64, 128), up)
    narrow_tile = resolve(dict(auto), "conv2d_transpose", narrow, avx512)
    assert (narrow_tile["TM"], narrow_tile["TN"]) == (6, 64)
    space = search_space.shipped_spaces()["gemm_implicit"]
    context = search_space.context(deeplab, avx512, "conv2d", "gemm")
    assert space.problem(resolve(dict(auto), "conv2d", deeplab, avx512), context) is None


def test_the_fma_probe_runs_once_and_only_on_wide_cpus():
    from clconv import fma_probe, gemm
    from clconv.device_select import find_device

    simulator = next((d for d in clconv.devices() if d.kind == "simulator"), None)
    if simulator is not None:  # a simulator dressed as an AVX-512 CPU is not probed
        dressed = dataclasses.replace(simulator, kind="CPU", preferred_float_vector_width=16)
        assert gemm._two_wide_fma_pipes(dressed) is False
        assert simulator.spec not in fma_probe._ratios
    wide = [d for d in DEVICES if d.kind == "CPU" and gemm.vector_width(d) >= 16]
    if not wide:
        pytest.skip("no CPU device with 16-wide vectors here")
    for each in wide:  # every PoCL: pip PoCL 3.0's fma() did not build on a Zen 4
        device, info = find_device(each.spec)
        ratio = fma_probe.chain_speedup(device, info.spec)
        assert ratio is not None and 0.5 < ratio < 4, (info.spec, ratio)  # 6 / 12 chains
        assert fma_probe.chain_speedup(device, info.spec) == ratio  # memoised
        assert gemm._two_wide_fma_pipes(info) == (ratio >= fma_probe.TWO_PIPES_RATIO)


@pytest.mark.parametrize("source", [
    "__kernel void other(__global float *out) { out[0] = 1.0f; }",  # builds, no chains6
    "__kernel void chains6(__global float *out) { out[0] = undeclared; }",  # no build
], ids=["kernels missing", "build error"])
def test_an_fma_probe_that_cannot_run_leaves_the_default_tile(monkeypatch, source):
    from clconv import fma_probe, gemm
    from clconv.device_select import find_device

    cpus = [d for d in DEVICES if d.kind == "CPU"]
    if not cpus:
        pytest.skip("no CPU device here")
    device, info = find_device(cpus[0].spec)
    monkeypatch.setattr(fma_probe, "SOURCE", source)
    monkeypatch.setattr(fma_probe, "_ratios", {})
    assert fma_probe.chain_speedup(device, "probe-failed") is None
    assert fma_probe._ratios == {"probe-failed": None}  # not tried again in this process
    # and an AVX-512 device whose probe failed gets the tile that needs no probe
    monkeypatch.setattr(gemm, "_chain_speedup", lambda _info: None)
    monkeypatch.setattr(cpu_vectors, "compiled_width", lambda _info: None)  # as reported
    wide = dataclasses.replace(info, preferred_float_vector_width=16)
    assert "not measured" in gemm.tile_rule(wide)
    auto = {"TM": "auto", "TN": "auto", "VEC": "auto"}
    assert {k: gemm.tile_for(auto, 64, wide, 3)[k] for k in auto} == \
        {"TM": 6, "TN": 16, "VEC": 16}


def test_cpu_vectors_follow_the_isa_the_compiler_targets():
    """Each CPU device's compiler targets an x86 ISA no wider than the host's (one
    that runs here), and the GEMM's width never exceeds it; elsewhere none is known."""
    from clconv import compiler_probe
    from clconv.device_select import find_device

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            found = re.search(r"^flags\s*:(.*)$", cpuinfo.read(), re.MULTILINE)
    except OSError:
        found = None
    flags = set(found.group(1).split()) if found else set()
    host_width = next((w for flag, w in (("avx512f", 16), ("avx", 8), ("sse2", 4))
                       if flag in flags), None)
    for info in DEVICES:
        device, info = find_device(info.spec)
        compiled = compiler_probe.compiled_vector_width(device, info.spec)
        if info.kind != "CPU" or host_width is None:
            assert compiled is None or info.kind == "CPU", (info.spec, compiled)
            continue
        assert compiled in (4, 8, 16) and compiled <= host_width, (info.spec, compiled)
        if "avx512" in info.name:  # PoCL names the CPU it builds for, when it does
            assert compiled == 16, info.name
        assert cpu_vectors.vector_width(info) <= compiled
        assert cpu_vectors.vector_registers(info) == (32 if cpu_vectors.vector_width(info)
                                                       == 16 else 16)


def test_a_cpu_reporting_wider_vectors_than_it_compiles_gets_tiles_for_its_compiler(
        monkeypatch):
    """pip PoCL 3.0 on a Zen 4: reports 16-wide, compiles AVX2 (16 registers)."""
    from clconv import gemm

    monkeypatch.setattr(gemm, "_two_wide_fma_pipes", lambda info: False)
    monkeypatch.setattr(cpu_vectors, "compiled_width", lambda info: 8)
    reports16 = dataclasses.replace(clconv.devices()[0], kind="CPU",
                                    preferred_float_vector_width=16)
    assert (cpu_vectors.vector_width(reports16), cpu_vectors.vector_registers(reports16)) \
        == (8, 16)
    assert "8-wide float, 16 registers (the device reports 16-wide; its compiler targets " \
           "AVX/AVX2)" in cpu_vectors.describe(reports16)
    auto = {"TM": "auto", "TN": "auto", "VEC": "auto"}
    tile = {n: tuple(gemm.tile_for(auto, n, reports16)[k] for k in auto) for n in (21, 256)}
    assert tile == {21: (4, 24, 8), 256: (6, 16, 8)}  # 6 x 24/8 would take 22 registers
    space = search_space.shipped_spaces()["gemm_implicit"]
    g = conv2d_geometry((1, 8, 8, 8), (3, 3, 8, 21), parse_attrs(1, "SAME", "NHWC", None))
    context = search_space.context(g, reports16, "conv2d", "gemm")
    assert context["vector_registers"] == 16
    assert "accumulators_in_registers" in space.problem(
        {"TM": 6, "TN": 24, "VEC": 8, "LOCAL_SIZE": None}, context)
