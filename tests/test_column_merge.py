"""Few-channel forward convs read their width taps as one run of channels
(clconv.column_merge): the GEMMs run a virtual conv over a column-padded copy.

Checked on every device, against the float64 reference, with the merge forced on
small shapes (its work threshold lowered): SAME, VALID with columns left over,
explicit and asymmetric padding, strides, height dilation, NCHW and strided
pyopencl inputs (the padding kernel's per-pixel path), conv1d, float16 and float64,
prepared filters and a filter view whose taps and channels do not read as one axis
(the packing reads through its strides); every temporary and output starts as NaN,
so an element the padding does not write shows.  And when the merge applies.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyopencl.array as cl_array
import pytest

import clconv
from clconv import column_merge, plans
from clconv.reference import conv2d_reference
from helpers import (
    assert_close,
    conv2d_case,
    nan_filled_outputs,
    random_array,
    reduction_length,
)

CASES = {  # x_shape, w_shape, strides, padding, data_format, dilations
    "stem-same-s2": ((2, 11, 13, 3), (5, 5, 3, 8), 2, "SAME", "NHWC", None),
    "valid-columns-left": ((1, 9, 12, 2), (3, 4, 2, 5), [1, 1, 3, 1], "VALID", "NHWC", None),
    "explicit": ((2, 7, 8, 1), (3, 3, 1, 4), 1, [[0, 0], [1, 2], [3, 0], [0, 0]], "NHWC",
                 None),
    "dilated-rows": ((1, 10, 10, 4), (3, 3, 4, 6), 1, "SAME", "NHWC", [1, 2, 1, 1]),
    "nchw": ((2, 3, 7, 9), (3, 2, 3, 4), 2, "VALID", "NCHW", None),
    "wide-tile": ((1, 6, 40, 8), (2, 7, 8, 64), [1, 1, 2, 1], "SAME", "NHWC", None),
}


@pytest.fixture
def merge_everything(monkeypatch):
    """The merge for every conv it can take, however small; plans made before or
    after this test (with the real threshold) are not shared with it."""
    monkeypatch.setattr(column_merge, "MIN_MACS", 0)
    plans.forget_all()
    yield
    plans.forget_all()


@pytest.fixture
def nan_outputs(monkeypatch):
    """Every new output and temporary (the padded copy among them) full of NaN."""
    nan_filled_outputs(monkeypatch)


def _plan(spec, case, algorithm="gemm", dtype=np.float32):
    x_shape, w_shape, strides, padding, fmt, dilations = CASES[case]
    return clconv.plan("conv2d", x_shape, w_shape, strides, padding, data_format=fmt,
                       dilations=dilations, dtype=dtype, device=spec, algorithm=algorithm)


@pytest.mark.parametrize("case", CASES)
def test_merged_conv_matches_the_reference(spec, case, merge_everything, nan_outputs):
    x_shape, w_shape, strides, padding, fmt, dilations = CASES[case]
    x, w = random_array(x_shape, seed=1), random_array(w_shape, seed=2)
    g = conv2d_case(x_shape, w_shape, strides, padding, fmt, dilations)
    want = conv2d_reference(x, w, g)
    for algorithm in ("gemm", "tiled"):
        plan = _plan(spec, case, algorithm)
        assert plan.launch.columns is not None, plan.describe()
        assert plan.launch.ch_count == g.k_w * g.in_c
        assert_close(plan.execute(x, w), want, np.float32, reduction_length(g))
        assert_close(plan.execute(x, plan.prepare_filters(w)), want, np.float32,
                     reduction_length(g))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_merged_conv_in_other_dtypes(spec, device, dtype, merge_everything, nan_outputs):
    if dtype == np.float64 and not device.fp64:
        pytest.skip("no fp64 on this device")
    if dtype == np.float16 and not device.fp16:
        pytest.skip("no fp16 on this device")
    x_shape, w_shape, strides, padding, fmt, dilations = CASES["stem-same-s2"]
    x, w = random_array(x_shape, dtype, 3), random_array(w_shape, dtype, 4)
    g = conv2d_case(x_shape, w_shape, strides, padding, fmt, dilations)
    plan = _plan(spec, "stem-same-s2", dtype=dtype)
    assert plan.launch.columns is not None
    assert_close(plan.execute(x, w), conv2d_reference(x, w, g), dtype, reduction_length(g))


def test_strided_views_of_input_and_filter(spec, merge_everything, nan_outputs):
    """Device operands that are views: the input a channel slice (its pixels' channels
    not consecutive: the padding kernel's per-pixel path), the filter the first input
    channels of a wider one (its width taps and channels do not read as one axis)."""
    rt = clconv.runtime(spec)
    x_big, w_big = random_array((2, 9, 11, 5), seed=5), random_array((3, 4, 5, 6), seed=6)
    x, w = x_big[..., 1:4], w_big[:, :, :3, :]
    g = conv2d_case(x.shape, w.shape, 1, "SAME")
    want = conv2d_reference(x, w, g)
    x_dev = cl_array.to_device(rt.queue, x_big)[..., 1:4]
    w_dev = cl_array.to_device(rt.queue, w_big)[:, :, :3, :]
    got = clconv.conv2d(x_dev, w_dev, 1, "SAME", device=spec, algorithm="gemm")
    assert clconv.plan("conv2d", x.shape, w.shape, 1, "SAME", device=spec,
                       algorithm="gemm").launch.columns is not None
    assert_close(got.get(), want, np.float32, reduction_length(g))


def test_conv1d_over_one_channel(spec, merge_everything, nan_outputs):
    """A waveform model's first conv: one channel, k 7, stride 2."""
    x, w = random_array((2, 50, 1), seed=7), random_array((7, 1, 8), seed=8)
    got = clconv.conv1d(x, w, 2, "SAME", device=spec, algorithm="gemm")
    g = conv2d_case((2, 1, 50, 1), (1, 7, 1, 8), [1, 1, 2, 1], "SAME")
    want = conv2d_reference(x[:, None], w[None], g)[:, 0]
    assert_close(got, want, np.float32, reduction_length(g))


def test_where_the_merge_applies(device):
    g = conv2d_case((4, 224, 224, 3), (7, 7, 3, 64), 2, "SAME")  # a ResNet stem
    merged = column_merge.merged_geometry(g, device)
    if device.kind == "GPU":
        assert merged is None
        return
    assert (merged.in_w, merged.in_c, merged.k_w, merged.stride_w) == (112, 21, 1, 1)
    assert (merged.pad_left, merged.pad_right) == (0, 0)
    assert (merged.in_h, merged.k_h, merged.stride_h, merged.pad_top) == (224, 7, 2, 2)
    assert column_merge.padded_width(g) == 229  # 111 * 2 + 7
    for other in (dataclasses.replace(g, in_c=16),  # many channels per tap already
                  dataclasses.replace(g, k_w=1),  # one tap column
                  dataclasses.replace(g, dil_w=2),  # taps not one run
                  conv2d_case((1, 8, 8, 3), (3, 3, 3, 8), 1, "SAME")):  # too little work
        assert column_merge.merged_geometry(other, device) is None, other
    gpu = dataclasses.replace(device, kind="GPU")
    assert column_merge.merged_geometry(g, gpu) is None
