"""PoCL's CPU workers pinned one CPU each (clconv.worker_affinity), only where asked.

Checked: the rule (the user's own POCL_AFFINITY wins; a process limited to some
CPUs is left alone, since PoCL would pin worker i to CPU i regardless); and, in
fresh processes that import clconv and list its devices, the threads' CPU sets:
pinned workers by default, none with POCL_AFFINITY=0, none outside the CPUs of a
process limited to one CPU, and the variable gone from the environment afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clconv import worker_affinity
from conftest import DEVICES

ALL = {0, 1, 2, 3}


@pytest.mark.parametrize("environ, allowed, cpu_count, expected", [
    ({}, ALL, 4, True),
    ({"POCL_AFFINITY": "0"}, ALL, 4, False),  # the user's choice
    ({"POCL_AFFINITY": "1"}, ALL, 4, False),  # already set: nothing to add
    ({}, {1, 2, 3}, 4, False),  # taskset / cpuset: PoCL would pin a worker to CPU 0
    ({}, {0, 1}, 4, False),
    ({}, None, 4, False),  # no sched_getaffinity on this platform
    ({}, {0}, 1, False),  # one CPU: nothing to gain
    ({}, ALL, None, False),
])
def test_pinning_rule(environ, allowed, cpu_count, expected):
    assert worker_affinity.should_pin(environ, allowed, cpu_count) is expected


def test_variable_is_set_only_inside_the_block(monkeypatch):
    monkeypatch.delenv(worker_affinity.VARIABLE, raising=False)
    monkeypatch.setattr(worker_affinity, "_allowed_cpus", lambda: ALL)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    with worker_affinity.pinned_pocl_workers() as pinned:
        assert pinned and os.environ[worker_affinity.VARIABLE] == "1"
    assert worker_affinity.VARIABLE not in os.environ
    assert worker_affinity.decision().startswith("one CPU each")
    monkeypatch.setenv(worker_affinity.VARIABLE, "0")
    with worker_affinity.pinned_pocl_workers() as pinned:
        assert not pinned and os.environ[worker_affinity.VARIABLE] == "0"
    assert os.environ[worker_affinity.VARIABLE] == "0"
    assert worker_affinity.decision() == "as POCL_AFFINITY=0 says (set outside clconv)"
    monkeypatch.delenv(worker_affinity.VARIABLE)
    monkeypatch.setattr(worker_affinity, "_allowed_cpus", lambda: {2, 3})
    with worker_affinity.pinned_pocl_workers() as pinned:
        assert not pinned and worker_affinity.VARIABLE not in os.environ
    assert worker_affinity.decision() == "free (this process may use CPUs [2, 3] only)"


POCL_CPUS = [d for d in DEVICES if d.kind == "CPU" and "Portable Computing Language" in d.platform]
CPUS = os.cpu_count() or 1
FULL_MASK = hasattr(os, "sched_getaffinity") and os.sched_getaffinity(0) == set(range(CPUS))
needs_pocl = pytest.mark.skipif(
    not POCL_CPUS or CPUS < 2 or not FULL_MASK,
    reason="needs a PoCL CPU device and a process that may use 2+ CPUs, all of them")

# A fresh interpreter: optionally limit itself to one CPU, import clconv, list the
# devices (the first platform query), and report every thread's CPU set.
CHILD = """
import json, os, sys
if sys.argv[1] != "all":
    os.sched_setaffinity(0, {int(sys.argv[1])})
import clconv
clconv.devices()
masks = [sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")]
print(json.dumps({"masks": masks, "variable": os.environ.get("POCL_AFFINITY")}))
"""


def _thread_masks(cpus: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != worker_affinity.VARIABLE}
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", CHILD, cpus], env=environ,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_pocl
def test_pocl_workers_are_pinned_by_default():
    report = _thread_masks("all")
    singles = [m for m in report["masks"] if len(m) == 1]
    # At least one PoCL's workers: one thread on each of the CPUs it has units for.
    assert {m[0] for m in singles} >= set(range(min(CPUS, max(d.compute_units
                                                            for d in POCL_CPUS)))), report
    assert report["variable"] is None  # gone again after the query


@needs_pocl
def test_users_choice_keeps_workers_free():
    report = _thread_masks("all", POCL_AFFINITY="0")
    assert all(len(m) == CPUS for m in report["masks"]), report
    assert report["variable"] == "0"


@needs_pocl
def test_process_limited_to_one_cpu_stays_there():
    last = CPUS - 1
    report = _thread_masks(str(last))
    assert all(m == [last] for m in report["masks"]), report
