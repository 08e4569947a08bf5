"""Device buffers that come back: one pool per clconv queue, for outputs and temporaries.

Why pool: on a CPU device a new buffer is new memory, and every page of it faults
on first touch.  A 134 MB output cost about 40 ms of a 110 ms conv3d_transpose on
a 2-core Zen 4 VM (Debian PoCL), and 8 of 19 ms of fcn8s_up8; TensorFlow's
allocator hands freed memory out again, and so does this pool (pyopencl's
MemoryPool: a buffer comes back when the last array using it is dropped).

Why per queue: a buffer dropped while commands that use it are still queued is
handed out again only to work on the same in-order queue, which runs after those
commands (the rule of PyTorch's caching allocator for CUDA streams).  So only
clconv's own in-order queues get a pool; arrays on a caller's queue are allocated
as before.  A caller who hands a result to another queue must keep it alive until
that queue is done with it, as with any pooled pyopencl array.

Bounded: once the memory a pool holds unused passes ``HELD_LIMIT`` it is all
given back before the next allocation, and blocks of more than half the device's
largest allocation are never pooled (the pool rounds sizes up).
"""

from __future__ import annotations

import threading
from typing import Optional

import pyopencl as cl
import pyopencl.tools as cl_tools

# The most a pool keeps unused: enough for the largest layers of the benchmark
# suite (a 134 MB output) several times over, small beside a device's memory.
HELD_LIMIT = 1 << 30


class BufferPool:
    """A MemoryPool for one queue, with a lock and a bound on what it holds."""

    def __init__(self, queue: cl.CommandQueue, largest: int) -> None:
        self._context = queue.context
        # Immediate: a buffer is backed when handed out, so running out of memory
        # is an error here, not a failed kernel launch later.
        self._pool = cl_tools.MemoryPool(cl_tools.ImmediateAllocator(queue))
        self._lock = threading.Lock()
        self._largest = largest // 2

    def allocate(self, nbytes: int) -> cl.MemoryObjectHolder:
        """A buffer of at least ``nbytes`` (at least 1) bytes."""
        nbytes = max(int(nbytes), 1)
        if nbytes > self._largest:
            return cl.Buffer(self._context, cl.mem_flags.READ_WRITE, nbytes)
        with self._lock:
            if self.held_bytes() > HELD_LIMIT:
                self._pool.free_held()
            return self._pool.allocate(nbytes)

    def held_bytes(self) -> int:
        """About the bytes held unused (the blocks in use count at their rounded-up size)."""
        return self._pool.managed_bytes - self._pool.active_bytes

    def held_blocks(self) -> int:
        return self._pool.held_blocks

    def free_held(self) -> None:
        with self._lock:
            self._pool.free_held()


_pools: dict[int, tuple[cl.CommandQueue, BufferPool]] = {}
_pools_lock = threading.Lock()


def register(queue: cl.CommandQueue, max_alloc: int) -> None:
    """Give ``queue`` (one of clconv's own in-order queues) a pool."""
    if queue.properties & cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE:
        return  # commands may overtake each other: a reused buffer could be in use
    with _pools_lock:
        if queue.int_ptr not in _pools:
            _pools[queue.int_ptr] = (queue, BufferPool(queue, max_alloc))


def for_queue(queue: cl.CommandQueue) -> Optional[BufferPool]:
    """The pool of ``queue``, or None for a queue clconv does not own."""
    entry = _pools.get(queue.int_ptr)
    return entry[1] if entry is not None else None


def allocator(queue: cl.CommandQueue):
    """What ``pyopencl.array.empty(..., allocator=)`` takes for ``queue``: its pool's
    allocate, or None (a plain buffer)."""
    pool = for_queue(queue)
    return pool.allocate if pool is not None else None


def free_held() -> None:
    """``clconv.release_memory()``: give back the device memory clconv's pools hold
    unused (results still referenced stay; they return to the pool when dropped)."""
    with _pools_lock:
        pools = [pool for _, pool in _pools.values()]
    for pool in pools:
        pool.free_held()
