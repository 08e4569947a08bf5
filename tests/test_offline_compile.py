"""Every shipped GPU configuration compiled offline for NVIDIA sm_80, AMD gfx90a and
Intel DG2 (see offline_compile.py for the tool chains and the budgets), float32, float16,
float32 with 64-bit offsets and (the GEMMs) float32 with depth taps: no spills, and
register counts that keep the occupancy a GEMM kernel needs.  Each target is skipped,
with the reason, where its compiler is absent; tests/run.sh installs them all."""

from __future__ import annotations

import numpy as np
import pytest

from offline_compile import TARGETS, compile_family, gpu_configurations, variants

CONFIGURATIONS = gpu_configurations()


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_shipped_gpu_configurations_fit_the_register_budget(target, record_property):
    missing = target.missing()
    if missing:
        pytest.skip(missing)
    assert {family for family, _ in CONFIGURATIONS} >= {"gemm_tiled", "gemm_implicit"}
    problems, rows = [], []
    for family, chosen in CONFIGURATIONS:
        for dtype, wide, depth in variants(family):
            reports = compile_family(target, family, chosen, np.dtype(dtype), wide, depth)
            assert reports, f"{target.name} reported no kernel for {family} {chosen}"
            for report in reports:
                rows.append(f"{report.kernel} {report.config} {report.dtype}: "
                            f"{report.registers} registers, {report.spill_bytes} spilled, "
                            f"{report.detail}")
                problem = report.problem(target.budget)
                if problem:
                    problems.append(f"{report.kernel} {report.config} {report.dtype}: {problem}")
    record_property("kernels", rows)
    print("\n" + "\n".join(rows))
    assert not problems, problems


@pytest.mark.parametrize("target", TARGETS[:2], ids=[t.name for t in TARGETS[:2]])
def test_the_budget_catches_a_cpu_tile_on_a_gpu(target):
    """The CPU's register tile (6 x 16 in 16-wide vectors) needs far more registers than
    a GPU work-item should hold: the check must say so."""
    missing = target.missing()
    if missing:
        pytest.skip(missing)
    reports = compile_family(target, "gemm_implicit", {"TM": 6, "TN": 16, "VEC": 16},
                             np.dtype(np.float32))
    gemm = [r for r in reports if r.kernel == "gemm_implicit"]
    assert gemm and gemm[0].problem(target.budget) is not None, gemm
