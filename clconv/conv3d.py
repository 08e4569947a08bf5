"""TensorFlow's 3-D convolutions: tf.nn.conv3d and tf.nn.conv3d_transpose (the
Conv3DBackpropInputV2 op), with their argument checks and messages, computed
through clconv.depth (2-D convs summed over the depth taps).  NCDHW and dilations
> 1, which TF's CPU kernels refuse, are computed (TF's GPU kernels accept them).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from clconv import depth, tensors
from clconv.device_select import DeviceSpec
from clconv.errors import InvalidArgumentError
from clconv.shapes import window_sequence

FORMATS = ("NDHWC", "NCDHW")


def _attr_list(value: Any, name: str, op: str) -> list[int]:
    """An op attribute TF takes only as a list of 5 ints (tf.nn.conv3d passes strides
    and dilations through as they are)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"Expected list for '{name}' argument to '{op}' Op, not {value!r}.")
    if len(value) < 5:
        raise InvalidArgumentError(f"Length for attr '{name}' of {len(value)} must be at "
                                   "least minimum 5")
    return [int(v) for v in value]


def _padding(padding: Any) -> str:
    if not isinstance(padding, str):
        raise TypeError(f"Expected string for argument 'padding' not {padding!r}.")
    if padding not in ("SAME", "VALID"):
        raise InvalidArgumentError(f"Value for attr 'padding' of \"{padding}\" is not in the "
                                   'list of allowed values: "SAME", "VALID"')
    return padding


def _format(data_format: Any) -> str:
    if data_format not in FORMATS:
        raise InvalidArgumentError(f"Value for attr 'data_format' of \"{data_format}\" is not "
                                   'in the list of allowed values: "NDHWC", "NCDHW"')
    return data_format


def _window_checks(strides: list[int], dilations: list[int], data_format: str) -> None:
    if len(strides) != 5:
        raise InvalidArgumentError("Sliding window strides field must specify 5 dimensions")
    if len(dilations) != 5:
        raise InvalidArgumentError("Dilation rates field must specify 5 dimensions")
    channel = 4 if data_format == "NDHWC" else 1
    if strides[0] != 1 or strides[channel] != 1:
        raise InvalidArgumentError("Current implementation does not yet support strides in "
                                   "the batch and depth dimensions.")
    if dilations[0] != 1 or dilations[channel] != 1:
        raise InvalidArgumentError("Current implementation does not yet support dilations "
                                   "rates in the batch and depth dimensions.")
    if any(s <= 0 for s in _spatial(strides, data_format)):
        raise InvalidArgumentError("Spatial strides should be larger than 0.")
    if any(d <= 0 for d in _spatial(dilations, data_format)):
        raise InvalidArgumentError("Dilated rates should be larger than 0.")


def _spatial(values: Sequence[Any], data_format: str) -> list[Any]:
    return list(values[1:4]) if data_format == "NDHWC" else list(values[2:5])


def _channels_last(x: np.ndarray, data_format: str) -> np.ndarray:
    return x if data_format == "NDHWC" else np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _window(size: int, kernel: int, stride: int, dilation: int, padding: str
            ) -> tuple[int, tuple[int, int]]:
    """TF's GetWindowedOutputSize: the output size and (before, after) padding."""
    k_eff = (kernel - 1) * dilation + 1
    if padding == "VALID":
        return max(-(-(size - k_eff + 1) // stride), 0), (0, 0)
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return out, (total // 2, total - total // 2)


def _activation(value: Any, data_format: str) -> Any:
    """An NDHWC pyopencl array stays on the device (clconv.depth works on it there);
    anything else is read as a host array."""
    if tensors.is_device_array(value) and data_format == "NDHWC":
        return value
    return depth.host(value)


def _filter(filters: Any, data: Any) -> Any:
    """A pyopencl filter beside a pyopencl data operand stays on the device (clconv.depth
    rearranges it there, or reads it back only where a transpose's depth phase stacks
    several taps); anything else is read as a host array."""
    if tensors.is_device_array(filters) and tensors.is_device_array(data):
        return filters
    return depth.host(filters)


def _filter_as(w: Any, dtype: np.dtype) -> Any:
    """A host filter as a contiguous array of ``dtype``; a pyopencl one as it is (a typed
    operand: resolve_dtype has checked that it is of ``dtype``)."""
    if tensors.is_device_array(w):
        return w
    return np.ascontiguousarray(w.astype(dtype, copy=False))


def _channels_last_as(x: Any, dtype: np.dtype, data_format: str) -> Any:
    if tensors.is_device_array(x):
        return x  # NDHWC, of the resolved dtype (a typed operand sets it)
    return _channels_last(x.astype(dtype, copy=False), data_format)


def _returned(y: Any, data_format: str, like: Any) -> Any:
    if tensors.is_device_array(y):
        return y  # computed from an NDHWC pyopencl array, and as one
    y = y if data_format == "NDHWC" else np.ascontiguousarray(np.moveaxis(y, -1, 1))
    if tensors.is_device_array(like):
        import pyopencl.array as cl_array

        return cl_array.to_device(like.queue, y)
    return y


def conv3d(input: Any, filters: Any, strides: Sequence[int], padding: str,
           data_format: str = "NDHWC", dilations: Optional[Sequence[int]] = None,
           name: Optional[str] = None, *, device: DeviceSpec = None,
           algorithm: Optional[str] = None) -> Any:
    """tf.nn.conv3d: input ``[N, D, H, W, C]`` (NDHWC) or NCDHW, filters
    ``[kd, kh, kw, C / groups, C_out]``, strides and dilations lists of 5."""
    strides = _attr_list(strides, "strides", "conv3d")
    dilations = [1] * 5 if dilations is None else _attr_list(dilations, "dilations", "conv3d")
    padding, data_format = _padding(padding), _format(data_format)
    x = _activation(input, data_format)
    w = _filter(filters, x)
    dtype = tensors.resolve_dtype("Conv3D", [(x, "input"), (w, "filter")])
    _window_checks(strides, dilations, data_format)
    if x.ndim != 5:
        raise InvalidArgumentError("input must be 5-dimensional")
    if w.ndim != 5:
        raise InvalidArgumentError("filter must be 5-dimensional")
    x5 = _channels_last_as(x, dtype, data_format)
    channels, f_in = x5.shape[4], w.shape[3]
    if f_in <= 0 or channels % f_in:
        raise InvalidArgumentError(f"Input depth must be evenly divisible by filter depth: "
                                   f"{channels} vs {f_in}")
    tensors.check_computable(dtype)
    g = forward_geometry(x5.shape, w.shape, _spatial(strides, data_format),
                         _spatial(dilations, data_format), padding)
    y = depth.forward(x5, _filter_as(w, dtype), g, device, algorithm)
    return _returned(y, data_format, input)


def conv3d_backprop_input(input_sizes: Any, filters: Any, out_backprop: Any,
                          strides: Sequence[int], padding: str, data_format: str = "NDHWC",
                          dilations: Optional[Sequence[int]] = None,
                          name: Optional[str] = None, *, device: DeviceSpec = None,
                          algorithm: Optional[str] = None) -> Any:
    """Conv3DBackpropInputV2 (tf.compat.v1.nn.conv3d_backprop_input_v2): the gradient of
    conv3d with respect to its input of shape ``input_sizes``; strides and dilations
    lists of 5, as the raw op takes them."""
    strides = _attr_list(strides, "strides", "Conv3DBackpropInputV2")
    dilations = [1] * 5 if dilations is None else _attr_list(dilations, "dilations",
                                                             "Conv3DBackpropInputV2")
    return _transpose(out_backprop, filters, input_sizes, strides, padding,
                      _format(data_format), dilations, device, algorithm)


def conv3d_transpose(input: Any, filters: Any, output_shape: Any, strides: Any,
                     padding: str = "SAME", data_format: str = "NDHWC", dilations: Any = None,
                     name: Optional[str] = None, *, device: DeviceSpec = None,
                     algorithm: Optional[str] = None) -> Any:
    """tf.nn.conv3d_transpose: input ``[N, D, H, W, C_in]`` (NDHWC) or NCDHW, filters
    ``[kd, kh, kw, C_out, C_in]``, output_shape of 5 ints in data_format order;
    strides and dilations an int or 1, 3 or 5 ints."""
    data_format = _format(data_format)
    channel_index = 4 if data_format == "NDHWC" else 1
    strides = [int(v) for v in window_sequence(strides, 3, channel_index == 1, "strides")]
    dilations = [int(v) for v in window_sequence(dilations, 3, channel_index == 1,
                                                  "dilations")]
    return _transpose(input, filters, output_shape, strides, padding, data_format, dilations,
                      device, algorithm)


def _transpose(input: Any, filters: Any, output_shape: Any, strides: list[int], padding: Any,
               data_format: str, dilations: list[int], device: DeviceSpec,
               algorithm: Optional[str]) -> Any:
    """Conv3DBackpropInputV2's checks, in its order, and the computation."""
    padding = _padding(padding)
    dy = _activation(input, data_format)
    w = _filter(filters, dy)
    dtype = tensors.resolve_dtype("Conv3DBackpropInputV2", [(w, "filter"), (dy, "out_backprop")])
    _window_checks(strides, dilations, data_format)
    sizes = [int(v) for v in np.asarray(output_shape).reshape(-1)]
    if dy.ndim != 5:
        raise InvalidArgumentError("out_backprop must be 5-dimensional")
    if w.ndim != 5:
        raise InvalidArgumentError("filter must be 5-dimensional")
    if len(sizes) != 5:
        raise InvalidArgumentError(f"input_sizes must have 5 elements, got {len(sizes)}")
    dy5 = _channels_last_as(dy, dtype, data_format)
    dx_shape = sizes if data_format == "NDHWC" else [sizes[0], *sizes[2:], sizes[1]]
    if dy5.shape[4] != w.shape[4]:
        raise InvalidArgumentError(f"out_backprop and filter_sizes must have the same number "
                                   f"of channels. Got {dy5.shape[4]} for out_backprop and "
                                   f"{w.shape[4]} for filter_sizes")
    if dx_shape[4] != w.shape[3]:
        raise InvalidArgumentError(f"input_sizes and filter_sizes must have the same number of "
                                   f"channels. Got {dx_shape[4]} for input_sizes and "
                                   f"{w.shape[3]} for filter_sizes")
    if dy5.shape[0] != dx_shape[0]:
        raise InvalidArgumentError(f"out_backprop and input_sizes must have the same batch "
                                   f"size. Got {dy5.shape[0]} and {dx_shape[0]}")
    tensors.check_computable(dtype)
    g = transpose_geometry(dy5.shape, w.shape, dx_shape, _spatial(strides, data_format),
                           _spatial(dilations, data_format), padding)
    dx = depth.backprop_input(dy5, _filter_as(w, dtype), g, device, algorithm)
    return _returned(dx, data_format, input)


def forward_geometry(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int],
                     dilations: Sequence[int], padding: str) -> depth.Geometry3d:
    """tf.nn.conv3d's conv: x ``[N, D, H, W, C]``, w ``[kd, kh, kw, C / groups, C_out]``;
    strides and dilations of the three spatial axes."""
    size, kernel = x_shape[1:4], w_shape[:3]
    windows = [_window(n, k, s, d, padding)
               for n, k, s, d in zip(size, kernel, strides, dilations)]
    return depth.Geometry3d(x_shape[0], tuple(size), x_shape[4], tuple(kernel),
                            tuple(o for o, _ in windows), w_shape[4], tuple(strides),
                            tuple(dilations), tuple(p for _, p in windows),
                            x_shape[4] // w_shape[3])


def transpose_geometry(dy_shape: Sequence[int], w_shape: Sequence[int], dx_shape: Sequence[int],
                       strides: Sequence[int], dilations: Sequence[int],
                       padding: str) -> depth.Geometry3d:
    """The forward conv whose input gradient Conv3DBackpropInputV2 computes: dy ``[N, D,
    H, W, C_out]``, w ``[kd, kh, kw, C_in, C_out]``, dx ``[N, D', H', W', C_in]``; raises
    TF's error when dy's spatial size is not that conv's output size."""
    windows = []
    for axis, (n, k, s, d) in enumerate(zip(dx_shape[1:4], w_shape[:3], strides, dilations)):
        out, pads = _window(n, k, s, d, padding)
        if out != dy_shape[1 + axis]:
            raise InvalidArgumentError(
                f"Conv3DBackpropInputOp: Size of out_backprop doesn't match computed: actual = "
                f"{dy_shape[1 + axis]}, computed = {out} spatial_dim: {axis + 1} input: {n} "
                f"filter: {k} output: {dy_shape[1 + axis]} stride: {s} dilation: {d}")
        windows.append(pads)
    return depth.Geometry3d(dx_shape[0], tuple(dx_shape[1:4]), dx_shape[4], tuple(w_shape[:3]),
                            tuple(dy_shape[1:4]), dy_shape[4], tuple(strides),
                            tuple(dilations), tuple(windows), 1)
