"""Keep LLVM-based OpenCL runtimes (PoCL, Oclgrind) working next to TensorFlow.

Why this module exists
----------------------
PoCL and Oclgrind compile OpenCL C with their own copy of LLVM/Clang (Debian's
``libpocl.so.2`` links ``libLLVM-15``/``libclang-cpp``, Oclgrind links
``libLLVM-14``, the pip ``pocl-binary-distribution`` ships a ``libpocl`` with a
statically linked LLVM).  TensorFlow's Python extension is loaded with
``RTLD_GLOBAL`` and ``libtensorflow_framework.so`` / ``libtensorflow_cc.so``
export tens of thousands of ``llvm::`` symbols of a *different* LLVM version.

The OpenCL ICD loader opens the runtime with ``dlopen(RTLD_LOCAL)``.  For a
``RTLD_LOCAL`` library the dynamic linker still searches the *global* scope
first, so once TensorFlow is loaded, the runtime's references to ``llvm::...``
resolve to TensorFlow's LLVM instead of the runtime's own.  Mixing two LLVMs
in one compiler pipeline crashes the process (segfault) or produces errors such
as ``error: unknown target CPU 'skylake-avx512'`` the first time a program is
built.

``RTLD_DEEPBIND`` makes a library (and the dependencies loaded together with
it) look up symbols in its own dependency tree *before* the global scope.  If
we open the runtime libraries with ``RTLD_DEEPBIND | RTLD_NOW`` *before* the
ICD loader does, the loader's later ``dlopen`` of the same file just returns
our already-loaded, deep-bound copy (glibc matches loaded objects by name,
SONAME and file identity), and TensorFlow's LLVM can no longer hijack it,
whatever the import order.

The ICD loader only opens the vendor libraries at the first
``clGetPlatformIDs`` (``pyopencl.get_platforms()``); ``import pyopencl`` alone
does not.  So :func:`protect_opencl_runtimes` must run before the first
platform query.  If a runtime was opened earlier, deep-binding is impossible
after the fact; :func:`conflict_error` then explains the build failure that follows
with a clear :class:`OpenCLRuntimeConflictError`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys

__all__ = [
    "OpenCLRuntimeConflictError",
    "protect_opencl_runtimes",
    "conflict_error",
    "protected_libraries",
]

logger = logging.getLogger(__name__)

#: Basename fragments of ICD libraries that carry their own LLVM.
_LLVM_RUNTIME_MARKERS: tuple[str, ...] = ("pocl", "oclgrind")

#: Basename fragments of TensorFlow libraries that export LLVM symbols globally.
_TF_LLVM_MARKERS: tuple[str, ...] = (
    "libtensorflow_framework",
    "libtensorflow_cc",
    "_pywrap_tensorflow_internal",
)

#: Handles of the libraries we deep-bound.  Kept alive for the life of the
#: process: if a handle were collected the library could be unloaded and the
#: ICD loader would then map a fresh, non-deep-bound copy.
_HANDLES: dict[str, ctypes.CDLL] = {}

_done: bool = False


class OpenCLRuntimeConflictError(RuntimeError):
    """An LLVM-based OpenCL runtime is bound to TensorFlow's LLVM.

    Raised instead of letting the OpenCL compiler crash the process.
    """


def _is_linux() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "RTLD_DEEPBIND")


def _mapped_files() -> set[str]:
    """Return the paths of all files currently mapped into this process."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return {
                parts[5]
                for parts in (line.rstrip("\n").split(maxsplit=5) for line in f)
                if len(parts) == 6
                and parts[5].startswith("/")
                and not parts[5].endswith(" (deleted)")
            }
    except OSError:
        return set()


def _real(path: str) -> str:
    try:
        return os.path.realpath(path)
    except OSError:
        return path


def _tf_llvm_loaded(mapped: set[str] | None = None) -> bool:
    """True if a TensorFlow library that exports LLVM symbols is mapped."""
    mapped = _mapped_files() if mapped is None else mapped
    return any(
        marker in os.path.basename(p) for p in mapped for marker in _TF_LLVM_MARKERS
    )


def _is_llvm_runtime(name: str) -> bool:
    base = os.path.basename(name).lower()
    return any(marker in base for marker in _LLVM_RUNTIME_MARKERS)


def _pyopencl_libs_dir() -> str | None:
    """Directory of the ICD loader/ICDs bundled in pyopencl wheels (no import).

    pyopencl's wheel bundles a patched ocl-icd that, in addition to the usual
    vendor directory, reads ``$PYOPENCL_HOME/.libs/*.icd`` (pyopencl sets
    ``PYOPENCL_HOME`` to its package directory on import).  The bare library
    names in those ``.icd`` files are found through the ``$ORIGIN/.libs``
    RPATH of ``pyopencl/_cl*.so``.
    """
    home = os.environ.get("PYOPENCL_HOME")
    if not home:
        try:
            import importlib.util

            spec = importlib.util.find_spec("pyopencl")
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin:
            return None
        home = os.path.dirname(spec.origin)
    libs = os.path.join(home, ".libs")
    return libs if os.path.isdir(libs) else None


def _read_icd(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            name = f.readline().strip()
    except OSError:
        return None
    return name or None


def _icd_files_in(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names if n.endswith(".icd")]


def _icd_entries() -> list[tuple[str, str | None]]:
    """List ``(library name, directory of the .icd file)`` the loaders would use.

    Mirrors ocl-icd (system and pyopencl's bundled fork) and the Khronos
    loader: ``OCL_ICD_VENDORS`` (a directory, an ``.icd`` file or a library),
    else ``OPENCL_VENDOR_PATH`` or ``/etc/OpenCL/vendors``; plus pyopencl's
    ``.libs`` directory and Khronos' ``OCL_ICD_FILENAMES``.
    """
    entries: list[tuple[str, str | None]] = []
    vendors = os.environ.get("OCL_ICD_VENDORS", "")
    if vendors:
        if os.path.isdir(vendors):
            icds = _icd_files_in(vendors)
        elif vendors.endswith(".icd"):
            icds = [vendors]
        else:
            icds = []
            entries.append((vendors, None))
    else:
        icds = _icd_files_in(os.environ.get("OPENCL_VENDOR_PATH") or "/etc/OpenCL/vendors")
    libs_dir = _pyopencl_libs_dir()
    if libs_dir is not None:
        icds += _icd_files_in(libs_dir)
    for icd in icds:
        name = _read_icd(icd)
        if name:
            entries.append((name, os.path.dirname(icd)))
    for name in os.environ.get("OCL_ICD_FILENAMES", "").split(os.pathsep):
        if name:
            entries.append((name, None))
    return entries


def _resolve(name: str, icd_dir: str | None) -> str:
    """Resolve an ICD library name like the ICD loader's ``dlopen`` would.

    Paths are used as is.  Bare names are first looked up in pyopencl's
    ``.libs`` (reached by the loader through ``_cl*.so``'s RPATH) and next to
    the ``.icd`` file of a bundled ICD; otherwise the bare name is returned
    and ``dlopen`` itself resolves it (``LD_LIBRARY_PATH``, ``ld.so.cache``,
    default directories), exactly as for the loader.
    """
    if "/" in name:
        return name
    libs_dir = _pyopencl_libs_dir()
    for directory in (libs_dir, icd_dir):
        if directory:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                return candidate
    return name


def _deep_load(name: str) -> ctypes.CDLL | None:
    mode = os.RTLD_DEEPBIND | os.RTLD_NOW  # type: ignore[attr-defined]
    try:
        return ctypes.CDLL(name, mode=mode)
    except OSError as exc:  # missing/broken ICD: the loader will skip it too
        logger.debug("llvm_guard: could not pre-load %s: %s", name, exc)
        return None


def _handle_path(handle: ctypes.CDLL) -> str | None:
    """Path of the file behind a ``dlopen`` handle (``dlinfo(RTLD_DI_LINKMAP)``)."""

    class _LinkMap(ctypes.Structure):
        _fields_ = [("l_addr", ctypes.c_void_p), ("l_name", ctypes.c_char_p)]

    try:
        dlinfo = ctypes.CDLL(None).dlinfo
    except (OSError, AttributeError):
        return None
    lm = ctypes.POINTER(_LinkMap)()
    rtld_di_linkmap = 2
    if dlinfo(ctypes.c_void_p(handle._handle), rtld_di_linkmap, ctypes.byref(lm)) != 0:  # noqa: SLF001
        return None
    name = lm.contents.l_name
    return os.fsdecode(name) if name else None


def protect_opencl_runtimes() -> None:
    """Pre-load LLVM-carrying OpenCL runtimes with ``RTLD_DEEPBIND | RTLD_NOW``.

    Call this before the first ``pyopencl.get_platforms()`` (import time of
    the package is the right place).  Idempotent and cheap after the first
    call; a no-op on non-Linux systems, when no PoCL/Oclgrind ICD is
    registered, or when ``CLCONV_NO_LLVM_GUARD=1``.  Never raises: a library
    that cannot be loaded is skipped, as the ICD loader would skip it.

    Libraries already mapped when this runs (someone queried OpenCL platforms
    before us) cannot be fixed after the fact; :func:`conflict_error`
    reports the states in which they would then fail.
    """
    global _done
    if _done:
        return
    _done = True
    if not _is_linux() or os.environ.get("CLCONV_NO_LLVM_GUARD", "") not in ("", "0"):
        return

    mapped_real = {_real(p) for p in _mapped_files()}
    for name, icd_dir in _icd_entries():
        if not _is_llvm_runtime(name):
            continue
        target = _resolve(name, icd_dir)
        if "/" in target:
            if _real(target) in mapped_real or not os.path.isfile(target):
                continue  # too late (already mapped) or absent
        elif any(os.path.basename(p).startswith(target) for p in mapped_real):
            continue
        handle = _deep_load(target)
        if handle is None:
            continue
        path = _handle_path(handle) or target
        _HANDLES[_real(path)] = handle
        logger.debug("llvm_guard: deep-bound %s", path)
        # PoCL's device plugins (libpocl-devices-*.so) reference no LLVM
        # symbols themselves; verified unnecessary to deep-bind them.


def protected_libraries() -> list[str]:
    """Real paths of the runtime libraries this module deep-bound."""
    return list(_HANDLES)


def _unprotected_runtimes(marker: str) -> list[str]:
    """Mapped runtime libraries matching ``marker`` that we did not deep-bind."""
    found = set()
    for p in _mapped_files():
        base = os.path.basename(p).lower()
        if marker in base and ".so" in base and not base.startswith("libpocl-devices-"):
            found.add(_real(p))
    return sorted(found - set(_HANDLES))


def _platform_marker(platform_name: str) -> str | None:
    low = platform_name.lower()
    if "portable computing language" in low or "pocl" in low:
        return "pocl"
    if "oclgrind" in low:
        return "oclgrind"
    return None


_NEEDED_LLVM = re.compile(rb"libLLVM-?(\d+)[\w.]*\.so[\d.]*")


def _shared_llvm_major(lib: str) -> str | None:
    """Major version of the shared ``libLLVM-N.so`` that ``lib`` links, if any.

    Only the start of the file is read: ``.dynstr`` (holding ``DT_NEEDED``
    names) lives in the first loadable segment.
    """
    try:
        with open(lib, "rb") as f:
            head = f.read(4 << 20)
    except OSError:
        return None
    m = _NEEDED_LLVM.search(head)
    return m.group(1).decode() if m else None


_LLVM_IN_VERSION = re.compile(r"LLVM (\d+)")


def conflict_error(platform_name: str, platform_version: str | None = None
                   ) -> OpenCLRuntimeConflictError | None:
    """The error that explains a failed program build on this platform, if the
    TensorFlow/LLVM clash can be its cause; None otherwise.

    The clash is possible when TensorFlow's LLVM is loaded and the platform's
    runtime library (one that links its own shared ``libLLVM``) was opened
    before :func:`protect_opencl_runtimes` could deep-bind it: typically the
    user called ``pyopencl.get_platforms()``, then imported TensorFlow, then
    clconv.  Measured on Debian's PoCL 3.1: the build then fails with
    ``unknown target CPU``.  Deep-binding cannot be applied after the fact, so
    the best clconv can do is say what happened and how to avoid it.
    """
    if not _is_linux() or _platform_marker(platform_name) != "pocl":
        return None
    if not _tf_llvm_loaded():
        return None
    wanted = None
    if platform_version:
        m = _LLVM_IN_VERSION.search(platform_version)
        wanted = m.group(1) if m else None
    for lib in _unprotected_runtimes("pocl"):
        major = _shared_llvm_major(lib)
        if major is None or (wanted is not None and major != wanted):
            continue
        return OpenCLRuntimeConflictError(
            f"OpenCL platform {platform_name!r} ({lib}, LLVM {major}) was opened before "
            "clconv could isolate its LLVM, and TensorFlow, which exports its own "
            "incompatible LLVM, was imported before its first program build: building "
            "OpenCL programs on it fails. Remedy: import clconv before the first "
            "pyopencl.get_platforms() (then the order relative to tensorflow does not "
            "matter), or build an OpenCL program on this platform before importing "
            "tensorflow, or use another device."
        )
    return None
