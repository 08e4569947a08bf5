"""Grouped conv2d's window kernel (grouped_direct.cl's window_forward, WINDOW 1):
each input value of a filter row loaded once for every tap that reaches it, the
filter width, column stride and dilation compiled in; vectors of a depthwise conv's
channels, or (GROUP_VEC) of one group's output channels.

Checked on every device against the float64 reference, every output NaN-filled first
(an element a run does not write shows): runs whose window lies inside the row and
runs that reach into the padding, rows narrower than one run, widths that leave a
partial run, filters of one to seven columns, height and width dilation, explicit
asymmetric padding, strides other than 1 where WINDOW 1 is asked for, and the three
dtypes; depthwise convs, groups of several input channels and a channel multiplier.
A depthwise conv's input gradient at stride 1 runs there too, as the forward conv
over dy with the filter turned, taps off dy adding nothing (TF's gradient).  And
which build a plan runs: the window kernel by default at column stride 1,
grouped_forward at stride 2 (configs/defaults.yaml says why) and wherever the
channels do not lie contiguous.
"""

from __future__ import annotations

import numpy as np
import pyopencl.array as cl_array
import pytest

import clconv
from clconv import plans
from clconv.reference import backprop_input_reference, conv2d_reference
from helpers import (
    assert_close,
    assert_same_specials,
    conv2d_case,
    nan_filled_outputs,
    random_array,
    reduction_length,
)

CASES = {  # x_shape (NHWC), filter [kh, kw, in / groups, out], strides, padding, dilations
    "3x3-partial-run": ((2, 9, 21, 16), (3, 3, 1, 16), 1, "SAME", None),
    # the last run's window ends at the row's end
    "3x3-whole-runs": ((2, 5, 16, 8), (3, 3, 1, 8), 1, "SAME", None),
    "5x5-narrower-than-a-run": ((1, 6, 5, 8), (5, 5, 1, 8), 1, "SAME", None),
    "3x5-valid": ((1, 11, 30, 16), (3, 5, 1, 16), 1, "VALID", None),
    "dilated": ((1, 12, 19, 8), (3, 3, 1, 8), 1, "SAME", 2),
    "7x7-asymmetric": ((1, 7, 17, 8), (7, 7, 1, 8), 1, [[0, 0], [3, 1], [0, 4], [0, 0]], None),
    "one-column": ((2, 5, 12, 8), (3, 1, 1, 8), 1, "SAME", None),
    "row-stride": ((1, 13, 18, 8), (3, 3, 1, 8), [1, 2, 1, 1], "SAME", None),
    # GROUP_VEC: vectors of one group's outputs, each input channel broadcast
    "4-groups-of-2-to-4": ((2, 7, 19, 8), (3, 3, 2, 16), 1, "SAME", None),
    "resnext-like-dilated": ((1, 9, 17, 16), (3, 3, 4, 16), 1, "SAME", 2),
    "multiplier-4": ((1, 6, 12, 4), (3, 3, 1, 16), 1, "VALID", None),
}
# WINDOW 1 asked for where the shipped default keeps grouped_forward.
EXPLICIT = {
    "stride-2": ((2, 14, 27, 8), (3, 3, 1, 8), 2, "SAME", None),
    "stride-3-columns": ((1, 10, 40, 8), (3, 4, 1, 8), [1, 2, 3, 1], "SAME", None),
    "grouped-stride-2": ((1, 9, 21, 8), (3, 3, 2, 16), 2, "SAME", None),
}


@pytest.fixture
def nan_outputs(monkeypatch):
    nan_filled_outputs(monkeypatch)


def _checked(spec, dtype, case, config=None):
    x_shape, w_shape, strides, padding, dilations = case
    x, w = random_array(x_shape, dtype, seed=1), random_array(w_shape, dtype, seed=2)
    g = conv2d_case(x_shape, w_shape, strides, padding, "NHWC", dilations)
    assert g.groups > 1
    plan = clconv.plan("conv2d", x_shape, w_shape, strides, padding, dilations=dilations,
                       dtype=dtype, device=spec, algorithm="grouped", config=config)
    want = conv2d_reference(x, w, g)
    assert_close(plan.execute(x, w), want, dtype, reduction_length(g))
    assert_close(plan.execute(x, plan.prepare_filters(w)), want, dtype, reduction_length(g))
    return plan


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_window_kernel_matches_the_reference(device, spec, dtype, case, nan_outputs):
    if dtype == np.float64 and not device.fp64:
        pytest.skip("no cl_khr_fp64")
    plan = _checked(spec, dtype, CASES[case], {"TW": 8, "VEC": 4, "WINDOW": 1,
                                               "LOCAL_SIZE": None})
    build = plan.launch.builds[0][0]
    assert build.name == "window_forward", plan.describe()
    g = plan.geometry
    depthwise = g.in_c == g.groups == g.out_c  # else vectors of one group's outputs
    assert bool(build.defines.get("GROUP_VEC")) == (not depthwise), build.defines


@pytest.mark.parametrize("case", EXPLICIT)
@pytest.mark.parametrize("tw", [4, 8])
def test_window_kernel_at_column_strides_past_one(spec, case, tw, nan_outputs):
    plan = _checked(spec, np.float32, EXPLICIT[case], {"TW": tw, "VEC": 4, "WINDOW": 1,
                                                       "LOCAL_SIZE": [8, 4]})
    assert plan.launch.builds[0][0].name == "window_forward", plan.describe()


def test_which_build_a_depthwise_conv_runs(spec):
    """By default: the window kernel at column stride 1, grouped_forward at 2.  A
    channel slice of a wider input (pixels 24 floats apart) is read through its
    strides."""
    stride_1 = clconv.plan("conv2d", (1, 8, 20, 16), (3, 3, 1, 16), 1, "SAME", device=spec,
                           algorithm="grouped")
    stride_2 = clconv.plan("conv2d", (1, 8, 20, 16), (3, 3, 1, 16), 2, "SAME", device=spec,
                           algorithm="grouped")
    if stride_1.config["VEC"] > 1:  # a device whose vectors are wider than one float
        assert stride_1.config["WINDOW"] == 1
        assert stride_1.launch.builds[0][0].name == "window_forward"
    assert stride_2.config["WINDOW"] == 0
    assert stride_2.launch.builds[0][0].name == "grouped_forward"

    rt = clconv.runtime(spec)
    x_big, w = random_array((1, 8, 20, 24), seed=3), random_array((3, 3, 1, 16), seed=4)
    x_dev = cl_array.to_device(rt.queue, x_big)[..., 4:20]  # pixels 24 floats apart
    got = stride_1.execute(x_dev, w).get()
    g = conv2d_case((1, 8, 20, 16), w.shape, 1, "SAME")
    assert_close(got, conv2d_reference(x_big[..., 4:20], w, g), np.float32, reduction_length(g))


def test_infinite_weights_on_padded_taps_give_nan(spec):
    """A tap on padding multiplies 0 * w as TF's conv2d does: an infinite weight gives
    NaN exactly where its tap meets padding, +-Inf where it meets real pixels."""
    x = np.abs(random_array((1, 6, 11, 8), seed=5)) + 0.5  # positive: no Inf - Inf
    w = np.abs(random_array((3, 3, 1, 8), seed=6))
    w[0, 0, 0, 3] = np.inf  # the corner tap: padding in the first row and column
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    with np.errstate(invalid="ignore"):  # the reference's 0 * Inf
        want = conv2d_reference(x, w, g)
    plan = clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", device=spec, algorithm="grouped",
                       config={"TW": 8, "VEC": 4, "WINDOW": 1, "LOCAL_SIZE": None})
    got = plan.execute(x, w)
    assert np.isnan(want).any() and np.isposinf(want).any()
    assert_same_specials(got, want, np.float32, reduction_length(g))


GRADIENTS = {  # the forward conv's x shape, filter [kh, kw, 1, C], padding, dilations
    "3x3-same": ((2, 9, 21, 16), (3, 3, 1, 16), "SAME", None),
    "5x5-valid": ((1, 11, 14, 8), (5, 5, 1, 8), "VALID", None),
    "dilated": ((1, 10, 19, 8), (3, 3, 1, 8), "SAME", 2),
    # leading padding wider than the filter: the turned conv's is negative
    "wide-padding": ((1, 6, 9, 8), (3, 2, 1, 8), [[0, 0], [3, 0], [1, 4], [0, 0]], None),
}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("case", GRADIENTS)
def test_window_kernel_computes_depthwise_input_gradients(device, spec, dtype, case,
                                                          nan_outputs):
    if dtype == np.float64 and not device.fp64:
        pytest.skip("no cl_khr_fp64")
    x_shape, w_shape, padding, dilations = GRADIENTS[case]
    g = conv2d_case(x_shape, w_shape, 1, padding, "NHWC", dilations)
    dy, w = random_array(g.y_shape(), dtype, seed=7), random_array(w_shape, dtype, seed=8)
    plan = plans.get_plan(clconv.runtime(spec), "conv2d_backprop_input", g, dtype, "grouped",
                          {"TW": 8, "VEC": 4, "WINDOW": 1, "LOCAL_SIZE": None})
    build = plan.launch.builds[0][0]
    assert build.name == "window_forward" and build.defines.get("WIN_REAL_ONLY"), build.defines
    want = backprop_input_reference(dy, w, g)
    assert_close(plan.execute(dy, w), want, dtype, reduction_length(g, transpose=True))
    assert_close(plan.execute(dy, plan.prepare_filters(w)), want, dtype,
                 reduction_length(g, transpose=True))


def test_depthwise_gradient_build_by_default(spec):
    """Stride 1: the window kernel (where vectors are wider than one float); stride 2
    keeps grouped_backprop."""
    rt = clconv.runtime(spec)
    for stride, name in ((1, "window_forward"), (2, "grouped_backprop")):
        g = conv2d_case((1, 8, 20, 16), (3, 3, 1, 16), stride, "SAME")
        plan = plans.get_plan(rt, "conv2d_backprop_input", g, np.float32)
        assert plan.algorithm == "grouped", plan.describe()
        if plan.config["VEC"] > 1:
            assert plan.launch.builds[0][0].name == name, plan.describe()


def test_gradient_taps_off_dy_add_nothing(spec):
    """An infinite weight gives +Inf in dx where its tap reads dy and no NaN where it
    falls off dy: the gradient multiplies real dy pixels only, like grouped_backprop
    and the float64 reference (a scatter of dy)."""
    g = conv2d_case((1, 6, 11, 8), (3, 3, 1, 8), 1, "SAME")
    dy = np.abs(random_array(g.y_shape(), seed=9)) + 0.5
    w = np.abs(random_array((3, 3, 1, 8), seed=10))
    w[0, 0, 0, 3] = np.inf
    want = backprop_input_reference(dy, w, g)
    plan = plans.get_plan(clconv.runtime(spec), "conv2d_backprop_input", g, np.float32,
                          "grouped", {"TW": 8, "VEC": 4, "WINDOW": 1, "LOCAL_SIZE": None})
    got = plan.execute(dy, w)
    assert np.isposinf(want).any() and not np.isnan(want).any()
    assert_same_specials(got, want, np.float32, reduction_length(g, transpose=True))


def _every_tap_gradient(dy, w, g):
    """TF's depthwise input gradient in float64, written out: every dx pixel sums all
    k_h x k_w taps, a dy pixel that padding or the stride leave out counting as 0."""
    dx = np.zeros((g.batch, g.in_h, g.in_w, g.in_c))
    with np.errstate(invalid="ignore"):
        for ih in range(g.in_h):
            for iw in range(g.in_w):
                for a in range(g.k_h):
                    for b in range(g.k_w):
                        rows = ih + g.pad_top - a * g.dil_h
                        cols = iw + g.pad_left - b * g.dil_w
                        oh, ow = rows // g.stride_h, cols // g.stride_w
                        real = (rows % g.stride_h == 0 and cols % g.stride_w == 0
                                and 0 <= oh < g.out_h and 0 <= ow < g.out_w)
                        value = dy[:, oh, ow, :].astype(np.float64) if real else 0.0
                        dx[:, ih, iw, :] += value * w[a, b, 0, :].astype(np.float64)
    return dx


@pytest.mark.parametrize("stride,config", [
    (1, {"TW": 8, "VEC": 4, "WINDOW": 1, "LOCAL_SIZE": None}),  # window_forward
    (1, {"TW": 4, "VEC": 4, "WINDOW": 0, "LOCAL_SIZE": None}),  # grouped_backprop
    (2, {"TW": 4, "VEC": 4, "WINDOW": 0, "LOCAL_SIZE": None}),
    (2, {"TW": 2, "VEC": 1, "WINDOW": 0, "LOCAL_SIZE": None}),  # the one-channel build
])
def test_every_tap_gradient_of_infinite_weights(spec, stride, config):
    """ConvGeometry.padded_products (TF's depthwise gradient, clconv.depthwise): every
    build multiplies every tap, NaN where an infinite weight's tap misses dy."""
    import dataclasses

    g = dataclasses.replace(conv2d_case((1, 7, 12, 8), (3, 3, 1, 8), stride, "SAME"),
                            padded_products=True)
    dy = np.abs(random_array(g.y_shape(), seed=11)) + 0.5
    w = np.abs(random_array((3, 3, 1, 8), seed=12))
    w[0, 0, 0, 3], w[2, 1, 0, 6] = np.inf, -np.inf
    want = _every_tap_gradient(dy, w, g)
    plan = plans.get_plan(clconv.runtime(spec), "conv2d_backprop_input", g, np.float32,
                          "grouped", config)
    assert plan.launch.builds[0][0].name == ("window_forward" if config["WINDOW"]
                                             else "grouped_backprop")
    got = plan.execute(dy, w)
    assert np.isnan(want).any()
    assert_same_specials(got, want, np.float32, 9)


def test_only_grouped_computes_every_tap_gradients(spec):
    """A depthwise gradient asked of another algorithm is refused, saying why."""
    x = np.ones((1, 6, 6, 4), np.float32)
    with pytest.raises(clconv.UnimplementedError, match="multiplies real dy pixels only"):
        clconv.depthwise_conv2d_backprop_input([1, 6, 6, 4], np.ones((3, 3, 4, 1), np.float32),
                                               x, [1, 1, 1, 1], "SAME", device=spec,
                                               algorithm="direct")


def test_an_every_tap_gradient_the_shipped_rule_sends_elsewhere(spec):
    """A rule that sends a transpose to few channels to `direct` (a multiplier-16
    depthwise gradient matches it) falls back to the algorithm that computes the
    every-tap gradient, not to an error."""
    import dataclasses

    g = dataclasses.replace(conv2d_case((1, 6, 6, 4), (3, 3, 1, 64), 1, "SAME"),
                            padded_products=True)
    plan = plans.get_plan(clconv.runtime(spec), "conv2d_backprop_input", g, np.float32)
    assert plan.algorithm == "grouped", plan.describe()
    dy, w = random_array(g.y_shape(), seed=13), random_array((3, 3, 1, 64), seed=14)
    assert_close(plan.execute(dy, w), backprop_input_reference(dy, w, g), np.float32,
                 reduction_length(g, transpose=True))


SPANNING = {  # x_shape, filter: vectors of 8 over 2 or 4 groups' outputs (GROUP_SPAN)
    "2-groups-of-4": ((2, 9, 19, 16), (3, 3, 4, 16), None),
    "4-groups-of-2": ((1, 7, 12, 8), (3, 3, 2, 8), None),
    "multiplier-2": ((2, 6, 10, 24), (3, 3, 1, 48), None),
    "dilated": ((1, 8, 13, 8), (3, 3, 2, 16), 2),
}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("case", SPANNING)
def test_vectors_of_several_groups(device, spec, dtype, case, nan_outputs):
    if dtype == np.float64 and not device.fp64:
        pytest.skip("no cl_khr_fp64")
    x_shape, w_shape, dilations = SPANNING[case]
    plan = _checked(spec, dtype, (x_shape, w_shape, 1, "SAME", dilations),
                    {"TW": 8, "VEC": 8, "WINDOW": 1, "LOCAL_SIZE": None})
    build = plan.launch.builds[0][0]
    per_group = plan.geometry.out_c // plan.geometry.groups
    lanes = 4 if dtype == np.float64 else 8  # 32 bytes a vector at most
    spanned = lanes // per_group if lanes > per_group else None
    assert build.name == "window_forward" and build.defines.get("GROUP_SPAN") == spanned, \
        build.defines


def test_vectors_of_several_groups_by_default(spec, device):
    """Where window_forward runs (column stride 1) a group of 4 outputs takes vectors
    of 8 on a device of 8-wide vectors; at stride 2 (grouped_forward) vectors of 4;
    asked for without the window kernel, vectors of 8 are refused."""
    from clconv.gemm import vector_width

    stride_1 = clconv.plan("conv2d", (1, 8, 20, 16), (3, 3, 4, 16), 1, "SAME", device=spec,
                           algorithm="grouped")
    stride_2 = clconv.plan("conv2d", (1, 8, 20, 16), (3, 3, 4, 16), 2, "SAME", device=spec,
                           algorithm="grouped")
    if vector_width(device) >= 8:
        assert (stride_1.config["VEC"], stride_1.config["WINDOW"]) == (8, 1)
        assert stride_1.launch.builds[0][0].defines.get("GROUP_SPAN") == 2
    assert (stride_2.config["VEC"], stride_2.config["WINDOW"]) == (min(4, vector_width(device)),
                                                                   0)
    with pytest.raises(clconv.InvalidArgumentError, match="VEC=8 needs"):
        clconv.plan("conv2d", (1, 8, 20, 16), (3, 3, 4, 16), 1, "SAME", device=spec,
                    algorithm="grouped", config={"TW": 8, "VEC": 8, "WINDOW": 0,
                                                 "LOCAL_SIZE": None})
    # 3 groups of 2 outputs: 6 channels fill no vector of 4 or 8, so vectors stay
    # inside a group (2 lanes), and asking for more is refused.
    x, w = random_array((2, 9, 9, 3), seed=15), random_array((3, 3, 1, 6), seed=16)
    short = clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", device=spec,
                        algorithm="grouped")
    assert short.config["VEC"] in (1, 2) and not short.launch.builds[0][0].defines.get(
        "GROUP_SPAN"), short.describe()
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    assert_close(short.execute(x, w), conv2d_reference(x, w, g), np.float32, 9)
    with pytest.raises(clconv.InvalidArgumentError, match="VEC=4 needs"):
        clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", device=spec, algorithm="grouped",
                    config={"TW": 8, "VEC": 4, "WINDOW": 1, "LOCAL_SIZE": None})
