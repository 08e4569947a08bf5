"""The ONNX front end: the Conv and ConvTranspose operators, on OpenCL.

``conv(X, W, B=None, **attributes)`` and ``conv_transpose(X, W, B=None,
**attributes)`` take the operators' attributes (auto_pad NOTSET / SAME_UPPER /
SAME_LOWER / VALID, dilations, group, kernel_shape, pads, strides, and for
ConvTranspose output_padding and output_shape) with the meaning the operator
specification gives them, in 1-D, 2-D and 3-D (3-D as 2-D convs summed over the
depth taps, clconv.depth).  X is
[N, C, *spatial]; Conv's W is [M, C / group, *kernel], ConvTranspose's
[C, M / group, *kernel].  Operands may be numpy arrays, pyopencl arrays or CPU
torch tensors; the result is the same kind as X.  onnx itself is never imported.

ConvTranspose's output size, from the specification: with output_shape given,
total_padding = stride * (in - 1) + output_padding + (k - 1) * dilation + 1 -
output_shape, split by auto_pad (SAME_UPPER: the larger half at the end, else at
the beginning); otherwise output_shape = stride * (in - 1) + output_padding +
(k - 1) * dilation + 1 - pads_begin - pads_end (SAME_*: in * stride).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from clconv.channels_first import conv_nc, conv_transpose_nc, host_operand, returned_as
from clconv.device_select import DeviceSpec
from clconv.errors import InvalidArgumentError, UnimplementedError
from clconv.ops import check_algorithm
from clconv.tensors import COMPUTED_DTYPES

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _ints(value: Optional[Sequence[int]], name: str, length: int, default: int) -> list[int]:
    if value is None:
        return [default] * length
    values = [int(v) for v in value]
    if len(values) != length:
        raise InvalidArgumentError(f"attribute {name}={values} must have {length} values (one "
                                   f"per spatial axis)")
    return values


def _operands(op: str, X: Any, W: Any, B: Any, group: int, kernel_shape: Any,
              auto_pad: str) -> tuple[Any, Any, Any, int]:
    """(x, w, b, the spatial rank), checked by ``_check``."""
    x, w = host_operand(X, "X"), host_operand(W, "W")
    b = None if B is None else host_operand(B, "B")
    return x, w, b, _check(op, x, w, b, group, kernel_shape, auto_pad)


def _check(op: str, x: Any, w: Any, b: Any, group: int, kernel_shape: Any,
           auto_pad: str) -> int:
    """Ranks, channels, bias, kernel_shape and auto_pad; returns the spatial rank."""
    if auto_pad not in AUTO_PADS:
        raise InvalidArgumentError(f"auto_pad={auto_pad!r} is not one of {', '.join(AUTO_PADS)}")
    spatial = len(x.shape) - 2
    if spatial not in (1, 2, 3) or len(w.shape) != len(x.shape):
        raise InvalidArgumentError(f"{op}: X of shape {list(x.shape)} and W of shape "
                                   f"{list(w.shape)} must both be [N, C, *spatial] with 1, 2 "
                                   "or 3 spatial axes")
    if group < 1 or x.shape[1] % group:
        raise InvalidArgumentError(f"{op}: group={group} must be positive and divide X's "
                                   f"{x.shape[1]} channels")
    if kernel_shape is not None and [int(k) for k in kernel_shape] != list(w.shape[2:]):
        raise InvalidArgumentError(f"{op}: kernel_shape={list(kernel_shape)} differs from W's "
                                   f"spatial shape {list(w.shape[2:])}")
    if x.dtype != w.dtype or (b is not None and b.dtype != x.dtype):
        raise InvalidArgumentError(f"{op}: X, W and B must share one type (got {x.dtype}, "
                                   f"{w.dtype}{'' if b is None else ', ' + str(b.dtype)})")
    if x.dtype not in COMPUTED_DTYPES:
        raise UnimplementedError(f"clconv computes float16, float32 and float64, not {x.dtype}")
    return spatial


def _same_split(total: int, auto_pad: str) -> tuple[int, int]:
    """(begin, end) of a SAME padding: SAME_UPPER puts the odd one at the end."""
    small = total // 2
    return (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)


def conv(X: Any, W: Any, B: Any = None, *, auto_pad: str = "NOTSET",
         dilations: Optional[Sequence[int]] = None, group: int = 1,
         kernel_shape: Optional[Sequence[int]] = None, pads: Optional[Sequence[int]] = None,
         strides: Optional[Sequence[int]] = None, device: DeviceSpec = None,
         algorithm: Optional[str] = None) -> Any:
    """ONNX Conv: Y = X (*) W + B, Y [N, M, *out]."""
    check_algorithm(algorithm, "conv2d")
    like = X
    x, w, b, spatial = _operands("conv", X, W, B, group, kernel_shape, auto_pad)
    if w.shape[1] * group != x.shape[1]:
        raise InvalidArgumentError(f"conv: W of shape {list(w.shape)} with group={group} needs "
                                   f"{w.shape[1] * group} input channels, X has {x.shape[1]}")
    if w.shape[0] % group:
        raise InvalidArgumentError(f"conv: group={group} must divide W's {w.shape[0]} output "
                                   "channels")
    stride = _ints(strides, "strides", spatial, 1)
    dilation = _ints(dilations, "dilations", spatial, 1)
    kernel = [int(k) for k in w.shape[2:]]
    size = [int(s) for s in x.shape[2:]]
    k_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        outs = [-(-n // s) for n, s in zip(size, stride)]
        pairs = [_same_split(max((o - 1) * s + k - n, 0), auto_pad)
                 for o, s, k, n in zip(outs, stride, k_eff, size)]
    elif auto_pad == "VALID":
        pairs = [(0, 0)] * spatial
    else:
        flat = _ints(pads, "pads", 2 * spatial, 0)
        pairs = list(zip(flat[:spatial], flat[spatial:]))
    if any(p < 0 for pair in pairs for p in pair):
        raise InvalidArgumentError(f"conv: pads {pairs} must not be negative")
    outs = [(n + pb + pe - k) // s + 1 for n, (pb, pe), k, s in zip(size, pairs, k_eff, stride)]
    if any(o <= 0 for o in outs):
        raise InvalidArgumentError(f"conv: the output of X {list(x.shape)} with kernel "
                                   f"{kernel}, pads {pairs}, strides {stride} and dilations "
                                   f"{dilation} would be empty ({outs})")
    return returned_as(conv_nc(x, w, b, stride, pairs, dilation, group, device, algorithm),
                       like)


def conv_transpose(X: Any, W: Any, B: Any = None, *, auto_pad: str = "NOTSET",
                   dilations: Optional[Sequence[int]] = None, group: int = 1,
                   kernel_shape: Optional[Sequence[int]] = None,
                   output_padding: Optional[Sequence[int]] = None,
                   output_shape: Optional[Sequence[int]] = None,
                   pads: Optional[Sequence[int]] = None,
                   strides: Optional[Sequence[int]] = None, device: DeviceSpec = None,
                   algorithm: Optional[str] = None) -> Any:
    """ONNX ConvTranspose: Y [N, M, *out] with out from output_shape or the pads."""
    check_algorithm(algorithm, "conv2d_backprop_input")
    like = X
    x, w, b, spatial = _operands("conv_transpose", X, W, B, group, kernel_shape, auto_pad)
    if w.shape[0] != x.shape[1]:
        raise InvalidArgumentError(f"conv_transpose: W of shape {list(w.shape)} needs "
                                   f"{w.shape[0]} input channels, X has {x.shape[1]}")
    stride = _ints(strides, "strides", spatial, 1)
    dilation = _ints(dilations, "dilations", spatial, 1)
    extra = _ints(output_padding, "output_padding", spatial, 0)
    kernel = [int(k) for k in w.shape[2:]]
    size = [int(s) for s in x.shape[2:]]
    k_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    full = [s * (n - 1) + op + k for s, n, op, k in zip(stride, size, extra, k_eff)]
    if output_shape is not None:
        outs = [int(v) for v in output_shape][-spatial:]
        if len(outs) != spatial:
            raise InvalidArgumentError(f"conv_transpose: output_shape={list(output_shape)} "
                                       f"needs {spatial} spatial sizes")
        # An output_shape past the full transposed conv gives a negative total padding,
        # split with floor division: onnx's own node test (test_convtranspose_output_shape)
        # expects the extra rows at the end.
        split = "SAME_UPPER" if auto_pad == "SAME_UPPER" else "SAME_LOWER"
        pairs = [_same_split(f - o, split) for f, o in zip(full, outs)]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        outs = [n * s for n, s in zip(size, stride)]
        pairs = [_same_split(f - o, auto_pad) for f, o in zip(full, outs)]
    else:
        flat = [0] * (2 * spatial) if auto_pad == "VALID" else \
            _ints(pads, "pads", 2 * spatial, 0)
        pairs = list(zip(flat[:spatial], flat[spatial:]))
        outs = [f - pb - pe for f, (pb, pe) in zip(full, pairs)]
    if any(o <= 0 for o in outs):
        raise InvalidArgumentError(f"conv_transpose: the output size {outs} of X "
                                   f"{list(x.shape)} with kernel {kernel}, strides {stride}, "
                                   f"pads {pairs} is not positive")
    return returned_as(conv_transpose_nc(x, w, b, stride, pairs, outs, dilation, group,
                                         device, algorithm), like)
