"""The non-negative least-squares solve shared by both estimators."""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import nnls
from threadpoolctl import ThreadpoolController

#: Rows per block of the passes over a tall design: a (rows, k) scratch block
#: (1.5 MB for k = 3) stays in cache, so no pass allocates anything the size
#: of the design.
BLOCK_ROWS = 1 << 16


def nnls_fit(
    design: np.ndarray, target: np.ndarray, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """Solve ``min ||sqrt(w) (design @ beta - target)||`` subject to ``beta >= 0``.

    Columns are scaled to unit norm before the solve: the step count and the
    token exposures differ by orders of magnitude, and the active-set solver's
    tolerances are absolute. The solution of the scaled problem maps back
    exactly, so this changes conditioning, not the answer.

    The design is read in row blocks copied into one scratch layout, so the
    result rounds the same whatever its memory layout (a DataFrame's columns
    or a row-major array) and no temporary grows with the rows.
    """
    design = np.asarray(design, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    check_finite_design(design)
    root_w = None
    if sample_weight is not None:
        root_w = np.sqrt(np.asarray(sample_weight, dtype=np.float64))
    gram = _weighted_gram(design, root_w)
    scale = np.sqrt(np.diag(gram))
    usable = scale > 0
    beta = np.zeros(design.shape[1])
    if not usable.any():
        return beta
    columns = None if usable.all() else usable
    scale = scale[usable]
    reduced = None
    if not _beyond_cholesky_qr(gram, usable, scale):
        reduced = _tall_reduction(design, target, root_w, gram, columns, scale)
    if reduced is None:
        scaled = design[:, usable]  # a copy: scaled in place below
        if root_w is not None:
            scaled *= root_w[:, None]
            target = target * root_w
        scaled /= scale
        reduced = _householder_reduction(scaled, target)
    beta[usable] = nnls(*reduced)[0] / scale
    return beta


#: Rows beyond which an ill-conditioned design is reduced by Householder QR.
HOUSEHOLDER_ROWS = 1 << 14


def _beyond_cholesky_qr(gram: np.ndarray, usable: np.ndarray, scale) -> bool:
    """Whether the column-scaled Gram matrix is so ill-conditioned (beyond
    1e16, a design condition number beyond 1e8) that :func:`_tall_reduction`
    would give up after its passes over the design (its limit is 1e7): a
    long design goes straight to Householder QR. Six collinear step
    features reach it; the published three on a real trace do not."""
    if gram.shape[0] <= 3:  # the published design: as before, bit for bit
        return False
    g = gram[np.ix_(usable, usable)] / np.outer(scale, scale)
    return bool(np.linalg.cond(g) > 1e16)


def _householder_reduction(scaled: np.ndarray, target: np.ndarray) -> tuple:
    """``(R, Q'b)`` of a long design that CholeskyQR2 could not take (too
    ill-conditioned), or the design itself when short.

    The active-set solver on the full long design costs a pass over it per
    active-set change: with six collinear step features, 0.13 s of a 0.6 s
    fit at 1e5 phases. Householder QR is backward stable whatever the
    condition number, so the k-by-k system poses the same problem. Designs
    of at most :data:`HOUSEHOLDER_ROWS` rows, whose solve is cheap (the
    golden traces among them), keep the full solve and its exact bits.
    """
    if scaled.shape[0] <= HOUSEHOLDER_ROWS:
        return scaled, target
    r = np.linalg.qr(np.column_stack([scaled, target]), mode="r")
    k = scaled.shape[1]
    return r[:k, :k], r[:k, k]


def nnls_from_r(r_aug: np.ndarray) -> np.ndarray:
    """:func:`nnls_fit` from the R factor of ``[design, target]`` alone.

    ``||A beta - b||^2 = ||R_A beta - (Q'b)||^2 + const``, so the R factor of
    the stacked ``[A b]`` (of at most k + 1 rows; the R factor of stacked R
    factors is that of the stacked blocks) poses the same problem, with the
    same column scaling.
    """
    k = r_aug.shape[1] - 1
    qtb = r_aug[:, k]
    design = r_aug[:, :k]
    scale = np.sqrt(np.einsum("ij,ij->j", design, design))
    usable = scale > 0
    beta = np.zeros(k)
    if usable.any():
        scaled = design[:, usable] / scale[usable]
        beta[usable] = nnls(scaled, qtb)[0] / scale[usable]
    return beta


def weighted_rows(design, root_w, start, scratch, columns):
    """Rows ``start:start + BLOCK_ROWS`` of ``sqrt(w) * design`` in ``scratch``."""
    stop = min(start + BLOCK_ROWS, design.shape[0])
    block = scratch[: stop - start]
    rows = design[start:stop]
    np.copyto(block, rows if columns is None else rows[:, columns])
    if root_w is not None:
        block *= root_w[start:stop, None]
    return block


def _weighted_gram(design: np.ndarray, root_w: np.ndarray | None) -> np.ndarray:
    """``X' W X`` of the design, summed over row blocks."""
    n, k = design.shape
    scratch = np.empty((min(n, BLOCK_ROWS), k))
    gram = np.zeros((k, k))
    with single_threaded_blas():
        for start in range(0, n, BLOCK_ROWS):
            block = weighted_rows(design, root_w, start, scratch, None)
            gram += block.T @ block
    return gram


@cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def single_threaded_blas():
    """Context in which BLAS runs on one thread (same kernels, same bits)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _tall_reduction(design, target, root_w, gram, columns, scale):
    """``(R, Q'b)`` of the weighted, column-scaled design, by CholeskyQR2, or None.

    ``||A x - b||^2 = ||R x - Q'b||^2 + const``, so the active-set solver can
    work on a k-by-k system instead of n-by-k. ``gram`` is ``X' W X`` of the
    whole design; ``columns`` (None for all) and ``scale`` select and scale
    the columns solved for. The first Cholesky factor comes from ``gram``;
    the second pass, over row blocks, makes Q orthogonal to working precision
    while the (column-scaled) condition number stays below ~1e7. Beyond
    that, or for short or rank-deficient designs, None: the caller solves
    the full problem. BLAS runs on one thread: OpenBLAS threads an
    ``(n, k) @ (k, k)`` product so badly that on a busy 2-core machine it
    took 2 s instead of 0.05 s at 1e6 rows.
    """
    n, k = design.shape[0], scale.shape[0]
    if n <= 16 * k:
        return None
    if columns is not None:
        gram = gram[np.ix_(columns, columns)]
    try:
        r1 = np.linalg.cholesky(gram / np.outer(scale, scale)).T
        # Q1 = X S^-1 R1^-1, block by block: k is tiny, so multiplying by the
        # explicit inverse is one fast product, and the second pass absorbs
        # its rounding.
        to_q = np.linalg.inv(r1) / scale[:, None]
        qq, qtb = np.zeros((k, k)), np.zeros(k)
        width = design.shape[1] if columns is None else k
        scratch = np.empty((min(n, BLOCK_ROWS), width))
        q = np.empty((scratch.shape[0], k))
        with single_threaded_blas():
            for start in range(0, n, BLOCK_ROWS):
                block = weighted_rows(design, root_w, start, scratch, columns)
                q_block = np.matmul(block, to_q, out=q[: block.shape[0]])
                stop = start + block.shape[0]
                rhs = target[start:stop]
                if root_w is not None:
                    rhs = rhs * root_w[start:stop]
                qq += q_block.T @ q_block
                qtb += q_block.T @ rhs
        r2 = np.linalg.cholesky(qq).T
    except np.linalg.LinAlgError:
        return None
    r = r2 @ r1
    if np.linalg.cond(r) > 1e7:
        return None
    return r, solve_triangular(r2, qtb, trans="T", lower=False)


def fit_statistics(
    target: np.ndarray, predicted: np.ndarray, sample_weight: np.ndarray | None = None
) -> tuple[float, float]:
    """Return ``(r2, rmse)``; r2 is NaN when the target has no variance."""
    return scores_from_sums(
        residual_squares(target, predicted, sample_weight),
        *total_squares(target, sample_weight),
    )


def residual_squares(
    target: np.ndarray, predicted: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """``sum(w (target - predicted)^2)``, through one temporary."""
    squares = np.subtract(target, predicted)
    np.square(squares, out=squares)
    if sample_weight is not None:
        squares *= sample_weight
    return float(np.sum(squares))


def total_squares(
    target: np.ndarray, sample_weight: np.ndarray | None = None
) -> tuple[float, float]:
    """``(sum(w (target - mean)^2), sum(w))``: what :func:`fit_statistics`
    needs of the target alone, the same for every prediction of it."""
    if sample_weight is None:
        w_sum = float(target.shape[0])
        mean = np.sum(target) / w_sum
    else:
        w_sum = sample_weight.sum()
        mean = np.sum(sample_weight * target) / w_sum
    squares = np.subtract(target, mean)
    np.square(squares, out=squares)
    if sample_weight is not None:
        squares *= sample_weight
    return float(np.sum(squares)), w_sum


def scores_from_sums(ss_res: float, ss_tot: float, w_sum: float) -> tuple[float, float]:
    """``(r2, rmse)`` from the residual and total sums of squares and the weight."""
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return r2, float(np.sqrt(ss_res / w_sum))


def check_finite_design(design: np.ndarray) -> None:
    """Raise ValueError if the design overflowed, instead of returning NaN betas."""
    # A finite sum means every entry is finite: one pass and no temporary on
    # the common path; an overflowing sum of finite entries just takes the
    # row-by-row look below.
    if np.isfinite(np.sum(design)):
        return
    bad = ~np.all(np.isfinite(design), axis=1)
    if bad.any():
        raise ValueError(
            f"The exposures of {int(bad.sum())} phase(s) overflow float64 "
            f"(positions {np.flatnonzero(bad)[:5].tolist()}): their step counts "
            "are too large for their durations or the times span too wide a "
            "range. Check the time unit and the token counts of these rows."
        )
