"""The public ops: conv2d, conv2d_backprop_input and conv2d_transpose.

Each op checks its arguments with TensorFlow's rules (clconv.shapes), finds
the device, and hands the call to a plan (clconv.plans): check -> plan ->
execute.  numpy in gives numpy out; pyopencl.array in gives pyopencl.array
out on the same queue.  ``plan`` builds the same plan for a caller who runs
one layer many times.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import TYPE_CHECKING, Any, Literal, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import pyopencl.array as cl_array

from clconv import plans, registry, tensors, tuning_db
from clconv.device_select import ENV_DEVICE, DeviceSpec, default_token
from clconv.device_select import Runtime, find_device, runtime, runtime_for_queue
from clconv.errors import InvalidArgumentError, UnimplementedError
from clconv.plans import ConvPlan
from clconv.shapes import backprop_input_geometry, conv2d_geometry, parse_attrs

# Types of the public signatures.  A tensor is anything np.asarray takes (numpy
# arrays, nested lists, TF tensors) or a pyopencl array; the result is the same kind.
Tensor = Union[npt.ArrayLike, "cl_array.Array"]
Result = Union[np.ndarray, "cl_array.Array"]
IntOrInts = Union[int, Sequence[int]]
Shape = Union[Sequence[int], np.ndarray]
Padding = Union[Literal["SAME", "VALID"], Sequence[Sequence[int]]]
DataFormat = Literal["NHWC", "NCHW"]

# --------------------------------------------------------------------------- call memo
# A loop that calls an op with the same shapes and arguments pays TF's argument
# checks and the plan look-up once: successful calls are remembered by everything
# those checks read (failures are never remembered, so every bad call raises
# afresh).  For pyopencl arrays that is their shape, dtype and queue; the queue
# object itself is in the key, so it stays alive while remembered and no later
# queue can take its address (and with it another context's plan).

CALL_MEMO_SIZE = 256  # remembered calls, least recently used dropped first
_memo_lock = threading.Lock()
_calls: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()


# Arguments of these types are the same argument when equal, once their types are in
# the key too (1 == 1.0 == True, and TF takes only the first as a stride).
_PLAIN_TYPES = frozenset({str, int, type(None)})


class _NoKey(Exception):
    pass


def _arg_key(value: Any) -> Any:
    """An argument as given, type included, as a hashable key (else _NoKey)."""
    kind = type(value)
    if kind is str or value is None:
        return value
    if kind is int:
        return (int, value)  # not equal to a str, nor to True (a bool equals 1)
    if kind in (list, tuple):
        types = tuple(map(type, value))
        if _PLAIN_TYPES.issuperset(types):  # strides, shapes: flat ints, fast
            return (kind, types, tuple(value))
        return (kind.__name__,) + tuple(_arg_key(v) for v in value)
    if kind is np.ndarray and value.ndim <= 1 and value.size <= 8:
        return ("ndarray", value.dtype.str, tuple(value.tolist()))
    raise _NoKey


def operand_key(value: Any) -> Any:
    """A numpy or pyopencl operand as a key of what the checks read (else _NoKey)."""
    if type(value) is np.ndarray:
        return ("ndarray", value.shape, value.dtype)
    if tensors.is_device_array(value) and value.queue is not None:
        return ("pyopencl", value.shape, value.dtype, value.queue)
    raise _NoKey


def _out_queue(out: Any) -> Any:
    """An ``out`` operand's queue; anything else is not remembered (the op then says
    what ``out`` must be)."""
    if tensors.is_device_array(out) and out.queue is not None:
        return out.queue
    raise _NoKey


# The variables a call's device and tuning database depend on, read at every call.
_ENV_NAMES = (ENV_DEVICE, tuning_db.ENV_DB)
_ENCODED_ENV_NAMES = (tuple(os.environ.encodekey(name) for name in _ENV_NAMES)
                      if hasattr(os.environ, "encodekey") else None)


def _environment() -> tuple:
    """The values of _ENV_NAMES as a key (None where unset).  CPython's os.environ
    keeps them in a dict of encoded names, read there in 0.06 us; os.environ.get
    raises and catches a KeyError for each unset one, ~1 us on every call."""
    data = getattr(os.environ, "_data", None)
    if type(data) is dict and _ENCODED_ENV_NAMES is not None:
        return tuple(map(data.get, _ENCODED_ENV_NAMES))
    return tuple(map(os.environ.get, _ENV_NAMES))


def call_key(op: str, data: Any, filters: Any, out: Any, *args: Any) -> Optional[tuple]:
    """The memo key of one call, or None where the call is not remembered (operands of
    other kinds, arguments that are not plain values).  ``out`` counts by its queue:
    with host operands it chooses the device."""
    try:
        operands = (operand_key(data), operand_key(filters), None if out is None else
                    _out_queue(out))
        types = tuple(map(type, args))
        if _PLAIN_TYPES.issuperset(types):  # ints, strings, None: the common call, fast
            attrs = (types, args)
        else:  # first item None: never equal to a tuple of types above
            attrs = (None, tuple(_arg_key(a) for a in args))
    except _NoKey:
        return None
    return (op, operands, attrs, _environment(), default_token(), tuning_db.generation())


def recall(key: Optional[tuple]) -> Optional[tuple]:
    if key is None:
        return None
    with _memo_lock:
        found = _calls.get(key)
        if found is not None:
            _calls.move_to_end(key)
        return found


def remember(key: Optional[tuple], value: tuple) -> None:
    if key is None:
        return
    with _memo_lock:
        _calls[key] = value
        while len(_calls) > CALL_MEMO_SIZE:
            _calls.popitem(last=False)


def forget_calls() -> None:
    with _memo_lock:
        _calls.clear()


def choose_runtime(operands: Sequence[Any], device: DeviceSpec) -> Runtime:
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


def check_device_dtype(rt: Runtime, dtype: np.dtype) -> None:
    """float64 needs cl_khr_fp64; float16 is storage only (vload_half, core OpenCL) and
    runs on every device."""
    if dtype == np.float64 and not rt.info.fp64:
        raise UnimplementedError(
            f"float64 needs cl_khr_fp64, which device {rt.info.name!r} ({rt.info.platform}) "
            "does not support; use float32"
        )


def check_algorithm(algorithm: Optional[str], op: str) -> Optional[str]:
    allowed = registry.algorithms_for(op)
    if algorithm is not None and algorithm not in allowed:
        raise InvalidArgumentError(
            f"algorithm={algorithm!r} is not one of {', '.join(allowed)} (or None to let "
            "clconv choose)"
        )
    return algorithm


# --------------------------------------------------------------------------- conv2d


def conv2d(input: Tensor, filters: Tensor, strides: IntOrInts, padding: Padding,
           data_format: DataFormat = "NHWC", dilations: Optional[IntOrInts] = None,
           name: Optional[str] = None, *, device: DeviceSpec = None,
           algorithm: Optional[str] = None, out: Optional["cl_array.Array"] = None) -> Result:
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
    device : optional
        ``P:D``, ``P``, ``cpu``/``gpu``/``accelerator``, a substring naming one device,
        a DeviceInfo, cl.Device, cl.Context or cl.CommandQueue; default: the device of
        ``with clconv.device(...)``, ``set_default_device``, ``CLCONV_DEVICE``, or
        clconv's choice.
    algorithm : "gemm" (register-blocked implicit GEMM), "direct" or None (clconv chooses)
    out : pyopencl.array.Array, optional
        Where to write the result (its shape and dtype); it is also returned.

    Returns
    -------
    numpy.ndarray, or pyopencl.array.Array when ``input`` is one.
    """
    key = call_key("conv2d", input, filters, out, strides, padding, data_format, dilations,
                   device, algorithm)
    known = recall(key)
    if known is not None:
        plan, x_shape, lead = known
        result = plan.execute(_reshaped(input, x_shape), filters, out=out)
        return result if lead is None else result.reshape(lead + tuple(result.shape[1:]))
    attrs = parse_attrs(strides, padding, data_format, dilations)
    check_algorithm(algorithm, "conv2d")
    dtype = tensors.resolve_dtype("Conv2D", [(input, "input"), (filters, "filters")])
    x_shape, w_shape = _shape_of(input, "input"), _shape_of(filters, "filters")
    lead = x_shape[:-3] if len(x_shape) > 4 else None
    if lead is not None:  # TF folds extra leading axes into the batch
        x_shape = (int(np.prod(lead)),) + x_shape[-3:]
    g = conv2d_geometry(x_shape, w_shape, attrs)
    tensors.check_computable(dtype)
    rt = choose_runtime([input, filters, out], device)
    check_device_dtype(rt, dtype)
    plan = plans.get_plan(rt, "conv2d", g, dtype, algorithm)
    result = plan.execute(_reshaped(input, x_shape), filters, out=out, queue=rt.queue)
    remember(key, (plan, x_shape, lead))
    if lead is not None:
        result = result.reshape(lead + tuple(result.shape[1:]))
    return result


def _reshaped(value: Any, shape: tuple[int, ...]) -> Any:
    if not hasattr(value, "shape"):  # nested lists, as TF takes them
        value = tensors.as_host_array(value, "input")
    if tuple(value.shape) == shape:
        return value
    return value.reshape(shape)


# --------------------------------------------------------------------------- backprop


def conv2d_backprop_input(input_sizes: Shape, filters: Tensor, out_backprop: Tensor,
                          strides: IntOrInts, padding: Padding,
                          data_format: DataFormat = "NHWC",
                          dilations: Optional[IntOrInts] = None, name: Optional[str] = None, *,
                          device: DeviceSpec = None, algorithm: Optional[str] = None,
                          out: Optional["cl_array.Array"] = None) -> Result:
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
    key = call_key("conv2d_backprop_input", out_backprop, filters, out, input_sizes, strides,
                   padding, data_format, dilations, device, algorithm)
    known = recall(key)
    if known is not None:
        return known[0].execute(out_backprop, filters, out=out)
    attrs = parse_attrs(strides, padding, data_format, dilations)
    dtype = tensors.resolve_dtype("Conv2DBackpropInput",
                                  [(filters, "filters"), (out_backprop, "out_backprop")])
    return _backprop(key, "conv2d_backprop_input", input_sizes, filters, out_backprop, attrs,
                     dtype, device, check_algorithm(algorithm, "conv2d_backprop_input"), out)


def conv2d_transpose(input: Tensor, filters: Tensor, output_shape: Shape, strides: IntOrInts,
                     padding: Padding = "SAME", data_format: DataFormat = "NHWC",
                     dilations: Optional[IntOrInts] = None, name: Optional[str] = None, *,
                     device: DeviceSpec = None, algorithm: Optional[str] = None,
                     out: Optional["cl_array.Array"] = None) -> Result:
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
    key = call_key("conv2d_transpose", input, filters, out, output_shape, strides, padding,
                   data_format, dilations, device, algorithm)
    known = recall(key)
    if known is not None:
        return known[0].execute(input, filters, out=out)
    attrs = parse_attrs(strides, padding, data_format, dilations)
    # TF passes filters as the op's input #1 and input as #2: T follows the filter.
    dtype = tensors.resolve_dtype("Conv2DBackpropInput", [(filters, "filters"), (input, "input")])
    return _backprop(key, "conv2d_transpose", output_shape, filters, input, attrs, dtype, device,
                     check_algorithm(algorithm, "conv2d_transpose"), out)


def _backprop(key: Optional[tuple], op: str, input_sizes: Any, filters: Any, dy_value: Any,
              attrs, dtype: np.dtype, device: DeviceSpec, algorithm: Optional[str],
              out: Any = None) -> Any:
    dy_shape, w_shape = _shape_of(dy_value, "input"), _shape_of(filters, "filters")
    g = backprop_input_geometry(input_sizes, w_shape, dy_shape, attrs)
    tensors.check_computable(dtype)
    rt = choose_runtime([dy_value, filters, out], device)
    check_device_dtype(rt, dtype)
    plan = plans.get_plan(rt, op, g, dtype, algorithm)
    result = plan.execute(dy_value, filters, out=out, queue=rt.queue)
    remember(key, (plan,))
    return result


# --------------------------------------------------------------------------- plans


def plan(op: Literal["conv2d", "conv2d_transpose", "conv2d_backprop_input"],
         input_shape: Sequence[int], filter_shape: Sequence[int], strides: IntOrInts,
         padding: Padding, output_shape: Optional[Shape] = None,
         data_format: DataFormat = "NHWC", dilations: Optional[IntOrInts] = None, *,
         dtype: npt.DTypeLike = np.float32, device: DeviceSpec = None,
         algorithm: Optional[str] = None, config: Optional[dict] = None) -> ConvPlan:
    """Decide once how to compute one op on one shape, for calling it many times.

    Parameters
    ----------
    op : "conv2d", "conv2d_transpose" or "conv2d_backprop_input"
    input_shape : the shape of the op's data operand: conv2d's ``input``,
        conv2d_transpose's ``input``, conv2d_backprop_input's ``out_backprop``
    filter_shape : the op's ``filters`` shape, in TF's layout
    strides, padding, data_format, dilations : as for the op
    output_shape : conv2d_transpose's ``output_shape`` / conv2d_backprop_input's
        ``input_sizes``; not used for conv2d
    dtype : float32 (default), float64 or float16
    device : as for the ops
    algorithm : None lets clconv choose (see ``ConvPlan.describe``)
    config : a kernel configuration to use instead of the tuned / shipped one

    Returns
    -------
    ConvPlan: ``execute(input, filters)`` computes the op exactly as the op function
    would; ``prepare_filters(filters)`` packs a filter once for many calls;
    ``describe()`` says what was chosen and why.  Safe to share between threads.
    """
    if op not in plans.OPS:
        raise InvalidArgumentError(f"op={op!r} is not one of {', '.join(plans.OPS)}")
    attrs = parse_attrs(strides, padding, data_format, dilations)
    check_algorithm(algorithm, op)
    dtype = np.dtype(dtype)
    tensors.check_computable(dtype)
    shape, w_shape = tuple(int(v) for v in input_shape), tuple(int(v) for v in filter_shape)
    if op == "conv2d":
        g = conv2d_geometry(shape, w_shape, attrs)
    else:
        if output_shape is None:
            tf_name = "output_shape" if op == "conv2d_transpose" else "input_sizes"
            raise InvalidArgumentError(f"{op} needs output_shape (TF's {tf_name})")
        g = backprop_input_geometry(output_shape, w_shape, shape, attrs)
    rt = runtime(device)
    check_device_dtype(rt, dtype)
    return plans.get_plan(rt, op, g, dtype, algorithm, config)
