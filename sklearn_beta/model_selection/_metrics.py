"""Metrics: errors against known betas, and scorers for model selection."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..trust._what_if import WHAT_IF_PROBES, probe_tokens, relative_step_errors
from ._scorers import (
    PhaseDurationScorer,
    PhaseScorers,
    get_scorer,
    get_scorer_names,
    make_phase_scorer,
    phase_durations,
    phase_scorers,
)

__all__ = [
    "PhaseDurationScorer",
    "PhaseScorers",
    "coefficient_errors",
    "get_scorer",
    "get_scorer_names",
    "make_phase_scorer",
    "phase_durations",
    "phase_scorers",
    "step_time_error",
    "what_if_error",
]

# --- Coefficient and step-time errors against known betas (simulated traces) ---


def _as_beta(beta, name: str) -> np.ndarray:
    values = np.asarray(beta, dtype=float)
    if values.shape[-1:] != (3,) or not np.all(np.isfinite(values)):
        raise ValueError(
            f"{name} must hold finite (beta0, beta1, beta2) triples in its last "
            f"axis, got shape {values.shape}."
        )
    return values


def coefficient_errors(beta_true, beta_est) -> np.ndarray:
    """Signed relative error of each estimated coefficient.

    ``(beta_est - beta_true) / beta_true`` per coefficient: 0.05 means 5 % too
    high. Where a true coefficient is 0 a relative error is undefined: it is
    0 when the estimate is 0 as well and ``+inf`` (``-inf``) when the
    estimate is positive (negative), so a spurious cost is never hidden.

    Parameters
    ----------
    beta_true : array-like of shape (3,)
        True ``(beta0, beta1, beta2)``.
    beta_est : array-like of shape (3,) or (n_estimates, 3)
        Estimated betas; several estimates may be stacked in rows.

    Returns
    -------
    errors : ndarray of shape (3,) or (n_estimates, 3)
        Signed relative errors, in the order ``beta0, beta1, beta2``.

    Examples
    --------
    >>> from sklearn_beta.metrics import coefficient_errors
    >>> coefficient_errors([5e-3, 2e-5, 8e-5], [4e-3, 2e-5, 1e-4]).round(6)
    array([-0.2 ,  0.  ,  0.25])
    """
    beta_true = _as_beta(beta_true, "beta_true")
    beta_est = _as_beta(beta_est, "beta_est")
    if beta_true.ndim != 1:
        raise ValueError(f"beta_true must have shape (3,), got {beta_true.shape}.")
    diff = beta_est - beta_true
    zero = beta_true == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = diff / np.where(zero, 1.0, beta_true)
    return np.where(zero, np.where(diff == 0, 0.0, np.copysign(np.inf, diff)), errors)


def step_time_error(beta_true, beta_est, steps) -> float:
    """Mean relative error of the step times predicted by estimated betas.

    Over the true steps of a simulated trace, the mean of
    ``|dt_est - dt_true| / dt_true`` with ``dt = beta0 + beta1 * T_pf +
    beta2 * T_dec``, both computed from the step's token counts without
    noise: it measures the coefficients, not the simulator's noise. It is
    the error a simulator calibrated with ``beta_est`` makes on each step.

    Parameters
    ----------
    beta_true : array-like of shape (3,)
        True ``(beta0, beta1, beta2)``.
    beta_est : array-like of shape (3,)
        Estimated betas.
    steps : DataFrame or array-like of shape (n_steps, 2)
        The step table of :func:`~sklearn_beta.datasets.simulate_trace`
        (columns ``prefill_tokens`` and ``decode_tokens`` are used), or the
        two token counts ``(T_pf, T_dec)`` per row.

    Returns
    -------
    error : float
        Mean relative step-time error (0.01 means 1 %).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_beta.metrics import step_time_error
    >>> tokens = np.array([[64, 0], [0, 10]])
    >>> round(step_time_error([1e-3, 1e-5, 1e-4], [1e-3, 1e-5, 2e-4], tokens), 6)
    0.25
    """
    beta_true = _as_beta(beta_true, "beta_true")
    beta_est = _as_beta(beta_est, "beta_est")
    if beta_true.ndim != 1 or beta_est.ndim != 1:
        raise ValueError("beta_true and beta_est must each have shape (3,).")
    errors = relative_step_errors(beta_est, beta_true, _step_tokens(steps), "steps")
    return float(np.mean(errors))


def _step_tokens(steps) -> np.ndarray:
    if isinstance(steps, pd.DataFrame):
        missing = {"prefill_tokens", "decode_tokens"} - set(steps.columns)
        if missing:
            raise ValueError(
                f"steps lacks column(s) {sorted(missing)}; expected the step table "
                "of simulate_trace(..., return_steps=True)."
            )
        tokens = steps[["prefill_tokens", "decode_tokens"]].to_numpy(dtype=float)
    else:
        tokens = np.asarray(steps, dtype=float)
    if tokens.ndim != 2 or tokens.shape[1] != 2 or tokens.shape[0] == 0:
        raise ValueError(
            "steps must have at least one row of two token counts "
            f"(T_pf, T_dec), got shape {tokens.shape}."
        )
    if not np.all(np.isfinite(tokens)) or np.any(tokens < 0):
        raise ValueError("steps: token counts must be finite and non-negative.")
    return tokens


# --- What-if error: steps a window rarely shows ---------------------------------


def what_if_error(beta_est, beta_true, probes=None) -> float:
    """Worst relative error of the step times of a few probe steps.

    A simulator calibrated on a quiet window is asked about a busy hour: the
    error on the window's own steps (:func:`step_time_error`) does not say
    how well the betas predict steps the window rarely shows. This is the
    largest ``|dt_est - dt_true| / dt_true`` over probe steps, with
    ``dt = beta0 + beta1 * prefill_tokens + beta2 * decode_tokens``.

    Parameters
    ----------
    beta_est : array-like of shape (3,)
        Estimated ``(beta0, beta1, beta2)``.
    beta_true : array-like of shape (3,)
        True betas.
    probes : array-like of shape (n_probes, 2) or None, default=None
        Probe steps as ``(prefill_tokens, decode_tokens)``. None: a
        256-request decode batch ``(0, 256)``, a lone 2048-token prefill
        chunk ``(2048, 0)`` and a mixed step ``(512, 128)``.

    Returns
    -------
    error : float
        The worst relative error over the probes (0.02 means 2 %).

    Raises
    ------
    ValueError
        If a probe is not a pair of finite non-negative token counts, or
        ``beta_true`` gives a probe a non-positive step time.

    Examples
    --------
    >>> from sklearn_beta.metrics import what_if_error
    >>> round(what_if_error([5e-3, 2e-5, 1.1e-4], [6e-3, 2e-5, 1e-4]), 6)
    0.049367
    >>> round(what_if_error([5e-3, 2e-5, 1.1e-4], [6e-3, 2e-5, 1e-4],
    ...                     probes=[(2048, 0)]), 6)
    0.021295
    """
    beta_est = _as_beta(beta_est, "beta_est")
    beta_true = _as_beta(beta_true, "beta_true")
    if beta_true.ndim != 1 or beta_est.ndim != 1:
        raise ValueError("beta_est and beta_true must each have shape (3,).")
    tokens = probe_tokens(WHAT_IF_PROBES if probes is None else probes)
    return float(np.max(relative_step_errors(beta_est, beta_true, tokens, "probes")))
