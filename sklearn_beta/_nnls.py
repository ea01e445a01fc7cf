"""The non-negative least-squares solve shared by both estimators."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


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
    if sample_weight is not None:
        root_w = np.sqrt(np.asarray(sample_weight, dtype=np.float64))
        design = design * root_w[:, None]
        target = target * root_w
    scale = np.linalg.norm(design, axis=0)
    usable = scale > 0
    beta = np.zeros(design.shape[1])
    if not usable.any():
        return beta
    solution, _ = nnls(design[:, usable] / scale[usable], target)
    beta[usable] = solution / scale[usable]
    return beta


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
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return r2, float(np.sqrt(ss_res / w_sum))
