"""clconv.conv3d and clconv.conv3d_transpose against tf.nn.conv3d and
tf.nn.conv3d_transpose (TF 2.21, stock kernels) in the same process, and a float64
NumPy 3-D reference for what TF's CPU kernels refuse (grouped convs, NCDHW,
dilations): values, argument forms, errors (class and message)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import clconv
from helpers import assert_close, assert_raises_like_tensorflow, nan_filled_outputs

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
tf = pytest.importorskip("tensorflow")


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _reference(x, w, strides, pads, dilations, groups):
    """float64 conv3d, NDHWC, w [kd, kh, kw, C/groups, C_out]: a sum over taps of strided
    slices of the explicitly zero-padded input (independent of clconv.depth)."""
    x = np.pad(x.astype(np.float64), [(0, 0), *pads, (0, 0)])
    w = w.astype(np.float64)
    n, c = x.shape[0], x.shape[4]
    kernel, c_out = w.shape[:3], w.shape[4]
    outs = [(x.shape[1 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
            for i in range(3)]
    y = np.zeros((n, *outs, c_out))
    per_in, per_out = c // groups, c_out // groups
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            for e in range(kernel[2]):
                start = [a * dilations[0], b * dilations[1], e * dilations[2]]
                window = x[:, start[0]:start[0] + (outs[0] - 1) * strides[0] + 1:strides[0],
                           start[1]:start[1] + (outs[1] - 1) * strides[1] + 1:strides[1],
                           start[2]:start[2] + (outs[2] - 1) * strides[2] + 1:strides[2]]
                for g in range(groups):
                    y[..., g * per_out:(g + 1) * per_out] += np.einsum(
                        "ndhwc,co->ndhwo", window[..., g * per_in:(g + 1) * per_in],
                        w[a, b, e, :, g * per_out:(g + 1) * per_out])
    return y


CONV3D = {  # name -> (x shape, filter shape, strides, padding)
    "same": ((2, 6, 7, 5, 4), (3, 2, 3, 4, 5), [1, 1, 1, 1, 1], "SAME"),
    "valid_strided": ((2, 6, 7, 5, 4), (3, 2, 3, 4, 5), [1, 2, 1, 2, 1], "VALID"),
    "unet_like": ((1, 8, 8, 8, 8), (3, 3, 3, 8, 8), [1, 1, 1, 1, 1], "SAME"),
}


@pytest.mark.parametrize("case", list(CONV3D), ids=list(CONV3D))
def test_conv3d_matches_tensorflow(device, spec, case):
    if device.kind == "simulator" and case == "unet_like":
        pytest.skip("too large for the simulator")
    x_shape, f_shape, strides, padding = CONV3D[case]
    x, f = _random(x_shape, 1), _random(f_shape, 2)
    want = tf.nn.conv3d(x, f, strides, padding).numpy()
    got = clconv.conv3d(x, f, strides, padding, device=spec)
    assert got.shape == want.shape and got.dtype == want.dtype
    reduction = int(np.prod(f_shape[:4]))
    assert_close(got, want, np.float32, reduction)
    ncdhw = clconv.conv3d(np.moveaxis(x, -1, 1).copy(), f, [strides[i] for i in (0, 4, 1, 2, 3)],
                          padding, "NCDHW", device=spec)
    assert_close(np.moveaxis(ncdhw, 1, -1), want, np.float32, reduction)


def test_grouped_and_dilated_conv3d_match_the_reference(device, spec):
    """What TF's CPU kernels refuse (its GPU kernels compute it)."""
    x, f = _random((1, 7, 6, 5, 4), 3), _random((3, 2, 3, 2, 6), 4)
    got = clconv.conv3d(x, f, [1, 1, 2, 1, 1], "VALID", dilations=[1, 2, 1, 2, 1], device=spec)
    want = _reference(x, f, [1, 2, 1], [(0, 0)] * 3, [2, 1, 2], groups=2)
    assert_close(got, want, np.float32, 3 * 2 * 3 * 2)


def _nan_temporaries(monkeypatch, outputs=False):
    """Every temporary the 3-D path makes without zeroing it (and with ``outputs``,
    every new output of a plan) full of NaN, as a reused buffer may be: whatever is
    read must have been written."""
    from clconv import depth

    new_temporary = depth._new

    def temporary(rt, shape, dtype, what, zero):
        array = new_temporary(rt, shape, dtype, what, zero)
        if not zero and array.size:
            array.fill(np.nan)
        return array

    monkeypatch.setattr(depth, "_new", temporary)
    if outputs:
        nan_filled_outputs(monkeypatch)


def _stack_sizes(monkeypatch):
    """The sizes of the depth stacks the 3-D path makes, recorded as it makes them."""
    from clconv import depth

    real, made = depth._new, []

    def recording(rt, shape, dtype, what, zero):
        if "depth-stacked" in what:
            made.append(tuple(shape))
        return real(rt, shape, dtype, what, zero)

    monkeypatch.setattr(depth, "_new", recording)
    return made


# Depth strides, dilations and padding of every kind, batch 2, odd sizes:
# name -> (x shape, filter shape, strides, dilations, pads (before, after) per axis).
DEPTH_TAPS = {
    "pad_front_back": ((2, 5, 4, 6, 3), (3, 2, 3, 3, 5), [1, 1, 1], [1, 1, 1],
                       [(1, 1), (1, 0), (1, 1)]),
    "stride2_dilation2": ((2, 9, 5, 4, 4), (3, 3, 2, 4, 6), [2, 1, 2], [2, 1, 1],
                          [(2, 1), (1, 1), (0, 1)]),
    "stride3_uneven_pad": ((1, 8, 3, 5, 2), (2, 1, 3, 2, 7), [3, 1, 1], [1, 1, 2],
                           [(0, 2), (0, 0), (2, 2)]),
    "one_tap_reads_padding": ((2, 2, 3, 3, 3), (3, 3, 3, 3, 4), [1, 1, 1], [2, 1, 1],
                              [(2, 2), (1, 1), (1, 1)]),
}


@pytest.mark.parametrize("case", list(DEPTH_TAPS), ids=list(DEPTH_TAPS))
@pytest.mark.parametrize("algorithm", ["gemm", "tiled", "direct"])
def test_depth_taps_read_in_place_or_stacked_match_the_reference(device, spec, case,
                                                                  algorithm, monkeypatch):
    """The GEMMs read a conv3d's depth taps from x in place (no depth stack); another
    algorithm computes the depth-stacked 2-D conv.  Both against the float64 reference,
    through the channels-first front end (explicit pads and dilations on every axis),
    with every temporary of the 3-D path full of NaN before use."""
    from clconv import depth

    _nan_temporaries(monkeypatch)
    stacks = _stack_sizes(monkeypatch)
    x_shape, f_shape, strides, dilations, pads = DEPTH_TAPS[case]
    x, f = _random(x_shape, 41), _random(f_shape, 42)
    got = depth.conv_ncdhw(np.moveaxis(x, -1, 1), np.moveaxis(f, (3, 4), (1, 0)), None,
                           strides, pads, dilations, 1, spec, algorithm)
    want = _reference(x, f, strides, pads, dilations, groups=1)
    assert_close(np.moveaxis(got, 1, -1), want, np.float32, int(np.prod(f_shape[:4])))
    assert bool(stacks) == (algorithm == "direct"), stacks


def _transpose_reference(dy, w, strides, pads, dilations, size):
    """float64 conv3d_transpose (the input gradient of ``_reference``'s conv, ungrouped):
    every tap's products scattered onto a canvas long enough for all of them, then
    cropped to dx's ``size`` after the padding before."""
    dy, w = dy.astype(np.float64), w.astype(np.float64)
    outs, kernel = dy.shape[1:4], w.shape[:3]
    extent = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(outs, strides, kernel,
                                                                   dilations)]
    canvas = np.zeros((dy.shape[0], *[max(e, p[0] + n) for e, p, n in zip(extent, pads, size)],
                       w.shape[3]))
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            for e in range(kernel[2]):
                at = [t * d for t, d in zip((a, b, e), dilations)]
                canvas[:, at[0]:at[0] + (outs[0] - 1) * strides[0] + 1:strides[0],
                       at[1]:at[1] + (outs[1] - 1) * strides[1] + 1:strides[1],
                       at[2]:at[2] + (outs[2] - 1) * strides[2] + 1:strides[2]] += np.einsum(
                    "ndhwo,co->ndhwc", dy, w[a, b, e])
    return canvas[:, pads[0][0]:pads[0][0] + size[0], pads[1][0]:pads[1][0] + size[1],
                  pads[2][0]:pads[2][0] + size[2]]


@pytest.mark.parametrize("case", list(DEPTH_TAPS), ids=list(DEPTH_TAPS))
@pytest.mark.parametrize("algorithm", ["gemm", "tiled", "direct"])
def test_transposes_read_depth_taps_in_place_or_stacked(device, spec, case, algorithm,
                                                       monkeypatch):
    """The input gradients of the DEPTH_TAPS convs (their transposes): the GEMMs read
    every depth phase's dy depths in place (no stack; the depths no tap reaches are
    written as zeros by the kernel, from NaN-filled memory), the direct kernels from
    stacks; both against the float64 reference."""
    from clconv import depth

    _nan_temporaries(monkeypatch, outputs=True)
    stacks = _stack_sizes(monkeypatch)
    x_shape, f_shape, strides, dilations, pads = DEPTH_TAPS[case]
    y_size = [(n + p[0] + p[1] - (k - 1) * d - 1) // s + 1 for n, p, k, d, s in zip(
        x_shape[1:4], pads, f_shape[:3], dilations, strides)]
    dy, f = _random((x_shape[0], *y_size, f_shape[4]), 43), _random(f_shape, 44)
    got = depth.conv_transpose_ncdhw(np.moveaxis(dy, -1, 1), np.moveaxis(f, (3, 4), (1, 0)),
                                     None, strides, pads, x_shape[1:4], dilations, 1, spec,
                                     algorithm)
    want = _transpose_reference(dy, f, strides, pads, dilations, x_shape[1:4])
    assert_close(np.moveaxis(got, 1, -1), want, np.float32, int(np.prod(f_shape[:3])) *
                 f_shape[4])
    if algorithm != "direct":
        assert not stacks, stacks


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_depth_taps_in_place_in_half_and_double(device, spec, dtype):
    x = np.random.default_rng(43).uniform(-1, 1, (2, 5, 6, 4, 3)).astype(dtype)
    f = np.random.default_rng(44).uniform(-1, 1, (3, 3, 2, 3, 8)).astype(dtype)
    got = clconv.conv3d(x, f, [1, 2, 1, 1, 1], "SAME", device=spec)
    want = tf.nn.conv3d(x.astype(np.float64), f.astype(np.float64), [1, 2, 1, 1, 1],
                        "SAME").numpy()
    assert_close(got, want, dtype, 3 * 3 * 2 * 3)


TRANSPOSE = {  # name -> (dy shape, filter shape, output_shape, strides, padding)
    "same_x2": ((1, 3, 4, 3, 5), (3, 3, 2, 4, 5), [1, 6, 8, 6, 4], [1, 2, 2, 2, 1], "SAME"),
    "valid_int_stride": ((1, 3, 4, 3, 5), (3, 3, 2, 4, 5), [1, 7, 9, 7, 4], 2, "VALID"),
    "stride1": ((2, 3, 4, 3, 5), (3, 3, 2, 4, 5), [2, 3, 4, 3, 4], 1, "SAME"),
    "unet_up": ((1, 4, 4, 4, 8), (2, 2, 2, 4, 8), [1, 8, 8, 8, 4], [2, 2, 2], "SAME"),
    # batch 2: a phase's dy is all of dy and its dx depths one strided view of dx ...
    "unet_up_batch2": ((2, 4, 4, 4, 8), (2, 2, 2, 4, 8), [2, 8, 8, 8, 4], 2, "SAME"),
    # ... unless the depth is no multiple of the stride: then a copy per phase
    "valid_batch2_odd_depth": ((2, 3, 4, 3, 5), (3, 3, 2, 4, 5), [2, 7, 9, 7, 4], 2, "VALID"),
    # phases 4 pixels apart along rows, 128 taps x channels each: on CPUs the GEMM
    # prefetches its output lines (clconv.gemm.prefetches_output)
    "s4_prefetched": ((1, 2, 3, 3, 16), (2, 8, 8, 5, 16), [1, 2, 12, 12, 5], [1, 1, 4, 4, 1],
                      "SAME"),
}


@pytest.mark.parametrize("case", list(TRANSPOSE), ids=list(TRANSPOSE))
def test_conv3d_transpose_matches_tensorflow(device, spec, case):
    dy_shape, f_shape, output_shape, strides, padding = TRANSPOSE[case]
    dy, f = _random(dy_shape, 5), _random(f_shape, 6)
    want = tf.nn.conv3d_transpose(dy, f, output_shape, strides, padding).numpy()
    got = clconv.conv3d_transpose(dy, f, output_shape, strides, padding, device=spec)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got, want, np.float32, int(np.prod(f_shape[:3])) * f_shape[4])


@pytest.mark.parametrize("case", ["same", "valid_strided"])
def test_ndhwc_pyopencl_arrays_stay_on_the_device(device, spec, case):
    """A pyopencl array in gives a pyopencl array out, with the host path's values."""
    import pyopencl.array as cl_array

    queue = clconv.runtime(spec).queue
    x_shape, f_shape, strides, padding = CONV3D[case]
    x, f = _random(x_shape, 1), _random(f_shape, 2)
    got = clconv.conv3d(cl_array.to_device(queue, x), f, strides, padding, device=spec)
    assert isinstance(got, cl_array.Array)
    assert_close(got.get(), tf.nn.conv3d(x, f, strides, padding).numpy(), np.float32,
                 int(np.prod(f_shape[:4])))
    for name in ("same_x2", "unet_up_batch2", "valid_batch2_odd_depth"):
        dy_shape, f_shape, output_shape, strides, padding = TRANSPOSE[name]
        dy, f = _random(dy_shape, 5), _random(f_shape, 6)
        got = clconv.conv3d_transpose(cl_array.to_device(queue, dy), f, output_shape, strides,
                                      padding, device=spec)
        assert isinstance(got, cl_array.Array)
        want = tf.nn.conv3d_transpose(dy, f, output_shape, strides, padding).numpy()
        assert_close(got.get(), want, np.float32, int(np.prod(f_shape[:3])) * f_shape[4])


@pytest.mark.parametrize("case", ["same", "valid_strided", "same_x2", "valid_int_stride",
                                  "valid_batch2_odd_depth"])
def test_depth_stacks_zero_their_own_padding(device, spec, case, monkeypatch):
    """A depth stack's slices where a depth tap reads padding are zeroed by the stacking
    itself, not by a fill of the whole stack: with every unzeroed temporary of the
    3-D path full of NaN (a reused buffer may hold anything), the values still match.
    With the direct kernels: the GEMMs make no stack."""
    _nan_temporaries(monkeypatch)
    if case in CONV3D:
        x_shape, f_shape, strides, padding = CONV3D[case]
        x, f = _random(x_shape, 1), _random(f_shape, 2)
        got = clconv.conv3d(x, f, strides, padding, device=spec, algorithm="direct")
        want, reduction = tf.nn.conv3d(x, f, strides, padding).numpy(), np.prod(f_shape[:4])
    else:
        dy_shape, f_shape, output_shape, strides, padding = TRANSPOSE[case]
        dy, f = _random(dy_shape, 5), _random(f_shape, 6)
        got = clconv.conv3d_transpose(dy, f, output_shape, strides, padding, device=spec,
                                      algorithm="direct")
        want = tf.nn.conv3d_transpose(dy, f, output_shape, strides, padding).numpy()
        reduction = np.prod(f_shape[:3]) * f_shape[4]
    assert_close(got, want, np.float32, int(reduction))


@pytest.mark.parametrize("algorithm", [None, "direct"])
@pytest.mark.parametrize("case", ["unet_up_batch2", "same_x2", "valid_batch2_odd_depth"])
def test_a_pyopencl_filter_stays_on_the_device_where_phases_have_one_tap(device, spec, case,
                                                                          algorithm, monkeypatch):
    """conv3d_transpose with pyopencl input and filter: TF's values, and a filter never
    read back by the GEMM (it reads the depth taps in place); with the direct kernels
    (depth phases stacked) read back only where a depth phase stacks several taps (k3
    s2), never for the one-tap phases of a k2 s2 U-Net up-sampling."""
    import pyopencl.array as cl_array

    from clconv import depth

    queue = clconv.runtime(spec).queue
    dy_shape, f_shape, output_shape, strides, padding = TRANSPOSE[case]
    dy, f = _random(dy_shape, 5), _random(f_shape, 6)
    real_host, read_back = depth.host, []

    def host(value):
        if isinstance(value, cl_array.Array) and value.shape == f.shape:
            read_back.append(value.shape)
        return real_host(value)

    monkeypatch.setattr(depth, "host", host)
    got = clconv.conv3d_transpose(cl_array.to_device(queue, dy), cl_array.to_device(queue, f),
                                  output_shape, strides, padding, algorithm=algorithm)
    assert isinstance(got, cl_array.Array)
    want = tf.nn.conv3d_transpose(dy, f, output_shape, strides, padding).numpy()
    assert_close(got.get(), want, np.float32, int(np.prod(f_shape[:3])) * f_shape[4])
    stacking = algorithm == "direct"
    assert bool(read_back) == (stacking and f_shape[0] > 2)  # k3 s2: two depth taps


@pytest.mark.parametrize("case", ["same", "valid_strided", "grouped"])
def test_conv3d_keeps_a_pyopencl_filter_on_the_device(device, spec, case, monkeypatch):
    """conv3d with pyopencl input and filter: the filter is never read back (the GEMM
    reads it as it is; for the grouped conv its depth taps are stacked on the device),
    with TF's values (the float64 reference for groups, which TF's CPU kernels refuse)."""
    import pyopencl.array as cl_array

    from clconv import depth

    queue = clconv.runtime(spec).queue
    if case == "grouped":
        x_shape, f_shape, strides, padding = (1, 5, 6, 5, 4), (3, 2, 2, 2, 6), [1] * 5, "SAME"
    else:
        x_shape, f_shape, strides, padding = CONV3D[case]
    x, f = _random(x_shape, 1), _random(f_shape, 2)
    real_host = depth.host

    def host(value):
        assert not isinstance(value, cl_array.Array), "a pyopencl operand was read back"
        return real_host(value)

    monkeypatch.setattr(depth, "host", host)
    got = clconv.conv3d(cl_array.to_device(queue, x), cl_array.to_device(queue, f), strides,
                        padding)
    assert isinstance(got, cl_array.Array)
    if case == "grouped":
        pads = [((k - 1) // 2, k // 2) for k in f_shape[:3]]  # SAME at stride 1
        want = _reference(x, f, [1, 1, 1], pads, [1, 1, 1], 2)
    else:
        want = tf.nn.conv3d(x, f, strides, padding).numpy()
    assert_close(got.get(), want, np.float32, int(np.prod(f_shape[:4])))


def test_strided_pyopencl_views_are_read_in_place_or_refused_clearly(device, spec):
    """Views with a step along the depth and an offset along the width (as a caller's
    slicing makes them), as input and as filter: TF's values.  A view whose channels
    are not contiguous: InvalidArgumentError naming its strides (pyopencl itself can
    neither copy nor read back such a view)."""
    import pyopencl.array as cl_array

    queue = clconv.runtime(spec).queue
    x_full, w = _random((2, 8, 6, 7, 4), 31), _random((2, 2, 2, 4, 3), 32)
    x_view = cl_array.to_device(queue, x_full)[:, ::2, :, 1:]
    x = np.ascontiguousarray(x_full[:, ::2, :, 1:])
    got = clconv.conv3d(x_view, w, [1, 1, 1, 1, 1], "VALID")
    want = tf.nn.conv3d(x, w, [1, 1, 1, 1, 1], "VALID").numpy()
    assert_close(got.get(), want, np.float32, 2 * 2 * 2 * 4)
    # A filter view of every other input channel: the k2 s2 phases read it in place.
    f_full = _random((2, 2, 2, 5, 8), 33)
    f = np.ascontiguousarray(f_full[..., ::2])
    got = clconv.conv3d_transpose(x_view, cl_array.to_device(queue, f_full)[..., ::2],
                                  [2, 8, 12, 12, 5], 2, "VALID")
    want = tf.nn.conv3d_transpose(x, f, [2, 8, 12, 12, 5], 2, "VALID").numpy()
    assert_close(got.get(), want, np.float32, 2 * 2 * 2 * 4)
    # An input of every other channel has to be copied for the depth stacking: refused.
    wide = cl_array.to_device(queue, _random((2, 4, 6, 7, 8), 34))[..., ::2]
    with pytest.raises(clconv.InvalidArgumentError,
                       match=r"strides \[.*\] \(bytes\).*last axis is contiguous"):
        clconv.conv3d(wide, w, [1, 1, 1, 1, 1], "VALID")


def test_conv3d_backprop_input_is_the_v2_op(device, spec):
    dy, f = _random((1, 3, 4, 3, 5), 16), _random((3, 3, 2, 4, 5), 17)
    sizes = [1, 6, 8, 6, 4]
    want = tf.raw_ops.Conv3DBackpropInputV2(input_sizes=sizes, filter=f, out_backprop=dy,
                                            strides=[1, 2, 2, 2, 1], padding="SAME").numpy()
    got = clconv.conv3d_backprop_input(sizes, f, dy, [1, 2, 2, 2, 1], "SAME", device=spec)
    assert_close(got, want, np.float32, 3 * 3 * 2 * 5)
    with pytest.raises(TypeError, match="Expected list for 'strides'"):
        clconv.conv3d_backprop_input(sizes, f, dy, 2, "SAME", device=spec)


def test_conv3d_transpose_is_the_adjoint_of_conv3d(device, spec):
    x, f = _random((1, 5, 6, 4, 3), 7), _random((3, 3, 2, 3, 4), 8)
    y = clconv.conv3d(x, f, [1, 2, 2, 1, 1], "SAME", device=spec)
    v = _random(y.shape, 9)
    back = clconv.conv3d_transpose(v, f, x.shape, [1, 2, 2, 1, 1], "SAME", device=spec)
    left = float(np.sum(y.astype(np.float64) * v))
    right = float(np.sum(x.astype(np.float64) * back))
    assert abs(left - right) <= 1e-4 * max(1.0, abs(left))


_x, _f = _random((1, 6, 6, 6, 3), 10), _random((3, 3, 3, 3, 4), 11)
_dy = _random((1, 3, 3, 3, 4), 12)
ERRORS = {
    "strides_int": lambda m: m.conv3d(_x, _f, 2, "VALID"),
    "strides_length": lambda m: m.conv3d(_x, _f, [2, 2, 2], "VALID"),
    "strides_batch": lambda m: m.conv3d(_x, _f, [2, 1, 1, 1, 1], "VALID"),
    "strides_zero": lambda m: m.conv3d(_x, _f, [1, 0, 1, 1, 1], "VALID"),
    "explicit_padding": lambda m: m.conv3d(_x, _f, [1] * 5, [[0, 0], [1, 1], [1, 1], [1, 1],
                                                             [0, 0]]),
    "unknown_padding": lambda m: m.conv3d(_x, _f, [1] * 5, "FULL"),
    "depth_not_divisible": lambda m: m.conv3d(_random((1, 6, 6, 6, 5), 13),
                                              _random((3, 3, 3, 2, 4), 14), [1] * 5, "SAME"),
    "input_rank": lambda m: m.conv3d(_x[0], _f, [1] * 5, "SAME"),
    "filter_rank": lambda m: m.conv3d(_x, _f[0], [1] * 5, "SAME"),
    "transpose_size": lambda m: m.conv3d_transpose(_dy, _f, [1, 7, 6, 6, 3], 2, "SAME"),
    "transpose_channels": lambda m: m.conv3d_transpose(_random((1, 3, 3, 3, 5), 15), _f,
                                                       [1, 6, 6, 6, 3], 2, "SAME"),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_errors_match_tensorflow(case, spec):
    assert_raises_like_tensorflow(ERRORS[case], tf.nn, clconv)
