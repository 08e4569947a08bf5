"""How close a kernel's result must be to the float64 reference.

One rule, used by the tests, the conformance run and the tuner's check: a
result that sums ``reduction`` products of values in [-1, 1] may differ from
the exact float64 sum by ``atol + rtol * |expected|`` per element, with rtol
about 4*sqrt(eps) of the dtype and atol growing with the reduction length
(rounding error of a sum grows with its number of terms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


def tolerance(dtype: Any, reduction: int) -> tuple[float, float]:
    """(rtol, atol) for a result that sums ``reduction`` products of values in [-1, 1].

    rtol is about 4*sqrt(eps) of the dtype; atol grows with the reduction length,
    since rounding error of a sum scales with the number of terms (and the
    values, of magnitude ~sqrt(reduction), cancel).  float16 accumulates in
    float32 but rounds every operand and the result to 11 bits.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    rtol = 4 * eps ** 0.5
    atol = 4 * eps * max(1, reduction) ** 0.5 * 8
    if np.dtype(dtype) == np.float16:
        atol = 1e-2 * max(1, reduction) ** 0.5
    return rtol, atol


def max_relative_error(actual: Any, expected: Any) -> float:
    """Largest |a - e| / max(|e|, 1): the figure reported per device (inf for a NaN)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if expected.size == 0:
        return 0.0
    error = np.abs(actual - expected) / np.maximum(np.abs(expected), 1.0)
    return float(np.max(np.where(np.isnan(error), np.inf, error)))


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one result with the reference."""

    ok: bool
    problem: Optional[str]  # shape or dtype mismatch, None when they agree
    rtol: float
    atol: float
    max_rel_error: float = 0.0  # max |a - e| / max(|e|, 1)
    max_abs_error: float = 0.0
    worst_index: Optional[tuple[int, ...]] = None  # the element furthest outside tolerance
    expected: Optional[float] = None  # reference value there
    actual: Optional[float] = None  # result there
    bad_elements: int = 0

    def describe(self) -> str:
        """One line for a report: what went wrong and where."""
        if self.problem is not None:
            return self.problem
        where = list(self.worst_index) if self.worst_index is not None else "-"
        return (f"{self.bad_elements} element(s) outside tolerance; max abs error "
                f"{self.max_abs_error:.3g} at {where}: expected {self.expected:.7g}, got "
                f"{self.actual:.7g} (allowed {self.atol:.2g} + {self.rtol:.2g}*|expected|)")


def compare(actual: Any, expected: np.ndarray, dtype: Any, reduction: int,
            rtol: Optional[float] = None, atol: Optional[float] = None) -> Comparison:
    """Shape, dtype, then values within the tolerance of ``dtype`` and ``reduction``.

    ``expected`` is the float64 reference; NaN or inf in ``actual`` always fails.
    """
    default_rtol, default_atol = tolerance(dtype, reduction)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(False, f"shape {actual.shape} != expected {expected.shape}", rtol, atol)
    if actual.dtype != np.dtype(dtype):
        return Comparison(False, f"dtype {actual.dtype} != expected {np.dtype(dtype)}", rtol, atol)
    if expected.size == 0:
        return Comparison(True, None, rtol, atol)
    got = actual.astype(np.float64)
    error = np.abs(got - expected)
    error = np.where(np.isfinite(error), error, np.inf)  # NaN anywhere is as bad as it gets
    allowed = atol + rtol * np.abs(expected)
    bad = error > allowed
    ratio = error / np.maximum(allowed, np.finfo(np.float64).tiny)
    worst = np.unravel_index(int(np.argmax(ratio)), error.shape)
    return Comparison(
        ok=not bool(bad.any()), problem=None, rtol=rtol, atol=atol,
        max_rel_error=max_relative_error(got, expected),
        max_abs_error=float(error.max()),
        worst_index=tuple(int(i) for i in worst),
        expected=float(expected[worst]), actual=float(got[worst]),
        bad_elements=int(bad.sum()),
    )
