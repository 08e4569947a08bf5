"""Algorithm "col2im": the input gradient as a GEMM into columns and a sum over taps.

The shared tables (test_values, test_ieee_parity, test_plans) run it with every other
algorithm; here what is its own: the few-channel layers it is chosen for, strides that
do and do not divide the filter, padding the transposed conv crops or adds (ONNX's
output_shape), filters in other layouts (PyTorch's, read through strides), float64,
and what it refuses.
"""

from __future__ import annotations

import numpy as np
import pyopencl.array as cl_array
import pytest

import clconv
from clconv import onnx as clconv_onnx
from clconv.reference import backprop_input_reference
from helpers import assert_close, backprop_case, random_array, reduction_length

# (dy shape, filter [kh, kw, C_dx, C_dy], dx shape, stride, padding[, dilation])
CASES = {
    "rgb_k4s2": ((2, 6, 7, 32), (4, 4, 3, 32), (2, 12, 14, 3), 2, "SAME"),
    "rgb_k5s2_odd": ((2, 5, 6, 16), (5, 5, 3, 16), (2, 9, 12, 3), 2, "SAME"),
    "k3s2_valid": ((1, 4, 5, 8), (3, 3, 5, 8), (1, 9, 11, 5), 2, "VALID"),
    "k2s4_gaps": ((1, 3, 4, 8), (2, 2, 2, 8), (1, 12, 16, 2), 4, "VALID"),
    "k16s8": ((1, 3, 3, 8), (16, 16, 2, 8), (1, 24, 24, 2), 8, "SAME"),
    "stride1": ((1, 5, 6, 8), (3, 2, 4, 8), (1, 5, 6, 4), 1, "SAME"),
    "one_channel": ((3, 4, 4, 24), (4, 4, 1, 24), (3, 8, 8, 1), 2, "SAME"),
    "dilated": ((1, 4, 5, 8), (3, 2, 3, 8), (1, 8, 7, 3), 1, "VALID", 2),
    "wide": ((1, 4, 4, 16), (3, 3, 40, 16), (1, 8, 8, 40), 2, "SAME"),
}


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_the_float64_reference(device, spec, case, data_format):
    dy_shape, w_shape, dx_shape, stride, padding, *dilation = CASES[case]
    dilations = dilation[0] if dilation else None
    dy, w = random_array(dy_shape, seed=1), random_array(w_shape, seed=2)
    g = backprop_case(dx_shape, w_shape, dy_shape, stride, padding, dilations=dilations)
    want = backprop_input_reference(dy, w, g)
    if data_format == "NCHW":
        dy, dx_shape = np.ascontiguousarray(dy.transpose(0, 3, 1, 2)), \
            (dx_shape[0], dx_shape[3], dx_shape[1], dx_shape[2])
        want = want.transpose(0, 3, 1, 2)
    got = clconv.conv2d_transpose(dy, w, dx_shape, stride, padding, data_format=data_format,
                                  dilations=dilations, device=spec, algorithm="col2im")
    assert_close(got, want, np.float32, reduction_length(g, transpose=True))


def test_float64_and_device_arrays(device, spec):
    dy_shape, w_shape, dx_shape, stride, padding = CASES["rgb_k5s2_odd"]
    dy, w = random_array(dy_shape, np.float64, 3), random_array(w_shape, np.float64, 4)
    g = backprop_case(dx_shape, w_shape, dy_shape, stride, padding)
    queue = clconv.runtime(spec).queue
    got = clconv.conv2d_transpose(cl_array.to_device(queue, dy), cl_array.to_device(queue, w),
                                  dx_shape, stride, padding, device=spec, algorithm="col2im")
    assert isinstance(got, cl_array.Array)
    assert_close(got.get(), backprop_input_reference(dy, w, g), np.float64,
                 reduction_length(g, transpose=True))


def test_a_filter_read_through_strides(device, spec):
    """A filter in PyTorch's layout [C_dy, C_dx, kh, kw], handed over as a strided
    view in TF's [kh, kw, C_dx, C_dy]: packed through its strides, never copied."""
    dy_shape, w_shape, dx_shape, stride, padding = CASES["rgb_k4s2"]
    dy, w = random_array(dy_shape, seed=5), random_array(w_shape, seed=6)
    queue = clconv.runtime(spec).queue
    torch_layout = cl_array.to_device(queue, np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    view = torch_layout.transpose((2, 3, 1, 0))
    assert view.shape == w.shape and not view.flags.c_contiguous
    plan = clconv.plan("conv2d_transpose", dy_shape, w_shape, stride, padding,
                       output_shape=dx_shape, device=spec, algorithm="col2im")
    g = backprop_case(dx_shape, w_shape, dy_shape, stride, padding)
    want = backprop_input_reference(dy, w, g)
    reduction = reduction_length(g, transpose=True)
    assert_close(plan.execute(dy, view), want, np.float32, reduction)
    assert_close(plan.execute(dy, plan.prepare_filters(view)), want, np.float32, reduction)


@pytest.mark.parametrize("attributes, dx_hw", [
    # output_shape past the full transposed conv: a negative leading padding, and dx
    # pixels no tap reaches are 0
    (dict(strides=[2, 2], output_shape=[12, 11]), (12, 11)),
    # dilations with strides (TF allows one or the other): every tap tested
    (dict(strides=[2, 3], dilations=[2, 2], pads=[1, 0, 2, 1]), (8, 13)),
])
def test_onnx_geometries(device, spec, attributes, dx_hw):
    x, w = random_array((1, 3, 4, 4), seed=7), random_array((3, 2, 3, 3), seed=8)
    got = clconv_onnx.conv_transpose(x, w, algorithm="col2im", device=spec, **attributes)
    # the float64 reference: the direct algorithm, which test_onnx checks against ONNX's
    want = clconv_onnx.conv_transpose(x.astype(np.float64), w.astype(np.float64),
                                      algorithm="direct", device=spec, **attributes)
    assert got.shape == (1, 2) + dx_hw
    assert_close(got, want, np.float32, 27)


def test_what_it_refuses(device, spec):
    dy, w = random_array((1, 4, 4, 8)), random_array((3, 3, 2, 8))
    with pytest.raises(clconv.UnimplementedError, match="col2im computes float32 and "
                                                        "float64 only \\(got float16\\)"):
        clconv.conv2d_transpose(dy.astype(np.float16), w.astype(np.float16), (1, 8, 8, 2), 2,
                                "SAME", device=spec, algorithm="col2im")
    with pytest.raises(clconv.InvalidArgumentError, match="algorithm='col2im' is not one of"):
        clconv.conv2d(dy, random_array((3, 3, 8, 2)), 1, "SAME", device=spec,
                      algorithm="col2im")


def test_filters_packed_by_another_plan_are_refused(device, spec):
    shapes = dict(output_shape=(1, 8, 8, 3), device=spec)
    plan = clconv.plan("conv2d_transpose", (1, 4, 4, 8), (4, 4, 3, 8), 2, "SAME",
                       algorithm="col2im", **shapes)
    other = clconv.plan("conv2d_transpose", (1, 4, 4, 8), (4, 4, 3, 8), 2, "SAME",
                        algorithm="gemm", **shapes)
    prepared = other.prepare_filters(random_array((4, 4, 3, 8)))
    with pytest.raises(ValueError, match="prepared by another plan"):
        plan.execute(random_array((1, 4, 4, 8)), prepared)
