"""Build OpenCL programs from the shipped sources and cache them per context.

Tunables reach a kernel only as ``-D NAME=value`` options.  A program is keyed
on its context, the source file and the sorted options, and each cl.Kernel is
used through TypedKernel objects that each plan owns; pyopencl keeps compiled
binaries on disk across processes.  The program cache is bounded (LRU,
MAX_PROGRAMS): each tuned configuration is a program of its own.
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading
import warnings
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np
import pyopencl as cl

from clconv import host_cpu
from clconv.errors import KernelBuildError
from clconv.llvm_guard import conflict_error
from clconv.resources import kernel_source

if TYPE_CHECKING:
    from clconv.device_select import DeviceInfo

COMMON_HEADER = "common.cl"

MAX_PROGRAMS = 256  # programs kept per process, least recently used dropped first

_lock = threading.Lock()
_programs: "collections.OrderedDict[tuple, cl.Program]" = collections.OrderedDict()


def full_source(source_name: str) -> str:
    """The common header followed by one algorithm's file, as the compiler sees it."""
    return kernel_source(COMMON_HEADER) + "\n" + kernel_source(source_name)


def source_hash(source_name: str) -> str:
    """A short digest of what gets compiled; the tuning database keys on it."""
    return hashlib.sha256(full_source(source_name).encode()).hexdigest()[:16]


def dtype_defines(dtype: np.dtype) -> dict[str, str]:
    """The REAL/ACC macros for a tensor dtype (half accumulates in float)."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return {"REAL": "double", "ACC": "double", "REAL_IS_DOUBLE": "1"}
    if dtype == np.float16:
        return {"REAL": "half", "ACC": "float", "REAL_IS_HALF": "1"}
    return {"REAL": "float", "ACC": "float"}


def build_options(defines: Mapping[str, object]) -> list[str]:
    """``-D`` options in a stable order, so equal configurations share one program."""
    return ["-cl-std=CL1.2"] + [f"-D{name}={defines[name]}" for name in sorted(defines)]


def _device_options(context: cl.Context) -> list[str]:
    """Options a device needs whatever the kernel.

    Oclgrind's uninitialised-value checker (OCLGRIND_UNINITIALIZED) aborts on
    the LLVM ``freeze`` instruction that optimisation introduces for paired
    ``/`` and ``%``; unoptimised code is also what the checks should see.
    """
    if "oclgrind" in context.devices[0].platform.name.lower():
        return ["-cl-opt-disable"]
    return []


def get_program(context: cl.Context, source_name: str, defines: Mapping[str, object]) -> cl.Program:
    """Build (or fetch from the cache) ``kernels/<source_name>`` with ``defines``."""
    options = build_options(defines) + _device_options(context)
    key = (context.int_ptr, source_name, tuple(options))
    with _lock:
        program = _programs.get(key)
        if program is not None:
            _programs.move_to_end(key)
            return program
    source = full_source(source_name)
    try:
        with warnings.catch_warnings():
            # PoCL prints harmless notes into the build log; pyopencl turns them into warnings.
            warnings.simplefilter("ignore", cl.CompilerWarning)
            program = cl.Program(context, source).build(options=options)
    except cl.RuntimeError as exc:
        platform = context.devices[0].platform
        clash = conflict_error(platform.name, platform.version)
        if clash is not None:
            raise clash from exc
        raise KernelBuildError(
            f"building {source_name} with {' '.join(options)} failed on "
            f"{', '.join(d.name for d in context.devices)}:\n{exc}"
        ) from exc
    with _lock:
        _programs[key] = program
        while len(_programs) > MAX_PROGRAMS:
            _programs.popitem(last=False)
    return program


GPU_GROUP = 64  # work-items of a GPU group clconv picks: an AMD wave, two NVIDIA warps


def ndrange(work: Sequence[int], local: Optional[Sequence[int]], kind: str = "CPU",
            axis: int = 0, max_group: int = GPU_GROUP, units: int = 1,
            weight_major: bool = False, slice_bytes: int = 0, cache_bytes: int = 0
            ) -> tuple[tuple[int, ...], Optional[tuple[int, ...]]]:
    """(global size, local size) of a launch over ``work`` items.  OpenCL 1.2 needs the
    global size to be a multiple of the work-group size, so with a ``local`` shape
    (truncated or padded with 1s to the range's dimensions) the range is rounded up;
    kernels return early for items past ``work``.

    Without a ``local`` shape a CPU launch gets clconv's groups (``cpu_local_size``,
    for ``units`` compute units; ``weight_major``, ``slice_bytes``, ``cache_bytes``:
    see there), but a GPU never launches with a NULL local size: its runtime must then
    pick a divisor of the global size, which for a prime count of tiles is a group of
    one or a few work-items (a few percent of a wave).  There a group of GPU_GROUP (at
    most ``max_group``) work-items is laid along ``axis``, the dimension the kernel
    checks its bounds in.
    """
    if not local and kind == "GPU":
        local = [1] * len(work)
        local[axis] = max(1, min(GPU_GROUP, max_group))
    if not local and kind == "CPU" and CPU_GROUPING:
        local = cpu_local_size(work, axis, max_group, units, weight_major, slice_bytes,
                               cache_bytes)
    if not local:
        return tuple(int(n) for n in work), None
    local = tuple(int(v) for v in local[: len(work)]) + (1,) * (len(work) - len(local))
    return tuple(-(-int(n) // size) * size for n, size in zip(work, local)), local


def launch_range(info: "DeviceInfo", work: Sequence[int], local: Optional[Sequence[int]],
                 axis: int = 0, weight_major: bool = False, slice_bytes: int = 0
                 ) -> tuple[tuple[int, ...], Optional[tuple[int, ...]]]:
    """``ndrange`` on the device ``info`` describes: its kind, its group limit along
    ``axis`` (the dimension the kernel checks its bounds in), its compute units and,
    for a CPU, the size of one core's cache (clconv.host_cpu: a CPU device is this
    machine's CPU)."""
    cache_bytes = 0
    if info.kind == "CPU" and slice_bytes:
        cache_bytes = host_cpu.core_cache_bytes() or DEFAULT_CORE_CACHE_BYTES
    return ndrange(work, local, info.kind, axis=axis, max_group=info.group_limit(axis),
                   units=info.compute_units, weight_major=weight_major,
                   slice_bytes=slice_bytes, cache_bytes=cache_bytes)


CPU_GROUPING = True  # False: leave every CPU launch's group to the runtime (A/B runs)
# Below this many work-items a launch is a few microseconds of work: one group on one
# thread beats waking the others (a 1x8x8x16 conv2d's 11 GEMM tiles).
CPU_SPLIT_MIN_ITEMS = 256
# Groups per compute unit (clconv's groups, see cpu_local_size): the last chunks PoCL
# deals out are then a few groups, so a thread that starts late is caught up.
GROUPS_PER_UNIT = 128
MIN_GROUPS_PER_UNIT = 32  # fewer, and stride phases are not grouped
# Work-items per CPU group at most: longer groups gained nothing measurable (a group
# of 128 against one of 32: 0.96x the time), and a runtime may build a kernel for a
# smaller group than its device's maximum (CL_KERNEL_WORK_GROUP_SIZE).
CPU_MAX_GROUP = 1024
# A weight-major launch takes groups of one channel block when there are at least this
# many blocks per compute unit (fewer, and the threads would not balance), and at most
# this many pixels (16 ran 0.86-1.0x the time of 64 on four batch-1 transposes).
WEIGHT_MAJOR_MIN_BLOCKS = 4
WEIGHT_MAJOR_PIXELS = 16
# A group whose pixel tiles each read more filter than this share of one core's cache
# (the rest holds their input rows and outputs) reads it from the next level for every
# pixel tile: such launches take groups of one channel tile instead (cpu_local_size).
CACHE_SHARE_FOR_FILTER = 0.75
# Fewer pixel tiles a group, and the panel's reuse no longer pays for the groups.
PANEL_MIN_PIXEL_TILES = 4
# One core's cache where the host's cannot be read: Zen 4's and Skylake-SP's L2.
DEFAULT_CORE_CACHE_BYTES = 1 << 20


def cpu_local_size(work: Sequence[int], axis: int, max_group: int, units: int = 1,
                   weight_major: bool = False, slice_bytes: int = 0, cache_bytes: int = 0
                   ) -> Optional[tuple[int, ...]]:
    """The work-group shape clconv gives a CPU runtime instead of a NULL local size, or
    None to leave the choice to the runtime.

    A CPU runtime runs each work-group on one thread, and PoCL's threads take a
    launch's groups in chunks of up to 1/threads of those left (at most 64 or 512),
    so a launch of a few groups is split between the threads before either has
    started.  PoCL's own choice for a NULL local size is the largest group that
    divides the range, split only until there is one group per compute unit:
    hifigan_res_k7's 8 x 342 GEMM tiles ran as one group, on one of two cores (1.01
    cores busy against 1.9); resnet_3x3_fwd's 2 x 4,182 as three, 1.48 cores (a
    thread that starts late, or shares its core, leaves the other nothing to take
    over).  Where the range has odd sizes PoCL drops to groups of one pixel tile.

    So each group here holds, for some pixel tiles along ``axis``, every index of the
    other dimensions that fits: the channel tiles along dimension 0 and, in a GEMM's
    range, the stride phases along dimension 2.  They read the same input rows: a
    transpose whose four 1x1 phases ran in groups of one phase took 1.4-1.5x as long
    as with all four in a group.  The phases stay apart where grouping them would
    leave fewer than MIN_GROUPS_PER_UNIT groups per compute unit (a 1-D transpose of
    43 pixel tiles and 8 phases: 1.65 ms on 1.4 cores grouped, 1.33 ms on 1.8 apart).
    The pixel tiles per group make about GROUPS_PER_UNIT groups per compute unit:
    enough that the last chunks dealt out are small, with a group's start-up (about
    a microsecond) still negligible.  Tiny ranges (CPU_SPLIT_MIN_ITEMS) and ranges
    without a pixel axis stay with the runtime.

    ``weight_major``: a launch whose filter outweighs its activations (a batch-1
    transpose from a 4x4 dy through an 8 MB filter) groups the other way: one channel
    block (dimension 0) and up to CPU_MAX_GROUP pixels a group, so the block's slice of
    the filter stays in cache for all of them, where a group of every block at one
    pixel streamed the whole filter again for each pixel.  backprop_direct, Zen 5, Debian
    PoCL, six alternated rounds, groups of 16 pixels against clconv's usual ones:
    gan_tiny_b1 0.85 / 1.14 and 0.91 / 1.38 ms in two runs, a 1x2x2x1024 -> 512 k4 s2
    transpose 1.33 / 1.92 and 0.83 / 1.19 ms, a 1x4x4x256 -> 128 one 0.27 / 0.29 ms.

    ``slice_bytes``: the filter one index of the other dimensions reads (a GEMM's
    panel of one channel tile in one stride phase).  Where the group above would have
    each of its pixel tiles read more than CACHE_SHARE_FOR_FILTER of ``cache_bytes``
    (one core's cache) of it, each pixel tile streams that filter from the next cache
    level again; a group of one channel tile and one phase over WEIGHT_MAJOR_PIXELS
    pixel tiles keeps its panel in cache for all of them (fewer pixel tiles where that
    would leave under MIN_GROUPS_PER_UNIT groups per compute unit; under
    PANEL_MIN_PIXEL_TILES, the usual groups).  GEMM, Intel Xeon with AMX (family 6
    model 167, 2 MB L2), Debian PoCL, five alternated rounds, time against the
    usual groups: dcgan_g2 (12.5 MB of filter) 0.52, deeplab_3x3_d2_fwd (2.25 MB)
    0.63, vgg_conv3 (2.25 MB) 0.75, pix2pix_up and unet_up2x2 (2 MB, four phases)
    0.87-0.90, bwd_5x5 (1.76 MB) 0.87; below the share, 0.95-1.09 (stylegan_up, 1.1 MB:
    1.08).  Groups of 32 or 64 pixel tiles ran 0.95-1.02x the time of 16.
    """
    items = math.prod(int(n) for n in work)
    if axis == 0 or items < CPU_SPLIT_MIN_ITEMS:
        return None
    max_group = min(max_group, CPU_MAX_GROUP)
    if weight_major and int(work[0]) >= WEIGHT_MAJOR_MIN_BLOCKS * max(1, units):
        return _one_block_over_pixels(len(work), axis,
                                      max(1, min(int(work[axis]), max_group)))
    pixel_tiles = int(work[axis])
    local = [1] * len(work)
    for dim in range(len(work)):
        if dim == axis or math.prod(local) * int(work[dim]) > max_group:
            continue
        groups = items // math.prod(local) // int(work[dim])  # with one pixel tile each
        if dim == 0 or groups >= MIN_GROUPS_PER_UNIT * max(1, units):
            local[dim] = int(work[dim])
    groups_per_pixel_tile = items // pixel_tiles // math.prod(local)
    per_group = pixel_tiles * groups_per_pixel_tile // (GROUPS_PER_UNIT * max(1, units))
    local[axis] = max(1, min(pixel_tiles, max_group // math.prod(local), per_group))
    filter_per_tile = slice_bytes * (math.prod(local) // local[axis])
    if cache_bytes and filter_per_tile > CACHE_SHARE_FOR_FILTER * cache_bytes:
        pixels = min(pixel_tiles, max_group, items // (MIN_GROUPS_PER_UNIT * max(1, units)))
        if min(pixels, WEIGHT_MAJOR_PIXELS) >= PANEL_MIN_PIXEL_TILES:
            return _one_block_over_pixels(len(work), axis, pixels)
    return tuple(local)


def _one_block_over_pixels(dims: int, axis: int, pixels: int) -> tuple[int, ...]:
    """A group of one index of every other dimension (one channel block, one phase)
    over ``pixels`` pixel tiles along ``axis``, at most WEIGHT_MAJOR_PIXELS."""
    local = [1] * dims
    local[axis] = min(pixels, WEIGHT_MAJOR_PIXELS)
    return tuple(local)


# An element offset or stride in a kernel's argument types: int32, or int64 in a build
# with INDEX_64 (common.cl's IDX), for tensors past 2^31 - 1 elements.
INDEX = "index"


class TypedKernel:
    """A cl.Kernel owned by one plan, with its scalar argument types declared once.

    pyopencl's Kernel holds its arguments as state, so two threads that set
    arguments and enqueue on one Kernel can launch each other's arguments: the
    lock covers exactly set-args + enqueue, nothing else.  Declared scalar types
    (``set_scalar_arg_dtypes``) make set-args about 70x cheaper than inferring
    them from numpy scalars.
    """

    def __init__(self, context: cl.Context, source_name: str, kernel_name: str,
                 defines: Mapping[str, object], arg_types: Optional[Sequence[object]]) -> None:
        self.name = kernel_name
        self.defines = dict(defines)  # what it was built with
        self.kernel = cl.Kernel(get_program(context, source_name, defines), kernel_name)
        if arg_types is not None:  # None: a kernel only built and inspected
            index = np.int64 if defines.get("INDEX_64") else np.int32
            self.kernel.set_scalar_arg_dtypes(
                [index if kind is INDEX else kind for kind in arg_types])
        self._lock = threading.Lock()

    def work_group_info(self, device: cl.Device) -> dict[str, int]:
        """The limits only the built kernel knows, by their search-space names."""
        info = cl.kernel_work_group_info
        return {
            "kernel_work_group_size": self.kernel.get_work_group_info(info.WORK_GROUP_SIZE,
                                                                      device),
            "kernel_local_mem_size": self.kernel.get_work_group_info(info.LOCAL_MEM_SIZE,
                                                                     device),
            "kernel_preferred_work_group_size_multiple": self.kernel.get_work_group_info(
                info.PREFERRED_WORK_GROUP_SIZE_MULTIPLE, device),
        }

    def enqueue(self, queue: cl.CommandQueue, global_size: Sequence[int],
                local_size: Optional[Sequence[int]], args: Sequence) -> cl.Event:
        with self._lock:
            self.kernel.set_args(*args)
            return cl.enqueue_nd_range_kernel(queue, self.kernel, global_size, local_size)
