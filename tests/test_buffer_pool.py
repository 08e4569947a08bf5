"""clconv's per-queue buffer pools (clconv/buffer_pool.py): outputs and temporaries
come back for reuse, results a caller holds are never handed out again, only
clconv's own queues pool, and what a pool holds unused stays bounded."""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest

import clconv
from clconv import buffer_pool
from helpers import assert_close


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _reference_transpose(x, w, stride):
    """float64 conv2d_transpose, VALID, kernel == stride: each input pixel paints one
    k x k block of the output (independent of clconv)."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    y = np.zeros((n, h * stride, wd * stride, w.shape[2]))
    for a in range(k):
        for b in range(k):
            y[:, a::stride, b::stride] += np.einsum("nhwi,oi->nhwo", x.astype(np.float64),
                                                      w[a, b].astype(np.float64))
    return y


def test_numpy_calls_reuse_their_device_memory(device, spec):
    """A numpy call's device output comes from the pool and goes back to it; on PoCL's
    CPU devices, whose numpy results are written in place (clconv.host_output), the
    calls take no new device memory either."""
    from clconv import host_output

    rt = clconv.runtime(spec)
    pool = buffer_pool.for_queue(rt.queue)
    assert pool is not None
    x, w = _random((2, 8, 8, 16), 1), _random((2, 2, 8, 16), 2)
    clconv.conv2d_transpose(x, w, [2, 16, 16, 8], 2, "VALID", device=spec)
    managed = pool._pool.managed_bytes
    if not host_output.writes_host_memory(rt.queue, device):
        assert managed > 0  # the output's device buffer came from the pool
    for _ in range(5):
        y = clconv.conv2d_transpose(x, w, [2, 16, 16, 8], 2, "VALID", device=spec)
    assert pool._pool.managed_bytes == managed  # the same blocks, handed out again
    assert_close(y, _reference_transpose(x, w, 2), np.float32, 2 * 2 * 16)


def test_release_memory_gives_the_held_memory_back(device, spec):
    pool = buffer_pool.for_queue(clconv.runtime(spec).queue)
    x, w = _random((1, 8, 8, 16), 8), _random((2, 2, 8, 16), 9)
    kept = clconv.conv2d_transpose(cl_array.to_device(pool_queue(spec), x), w, [1, 16, 16, 8],
                                   2, "VALID")
    # a result dropped at once goes back to the pool (numpy results on PoCL's CPU
    # devices never come from it: clconv.host_output writes them in place)
    clconv.conv2d_transpose(cl_array.to_device(pool_queue(spec), x), w, [1, 16, 16, 8], 2,
                            "VALID")
    assert pool.held_blocks() > 0
    clconv.release_memory()
    assert pool.held_blocks() == 0
    assert_close(kept.get(), _reference_transpose(x, w, 2), np.float32, 2 * 2 * 16)


def pool_queue(spec):
    return clconv.runtime(spec).queue


def test_results_a_caller_holds_are_not_reused(device, spec):
    queue = clconv.runtime(spec).queue
    w = _random((2, 2, 8, 16), 3)
    inputs = [_random((1, 6, 6, 16), 10 + i) for i in range(4)]
    held = [clconv.conv2d_transpose(cl_array.to_device(queue, x), w, [1, 12, 12, 8], 2,
                                    "VALID") for x in inputs]
    for _ in range(3):  # later calls of the same shape, results dropped at once
        clconv.conv2d_transpose(cl_array.to_device(queue, inputs[0]), w, [1, 12, 12, 8], 2,
                                "VALID")
    for x, y in zip(inputs, held):
        assert_close(y.get(), _reference_transpose(x, w, 2), np.float32, 2 * 2 * 16)


def test_only_clconvs_own_queues_pool(device, spec):
    rt = clconv.runtime(spec)
    mine = cl.CommandQueue(rt.context)
    assert buffer_pool.for_queue(mine) is None
    x, w = _random((1, 4, 4, 16), 4), _random((2, 2, 8, 16), 5)
    y = clconv.conv2d_transpose(cl_array.to_device(mine, x), w, [1, 8, 8, 8], 2, "VALID")
    assert not isinstance(y.base_data, cl.tools.PooledBuffer)
    assert_close(y.get(), _reference_transpose(x, w, 2), np.float32, 2 * 2 * 16)


def test_what_a_pool_holds_stays_bounded(device, spec, monkeypatch):
    pool = buffer_pool.BufferPool(clconv.runtime(spec).queue, 1 << 30)
    monkeypatch.setattr(buffer_pool, "HELD_LIMIT", 1 << 20)
    for size in (300_000, 500_000, 700_000, 900_000, 1_100_000):
        block = pool.allocate(size)
        del block  # back to the pool, held
    # Checked before each allocation: held memory passes the limit by one block at most.
    assert 0 < pool.held_bytes() <= (1 << 20) + 2 * 1_100_000
    pool.allocate(100)  # past the limit: everything held is given back first
    assert pool.held_bytes() < 1 << 12  # only the small block just dropped
    pool.free_held()
    assert pool.held_bytes() == 0


def test_blocks_past_half_the_largest_allocation_are_not_pooled(device, spec):
    pool = buffer_pool.BufferPool(clconv.runtime(spec).queue, 1 << 12)
    assert isinstance(pool.allocate(1 << 11), cl.tools.PooledBuffer)
    big = pool.allocate((1 << 11) + 1)
    assert not isinstance(big, cl.tools.PooledBuffer) and big.size == (1 << 11) + 1


@pytest.mark.parametrize("shape", [(2, 9, 5, 6, 8), (1, 8, 4, 4, 8)])
def test_3d_results_survive_later_calls(device, spec, shape):
    """The 3-D path's temporaries come from the pool too: a held result stays intact."""
    if device.kind == "simulator" and shape[1] > 8:
        pytest.skip("a few seconds on the simulator for nothing new")
    queue = clconv.runtime(spec).queue
    w = _random((2, 2, 2, 4, 8), 6)
    out = [shape[0], 2 * shape[1], 2 * shape[2], 2 * shape[3], 4]
    first = _random(shape, 7)
    kept = clconv.conv3d_transpose(cl_array.to_device(queue, first), w, out, 2, "VALID")
    want = clconv.conv3d_transpose(first, w, out, 2, "VALID", device=spec)
    for seed in range(3):
        clconv.conv3d_transpose(cl_array.to_device(queue, _random(shape, 20 + seed)), w, out, 2,
                                "VALID")
    np.testing.assert_array_equal(kept.get(), want)


@pytest.mark.parametrize("view", ["depth_step", "width_offset", "swapped_hw", "one_row",
                                  "leading_step"])
def test_contiguous_copies_of_strided_views(device, spec, view):
    """clconv.depth_copies.contiguous_copy against numpy's own slicing: rectangular copies
    of two axes at a time, one per slice where the slice pitch is no multiple of the row
    pitch (a transposed view)."""
    from clconv.depth_copies import contiguous_copy

    queue = clconv.runtime(spec).queue
    host = _random((2, 5, 4, 6, 3), 40)
    whole = cl_array.to_device(queue, host)
    views = {
        "depth_step": (whole[:, ::2], host[:, ::2]),
        "width_offset": (whole[:, :, :, 1:5], host[:, :, :, 1:5]),
        "swapped_hw": (whole.transpose((0, 1, 3, 2, 4)), host.transpose(0, 1, 3, 2, 4)),
        "one_row": (whole[:, 1:2, 2:3], host[:, 1:2, 2:3]),
        "leading_step": (whole[::2, 1:, ::3], host[::2, 1:, ::3]),
    }
    source, expected = views[view]
    out = cl_array.empty(queue, source.shape, source.dtype)
    contiguous_copy(queue, source, out)
    np.testing.assert_array_equal(out.get(), expected)
