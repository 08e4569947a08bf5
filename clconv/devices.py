"""Which OpenCL devices exist, what they can do, and which one clconv uses.

A device is named by ``device=`` or ``CLCONV_DEVICE``: either ``P:D``
(platform and device indices, as ``clconv devices`` prints them) or a
case-insensitive substring of the platform and device names (``pocl``,
``oclgrind``, ``nvidia``).  Without a name clconv takes the first GPU, else
the best CPU device; simulators such as Oclgrind are never the default.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Optional

import pyopencl as cl

from clconv.errors import DeviceNotFoundError, ForkedProcessError
from clconv.llvm_guard import protect_opencl_runtimes

ENV_DEVICE = "CLCONV_DEVICE"
_SIMULATORS = ("oclgrind",)


@dataclass(frozen=True)
class DeviceInfo:
    """One OpenCL device and the capabilities that matter to clconv."""

    spec: str  # "P:D", accepted by device=
    platform: str
    name: str
    vendor: str
    kind: str  # "GPU", "CPU", "simulator", "accelerator", "other"
    opencl_c_version: str
    device_version: str
    driver_version: str
    fp64: bool
    fp16: bool
    max_work_group_size: int
    max_work_item_sizes: tuple[int, ...]
    local_mem_size: int
    compute_units: int
    max_mem_alloc_size: int
    preferred_float_vector_width: int
    is_default: bool = False

    @property
    def search_text(self) -> str:
        """What a name substring is matched against (PoCL names itself only in versions)."""
        return f"{self.platform} {self.name} {self.vendor} {self.device_version}".lower()

    @property
    def label(self) -> str:
        return f"[{self.spec}] {self.name} ({self.platform}, {self.driver_version})"


def _kind_of(device: cl.Device, platform: cl.Platform) -> str:
    text = f"{platform.name} {device.name}".lower()
    if any(sim in text for sim in _SIMULATORS):
        return "simulator"  # Oclgrind reports every type bit; it is neither fast nor a GPU
    if device.type & cl.device_type.GPU:
        return "GPU"
    if device.type & cl.device_type.CPU:
        return "CPU"
    if device.type & cl.device_type.ACCELERATOR:
        return "accelerator"
    return "other"


def _opencl_c_version(device: cl.Device) -> str:
    try:
        return device.opencl_c_version.strip()
    except cl.Error:  # pragma: no cover - OpenCL 1.0 devices lack the query
        return "OpenCL C 1.0"


# --------------------------------------------------------------------------- fork
# OpenCL runtimes do not survive fork(): PoCL's worker threads and every driver's
# context state stay behind in the parent, and a child's first OpenCL call waits
# for them forever (measured: both PoCLs hang in the first op or even in
# clGetPlatformIDs).  So clconv remembers which process opened OpenCL, and in a
# forked child every entry point raises ForkedProcessError instead of hanging.

_opened_in: Optional[int] = None  # pid of the process that opened the OpenCL platforms
_inherited_from: Optional[int] = None  # in a forked child: that parent's pid


def _after_fork_in_child() -> None:
    global _inherited_from
    if _opened_in is not None and _opened_in != os.getpid():
        _inherited_from = _opened_in


os.register_at_fork(after_in_child=_after_fork_in_child)


def check_process() -> None:
    """Raise ForkedProcessError in a child forked after OpenCL was opened (cheap)."""
    if _inherited_from is not None:
        raise ForkedProcessError(
            f"this process (pid {os.getpid()}) was forked from process {_inherited_from} after "
            "that process had opened OpenCL; OpenCL runtimes do not survive fork(), and any "
            "OpenCL call here would hang.  Start worker processes with the 'spawn' or "
            "'forkserver' method (multiprocessing.get_context('spawn'), or "
            "concurrent.futures.ProcessPoolExecutor(mp_context=...)), or fork before the "
            "parent first uses clconv."
        )


@functools.lru_cache(maxsize=1)
def _enumerate() -> tuple[tuple[cl.Device, DeviceInfo], ...]:
    global _opened_in
    check_process()
    protect_opencl_runtimes()
    _opened_in = os.getpid()
    found: list[tuple[cl.Device, DeviceInfo]] = []
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader found no platform at all
        platforms = []
    for p_index, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        for d_index, device in enumerate(devices):
            info = DeviceInfo(
                spec=f"{p_index}:{d_index}",
                platform=platform.name.strip(),
                name=device.name.strip(),
                vendor=device.vendor.strip(),
                kind=_kind_of(device, platform),
                opencl_c_version=_opencl_c_version(device),
                device_version=device.version.strip(),
                driver_version=device.driver_version.strip(),
                fp64="cl_khr_fp64" in device.extensions or bool(device.double_fp_config),
                fp16="cl_khr_fp16" in device.extensions,
                max_work_group_size=int(device.max_work_group_size),
                max_work_item_sizes=tuple(int(s) for s in device.max_work_item_sizes),
                local_mem_size=int(device.local_mem_size),
                compute_units=int(device.max_compute_units),
                max_mem_alloc_size=int(device.max_mem_alloc_size),
                preferred_float_vector_width=int(device.preferred_vector_width_float),
            )
            found.append((device, info))
    if found:
        best = min(range(len(found)), key=lambda i: _default_rank(found[i][1], i))
        found[best] = (found[best][0], _with_default(found[best][1]))
    return tuple(found)


def _with_default(info: DeviceInfo) -> DeviceInfo:
    return dataclasses.replace(info, is_default=True)


def _version_key(text: str) -> tuple[int, ...]:
    digits = []
    for token in text.replace("-", " ").replace("+", " ").split():
        parts = token.split(".")
        if all(p.isdigit() for p in parts if p) and parts[0].isdigit():
            digits = [int(p) for p in parts if p]
            break
    return tuple(digits)


def _default_rank(info: DeviceInfo, order: int) -> tuple:
    """Smaller is better: GPUs first (in enumeration order), then CPUs."""
    kind_rank = {"GPU": 0, "CPU": 1, "accelerator": 2, "other": 3, "simulator": 4}[info.kind]
    if info.kind == "GPU":
        return (kind_rank, order)
    # Among CPU runtimes the one with more compute units wins; on a tie the newer
    # driver (measured: PoCL 3.1 runs the same kernel about 2x faster than 3.0).
    version = tuple(-v for v in _version_key(info.driver_version))
    return (kind_rank, -info.compute_units, version, order)


def devices() -> list[DeviceInfo]:
    """Every OpenCL device on this machine; the default one has ``is_default``."""
    check_process()
    return [info for _, info in _enumerate()]


def _describe_all() -> str:
    listed = "; ".join(f"{i.spec} {i.name} ({i.platform})" for i in devices())
    return listed or "no OpenCL device at all"


def _no_match(text: str) -> DeviceNotFoundError:
    return DeviceNotFoundError(f"device {text!r} matches no device; there are: {_describe_all()}")


def find_device(spec: Optional[str] = None) -> tuple[cl.Device, DeviceInfo]:
    """Resolve ``spec`` (or ``CLCONV_DEVICE``, or the default) to one device."""
    check_process()
    found = _enumerate()
    if not found:
        raise DeviceNotFoundError(
            "no OpenCL device found: install pocl-binary-distribution (pip) for a CPU device"
        )
    if spec is None:
        spec = os.environ.get(ENV_DEVICE) or None
    if spec is None or str(spec).strip() == "":
        return next(pair for pair in found if pair[1].is_default)
    text = str(spec).strip()
    if ":" in text and all(part.strip().isdigit() for part in text.split(":", 1)):
        for pair in found:
            if pair[1].spec == text.replace(" ", ""):
                return pair
        raise _no_match(text)
    needle = text.lower()
    matches = [
        (i, pair)
        for i, pair in enumerate(found)
        if needle in pair[1].search_text
    ]
    if not matches:
        raise _no_match(text)
    return min(matches, key=lambda m: _default_rank(m[1][1], m[0]))[1]


class Runtime:
    """A context and an in-order, profiling-enabled queue on one device."""

    def __init__(self, device: cl.Device, info: DeviceInfo,
                 context: Optional[cl.Context] = None,
                 queue: Optional[cl.CommandQueue] = None) -> None:
        self.device = device
        self.info = info
        self.context = context if context is not None else cl.Context([device])
        self.queue = queue if queue is not None else cl.CommandQueue(
            self.context, device, properties=cl.command_queue_properties.PROFILING_ENABLE
        )


_runtimes: dict[str, Runtime] = {}


def runtime(spec: Optional[str] = None) -> Runtime:
    """The shared Runtime of the device that ``spec`` names (created once)."""
    device, info = find_device(spec)
    if info.spec not in _runtimes:
        _runtimes[info.spec] = Runtime(device, info)
    return _runtimes[info.spec]


def runtime_for_queue(queue: cl.CommandQueue) -> Runtime:
    """A Runtime that wraps a caller's queue (for pyopencl.array inputs)."""
    check_process()
    device = queue.device
    for cl_device, info in _enumerate():
        if cl_device == device:
            return Runtime(device, info, queue.context, queue)
    raise DeviceNotFoundError(f"the queue's device {device.name!r} is not among {_describe_all()}")
