"""Ask PoCL to keep each of its CPU worker threads on one CPU.

PoCL's CPU driver runs a launch's work-groups on one worker thread per compute
unit, and Linux places those threads as it places any other.  On a 2-core Zen 3
VM (Debian PoCL 3.1), a 0.8 ms GEMM launch called in a loop ran on one worker in
40-60% of the calls: 1.0 cores busy and twice the time, against 1.9 cores in the
others (the second worker waited on the CPU the first one held).  With the workers
pinned, one CPU each (PoCL's own ``POCL_AFFINITY=1``), 1-3% of the calls.  In
``clconv bench`` beside TensorFlow the cores busy rose from 1.1-2.0 to 1.7-2.0 per
layer, and the worst layer's TF/clconv (odd_c3s2) from 0.47-0.55 to 0.84-0.93.

PoCL reads the variable in each worker thread as the thread starts, during the
process's first ``clGetPlatformIDs``, and pins worker i to CPU i whatever CPUs the
process may use (started with ``taskset -c 1``, it put a worker on CPU 0).  So
clconv sets it only around its own first platform query, only when the user has
not set it (``POCL_AFFINITY=0`` keeps the threads free), and only when the
process may run on every CPU 0 .. n-1.  A program that queried OpenCL platforms
before clconv did keeps the threads it started with.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping, Optional

VARIABLE = "POCL_AFFINITY"
_decision: Optional[str] = None  # what the last pinned_pocl_workers block did, for reports


def should_pin(environ: Mapping[str, str], allowed: Optional[set[int]],
               cpu_count: Optional[int]) -> bool:
    """Whether to ask PoCL for pinned workers: the user left ``POCL_AFFINITY`` unset,
    and the CPUs the process may use (``allowed``; None where the platform cannot
    say) are all of 0 .. ``cpu_count`` - 1, so that PoCL's CPU i is one of them."""
    return _decide(environ, allowed, cpu_count)[0]


def _decide(environ: Mapping[str, str], allowed: Optional[set[int]],
            cpu_count: Optional[int]) -> tuple[bool, str]:
    """(pin or not, the line ``decision`` reports)."""
    if VARIABLE in environ:
        return False, f"as {VARIABLE}={environ[VARIABLE]} says (set outside clconv)"
    if allowed is None or not cpu_count or cpu_count < 2:
        return False, "free"
    if allowed != set(range(cpu_count)):
        return False, f"free (this process may use CPUs {sorted(allowed)} only)"
    return True, f"one CPU each (clconv set {VARIABLE}=1 for its platform query)"


def _allowed_cpus() -> Optional[set[int]]:
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    try:
        return set(getaffinity(0))
    except OSError:
        return None


def decision() -> str:
    """One line for reports: how PoCL's workers were asked to run (``clconv bench``)."""
    return _decision or "no platform query yet"


@contextlib.contextmanager
def pinned_pocl_workers() -> Iterator[bool]:
    """Around a platform query: ``POCL_AFFINITY=1`` while it runs, where
    ``should_pin`` says so; yields whether it was set."""
    global _decision
    pin, _decision = _decide(os.environ, _allowed_cpus(), os.cpu_count())
    if pin:
        os.environ[VARIABLE] = "1"
    try:
        yield pin
    finally:
        if pin:
            os.environ.pop(VARIABLE, None)
