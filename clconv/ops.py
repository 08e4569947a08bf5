"""The public ops: conv2d, conv2d_backprop_input and conv2d_transpose.

Each op checks its arguments with TensorFlow's rules (clconv.shapes), places
the operands on one device (clconv.tensors), picks a kernel configuration
(clconv.config) and launches the kernels of one algorithm.  numpy in gives
numpy out; pyopencl.array in gives pyopencl.array out on the same queue.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import pyopencl as cl

from clconv import gemm, tensors
from clconv.config import choose_algorithm, choose_config, split_config
from clconv.devices import Runtime, find_device, runtime, runtime_for_queue
from clconv.errors import InvalidArgumentError, UnimplementedError
from clconv.programs import dtype_defines, enqueue, get_kernel
from clconv.shapes import ConvGeometry, backprop_input_geometry, conv2d_geometry, parse_attrs

ALGORITHMS = ("direct", "via_forward", "gemm")  # of the backprop ops
CONV2D_ALGORITHMS = ("direct", "gemm")
GEMM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # half accumulates in float: direct

def _choose_runtime(operands: Sequence[Any], device: Optional[str]) -> Runtime:
    queue = tensors.find_queue(operands)
    if queue is None:
        return runtime(device)
    rt = runtime_for_queue(queue)
    if device is not None and find_device(device)[0] != queue.device:
        raise InvalidArgumentError(
            f"device={device!r} names another device than the one the pyopencl array operands "
            f"live on ({rt.info.name!r})"
        )
    return rt


def _shape_of(value: Any, name: str) -> tuple[int, ...]:
    if hasattr(value, "shape") and not isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value.shape)
    return tuple(tensors.as_host_array(value, name).shape)


def _check_device_dtype(rt: Runtime, dtype: np.dtype) -> None:
    if dtype == np.float64 and not rt.info.fp64:
        raise UnimplementedError(
            f"float64 needs cl_khr_fp64, which device {rt.info.name!r} ({rt.info.platform}) "
            "does not support; use float32"
        )
    if dtype == np.float16 and not rt.info.fp16:
        raise UnimplementedError(
            f"float16 needs cl_khr_fp16, which device {rt.info.name!r} ({rt.info.platform}) "
            "does not support; use float32"
        )


def _result(out: tensors.DeviceTensor, device_resident: bool) -> Any:
    return out.array if device_resident else out.array.get()


def _check_algorithm(algorithm: Optional[str], allowed: Sequence[str] = ALGORITHMS
                     ) -> Optional[str]:
    if algorithm is not None and algorithm not in allowed:
        raise InvalidArgumentError(
            f"algorithm={algorithm!r} is not one of {', '.join(allowed)} (or None to let "
            "clconv choose)"
        )
    return algorithm


def _resolve_algorithm(requested: Optional[str], op: str, rt: Runtime, g: ConvGeometry,
                       dtype: np.dtype) -> str:
    """The caller's choice, else the configured one; the GEMM kernels take float32/64
    and ungrouped convs only, so anything else runs the direct kernel."""
    algorithm = requested or choose_algorithm(op, rt.info, g)
    if algorithm == "gemm" and (dtype not in GEMM_DTYPES or g.groups != 1):
        if requested:
            raise UnimplementedError(
                f"algorithm='gemm' computes float32/float64 ungrouped convolutions; got "
                f"dtype {dtype.name} with {g.groups} group(s): use algorithm='direct'"
            )
        return "direct"
    return algorithm


# --------------------------------------------------------------------------- conv2d


def conv2d(input: Any, filters: Any, strides: Any, padding: Any, data_format: str = "NHWC",
           dilations: Any = None, name: Optional[str] = None, *,
           device: Optional[str] = None, algorithm: Optional[str] = None) -> Any:
    """2-D convolution with tf.nn.conv2d's signature, shape rules, values and errors.

    Parameters
    ----------
    input : array_like or pyopencl.array.Array
        ``[N, H, W, C]`` (NHWC) or ``[N, C, H, W]`` (NCHW); extra leading axes are
        batch axes, as in TF.
    filters : array_like or pyopencl.array.Array
        ``[kh, kw, C / groups, C_out]``; its dtype must match ``input`` when both
        are device arrays, otherwise it is cast to the input's dtype (as TF does).
    strides, dilations : int or sequence of 1, 2 or 4 ints
    padding : "SAME", "VALID" or four [before, after] pairs in data_format order
    data_format : "NHWC" or "NCHW"
    name : ignored, for signature compatibility with TF
    device : str, optional
        ``P:D`` or a name substring; default ``CLCONV_DEVICE`` or the default device.
    algorithm : "gemm" (register-blocked implicit GEMM), "direct" or None (clconv chooses)

    Returns
    -------
    numpy.ndarray, or pyopencl.array.Array when ``input`` is one.
    """
    attrs = parse_attrs(strides, padding, data_format, dilations)
    _check_algorithm(algorithm, CONV2D_ALGORITHMS)
    dtype = tensors.resolve_dtype("Conv2D", [(input, "input"), (filters, "filters")])
    x_shape, w_shape = _shape_of(input, "input"), _shape_of(filters, "filters")
    lead = x_shape[:-3] if len(x_shape) > 4 else None
    if lead is not None:  # TF folds extra leading axes into the batch
        x_shape = (int(np.prod(lead)),) + x_shape[-3:]
    g = conv2d_geometry(x_shape, w_shape, attrs)
    tensors.check_computable(dtype)
    rt = _choose_runtime([input, filters], device)
    _check_device_dtype(rt, dtype)
    device_resident = tensors.is_device_array(input)

    needs_sum = g.x_size() > 0 and g.k_h * g.k_w > 0 and g.out_c > 0
    out = tensors.empty_output(g.y_shape(), dtype, rt.queue, rt.info, zero=not needs_sum)
    if g.y_size() > 0 and needs_sum:
        # numpy in, numpy out: the result's .get() finishes the queue before the borrowed
        # host memory can go away, so the inputs need no upload copy on a CPU device.
        borrow = not device_resident
        x = tensors.to_device(_reshaped(input, x_shape), dtype, rt.queue, rt.info, "input",
                              borrow=borrow)
        w = tensors.to_device(filters, dtype, rt.queue, rt.info, "filters", borrow=borrow)
        if _resolve_algorithm(algorithm, "conv2d", rt, g, dtype) == "gemm":
            gemm.conv2d_gemm(rt, x, w, out, g, choose_config(gemm.FAMILY, rt.info, "conv2d", g))
        else:
            run_conv2d_direct(rt, x, w, out, g,
                              choose_config("conv2d_direct", rt.info, "conv2d", g))
    result = _result(out, device_resident)
    if lead is not None:
        result = result.reshape(lead + tuple(result.shape[1:]))
    return result


def _reshaped(value: Any, shape: tuple[int, ...]) -> Any:
    if tuple(value.shape) == shape:
        return value
    return value.reshape(shape)


def run_conv2d_direct(rt: Runtime, x: tensors.DeviceTensor, w: tensors.DeviceTensor,
                      y: tensors.DeviceTensor, g: ConvGeometry,
                      config: Optional[dict] = None, w_view: Optional[list] = None,
                      x_format: Optional[str] = None) -> cl.Event:
    """Launch conv2d_direct.cl for the conv ``g``: y in g.data_format, x in ``x_format``
    (default the same), the filter as ``w`` or as the view ``w_view`` (offset, 4 strides)."""
    config = config or choose_config("conv2d_direct", rt.info, "conv2d", g)
    defines, local = split_config(config)
    defines.update(dtype_defines(x.dtype))
    kernel = get_kernel(rt.context, "conv2d_direct.cl", "conv2d_direct", defines)
    i32 = np.int32
    w_args = w_view if w_view is not None else w.filter_view()
    args = [x.buffer, *x.activation_view(x_format or g.data_format),
            i32(g.in_h), i32(g.in_w), i32(g.in_c),
            w.buffer, *w_args, i32(g.k_h), i32(g.k_w),
            y.buffer, *y.activation_view(g.data_format),
            i32(g.out_h), i32(g.out_w), i32(g.out_c),
            i32(g.batch), i32(g.stride_h), i32(g.stride_w), i32(g.dil_h), i32(g.dil_w),
            i32(g.pad_top), i32(g.pad_left), i32(g.groups)]
    blocks = g.groups * -(-(g.out_c // g.groups) // int(defines["CO_BLOCK"]))
    return enqueue(rt.queue, kernel, (blocks, g.batch * g.out_h * g.out_w), local, args)


# --------------------------------------------------------------------------- backprop


def conv2d_backprop_input(input_sizes: Any, filters: Any, out_backprop: Any, strides: Any,
                          padding: Any, data_format: str = "NHWC", dilations: Any = None,
                          name: Optional[str] = None, *, device: Optional[str] = None,
                          algorithm: Optional[str] = None) -> Any:
    """Gradient of conv2d with respect to its input (TF's Conv2DBackpropInput).

    Parameters
    ----------
    input_sizes : sequence of 4 ints (the input's shape) or 2 ints ``[H, W]``
    filters : ``[kh, kw, C_in, C_out]``, the forward conv's filter
    out_backprop : ``[N, H_out, W_out, C_out]`` (NHWC) or NCHW
    strides, padding, data_format, dilations : those of the forward conv
    algorithm : "gemm" (per stride phase, an implicit GEMM over the taps that reach
        real dy pixels), "direct" (gather, skips the zeros a stride inserts) or
        "via_forward" (dilate, pad fully, stride-1 conv with the rotated filter);
        None lets clconv choose.

    Returns
    -------
    numpy.ndarray shaped ``input_sizes``, or pyopencl.array.Array when
    ``out_backprop`` is one.
    """
    attrs = parse_attrs(strides, padding, data_format, dilations)
    dtype = tensors.resolve_dtype("Conv2DBackpropInput",
                                  [(filters, "filters"), (out_backprop, "out_backprop")])
    return _backprop("conv2d_backprop_input", input_sizes, filters, out_backprop, attrs, dtype,
                     device, _check_algorithm(algorithm))


def conv2d_transpose(input: Any, filters: Any, output_shape: Any, strides: Any,
                     padding: Any = "SAME", data_format: str = "NHWC", dilations: Any = None,
                     name: Optional[str] = None, *, device: Optional[str] = None,
                     algorithm: Optional[str] = None) -> Any:
    """Transposed convolution with tf.nn.conv2d_transpose's signature and behaviour.

    It is Conv2DBackpropInput(input_sizes=output_shape, filter=filters,
    out_backprop=input): ``strides`` and ``padding`` describe the forward conv
    whose input has shape ``output_shape``.

    Parameters
    ----------
    input : ``[N, H, W, C_in]`` (NHWC) or NCHW; numpy-like or pyopencl.array.Array
    filters : ``[kh, kw, C_out, C_in]``
    output_shape : 4 ints in data_format order, or ``[H_out, W_out]``
    strides, dilations : int or sequence of 1, 2 or 4 ints
    padding : "SAME", "VALID" or four [before, after] pairs
    algorithm : "gemm", "direct", "via_forward" or None (clconv chooses)

    Returns
    -------
    numpy.ndarray of shape output_shape, or pyopencl.array.Array when ``input`` is one.
    """
    attrs = parse_attrs(strides, padding, data_format, dilations)
    # TF passes filters as the op's input #1 and input as #2: T follows the filter.
    dtype = tensors.resolve_dtype("Conv2DBackpropInput", [(filters, "filters"), (input, "input")])
    return _backprop("conv2d_transpose", output_shape, filters, input, attrs, dtype, device,
                     _check_algorithm(algorithm))


def _backprop(op: str, input_sizes: Any, filters: Any, dy_value: Any, attrs, dtype: np.dtype,
              device: Optional[str], algorithm: Optional[str]) -> Any:
    dy_shape, w_shape = _shape_of(dy_value, "input"), _shape_of(filters, "filters")
    g = backprop_input_geometry(input_sizes, w_shape, dy_shape, attrs)
    tensors.check_computable(dtype)
    rt = _choose_runtime([dy_value, filters], device)
    _check_device_dtype(rt, dtype)
    device_resident = tensors.is_device_array(dy_value)

    needs_sum = g.y_size() > 0 and g.k_h * g.k_w > 0
    dx = tensors.empty_output(g.x_shape(), dtype, rt.queue, rt.info, zero=not needs_sum)
    if g.x_size() > 0 and needs_sum:
        borrow = not device_resident  # see conv2d
        dy = tensors.to_device(dy_value, dtype, rt.queue, rt.info, "input", borrow=borrow)
        w = tensors.to_device(filters, dtype, rt.queue, rt.info, "filters", borrow=borrow)
        algorithm = _resolve_algorithm(algorithm, op, rt, g, dtype)
        if algorithm == "gemm":
            gemm.backprop_gemm(rt, dy, w, dx, g, choose_config(gemm.FAMILY, rt.info, op, g))
        elif algorithm == "direct":
            run_backprop_direct(rt, dy, w, dx, g, choose_config("backprop_direct", rt.info, op, g))
        else:
            run_backprop_via_forward(rt, dy, w, dx, g,
                                     choose_config("conv2d_direct", rt.info, op, g))
    return _result(dx, device_resident)


def run_backprop_direct(rt: Runtime, dy: tensors.DeviceTensor, w: tensors.DeviceTensor,
                        dx: tensors.DeviceTensor, g: ConvGeometry,
                        config: Optional[dict] = None) -> cl.Event:
    """Launch backprop_direct.cl: dx of the conv ``g`` from dy, gathering real taps only."""
    config = config or choose_config("backprop_direct", rt.info, "conv2d_backprop_input", g)
    defines, local = split_config(config)
    defines.update(dtype_defines(dy.dtype))
    kernel = get_kernel(rt.context, "backprop_direct.cl", "backprop_direct", defines)
    i32 = np.int32
    args = [dx.buffer, *dx.activation_view(g.data_format), i32(g.in_h), i32(g.in_w), i32(g.in_c),
            w.buffer, *w.filter_view(), i32(g.k_h), i32(g.k_w),
            dy.buffer, *dy.activation_view(g.data_format), i32(g.out_h), i32(g.out_w), i32(g.out_c),
            i32(g.batch), i32(g.stride_h), i32(g.stride_w), i32(g.dil_h), i32(g.dil_w),
            i32(g.pad_top), i32(g.pad_left)]
    blocks = -(-g.in_c // int(defines["CI_BLOCK"]))
    return enqueue(rt.queue, kernel, (blocks, g.batch * g.in_h * g.in_w), local, args)


def via_forward_geometry(g: ConvGeometry) -> ConvGeometry:
    """The stride-1 VALID forward conv that computes dx of ``g`` from the dilated,
    fully padded dy: input [N, H + k_eff_h - 1, W + k_eff_w - 1, C_out] (NHWC),
    filter rotated 180 degrees with in/out swapped, output dx."""
    return ConvGeometry(
        "NHWC", g.batch, g.in_h + g.k_eff_h - 1, g.in_w + g.k_eff_w - 1, g.out_c,
        g.k_h, g.k_w, g.in_h, g.in_w, g.in_c, 1, 1, g.dil_h, g.dil_w, 0, 0, 0, 0)


def run_backprop_via_forward(rt: Runtime, dy: tensors.DeviceTensor, w: tensors.DeviceTensor,
                             dx: tensors.DeviceTensor, g: ConvGeometry,
                             config: Optional[dict] = None) -> cl.Event:
    """dx of the conv ``g`` as dilate + full pad + stride-1 conv with the rotated filter."""
    fg = via_forward_geometry(g)
    padded_shape = (g.batch, fg.in_h, fg.in_w, g.out_c)
    padded = tensors.empty_output(padded_shape, dy.dtype, rt.queue, rt.info, zero=False)
    i32 = np.int32
    kernel = get_kernel(rt.context, "backprop_via_forward.cl", "dilate_pad",
                        dtype_defines(dy.dtype))
    args = [dy.buffer, *dy.activation_view(g.data_format), i32(g.out_h), i32(g.out_w),
            i32(g.out_c), padded.buffer, i32(fg.in_h), i32(fg.in_w), i32(g.batch),
            i32(g.stride_h), i32(g.stride_w),
            i32(g.k_eff_h - 1 - g.pad_top), i32(g.k_eff_w - 1 - g.pad_left)]
    enqueue(rt.queue, kernel, (padded.size,), None, args)
    # The rotated, in/out-swapped filter is a view: start at w[kh-1, kw-1] and walk
    # the spatial axes backwards; "in" of the view is the forward filter's "out".
    offset, s_a, s_b, s_in, s_out = (int(v) for v in w.filter_view())
    w_view = [i32(offset + (g.k_h - 1) * s_a + (g.k_w - 1) * s_b),
              i32(-s_a), i32(-s_b), i32(s_out), i32(s_in)]
    # The padded input is NHWC; dx keeps g's data format.
    dx_g = dataclasses.replace(fg, data_format=g.data_format)
    return run_conv2d_direct(rt, padded, w, dx, dx_g, config, w_view=w_view, x_format="NHWC")
