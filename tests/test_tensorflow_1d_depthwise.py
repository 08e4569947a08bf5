"""clconv's 1-D and depthwise ops against TensorFlow's (TF 2.21, stock kernels) in
the same process: conv1d, conv1d_transpose, depthwise_conv2d and
depthwise_conv2d_backprop_input.  Values (and the float64 reference), argument
forms, NWC/NCW and NCHW (against TF's channels-last result transposed: TF's CPU
kernels refuse channels-first), and errors, class and message."""

from __future__ import annotations

import os

import numpy as np
import pytest

import clconv
from helpers import (SPECIALS, assert_close, assert_raises_like_tensorflow,
                     assert_same_specials, backprop_case,
                     backprop_input_reference, conv2d_case, conv2d_reference)

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
tf = pytest.importorskip("tensorflow")


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _ncw(array):
    return np.ascontiguousarray(np.swapaxes(array, 1, 2))


CONV1D = {  # name -> (x NWC shape, filter shape, kwargs)
    "same": ((2, 20, 4), (5, 4, 6), dict(stride=1, padding="SAME")),
    "valid_stride3": ((2, 20, 4), (5, 4, 6), dict(stride=3, padding="VALID")),
    "stride_list_dilated": ((1, 17, 3), (3, 3, 2), dict(stride=[2], padding="SAME",
                                                        dilations=2)),
    "stride_length3": ((1, 9, 2), (2, 2, 3), dict(stride=[1, 2, 1], padding="VALID")),
    "grouped": ((1, 12, 4), (3, 2, 6), dict(stride=1, padding="SAME")),
    "extra_batch_axes": ((2, 3, 10, 2), (3, 2, 4), dict(stride=2, padding="SAME")),
}

TRANSPOSE = {  # name -> (dy NWC shape, filter shape, output_shape NWC, kwargs)
    "same_x2": ((2, 10, 6), (5, 4, 6), [2, 20, 4], dict(strides=2, padding="SAME")),
    "valid_x2_odd": ((2, 10, 6), (5, 4, 6), [2, 23, 4], dict(strides=2, padding="VALID")),
    "vocoder_x8": ((1, 6, 8), (16, 4, 8), [1, 48, 4], dict(strides=8, padding="SAME")),
    "stride1": ((1, 7, 3), (3, 2, 3), [1, 7, 2], dict(strides=[1], padding="SAME")),
}


@pytest.mark.parametrize("case", list(CONV1D), ids=list(CONV1D))
def test_conv1d_matches_tensorflow(device, spec, case):
    x_shape, f_shape, kwargs = CONV1D[case]
    x, f = _random(x_shape, 1), _random(f_shape, 2)
    want = tf.nn.conv1d(x, f, **kwargs).numpy()
    got = clconv.conv1d(x, f, **kwargs, device=spec)
    assert got.shape == want.shape and got.dtype == want.dtype
    x4 = x.reshape(-1, 1, *x.shape[-2:])
    stride, dilation = kwargs["stride"], kwargs.get("dilations", 1)
    stride = stride[len(stride) // 2] if isinstance(stride, list) else stride
    padding = kwargs["padding"]
    g = conv2d_case(x4.shape, (1, *f.shape), [1, stride], padding, "NHWC", [1, dilation])
    exact = conv2d_reference(x4, f.reshape(1, *f.shape), g).reshape(want.shape)
    assert_close(got, exact, np.float32, f.shape[0] * f.shape[1])
    assert_close(got, want, np.float32, f.shape[0] * f.shape[1])
    if not isinstance(kwargs["stride"], list) and x.ndim == 3:  # the same conv in NCW
        got_ncw = clconv.conv1d(_ncw(x), f, **kwargs, data_format="NCW", device=spec)
        assert_close(_ncw(got_ncw), want, np.float32, f.shape[0] * f.shape[1])


@pytest.mark.parametrize("case", list(TRANSPOSE), ids=list(TRANSPOSE))
def test_conv1d_transpose_matches_tensorflow(device, spec, case):
    dy_shape, f_shape, output_shape, kwargs = TRANSPOSE[case]
    dy, f = _random(dy_shape, 3), _random(f_shape, 4)
    want = tf.nn.conv1d_transpose(dy, f, output_shape, **kwargs).numpy()
    got = clconv.conv1d_transpose(dy, f, output_shape, **kwargs, device=spec)
    assert got.shape == want.shape and got.dtype == want.dtype
    stride = kwargs["strides"]
    stride = stride[0] if isinstance(stride, list) else stride
    g = backprop_case([output_shape[0], 1, *output_shape[1:]], (1, *f.shape),
                      (dy_shape[0], 1, *dy_shape[1:]), [1, stride], kwargs["padding"])
    exact = backprop_input_reference(dy.reshape(dy_shape[0], 1, *dy_shape[1:]),
                                     f.reshape(1, *f.shape), g).reshape(want.shape)
    assert_close(got, exact, np.float32, f.shape[0] * f.shape[2])
    got_ncw = clconv.conv1d_transpose(_ncw(dy), f, [output_shape[0], output_shape[2],
                                                    output_shape[1]], **kwargs,
                                      data_format="NCW", device=spec)
    assert_close(_ncw(got_ncw), want, np.float32, f.shape[0] * f.shape[2])


_x, _f = _random((2, 20, 4), 5), _random((5, 4, 6), 6)
_dy, _ft = _random((2, 10, 6), 7), _random((5, 4, 6), 8)
_xd, _fd = _random((1, 8, 8, 3), 12), _random((3, 3, 3, 2), 13)
ERRORS = {  # name -> call(module); module is tf.nn or clconv
    "data_format": lambda m: m.conv1d(_x, _f, 1, "SAME", data_format="NHWC2"),
    "stride_length": lambda m: m.conv1d(_x, _f, [1, 1], "SAME"),
    "dilations_length": lambda m: m.conv1d(_x, _f, 1, "SAME", dilations=[1, 2]),
    "input_rank1": lambda m: m.conv1d(_x[0, 0], _f, 1, "SAME"),
    "input_rank2": lambda m: m.conv1d(_x[0], _f, 1, "SAME"),
    "filter_depth": lambda m: m.conv1d(_x, _random((5, 3, 6), 9), 1, "SAME"),
    "stride_zero": lambda m: m.conv1d(_x, _f, 0, "SAME"),
    "bad_padding": lambda m: m.conv1d(_x, _f, 1, "FULL"),
    "explicit_padding": lambda m: m.conv1d(_x, _f, 1, [[0, 0], [0, 0], [2, 1], [0, 0]]),
    "transpose_data_format": lambda m: m.conv1d_transpose(_dy, _ft, [2, 20, 4], 2, "SAME",
                                                          data_format="NHWC"),
    "transpose_output_shape": lambda m: m.conv1d_transpose(_dy, _ft, [2, 21, 4], 2, "SAME"),
    "transpose_channels": lambda m: m.conv1d_transpose(_dy, _random((5, 4, 5), 10),
                                                       [2, 20, 4], 2, "SAME"),
    "depthwise_stride_int": lambda m: m.depthwise_conv2d(_xd, _fd, 2, "VALID"),
    "depthwise_stride_length": lambda m: m.depthwise_conv2d(_xd, _fd, [2, 2], "VALID"),
    "depthwise_uneven_strides": lambda m: m.depthwise_conv2d(_xd, _fd, [1, 2, 1, 1], "VALID"),
    "depthwise_batch_stride": lambda m: m.depthwise_conv2d(_xd, _fd, [2, 1, 1, 1], "VALID"),
    "depthwise_depth": lambda m: m.depthwise_conv2d(_xd, _random((3, 3, 4, 2), 11),
                                                    [1, 1, 1, 1], "SAME"),
    "depthwise_input_rank": lambda m: m.depthwise_conv2d(_xd[0], _fd, [1, 1, 1, 1], "SAME"),
    "depthwise_filter_rank": lambda m: m.depthwise_conv2d(_xd, _fd[0], [1, 1, 1, 1], "SAME"),
    "depthwise_padding": lambda m: m.depthwise_conv2d(_xd, _fd, [1, 1, 1, 1], "FULL"),
    "depthwise_dilations_length": lambda m: m.depthwise_conv2d(_xd, _fd, [1, 1, 1, 1], "SAME",
                                                               dilations=[1, 2, 2, 1]),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_errors_match_tensorflow(case, spec):
    assert_raises_like_tensorflow(ERRORS[case], tf.nn, clconv)


DEPTHWISE = {  # name -> (x NHWC shape, filter shape, kwargs)
    "same": ((2, 9, 9, 3), (3, 3, 3, 2), dict(strides=[1, 1, 1, 1], padding="SAME")),
    "valid_stride2": ((2, 9, 9, 3), (3, 3, 3, 2), dict(strides=[1, 2, 2, 1], padding="VALID")),
    "dilated": ((1, 9, 8, 4), (3, 2, 4, 1), dict(strides=[1, 1, 1, 1], padding="SAME",
                                                 dilations=[2, 2])),
    "explicit": ((1, 7, 7, 2), (3, 3, 2, 3), dict(strides=[1, 1, 1, 1],
                                                  padding=[[0, 0], [1, 1], [2, 0], [0, 0]])),
    "multiplier1_mobilenet": ((1, 14, 14, 32), (3, 3, 32, 1),
                              dict(strides=[1, 2, 2, 1], padding="SAME")),
    # Column stride 1, multiplier 1: the window kernel (window_forward) on CPUs.
    "multiplier1_stride1": ((2, 10, 19, 16), (3, 3, 16, 1),
                            dict(strides=[1, 1, 1, 1], padding="SAME")),
    "multiplier1_5x5_valid": ((1, 9, 12, 8), (5, 5, 8, 1),
                              dict(strides=[1, 1, 1, 1], padding="VALID")),
}


@pytest.mark.parametrize("special", ["inf_filter", "nan_input"])
def test_depthwise_inf_and_nan_land_where_tensorflow_puts_them(device, spec, special):
    """TF's depthwise kernel multiplies its zero padding too: an infinite weight on a
    padded tap gives NaN there, on real pixels +-Inf."""
    x = np.abs(_random((2, 6, 11, 8), 18)) + 0.5  # positive: no Inf - Inf
    f = np.abs(_random((3, 3, 8, 1), 19))
    if special == "inf_filter":
        f[0, 0, 3, 0] = np.inf  # the corner tap: padding in the first row and column
    else:
        x[0, 0, 0, 2], x[1, 3, 5, 4] = np.nan, np.inf
    want = tf.nn.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME").numpy()
    got = clconv.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", device=spec)
    assert np.isnan(want).any()
    assert_same_specials(got, want, np.float32, 9)


@pytest.mark.parametrize("case", list(DEPTHWISE), ids=list(DEPTHWISE))
def test_depthwise_conv2d_matches_tensorflow(device, spec, case):
    x_shape, f_shape, kwargs = DEPTHWISE[case]
    x, f = _random(x_shape, 14), _random(f_shape, 15)
    want = tf.nn.depthwise_conv2d(x, f, **kwargs).numpy()
    got = clconv.depthwise_conv2d(x, f, **kwargs, device=spec)
    assert got.shape == want.shape and got.dtype == want.dtype
    # The float64 reference as the grouped conv it is (C groups of `multiplier` outputs).
    rate = kwargs.get("dilations", [1, 1])
    grouped = f.reshape(*f_shape[:2], 1, f_shape[2] * f_shape[3])
    g = conv2d_case(x.shape, grouped.shape, kwargs["strides"], kwargs["padding"], "NHWC",
                    [1, *rate, 1])
    assert_close(got, conv2d_reference(x, grouped, g), np.float32, f_shape[0] * f_shape[1])
    padding = kwargs["padding"]
    nchw_padding = padding if isinstance(padding, str) else [padding[i] for i in (0, 3, 1, 2)]
    got_nchw = clconv.depthwise_conv2d(x.transpose(0, 3, 1, 2).copy(), f,
                                       [kwargs["strides"][i] for i in (0, 3, 1, 2)],
                                       nchw_padding, "NCHW", kwargs.get("dilations"),
                                       device=spec)
    assert_close(got_nchw.transpose(0, 2, 3, 1), want, np.float32, f_shape[0] * f_shape[1])


def test_depthwise_gradient_nan_and_inf_in_dy_land_where_tensorflow_puts_them(device, spec):
    """NaN and Inf in dy reach every dx pixel whose taps read them, as in TF (stride 1:
    the window kernel on CPUs)."""
    f = np.abs(_random((3, 3, 8, 1), 20))
    dy = np.abs(_random((2, 6, 11, 8), 21)) + 0.5
    dy[0, 0, 0, 2], dy[1, 3, 5, 4], dy[1, 5, 10, 7] = np.nan, np.inf, -np.inf
    want = tf.nn.depthwise_conv2d_backprop_input([2, 6, 11, 8], f, dy, [1, 1, 1, 1],
                                                 "SAME").numpy()
    got = clconv.depthwise_conv2d_backprop_input([2, 6, 11, 8], f, dy, [1, 1, 1, 1], "SAME",
                                                 device=spec)
    assert all(mask(want).any() for _, mask in SPECIALS)
    assert_same_specials(got, want, np.float32, 9)


@pytest.mark.parametrize("multiplier", [1, 2, 16])  # 16: defaults.yaml sends it to direct
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides", [1, 2, 3])
def test_depthwise_gradient_inf_weights_land_where_tensorflow_puts_them(device, spec, strides,
                                                                        padding, multiplier):
    """TF's depthwise input gradient multiplies every tap, a dy pixel that padding or
    the stride leave out counting as 0 (unlike Conv2DBackpropInput): an infinite weight
    gives NaN wherever its tap misses dy and +-Inf where it reads it."""
    f = np.abs(_random((3, 3, 8, multiplier), 22))
    f[0, 0, 3, 0], f[2, 1, 5, multiplier - 1] = np.inf, -np.inf
    x_shape = [2, 7, 11, 8]
    rows, cols = ((-(-7 // strides), -(-11 // strides)) if padding == "SAME"
                  else ((7 - 3) // strides + 1, (11 - 3) // strides + 1))
    dy = np.abs(_random((2, rows, cols, 8 * multiplier), 23)) + 0.5
    s = [1, strides, strides, 1]
    want = tf.nn.depthwise_conv2d_backprop_input(x_shape, f, dy, s, padding).numpy()
    got = clconv.depthwise_conv2d_backprop_input(x_shape, f, dy, s, padding, device=spec)
    assert np.isnan(want).any()
    assert_same_specials(got, want, np.float32, 9 * multiplier)


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_depthwise_backprop_input_matches_tensorflow(device, spec, padding, strides):
    if strides == 2:  # multiplier 2
        x_shape = [2, 9, 9, 3] if padding == "SAME" else [2, 11, 11, 3]
        f, dy = _random((3, 3, 3, 2), 16), _random((2, 5, 5, 6), 17)
    else:  # multiplier 1 over 8 channels: the window kernel on CPUs
        x_shape = [2, 9, 13, 8]
        f = _random((3, 3, 8, 1), 16)
        dy = _random((2, 9, 13, 8) if padding == "SAME" else (2, 7, 11, 8), 17)
    s = [1, strides, strides, 1]
    want = tf.nn.depthwise_conv2d_backprop_input(x_shape, f, dy, s, padding).numpy()
    got = clconv.depthwise_conv2d_backprop_input(x_shape, f, dy, s, padding, device=spec)
    assert got.shape == want.shape
    assert_close(got, want, np.float32, 3 * 3 * f.shape[3])
