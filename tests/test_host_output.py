"""Results written straight into numpy memory (clconv.host_output).

On PoCL's CPU devices a numpy-in, numpy-out call lets its last kernel write the
result array itself (a CL_MEM_USE_HOST_PTR buffer over it) and waits for that kernel,
where other devices read the result back.  Checked on every device: that PoCL's CPU
drivers keep such a buffer in the host memory (the check clconv relies on, over a
misaligned array), that every op's result is complete when the call returns (the
array starts full of NaN), that each call gets an array of its own, and that the
values are those of the read-back path.
"""

from __future__ import annotations

import numpy as np
import pytest

import clconv
from clconv import host_output
from clconv.reference import backprop_input_reference, conv2d_reference
from helpers import assert_close, backprop_case, conv2d_case, random_array, reduction_length


def _pocl_cpu(device) -> bool:
    return device.kind == "CPU" and "portable computing language" in device.platform.lower()


@pytest.fixture
def nan_results(monkeypatch):
    """Every result array starts full of NaN; counts the arrays handed out."""
    made = []

    def result_array(shape, dtype):
        made.append(np.full(shape, np.nan, dtype))
        return made[-1]

    monkeypatch.setattr(host_output, "result_array", result_array)
    return made


def test_pocl_cpu_devices_keep_host_pointer_buffers_in_host_memory(device, spec):
    rt = clconv.runtime(spec)
    assert host_output.writes_host_memory(rt.queue, device) == _pocl_cpu(device)
    assert host_output._check(rt.queue) or not _pocl_cpu(device)


def test_every_op_writes_its_whole_result(device, spec, nan_results):
    x, w = random_array((2, 9, 11, 6), seed=1), random_array((3, 3, 6, 8), seed=2)
    g = conv2d_case(x.shape, w.shape, 2, "SAME")
    assert_close(clconv.conv2d(x, w, 2, "SAME", device=spec), conv2d_reference(x, w, g),
                 np.float32, reduction_length(g))
    dy = random_array(g.y_shape(), seed=3)
    gt = backprop_case(x.shape, w.shape, dy.shape, 2, "SAME")
    want = backprop_input_reference(dy, w, gt)
    assert_close(clconv.conv2d_transpose(dy, w, x.shape, 2, "SAME", device=spec), want,
                 np.float32, reduction_length(gt, True))
    assert_close(clconv.conv2d_backprop_input(x.shape, w, dy, 2, "SAME", device=spec), want,
                 np.float32, reduction_length(gt, True))
    dw = random_array((3, 3, 6, 1), seed=4)
    got = clconv.depthwise_conv2d(x, dw, [1, 1, 1, 1], "SAME", device=spec)
    gd = conv2d_case(x.shape, (3, 3, 1, 6), 1, "SAME")
    assert_close(got, conv2d_reference(x, dw.reshape(3, 3, 1, 6), gd), np.float32, 9)
    if _pocl_cpu(device):
        assert len(nan_results) >= 4, "the results were not written in place"
    else:
        assert not nan_results


def test_each_call_gets_its_own_array(device, spec):
    x, w = random_array((1, 6, 6, 4), seed=5), random_array((3, 3, 4, 4), seed=6)
    first = clconv.conv2d(x, w, 1, "SAME", device=spec)
    kept = first.copy()
    second = clconv.conv2d(x * 2, w, 1, "SAME", device=spec)
    assert first is not second and not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)
    assert_close(second, 2 * kept, np.float32, 36)


def test_the_same_values_as_reading_back(device, spec, monkeypatch):
    x, w = random_array((2, 12, 10, 16), seed=7), random_array((3, 3, 16, 24), seed=8)
    in_place = clconv.conv2d(x, w, 1, "SAME", device=spec)
    monkeypatch.setattr(host_output, "ENABLED", False)
    np.testing.assert_array_equal(clconv.conv2d(x, w, 1, "SAME", device=spec), in_place)
