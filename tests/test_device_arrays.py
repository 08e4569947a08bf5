"""The pyopencl arrays clconv returns (clconv.tensors.array_over).

pyopencl's checked constructor costs ~24 us a call, so results are made with its
fast constructor, which clconv trusts only after the first array made both ways
agrees.  Checked: the arrays are pyopencl's own in every attribute and work with
pyopencl's operations, on every device; a pyopencl whose fast constructor is
missing or builds something else gets checked arrays.
"""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest

import clconv
from clconv import tensors

SHAPES = [(1, 8, 8, 16), (7,), (2, 0, 4), (1, 2, 3, 4, 5)]
FIELDS = ("shape", "dtype", "strides", "size", "nbytes", "offset", "queue", "context",
          "allocator", "events")


def _buffer(queue, shape, dtype):
    nbytes = max(int(np.prod(shape)), 1) * np.dtype(dtype).itemsize
    return cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, nbytes)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_results_are_pyopencl_arrays_in_every_respect(device, spec, dtype, monkeypatch):
    monkeypatch.setattr(tensors, "_fast_constructor_agrees", None)
    queue = clconv.runtime(spec).queue
    for shape in SHAPES:
        buffer = _buffer(queue, shape, dtype)
        for _ in range(2):  # the first array is the checked one, then the fast one
            ours = tensors.array_over(queue, shape, dtype, buffer)
            theirs = cl_array.Array(queue, shape, dtype, data=buffer)
            assert type(ours) is cl_array.Array and ours.base_data is buffer
            for name in FIELDS:
                assert getattr(ours, name) == getattr(theirs, name), (shape, name)
            assert vars(ours.flags) == vars(theirs.flags)
        assert tensors._fast_constructor_agrees is True
        values = np.arange(np.prod(shape), dtype=dtype).reshape(shape)
        ours.set(values)
        assert np.array_equal(theirs.get(), values)
        if dtype == np.float32:  # pyopencl's elementwise kernels want cl_khr_fp16 for half
            assert np.array_equal((ours + 1).get(), values + 1)


class _NoFastConstructor(cl_array.Array):
    def __init__(self, *args, _fast=False, **kwargs):
        if _fast:
            raise TypeError("no fast constructor in this pyopencl")
        super().__init__(*args, **kwargs)


class _OtherFastConstructor(cl_array.Array):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if kwargs.get("_fast"):
            self.strides = self.strides[::-1]  # something else than the checked one


@pytest.mark.parametrize("array_class", [_NoFastConstructor, _OtherFastConstructor])
def test_a_pyopencl_whose_fast_constructor_differs_gets_checked_arrays(array_class,
                                                                        monkeypatch):
    monkeypatch.setattr(tensors, "_fast_constructor_agrees", None)
    monkeypatch.setattr(cl_array, "Array", array_class)
    queue = clconv.runtime().queue
    shape = (2, 3, 4, 5)
    buffer = _buffer(queue, shape, np.float32)
    for _ in range(3):
        made = tensors.array_over(queue, shape, np.float32, buffer)
        assert made.strides == (240, 80, 20, 4)
    assert tensors._fast_constructor_agrees is False
