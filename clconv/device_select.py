"""Which OpenCL devices exist, what they can do, and which one clconv uses.

One grammar names a device, for ``device=``, ``--device`` and CLCONV_DEVICE
(see ``find_device``): ``P`` or ``P:D`` as pyopencl's PYOPENCL_CTX reads them,
``cpu`` / ``gpu`` / ``accelerator``, a substring that names exactly one
device, or a DeviceInfo, cl.Device, cl.Context or cl.CommandQueue.  Without a
name: the device of ``with device(...)`` in this thread, else
``set_default_device``'s, else CLCONV_DEVICE, else the first GPU, else the best
CPU device; simulators such as Oclgrind are never the default, nor is a device
whose compiler cannot build a one-line kernel here (clconv.compiler_probe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
from dataclasses import dataclass
from typing import Any, Optional, Union

import pyopencl as cl

from clconv import buffer_pool, compiler_probe
from clconv.errors import DeviceNotFoundError, DeviceUnusableError, ForkedProcessError
from clconv.llvm_guard import protect_opencl_runtimes
from clconv.worker_affinity import pinned_pocl_workers

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
        return (f"{self.platform} {self.name} {self.vendor} {self.device_version} "
                f"{self.driver_version}").lower()

    def group_limit(self, axis: int) -> int:
        """The most work-items a group may have along ``axis`` (both device limits)."""
        sizes = self.max_work_item_sizes
        return min(self.max_work_group_size, sizes[axis] if axis < len(sizes) else 1)

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
    """Every device, the default one marked (which may probe compilers, see
    ``_best_that_builds``)."""
    found = list(_enumerate_devices())
    if found:
        best, _ = _best_that_builds(list(enumerate(found)))
        found[best] = (found[best][0], _with_default(found[best][1]))
    return tuple(found)


def _best_that_builds(candidates: list[tuple[int, tuple[cl.Device, DeviceInfo]]]
                      ) -> tuple[int, tuple[cl.Device, DeviceInfo]]:
    """The best-ranked (enumeration index, device) whose compiler works, probed in rank
    order (normally only the first); the best-ranked one if none does, whose use then
    says why."""
    ranked = sorted(candidates, key=lambda m: _default_rank(m[1][1], m[0]))
    return next((m for m in ranked if compiler_probe.compile_problem(m[1][0], m[1][1].spec)
                 is None), ranked[0])


@functools.lru_cache(maxsize=1)
def _enumerate_devices() -> tuple[tuple[cl.Device, DeviceInfo], ...]:
    global _opened_in
    check_process()
    protect_opencl_runtimes()
    _opened_in = os.getpid()
    found: list[tuple[cl.Device, DeviceInfo]] = []
    try:
        with pinned_pocl_workers():  # PoCL starts its CPU worker threads here
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
    return tuple(found)


def enumerated(spec: str) -> Optional[tuple[cl.Device, DeviceInfo]]:
    """The listed device whose spec is exactly ``spec`` ("P:D"), or None: a lookup
    that never raises, for code handed a DeviceInfo that may not be a real one."""
    return next((pair for pair in _enumerate_devices() if pair[1].spec == spec), None)


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
    # Among CPU runtimes the one with more compute units wins; on a tie PoCL, the
    # runtime clconv's CPU kernels are written and measured for (Intel's CPU runtime on
    # a Zen 5 ran multi-phase transposes 10-11x slower: dcgan_g2 246 ms against 22),
    # then the newer driver (measured: PoCL 3.1 runs the same kernel about 2x faster
    # than 3.0; versions of different vendors compare as nothing).
    version = tuple(-v for v in _version_key(info.driver_version))
    not_pocl = "portable computing language" not in info.platform.lower()
    return (kind_rank, -info.compute_units, not_pocl, version, order)


def devices() -> list[DeviceInfo]:
    """Every OpenCL device on this machine; the default one has ``is_default``."""
    check_process()
    return [info for _, info in _enumerate()]


def device_problem(spec: DeviceSpec = None) -> Optional[str]:
    """Why the device ``spec`` names cannot run clconv's kernels here, or None.

    The device's compiler builds a one-line kernel once per process; a runtime whose
    LLVM predates the CPU (pip PoCL 3.0 on AMD family 26) fails that, and clconv then
    neither makes it the default nor runs on it."""
    found_device, info = find_device(spec)
    return compiler_probe.compile_problem(found_device, info.spec)


def _check_usable(found_device: cl.Device, info: DeviceInfo) -> None:
    problem = compiler_probe.compile_problem(found_device, info.spec)
    if problem is not None:
        usable = [i for d, i in _enumerate()
                  if i.spec != info.spec and compiler_probe.compile_problem(d, i.spec) is None]
        others = "; ".join(f"{i.spec} {i.name} ({i.platform}, {i.driver_version})"
                           for i in usable) or "none"
        raise DeviceUnusableError(f"device {info.spec} {info.name} ({info.platform}, "
                                  f"{info.driver_version}) cannot run clconv's kernels: "
                                  f"{problem}.  Devices that can: {others}")


def _describe_all() -> str:
    listed = "; ".join(f"{i.spec} {i.name} ({i.platform}, {i.driver_version})"
                       for i in devices())
    return listed or "no OpenCL device at all"


def _no_match(text: str, why: str = "matches no device") -> DeviceNotFoundError:
    return DeviceNotFoundError(f"device {text!r} {why}; there are: {_describe_all()}")


KIND_WORDS = {"cpu": "CPU", "gpu": "GPU", "accelerator": "accelerator"}

DeviceSpec = Union[None, str, int, "DeviceInfo", cl.Device, cl.Context, cl.CommandQueue]


def _by_index(found, text: str, p_index: int, d_index: Optional[int]):
    """``P`` or ``P:D`` as pyopencl's PYOPENCL_CTX reads them: platform first."""
    in_platform = [pair for pair in found if int(pair[1].spec.split(":")[0]) == p_index]
    if not in_platform:
        raise _no_match(text, f"names platform {p_index}, which does not exist")
    if d_index is None:
        return in_platform[0]
    for pair in in_platform:
        if int(pair[1].spec.split(":")[1]) == d_index:
            return pair
    raise _no_match(text, f"names device {d_index} of platform {p_index}, which has "
                          f"{len(in_platform)} device(s)")


def _resolve_text(found, text: str):
    """The grammar of ``device=``, ``--device`` and CLCONV_DEVICE for a string."""
    compact = text.replace(" ", "")
    if compact.isdigit():
        return _by_index(found, text, int(compact), None)
    parts = compact.split(":")
    if len(parts) == 2 and all(part.isdigit() for part in parts):
        return _by_index(found, text, int(parts[0]), int(parts[1]))
    needle = text.lower()
    if needle in KIND_WORDS:
        kind = KIND_WORDS[needle]
        of_kind = [(i, pair) for i, pair in enumerate(found) if pair[1].kind == kind]
        if not of_kind:
            raise _no_match(text, f"asks for a {kind} device and there is none")
        return _best_that_builds(of_kind)[1]
    matches = [pair for pair in found if needle in pair[1].search_text]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise _no_match(text)
    names = "; ".join(f"{p[1].spec} {p[1].name} ({p[1].platform}, {p[1].driver_version})"
                      for p in matches)
    raise DeviceNotFoundError(f"device {text!r} matches {len(matches)} devices: {names}; "
                              "name one by its P:D index or a longer part of its name")


def find_device(spec: DeviceSpec = None) -> tuple[cl.Device, DeviceInfo]:
    """Resolve ``spec`` to one device.

    ``spec``: None (the device set by ``set_default_device`` / ``with device(...)``,
    else CLCONV_DEVICE, else the default); an int or digit string ``P`` (the first
    device of platform P) or ``P:D``, as pyopencl's PYOPENCL_CTX reads them; ``cpu``,
    ``gpu`` or ``accelerator`` (the preferred device of that kind whose compiler
    works, see ``device_problem``); a case-insensitive
    substring of the platform, device name, vendor, version or driver version that
    names exactly one device; a DeviceInfo, cl.Device, cl.Context or cl.CommandQueue.
    """
    check_process()
    found = _enumerate()
    if not found:
        raise DeviceNotFoundError(
            "no OpenCL device found: install pocl-binary-distribution (pip) for a CPU device"
        )
    if spec is None:
        spec = _chosen_default() or os.environ.get(ENV_DEVICE) or None
    if spec is None:
        return next(pair for pair in found if pair[1].is_default)
    if isinstance(spec, (cl.Context, cl.CommandQueue)):
        spec = spec.devices[0] if isinstance(spec, cl.Context) else spec.device
    if isinstance(spec, cl.Device):
        for pair in found:
            if pair[0] == spec:
                return pair
        raise _no_match(spec.name, "is a cl.Device clconv's platforms do not list")
    if isinstance(spec, DeviceInfo):
        spec = spec.spec
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise TypeError(f"device must be a string, an int, a DeviceInfo, cl.Device, "
                        f"cl.Context or cl.CommandQueue; got {type(spec).__name__}")
    text = str(spec).strip()
    if text == "":
        return next(pair for pair in found if pair[1].is_default)
    return _resolve_text(found, text)


# --------------------------------------------------------------------------- the default

_process_default: DeviceSpec = None


class _ThreadDefaults(threading.local):
    """Each thread's stack of ``with clconv.device(...)`` devices, empty until used (a
    class attribute read rather than a missing one: ``default_token`` runs on every
    call, and a getattr that raises AttributeError costs more than the rest of it)."""

    stack: "tuple | list" = ()  # a list once this thread enters clconv.device(...)


_thread = _ThreadDefaults()


def _chosen_default() -> DeviceSpec:
    stack = _thread.stack
    return stack[-1] if stack else _process_default


def default_token() -> Any:
    """What the default device depends on beyond CLCONV_DEVICE (for memo keys)."""
    chosen = _chosen_default()
    return chosen if chosen is None or isinstance(chosen, (str, int)) else id(chosen)


def set_default_device(spec: DeviceSpec) -> Optional[DeviceInfo]:
    """Make ``spec`` the device of every call that names none, in every thread (None:
    back to CLCONV_DEVICE / the default).  Checked now (DeviceNotFoundError, or
    DeviceUnusableError for a device that builds nothing here); returns its DeviceInfo."""
    global _process_default
    info = None
    if spec is not None:
        found_device, info = find_device(spec)
        _check_usable(found_device, info)
    _process_default = spec
    return info


@contextlib.contextmanager
def device(spec: DeviceSpec):
    """``with clconv.device("pocl 3.1"): ...``: calls in this thread that name no device
    run on ``spec``; nests, and other threads keep theirs.  Yields the DeviceInfo."""
    found_device, info = find_device(spec)
    _check_usable(found_device, info)
    stack = _thread.stack
    if not stack:
        stack = _thread.stack = []
    stack.append(spec)
    try:
        yield info
    finally:
        stack.pop()


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


_runtimes_lock = threading.Lock()


def runtime(spec: DeviceSpec = None) -> Runtime:
    """The shared Runtime of the device that ``spec`` names (created once); for a
    cl.CommandQueue or cl.Context, a Runtime on it."""
    if spec is None:
        spec = _chosen_default()
    if isinstance(spec, cl.CommandQueue):
        return runtime_for_queue(spec)
    found_device, info = find_device(spec)
    _check_usable(found_device, info)
    if isinstance(spec, cl.Context):
        return Runtime(found_device, info, spec, cl.CommandQueue(
            spec, found_device, properties=cl.command_queue_properties.PROFILING_ENABLE))
    with _runtimes_lock:
        if info.spec not in _runtimes:
            shared = _runtimes[info.spec] = Runtime(found_device, info)
            buffer_pool.register(shared.queue, info.max_mem_alloc_size)
        return _runtimes[info.spec]


def runtime_for_queue(queue: cl.CommandQueue) -> Runtime:
    """A Runtime that wraps a caller's queue (for pyopencl.array inputs)."""
    check_process()
    device = queue.device
    for cl_device, info in _enumerate():
        if cl_device == device:
            _check_usable(cl_device, info)
            return Runtime(device, info, queue.context, queue)
    raise DeviceNotFoundError(f"the queue's device {device.name!r} is not among {_describe_all()}")
