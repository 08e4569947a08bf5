"""Values of every op on every device against the independent float64 reference.

A table of named cases covers every argument form; hypothesis adds random
cases; both backprop algorithms must agree with the reference (and so with
each other); the adjoint identity ties conv2d to conv2d_transpose.
"""

from __future__ import annotations

import re

import numpy as np
import pyopencl.array as cl_array
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clconv
from clconv import registry
from clconv.device_select import runtime
from helpers import (
    algorithms_computing,
    assert_close,
    backprop_case,
    backprop_input_reference,
    conv2d_case,
    conv2d_reference,
    max_relative_error,
    random_array,
    reduction_length,
)

# name: (x_shape NHWC, filter [kh, kw, in, out], strides, padding, dilations)
CONV_CASES = {
    "3x3_same_s1": ((2, 6, 7, 3), (3, 3, 3, 4), 1, "SAME", None),
    "3x3_valid_s2_len1": ((1, 9, 8, 2), (3, 3, 2, 5), [2], "VALID", None),
    "strides_len2": ((1, 8, 9, 3), (2, 3, 3, 2), [2, 3], "SAME", None),
    "strides_len4": ((2, 7, 7, 1), (3, 3, 1, 2), [1, 2, 2, 1], "SAME", None),
    "explicit_pad": ((1, 5, 6, 2), (3, 3, 2, 3), 1, [[0, 0], [1, 2], [0, 3], [0, 0]], None),
    "dilation2": ((1, 9, 9, 2), (3, 3, 2, 2), 1, "SAME", 2),
    "dilation_stride": ((1, 11, 10, 2), (3, 2, 2, 3), 2, "VALID", [2, 3]),
    "kernel_larger_same": ((1, 2, 3, 2), (5, 5, 2, 3), 1, "SAME", None),
    "kernel_larger_valid": ((1, 2, 2, 1), (3, 3, 1, 2), 1, "VALID", None),
    "stride_larger_kernel": ((1, 9, 9, 2), (2, 2, 2, 3), 4, "SAME", None),
    "1x1": ((2, 5, 5, 7), (1, 1, 7, 5), 1, "VALID", None),
    "1x1_s2": ((1, 6, 6, 4), (1, 1, 4, 3), 2, "VALID", None),
    "odd_prime_channels": ((1, 7, 5, 13), (3, 3, 13, 11), 1, "SAME", None),
    "empty_batch": ((0, 5, 5, 2), (3, 3, 2, 3), 1, "SAME", None),
    "zero_out_channels": ((1, 5, 5, 2), (3, 3, 2, 0), 1, "SAME", None),
    "grouped": ((1, 5, 5, 4), (3, 3, 2, 6), 1, "SAME", None),
    # depthwise, multiplier 1: "grouped" runs 8 channels as one vector (NHWC)
    "depthwise": ((2, 6, 7, 8), (3, 3, 1, 8), 1, "SAME", None),
    "depthwise_x2_s2": ((1, 7, 6, 3), (3, 3, 1, 6), 2, "SAME", None),  # multiplier 2
    "grouped_4_per_group_dilated": ((1, 7, 8, 8), (3, 2, 4, 4), 1, "VALID", [1, 2, 1, 1]),
}

# name: (dy_shape NHWC, filter [kh, kw, out(C of result), in(C of dy)], output_shape,
#        strides, padding, dilations) -- conv2d_transpose form
TRANSPOSE_CASES = {
    "s2_same_k3": ((2, 4, 4, 3), (3, 3, 2, 3), (2, 8, 8, 2), 2, "SAME", None),
    "s2_same_odd_out": ((1, 4, 4, 3), (3, 3, 2, 3), (1, 7, 7, 2), 2, "SAME", None),
    "s2_valid_k3": ((1, 4, 5, 2), (3, 3, 3, 2), (1, 9, 11, 3), 2, "VALID", None),
    "s2_valid_unreached_row": ((1, 4, 4, 2), (3, 3, 2, 2), (1, 10, 10, 2), 2, "VALID", None),
    "s3_k2_gaps": ((1, 3, 3, 2), (2, 2, 3, 2), (1, 9, 9, 3), 3, "SAME", None),
    "s1_same": ((1, 5, 6, 4), (3, 3, 2, 4), (1, 5, 6, 2), 1, "SAME", None),
    "output_shape_len2": ((2, 3, 3, 2), (4, 4, 5, 2), [6, 6], 2, "SAME", None),
    "output_shape_int64_array": ((1, 3, 3, 2), (3, 3, 1, 2), np.array([1, 6, 6, 1]), 2, "SAME",
                                 None),
    "strides_len2": ((1, 3, 4, 2), (3, 3, 2, 2), (1, 6, 12, 2), [2, 3], "SAME", None),
    "explicit_pad": ((1, 4, 4, 2), (3, 3, 3, 2), (1, 7, 8, 3), 2,
                     [[0, 0], [1, 1], [0, 2], [0, 0]], None),
    "explicit_pad_larger_than_kernel": ((1, 6, 6, 1), (2, 2, 2, 1), (1, 3, 3, 2), 1,
                                       [[0, 0], [2, 2], [2, 2], [0, 0]], None),
    "dilation2": ((1, 5, 5, 2), (3, 3, 2, 2), (1, 5, 5, 2), 1, "SAME", 2),
    "dilation2_s2": ((1, 4, 4, 2), (3, 3, 2, 2), (1, 11, 11, 2), 2, "VALID", 2),
    # A stride on both axes, a dilation on one: backprop_direct steps through the taps
    # of a unit-dilation axis by the stride and tests each tap of the other.
    "dilation_one_axis_s2x3": ((1, 4, 5, 2), (3, 2, 3, 2), (1, 11, 14, 3), [2, 3], "VALID",
                               [2, 1]),
    "kernel_larger_than_output": ((1, 1, 1, 2), (5, 5, 3, 2), (1, 2, 2, 3), 2, "SAME", None),
    "fcn_like_s4_k8": ((1, 3, 3, 3), (8, 8, 3, 3), (1, 12, 12, 3), 4, "SAME", None),
    "empty_batch": ((0, 3, 3, 2), (3, 3, 2, 2), (0, 6, 6, 2), 2, "SAME", None),
    "zero_in_channels": ((1, 3, 3, 0), (3, 3, 2, 0), (1, 6, 6, 2), 2, "SAME", None),
    "1x1_s1": ((2, 4, 4, 6), (1, 1, 5, 6), (2, 4, 4, 5), 1, "VALID", None),
}

# The tables below run every registered algorithm: conv2d's all of them (a grouped
# case checks the refusals too); the transposes' those that compute ungrouped convs,
# the only kind TF's transposes take.
ALGORITHMS = algorithms_computing("conv2d_transpose")
CONV2D_ALGORITHMS = list(registry.algorithms_for("conv2d"))


def _nchw(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))


def _nchw_shape(shape):
    n, h, w, c = shape
    return (n, c, h, w)


def _nchw_attr(value):
    """A length-4 strides/dilations list re-ordered for NCHW; shorter forms need nothing."""
    if isinstance(value, list) and len(value) == 4:
        return [value[0], value[3], value[1], value[2]]
    return value


def _nchw_padding(padding):
    if isinstance(padding, str):
        return padding
    return [padding[0], padding[3], padding[1], padding[2]]


@pytest.mark.parametrize("algorithm", CONV2D_ALGORITHMS)
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv2d_matches_reference(device, spec, case, data_format, algorithm):
    x_shape, w_shape, strides, padding, dilations = CONV_CASES[case]
    x, w = random_array(x_shape, seed=1), random_array(w_shape, seed=2)
    if data_format == "NCHW":
        x, padding = _nchw(x), _nchw_padding(padding)
        strides, dilations = _nchw_attr(strides), _nchw_attr(dilations)
    g = conv2d_case(x.shape, w_shape, strides, padding, data_format, dilations)
    if registry.unsupported(algorithm, "conv2d", np.dtype(np.float32), g, device):
        # e.g. the GEMMs compute ungrouped convs only, "grouped" grouped ones only
        with pytest.raises(clconv.UnimplementedError, match="algorithm='direct'"):
            clconv.conv2d(x, w, strides, padding, data_format=data_format, dilations=dilations,
                          device=spec, algorithm=algorithm)
        return
    y = clconv.conv2d(x, w, strides, padding, data_format=data_format, dilations=dilations,
                      device=spec, algorithm=algorithm)
    assert_close(y, conv2d_reference(x, w, g), np.float32, reduction_length(g))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", list(TRANSPOSE_CASES), ids=list(TRANSPOSE_CASES))
def test_conv2d_transpose_matches_reference(device, spec, case, data_format, algorithm):
    dy_shape, w_shape, output_shape, strides, padding, dilations = TRANSPOSE_CASES[case]
    dy, w = random_array(dy_shape, seed=3), random_array(w_shape, seed=4)
    if data_format == "NCHW":
        dy, padding = _nchw(dy), _nchw_padding(padding)
        strides, dilations = _nchw_attr(strides), _nchw_attr(dilations)
        if len(output_shape) == 4:
            output_shape = _nchw_shape(tuple(output_shape))
    g = backprop_case(output_shape, w_shape, dy.shape, strides, padding, data_format, dilations)
    dx = clconv.conv2d_transpose(dy, w, output_shape, strides, padding, data_format=data_format,
                                 dilations=dilations, device=spec, algorithm=algorithm)
    assert_close(dx, backprop_input_reference(dy, w, g), np.float32,
                 reduction_length(g, transpose=True))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_backprop_input_is_transpose_with_input_sizes(device, spec, algorithm):
    """conv2d_backprop_input(input_sizes, w, dy) == conv2d_transpose(dy, w, input_sizes)."""
    dy, w = random_array((2, 4, 4, 3), seed=5), random_array((3, 3, 2, 3), seed=6)
    sizes = [2, 8, 7, 2]
    g = backprop_case(sizes, w.shape, dy.shape, 2, "SAME")
    dx = clconv.conv2d_backprop_input(sizes, w, dy, [1, 2, 2, 1], "SAME", device=spec,
                                      algorithm=algorithm)
    assert_close(dx, backprop_input_reference(dy, w, g), np.float32, reduction_length(g, True))
    assert np.array_equal(dx, clconv.conv2d_transpose(dy, w, sizes, 2, "SAME", device=spec,
                                                      algorithm=algorithm))


def test_algorithms_agree_on_a_larger_case(device, spec):
    if device.kind == "simulator":
        pytest.skip("the simulator runs this size too slowly; the table covers it there")
    dy, w = random_array((2, 9, 9, 16), seed=7), random_array((5, 5, 8, 16), seed=8)
    g = backprop_case((2, 18, 18, 8), w.shape, dy.shape, 2, "SAME")
    expected = backprop_input_reference(dy, w, g)
    for algorithm in ALGORITHMS:  # each against the float64 reference, not one another
        got = clconv.conv2d_transpose(dy, w, (2, 18, 18, 8), 2, "SAME", device=spec,
                                      algorithm=algorithm)
        assert_close(got, expected, np.float32, 5 * 5 * 16)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_direct_transpose_sums_dy_channels_in_vectors(device, spec, dtype):
    """backprop_direct with CO_VEC sums the dy channels in vectors where they are
    contiguous and whole vectors (a transpose to RGB from 32 channels), from host
    memory at any alignment, device arrays, and a view whose channels start at an odd
    offset; other channel counts run the scalar sum.  Each against float64; half is
    storage (vload_halfN), summed in float."""
    if dtype == np.float64 and not device.fp64:
        pytest.skip(f"{device.name} has no fp64")
    rt = runtime(spec)
    cases = [  # dy, filter (kh, kw, dx channels, dy channels), output, strides, dilations
        ((2, 5, 6, 32), (5, 5, 3, 32), (2, 10, 12, 3), 2, None),
        ((1, 4, 4, 16), (3, 3, 2, 16), (1, 12, 12, 2), 3, None),
        ((1, 6, 5, 32), (3, 3, 3, 32), (1, 6, 5, 3), 1, 2),
        ((1, 4, 4, 20), (4, 4, 3, 20), (1, 8, 8, 3), 2, None),  # 20: not whole vectors of 8
    ]
    for dy_shape, w_shape, out_shape, strides, dilations in cases:
        dy, w = random_array(dy_shape, dtype, seed=31), random_array(w_shape, dtype, seed=32)
        g = backprop_case(out_shape, w_shape, dy_shape, strides, "SAME", "NHWC", dilations)
        expected = backprop_input_reference(dy, w, g)
        reduction = reduction_length(g, transpose=True)
        # Host memory one element past an aligned address: no vector is aligned.
        shifted = np.empty(dy.size + 1, dtype)[1:].reshape(dy.shape)
        shifted[...] = dy
        # A device view whose channels start at offset 1 of a wider tensor.
        wide = np.zeros(dy_shape[:3] + (dy_shape[3] + 2,), dtype)
        wide[..., 1:-1] = dy
        view = cl_array.to_device(rt.queue, wide)[..., 1:-1]
        for config in ({"CI_BLOCK": 4, "CO_VEC": 16}, {"CI_BLOCK": 2, "CO_VEC": 8},
                       {"CI_BLOCK": 1, "CO_VEC": 4}, {"CI_BLOCK": 4, "CO_VEC": 1}):
            plan = clconv.plan("conv2d_transpose", dy_shape, w_shape, strides, "SAME",
                               output_shape=out_shape, dilations=dilations, dtype=dtype,
                               device=spec, algorithm="direct",
                               config={**config, "LOCAL_SIZE": None})
            assert_close(plan.execute(shifted, w), expected, dtype, reduction)
            on_device = plan.execute(cl_array.to_device(rt.queue, dy),
                                     cl_array.to_device(rt.queue, w))
            assert_close(on_device.get(), expected, dtype, reduction)
            assert_close(plan.execute(view, cl_array.to_device(rt.queue, w)).get(), expected,
                         dtype, reduction)


@pytest.mark.parametrize("algorithm", [None, *algorithms_computing("conv2d")])
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_dtypes(device, spec, dtype, algorithm):
    """float64 where the device has fp64; float16 everywhere (half is storage,
    loaded with vload_half and accumulated in float, as TF's half kernels do)."""
    x, w = random_array((1, 5, 6, 3), dtype, seed=9), random_array((3, 3, 3, 2), dtype, seed=10)
    if dtype == np.float64 and not device.fp64:
        # The name as text, not a pattern: "Intel(R) Xeon(R)" holds regex groups.
        with pytest.raises(clconv.UnimplementedError, match=re.escape(device.name)):
            clconv.conv2d(x, w, 1, "SAME", device=spec)
        return
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    y = clconv.conv2d(x, w, 1, "SAME", device=spec, algorithm=algorithm)
    assert_close(y, conv2d_reference(x, w, g), dtype, reduction_length(g))
    dx = clconv.conv2d_transpose(x, w.transpose(0, 1, 3, 2).copy(), (1, 10, 12, 2), 2, "SAME",
                                 device=spec, algorithm=algorithm)
    gt = backprop_case((1, 10, 12, 2), (3, 3, 2, 3), x.shape, 2, "SAME")
    assert_close(dx, backprop_input_reference(x, w.transpose(0, 1, 3, 2), gt), dtype,
                 reduction_length(gt, True))
    if dtype == np.float16 and algorithm is None:  # the fast path, not a fallback
        plan = clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", dtype=dtype, device=spec)
        assert plan.algorithm == "gemm", plan.describe()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [8, 6, 5])  # vectors of 8 (4 for float64), of 2, none
def test_depthwise_in_every_dtype(device, spec, dtype, channels):
    """The grouped kernels' vector builds (vload_halfN for float16, narrower vectors for
    float64) and their one-channel build, forward and input gradient, against the
    float64 reference."""
    if dtype == np.float64 and not device.fp64:
        pytest.skip("no cl_khr_fp64")
    x, w = random_array((2, 7, 6, channels), dtype, seed=40), \
        random_array((3, 3, 1, channels), dtype, seed=41)
    g = conv2d_case(x.shape, w.shape, 2, "SAME")
    assert g.groups == channels
    y = clconv.conv2d(x, w, 2, "SAME", device=spec)
    assert_close(y, conv2d_reference(x, w, g), dtype, reduction_length(g))
    plan = clconv.plan("conv2d", x.shape, w.shape, 2, "SAME", dtype=dtype, device=spec)
    assert plan.algorithm == "grouped", plan.describe()
    dy = random_array(y.shape, dtype, seed=42)
    dx = clconv.depthwise_conv2d_backprop_input(list(x.shape), w.reshape(3, 3, channels, 1),
                                                dy, [1, 2, 2, 1], "SAME", device=spec)
    assert_close(dx, backprop_input_reference(dy, w, g), dtype, reduction_length(g, True))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("case", [
    ((2, 7, 11, 8), (3, 3, 2, 8), 1, "SAME", None, "NHWC", 2),  # 4 groups of 2 outputs
    ((1, 9, 19, 16), (3, 3, 4, 16), 2, "SAME", None, "NHWC", 4),  # ResNeXt-like, strided
    ((1, 10, 21, 8), (3, 3, 2, 32), 1, "SAME", 2, "NHWC", 8),  # dilated, 8 outputs a group
    ((1, 8, 6, 11), (3, 3, 2, 16), 1, "VALID", None, "NCHW", 4),  # the one-channel build
])
def test_grouped_conv_with_vectors_of_one_groups_outputs(device, spec, dtype, case):
    """conv2d's grouped kernel with VEC output channels of one group a vector
    (GROUP_VEC): runs whose pixels are all real and runs reaching into the padding,
    every dtype, against the float64 reference; NCHW takes the one-channel build."""
    if dtype == np.float64 and not device.fp64:
        pytest.skip("no cl_khr_fp64")
    x_shape, w_shape, strides, padding, dilations, fmt, vec = case
    x, w = random_array(x_shape, dtype, seed=43), random_array(w_shape, dtype, seed=44)
    g = conv2d_case(x_shape, w_shape, strides, padding, fmt, dilations)
    # grouped_forward's vectors (window_forward, which may also take several groups'
    # outputs a vector, has tests/test_window_kernel.py)
    plan = clconv.plan("conv2d", x_shape, w_shape, strides, padding, data_format=fmt,
                       dilations=dilations, dtype=dtype, device=spec, algorithm="grouped",
                       config={"TW": 8, "VEC": "auto", "WINDOW": 0, "LOCAL_SIZE": None})
    vector_build = plan.launch.builds[0][0].defines
    from clconv.gemm import vector_width

    # The widest of 8, 4, 2 the device's vectors, 32 bytes and the group's outputs take.
    expected = min(vec, 4 if dtype == np.float64 else 8, vector_width(device))
    assert (vector_build["VEC"], vector_build.get("GROUP_VEC")) == (expected, 1), vector_build
    assert_close(plan.execute(x, w), conv2d_reference(x, w, g), dtype, reduction_length(g))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("case", [
    ((2, 7, 9, 32), (3, 3, 16, 32), 1, "SAME", None, "NHWC"),  # 2 groups of 16
    ((1, 9, 8, 64), (3, 3, 32, 64), 2, "SAME", 2, "NHWC"),  # strided, dilated, 32 a group
    ((1, 6, 7, 12), (3, 2, 4, 144), 1, "VALID", None, "NHWC"),  # 3 groups of 48
    ((1, 32, 5, 6), (3, 3, 16, 32), 1, "SAME", None, "NCHW"),  # channels-first
])
def test_grouped_conv2d_as_one_gemm(device, spec, dtype, case):
    """A grouped conv2d of 16 or more outputs a group runs as one GEMM whose tiles each
    read their own group's input channels (GROUP_OUT), by default, against the float64
    reference."""
    if dtype == np.float64 and not device.fp64:
        pytest.skip("no cl_khr_fp64")
    x_shape, w_shape, strides, padding, dilations, fmt = case
    x, w = random_array(x_shape, dtype, seed=45), random_array(w_shape, dtype, seed=46)
    g = conv2d_case(x_shape, w_shape, strides, padding, fmt, dilations)
    assert g.groups > 1
    plan = clconv.plan("conv2d", x_shape, w_shape, strides, padding, data_format=fmt,
                       dilations=dilations, dtype=dtype, device=spec)
    assert plan.algorithm == "gemm", plan.describe()
    assert plan.launch.gemm.defines["GROUP_OUT"] == g.out_c // g.groups
    assert (g.out_c // g.groups) % plan.config["TN"] == 0, plan.config
    assert_close(plan.execute(x, w), conv2d_reference(x, w, g), dtype, reduction_length(g))
    got = clconv.conv2d(x, w, strides, padding, fmt, dilations, device=spec)
    assert_close(got, conv2d_reference(x, w, g), dtype, reduction_length(g))


def test_a_vector_width_the_grouping_cannot_take_is_refused(spec):
    """VEC > 1 would read other groups' channels into one vector: refused, naming why."""
    with pytest.raises(clconv.InvalidArgumentError, match="VEC=4 needs a depthwise conv"):
        clconv.plan("conv2d", (1, 5, 5, 4), (3, 3, 1, 8), 1, "SAME", device=spec,
                    algorithm="grouped", config={"TW": 4, "VEC": 4, "WINDOW": 0,
                                                 "LOCAL_SIZE": None})
    with pytest.raises(clconv.InvalidArgumentError, match="VEC=4 needs a depthwise conv"):
        clconv.plan("conv2d", (1, 5, 5, 6), (3, 3, 1, 18), 1, "SAME", device=spec,
                    algorithm="grouped", config={"TW": 4, "VEC": 4, "WINDOW": 1,
                                                 "LOCAL_SIZE": None})  # groups of 3


def test_pyopencl_arrays_in_and_out(device, spec):
    """pyopencl.array in gives pyopencl.array out, on the caller's queue."""
    rt = runtime(spec)
    x, w = random_array((1, 6, 6, 3), seed=11), random_array((3, 3, 3, 4), seed=12)
    x_dev, w_dev = cl_array.to_device(rt.queue, x), cl_array.to_device(rt.queue, w)
    y = clconv.conv2d(x_dev, w_dev, 1, "SAME")
    assert isinstance(y, cl_array.Array) and y.queue is rt.queue
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    assert_close(y.get(), conv2d_reference(x, w, g), np.float32, reduction_length(g))
    dx = clconv.conv2d_transpose(y, w_dev, (1, 6, 6, 3), 1, "SAME")
    assert isinstance(dx, cl_array.Array) and dx.queue is rt.queue
    gt = backprop_case((1, 6, 6, 3), w.shape, y.shape, 1, "SAME")
    assert_close(dx.get(), backprop_input_reference(y.get(), w, gt), np.float32,
                 reduction_length(gt, True))


def test_pyopencl_strided_view_is_read_in_place(device, spec):
    """A non-contiguous view (an NHWC slice) is read through its strides, not copied."""
    rt = runtime(spec)
    big = random_array((2, 6, 6, 5), seed=13)
    w = random_array((3, 3, 3, 2), seed=14)
    view = cl_array.to_device(rt.queue, big)[1:, :, :, 1:4]
    y = clconv.conv2d(view, w, 1, "VALID")
    x = big[1:, :, :, 1:4]
    g = conv2d_case(x.shape, w.shape, 1, "VALID")
    assert_close(y.get(), conv2d_reference(x, w, g), np.float32, reduction_length(g))


def test_float64_filter_is_cast_to_float32_input_as_tf_does(device, spec):
    x, w = random_array((1, 4, 4, 2), seed=15), random_array((3, 3, 2, 2), np.float64, seed=16)
    y = clconv.conv2d(x, w, 1, "SAME", device=spec)
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    # float32 out, and the values of the filter rounded to float32 first.
    assert_close(y, conv2d_reference(x, w.astype(np.float32), g), np.float32, 18)


def test_transpose_takes_the_filters_dtype_as_tf_does(device, spec):
    """TF's Conv2DBackpropInput converts the filter (input #1) first: a NumPy input of
    another dtype is cast to it."""
    if not device.fp64:
        pytest.skip(f"{device.name} has no fp64")
    dy, w = random_array((1, 3, 3, 2), seed=15), random_array((3, 3, 2, 2), np.float64, seed=16)
    assert clconv.conv2d_transpose(dy, w, (1, 6, 6, 2), 2, device=spec).dtype == np.float64
    assert clconv.conv2d_backprop_input((1, 6, 6, 2), w.astype(np.float32), dy.astype(np.float64),
                                        2, "SAME", device=spec).dtype == np.float32


def test_adjoint_identity(device, spec):
    """<conv2d(z, w), x> == <z, conv2d_transpose(x, w)> for the same strides and padding."""
    z = random_array((2, 9, 8, 3), np.float64 if device.fp64 else np.float32, seed=17)
    w = random_array((3, 4, 3, 5), z.dtype, seed=18)
    for strides, padding in [(2, "SAME"), (3, "VALID"), (1, [[0, 0], [2, 1], [0, 2], [0, 0]])]:
        y = clconv.conv2d(z, w, strides, padding, device=spec)
        x = random_array(y.shape, z.dtype, seed=19)
        zt = clconv.conv2d_transpose(x, w, z.shape, strides, padding, device=spec)
        lhs, rhs = float(np.vdot(y, x)), float(np.vdot(z, zt))
        rtol = 1e-10 if z.dtype == np.float64 else 1e-4
        assert abs(lhs - rhs) <= rtol * max(1.0, abs(lhs)), (strides, padding, lhs, rhs)


@st.composite
def transpose_problems(draw):
    stride_h, stride_w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    k_h, k_w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dil_h, dil_w = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["SAME", "VALID", "EXPLICIT"]))
    n, c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h_out, w_out = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    if padding == "EXPLICIT":
        padding = [[0, 0], [draw(st.integers(0, 3)), draw(st.integers(0, 3))],
                   [draw(st.integers(0, 3)), draw(st.integers(0, 3))], [0, 0]]
    try:
        g = conv2d_case((n, h_out, w_out, c_out), (k_h, k_w, c_out, c_in), [stride_h, stride_w],
                        padding, "NHWC", [dil_h, dil_w])
    except clconv.InvalidArgumentError:
        from hypothesis import assume
        assume(False)
    return g, [stride_h, stride_w], padding, [dil_h, dil_w]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=transpose_problems(), algorithm=st.sampled_from(ALGORITHMS))
def test_random_transpose_and_forward(device, spec, problem, algorithm):
    if device.kind == "simulator":
        pytest.skip("random cases run on the real devices; the simulator runs the table")
    g, strides, padding, dilations = problem
    z = random_array((g.batch, g.in_h, g.in_w, g.in_c), seed=20)
    w = random_array((g.k_h, g.k_w, g.in_c, g.out_c), seed=21)
    y = clconv.conv2d(z, w, strides, padding, dilations=dilations, device=spec)
    assert_close(y, conv2d_reference(z, w, g), np.float32, reduction_length(g))
    x = random_array(g.y_shape(), seed=22)
    dx = clconv.conv2d_transpose(x, w, g.x_shape(), strides, padding, dilations=dilations,
                                 device=spec, algorithm=algorithm)
    assert_close(dx, backprop_input_reference(x, w, g), np.float32, reduction_length(g, True))


def test_largest_relative_error_is_reported(device, spec, record_property):
    """Records the worst relative error over a mid-sized case of each op (see -rA)."""
    if device.kind == "simulator":
        shape, k = (1, 6, 6, 4), (3, 3, 4, 4)
    else:
        shape, k = (2, 16, 16, 32), (3, 3, 32, 32)
    x, w = random_array(shape, seed=23), random_array(k, seed=24)
    g = conv2d_case(shape, k, 2, "SAME")
    worst = max_relative_error(clconv.conv2d(x, w, 2, "SAME", device=spec),
                               conv2d_reference(x, w, g))
    dy = random_array(g.y_shape(), seed=25)
    for algorithm in ALGORITHMS:
        dx = clconv.conv2d_transpose(dy, w, shape, 2, "SAME", device=spec, algorithm=algorithm)
        worst = max(worst, max_relative_error(dx, backprop_input_reference(dy, w, g)))
    record_property("max_relative_error", worst)
    print(f"\n{device.label}: largest relative error {worst:.3g}")
    assert worst < 1e-4


def test_tensor_larger_than_the_device_allows_is_a_clear_error(device, spec):
    """An output past CL_DEVICE_MAX_MEM_ALLOC_SIZE is refused before allocating, naming
    the size and the limit (here a 1x1 conv whose output alone exceeds it; the input is a
    broadcast view, so the test itself allocates almost nothing)."""
    side = int((device.max_mem_alloc_size / 4 / 8) ** 0.5) + 64  # 8 channels of float32
    x = np.broadcast_to(np.float32(1), (1, side, side, 1))
    w = np.ones((1, 1, 1, 8), np.float32)
    with pytest.raises(clconv.ResourceExhaustedError, match=str(device.max_mem_alloc_size)):
        clconv.conv2d(x, w, 1, "VALID", device=spec)


@pytest.mark.parametrize("algorithm", ["tiled"])
def test_sampled_candidates_of_local_memory_kernels(device, spec, algorithm):
    """A seeded sample of the search space of each family that stages tiles in __local
    memory computes the reference values on every real device: group shapes and loop
    counts a GPU default never uses are where a CPU runtime's barrier handling can go
    wrong (a fully unrolled load loop gave PoCL garbage, now and then)."""
    if device.kind == "simulator":
        pytest.skip("the simulator runs a sample of its own under the race check "
                    "(test_oclgrind.py)")
    import random

    from clconv import search_space

    x, w = random_array((2, 9, 9, 5), seed=30), random_array((3, 3, 5, 20), seed=31)
    dy, wt = random_array((1, 5, 5, 6), seed=32), random_array((3, 3, 5, 6), seed=33)
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    gt = backprop_case((1, 9, 9, 5), wt.shape, dy.shape, 2, "SAME")
    space = registry.space_for(algorithm, "conv2d")
    limits = search_space.context(g, device, "conv2d", algorithm)
    candidates = space.prune(limits).candidates
    for chosen in random.Random(11).sample(candidates, min(12, len(candidates))):
        y = clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", device=spec,
                        algorithm=algorithm, config=chosen).execute(x, w)
        assert_close(y, conv2d_reference(x, w, g), np.float32, reduction_length(g))
        dx = clconv.plan("conv2d_transpose", dy.shape, wt.shape, 2, "SAME",
                         output_shape=(1, 9, 9, 5), device=spec, algorithm=algorithm,
                         config=chosen).execute(dy, wt)
        assert_close(dx, backprop_input_reference(dy, wt, gt), np.float32,
                     reduction_length(gt, transpose=True))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_non_contiguous_numpy_operands(device, spec, algorithm):
    """Views (a PyTorch-layout weight transposed to TF's) are copied contiguous for the
    device: the copy must live until the kernels are done (it once was freed at launch,
    and the direct and tiled kernels read whatever then took its memory)."""
    if device.kind == "simulator":
        pytest.skip("the named cases run on the simulator; this one needs some size")
    torch_layout = random_array((24, 32, 5, 5), seed=40)  # [out, in, kh, kw]
    w = torch_layout.transpose(2, 3, 1, 0)  # [kh, kw, in, out], a view
    dy = random_array((2, 24, 8, 8), seed=41).transpose(0, 2, 3, 1)  # NHWC view of NCHW
    g = backprop_case((2, 16, 16, 32), w.shape, dy.shape, 2, "SAME")
    expected = backprop_input_reference(dy, w, g)
    for _ in range(3):  # later calls reuse freed memory if anything still reads it
        dx = clconv.conv2d_transpose(dy, w, (2, 16, 16, 32), 2, "SAME", device=spec,
                                     algorithm=algorithm)
        assert_close(dx, expected, np.float32, reduction_length(g, transpose=True))


# GEMM tiles whose last channel tile is partial (OUT_TAIL = N % TN lanes stored): the
# tail inside the first vector, across whole vectors and a partial one, and a tail
# after full tiles; each fits 16 vector registers (AVX2).  TM, TN, VEC, output channels.
PARTIAL_TILES = [(4, 24, 8, 21), (2, 64, 16, 37), (2, 32, 16, 40), (6, 4, 4, 3), (2, 32, 8, 45)]


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("tile", PARTIAL_TILES, ids=[f"{m}x{n}v{v}-{c}ch"
                                                      for m, n, v, c in PARTIAL_TILES])
def test_gemm_stores_only_the_channels_of_a_partial_tile(device, spec, tile, data_format):
    """Conv2d and its transpose through GEMM tiles wider than what is left of the output
    channels: the last tile's stores (built knowing how many lanes are real in NHWC,
    bounded per lane in NCHW) against float64, written through `out=` into the front of
    a NaN-filled buffer (a lane not stored stays NaN), whose 7 values past the result
    must stay NaN (a lane stored past the last channel of the last pixel)."""
    tm, tn, vec, channels = tile
    config = {"TM": tm, "TN": tn, "VEC": vec, "LOCAL_SIZE": None}
    x, w = random_array((2, 5, 7, 6), seed=51), random_array((3, 3, 6, channels), seed=52)
    dy, wt = random_array((1, 4, 3, 5), seed=53), random_array((4, 4, channels, 5), seed=54)
    out_shape = (1, 8, 6, channels)
    if data_format == "NCHW":
        x, dy, out_shape = _nchw(x), _nchw(dy), _nchw_shape(out_shape)
    g = conv2d_case(x.shape, w.shape, 1, "SAME", data_format)
    gt = backprop_case(out_shape, wt.shape, dy.shape, 2, "SAME", data_format)
    runs = [(clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", data_format=data_format,
                         device=spec, algorithm="gemm", config=config), x, w,
             conv2d_reference(x, w, g), reduction_length(g)),
            (clconv.plan("conv2d_transpose", dy.shape, wt.shape, 2, "SAME",
                         output_shape=out_shape, data_format=data_format, device=spec,
                         algorithm="gemm", config=config), dy, wt,
             backprop_input_reference(dy, wt, gt), reduction_length(gt, transpose=True))]
    rt = runtime(spec)
    for plan, source, filters, expected, reduction in runs:
        assert (plan.config["TN"], plan.config["VEC"]) == (tn, vec), plan.describe()
        result_size = int(np.prod(expected.shape))
        guard = 7  # values past the result
        held = cl_array.to_device(rt.queue, np.full(result_size + guard, np.nan, np.float32))
        result = held[:result_size].reshape(expected.shape)
        plan.execute(source, filters, out=result)
        got = held.get()
        assert_close(got[:result_size].reshape(expected.shape), expected, np.float32, reduction)
        assert np.isnan(got[result_size:]).all(), "a store past the last channel"


# Transposes to one channel tile whose stride phases' pixels lie 4 and 8 apart along
# the row, with a reduction of 64 and more a phase: the GEMM asks for its tiles' output
# lines before computing them (PREFETCH_OUTPUT, CPU builds).  dy shape, filter, stride,
# output shape.
PREFETCHED_TRANSPOSES = {
    "s4_k8": ((2, 3, 4, 16), (8, 8, 5, 16), 4, (2, 12, 16, 5)),
    "s8_k16_21ch": ((1, 2, 3, 24), (16, 16, 21, 24), 8, (1, 16, 24, 21)),
}


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", list(PREFETCHED_TRANSPOSES), ids=list(PREFETCHED_TRANSPOSES))
def test_gemm_prefetching_its_output_matches_float64(device, spec, case, data_format):
    """A transpose through the GEMM built to prefetch its output on CPU devices (NHWC
    prefetches, NCHW's strided channels skip it at run time; other devices never
    build it) against float64, written through `out=` into a NaN-filled buffer so
    that a pixel left unwritten shows."""
    dy_shape, w_shape, stride, out_shape = PREFETCHED_TRANSPOSES[case]
    dy, w = random_array(dy_shape, seed=61), random_array(w_shape, seed=62)
    if data_format == "NCHW":
        dy, out_shape = _nchw(dy), _nchw_shape(out_shape)
    g = backprop_case(out_shape, w.shape, dy.shape, stride, "SAME", data_format)
    expected = backprop_input_reference(dy, w, g)
    plan = clconv.plan("conv2d_transpose", dy.shape, w.shape, stride, "SAME",
                       output_shape=out_shape, data_format=data_format, device=spec,
                       algorithm="gemm")
    assert bool(plan.launch.gemm.defines.get("PREFETCH_OUTPUT")) == (device.kind == "CPU")
    result = cl_array.to_device(runtime(spec).queue,
                                np.full(expected.shape, np.nan, np.float32))
    plan.execute(dy, w, out=result)
    assert_close(result.get(), expected, np.float32, reduction_length(g, transpose=True))


# Where the GEMM prefetches its output (clconv.gemm.prefetches_output): op, input (dy)
# shape, filter, stride, output shape, channel tile width, prefetched on a CPU device.
PREFETCH_RULE = {
    "s8_one_channel_tile": ("conv2d_transpose", (1, 4, 4, 21), (16, 16, 21, 21), 8,
                            (1, 32, 32, 21), 24, True),
    "s8_four_channel_tiles": ("conv2d_transpose", (1, 4, 4, 21), (16, 16, 64, 21), 8,
                              (1, 32, 32, 64), 16, False),
    "s2_pixels_too_close": ("conv2d_transpose", (1, 8, 8, 64), (4, 4, 16, 64), 2,
                            (1, 16, 16, 16), 16, False),
    "s8_reduction_too_short": ("conv2d_transpose", (1, 4, 4, 32), (8, 8, 8, 32), 8,
                               (1, 32, 32, 8), 8, False),
    "forward_conv": ("conv2d", (1, 16, 16, 64), (3, 3, 64, 16), 1, None, 16, False),
}


@pytest.mark.parametrize("case", list(PREFETCH_RULE), ids=list(PREFETCH_RULE))
def test_gemm_prefetches_only_a_single_tile_of_widely_spaced_pixels(device, spec, case):
    """The prefetch is built where it was measured to pay (see the rule's docstring):
    a CPU's transpose whose phases' pixels lie 4 or more apart, one channel tile and a
    reduction of 64 or more a phase; nowhere else, and never off a CPU."""
    op, x_shape, w_shape, stride, out_shape, tile_width, prefetched = PREFETCH_RULE[case]
    plan = clconv.plan(op, x_shape, w_shape, stride, "SAME", output_shape=out_shape,
                       device=spec, algorithm="gemm",
                       config={"TM": 4, "TN": tile_width, "VEC": 8})
    built = bool(plan.launch.gemm.defines.get("PREFETCH_OUTPUT"))
    assert built == (prefetched and device.kind == "CPU"), plan.describe()
