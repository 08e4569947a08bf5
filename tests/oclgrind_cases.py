"""Small cases run under Oclgrind's checks by test_oclgrind.py.

Each case runs in its own process: Oclgrind reads its OCLGRIND_* settings when
its runtime loads, and Oclgrind 21.10's uninitialised-value checker reports
false positives once a process reuses the address of a released buffer
(measured: the same via_forward case run twice in one process is flagged the
second time, even with the queue finished in between; kept alive, never).
"""

from __future__ import annotations

import dataclasses
import random
import sys

import numpy as np

import clconv
from clconv import config, plans, programs, search_space
from clconv.device_select import runtime
from helpers import (
    algorithms_computing,
    assert_close,
    backprop_case,
    conv2d_case,
    reduction_length,
)
from clconv.reference import backprop_input_reference, conv2d_reference

CONV = [  # x_shape, w_shape, strides, padding, dilations, data_format
    ((1, 5, 6, 3), (3, 3, 3, 5), 1, "SAME", None, "NHWC"),
    ((2, 3, 7, 6), (3, 2, 3, 4), 2, "VALID", None, "NCHW"),
    ((1, 7, 7, 4), (3, 3, 2, 6), 2, "SAME", 2, "NHWC"),  # grouped + dilated
    ((1, 2, 2, 2), (5, 5, 2, 3), 1, [[0, 0], [3, 1], [0, 2], [0, 0]], None, "NHWC"),
    ((1, 5, 6, 8), (3, 3, 1, 8), 2, "SAME", None, "NHWC"),  # depthwise: 8-channel vectors
    ((1, 8, 5, 6), (3, 3, 1, 8), 1, "VALID", None, "NCHW"),  # depthwise, strided channels
    # More channels than any case above, padded.
    ((1, 4, 5, 9), (3, 3, 9, 4), 1, "SAME", None, "NHWC"),
]
GROUPED_CONV = (2, 4, 5)  # indices of CONV whose filters make them grouped
# Depthwise input gradients (tf.nn.depthwise_conv2d_backprop_input): dy_shape, filter
# [kh, kw, C, multiplier], input_sizes, strides, padding.
DEPTHWISE_BACKPROP = [
    ((1, 3, 3, 8), (3, 3, 8, 1), (1, 6, 6, 8), 2, "SAME"),  # 8-channel vectors
    ((1, 4, 4, 6), (3, 3, 3, 2), (1, 6, 6, 3), 1, "VALID"),  # multiplier 2
]
TRANSPOSE = [  # dy_shape, w_shape, output_shape, strides, padding, dilations, data_format
    ((1, 3, 3, 3), (3, 3, 2, 3), (1, 6, 6, 2), 2, "SAME", None, "NHWC"),
    ((1, 3, 3, 4), (3, 3, 2, 3), (1, 2, 9, 12), 3, "VALID", None, "NCHW"),
    ((1, 6, 6, 1), (2, 2, 2, 1), (1, 3, 3, 2), 1, [[0, 0], [2, 2], [2, 2], [0, 0]], None, "NHWC"),
    ((1, 3, 3, 2), (3, 3, 2, 2), (1, 9, 9, 2), 2, "VALID", 2, "NHWC"),
    ((1, 3, 3, 7), (3, 3, 2, 7), (1, 6, 6, 2), 2, "SAME", None, "NHWC"),  # 7 channels
]
# The GEMM's shared channel-index loop (clconv.gemm.uses_channel_index_loop), built
# explicitly with CPU-sized 16-wide vectors: padded cases with more than 4 channels,
# whose rows outside the source read a zero row as long as the channels (an
# out-of-bounds read if it were shorter).
LOOP_CONFIG = {"TM": 6, "TN": 16, "VEC": 16, "LOCAL_SIZE": None}
LOOP_CONV = ((1, 4, 5, 9), (3, 3, 9, 16), 1, "SAME")  # 9 channels
LOOP_TRANSPOSE = ((1, 3, 3, 7), (3, 3, 16, 7), (1, 6, 6, 16), 2, "SAME")  # 7 channels
LOOP_CASE_IDS = ["loop-conv2d", "loop-transpose"]
# The GEMM's last channel tile built knowing its real lanes (OUT_TAIL): 37 channels in
# a tile of 64, two whole vectors and 5 lanes of a third stored; a store past them
# writes past the output's end at its last pixel.
TAIL_CONFIG = {"TM": 2, "TN": 64, "VEC": 16, "LOCAL_SIZE": None}
TAIL_CONV = ((1, 3, 4, 5), (3, 3, 5, 37), 1, "SAME")
TAIL_TRANSPOSE = ((1, 3, 2, 4), (4, 4, 37, 4), (1, 6, 4, 37), 2, "SAME")
TAIL_CASE_IDS = ["tail-conv2d", "tail-transpose"]


CASE_IDS = [f"conv2d-{i}-{algorithm}" for i in range(len(CONV))
            for algorithm in algorithms_computing("conv2d", 2 if i in GROUPED_CONV else 1)] + [
    f"transpose-{i}-{algorithm}" for i in range(len(TRANSPOSE))
    for algorithm in algorithms_computing("conv2d_transpose")] + [
    f"depthwise-{i}-{algorithm}" for i in range(len(DEPTHWISE_BACKPROP))
    for algorithm in algorithms_computing("conv2d_backprop_input", 2)]
# The same kernels built with 64-bit offsets (INDEX_64), as a plan for tensors past
# 2^31 - 1 elements builds them: an NHWC and an NCHW conv, a transpose, a depthwise
# gradient.
WIDE_CASE_IDS = [f"wide-{case}" for case in CASE_IDS
                 if case.startswith(("conv2d-0-", "conv2d-1-", "transpose-0-", "depthwise-0-"))]
# The GEMM's filter packing over a range padded past its channel tiles.
PACK_CASE_IDS = ["pack-padded"]
# Few-channel convs through the column-padded copy (clconv.column_merge), forced on
# these small cases: NHWC SAME, NCHW (the padding kernel's per-pixel path), and
# explicit padding wider than the input's two columns.
MERGE_CONV = [CONV[0], CONV[1],
              ((1, 3, 2, 2), (3, 5, 2, 3), 1, [[0, 0], [1, 1], [3, 2], [0, 0]], None, "NHWC")]
# conv2d's grouped kernel with vectors of one group's output channels (GROUP_VEC):
# x, filter (4 groups of 4 outputs), strides, padding; runs inside and at the edges.
GROUP_VEC_CONV = ((1, 5, 11, 8), (3, 3, 2, 16), 1, "SAME")
# A depthwise conv2d through the window kernel (window_forward): a row of two whole
# runs, the last one's window ending at the row's end, and (WINDOW 1 asked for) a
# column stride of 2 with a partial run; the batch's last row reads the buffer's end.
DEPTHWISE_WINDOW_CONV = [((2, 4, 16, 8), (3, 3, 1, 8), 1, "SAME"),
                         ((1, 5, 13, 8), (3, 3, 1, 8), 2, "SAME")]
# A depthwise input gradient through the window kernel: x, filter, padding (the
# turned conv's leading padding negative in the second).
WINDOW_GRADIENT = [((2, 4, 16, 8), (3, 3, 1, 8), "SAME"),
                   ((1, 5, 9, 8), (3, 2, 1, 8), [[0, 0], [3, 0], [1, 4], [0, 0]])]
GROUP_VEC_CASE_IDS = ["group-vec", "group-vec-window", "group-gemm", "depthwise-window-0",
                      "depthwise-window-1", "window-gradient-0", "window-gradient-1",
                      "all-taps-1", "all-taps-2",  # every-tap gradients at strides 1, 2
                      "group-span"]  # vectors of 8 over 2 groups of 4 outputs
# A grouped conv2d as one GEMM (GROUP_OUT): 2 groups of 16 outputs, padded.
GROUP_GEMM_CONV = ((1, 5, 6, 8), (3, 3, 4, 32), 1, "SAME")
MERGE_CASE_IDS = [f"merge-{i}-{algorithm}" for i in range(len(MERGE_CONV))
                  for algorithm in ("gemm", "tiled")]

# The kernels that share __local memory between work-items (where a missing barrier
# passes on PoCL and shows only under Oclgrind's race check), run over their shipped
# configurations and a seeded sample of their candidates, on cases whose K spans several
# local chunks and whose stride phases cover different numbers of pixel tiles.
LOCAL_FAMILY = ("tiled", "gemm_tiled")
LOCAL_CONV = ((1, 7, 7, 5), (3, 3, 5, 20), 1, "SAME")  # 2 channel tiles at NWG 16
LOCAL_TRANSPOSE = ((1, 5, 5, 6), (3, 3, 5, 6), (1, 9, 9, 5), 2, "SAME")  # 4 unequal phases
SAMPLED_CANDIDATES = 3
# A line of gemm_tiled.cl the broken variant leaves out: the barrier that keeps the
# next chunk's loads from overwriting a tile other work-items still read.
BARRIER_MARK = "// every work-item is done with the chunk"


def local_configs(spec: str) -> dict[str, dict]:
    """name -> configuration: the family file's default, the shipped CPU and GPU
    defaults, and a seeded sample of the candidates the search space keeps."""
    algorithm, family = LOCAL_FAMILY
    space = search_space.shipped_spaces()[family]
    configs = {"family-default": space.default_config()}
    for kind in ("CPU", "GPU"):
        shipped = config._shipped_defaults()
        section = {**shipped["generic"].get(family, {}), **shipped.get(kind, {}).get(family, {})}
        configs[f"shipped-{kind}"] = {**space.default_config(), **section}
    g = conv2d_case(*LOCAL_CONV)
    info = runtime(spec).info
    candidates = space.prune(search_space.context(g, info, "conv2d", algorithm)).candidates
    for i, chosen in enumerate(random.Random(7).sample(candidates, SAMPLED_CANDIDATES)):
        configs[f"sampled{i}"] = chosen
    return configs


LOCAL_CASE_IDS = [f"local-{name}-{op}" for name in ("family-default", "shipped-CPU",
                                                    "shipped-GPU", *(f"sampled{i}" for i in
                                                                     range(SAMPLED_CANDIDATES)))
                  for op in ("conv2d", "transpose")]


def checked_plan(op: str, case: tuple, spec: str, algorithm: str, config: dict):
    """The plan of one conv ("conv2d": x, filter, strides, padding; "transpose": dy,
    filter, output, strides, padding) under one configuration, run once on random data
    and checked against the float64 reference."""
    rng = np.random.default_rng(0)
    if op == "conv2d":
        x_shape, w_shape, strides, padding = case
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        g = conv2d_case(x_shape, w_shape, strides, padding)
        plan = clconv.plan("conv2d", x_shape, w_shape, strides, padding, device=spec,
                           algorithm=algorithm, config=config)
        assert_close(plan.execute(x, w), conv2d_reference(x, w, g), np.float32,
                     reduction_length(g))
    else:
        dy_shape, w_shape, out_shape, strides, padding = case
        dy = rng.standard_normal(dy_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        g = backprop_case(out_shape, w_shape, dy_shape, strides, padding)
        plan = clconv.plan("conv2d_transpose", dy_shape, w_shape, strides, padding,
                           output_shape=out_shape, device=spec, algorithm=algorithm,
                           config=config)
        assert_close(plan.execute(dy, w), backprop_input_reference(dy, w, g), np.float32,
                     reduction_length(g, transpose=True))
    return plan


def run_local_case(case_id: str, spec: str) -> None:
    """One op under one configuration, checked against the float64 reference too."""
    rest, op = case_id.rsplit("-", 1)
    chosen = local_configs(spec)[rest[len("local-"):]]
    plan = checked_plan(op, LOCAL_CONV if op == "conv2d" else LOCAL_TRANSPOSE, spec,
                        LOCAL_FAMILY[0], chosen)
    print("ran", case_id, plan.describe())


def run_without_barrier(spec: str) -> None:
    """The transpose case with gemm_tiled.cl's second barrier left out (a race that
    PoCL's sequential work-item loops never show)."""
    original = programs.kernel_source

    def broken(name: str) -> str:
        text = original(name)
        if name != "gemm_tiled.cl":
            return text
        kept = [line for line in text.splitlines() if BARRIER_MARK not in line]
        assert len(kept) == len(text.splitlines()) - 1, "the barrier to remove is not there"
        return "\n".join(kept)

    programs.kernel_source = broken
    small = {"MWG": 16, "NWG": 16, "KWG": 8, "MDIMC": 4, "NDIMC": 4, "PAD": 0}
    dy_shape, w_shape, out_shape, strides, padding = LOCAL_TRANSPOSE
    dy = np.ones(dy_shape, np.float32)
    w = np.ones(w_shape, np.float32)
    clconv.plan("conv2d_transpose", dy_shape, w_shape, strides, padding, output_shape=out_shape,
                device=spec, algorithm=LOCAL_FAMILY[0], config=small).execute(dy, w)
    print("ran without barrier")


def run_padded_pack(spec: str) -> None:
    """The filter packing launched over a range padded past its channel tiles (as a
    work-group shape that does not divide them pads it): the items past the tiles
    must write nothing."""
    from clconv import tensors

    rt = runtime(spec)
    w = np.random.default_rng(0).standard_normal((3, 3, 8, 5)).astype(np.float32)
    g = backprop_case((1, 6, 6, 8), w.shape, (1, 3, 3, 5), 2, "SAME")
    launch = plans.build_plan(rt, "conv2d_transpose", g, np.float32, "gemm").launch
    (chans, tiles, taps), _ = launch.pack_range
    packing = launch.scratch.new()
    filters = tensors.to_device(w, np.float32, rt.queue, rt.info, "filters")
    launch.packer.enqueue(rt.queue, (chans, 4 * tiles, taps), (1, 4 * tiles, 1), [
        filters.buffer, *launch._filter_view(filters), launch.taps, packing.buffer,
        launch.ch_count, launch.n_out, launch.n_padded, packing.flag, 1])
    rt.queue.finish()
    print("ran pack-padded")


def run_loop_case(case_id: str, spec: str) -> None:
    """A GEMM built with the shared channel-index loop, against the float64 reference."""
    op = case_id[len("loop-"):]
    plan = checked_plan(op, LOOP_CONV if op == "conv2d" else LOOP_TRANSPOSE, spec, "gemm",
                        LOOP_CONFIG)
    assert plan.launch.gemm.defines.get("CH_INDEX_LOOP"), "the loop under test was not built"
    print("ran", case_id, plan.describe())


def run_tail_case(case_id: str, spec: str) -> None:
    """A GEMM whose only channel tile is partial, against the float64 reference."""
    op = case_id[len("tail-"):]
    plan = checked_plan(op, TAIL_CONV if op == "conv2d" else TAIL_TRANSPOSE, spec, "gemm",
                        TAIL_CONFIG)
    assert plan.launch.gemm.defines.get("OUT_TAIL") == 37, "the stores under test were not built"
    print("ran", case_id, plan.describe())


def run_merge_case(case_id: str, spec: str) -> None:
    """A few-channel conv through the column-padded copy, against the float64 reference."""
    from clconv import column_merge

    column_merge.MIN_MACS = 0  # however small: these cases are
    _, index, algorithm = case_id.split("-")
    x_shape, w_shape, strides, padding, _, fmt = MERGE_CONV[int(index)]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    g = conv2d_case(x_shape, w_shape, strides, padding, fmt)
    plan = clconv.plan("conv2d", x_shape, w_shape, strides, padding, data_format=fmt,
                       device=spec, algorithm=algorithm)
    assert plan.launch.columns is not None, "the case under test was not merged"
    assert_close(plan.execute(x, w), conv2d_reference(x, w, g), np.float32,
                 reduction_length(g))
    print("ran", case_id, plan.describe())


def run_case(case_id: str, spec: str) -> None:
    if case_id == "pack-padded":
        return run_padded_pack(spec)
    if case_id.startswith("loop-"):
        return run_loop_case(case_id, spec)
    if case_id.startswith("tail-"):
        return run_tail_case(case_id, spec)
    if case_id.startswith("wide-"):
        from clconv import tensors

        tensors.WIDE_INDEX_ABOVE = 0  # every plan of this process indexes in 64 bits
        run_case(case_id[len("wide-"):], spec)
        assert plans.cached_plans() and all(p.wide for p in plans._plans.values())
        print("ran", case_id)
        return
    if case_id.startswith("local-"):
        return run_local_case(case_id, spec)
    if case_id.startswith("merge-"):
        return run_merge_case(case_id, spec)
    if case_id == "group-gemm":
        plan = checked_plan("conv2d", GROUP_GEMM_CONV, spec, "gemm",
                            {"TM": 4, "TN": 16, "VEC": 4, "LOCAL_SIZE": None})
        assert plan.launch.gemm.defines.get("GROUP_OUT") == 16, "not the build under test"
        print("ran", case_id, plan.describe())
        return
    if case_id == "group-span":
        plan = checked_plan("conv2d", GROUP_VEC_CONV, spec, "grouped",
                            {"TW": 4, "VEC": 8, "WINDOW": 1, "LOCAL_SIZE": None})
        assert plan.launch.builds[0][0].defines.get("GROUP_SPAN") == 2, "not the build under test"
        print("ran", case_id, plan.describe())
        return
    if case_id in ("group-vec", "group-vec-window"):
        window = int(case_id.endswith("window"))
        plan = checked_plan("conv2d", GROUP_VEC_CONV, spec, "grouped",
                            {"TW": 4, "VEC": 4, "WINDOW": window, "LOCAL_SIZE": None})
        build = plan.launch.builds[0][0]
        assert build.defines.get("GROUP_VEC"), "not the build under test"
        assert build.name == ("window_forward" if window else "grouped_forward")
        print("ran", case_id, plan.describe())
        return
    if case_id.startswith("depthwise-window-"):
        plan = checked_plan("conv2d", DEPTHWISE_WINDOW_CONV[int(case_id[-1])], spec, "grouped",
                            {"TW": 8, "VEC": 4, "WINDOW": 1, "LOCAL_SIZE": None})
        assert plan.launch.builds[0][0].name == "window_forward", "not the build under test"
        print("ran", case_id, plan.describe())
        return
    if case_id.startswith(("window-gradient-", "all-taps-")):
        if case_id.startswith("all-taps-"):  # TF's depthwise gradient (padded_products)
            stride = int(case_id[-1])
            g = dataclasses.replace(conv2d_case((1, 5, 13, 8), (3, 3, 1, 8), stride, "SAME"),
                                    padded_products=True)
            w_shape = g.w_shape()
        else:
            x_shape, w_shape, padding = WINDOW_GRADIENT[int(case_id[-1])]
            g = conv2d_case(x_shape, w_shape, 1, padding)
        rng = np.random.default_rng(0)
        dy = rng.standard_normal(g.y_shape()).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        window = int(g.stride_w == 1)
        plan = plans.get_plan(runtime(spec), "conv2d_backprop_input", g, np.float32, "grouped",
                              {"TW": 8, "VEC": 4, "WINDOW": window, "LOCAL_SIZE": None})
        build = plan.launch.builds[0][0]
        assert build.name == ("window_forward" if window else "grouped_backprop"), \
            "not the build under test"
        assert bool(build.defines.get("ALL_TAPS") or not build.defines.get("WIN_REAL_ONLY")) \
            == g.padded_products, "not the build under test"
        assert_close(plan.execute(dy, w), backprop_input_reference(dy, w, g), np.float32,
                     reduction_length(g, transpose=True))
        print("ran", case_id, plan.describe())
        return
    if case_id == "without-barrier":
        return run_without_barrier(spec)
    rng = np.random.default_rng(0)
    kind, index, *rest = case_id.split("-")
    if kind == "conv2d":
        x_shape, w_shape, strides, padding, dilations, fmt = CONV[int(index)]
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        clconv.conv2d(x, w, strides, padding, fmt, dilations, device=spec, algorithm=rest[0])
    elif kind == "depthwise":
        dy_shape, w_shape, sizes, strides, padding = DEPTHWISE_BACKPROP[int(index)]
        dy = rng.standard_normal(dy_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        # The depthwise op has no algorithm argument: its grouped conv (filter
        # [kh, kw, 1, C * multiplier], C groups), as its plan runs it.
        w_grouped = w.reshape(*w_shape[:2], 1, -1)
        g = conv2d_case(sizes, w_grouped.shape, strides, padding)
        plan = plans.get_plan(runtime(spec), "conv2d_backprop_input", g, np.float32, rest[0])
        assert_close(plan.execute(dy, w_grouped), backprop_input_reference(dy, w_grouped, g),
                     np.float32, reduction_length(g, transpose=True))
    else:
        dy_shape, w_shape, out_shape, strides, padding, dilations, fmt = TRANSPOSE[int(index)]
        dy = rng.standard_normal(dy_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        clconv.conv2d_transpose(dy, w, out_shape, strides, padding, fmt, dilations,
                                device=spec, algorithm=rest[0])
    print("ran", case_id)


if __name__ == "__main__":
    run_case(sys.argv[1], sys.argv[2])
