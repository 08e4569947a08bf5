"""Operands on the device: numpy or pyopencl.array in, the same kind out.

Kernels address every tensor as (buffer, element offset, four element strides
in logical n/h/w/c or kh/kw/in/out order).  A DeviceTensor carries exactly
that, so a pyopencl view is used in place and a numpy array is uploaded once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from clconv import buffer_pool
from clconv.errors import InvalidArgumentError, UnimplementedError
from clconv.shapes import dtype_name, is_tf_tensor

INT32_LIMIT = 2**31 - 1
# A plan whose tensors' element indices may pass this builds its kernels with 64-bit
# offsets and strides (INDEX_64, common.cl's IDX); below it, int's cheaper arithmetic.
# Tests lower it to run the 64-bit builds on small tensors.
WIDE_INDEX_ABOVE = INT32_LIMIT
# Where n, h, w, c sit in each data format; kernels take activation strides in that order.
ACTIVATION_AXES = {"NHWC": (0, 1, 2, 3), "NCHW": (0, 2, 3, 1)}

# TF's op-def list for T, and the subset clconv computes.
TF_ALLOWED_DTYPES = "half, bfloat16, float, double, int32"
COMPUTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class ResourceExhaustedError(MemoryError):
    """A tensor too large for the device (TF's ResourceExhaustedError)."""


def is_device_array(value: Any) -> bool:
    return isinstance(value, cl_array.Array)


def as_host_array(value: Any, name: str) -> np.ndarray:
    """Anything np.asarray takes (TensorFlow tensors included, via __array__)."""
    if hasattr(value, "numpy") and callable(value.numpy) and not isinstance(value, np.ndarray):
        value = value.numpy()  # a tf.Tensor: its own conversion is the zero-copy one on CPU
    try:
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"{name} must be an array, got {type(value).__name__}") from exc


def is_typed_tensor(value: Any) -> bool:
    """A device array or a TF tensor: an operand whose dtype TF would not convert."""
    return is_device_array(value) or is_tf_tensor(value)


def operand_dtype(value: Any, name: str) -> np.dtype:
    if is_device_array(value) or isinstance(value, np.ndarray):
        return value.dtype
    if is_typed_tensor(value):
        return np.dtype(value.dtype.as_numpy_dtype)
    return as_host_array(value, name).dtype


def resolve_dtype(op: str, operands: Sequence[tuple[Any, str]]) -> np.dtype:
    """TF's conversion of the inputs that share the type attribute T.

    T comes from the first operand (in the op's input order) that is already a
    typed tensor (a TF tensor or, here, a pyopencl array), else from the first
    operand; the other host operands are cast to it, and a typed tensor of another
    dtype is an InvalidArgumentError naming its input index.  Then TF's attribute
    check of T.
    """
    typed = [(i, v, n) for i, (v, n) in enumerate(operands) if is_typed_tensor(v)]
    first = typed[0] if typed else (0, operands[0][0], operands[0][1])
    dtype = operand_dtype(first[1], first[2])
    for index, value, name in typed:
        other = operand_dtype(value, name)
        if other != dtype:
            raise InvalidArgumentError(
                f"cannot compute {op} as input #{index + 1 if op != 'Conv2D' else index}"
                f"(zero-based) was expected to be a {dtype_name(dtype)} tensor but is a "
                f"{dtype_name(other)} tensor ({name})"
            )
    if dtype.name not in ("float16", "float32", "float64", "int32", "bfloat16"):
        raise InvalidArgumentError(
            f"Value for attr 'T' of {dtype.name} is not in the list of allowed values: "
            f"{TF_ALLOWED_DTYPES}"
        )
    return dtype


def check_computable(dtype: np.dtype) -> None:
    """clconv's own limit, applied after TF's shape checks (as TF would compute them)."""
    if dtype not in COMPUTED_DTYPES:
        raise UnimplementedError(
            f"clconv computes float16, float32 and float64; dtype {dtype.name} (which TF also "
            "accepts) is not implemented"
        )


@functools.lru_cache(maxsize=1024)
def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of ``shape``."""
    strides, step = [], 1
    for extent in reversed(shape):
        strides.append(step)
        step *= max(int(extent), 1)
    return tuple(reversed(strides))


@dataclass
class DeviceTensor:
    """A tensor as the kernels see it: a buffer, an element offset and element strides.

    Made from a caller's pyopencl array (used in place, views included), or from
    host memory: a plain cl.Buffer, since wrapping every operand of every call in
    a pyopencl Array costs more host time than a small launch.
    """

    buffer: cl.Buffer
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int = 0
    strides: Optional[tuple[int, ...]] = None  # elements; None: C-contiguous
    array: Optional[cl_array.Array] = None  # the caller's array this tensor is
    borrowed: Optional[np.ndarray] = None  # host memory the buffer uses; keep it alive

    def __post_init__(self) -> None:
        if self.strides is None:
            self.strides = contiguous_strides(self.shape)

    @classmethod
    def of_array(cls, array: cl_array.Array) -> "DeviceTensor":
        item = array.dtype.itemsize
        return cls(array.base_data, tuple(array.shape), array.dtype, array.offset // item,
                   tuple(s // item for s in array.strides), array=array)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def reach(self) -> int:
        """One past the largest element index a kernel computes for this tensor."""
        if not all(self.shape):
            return 0
        return self.offset + 1 + sum((n - 1) * s for n, s in zip(self.shape, self.strides)
                                     if s > 0)

    def view_args(self, order: Sequence[int]) -> list[int]:
        """Offset and strides (elements) with the axes taken in ``order``."""
        return [self.offset] + [self.strides[i] for i in order]

    def activation_view(self, data_format: str) -> list[int]:
        """Offset and n, h, w, c strides of an activation in ``data_format``."""
        return self.view_args(ACTIVATION_AXES[data_format])

    def filter_view(self) -> list[int]:
        """Offset and kh, kw, in, out strides of a filter (TF's layout)."""
        return self.view_args((0, 1, 2, 3))

    def merged(self, axis: int) -> "DeviceTensor":
        """The same elements with axes ``axis`` and ``axis + 1`` seen as one (a 3-D
        tensor's batch and depth as a batch of planes, a filter's depth and height taps
        as one axis of taps), which the strides must allow, as they do in any
        C-contiguous tensor."""
        shape, strides = self.shape, self.strides
        if shape[axis] > 1 and shape[axis + 1] > 1 \
                and strides[axis] != shape[axis + 1] * strides[axis + 1]:
            raise InvalidArgumentError(
                f"a tensor of shape {list(shape)} and strides {list(strides)} (elements) "
                f"cannot be read with axes {axis} and {axis + 1} as one")
        step = strides[axis + 1] if shape[axis + 1] > 1 else strides[axis]
        return DeviceTensor(self.buffer, shape[:axis] + (shape[axis] * shape[axis + 1],)
                            + shape[axis + 2:], self.dtype, self.offset,
                            strides[:axis] + (step,) + strides[axis + 2:], self.array,
                            self.borrowed)

    def with_unit_axis(self, at: int) -> "DeviceTensor":
        """The same elements with a unit axis inserted before axis ``at`` (as a
        reshape of a pyopencl array would give, without making one: a front end's 1-D
        operand seen as 2-D).  Its ``array`` stays the caller's, for its place in the
        buffer (``reach``), not its shape."""
        return DeviceTensor(self.buffer, self.shape[:at] + (1,) + self.shape[at:], self.dtype,
                            self.offset, self.strides[:at] + (0,) + self.strides[at:],
                            self.array)

    def as_array(self, queue: cl.CommandQueue) -> cl_array.Array:
        """A pyopencl array of this (C-contiguous, unborrowed) tensor on ``queue``."""
        if self.array is not None:
            return self.array
        return array_over(queue, self.shape, self.dtype, self.buffer)

    def get(self, queue: cl.CommandQueue, wait_for: Optional[list] = None) -> np.ndarray:
        """Copy to a new numpy array, after ``wait_for`` and (on an in-order queue)
        all earlier work of ``queue``."""
        if self.array is not None:
            if wait_for:
                cl.wait_for_events(wait_for)
            return self.array.get(queue)
        host = np.empty(self.shape, self.dtype)
        if host.size:
            cl.enqueue_copy(queue, host, self.buffer, src_offset=self.offset * host.itemsize,
                            wait_for=wait_for)
        return host

    def set(self, queue: cl.CommandQueue, host: np.ndarray) -> None:
        """Overwrite from host memory (a C-contiguous tensor only)."""
        host = np.ascontiguousarray(host, dtype=self.dtype).reshape(self.shape)
        if host.size:
            cl.enqueue_copy(queue, self.buffer, host, dst_offset=self.offset * host.itemsize)

    def fill(self, queue: cl.CommandQueue, value: float) -> cl.Event:
        """Set every element (of a C-contiguous tensor) to ``value``."""
        return cl.enqueue_fill_buffer(queue, self.buffer, np.array(value, self.dtype),
                                      self.offset * self.dtype.itemsize,
                                      max(self.size, 0) * self.dtype.itemsize)


# Whether pyopencl's fast constructor builds the same arrays as its checked one here
# (None: not compared yet).
_fast_constructor_agrees: Optional[bool] = None


def array_over(queue: cl.CommandQueue, shape: tuple[int, ...], dtype: np.dtype,
               buffer: cl.Buffer) -> cl_array.Array:
    """A C-contiguous pyopencl array of ``shape`` over ``buffer`` from its start.

    pyopencl's constructor checks its arguments with numpy reductions: 24 us a
    call on a Zen 3, most of a tiny layer's host time.  Its fast constructor (the
    one its own views use) takes the values already worked out.  The first array
    is made both ways and compared; if they differ in anything (another pyopencl
    version), the checked constructor stays in use.
    """
    global _fast_constructor_agrees
    if _fast_constructor_agrees is False:
        return cl_array.Array(queue, shape, dtype, data=buffer)
    dtype = np.dtype(dtype)
    try:
        fast = cl_array.Array(
            None, shape, dtype, data=buffer,
            strides=tuple(s * dtype.itemsize for s in contiguous_strides(shape)),
            _fast=True, _size=math.prod(shape), _context=queue.context, _queue=queue)
    except TypeError:  # a pyopencl without that constructor
        fast = None
    if _fast_constructor_agrees is None:
        checked = cl_array.Array(queue, shape, dtype, data=buffer)
        _fast_constructor_agrees = fast is not None and _same_array(fast, checked)
        return checked
    return fast


def _same_array(a: cl_array.Array, b: cl_array.Array) -> bool:
    fields = ("shape", "dtype", "strides", "size", "nbytes", "offset", "queue", "context",
              "allocator", "events")
    try:
        return a.base_data is b.base_data and all(
            getattr(a, name) == getattr(b, name) for name in fields) \
            and type(a.flags) is type(b.flags) and vars(a.flags) == vars(b.flags)
    except Exception:  # noqa: BLE001  any attribute missing or odd: do not trust it
        return False


def check_fits(nbytes: int, what: str, info) -> None:
    """Refuse before allocating what the device cannot hold in one buffer.  (Past
    2^31 - 1 elements the kernels index in 64 bits: see WIDE_INDEX_ABOVE.)"""
    if nbytes > info.max_mem_alloc_size:
        raise ResourceExhaustedError(
            f"{what} needs {nbytes} bytes, more than the largest buffer device "
            f"{info.name!r} allows ({info.max_mem_alloc_size} bytes, CL_DEVICE_MAX_MEM_ALLOC_SIZE)"
        )


def to_device(value: Any, dtype: np.dtype, queue: cl.CommandQueue, info, what: str,
              allow_cast: bool = True, borrow: bool = False, checked: bool = False
              ) -> DeviceTensor:
    """Place an operand on ``queue``'s device (in place if it already is), as ``dtype``.

    A host operand of another dtype is cast unless ``allow_cast`` is False; the ops
    have resolved T with TF's rule (resolve_dtype) before, so they always cast.
    With ``borrow`` on a CPU device the buffer uses the host memory itself
    (CL_MEM_USE_HOST_PTR: no upload copy); the caller must then finish the work
    on it before the returned DeviceTensor is dropped.  ``checked``: the caller
    has already checked that a tensor of this shape fits (check_fits).
    """
    on_device = is_device_array(value)
    if on_device and value.context != queue.context:
        raise InvalidArgumentError(f"{what} lives in another OpenCL context than the others")
    operand = value if on_device or isinstance(value, np.ndarray) else as_host_array(value, what)
    if operand.dtype != dtype and (on_device or not allow_cast):
        raise InvalidArgumentError(
            f"{what} was expected to be a {dtype_name(dtype)} tensor but is a "
            f"{dtype_name(operand.dtype)} tensor"
        )
    if on_device:
        return DeviceTensor.of_array(value)
    host = np.ascontiguousarray(operand, dtype=dtype)
    if not checked:
        check_fits(host.nbytes, what, info)
    if not host.size:
        return DeviceTensor(cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, dtype.itemsize),
                            host.shape, host.dtype)
    if borrow and info.kind == "CPU":
        flags = cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR
        return DeviceTensor(cl.Buffer(queue.context, flags, hostbuf=host), host.shape,
                            host.dtype, borrowed=host)
    # A copy may be written to (conformance uploads NaN-filled outputs this way).
    flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
    return DeviceTensor(cl.Buffer(queue.context, flags, hostbuf=host), host.shape, host.dtype)


def empty_output(shape: tuple[int, ...], dtype: np.dtype, queue: cl.CommandQueue, info,
                 zero: bool, checked: bool = False) -> DeviceTensor:
    elements = math.prod(shape)
    dtype = np.dtype(dtype)
    if not checked:
        check_fits(elements * dtype.itemsize, f"the output of shape {tuple(shape)}", info)
    pool = buffer_pool.for_queue(queue)
    nbytes = max(elements, 1) * dtype.itemsize
    buffer = (pool.allocate(nbytes) if pool is not None
              else cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, nbytes))
    tensor = DeviceTensor(buffer, tuple(int(s) for s in shape), dtype)
    if zero and elements:
        tensor.fill(queue, 0)
    return tensor


def find_queue(operands: Sequence[Any]) -> Optional[cl.CommandQueue]:
    for value in operands:
        if is_device_array(value):
            if value.queue is None:
                raise InvalidArgumentError("a pyopencl array without a queue cannot be an operand")
            return value.queue
    return None
