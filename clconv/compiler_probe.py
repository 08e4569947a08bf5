"""Whether a device's OpenCL C compiler works at all on this machine.

A runtime can list a device and still be unable to build any program on it.
Measured on a 2-core AMD EPYC of family 26 (Zen 5): the pip PoCL 3.0 (LLVM 14,
the embedded default) asks LLVM for the host CPU, LLVM 14 does not know that
family and answers "generic", which PoCL's distro build passes on as
``-target-cpu generic`` and Clang 14 rejects: every build fails with
``unknown target CPU 'generic'``.  Debian's PoCL 3.1 on the same machine
compiles for its ``skylake-avx512`` variant and works.

So before clconv makes a device its default, or hands a device out, it builds a
one-line kernel there once per process: a few milliseconds once PoCL has the
binary in its cache, and the compiler start-up the first real build would pay
anyway.  A device that fails is never the default and is refused with the
reason, instead of failing later inside a conv with the compiler's own words.

The same build says which x86 vector ISA the compiler targets, which need not be
what the device reports: on a Zen 4 (family 25 model 17) the pip PoCL 3.0 reports
16-wide float vectors (it picks its AVX-512 kernel library from the CPU's
features) but compiles with ``-target-cpu znver3``, LLVM 14's name for every
family 25 core: AVX2 code with 16 ymm registers (its objects use ymm0-15 only).
Clang defines ``__AVX512F__``, ``__AVX__`` and ``__SSE2__`` for the target it
compiles for, so the probe's kernel is named after the widest one defined
(``compiled_vector_width``): no launch, only the program's kernel names.
"""

from __future__ import annotations

import re
import threading
import warnings
from typing import Optional

import pyopencl as cl

from clconv import host_cpu
from clconv.llvm_guard import conflict_error

# One kernel, named after the widest x86 vector ISA the compiler targets (none of
# these macros on GPUs or Oclgrind's SPIR).
PROBE_SOURCE = """
#if defined(__AVX512F__)
#define PROBE_NAME clconv_probe_x86_16
#elif defined(__AVX__)
#define PROBE_NAME clconv_probe_x86_8
#elif defined(__SSE2__)
#define PROBE_NAME clconv_probe_x86_4
#else
#define PROBE_NAME clconv_probe
#endif
__kernel void PROBE_NAME(__global int *out) { out[0] = 1; }
"""
_WIDTH_OF_KERNEL = {"clconv_probe_x86_16": 16, "clconv_probe_x86_8": 8, "clconv_probe_x86_4": 4}

_problems: dict[str, Optional[str]] = {}  # device spec -> why it cannot build, or None
_widths: dict[str, Optional[int]] = {}  # device spec -> compiled float vector width
_lock = threading.Lock()


def compile_problem(device: cl.Device, spec: str) -> Optional[str]:
    """Why ``device`` cannot build OpenCL programs, or None; probed once per process."""
    with _lock:
        if spec in _problems:
            return _problems[spec]
    problem, width = _probe(device)
    with _lock:
        _widths.setdefault(spec, width)
        return _problems.setdefault(spec, problem)


def compiled_vector_width(device: cl.Device, spec: str) -> Optional[int]:
    """The float vector width of the x86 ISA ``device``'s compiler targets: 16 for
    AVX-512, 8 for AVX/AVX2, 4 for SSE2; None where it targets none of them (GPUs,
    simulators) or cannot build.  Probed with ``compile_problem``, once per process."""
    compile_problem(device, spec)
    with _lock:
        return _widths.get(spec)


def forget() -> None:
    """Probe again on next use (tests that change what the probe builds)."""
    with _lock:
        _problems.clear()
        _widths.clear()


def _probe(device: cl.Device) -> tuple[Optional[str], Optional[int]]:
    """Why the device cannot build (or None), and its compiled vector width."""
    try:
        context = cl.Context([device])
        with warnings.catch_warnings():  # a compiler's remarks on one line of code
            warnings.simplefilter("ignore", cl.CompilerWarning)
            program = cl.Program(context, PROBE_SOURCE).build()
        names = program.get_info(cl.program_info.KERNEL_NAMES).split(";")
    except cl.Error as exc:
        platform = device.platform
        if conflict_error(platform.name, platform.version) is not None:
            # Not the device's fault but this process's (TensorFlow's LLVM took over the
            # runtime's): the first real build raises OpenCLRuntimeConflictError, which
            # says how to avoid it.
            return None, None
        return explain(str(exc)), None
    return None, next((_WIDTH_OF_KERNEL[n] for n in names if n in _WIDTH_OF_KERNEL), None)


def explain(build_error: str) -> str:
    """A reason a user can act on, from a failed probe build's message."""
    lines = [line.strip() for line in build_error.splitlines() if line.strip()]
    unknown_cpu = re.search(r"unknown target CPU '([^']*)'", build_error)
    if unknown_cpu:
        return (f"its compiler does not know this machine's CPU, {host_cpu.describe()}: every "
                f"build fails with \"unknown target CPU '{unknown_cpu.group(1)}'\" (its LLVM is "
                "older than the CPU).  Use another device, or install an OpenCL runtime that knows "
                "the CPU: as root, `apt-get install pocl-opencl-icd` (Debian's PoCL 3.1); "
                "without root, Intel's CPU runtime from pip (see the README's Devices)")
    detail = next((line for line in lines if "error" in line.lower()),
                  lines[-1] if lines else "no message")
    return f"it cannot build a one-line OpenCL kernel: {detail}"
