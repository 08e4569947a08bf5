"""clconv.pytorch against torch.nn.functional itself, in the same process: values
(against torch in float64, and the float32 result's shape and dtype against torch's
own), operand kinds, dtypes, every error row (class and message), and the adjoint
identity in 1-D, 2-D and 3-D.  Skipped where torch is not installed."""

from __future__ import annotations

import random

import numpy as np
import pyopencl.array as cl_array
import pytest

import clconv
import clconv.pytorch as cp
from clconv.device_select import runtime
from helpers import assert_close

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _tensor(shape, seed, dtype=np.float32):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def _reduction(weight_shape, transposed, groups):
    """Terms of each output's sum, for the tolerance."""
    taps = int(np.prod(weight_shape[2:]))
    return taps * (weight_shape[1] if not transposed else weight_shape[0] // groups)


def _check(name, args, kwargs, spec, algorithm=None):
    """clconv's result against torch in float64; shape and dtype as torch's own."""
    x, w, b = args
    got = getattr(cp, name)(x, w, b, **kwargs, device=spec, algorithm=algorithm)
    want = getattr(F, name)(x, w, b, **kwargs)
    exact = getattr(F, name)(x.double(), w.double(), None if b is None else b.double(),
                             **kwargs)
    assert isinstance(got, torch.Tensor) and got.dtype == want.dtype
    assert tuple(got.shape) == tuple(want.shape)
    transposed = name.startswith("conv_transpose")
    assert_close(got.numpy(), exact.numpy(), np.dtype(str(x.dtype).split(".")[1]),
                 _reduction(tuple(w.shape), transposed, kwargs.get("groups", 1)))


NAMED = {  # name -> (op, input shape, weight shape, bias?, kwargs)
    "conv2d_groups_stride": ("conv2d", (2, 4, 9, 9), (6, 2, 3, 3), True,
                             dict(stride=2, padding=1, groups=2)),
    "conv2d_same_dilated_even_kernel": ("conv2d", (1, 3, 8, 8), (4, 3, 4, 4), False,
                                        dict(padding="same", dilation=2)),
    "conv2d_same_even_kernel": ("conv2d", (1, 2, 5, 8), (3, 2, 2, 4), True,
                                dict(padding="same")),
    "conv2d_valid_unbatched": ("conv2d", (3, 8, 8), (4, 3, 3, 3), False, dict(padding="valid")),
    "conv2d_depthwise": ("conv2d", (1, 6, 7, 7), (6, 1, 3, 3), True, dict(padding=1, groups=6)),
    "conv2d_tuple_args": ("conv2d", (1, 2, 9, 7), (3, 2, 3, 2), False,
                          dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    "conv1d_strided_dilated": ("conv1d", (2, 4, 20), (5, 4, 5), True,
                               dict(stride=3, padding=2, dilation=2)),
    "conv1d_unbatched_same": ("conv1d", (4, 11), (2, 4, 4), False, dict(padding="same")),
    "conv1d_depthwise_k7": ("conv1d", (2, 8, 30), (8, 1, 7), True, dict(padding=3, groups=8)),
    "transpose2d_outpad": ("conv_transpose2d", (2, 4, 5, 5), (4, 3, 3, 3), True,
                           dict(stride=2, padding=1, output_padding=1)),
    "transpose2d_groups": ("conv_transpose2d", (1, 6, 5, 5), (6, 2, 4, 4), True,
                           dict(stride=2, padding=1, groups=3)),
    "transpose2d_depthwise_dilated": ("conv_transpose2d", (1, 4, 4, 4), (4, 1, 3, 3), False,
                                      dict(stride=3, groups=4, dilation=2, output_padding=2)),
    "transpose2d_outpad_below_dilation": ("conv_transpose2d", (1, 2, 4, 4), (2, 3, 3, 3),
                                          False, dict(stride=1, dilation=2, output_padding=1)),
    "transpose1d_vocoder_x8": ("conv_transpose1d", (2, 8, 16), (8, 4, 16), True,
                               dict(stride=8, padding=4)),
    "transpose1d_unbatched": ("conv_transpose1d", (8, 16), (8, 4, 3), False,
                              dict(padding=1)),
    "transpose1d_groups_outpad": ("conv_transpose1d", (1, 4, 9), (4, 3, 5), True,
                                  dict(stride=2, padding=2, output_padding=1, groups=2)),
    "conv3d_grouped_strided": ("conv3d", (2, 4, 6, 7, 5), (6, 2, 3, 3, 3), True,
                               dict(stride=(2, 1, 2), padding=1, groups=2)),
    "conv3d_same_dilated": ("conv3d", (1, 3, 5, 5, 5), (4, 3, 2, 2, 2), False,
                            dict(padding="same", dilation=2)),
    "conv3d_unbatched": ("conv3d", (3, 5, 4, 5), (4, 3, 3, 3, 3), False, {}),
    "transpose3d_unet_x2": ("conv_transpose3d", (1, 4, 3, 4, 5), (4, 3, 2, 2, 2), True,
                            dict(stride=2)),
    "transpose3d_outpad": ("conv_transpose3d", (1, 4, 3, 4, 5), (4, 3, 3, 3, 3), True,
                           dict(stride=2, padding=1, output_padding=1)),
    "transpose3d_grouped_mixed": ("conv_transpose3d", (2, 2, 4, 4, 4), (2, 3, 3, 1, 3), True,
                                  dict(stride=(1, 2, 3), padding=(1, 0, 1), dilation=(2, 1, 1),
                                       groups=2)),
}


@pytest.mark.parametrize("case", list(NAMED), ids=list(NAMED))
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_named_cases_match_torch(device, spec, case):
    name, x_shape, w_shape, has_bias, kwargs = NAMED[case]
    out_channels = w_shape[1] * kwargs.get("groups", 1) if "transpose" in name else w_shape[0]
    args = (_tensor(x_shape, 1), _tensor(w_shape, 2),
            _tensor((out_channels,), 3) if has_bias else None)
    _check(name, args, kwargs, spec)


@pytest.mark.parametrize("algorithm", ["direct", "gemm", "tiled", "via_forward"])
def test_every_algorithm_that_computes_a_case(device, spec, algorithm):
    """An explicit algorithm gives torch's values, or refuses a call it cannot compute
    (grouped: the GEMMs), naming the one that can."""
    if device.kind == "simulator" and algorithm != "direct":
        pytest.skip("the simulator runs the named cases with clconv's choice")
    args = (_tensor((2, 6, 7, 7), 4), _tensor((6, 4, 3, 3), 5), _tensor((4,), 6))
    _check("conv_transpose2d", args, dict(stride=2, padding=1, output_padding=1), spec,
           algorithm)
    if algorithm != "via_forward":
        _check("conv2d", (args[0], _tensor((5, 6, 3, 3), 7), None), dict(padding=1), spec,
               algorithm)
    grouped = (_tensor((1, 4, 5, 5), 8), _tensor((4, 2, 3, 3), 9), None)
    if algorithm == "direct":
        _check("conv_transpose2d", grouped, dict(groups=2), spec, algorithm)
    else:
        with pytest.raises(clconv.UnimplementedError, match="algorithm='direct'"):
            cp.conv_transpose2d(*grouped, groups=2, device=spec, algorithm=algorithm)


def _random_case(rng):
    spatial = rng.choice([1, 2, 2, 3])
    transposed = rng.random() < 0.6
    groups = rng.choice([1, 1, 2, 3])
    per_in, per_out = rng.randint(1, 3), rng.randint(1, 3)
    kernel = [rng.randint(1, 4) for _ in range(spatial)]
    stride = [rng.randint(1, 3) for _ in range(spatial)]
    dilation = [rng.randint(1, 2) for _ in range(spatial)]
    size = [rng.randint(1, 7 if spatial < 3 else 4) for _ in range(spatial)]
    batch = rng.randint(1, 2)
    kwargs = dict(stride=stride, dilation=dilation, groups=groups)
    if transposed:
        kwargs["padding"] = [rng.randint(0, k - 1) for k in kernel]
        kwargs["output_padding"] = [rng.randint(0, max(s, d) - 1)
                                    for s, d in zip(stride, dilation)]
        w_shape = (groups * per_in, per_out, *kernel)
        out_channels = groups * per_out
    else:
        size = [max(s, (k - 1) * d + 1) for s, k, d in zip(size, kernel, dilation)]
        kwargs["padding"] = [rng.randint(0, 2) for _ in kernel]
        w_shape = (groups * per_out, per_in, *kernel)
        out_channels = groups * per_out
    name = ("conv_transpose" if transposed else "conv") + f"{spatial}d"
    x_shape = (batch, groups * per_in, *size)
    return name, x_shape, w_shape, out_channels, kwargs


def test_seeded_random_cases_match_torch(device, spec):
    if device.kind == "simulator":
        pytest.skip("random cases run on the real devices; the simulator runs the table")
    rng = random.Random(2026)
    for i in range(60):
        name, x_shape, w_shape, out_channels, kwargs = _random_case(rng)
        if name.startswith("conv_transpose") and 0 in [
                (n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, s, p, d, k, op in
                zip(x_shape[2:], kwargs["stride"], kwargs["padding"], kwargs["dilation"],
                    w_shape[2:], kwargs["output_padding"])]:
            continue  # an empty output: torch 2.13 refuses it or not by dtype and groups
        bias = _tensor((out_channels,), 100 + i) if i % 2 else None
        args = (_tensor(x_shape, 3 * i), _tensor(w_shape, 3 * i + 1), bias)
        try:
            getattr(F, name)(*args, **kwargs)
        except RuntimeError as theirs:  # a case torch refuses: clconv must refuse alike
            with pytest.raises(RuntimeError) as ours:
                getattr(cp, name)(*args, **kwargs, device=spec)
            if "memory descriptor" not in str(theirs):  # not oneDNN failing past the checks
                assert str(ours.value) == str(theirs).splitlines()[0]
            continue
        try:
            _check(name, args, kwargs, spec)
        except AssertionError as exc:
            raise AssertionError(f"{name} x{x_shape} w{w_shape} {kwargs}: {exc}") from None


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_dtypes(device, spec, dtype):
    if dtype == np.float64 and not device.fp64:
        pytest.skip("no fp64 on this device")
    args = (_tensor((1, 4, 6, 6), 10, dtype), _tensor((4, 3, 3, 3), 11, dtype),
            _tensor((3,), 12, dtype))
    _check("conv_transpose2d", args, dict(stride=2, padding=1), spec)
    _check("conv1d", (_tensor((2, 3, 9), 13, dtype), _tensor((5, 3, 3), 14, dtype), None),
           dict(padding=1), spec)


def test_numpy_and_pyopencl_operands_keep_their_kind(device, spec):
    x, w, b = _tensor((1, 4, 5, 5), 15), _tensor((4, 3, 3, 3), 16), _tensor((3,), 17)
    want = F.conv_transpose2d(x.double(), w.double(), b.double(), stride=2).numpy()
    got = cp.conv_transpose2d(x.numpy(), w.numpy(), b.numpy(), stride=2, device=spec)
    assert isinstance(got, np.ndarray)
    assert_close(got, want, np.float32, 4 * 9)
    queue = runtime(spec).queue
    on_device = [cl_array.to_device(queue, t.numpy()) for t in (x, w, b)]
    got = cp.conv_transpose2d(*on_device, stride=2)
    assert isinstance(got, cl_array.Array) and got.queue is queue
    assert_close(got.get(), want, np.float32, 4 * 9)


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_adjoint_identity(device, spec, spatial, groups):
    """<conv(z, w), x> == <z, conv_transpose(x, w)>: the transpose is the adjoint of the
    conv with the same weight, stride, padding and dilation."""
    size = (7 if spatial < 3 else 5,) * spatial
    kernel = (3,) * spatial
    z = _tensor((2, 2 * groups, *size), 20).double().numpy().astype(np.float32)
    w = _tensor((3 * groups, 2, *kernel), 21).numpy()
    conv = getattr(cp, f"conv{spatial}d")
    transpose = getattr(cp, f"conv_transpose{spatial}d")
    kwargs = dict(stride=2, padding=1, dilation=1, groups=groups)
    y = conv(z, w, **kwargs, device=spec)
    x = _tensor(y.shape, 22).numpy()
    back = transpose(x, w, **kwargs, device=spec)  # output_padding 0: 7 -> 4 -> 7 (5 -> 3 -> 5)
    assert back.shape == z.shape
    left = float(np.sum(y.astype(np.float64) * x))
    right = float(np.sum(z.astype(np.float64) * back))
    assert abs(left - right) <= 1e-4 * max(1.0, abs(left)), (left, right)


def _t(*shape):
    return torch.zeros(*shape)


ERRORS = {  # name -> (op, args, kwargs); each must raise torch's class and message
    "input_rank": ("conv2d", (_t(2, 3), _t(4, 3, 3, 3)), {}),
    "input_rank_1d": ("conv1d", (_t(1, 3, 8, 8), _t(4, 3, 3)), {}),
    "input_rank_transpose": ("conv_transpose1d", (_t(3, 8, 8, 8), _t(3, 4, 3)), {}),
    "weight_rank": ("conv1d", (_t(1, 3, 8), _t(4, 3, 3, 3)), {}),
    "weight_too_few_dims": ("conv2d", (_t(1, 3, 8, 8), _t(4)), {}),
    "channels": ("conv2d", (_t(1, 5, 8, 8), _t(4, 3, 3, 3)), {}),
    "groups_not_dividing": ("conv2d", (_t(1, 4, 8, 8), _t(3, 2, 3, 3)), dict(groups=2)),
    "groups_channels": ("conv2d", (_t(1, 5, 8, 8), _t(4, 2, 3, 3)), dict(groups=2)),
    "groups_zero": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3)), dict(groups=0)),
    "no_output_channels": ("conv2d", (_t(1, 3, 8, 8), _t(0, 3, 3, 3)), {}),
    "bias_length": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3), _t(5)), {}),
    "bias_rank": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3), _t(4, 1)), {}),
    "kernel_larger_than_input": ("conv2d", (_t(1, 3, 2, 2), _t(4, 3, 3, 3)), {}),
    "kernel_larger_than_input_1d": ("conv1d", (_t(1, 3, 2), _t(4, 3, 3)), {}),
    "stride_zero": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3)), dict(stride=0)),
    "stride_length": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3)), dict(stride=(1, 1, 1))),
    "padding_length": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3)), dict(padding=(1, 1, 1))),
    "negative_padding": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3)), dict(padding=-1)),
    "dilation_zero": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3)), dict(dilation=0)),
    "dilation_zero_1d": ("conv1d", (_t(1, 3, 8), _t(4, 3, 3)), dict(dilation=0)),
    "same_with_stride": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3)),
                         dict(stride=2, padding="same")),
    "unknown_padding": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3)), dict(padding="foo")),
    "dtype_mismatch": ("conv2d", (_t(1, 3, 8, 8).double(), _t(4, 3, 3, 3)), {}),
    "bias_dtype": ("conv2d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3), _t(4).double()), {}),
    "transpose_channels": ("conv_transpose2d", (_t(1, 5, 4, 4), _t(3, 4, 3, 3)), {}),
    "transpose_bias": ("conv_transpose2d", (_t(1, 3, 4, 4), _t(3, 4, 3, 3), _t(3)), {}),
    "transpose_groups": ("conv_transpose2d", (_t(1, 3, 4, 4), _t(3, 4, 3, 3)), dict(groups=2)),
    "output_padding_too_large": ("conv_transpose2d", (_t(1, 3, 4, 4), _t(3, 4, 3, 3)),
                                 dict(stride=2, output_padding=2)),
    "output_padding_too_large_1d": ("conv_transpose1d", (_t(1, 3, 4), _t(3, 4, 3)),
                                    dict(stride=2, output_padding=2)),
    "negative_output_padding": ("conv_transpose2d", (_t(1, 3, 4, 4), _t(3, 4, 3, 3)),
                                dict(stride=2, output_padding=-1)),
    "transpose_output_too_small": ("conv_transpose2d", (_t(1, 3, 1, 1), _t(3, 4, 3, 3)),
                                   dict(padding=3)),
    "transpose_output_too_small_1d": ("conv_transpose1d", (_t(1, 3, 1), _t(3, 4, 3)),
                                      dict(padding=3)),
    "transpose_dilation_zero": ("conv_transpose2d", (_t(1, 3, 4, 4), _t(3, 4, 3, 3)),
                                dict(dilation=0)),
    "transpose_padding_string": ("conv_transpose2d", (_t(1, 3, 4, 4), _t(3, 4, 3, 3)),
                                 dict(padding="same")),
    "conv3d_kernel_larger_than_input": ("conv3d", (_t(1, 3, 2, 2, 2), _t(4, 3, 3, 3, 3)), {}),
    "conv3d_dilation_zero": ("conv3d", (_t(1, 3, 8, 8, 8), _t(4, 3, 3, 3, 3)),
                             dict(dilation=0)),
    "conv3d_unbatched_channels": ("conv3d", (_t(1, 3, 8, 8), _t(4, 3, 3, 3, 3)), {}),
    "transpose3d_output_padding": ("conv_transpose3d", (_t(1, 3, 4, 4, 4), _t(3, 4, 3, 3, 3)),
                                   dict(stride=2, output_padding=2)),
    "transpose3d_output_too_small": ("conv_transpose3d", (_t(1, 3, 1, 1, 1),
                                                          _t(3, 4, 3, 3, 3)), dict(padding=3)),
    "transpose3d_dilation_zero": ("conv_transpose3d", (_t(1, 3, 4, 4, 4), _t(3, 4, 3, 3, 3)),
                                  dict(dilation=0)),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_errors_match_torch(case, spec):
    name, args, kwargs = ERRORS[case]
    with pytest.raises(Exception) as theirs:
        getattr(F, name)(*args, **kwargs)
    with pytest.raises(Exception) as ours:
        getattr(cp, name)(*args, **kwargs, device=spec)
    assert isinstance(ours.value, type(theirs.value)), (ours.value, theirs.value)
    assert str(ours.value).splitlines()[0] == str(theirs.value).splitlines()[0]
