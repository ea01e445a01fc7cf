"""Block-bootstrap confidence intervals of the betas: the check of ``beta_ci_``.

Resamples the time blocks of :func:`~sklearn_beta.trust._uncertainty.time_blocks`
(merged to the residuals' correlation length) through multinomial block
counts used as ``sample_weight``: every row stays in the fit as context for
the concurrency of the others, only its weight changes. Opt-in: it refits
the trace hundreds of times.
"""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
from sklearn.base import clone
from sklearn.utils import check_array, check_random_state

from ..core._schema import EXPOSURE_COLUMNS, column, has_column
from ._uncertainty import DEFAULT_CONFIDENCE_LEVEL, time_blocks

__all__ = ["block_bootstrap_ci"]


def block_bootstrap_weights(
    block: np.ndarray, n_blocks: int, rng: np.random.RandomState
) -> np.ndarray:
    """Row weights of one block-bootstrap resample.

    Draws ``n_blocks`` blocks with replacement (multinomial block counts) and
    gives every row its block's count: rows of undrawn blocks get weight 0
    but stay in the trace, where they still shape the others' exposures.
    """
    counts = rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks))
    return counts[block].astype(np.float64)


def moving_blocks(
    block: np.ndarray, block_instance: np.ndarray, n_lags: int
) -> tuple[np.ndarray, int]:
    """Merge ``n_lags + 1`` consecutive blocks of an instance into one.

    Bootstrap blocks must be at least as long as the correlation of the
    residuals, or the resamples look less noisy than the trace.
    """
    first = np.r_[0, np.flatnonzero(np.diff(block_instance)) + 1]
    local = np.arange(block_instance.shape[0]) - np.repeat(
        first, np.diff(np.r_[first, block_instance.shape[0]])
    )
    merged_local = local // (n_lags + 1)
    key = block_instance * (int(merged_local.max()) + 1) + merged_local
    _, merged = np.unique(key, return_inverse=True)
    merged_block = merged[block]
    used, merged_block = np.unique(merged_block, return_inverse=True)
    return merged_block, used.shape[0]


def percentile_intervals(samples: np.ndarray, level: float) -> np.ndarray:
    """Percentile intervals of bootstrap samples (n_resamples, k) -> (k, 2)."""
    tail = 50.0 * (1.0 - level)
    return np.percentile(samples, [tail, 100.0 - tail], axis=0).T


def block_bootstrap_ci(
    estimator,
    X,
    y=None,
    *,
    n_resamples: int = 200,
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL,
    random_state=None,
) -> np.ndarray:
    """Block-bootstrap confidence intervals of a beta regressor's betas.

    Cuts the trace into time blocks per instance at least as long as the
    longest phases (99th percentile), draws as many blocks with replacement,
    and refits ``estimator`` with each row weighted by its block's count.
    Every row stays in the exposure table, so the concurrency every phase
    ran under is kept; only the weights of the least squares change. The
    intervals are the percentiles of the refitted betas. ``n_resamples``
    full fits: use it to check ``beta_ci_``, not on every fit.

    Parameters
    ----------
    estimator : BaselineBetaRegressor or IterativeBetaRegressor
        The regressor to refit (cloned; its own ``beta_ci_`` is not computed
        in the resamples).
    X : DataFrame or ndarray of shape (n_phases, 12)
        The full exposure table of :class:`~sklearn_beta.PhaseExposureTransformer`.
    y : array-like of shape (n_phases,), default=None
        Durations; the table's ``duration`` column when None.
    n_resamples : int, default=200
        Number of bootstrap resamples.
    confidence_level : float in (0, 1), default=0.95
        Level of the percentile intervals.
    random_state : int, RandomState instance or None, default=None
        Seeds the block draws.

    Returns
    -------
    intervals : ndarray of shape (3, 2) or (n_step_features, 2)
        Lower and upper limits of ``beta0``, ``beta1``, ``beta2`` (of each
        feature's coefficient under another step model of the table).

    Examples
    --------
    >>> from sklearn_beta import (BaselineBetaRegressor, PhaseExposureTransformer,
    ...     block_bootstrap_ci)
    >>> from sklearn_beta.datasets import load_sample_trace
    >>> table = PhaseExposureTransformer(chunk_size=64).fit_transform(
    ...     load_sample_trace())
    >>> block_bootstrap_ci(BaselineBetaRegressor(), table, n_resamples=20,
    ...     random_state=0).shape
    (3, 2)
    """
    if not 0 < confidence_level < 1:
        raise ValueError(
            f"confidence_level must be in (0, 1), got {confidence_level!r}."
        )
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, Integral):
        raise TypeError(f"n_resamples must be an integer, got {n_resamples!r}.")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}.")
    if "confidence_level" not in estimator.get_params():
        raise TypeError(
            "block_bootstrap_ci needs a BaselineBetaRegressor or "
            f"IterativeBetaRegressor, got {type(estimator).__name__}."
        )
    table = check_array(X, dtype=np.float64)
    if not has_column(table, EXPOSURE_COLUMNS[-1]):
        raise ValueError(
            "block_bootstrap_ci needs the full exposure table of "
            f"PhaseExposureTransformer ({len(EXPOSURE_COLUMNS)} columns "
            f"{list(EXPOSURE_COLUMNS)}) to form time blocks; got "
            f"{table.shape[1]} column(s)."
        )
    block, block_instance, n_lags = time_blocks(
        column(table, "t_start"), column(table, "t_end"), column(table, "instance_id")
    )
    block, n_blocks = moving_blocks(block, block_instance, n_lags)
    rng = check_random_state(random_state)
    model = clone(estimator).set_params(confidence_level=None)
    samples = []  # one coefficient per feature of the table's step model
    with warnings.catch_warnings():
        # The resamples repeat the warnings of the fit itself.
        warnings.simplefilter("ignore")
        for _ in range(n_resamples):
            weight = block_bootstrap_weights(block, n_blocks, rng)
            samples.append(clone(model).fit(X, y, sample_weight=weight).beta_)
    return percentile_intervals(np.asarray(samples), confidence_level)
