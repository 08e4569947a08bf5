"""Plans: one decision per call shape, many executions, from many threads.

- concurrent calls of all three ops, from 8 threads, give exactly (bit for bit)
  what a lone call gives, on every device;
- a plan held by the caller computes what the op computes, with the filter
  packed once (``prepare_filters``) or per call;
- ``describe()`` and the ``clconv`` logger say what was chosen and why;
- the registry is the only place that names the algorithms.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import is_simulator
from helpers import (
    algorithms_computing,
    assert_close,
    backprop_case,
    backprop_input_reference,
    call_op,
    conv2d_case,
    conv2d_reference,
    random_array,
    reduction_length,
)

import clconv
from clconv import plans, registry

THREADS = 8
CALLS = 100

# (op, operand shape, filter shape, output shape or None, strides, padding): small
# layers of all three ops, two shapes per op, so threads mix plans and share them.
CALLS_TABLE = [
    ("conv2d", (1, 8, 8, 16), (3, 3, 16, 16), None, 1, "SAME"),
    ("conv2d", (2, 6, 7, 5), (3, 2, 5, 7), None, 2, "VALID"),
    ("conv2d_transpose", (1, 4, 4, 8), (3, 3, 8, 8), (1, 8, 8, 8), 2, "SAME"),
    ("conv2d_transpose", (2, 3, 5, 6), (4, 4, 3, 6), (2, 6, 10, 3), 2, "SAME"),
    ("conv2d_backprop_input", (1, 4, 4, 4), (3, 3, 6, 4), (1, 9, 9, 6), 2, "VALID"),
    ("conv2d_backprop_input", (2, 4, 4, 4), (3, 3, 4, 4), (2, 4, 4, 4), 1, "SAME"),
]
ALGORITHMS = (None, "gemm", "direct")  # None: clconv's choice


def test_concurrent_calls_give_exactly_the_lone_results(device, spec):
    # Every thread has data of its own, on the same shapes as the others: a call that
    # launched with another thread's arguments or buffers shows as a wrong result.
    jobs = {}
    for t in range(THREADS):
        for i, (op, x_shape, w_shape, out_shape, strides, padding) in enumerate(CALLS_TABLE):
            for algorithm in ALGORITHMS:
                x = random_array(x_shape, seed=1000 * t + i)
                w = random_array(w_shape, seed=1000 * t + 100 + i)
                lone = call_op(op, x, w, out_shape, strides, padding, spec, algorithm)
                jobs.setdefault(t, []).append((op, x, w, out_shape, strides, padding,
                                               algorithm, lone))
    calls = CALLS if not is_simulator(device) else 12  # the simulator runs ~1000x slower
    failures: list[str] = []
    start = threading.Barrier(THREADS)
    switch_every = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between any two bytecodes

    def worker(t: int) -> None:
        rng = np.random.default_rng(t)
        start.wait()
        for _ in range(calls):
            op, x, w, out_shape, strides, padding, algorithm, lone = jobs[t][
                rng.integers(len(jobs[t]))]
            try:
                got = call_op(op, x, w, out_shape, strides, padding, spec, algorithm)
            except Exception as exc:  # noqa: BLE001 - any error in a thread is a failure
                failures.append(f"{op} {algorithm}: {type(exc).__name__}: {exc}")
                continue
            if not np.array_equal(got, lone):
                failures.append(f"{op} {x.shape} {algorithm}: max difference "
                                f"{np.max(np.abs(got - lone))}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch_every)
    assert not failures, f"{len(failures)} of {THREADS * calls} calls differ: {failures[:5]}"


def test_one_plan_shared_by_threads_with_prepared_and_plain_filters(device, spec):
    g = backprop_case((2, 8, 8, 6), (3, 3, 6, 8), (2, 4, 4, 8), 2, "SAME")
    dy, w = random_array((2, 4, 4, 8), seed=1), random_array((3, 3, 6, 8), seed=2)
    plan = clconv.plan("conv2d_transpose", dy.shape, w.shape, 2, "SAME",
                       output_shape=(2, 8, 8, 6), device=spec)
    packed = plan.prepare_filters(w)
    lone = plan.execute(dy, w)
    assert_close(lone, backprop_input_reference(dy, w, g), np.float32, 3 * 3 * 8)
    calls = 50 if not is_simulator(device) else 6
    results: list[bool] = []

    def worker(use_packed: bool) -> None:
        for _ in range(calls):
            results.append(np.array_equal(plan.execute(dy, packed if use_packed else w), lone))

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == THREADS * calls and all(results)


def test_prepared_filters_are_a_snapshot_and_belong_to_their_plan(spec):
    x, w = random_array((1, 6, 6, 4)), random_array((3, 3, 4, 5), seed=3)
    plan = clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", device=spec)
    packed = plan.prepare_filters(w)
    expected = clconv.conv2d(x, w, 1, "SAME", device=spec)
    w[...] = 0  # the caller changes its array: the packed copy does not follow
    assert np.array_equal(plan.execute(x, packed), expected)
    assert not np.any(plan.execute(x, w))  # the plain array is read at each call
    other = clconv.plan("conv2d", (1, 7, 7, 4), w.shape, 1, "SAME", device=spec)
    with pytest.raises(clconv.InvalidArgumentError, match="another plan"):
        other.execute(random_array((1, 7, 7, 4)), packed)
    with pytest.raises(clconv.InvalidArgumentError, match=r"input has shape \[1, 6, 7, 4\]"):
        plan.execute(random_array((1, 6, 7, 4)), w)


def test_a_plan_computes_what_the_op_computes_for_every_algorithm(spec, device):
    dy, w = random_array((1, 3, 3, 4), seed=5), random_array((3, 3, 2, 4), seed=6)
    for algorithm in algorithms_computing("conv2d_transpose", info=device):
        plan = clconv.plan("conv2d_transpose", dy.shape, w.shape, 2, "SAME",
                           output_shape=[1, 6, 6, 2], device=spec, algorithm=algorithm)
        assert plan.algorithm == algorithm and plan.algorithm_source == "requested"
        op = clconv.conv2d_transpose(dy, w, [1, 6, 6, 2], 2, "SAME", device=spec,
                                     algorithm=algorithm)
        assert np.array_equal(plan.execute(dy, w), op)
        assert np.array_equal(plan.execute(dy, plan.prepare_filters(w)), op)


def test_describe_and_the_log_say_what_was_chosen(spec, device, caplog, db):
    plans.forget_all()
    with caplog.at_level(logging.DEBUG, logger="clconv"):
        plan = clconv.plan("conv2d", (1, 9, 9, 3), (3, 3, 3, 4), 1, "SAME", device=spec)
    text = plan.describe()
    assert f"[{spec}]" in text and device.name in text and plan.algorithm in text
    assert plan.family in text and re.search(r"\((generic|device defaults)\)", text), text
    assert any("plan built" in r.getMessage() and text in r.getMessage()
               for r in caplog.records)
    # gemm computes ungrouped convolutions: a grouped one falls back, and says so.
    grouped = clconv.plan("conv2d", (1, 9, 9, 4), (3, 3, 2, 4), 1, "SAME", device=spec)
    assert grouped.algorithm == "grouped" and "fallback" in grouped.algorithm_source
    assert "groups" in grouped.algorithm_source


def test_an_algorithm_that_cannot_compute_the_call_is_refused_with_the_reason(spec):
    with pytest.raises(clconv.UnimplementedError, match="ungrouped"):
        clconv.plan("conv2d", (1, 5, 5, 4), (3, 3, 2, 6), 1, "SAME", device=spec,
                    algorithm="gemm")
    with pytest.raises(clconv.InvalidArgumentError, match="not one of"):
        clconv.plan("conv2d", (1, 5, 5, 4), (3, 3, 4, 6), 1, "SAME", device=spec,
                    algorithm="via_forward")


def test_unprepared_filters_of_a_tiny_transpose_run_the_rules_algorithm(device, spec, caplog):
    """A transpose from a 3 x 3 dy (9 pixels) with a 288 KB filter: on a CPU a call
    with a raw filter (host memory past AUTO_PACK_BYTES, or a pyopencl array) runs the
    algorithm of defaults.yaml's rule for unprepared filters, a prepared one the plan's
    own; describe() says both, and every form gives the float64 reference's values."""
    import pyopencl.array as cl_array

    dy, w = random_array((1, 3, 3, 64), seed=61), random_array((3, 3, 128, 64), seed=62)
    assert w.nbytes > plans.AUTO_PACK_BYTES
    plans.forget_all()  # the rule's plan is built (and logged) at the first raw call
    plan = clconv.plan("conv2d_transpose", dy.shape, w.shape, 2, "SAME", (1, 6, 6, 128),
                       device=spec)
    cpu = device.kind == "CPU"
    raw_algorithm = plan.runs(prepared=False)
    assert (raw_algorithm != plan.algorithm) == cpu
    assert plan.runs(prepared=True) == plan.algorithm
    assert ("unprepared filters: algorithm" in plan.describe()) == cpu
    g = backprop_case((1, 6, 6, 128), w.shape, dy.shape, 2, "SAME")
    want = backprop_input_reference(dy, w, g)
    queue = clconv.runtime(spec).queue
    with caplog.at_level(logging.DEBUG, logger="clconv"):
        results = {"host": plan.execute(dy, w),
                   "pyopencl": plan.execute(dy, cl_array.to_device(queue, w)),
                   "prepared": plan.execute(dy, plan.prepare_filters(w))}
    built = [r.getMessage() for r in caplog.records if "plan built" in r.getMessage()]
    assert any(f"algorithm {raw_algorithm} (requested)" in m for m in built) == cpu, built
    for form, got in results.items():
        assert_close(got, want, np.float32, reduction_length(g, transpose=True)), form


def test_a_tuned_choice_for_raw_filters_leaves_prepared_ones_the_shipped_algorithm(
        device, spec, db):
    """The tuner times calls with raw filters: where its database entry for a tiny
    transpose names the algorithm of the CPU rule for unprepared filters (direct), raw
    filters run that, with its tuned configuration, and prepared ones the shipped GEMM;
    an entry naming the GEMM leaves one algorithm for both."""
    from clconv import config, tuning_db

    if device.kind != "CPU":
        pytest.skip("the rule for unprepared filters is a CPU rule")
    rt = clconv.runtime(spec)
    dy, w = random_array((1, 3, 3, 64), seed=81), random_array((3, 3, 128, 64), seed=82)
    g = backprop_case((1, 6, 6, 128), w.shape, dy.shape, 2, "SAME")
    tuned = {"CI_BLOCK": 4, "CO_VEC": 16, "LOCAL_SIZE": None}
    for algorithm, family, chosen in (("direct", "backprop_direct", tuned),
                                      ("gemm", "gemm_implicit", None)):
        tuning_db.record([{
            "case": "t", "op": "conv2d_transpose", "device": tuning_db.device_key(rt.info),
            "clconv": config.clconv_version(), "source_hash": config.op_source_hash(
                "conv2d_transpose"), "geometry": tuning_db.geometry_dict(g),
            "algorithm": algorithm, "results": {algorithm: {
                "family": family, "config": chosen or {"TM": 6, "TN": 32, "VEC": 16,
                                                       "LOCAL_SIZE": None}, "ms": 1.0}},
            "search": {"strategy": "exhaustive", "status": "complete"}}], db)
        config.invalidate()
        plans.forget_all()
        plan = clconv.plan("conv2d_transpose", dy.shape, w.shape, 2, "SAME", (1, 6, 6, 128),
                           device=spec)
        assert plan.runs(prepared=True) == "gemm", plan.describe()
        assert plan.runs(prepared=False) == algorithm, plan.describe()
        want = backprop_input_reference(dy, w, g)
        for got in (plan.execute(dy, w), plan.execute(dy, plan.prepare_filters(w))):
            assert_close(got, want, np.float32, reduction_length(g, transpose=True))
        if algorithm == "direct":
            raw = plans.get_plan(rt, "conv2d_transpose", g, np.float32, "direct")
            assert (raw.config, raw.config_source) == (tuned, "exact")


def test_only_algorithms_that_read_depth_taps_get_a_3d_geometry(spec):
    """A geometry with depth taps (clconv.depth's 3-D convs read in place) is refused by
    the 2-D-only algorithms, with the reason; the GEMM takes it for every op."""
    from clconv.depth import Geometry3d, depth_geometry

    g = depth_geometry(Geometry3d(1, (4, 5, 5), 3, (3, 3, 3), (4, 5, 5), 4, (1, 1, 1),
                                  (1, 1, 1), ((1, 1), (1, 1), (1, 1))))
    rt = clconv.runtime(spec)
    for name in registry.algorithms_for("conv2d"):
        reason = registry.unsupported(name, "conv2d", np.float32, g, rt.info)
        assert (reason is None) == registry.get(name).depth_taps, (name, reason)
        if not registry.get(name).depth_taps:
            assert "2-D convolutions only" in reason
    with pytest.raises(clconv.UnimplementedError, match="2-D convolutions only"):
        plans.build_plan(rt, "conv2d", g, np.float32, registry.UNIVERSAL)
    for op in ("conv2d_backprop_input", "conv2d_transpose"):
        assert registry.unsupported("gemm", op, np.float32, g, rt.info) is None
    plan = plans.build_plan(rt, "conv2d", g, np.float32, "gemm")
    assert plan.input_shape == (1, 4, 5, 5, 3) and plan.filter_shape == (3, 3, 3, 3, 4)


def test_device_tensors_merge_axes_their_strides_allow(spec):
    """A 3-D tensor's batch and depth read as one axis of planes (what the depth-tap
    GEMM does): a C-contiguous tensor merges, and so does every other depth (the
    planes stay evenly spaced); a run of depths inside each image does not, and is
    refused with its shape and strides, never read wrongly."""
    import pyopencl.array as cl_array

    from clconv.tensors import DeviceTensor

    queue = clconv.runtime(spec).queue
    whole = DeviceTensor.of_array(cl_array.zeros(queue, (2, 3, 4, 5, 6), np.float32))
    planes = whole.merged(0)
    assert (planes.shape, planes.strides) == ((6, 4, 5, 6), (120, 30, 6, 1))
    deep = cl_array.zeros(queue, (2, 6, 4, 5, 6), np.float32)
    assert DeviceTensor.of_array(deep[:, ::2]).merged(0).strides[0] == 240
    with pytest.raises(clconv.InvalidArgumentError, match=r"shape \[2, 3, 4, 5, 6\]"):
        DeviceTensor.of_array(deep[:, 1:4]).merged(0)
    one = DeviceTensor.of_array(deep[:1, 1:4])  # one image: any depth step is the stride
    assert (one.merged(0).shape[0], one.merged(0).offset) == (3, 120)


def test_repeated_calls_reuse_one_plan(spec, monkeypatch):
    built = []
    real = plans.build_plan
    monkeypatch.setattr(plans, "build_plan", lambda *a, **k: built.append(1) or real(*a, **k))
    plans.forget_all()
    clconv.ops.forget_calls()
    x, w = random_array((1, 5, 5, 3)), random_array((2, 2, 3, 2))
    for _ in range(5):
        clconv.conv2d(x, w, 1, "VALID", device=spec)
    assert len(built) == 1


def test_memory_is_bounded_over_many_shapes(spec):
    # Zero output channels: a plan per shape, and no kernel to wait for (the simulator
    # takes a second or so per launch).
    w = random_array((1, 1, 2, 0))
    for size in range(1, plans.PLAN_CACHE_SIZE + 40):
        y = clconv.conv2d(random_array((1, 1, size, 2)), w, 1, "VALID", device=spec,
                          algorithm="direct")
        assert y.shape == (1, 1, size, 0)
    assert plans.cached_plans() <= plans.PLAN_CACHE_SIZE
    assert len(clconv.ops._calls) <= clconv.ops.CALL_MEMO_SIZE


def test_only_the_registry_names_the_algorithms():
    """Outside the modules that declare them (and docstrings), no code spells an
    algorithm's name: ops, plans, tuner, conformance and bench read the registry."""
    package = Path(clconv.__file__).parent
    declaring = {"registry.py", "gemm.py", "direct.py", "tiled.py", "grouped.py", "col2im.py"}
    names = "|".join(registry.algorithms_for("conv2d_transpose"))
    quoted = re.compile(rf"""["']({names})["']""")
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name in declaring:
            continue
        code = re.sub(r'"""[\s\S]*?"""', "", path.read_text())  # docstrings are docs
        for line in code.splitlines():
            if quoted.search(line.split("#")[0]):
                found.append(f"{path.relative_to(package)}: {line.strip()}")
    assert not found, found


def test_out_writes_into_the_callers_array(spec):
    import pyopencl.array as cl_array

    from clconv.device_select import runtime

    queue = runtime(spec).queue
    x, w = random_array((1, 5, 5, 3), seed=7), random_array((3, 3, 2, 3), seed=8)
    out = cl_array.empty(queue, (1, 10, 10, 2), np.float32)
    got = clconv.conv2d_transpose(x, w, [1, 10, 10, 2], 2, "SAME", device=spec, out=out)
    assert got is out
    g = backprop_case((1, 10, 10, 2), w.shape, x.shape, 2, "SAME")
    assert_close(out.get(), backprop_input_reference(x, w, g), np.float32, 3 * 3 * 3)
    with pytest.raises(clconv.InvalidArgumentError, match=r"out has shape \[1, 9, 9, 2\]"):
        clconv.conv2d_transpose(x, w, [1, 10, 10, 2], 2, "SAME", device=spec,
                                out=cl_array.empty(queue, (1, 9, 9, 2), np.float32))
    for _ in range(2):  # a numpy out is refused with the rule, remembered call or not
        with pytest.raises(clconv.InvalidArgumentError, match="out must be a pyopencl array"):
            clconv.conv2d_transpose(x, w, [1, 10, 10, 2], 2, "SAME", device=spec,
                                    out=np.zeros((1, 10, 10, 2), np.float32))


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch of the test: (kernel name, global size, local size)."""
    from clconv.programs import TypedKernel

    seen = []
    real = TypedKernel.enqueue

    def recording(self, queue, global_size, local_size, args):
        seen.append((self.name, tuple(global_size), local_size))
        return real(self, queue, global_size, local_size, args)

    monkeypatch.setattr(TypedKernel, "enqueue", recording)
    return seen


def test_gpu_launches_never_leave_the_group_size_to_the_runtime(device, spec, launches):
    """A GPU-kind device gets the GPU defaults and a local size on every launch, with
    the NDRange padded to it; run on this device (pretending to be a GPU), every
    algorithm still computes the reference's values."""
    import dataclasses

    from clconv.device_select import Runtime, runtime

    rt = runtime(spec)
    gpu = Runtime(rt.device, dataclasses.replace(rt.info, kind="GPU"), rt.context, rt.queue)
    # 7 x 7 pixels, 5 channels: prime tile counts, the case a runtime's pick gets wrong.
    dy, w = random_array((1, 7, 7, 5), seed=11), random_array((3, 3, 3, 5), seed=12)
    g = backprop_case((1, 13, 13, 3), w.shape, dy.shape, 2, "SAME")
    expected = backprop_input_reference(dy, w, g)
    for algorithm in algorithms_computing("conv2d_transpose", info=gpu.info):
        plan = plans.build_plan(gpu, "conv2d_transpose", g, np.float32, algorithm)
        if algorithm == "gemm":
            assert plan.config["LOCAL_SIZE"] == [1, 64] and plan.config_source != "generic"
        assert_close(plan.execute(dy, w), expected, np.float32, 3 * 3 * 5)
    assert launches and all(local is not None for _, _, local in launches), launches
    assert all(n % size == 0 for _, glob, local in launches for n, size in zip(glob, local))


def test_cpu_ranges_get_groups_of_whole_pixel_tiles_enough_for_every_thread():
    """PoCL, given a NULL local size, makes as few groups as it can (one for a range
    that fits one group) and its threads split a few groups before either starts.
    clconv groups all channel tiles (and, where enough groups remain, all stride phases)
    of some pixel tiles, about GROUPS_PER_UNIT groups per compute unit, and leaves tiny
    ranges and ranges without a pixel axis to the runtime."""
    from clconv.programs import GROUPS_PER_UNIT, cpu_local_size, ndrange

    assert GROUPS_PER_UNIT == 128  # the figures below assume it
    # hifigan_res_k7's GEMM: 8 channel tiles x 342 pixel tiles, one group in PoCL's hands.
    assert cpu_local_size((8, 342, 1), axis=1, max_group=4096, units=2) == (8, 1, 1)
    assert ndrange((8, 342, 1), None, "CPU", axis=1, max_group=4096, units=2) == (
        (8, 342, 1), (8, 1, 1))
    # resnet_3x3_fwd: 2 x 4,182 tiles (three groups of PoCL's) -> 16 pixel tiles a group,
    # the range rounded up to whole groups (the kernel checks its pixel-tile bound).
    assert ndrange((2, 4182, 1), None, "CPU", axis=1, max_group=4096, units=2) == (
        (2, 4192, 1), (2, 16, 1))
    # Four 1x1 phases of a transpose read the same input: grouped with their pixel tile.
    assert cpu_local_size((2, 10923, 4), axis=1, max_group=4096, units=2) == (2, 42, 4)
    # ... unless that left fewer than MIN_GROUPS_PER_UNIT groups per unit (43 tiles).
    assert cpu_local_size((4, 43, 8), axis=1, max_group=4096, units=2) == (4, 1, 1)
    # More compute units, more groups; groups never past the device's or CPU_MAX_GROUP.
    assert cpu_local_size((2, 4182, 1), axis=1, max_group=4096, units=16) == (2, 2, 1)
    assert cpu_local_size((2, 10 ** 6, 1), axis=1, max_group=4096, units=1) == (2, 512, 1)
    assert cpu_local_size((2, 10 ** 6, 1), axis=1, max_group=64, units=1) == (2, 32, 1)
    assert cpu_local_size((3000,), axis=0, max_group=4096) is None
    assert cpu_local_size((1, 11, 1), axis=1, max_group=4096) is None  # microseconds of work
    # An explicit LOCAL_SIZE, and simulators, are never overridden.
    assert ndrange((8, 342), (1, 16), "CPU", axis=1, max_group=4096) == ((8, 352), (1, 16))
    assert ndrange((8, 342), None, "simulator", axis=1, max_group=4096) == ((8, 342), None)


def test_weight_major_cpu_ranges_group_one_channel_block_over_pixels(device, spec, launches):
    """A direct input gradient whose filter outweighs dy (gan_tiny_b1: 32 blocks of 8
    dx channels x 64 dx pixels, an 8 MB filter) groups one channel block with up to
    WEIGHT_MAJOR_PIXELS pixels, so the block's filter slice serves them all; with too few
    blocks to share between the threads, or where dy outweighs the filter, the usual
    groups; the values are the reference's either way."""
    from clconv.programs import WEIGHT_MAJOR_PIXELS, cpu_local_size

    assert WEIGHT_MAJOR_PIXELS == 16
    assert cpu_local_size((32, 64), axis=1, max_group=4096, units=2,
                          weight_major=True) == (1, 16)
    assert cpu_local_size((32, 64), axis=1, max_group=4096, units=2) == (32, 1)
    assert cpu_local_size((4, 64), axis=1, max_group=4096, units=2,
                          weight_major=True) == cpu_local_size((4, 64), 1, 4096, 2)
    dy, w = random_array((1, 4, 4, 64), seed=71), random_array((4, 4, 64, 64), seed=72)
    g = backprop_case((1, 8, 8, 64), w.shape, dy.shape, 2, "SAME")
    plan = clconv.plan("conv2d_transpose", dy.shape, w.shape, 2, "SAME", (1, 8, 8, 64),
                       device=spec, algorithm="direct")
    assert_close(plan.execute(dy, w), backprop_input_reference(dy, w, g), np.float32,
                 reduction_length(g, transpose=True))
    (_, global_size, local), = [launch for launch in launches
                                if launch[0] == "backprop_direct"][-1:]
    if device.kind == "CPU":  # 8 blocks of 8 channels x 64 pixels: one block a group
        assert (global_size, local) == ((8, 64), (1, 16))


def test_cpu_ranges_whose_filter_outgrows_a_core_cache_group_one_channel_tile():
    """Where each pixel tile of the usual group (every channel tile and phase) would read
    more filter than CACHE_SHARE_FOR_FILTER of one core's cache, a group holds one
    channel tile of one phase over up to WEIGHT_MAJOR_PIXELS pixel tiles (fewer where
    the threads would run short of groups, never under PANEL_MIN_PIXEL_TILES)."""
    from clconv.programs import (CACHE_SHARE_FOR_FILTER, PANEL_MIN_PIXEL_TILES,
                                 WEIGHT_MAJOR_PIXELS, cpu_local_size)

    assert (CACHE_SHARE_FOR_FILTER, WEIGHT_MAJOR_PIXELS, PANEL_MIN_PIXEL_TILES) == (0.75, 16, 4)
    mb = 1 << 20
    # dcgan_g2: 8 channel tiles x 171 pixel tiles x 4 phases, 400 KB of panel each:
    # 12.5 MB a pixel tile in the usual groups.
    dcgan_g2 = dict(work=(8, 171, 4), axis=1, max_group=4096, units=2, slice_bytes=409600)
    assert cpu_local_size(**dcgan_g2, cache_bytes=2 * mb) == (1, 16, 1)
    assert cpu_local_size(**dcgan_g2, cache_bytes=32 * mb) == (8, 1, 4)
    assert cpu_local_size(**dcgan_g2) == (8, 1, 4)  # no cache size given: the usual groups
    # Just under and just over the share (3 channel tiles of 512 KB; a 2 MB cache).
    bwd = dict(work=(3, 262, 1), axis=1, max_group=4096, units=2, cache_bytes=2 * mb)
    assert cpu_local_size(**bwd, slice_bytes=512 << 10) == (3, 1, 1)
    # 786 tiles make 64 groups (32 per unit) of 12 pixel tiles, not 16.
    assert cpu_local_size(**bwd, slice_bytes=(512 << 10) + 4096) == (1, 12, 1)
    # Too few tiles for groups of 4 for every thread: the usual groups.
    few = dict(work=(2, 120, 1), axis=1, max_group=4096, units=2, cache_bytes=mb)
    assert cpu_local_size(**few, slice_bytes=mb) == cpu_local_size(**few)


def test_a_gemm_whose_filter_outgrows_the_core_cache_keeps_its_values(
        device, spec, launches, monkeypatch):
    """A GEMM whose filter overflows one core's cache (here a cache made small enough
    for a small conv) launches with groups of one channel tile and one phase on a CPU
    and computes the reference's values."""
    from clconv import host_cpu
    from clconv.device_select import runtime

    monkeypatch.setattr(host_cpu, "core_cache_bytes", lambda: 16 << 10)
    rt = runtime(spec)
    dy, w = random_array((2, 12, 12, 32), seed=23), random_array((3, 3, 24, 32), seed=24)
    g = backprop_case((2, 24, 24, 24), w.shape, dy.shape, 2, "SAME")
    plan = plans.build_plan(rt, "conv2d_backprop_input", g, np.float32, "gemm",
                            {"TM": 4, "TN": 8, "VEC": 4})
    assert_close(plan.execute(dy, w), backprop_input_reference(dy, w, g), np.float32,
                 reduction_length(g, transpose=True))
    gemm = [(glob, local) for name, glob, local in launches if name == "gemm_implicit"]
    assert gemm
    # 3 channel tiles x 72 pixel tiles x 4 phases: groups of 4-16 pixel tiles where that
    # leaves 32 groups per compute unit.
    if rt.info.kind == "CPU" and 3 * 72 * 4 // (32 * rt.info.compute_units) >= 4:
        (global_size, local), = gemm[-1:]
        assert local[0] == local[2] == 1 and 4 <= local[1] <= 16, gemm
        assert global_size == (3, -(-72 // local[1]) * local[1], 4), gemm


def test_cpu_plans_of_small_ranges_launch_their_own_groups(device, spec, launches):
    """On a CPU device a small call's GEMM launches with clconv's groups (dividing its
    range) and computes the reference's values."""
    from clconv.device_select import runtime

    rt = runtime(spec)
    if rt.info.kind != "CPU":
        pytest.skip(f"{rt.info.label} is not a CPU device")
    x, w = random_array((1, 1, 2048, 12), seed=21), random_array((1, 7, 12, 10), seed=22)
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    plan = plans.build_plan(rt, "conv2d", g, np.float32, "gemm")
    assert_close(plan.execute(x, w), conv2d_reference(x, w, g), np.float32, 7 * 12)
    gemm = [(glob, local) for name, glob, local in launches if name == "gemm_implicit"]
    # All channel tiles of a pixel tile in a group, groups enough for every unit.
    assert gemm and all(local is not None and local[0] == glob[0] and local[2] == glob[2]
                        and glob[1] // local[1] >= 2 * rt.info.compute_units
                        for glob, local in gemm), gemm


def test_a_gpu_with_small_groups_gets_configurations_it_can_run(device, spec):
    """Shipped GPU defaults ask for groups of 64 and 128; a device that holds at most 32
    work-items per group runs the kernels' own defaults instead (saying why), with
    clconv's groups cut to its limits, and computes the same values."""
    import dataclasses

    from clconv.device_select import Runtime, runtime

    rt = runtime(spec)
    small = dataclasses.replace(rt.info, kind="GPU", max_work_group_size=32,
                                max_work_item_sizes=(32, 16, 1))
    gpu = Runtime(rt.device, small, rt.context, rt.queue)
    from helpers import conv2d_case, conv2d_reference

    x, w = random_array((1, 9, 9, 5), seed=13), random_array((3, 3, 5, 6), seed=14)
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    expected = conv2d_reference(x, w, g)
    for algorithm in algorithms_computing("conv2d", info=small):
        plan = plans.build_plan(gpu, "conv2d", g, np.float32, algorithm)
        assert plan.config_source.startswith("kernel defaults"), plan.describe()
        assert "max_work_group_size" in plan.config_source
        assert_close(plan.execute(x, w), expected, np.float32, 3 * 3 * 5)
        for launch_range in _ranges(plan.launch):
            _, local = launch_range
            assert local is not None and np.prod(local) <= 32 and local[1] <= 16, local


def _ranges(launch):
    return [value for name, value in vars(launch).items() if name.endswith("range")]


def test_prepared_filters_never_pass_to_a_plan_built_later(spec):
    """A plan that was dropped cannot lend its packing to a new plan of another shape,
    even one that reuses its memory address."""
    import gc

    w = random_array((3, 3, 4, 5), seed=3)
    packed = plans.build_plan(clconv.runtime(spec), "conv2d", clconv.plan(
        "conv2d", (1, 6, 6, 4), w.shape, 1, "SAME", device=spec).geometry, np.float32,
        "direct").prepare_filters(w)
    gc.collect()  # that plan is gone
    for _ in range(20):  # new plans, some at the freed address
        other = plans.build_plan(clconv.runtime(spec), "conv2d", clconv.plan(
            "conv2d", (1, 6, 6, 4), (3, 3, 4, 7), 1, "SAME", device=spec).geometry,
            np.float32, "direct")
        with pytest.raises(clconv.InvalidArgumentError, match="another plan"):
            other.execute(random_array((1, 6, 6, 4)), packed)


# --------------------------------------------------------------------------- call memo

ONE_D_CALLS = {  # name -> (op, data shape, filter shape, output_shape or None, kwargs)
    "conv1d_nwc": ("conv1d", (2, 9, 5), (3, 5, 4), None, dict(stride=2, padding="SAME")),
    "conv1d_ncw": ("conv1d", (2, 5, 9), (3, 5, 4), None,
                   dict(stride=1, padding="VALID", data_format="NCW")),
    "transpose_nwc": ("conv1d_transpose", (1, 6, 8), (16, 4, 8), [1, 48, 4],
                      dict(strides=8, padding="SAME")),
    "transpose_ncw": ("conv1d_transpose", (2, 6, 5), (4, 3, 6), [2, 3, 10],
                      dict(strides=2, padding="SAME", data_format="NCW")),
}


def _one_d(op, data, filters, output_shape, kwargs, spec):
    if op == "conv1d":
        return clconv.conv1d(data, filters, **kwargs, device=None if _on_device(data) else spec)
    return clconv.conv1d_transpose(data, filters, output_shape, **kwargs,
                                   device=None if _on_device(data) else spec)


def _on_device(value):
    import pyopencl.array as cl_array

    return isinstance(value, cl_array.Array)


def _one_d_reference(op, data, filters, output_shape, kwargs):
    """float64, through the 2-D references on a height-1 view (channels last)."""
    ncw = kwargs.get("data_format") == "NCW"
    x = np.swapaxes(data, 1, 2) if ncw else data
    x4 = x[:, None]
    w4 = filters[None]
    if op == "conv1d":
        g = conv2d_case(x4.shape, w4.shape, [1, kwargs["stride"]], kwargs["padding"])
        y = conv2d_reference(x4, w4, g)[:, 0]
    else:
        size = [output_shape[0], *(output_shape[:0:-1] if ncw else output_shape[1:])]
        g = backprop_case([size[0], 1, *size[1:]], w4.shape, x4.shape, [1, kwargs["strides"]],
                          kwargs["padding"])
        y = backprop_input_reference(x4, w4, g)[:, 0]
    return np.swapaxes(y, 1, 2) if ncw else y


@pytest.mark.parametrize("case", list(ONE_D_CALLS), ids=list(ONE_D_CALLS))
def test_remembered_1d_calls_go_straight_to_the_plan(device, spec, case, monkeypatch):
    """After one call through the 2-D ops, the same 1-D call (numpy or pyopencl
    operands) runs its remembered plan: it no longer reaches the 2-D ops, reads the
    operands' current values (a filter changed in place on the device counts), and
    returns the same kind of array on the same queue."""
    import pyopencl.array as cl_array

    op, x_shape, w_shape, output_shape, kwargs = ONE_D_CALLS[case]
    queue = clconv.runtime(spec).queue
    x, w = random_array(x_shape, seed=21), random_array(w_shape, seed=22)
    x_dev, w_dev = cl_array.to_device(queue, x), cl_array.to_device(queue, w)
    reduction = w_shape[0] * (w_shape[1] if op == "conv1d" else w_shape[2])
    first_host = _one_d(op, x, w, output_shape, kwargs, spec)
    first_dev = _one_d(op, x_dev, w_dev, output_shape, kwargs, spec)

    def refused(*args, **kwargs):
        raise AssertionError("a remembered 1-D call went through the 2-D op")

    monkeypatch.setattr(clconv.ops, "conv2d", refused)
    monkeypatch.setattr(clconv.ops, "conv2d_backprop_input", refused)
    exact = _one_d_reference(op, x.astype(np.float64), w.astype(np.float64), output_shape,
                             kwargs)
    again_host = _one_d(op, x, w, output_shape, kwargs, spec)
    again_dev = _one_d(op, x_dev, w_dev, output_shape, kwargs, spec)
    assert type(again_dev) is cl_array.Array and again_dev.queue == queue
    assert again_dev.shape == first_dev.shape == exact.shape
    assert np.array_equal(again_host, first_host)
    assert np.array_equal(again_dev.get(), first_dev.get())
    assert_close(again_dev.get(), exact, np.float32, reduction)

    w_dev.set(-w)  # in place: the next call must see it
    negated = _one_d(op, x_dev, w_dev, output_shape, kwargs, spec)
    assert_close(negated.get(), -exact, np.float32, reduction)


def test_the_call_memo_tells_queues_of_two_contexts_apart(device, spec):
    """The same shapes on two contexts of one device: each call computes on its own
    operands' context (the memo holds the queue, not an address a later queue could
    take)."""
    import gc

    import pyopencl as cl
    import pyopencl.array as cl_array

    from clconv.device_select import find_device

    cl_device = find_device(spec)[0]
    x, w = random_array((1, 5, 5, 3), seed=31), random_array((3, 3, 2, 3), seed=32)
    g = backprop_case((1, 10, 10, 2), w.shape, x.shape, 2, "SAME")
    exact = backprop_input_reference(x, w, g)
    for _ in range(3):  # contexts made and dropped: a new one may reuse an old address
        queue = cl.CommandQueue(cl.Context([cl_device]))
        x_dev, w_dev = cl_array.to_device(queue, x), cl_array.to_device(queue, w)
        for _ in range(2):
            got = clconv.conv2d_transpose(x_dev, w_dev, [1, 10, 10, 2], 2, "SAME")
            assert got.queue == queue and got.context == queue.context
            assert_close(got.get(), exact, np.float32, 3 * 3 * 3)
        w1_dev = cl_array.to_device(queue, np.ascontiguousarray(w[0]))  # [k, in 2, out 3]
        for _ in range(2):  # the 1-D path's own memo too
            x1 = np.ascontiguousarray(x[0, :, :, :2])
            got = clconv.conv1d(cl_array.to_device(queue, x1), w1_dev, 1, "VALID")
            assert got.queue == queue and got.shape == (5, 3, 3)
        del x_dev, w_dev, w1_dev, got, queue
        gc.collect()


def test_remembered_1d_calls_read_strided_device_views(device, spec):
    """A pyopencl view with a step along the width (not contiguous) keeps its strides
    through the remembered path's unit axis."""
    import pyopencl.array as cl_array

    queue = clconv.runtime(spec).queue
    x, w = random_array((2, 12, 8), seed=41), random_array((4, 5, 8), seed=42)
    x_view = cl_array.to_device(queue, x)[:, ::2, :]
    w_dev = cl_array.to_device(queue, w)
    kwargs = dict(strides=2, padding="SAME")
    exact = _one_d_reference("conv1d_transpose", x[:, ::2].astype(np.float64),
                             w.astype(np.float64), [2, 12, 5], kwargs)
    for _ in range(3):  # the first call through the 2-D op, then remembered
        got = clconv.conv1d_transpose(x_view, w_dev, [2, 12, 5], **kwargs)
        assert_close(got.get(), exact, np.float32, 4 * 8)


def test_the_call_memo_does_not_take_equal_values_of_other_types_for_the_same(spec):
    """1.0 and True equal 1 in Python, but TF's checks tell them apart: after a good
    call is remembered, the same call with such an argument raises just as it does
    when nothing is remembered."""
    x, w = random_array((1, 5, 5, 2), seed=51), random_array((3, 3, 3, 2), seed=52)

    def transpose(output_shape):
        return clconv.conv2d_transpose(x, w, output_shape, 2, "SAME", device=spec)

    bad_shapes = [((1.0, 10, 10, 3), TypeError, "must hold integers"),
                  ([1, 10, 10, True], clconv.InvalidArgumentError, "evenly divisible")]
    for good in ((1, 10, 10, 3), [1, 10, 10, 3]):
        clconv.ops.forget_calls()
        for _ in range(2):  # the second call is remembered
            assert transpose(good).shape == (1, 10, 10, 3)
        for bad, error, message in bad_shapes:
            with pytest.raises(error, match=message):
                transpose(bad)


def test_a_configuration_may_leave_tunables_to_their_defaults(spec):
    """An explicit configuration without LOCAL_SIZE runs with the family's default
    (the launch's choice), and one without TN with the device's tile rule; a name the
    family does not have is refused, saying which."""
    x = np.random.default_rng(5).standard_normal((1, 8, 8, 32)).astype(np.float32)
    w = np.random.default_rng(6).standard_normal((1, 1, 32, 64)).astype(np.float32)
    expected = np.einsum("nhwc,co->nhwo", x.astype(np.float64), w[0, 0].astype(np.float64))
    for config in ({"TM": 2, "TN": 32, "VEC": 8}, {"TM": 2, "VEC": 8}):
        plan = clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", device=spec,
                           algorithm="gemm", config=config)
        assert "TM=2" in plan.describe() and "LOCAL_SIZE=auto" in plan.describe()
        assert "explicit" in plan.describe()
        np.testing.assert_allclose(plan.execute(x, w), expected, rtol=1e-4, atol=1e-4)
    for config, named in (({"TM": 2, "TN": 32, "VEC": 8, "LOCAL_SIZE": None, "TK": 4},
                           "unknown TK"),
                          ({"TM": 2, "LOCAL": None}, "unknown LOCAL")):
        with pytest.raises(clconv.InvalidArgumentError) as raised:
            clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", device=spec,
                        algorithm="gemm", config=config)
        assert (f"config for gemm_implicit: {named} (the family's tunables: TM, TN, "
                "VEC, LOCAL_SIZE)") in str(raised.value)
