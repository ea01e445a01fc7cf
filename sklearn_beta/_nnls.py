"""The non-negative least-squares solve shared by both estimators."""

from __future__ import annotations

from functools import cache, partial

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import nnls
from threadpoolctl import ThreadpoolController


def nnls_fit(
    design: np.ndarray, target: np.ndarray, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """Solve ``min ||sqrt(w) (design @ beta - target)||`` subject to ``beta >= 0``.

    Columns are scaled to unit norm before the solve: the step count and the
    token exposures differ by orders of magnitude, and the active-set solver's
    tolerances are absolute. The solution of the scaled problem maps back
    exactly, so this changes conditioning, not the answer.
    """
    # One memory layout, so that reductions round identically whether the
    # design comes from a DataFrame or straight from the functional API.
    design = np.ascontiguousarray(design, dtype=np.float64)
    target = np.ascontiguousarray(target, dtype=np.float64)
    check_finite_design(design)
    if sample_weight is not None:
        root_w = np.sqrt(np.asarray(sample_weight, dtype=np.float64))
        design = design * root_w[:, None]
        target = target * root_w
    return _column_scaled_nnls(design, partial(_tall_nnls, target=target))


def nnls_from_r(r_aug: np.ndarray) -> np.ndarray:
    """:func:`nnls_fit` from the R factor of ``[design, target]`` alone.

    ``||A beta - b||^2 = ||R_A beta - (Q'b)||^2 + const``, so the R factor of
    the stacked ``[A b]`` (of at most k + 1 rows; the R factor of stacked R
    factors is that of the stacked blocks) poses the same problem, with the
    same column scaling.
    """
    k = r_aug.shape[1] - 1
    qtb = r_aug[:, k]
    return _column_scaled_nnls(r_aug[:, :k], lambda scaled: nnls(scaled, qtb)[0])


def _column_scaled_nnls(design: np.ndarray, solve) -> np.ndarray:
    """``solve`` the NNLS on unit-norm columns; map its solution back."""
    scale = np.sqrt(np.einsum("ij,ij->j", design, design))
    usable = scale > 0
    beta = np.zeros(design.shape[1])
    if not usable.any():
        return beta
    beta[usable] = solve(design[:, usable] / scale[usable]) / scale[usable]
    return beta


def _tall_nnls(scaled: np.ndarray, target: np.ndarray) -> np.ndarray:
    reduced = _tall_reduction(scaled, target)
    if reduced is None:
        return nnls(scaled, target)[0]
    return nnls(*reduced)[0]


@cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def _single_threaded_blas():
    """Context in which BLAS runs on one thread (same kernels, same bits)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _tall_reduction(design: np.ndarray, target: np.ndarray):
    """``(R, Q'b)`` with ``design = QR``, by CholeskyQR2, or None.

    ``||A x - b||^2 = ||R x - Q'b||^2 + const``, so the active-set solver can
    work on a k-by-k system instead of n-by-k: one pass over the data instead
    of many. Two Cholesky passes make Q orthogonal to working precision while
    the (column-scaled) condition number stays below ~1e7; beyond that, or for
    short or rank-deficient designs, the caller solves the full problem.
    """
    n, k = design.shape
    if n <= 16 * k:
        return None
    try:
        r1 = np.linalg.cholesky(design.T @ design).T
        # k is tiny: multiplying by the explicit inverse of R1 is one fast
        # n-by-k matmul, and CholeskyQR's second pass absorbs its rounding.
        # OpenBLAS threads an (n, k) @ (k, k) product so badly that on a busy
        # 2-core machine it took 2 s instead of 0.05 s at 1e6 rows.
        with _single_threaded_blas():
            q1 = design @ np.linalg.inv(r1)
        r2 = np.linalg.cholesky(q1.T @ q1).T
    except np.linalg.LinAlgError:
        return None
    r = r2 @ r1
    if np.linalg.cond(r) > 1e7:
        return None
    qtb = solve_triangular(r2, q1.T @ target, trans="T", lower=False)
    return r, qtb


def fit_statistics(
    target: np.ndarray, predicted: np.ndarray, sample_weight: np.ndarray | None = None
) -> tuple[float, float]:
    """Return ``(r2, rmse)``; r2 is NaN when the target has no variance."""
    if sample_weight is None:
        sample_weight = np.ones_like(target)
    w_sum = sample_weight.sum()
    ss_res = float(np.sum(sample_weight * (target - predicted) ** 2))
    mean = np.sum(sample_weight * target) / w_sum
    ss_tot = float(np.sum(sample_weight * (target - mean) ** 2))
    return scores_from_sums(ss_res, ss_tot, w_sum)


def scores_from_sums(ss_res: float, ss_tot: float, w_sum: float) -> tuple[float, float]:
    """``(r2, rmse)`` from the residual and total sums of squares and the weight."""
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return r2, float(np.sqrt(ss_res / w_sum))


def check_finite_design(design: np.ndarray) -> None:
    """Raise ValueError if the design overflowed, instead of returning NaN betas."""
    bad = ~np.all(np.isfinite(design), axis=1)
    if bad.any():
        raise ValueError(
            f"The exposures of {int(bad.sum())} phase(s) overflow float64 "
            f"(positions {np.flatnonzero(bad)[:5].tolist()}): their step counts "
            "are too large for their durations or the times span too wide a "
            "range. Check the time unit and the token counts of these rows."
        )
