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
    if VARIABLE in environ or allowed is None or not cpu_count or cpu_count < 2:
        return False
    return allowed == set(range(cpu_count))


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


def _describe(pin: bool, allowed: Optional[set[int]]) -> str:
    if pin:
        return f"one CPU each (clconv set {VARIABLE}=1 for its platform query)"
    if VARIABLE in os.environ:
        return f"as {VARIABLE}={os.environ[VARIABLE]} says (set outside clconv)"
    if allowed is not None and allowed != set(range(os.cpu_count() or 0)):
        return f"free (this process may use CPUs {sorted(allowed)} only)"
    return "free"


@contextlib.contextmanager
def pinned_pocl_workers() -> Iterator[bool]:
    """Around a platform query: ``POCL_AFFINITY=1`` while it runs, where
    ``should_pin`` says so; yields whether it was set."""
    global _decision
    allowed = _allowed_cpus()
    pin = should_pin(os.environ, allowed, os.cpu_count())
    _decision = _describe(pin, allowed)
    if pin:
        os.environ[VARIABLE] = "1"
    try:
        yield pin
    finally:
        if pin:
            os.environ.pop(VARIABLE, None)
