"""Runs small cases of every kernel under Oclgrind with its checks switched on
(out-of-bounds accesses, data races, uninitialised reads) and fails on any
report.  A deliberately out-of-bounds kernel proves the check can fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

import clconv
from oclgrind_cases import (
    CASE_IDS,
    LOCAL_CASE_IDS,
    GROUP_VEC_CASE_IDS,
    LOOP_CASE_IDS,
    MERGE_CASE_IDS,
    PACK_CASE_IDS,
    TAIL_CASE_IDS,
    WIDE_CASE_IDS,
)

HERE = Path(__file__).parent
OCLGRIND = [d for d in clconv.devices() if d.kind == "simulator"]
pytestmark = pytest.mark.skipif(not OCLGRIND, reason="Oclgrind is not installed")

BROKEN_KERNEL = """
import numpy as np, pyopencl as cl, sys
from clconv.device_select import runtime
rt = runtime(sys.argv[1])
src = "__kernel void k(__global float *a) { a[get_global_id(0) + 1] = 1.0f; }"
prg = cl.Program(rt.context, src).build()
buf = cl.Buffer(rt.context, cl.mem_flags.READ_WRITE, 16)
prg.k(rt.queue, (4,), None, buf)
rt.queue.finish()
"""


def _run_checked(tmp_path: Path, argv: list[str], extra_env: Optional[dict] = None
                 ) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "oclgrind.log"
    env = dict(os.environ, OCLGRIND_LOG=str(log), OCLGRIND_DATA_RACES="1",
               OCLGRIND_UNINITIALIZED="1", PYTHONPATH=str(HERE), **(extra_env or {}))
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    return proc, (log.read_text() if log.exists() else "")


@pytest.mark.parametrize("case_id", CASE_IDS + WIDE_CASE_IDS + PACK_CASE_IDS + LOOP_CASE_IDS
                         + TAIL_CASE_IDS + MERGE_CASE_IDS + GROUP_VEC_CASE_IDS)
def test_kernels_are_clean_under_oclgrind(tmp_path, case_id):
    proc, report = _run_checked(tmp_path, [str(HERE / "oclgrind_cases.py"), case_id,
                                           OCLGRIND[0].spec])
    assert proc.returncode == 0, proc.stderr
    assert f"ran {case_id}" in proc.stdout
    assert report.strip() == "", f"Oclgrind reported:\n{report[:4000]}"


def test_oclgrind_check_catches_an_out_of_bounds_write(tmp_path):
    proc, report = _run_checked(tmp_path, ["-c", BROKEN_KERNEL, OCLGRIND[0].spec])
    assert "Invalid write" in report, (proc.stdout, proc.stderr, report)


# The __local kernels under a 256-work-item limit, as most GPUs have.
LOCAL_LIMITS = {"OCLGRIND_MAX_WGSIZE": "256"}


@pytest.mark.parametrize("case_id", LOCAL_CASE_IDS)
def test_local_memory_kernels_are_race_free(tmp_path, case_id):
    """Data races and barrier divergence (Oclgrind reports both) over the shipped and a
    sample of the candidate configurations of every kernel that shares __local memory."""
    proc, report = _run_checked(tmp_path, [str(HERE / "oclgrind_cases.py"), case_id,
                                           OCLGRIND[0].spec], LOCAL_LIMITS)
    assert proc.returncode == 0, proc.stderr
    assert f"ran {case_id}" in proc.stdout
    assert report.strip() == "", f"Oclgrind reported:\n{report[:4000]}"


def test_race_check_catches_a_missing_barrier(tmp_path):
    """gemm_tiled.cl without the barrier that guards the staged tiles: PoCL runs it, the
    race check must not."""
    proc, report = _run_checked(tmp_path, [str(HERE / "oclgrind_cases.py"), "without-barrier",
                                           OCLGRIND[0].spec], LOCAL_LIMITS)
    assert "data race" in report.lower(), (proc.stdout, proc.stderr[-2000:], report[:2000])
