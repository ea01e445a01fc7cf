"""Confidence intervals of the betas and the warnings where a fit is not trusted.

Residuals of a trace are correlated in time: phases that overlap share the
same steps, so one slow step lengthens every phase running through it. Phases
further apart than the longest phase share no step, and instances of a fleet
share none at all. The intervals therefore treat the trace as a sequence of
*time blocks* per instance, correlated only with blocks less than a phase
length away:

* on every fit, the heteroscedasticity-and-autocorrelation robust
  (sandwich) covariance of the fitted objective at the solution,
  ``A^-1 M A^-1``, with the Gauss-Newton "bread" ``A = J' W J`` and the
  "meat" ``M`` summed from the per-block scores
  ``g_b = sum_{i in b} w_i J_i r_i`` and their cross products with the
  blocks up to ``2 n_lags + 1`` later in the same instance (Bartlett
  weights over twice the overlap reach, see :func:`long_run_covariance`;
  Newey and West 1987). For the step-count objective ``J = dLambda/dbeta``
  and ``r = Lambda - N``; for the duration objective and the baseline ``J``
  is the NNLS design and ``r`` the duration residual.
  One pass over the phases: cheap on every fit.
* a block bootstrap (:func:`~sklearn_beta._bootstrap.block_bootstrap_ci`,
  its own module), opt-in, which validates the sandwich.

The blocks are :mod:`sklearn_beta._time_blocks`'s. The sums the sandwich
needs add up over instances (:class:`SandwichSums`), so the partitions of a
fleet each send theirs (:mod:`sklearn_beta._distributed_trust`).
Everything here takes and returns plain arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from ..core._warnings import warn
from ..exceptions import UncertaintyWarning
from ._identifiability import BETA_NAMES
from ._time_blocks import time_blocks

#: Default confidence level of ``beta_ci_``.
DEFAULT_CONFIDENCE_LEVEL = 0.95
#: An interval wider than this fraction of its beta is reported.
WIDE_INTERVAL_SHARE = 0.5


def block_scores(
    jac: np.ndarray,
    residual: np.ndarray,
    weight: np.ndarray | None,
    block: np.ndarray,
    n_blocks: int,
) -> np.ndarray:
    """Per block, the sum of the phases' scores ``w_i J_i r_i``, (n_blocks, k)."""
    scaled = residual if weight is None else weight * residual
    return np.column_stack(
        [
            np.bincount(block, weights=jac[:, k] * scaled, minlength=n_blocks)
            for k in range(jac.shape[1])
        ]
    )


def long_run_covariance(
    scores: np.ndarray, block_instance: np.ndarray, n_lags: int
) -> np.ndarray:
    """Long-run covariance of the block scores within instances.

    The Bartlett sum (:func:`bartlett_covariance`) with a window of
    ``2 (L + 1)`` blocks, twice the reach ``L`` of the phase overlaps: the
    weight ``1 - l / (2 (L + 1))`` is at least 1/2 on every lag in reach.
    Instances never share a term, so the sums of the instances of a fleet's
    partitions add up to the whole fleet's (:class:`SandwichSums`).

    Why not the Newey-West window ``L + 1``: the overlap of two phases falls
    like ``1 - l / (L + 1)`` with their distance, so that weight counts the
    lagged covariance twice down, and under load the scheduler carries a
    slow step's noise beyond the overlap (later admissions follow it). The
    covariance itself moves little with the wider window; what it changes is
    the honest count of independent groups, one per window
    (:func:`effective_blocks`), and with it the Student-t quantile. Over 40
    seeds the window ``L + 1`` covered beta1 and beta2 in 35 of 40 heavy
    traces; this one in 38-40 at light and heavy load, positive
    semi-definite, where a flat-top kernel covered less at light load
    (docs/uncertainty.md, "The window").
    """
    return bartlett_covariance(scores, block_instance, 2 * (n_lags + 1))


def bartlett_covariance(
    scores: np.ndarray, block_instance: np.ndarray, width: int
) -> np.ndarray:
    """Bartlett sum ``sum_{b, c} (1 - |b - c| / width)_+ g_b g_c'`` within instances.

    Computed as the overlapping batch means ``sum_w S_w S_w' / width``,
    ``S_w`` the sum of ``width`` consecutive block scores: every pair shares
    ``width - |b - c|`` windows, so this is the weighted double sum exactly,
    positive semi-definite and one pass. ``width - 1`` zero blocks around
    each instance keep windows from joining two.
    """
    n_blocks, k = scores.shape
    pad = width - 1
    padded = np.zeros((n_blocks + (int(block_instance[-1]) + 2) * pad, k))
    padded[np.arange(n_blocks) + (block_instance + 1) * pad] = scores
    cum = np.zeros((padded.shape[0] + 1, k))
    np.cumsum(padded, axis=0, out=cum[1:])
    windows = cum[width:] - cum[:-width]
    return windows.T @ windows / width


@dataclass(frozen=True)
class SandwichSums:
    """What the sandwich covariance needs of a trace, additive over instances.

    ``long_run`` is :func:`long_run_covariance` of the block scores, ``bread`` the
    Gauss-Newton matrix ``J' W J`` and ``nonempty`` the number of blocks with
    a non-zero score. Partitions holding whole instances send theirs;
    :meth:`combine` adds them up (:func:`~sklearn_beta._distributed.combine_stats`).
    """

    long_run: np.ndarray
    bread: np.ndarray
    nonempty: float

    def combine(self, other: SandwichSums) -> SandwichSums:
        return SandwichSums(
            self.long_run + other.long_run,
            self.bread + other.bread,
            self.nonempty + other.nonempty,
        )


def sandwich_sums(
    jac: np.ndarray,
    residual: np.ndarray,
    weight: np.ndarray | None,
    block: np.ndarray,
    block_instance: np.ndarray,
    n_lags: int,
) -> SandwichSums:
    """The :class:`SandwichSums` of a least-squares fit's phases."""
    # Contiguous either way (designs and Jacobians are column-major): a
    # strided (n, 3) slice of a row-major table would miss BLAS, and a copy
    # to row-major costs more than the sums.
    jac = np.asarray(jac, dtype=np.float64)
    if not (jac.flags.c_contiguous or jac.flags.f_contiguous):
        jac = np.asfortranarray(jac)
    scores = block_scores(jac, residual, weight, block, block_instance.shape[0])
    weighted = jac if weight is None else jac * np.asarray(weight)[:, None]
    return SandwichSums(
        long_run_covariance(scores, block_instance, n_lags),
        weighted.T @ jac,
        float(np.count_nonzero(np.any(scores != 0, axis=1))),
    )


def sandwich_covariance(
    jac: np.ndarray,
    residual: np.ndarray,
    weight: np.ndarray | None,
    block: np.ndarray,
    block_instance: np.ndarray,
    n_lags: int,
) -> tuple[np.ndarray, float]:
    """Time-block robust covariance ``A^-1 M A^-1`` of a least-squares fit.

    :func:`covariance_from_sums` of :func:`sandwich_sums`.
    """
    return covariance_from_sums(
        sandwich_sums(jac, residual, weight, block, block_instance, n_lags), n_lags
    )


def covariance_from_sums(sums: SandwichSums, n_lags: int) -> tuple[np.ndarray, float]:
    """``A^-1 M A^-1`` with ``A = J' W J`` and ``M`` the long-run covariance
    of the block scores (:func:`long_run_covariance`), times ``G / (G - 1)``
    for ``G`` effective blocks.

    Coefficients whose column of ``J`` is zero, or that the others make
    (nearly) singular, get an infinite variance: nothing in the trace
    bounds them. Returns the covariance and ``G``.
    """
    meat = sums.long_run
    groups = effective_blocks(sums.nonempty, n_lags)
    meat = meat * (groups / max(groups - 1.0, 1.0))
    bread = sums.bread
    k = bread.shape[0]
    cov = np.full((k, k), np.inf)
    scale = np.sqrt(np.diag(bread))
    usable = scale > 0
    if not usable.any():
        return cov, groups
    unit = bread[np.ix_(usable, usable)] / np.outer(scale[usable], scale[usable])
    if np.linalg.cond(unit) > 1e12:
        return cov, groups
    inverse = np.linalg.inv(unit) / np.outer(scale[usable], scale[usable])
    cov[np.ix_(usable, usable)] = inverse @ meat[np.ix_(usable, usable)] @ inverse
    return cov, groups


def effective_blocks(nonempty: float, n_lags: int) -> float:
    """Number of roughly independent groups: non-empty blocks per kernel
    window (``2 (L + 1)`` blocks, see :func:`long_run_covariance`)."""
    return max(nonempty / (2.0 * (n_lags + 1.0)), 1.0)


def interval_quantile(level: float, dof: float) -> float:
    """Two-sided Student-t quantile of ``level`` with ``dof`` degrees of freedom."""
    # special.stdtrit is what stats.t.ppf evaluates, without its argument
    # handling (a fifth of the intervals' cost on a small trace).
    return float(special.stdtrit(max(dof, 1.0), 0.5 + 0.5 * level))


def wald_intervals(
    beta: np.ndarray,
    cov: np.ndarray,
    level: float,
    dof: float,
    at_bound: np.ndarray,
) -> np.ndarray:
    """Intervals ``beta +- q se``, shape (k, 2), clipped at the zero bound.

    A coefficient at its bound (``at_bound``) is an NNLS constraint, not a
    measurement: its interval is ``[0, q1 se]`` with the one-sided quantile
    ``q1`` of ``level`` (the true value is non-negative; the estimate could
    not go below 0).
    """
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    q = interval_quantile(level, dof)
    one_sided = interval_quantile(2.0 * level - 1.0, dof)
    lower = np.where(at_bound, 0.0, np.maximum(beta - q * se, 0.0))
    upper = np.where(at_bound, one_sided * se, beta + q * se)
    return np.column_stack([lower, upper])


def sandwich_intervals(
    beta: np.ndarray,
    jac: np.ndarray,
    residual: np.ndarray,
    weight: np.ndarray | None,
    t_start: np.ndarray,
    t_end: np.ndarray,
    instance: np.ndarray | None,
    level: float,
    at_bound: np.ndarray,
) -> np.ndarray:
    """Confidence intervals of a least-squares fit by the time-block sandwich.

    Parameters
    ----------
    beta : ndarray of shape (k,)
        Fitted coefficients.
    jac : ndarray of shape (n_phases, k)
        Derivative of each phase's fitted quantity with respect to ``beta``.
    residual : ndarray of shape (n_phases,)
        Fitted minus observed quantity (or the reverse: the sign cancels).
    weight : ndarray of shape (n_phases,) or None
        Weights of the least-squares objective.
    t_start, t_end, instance : ndarray of shape (n_phases,)
        Phase windows and instance codes, for the time blocks.
    level : float
        Confidence level in (0, 1).
    at_bound : ndarray of bool, shape (k,)
        Coefficients held at zero by the non-negativity constraint.

    Returns
    -------
    intervals : ndarray of shape (k, 2)
        Lower and upper limits, in the unit of ``beta``.
    """
    block, block_instance, n_lags = time_blocks(t_start, t_end, instance)
    sums = sandwich_sums(jac, residual, weight, block, block_instance, n_lags)
    return intervals_from_sums(beta, sums, n_lags, level, at_bound)


def intervals_from_sums(
    beta: np.ndarray,
    sums: SandwichSums,
    n_lags: int,
    level: float,
    at_bound: np.ndarray,
    not_identified: np.ndarray | None = None,
    typical: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`wald_intervals` of the sandwich covariance of ``sums``, with
    ``G - 1`` degrees of freedom (:func:`covariance_from_sums`); the
    coefficients ``not_identified`` (a mask) get
    :func:`unidentified_intervals` over the ``typical`` step."""
    cov, groups = covariance_from_sums(sums, n_lags)
    ci = wald_intervals(
        beta, cov, level, groups - 1.0, np.asarray(at_bound, dtype=bool)
    )
    if not_identified is not None and np.any(not_identified):
        ci = unidentified_intervals(
            ci, beta, cov, level, groups - 1.0, not_identified, typical
        )
    return ci


def unidentified_intervals(
    intervals: np.ndarray,
    beta: np.ndarray,
    cov: np.ndarray,
    level: float,
    dof: float,
    not_identified: np.ndarray,
    typical: np.ndarray,
) -> np.ndarray:
    """Intervals of coefficients the trace does not identify: ``[0, T / t_k]``.

    Where the objective cannot separate some coefficients, the trace measures
    the time of its typical step ``T = typical @ beta`` (``typical = [1,
    T_pf, T_dec]``, its tokens per step) and not its split: any non-negative
    betas that keep ``T`` fit about as well, so nothing excludes a
    coefficient between 0 and the whole step spent on it alone, ``T / t_k``
    (``T`` at its upper confidence limit). That is the widest the data
    allow, not a noise band: an honest cover of what the trace cannot
    exclude. Unbounded (``inf``) for a coefficient the typical step holds
    none of (``t_k = 0``), or when not even ``T`` is bounded. The Wald limits
    stay where they are wider.
    """
    step = float(typical @ beta)
    var = float(typical @ cov @ typical) if np.all(np.isfinite(cov)) else np.inf
    step += interval_quantile(level, dof) * np.sqrt(max(var, 0.0))
    with np.errstate(divide="ignore"):
        alone = np.where(typical > 0, step / np.where(typical > 0, typical, 1), np.inf)
    out = np.array(intervals, dtype=np.float64, copy=True)
    mask = np.asarray(not_identified, dtype=bool)
    out[mask, 0] = 0.0
    out[mask, 1] = np.fmax(out[mask, 1], alone[mask])
    return out


def trust_warnings(
    beta: np.ndarray,
    intervals: np.ndarray | None,
    at_bound: list[str] | tuple[str, ...],
    *,
    estimator: str,
    level: float | None,
    names=BETA_NAMES,
) -> list[str]:
    """Warn about betas at their zero bound and intervals wider than half a beta.

    ``names`` are the coefficients' names (a step model's features). Returns
    the names of the coefficients warned about.
    """
    flagged = []
    for k, name in enumerate(names):
        interval = "" if intervals is None else _interval_text(level, intervals[k])
        if name in at_bound:
            warn(
                f"{estimator}: {name} = {beta[k]:.4g} is at its zero bound"
                f"{interval}: the non-negativity constraint, not the trace, set "
                "it. Check the engine settings (chunk_size, token_budget) and "
                "the decode token convention, or use a trace with more varied "
                "load.",
                UncertaintyWarning,
            )
            flagged.append(name)
        elif intervals is not None and _too_wide(beta[k], intervals[k]):
            warn(
                f"{estimator}: {name} = {beta[k]:.4g} is uncertain"
                f"{interval}, wider than {WIDE_INTERVAL_SHARE:.0%} of its "
                "value. Use a longer trace, or one whose load varies more.",
                UncertaintyWarning,
            )
            flagged.append(name)
    return flagged


def interval_summary(intervals: np.ndarray | None, level: float | None) -> dict | None:
    """``{"level": level, "beta0": [lo, hi], ...}``, or None without intervals."""
    if intervals is None:
        return None
    limits = {name: intervals[k].tolist() for k, name in enumerate(BETA_NAMES)}
    return {"level": level, **limits}


def _too_wide(beta: float, interval: np.ndarray) -> bool:
    # NaN (no interval) is not "wide"; an infinite one is.
    return bool(interval[1] - interval[0] > WIDE_INTERVAL_SHARE * abs(beta))


def _interval_text(level: float, interval: np.ndarray) -> str:
    return f" ({level:.0%} interval [{interval[0]:.4g}, {interval[1]:.4g}])"
