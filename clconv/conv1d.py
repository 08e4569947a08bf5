"""TensorFlow's 1-D convolutions: tf.nn.conv1d and tf.nn.conv1d_transpose.

TF computes both as the 2-D ops on a height-1 view (nn_ops.conv1d inserts the
axis and calls Conv2D; conv1d_transpose calls Conv2DBackpropInput), so clconv
does the same with its own 2-D ops: the same values, and the same errors, since
those are the 2-D ops' checks on the same expanded arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from clconv import ops, tensors
from clconv.device_select import DeviceSpec
from clconv.errors import InvalidArgumentError
from clconv.plans import ConvPlan
from clconv.shapes import window_sequence
from clconv.tensors import DeviceTensor


def _format(data_format: Optional[str], accepted: Sequence[str]) -> tuple[str, int]:
    """(the 2-D data format, the 1-D channel index) of a 1-D data_format."""
    if data_format is None or data_format in accepted[:2]:
        return "NHWC", 2
    if data_format in accepted[2:]:
        return "NCHW", 1
    raise ValueError("`data_format` must be 'NWC' or 'NCW'. "
                     f"Received: data_format={data_format}")


def _check_padding(padding: Any) -> None:
    """TF's 1-D ops hand padding to the 2-D op's ``padding`` attribute, a string (its
    explicit form takes a separate argument the 1-D ops do not pass)."""
    if not isinstance(padding, str):
        raise TypeError(f"Expected string for argument 'padding' not {padding!r}.")


def _expand(value: Any, axis: int, name: str) -> Any:
    """A unit axis inserted at ``axis`` (negative: from the end), as a view."""
    if not tensors.is_device_array(value):
        value = tensors.as_host_array(value, name)
    shape = list(value.shape)
    at = axis if axis >= 0 else len(shape) + 1 + axis
    if at < 0 or at > len(shape):  # TF's ExpandDims error, for a tensor of too few axes
        raise InvalidArgumentError(
            f"Tried to expand dim index {axis} for tensor with {len(shape)} dimensions.")
    return value.reshape(shape[:at] + [1] + shape[at:])


def _squeeze(value: Any, axis: int) -> Any:
    shape = list(value.shape)
    del shape[axis]
    return value.reshape(shape)


# --------------------------------------------------------------------------- call memo
# A remembered 1-D call (clconv.ops' call memo, keyed by the 1-D arguments) goes
# straight to its 2-D plan: no argument checks, and for pyopencl arrays none of the
# three reshaped pyopencl arrays (each costs more host time than a small launch).


@dataclass(frozen=True)
class _Remembered:
    plan: ConvPlan
    data_axis: int  # where the data operand gets its unit height axis
    out_shape: tuple[int, ...]  # the 1-D result's


def _remember(key: Optional[tuple], key_2d: Optional[tuple], data_axis: int,
              expanded_shape: tuple[int, ...], result: Any) -> None:
    """Remember a 1-D call whose 2-D call was remembered by the 2-D op and ran its plan
    on exactly the expanded operand (not through a reshape of extra batch axes)."""
    known = ops.recall(key_2d)
    if key is None or known is None or known[0].input_shape != expanded_shape:
        return
    ops.remember(key, (_Remembered(known[0], data_axis, tuple(result.shape)),))


def _run_remembered(known: _Remembered, data: Any, filters: Any) -> Any:
    plan = known.plan
    if tensors.is_device_array(data) and tensors.is_device_array(filters):
        queue = data.queue
        y = plan.run_on_device(DeviceTensor.of_array(data).with_unit_axis(known.data_axis),
                               DeviceTensor.of_array(filters).with_unit_axis(0), queue)
        return tensors.array_over(queue, known.out_shape, plan.dtype, y.buffer)
    result = plan.execute(_expand(data, known.data_axis, "input"),
                          _expand(filters, 0, "filters"))
    return result.reshape(known.out_shape)


# --------------------------------------------------------------------------- the ops


def conv1d(input: Any, filters: Any, stride: Any, padding: Any, data_format: str = "NWC",
           dilations: Any = None, name: Optional[str] = None, *, device: DeviceSpec = None,
           algorithm: Optional[str] = None) -> Any:
    """tf.nn.conv1d: input ``[batch..., W, C]`` (NWC) or ``[batch..., C, W]`` (NCW),
    filters ``[k, C / groups, C_out]``; stride and dilations an int or length 1 or 3;
    padding "SAME" or "VALID"."""
    key = ops.call_key("conv1d", input, filters, None, stride, padding, data_format,
                       dilations, device, algorithm)
    known = ops.recall(key)
    if known is not None:
        return _run_remembered(known[0], input, filters)
    fmt, channel_index = _format(data_format, ("NWC", "NHWC", "NCW", "NCHW"))
    _check_padding(padding)
    strides = [1] + window_sequence(stride, 1, channel_index == 1, "stride")
    dilations = [1] + window_sequence(dilations, 1, channel_index == 1, "dilations")
    spatial = -3 if fmt == "NHWC" else -2
    x, w = _expand(input, spatial, "input"), _expand(filters, 0, "filters")
    result = ops.conv2d(x, w, strides, padding, fmt, dilations, device=device,
                        algorithm=algorithm)
    result = _squeeze(result, len(result.shape) + spatial)
    _remember(key, ops.call_key("conv2d", x, w, None, strides, padding, fmt, dilations,
                                device, algorithm),
              len(x.shape) + spatial, tuple(x.shape), result)
    return result


def conv1d_transpose(input: Any, filters: Any, output_shape: Any, strides: Any,
                     padding: str = "SAME", data_format: str = "NWC", dilations: Any = None,
                     name: Optional[str] = None, *, device: DeviceSpec = None,
                     algorithm: Optional[str] = None) -> Any:
    """tf.nn.conv1d_transpose: input ``[N, W, C_in]`` (NWC) or ``[N, C_in, W]`` (NCW),
    filters ``[k, C_out, C_in]``, output_shape of length 3 in data_format order."""
    key = ops.call_key("conv1d_transpose", input, filters, None, output_shape, strides,
                       padding, data_format, dilations, device, algorithm)
    known = ops.recall(key)
    if known is not None:
        return _run_remembered(known[0], input, filters)
    fmt, channel_index = _format(data_format, ("NWC", "NWC", "NCW"))
    _check_padding(padding)
    strides = [1] + window_sequence(strides, 1, channel_index == 1, "stride")
    dilations = [1] + window_sequence(dilations, 1, channel_index == 1, "dilations")
    spatial = 1 if fmt == "NHWC" else 2
    shape = list(np.asarray(output_shape).reshape(-1)) if not isinstance(
        output_shape, (list, tuple)) else list(output_shape)
    expanded_shape = shape[:spatial] + [1] + shape[spatial:]
    dy, w = _expand(input, spatial, "input"), _expand(filters, 0, "filters")
    result = ops.conv2d_backprop_input(expanded_shape, w, dy, strides, padding, fmt, dilations,
                                       device=device, algorithm=algorithm)
    result = _squeeze(result, spatial)
    _remember(key, ops.call_key("conv2d_backprop_input", dy, w, None, expanded_shape, strides,
                                padding, fmt, dilations, device, algorithm),
              spatial, tuple(dy.shape), result)
    return result
