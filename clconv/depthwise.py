"""TensorFlow's depthwise convolutions: tf.nn.depthwise_conv2d and
tf.nn.depthwise_conv2d_backprop_input.

A depthwise conv with filter ``[kh, kw, C, multiplier]`` is the grouped conv with
``C`` groups and filter ``[kh, kw, 1, C * multiplier]`` (output channel
``c * multiplier + m``, TF's order): the same memory, so the filter is a view
and the work runs clconv's grouped kernels.  The arguments are checked as TF's
DepthwiseConv2dNative kernels check them, with their messages; NCHW, which TF's
CPU kernels refuse, is computed (TF's GPU kernels accept it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from clconv import ops, plans, tensors
from clconv.device_select import DeviceSpec
from clconv.errors import InvalidArgumentError, UnimplementedError
from clconv.shapes import backprop_input_geometry, from_format, parse_attrs


def _strides(strides: Any, data_format: Optional[str]) -> list[int]:
    """DepthwiseConv2dNative's stride rules, in its order."""
    if not isinstance(strides, (list, tuple)):
        raise TypeError(f"Expected list for 'strides' argument to 'depthwise_conv2d_native' "
                        f"Op, not {strides!r}.")
    strides = [int(s) for s in strides]
    if len(strides) != 4:
        raise InvalidArgumentError("Sliding window strides field must specify 4 dimensions")
    channel = 1 if data_format == "NCHW" else 3
    rows, cols = (2, 3) if data_format == "NCHW" else (1, 2)
    if strides[0] != 1 or strides[channel] != 1:
        raise InvalidArgumentError("Current implementation does not yet support strides in "
                                   "the batch and depth dimensions.")
    if strides[rows] != strides[cols]:
        raise InvalidArgumentError("Current implementation only supports equal length strides "
                                   "in the row and column dimensions.")
    return strides


def _rate(dilations: Any, x_rank: int, x_shape: Sequence[int], strides: list[int]
          ) -> list[int]:
    """tf.nn.depthwise_conv2d's dilations: None or [rate_h, rate_w] (TF runs them through
    with_space_to_batch, whose message a longer list gets)."""
    rate = [1, 1] if dilations is None else [int(d) for d in dilations]
    if len(rate) != 2:
        raise ValueError(f"`input.shape.rank` must be at least {len(rate) + 1}. Received: "
                         f"input.shape={tuple(x_shape)} with rank {x_rank}")
    if any(r > 1 for r in rate) and any(s != 1 for s in strides):
        raise UnimplementedError(
            f"dilations {rate} with strides {strides}: TF computes this combination through "
            "space-to-batch and warns that strides must then be 1; clconv does not compute it")
    return rate


def _grouped_filter(filters: Any) -> Any:
    if not tensors.is_device_array(filters):
        filters = tensors.as_host_array(filters, "filter")
    k_h, k_w, channels, multiplier = (int(v) for v in filters.shape)
    return filters.reshape(k_h, k_w, 1, channels * multiplier)


def _shape_checks(x_shape: Sequence[int], f_shape: Sequence[int], data_format: str) -> None:
    if len(x_shape) != 4:
        raise InvalidArgumentError(f"input must be 4-dimensional{_tf(x_shape)}")
    if len(f_shape) != 4:
        raise InvalidArgumentError(f"filter must be 4-dimensional: {_tf(f_shape)}")
    channels = from_format(x_shape, data_format)[3]
    if channels != f_shape[2]:
        raise InvalidArgumentError(f"input and filter must have the same depth: {channels} vs "
                                   f"{f_shape[2]}")


def _tf(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in shape) + "]"


def depthwise_conv2d(input: Any, filter: Any, strides: Sequence[int], padding: Any,
                     data_format: Optional[str] = None, dilations: Optional[Sequence[int]] = None,
                     name: Optional[str] = None, *, device: DeviceSpec = None,
                     algorithm: Optional[str] = None) -> Any:
    """tf.nn.depthwise_conv2d: input ``[N, H, W, C]`` (NHWC) or NCHW, filter
    ``[kh, kw, C, multiplier]``, strides a list of 4 with equal row and column strides,
    padding "SAME", "VALID" or explicit pairs, dilations ``[rate_h, rate_w]``."""
    fmt = data_format or "NHWC"
    x_shape = [int(v) for v in getattr(input, "shape", np.shape(input))]
    f_shape = [int(v) for v in getattr(filter, "shape", np.shape(filter))]
    strides = _strides(strides, fmt)
    rate = _rate(dilations, len(x_shape), x_shape, strides)
    _shape_checks(x_shape, f_shape, fmt)
    dilations4 = [1, 1, *rate] if fmt == "NCHW" else [1, *rate, 1]
    return ops.conv2d(input, _grouped_filter(filter), strides, padding, fmt, dilations4,
                      device=device, algorithm=algorithm)


def depthwise_conv2d_backprop_input(input_sizes: Any, filter: Any, out_backprop: Any,
                                    strides: Sequence[int], padding: Any,
                                    data_format: str = "NHWC",
                                    dilations: Optional[Sequence[int]] = None,
                                    name: Optional[str] = None, *, device: DeviceSpec = None,
                                    algorithm: Optional[str] = None) -> Any:
    """tf.nn.depthwise_conv2d_backprop_input: the gradient of depthwise_conv2d with
    respect to its input of shape ``input_sizes``; dilations a list of 4."""
    fmt = data_format or "NHWC"
    strides = _strides(strides, fmt)
    f_shape = [int(v) for v in getattr(filter, "shape", np.shape(filter))]
    dy_shape = [int(v) for v in getattr(out_backprop, "shape", np.shape(out_backprop))]
    if len(f_shape) != 4:
        raise InvalidArgumentError(f"filter must be 4-dimensional: {_tf(f_shape)}")
    k_h, k_w, channels, multiplier = f_shape
    attrs = parse_attrs(strides, padding, fmt, dilations)
    # The grouped conv's geometry: TF's shape rules for a dense filter of the same taps
    # and channel counts, then C groups.
    dense = (k_h, k_w, channels, channels * multiplier)
    g = backprop_input_geometry(input_sizes, dense, dy_shape, attrs)
    # TF's CPU kernel multiplies every tap, reading 0 where padding or the stride leave
    # a dy pixel out (an infinite weight there gives NaN): padded_products.
    g = dataclasses.replace(g, groups=channels, padded_products=True)
    dtype = tensors.resolve_dtype("DepthwiseConv2dNativeBackpropInput",
                                  [(filter, "filter"), (out_backprop, "out_backprop")])
    tensors.check_computable(dtype)
    ops.check_algorithm(algorithm, "conv2d_backprop_input")
    rt = ops.choose_runtime([out_backprop, filter], device)
    ops.check_device_dtype(rt, dtype)
    plan = plans.get_plan(rt, "conv2d_backprop_input", g, dtype, algorithm)
    return plan.execute(out_backprop, _grouped_filter(filter), queue=rt.queue)
