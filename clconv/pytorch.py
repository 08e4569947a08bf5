"""The PyTorch front end: ``torch.nn.functional``'s convolutions, on OpenCL.

``conv1d``, ``conv2d``, ``conv_transpose1d`` and ``conv_transpose2d`` take
``torch.nn.functional``'s arguments (bias, stride, padding with "same" and
"valid", output_padding, groups, dilation), its NC* layouts and weight layouts
(conv: ``[C_out, C_in / groups, *kernel]``; transposed: ``[C_in, C_out / groups,
*kernel]``), batched or unbatched inputs, and raise its error classes with its
messages.  Operands may be CPU ``torch.Tensor``s, numpy arrays or pyopencl
arrays; the result is the same kind as the input.  torch itself is never
imported: a tensor is recognised by its type and read through ``.numpy()``
(zero-copy on the CPU).  ``conv3d`` and ``conv_transpose3d`` run as 2-D convs
summed over the depth taps (clconv.depth).

A 1-D convolution runs as a 2-D one of height 1, as PyTorch's own CPU kernels
do; the transposed convs run as the input gradient of the forward conv whose
weight they take (clconv.plans), so no work goes to inserted zeros.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from clconv import tensors
from clconv.channels_first import (batch_of_one, conv_nc, conv_transpose_nc, host_operand,
                                   returned_as, unbatched)
from clconv.device_select import DeviceSpec
from clconv.errors import UnimplementedError
from clconv.ops import check_algorithm

IntOrInts = Union[int, Sequence[int]]

# torch's names of the dtypes, as its messages print them.
_TYPE_NAMES = {"float32": ("Float", "float"), "float64": ("Double", "double"),
               "float16": ("Half", "c10::Half"), "int64": ("Long", "long int"),
               "int32": ("Int", "int"), "bool": ("Bool", "bool")}


def _type_names(dtype: np.dtype) -> tuple[str, str]:
    return _TYPE_NAMES.get(np.dtype(dtype).name, (np.dtype(dtype).name,) * 2)


# --------------------------------------------------------------------------- operands

def _shape(value: Any) -> list[int]:
    return [int(v) for v in value.shape]


def _sizes(values: Sequence[int]) -> str:
    """torch's "(a x b)" form of per-channel sizes."""
    return "(" + " x ".join(str(v) for v in values) + ")"


# --------------------------------------------------------------------------- arguments

def _expand(value: Any, name: str, spatial: int, op: str) -> list[int]:
    """torch's expand_param_if_needed: an int, or a list of 1 or ``spatial`` ints."""
    if isinstance(value, bool) or isinstance(value, (float, str)) and name != "padding":
        raise TypeError(f"{op}(): argument {name!r} must be tuple of ints, not "
                        f"{type(value).__name__}")
    if isinstance(value, (int, np.integer)):
        return [int(value)] * spatial
    values = list(value)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{op}(): argument {name!r} must be tuple of ints, but found element "
                        f"of type {type(values[0]).__name__}")
    if len(values) == 1:
        return [int(values[0])] * spatial
    if len(values) != spatial:
        raise RuntimeError(f"expected {name} to be a single integer value or a list of "
                           f"{spatial} values to match the convolution dimensions, but got "
                           f"{name}={[int(v) for v in values]}")
    return [int(v) for v in values]


def _check_input_rank(x: Any, spatial: int, op: str) -> bool:
    """True for a batched input; torch's message for any rank but spatial+1 / +2."""
    if len(x.shape) not in (spatial + 1, spatial + 2):
        raise RuntimeError(f"Expected {spatial + 1}D (unbatched) or {spatial + 2}D (batched) "
                           f"input to {op}, but got input of size: {_shape(x)}")
    return len(x.shape) == spatial + 2


def _check_dtypes(x: Any, w: Any, bias: Any) -> np.dtype:
    if np.dtype(x.dtype) != np.dtype(w.dtype):
        raise RuntimeError(f"expected scalar type {_type_names(x.dtype)[0]} but found "
                           f"{_type_names(w.dtype)[0]}")
    if bias is not None and np.dtype(bias.dtype) != np.dtype(x.dtype):
        raise RuntimeError(f"Input type ({_type_names(x.dtype)[1]}) and bias type "
                           f"({_type_names(bias.dtype)[1]}) should be the same")
    dtype = np.dtype(x.dtype)
    if dtype not in tensors.COMPUTED_DTYPES:
        raise UnimplementedError(f"clconv computes float16, float32 and float64 convolutions, "
                                 f"not {dtype.name}")
    return dtype


def _check_common(x_shape: list[int], w: Any, bias: Any, stride: list[int],
                  padding: list[int], dilation: list[int], groups: int, transposed: bool,
                  output_padding: Optional[list[int]] = None) -> None:
    """torch's check_shape_forward, in its order (x_shape batched)."""
    w_shape = _shape(w)
    if len(w_shape) != len(x_shape):
        raise RuntimeError(f"Expected {len(w_shape)}-dimensional input for {len(w_shape)}-"
                           f"dimensional weight {w_shape}, but got {len(x_shape)}-dimensional "
                           f"input of size {x_shape} instead")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    if output_padding is not None and any(p < 0 for p in output_padding):
        raise RuntimeError("negative output_padding is not supported")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if w_shape[0] < groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be at least {groups} at "
                           f"dimension 0, but got weight of size {w_shape} instead")
    if w_shape[0] % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by "
                           f"{groups} at dimension 0, but got weight of size [{w_shape}] "
                           "instead")
    channels = x_shape[1]
    if not transposed:
        if channels != w_shape[1] * groups:
            raise RuntimeError(f"Given groups={groups}, weight of size {w_shape}, expected "
                               f"input{x_shape} to have {w_shape[1] * groups} channels, but "
                               f"got {channels} channels instead")
        if bias is not None and (len(bias.shape) != 1 or bias.shape[0] != w_shape[0]):
            raise RuntimeError(f"Given weight of size {w_shape}, expected bias to be "
                               f"1-dimensional with {w_shape[0]} elements, but got bias of "
                               f"size {_shape(bias)} instead")
        padded = [size + 2 * p for size, p in zip(x_shape[2:], padding)]
        kernel = [(k - 1) * d + 1 for k, d in zip(w_shape[2:], dilation)]
        if any(k > size for k, size in zip(kernel, padded)):
            raise RuntimeError(f"Calculated padded input size per channel: {_sizes(padded)}. "
                               f"Kernel size: {_sizes(kernel)}. Kernel size can't be greater "
                               "than actual input size")
    else:
        if channels != w_shape[0]:
            raise RuntimeError(f"Given transposed=1, weight of size {w_shape}, expected "
                               f"input{x_shape} to have {w_shape[0]} channels, but got "
                               f"{channels} channels instead")
        out_channels = w_shape[1] * groups
        if bias is not None and (len(bias.shape) != 1 or bias.shape[0] != out_channels):
            raise RuntimeError(f"Given transposed=1, weight of size {w_shape}, expected bias "
                               f"to be 1-dimensional with {out_channels} elements, but got "
                               f"bias of size {_shape(bias)} instead")


def _as_2d(values: list[int], fill: int) -> list[int]:
    """A 1-D conv's parameters as the 2-D conv of height 1 it runs as (torch's view)."""
    return [fill] + values if len(values) == 1 else values


def _axes(count: int) -> list[str]:
    return ["depth", "height", "width"][-count:]


def _check_dilation(dilation: list[int], transposed: bool) -> None:
    """After torch's 1-D -> 2-D view, so a 1-D conv prints two values."""
    if all(d > 0 for d in dilation):
        return
    if transposed:
        named = ", ".join(f"dilation_{axis}: {d}" for axis, d in
                          zip(_axes(len(dilation)), dilation))
        raise RuntimeError(f"dilation should be greater than zero, but got {named}")
    raise RuntimeError(f"dilation should be greater than zero, but got {dilation}")


def _check_output_padding(outpad: list[int], stride: list[int], dilation: list[int]) -> None:
    if not any(op >= s and op >= d for op, s, d in zip(outpad, stride, dilation)):
        return
    axes = _axes(len(outpad))
    parts = [f"{what}_{axis}: {value}" for what, values in
             (("output_padding", outpad), ("stride", stride), ("dilation", dilation))
             for axis, value in zip(axes, values)]
    raise RuntimeError("output padding must be smaller than either stride or dilation, but "
                       "got " + " ".join(parts))


# --------------------------------------------------------------------------- compute

def _same_padding(kernel: list[int], dilation: list[int]) -> list[tuple[int, int]]:
    """torch's padding="same": total d*(k-1) per dimension, the odd one on the right."""
    totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return [(t // 2, t - t // 2) for t in totals]


def _operands(op_name: str, spatial: int, input: Any, weight: Any, bias: Any
              ) -> tuple[Any, Any, Any, bool, int, list[int]]:
    """(x, w, b, batched, the weight's spatial rank, x's batched shape), after torch's
    rank checks."""
    x, w = host_operand(input, "input"), host_operand(weight, "weight")
    b = None if bias is None else host_operand(bias, "bias")
    batched = _check_input_rank(x, spatial, op_name)
    if len(w.shape) < 3:
        raise RuntimeError("weight should have at least three dimensions")
    return x, w, b, batched, len(w.shape) - 2, _shape(x) if batched else [1, *_shape(x)]


def _conv(op_name: str, spatial: int, input: Any, weight: Any, bias: Any, stride: IntOrInts,
          padding: Any, dilation: IntOrInts, groups: int, device: DeviceSpec,
          algorithm: Optional[str]) -> Any:
    check_algorithm(algorithm, "conv2d")
    like = input
    x, w, b, batched, w_spatial, x_shape = _operands(op_name, spatial, input, weight, bias)
    stride = _expand(stride, "stride", w_spatial, op_name)
    dilation = _expand(dilation, "dilation", w_spatial, op_name)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise RuntimeError(f"Invalid padding string: {padding!r}")
        if padding == "same" and any(s != 1 for s in stride):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        pads = _same_padding(_shape(w)[2:], dilation) if padding == "same" else \
            [(0, 0)] * w_spatial
        symmetric = [0] * w_spatial  # the checks see torch's own zero padding
    else:
        symmetric = _expand(padding, "padding", w_spatial, op_name)
        pads = [(p, p) for p in symmetric]
    _check_common(x_shape, w, b, stride, symmetric, dilation, groups, transposed=False)
    _check_dilation(_as_2d(dilation, 1), transposed=False)
    _check_dtypes(x, w, b)
    y = conv_nc(x if batched else batch_of_one(x), w, b, stride, pads, dilation, groups, device,
                algorithm)
    return returned_as(y if batched else unbatched(y), like)


def _conv_transpose(op_name: str, spatial: int, input: Any, weight: Any, bias: Any,
                    stride: IntOrInts, padding: IntOrInts, output_padding: IntOrInts,
                    groups: int, dilation: IntOrInts, device: DeviceSpec,
                    algorithm: Optional[str]) -> Any:
    check_algorithm(algorithm, "conv2d_backprop_input")
    like = input
    if isinstance(padding, str):
        raise TypeError(f"{op_name}(): argument 'padding' must be tuple of ints, not str")
    x, w, b, batched, w_spatial, x_shape = _operands(op_name, spatial, input, weight, bias)
    stride = _expand(stride, "stride", w_spatial, op_name)
    padding = _expand(padding, "padding", w_spatial, op_name)
    output_padding = _expand(output_padding, "output_padding", w_spatial, op_name)
    dilation = _expand(dilation, "dilation", w_spatial, op_name)
    _check_common(x_shape, w, b, stride, padding, dilation, groups, transposed=True,
                  output_padding=output_padding)
    _check_dtypes(x, w, b)

    # The rest as torch checks it, on the 2-D view of a 1-D conv.
    stride2 = _as_2d(stride, 1)
    outpad2, dil2 = _as_2d(output_padding, 0), _as_2d(dilation, 1)
    _check_dilation(dil2, transposed=True)
    _check_output_padding(outpad2, stride2, dil2)
    size = [int(n) for n in x.shape[-spatial:]]
    outs = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, s, p, d, k, op in
            zip(size, stride, padding, dilation, _shape(w)[2:], output_padding)]
    # torch 2.13 refuses an empty output, except in its grouped 3-D path (which returns
    # the empty tensor), and a negative size always; a 1-D conv prints its 2-D view.
    empty_ok = spatial == 3 and groups > 1
    if any(o < 0 or (o == 0 and not empty_ok) for o in outs):
        height = [1] if spatial == 1 else []  # the 2-D view's height: 1 in, 1 out
        raise RuntimeError(f"Given input size per channel: {_sizes(height + size)}. "
                           f"Calculated output size per channel: {_sizes(height + outs)}. "
                           "Output size is too small")
    y = conv_transpose_nc(x if batched else batch_of_one(x), w, b, stride,
                          [(p, p - op) for p, op in zip(padding, output_padding)], outs,
                          dilation, groups, device, algorithm)
    return returned_as(y if batched else unbatched(y), like)


# --------------------------------------------------------------------------- the API

def conv1d(input: Any, weight: Any, bias: Any = None, stride: IntOrInts = 1,
           padding: Union[str, IntOrInts] = 0, dilation: IntOrInts = 1, groups: int = 1, *,
           device: DeviceSpec = None, algorithm: Optional[str] = None) -> Any:
    """torch.nn.functional.conv1d: input [N, C_in, L] (or [C_in, L]), weight
    [C_out, C_in / groups, k], bias [C_out]."""
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups, device,
                 algorithm)


def conv2d(input: Any, weight: Any, bias: Any = None, stride: IntOrInts = 1,
           padding: Union[str, IntOrInts] = 0, dilation: IntOrInts = 1, groups: int = 1, *,
           device: DeviceSpec = None, algorithm: Optional[str] = None) -> Any:
    """torch.nn.functional.conv2d: input [N, C_in, H, W] (or [C_in, H, W]), weight
    [C_out, C_in / groups, kH, kW], bias [C_out]."""
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups, device,
                 algorithm)


def conv_transpose1d(input: Any, weight: Any, bias: Any = None, stride: IntOrInts = 1,
                     padding: IntOrInts = 0, output_padding: IntOrInts = 0, groups: int = 1,
                     dilation: IntOrInts = 1, *, device: DeviceSpec = None,
                     algorithm: Optional[str] = None) -> Any:
    """torch.nn.functional.conv_transpose1d: input [N, C_in, L] (or [C_in, L]), weight
    [C_in, C_out / groups, k], bias [C_out]; L_out = (L - 1) * stride - 2 * padding +
    dilation * (k - 1) + output_padding + 1."""
    return _conv_transpose("conv_transpose1d", 1, input, weight, bias, stride, padding,
                           output_padding, groups, dilation, device, algorithm)


def conv_transpose2d(input: Any, weight: Any, bias: Any = None, stride: IntOrInts = 1,
                     padding: IntOrInts = 0, output_padding: IntOrInts = 0, groups: int = 1,
                     dilation: IntOrInts = 1, *, device: DeviceSpec = None,
                     algorithm: Optional[str] = None) -> Any:
    """torch.nn.functional.conv_transpose2d: input [N, C_in, H, W] (or [C_in, H, W]),
    weight [C_in, C_out / groups, kH, kW], bias [C_out]."""
    return _conv_transpose("conv_transpose2d", 2, input, weight, bias, stride, padding,
                           output_padding, groups, dilation, device, algorithm)


def conv3d(input: Any, weight: Any, bias: Any = None, stride: IntOrInts = 1,
           padding: Union[str, IntOrInts] = 0, dilation: IntOrInts = 1, groups: int = 1, *,
           device: DeviceSpec = None, algorithm: Optional[str] = None) -> Any:
    """torch.nn.functional.conv3d: input [N, C_in, D, H, W] (or unbatched), weight
    [C_out, C_in / groups, kD, kH, kW], bias [C_out].  Computed as 2-D convs summed over
    the depth taps (clconv.depth); pyopencl operands pass through the host."""
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups, device,
                 algorithm)


def conv_transpose3d(input: Any, weight: Any, bias: Any = None, stride: IntOrInts = 1,
                     padding: IntOrInts = 0, output_padding: IntOrInts = 0, groups: int = 1,
                     dilation: IntOrInts = 1, *, device: DeviceSpec = None,
                     algorithm: Optional[str] = None) -> Any:
    """torch.nn.functional.conv_transpose3d: input [N, C_in, D, H, W] (or unbatched),
    weight [C_in, C_out / groups, kD, kH, kW], bias [C_out]."""
    return _conv_transpose("conv_transpose3d", 3, input, weight, bias, stride, padding,
                           output_padding, groups, dilation, device, algorithm)
