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
"""

from __future__ import annotations

import re
import threading
import warnings
from typing import Optional

import pyopencl as cl

from clconv import host_cpu
from clconv.llvm_guard import conflict_error

PROBE_SOURCE = "__kernel void clconv_probe(__global int *out) { out[0] = 1; }"

_problems: dict[str, Optional[str]] = {}  # device spec -> why it cannot build, or None
_lock = threading.Lock()


def compile_problem(device: cl.Device, spec: str) -> Optional[str]:
    """Why ``device`` cannot build OpenCL programs, or None; probed once per process."""
    with _lock:
        if spec in _problems:
            return _problems[spec]
    problem = _probe(device)
    with _lock:
        return _problems.setdefault(spec, problem)


def forget() -> None:
    """Probe again on next use (tests that change what the probe builds)."""
    with _lock:
        _problems.clear()


def _probe(device: cl.Device) -> Optional[str]:
    try:
        context = cl.Context([device])
        with warnings.catch_warnings():  # a compiler's remarks on one line of code
            warnings.simplefilter("ignore", cl.CompilerWarning)
            cl.Program(context, PROBE_SOURCE).build()
    except cl.Error as exc:
        platform = device.platform
        if conflict_error(platform.name, platform.version) is not None:
            # Not the device's fault but this process's (TensorFlow's LLVM took over the
            # runtime's): the first real build raises OpenCLRuntimeConflictError, which
            # says how to avoid it.
            return None
        return explain(str(exc))
    return None


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
