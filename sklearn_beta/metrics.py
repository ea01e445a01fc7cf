"""Metrics: errors against known betas, and scorers for model selection."""

from __future__ import annotations

import copy
import warnings
from functools import partial

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import get_scorer as _sklearn_get_scorer
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    r2_score,
    root_mean_squared_error,
)
from sklearn.metrics._scorer import _BaseScorer
from sklearn.pipeline import Pipeline

from ._base import BaseBetaRegressor
from ._exposure import _COL, PhaseExposureTransformer
from ._validation import check_phases
from ._what_if import WHAT_IF_PROBES, probe_relative_errors
from .model_selection import TraceContextRegressor

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
    tokens = _step_tokens(steps)
    design = np.column_stack((np.ones(tokens.shape[0]), tokens))
    dt_true = design @ beta_true
    if np.any(dt_true <= 0):
        bad = np.flatnonzero(dt_true <= 0)[:5]
        raise ValueError(
            f"beta_true gives non-positive step times on steps {bad.tolist()}: "
            "relative errors are undefined there."
        )
    return float(np.mean(np.abs(design @ beta_est - dt_true) / dt_true))


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


# --- Scorers for cross-validation and GridSearchCV (phase durations) ---
#
# Scikit-learn's string scorers compute ``metric(y, estimator.predict(X))`` and
# fail when ``y`` is None, which is how a phase table is cross-validated (the
# target, each phase's duration, is in the table). These scorers take the
# target from the model's view of the phases instead: the ``duration`` and
# ``is_prefill`` of the exposure table (for the usual two-step pipeline, read
# by validating the phase table, which gives the same values without building
# the grid). Predictions go through scikit-learn's multi-metric cache, so
# several scorers predict once. An explicit ``y`` still wins. They subclass
# scikit-learn's (private) scorer base class so that ``set_score_request`` and
# metadata routing of ``sample_weight`` work as for any ``make_scorer`` scorer.
# scikit-learn checks ``scoring=`` strings against its own registry, frozen
# when it is imported, so the names below are used through ``get_scorer(name)``
# or ``phase_scorers(*names)``.

PHASES = (None, "prefill", "decode")


def _observed_durations(estimator, X):
    """Durations and kinds of the phases of ``X`` as ``estimator`` sees them.

    Returns ``(duration, is_prefill)``, both None when the table lacks them,
    or None when ``estimator`` is not a beta-regressor model.
    """
    if isinstance(estimator, TraceContextRegressor):
        table = estimator.exposures(X)
    elif isinstance(estimator, Pipeline) and isinstance(
        estimator[-1], BaseBetaRegressor
    ):
        first = estimator[0]
        if len(estimator) == 2 and isinstance(first, PhaseExposureTransformer):
            # Validating the phase table gives the same durations and kinds
            # as its exposure table, without building the grid again.
            arrays = check_phases(X, first._columns())
            return arrays.duration, arrays.is_prefill
        table = estimator[:-1].transform(X)
    elif isinstance(estimator, BaseBetaRegressor):
        table = X
    else:
        return None
    table = np.asarray(table, dtype=np.float64)
    if table.shape[1] <= max(_COL["duration"], _COL["is_prefill"]):
        return None, None
    return table[:, _COL["duration"]], table[:, _COL["is_prefill"]] == 1


def phase_durations(estimator, X, y=None, *, predict=None):
    """Observed and predicted durations of the phases in ``X``, and their kind.

    Parameters
    ----------
    estimator : fitted Pipeline, TraceContextRegressor or beta regressor
        A pipeline ending in :class:`BaselineBetaRegressor` or
        :class:`IterativeBetaRegressor`, or a
        :class:`~sklearn_beta.model_selection.TraceContextRegressor` (``X`` is
        then the phase table), or such a regressor (``X`` is then the exposure
        table). Any other regressor is scored from ``estimator.predict(X)``
        and needs ``y``.
    X : DataFrame
        Phase table (pipeline) or exposure table (regressor).
    y : array-like of shape (n_phases,), default=None
        Observed durations; taken from the exposure table when None.
    predict : callable or None, default=None
        Returns ``estimator.predict(X)``, possibly cached (scikit-learn's
        multi-metric scoring shares one prediction among scorers).

    Returns
    -------
    y_true, y_pred : ndarray of shape (n_phases,)
        Observed and predicted durations.
    is_prefill : ndarray of bool of shape (n_phases,) or None
        Phase kind, None when the table does not tell.
    """
    observed = _observed_durations(estimator, X)
    y_pred = np.asarray(estimator.predict(X) if predict is None else predict())
    if observed is None:
        if y is None:
            raise ValueError(
                f"Cannot find phase durations for a {type(estimator).__name__}: "
                "pass y, or score a Pipeline ending in a beta regressor."
            )
        return np.asarray(y, dtype=np.float64), y_pred, None
    duration, is_prefill = observed
    if y is None:
        if duration is None:
            raise ValueError(
                "y is None and the table has no 'duration' column: pass the "
                "observed durations as y, or the full exposure table."
            )
        y = duration
    return np.asarray(y, dtype=np.float64), y_pred, is_prefill


class PhaseDurationScorer(_BaseScorer):
    """Score predicted phase durations, optionally of one phase kind only.

    Use :func:`make_phase_scorer` to build one, or :func:`get_scorer` for the
    predefined ones.

    Parameters
    ----------
    score_func : callable
        ``score_func(y_true, y_pred, **kwargs)``, e.g. ``r2_score``.
    sign : {1, -1}
        -1 for errors, so that greater is better as scikit-learn expects.
    kwargs : dict
        Extra keyword arguments of ``score_func``.
    phase : {None, "prefill", "decode"}, default=None
        Score only that kind of phase; None scores all of them.
    """

    def __init__(self, score_func, sign, kwargs, phase=None):
        super().__init__(score_func, sign, kwargs, response_method="predict")
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}.")
        self._phase = phase

    def __repr__(self):
        name = getattr(self._score_func, "__name__", repr(self._score_func))
        sign = "" if self._sign > 0 else ", greater_is_better=False"
        phase = "" if self._phase is None else f", phase={self._phase!r}"
        extra = "".join(f", {k}={v!r}" for k, v in self._kwargs.items())
        return f"make_phase_scorer({name}{sign}{phase}{extra})"

    def __call__(self, estimator, X, y_true=None, *, sample_weight=None, **kwargs):
        """Score ``estimator`` on the phases of ``X``.

        Parameters
        ----------
        estimator : fitted Pipeline or beta regressor
            See :func:`phase_durations`.
        X : DataFrame
            Phase table (pipeline) or exposure table (regressor).
        y_true : array-like of shape (n_phases,), default=None
            Observed durations; taken from the exposure table when None.
        sample_weight : array-like of shape (n_phases,), default=None
            Weights of the phases.
        **kwargs
            Other metadata, with metadata routing enabled.

        Returns
        -------
        score : float
        """
        if sample_weight is not None:
            kwargs["sample_weight"] = sample_weight
        return self._score(None, estimator, X, y_true, **kwargs)

    def _score(self, method_caller, estimator, X, y_true=None, **kwargs):
        # method_caller is scikit-learn's prediction cache, shared by the
        # scorers of one multi-metric evaluation.
        self._warn_overlap(
            message="Metadata overlaps the kwargs given to make_phase_scorer.",
            kwargs=kwargs,
        )
        predict = None
        if method_caller is not None:
            predict = partial(method_caller, estimator, "predict", X)
        y_true, y_pred, is_prefill = phase_durations(
            estimator, X, y_true, predict=predict
        )
        keep = slice(None)
        if self._phase is not None:
            if is_prefill is None:
                raise ValueError(
                    f"Scoring {self._phase} phases needs the exposure table's "
                    "'is_prefill' column; score a Pipeline ending in a beta "
                    "regressor or pass the full exposure table."
                )
            keep = is_prefill if self._phase == "prefill" else ~is_prefill
            if not keep.any():
                warnings.warn(
                    f"No {self._phase} phase to score: returning NaN.",
                    UndefinedMetricWarning,
                    stacklevel=2,
                )
                return float("nan")
        scoring_kwargs = {**self._kwargs, **kwargs}
        if scoring_kwargs.get("sample_weight") is not None:
            weight = np.asarray(scoring_kwargs["sample_weight"], dtype=np.float64)
            scoring_kwargs["sample_weight"] = weight[keep]
        return self._sign * float(
            self._score_func(y_true[keep], y_pred[keep], **scoring_kwargs)
        )


def make_phase_scorer(
    score_func, *, phase=None, greater_is_better=True, **kwargs
) -> PhaseDurationScorer:
    """Make a scorer of phase durations from a regression metric.

    Like :func:`sklearn.metrics.make_scorer`, but the observed durations come
    from the exposure table when ``y`` is None, so that
    ``cross_val_score(pipeline, phases, scoring=scorer)`` works on a phase
    table alone, and ``phase`` restricts the score to prefill or decode rows.

    Parameters
    ----------
    score_func : callable
        ``score_func(y_true, y_pred, **kwargs)``.
    phase : {None, "prefill", "decode"}, default=None
        Score only that kind of phase.
    greater_is_better : bool, default=True
        False for errors: the scorer then returns their negative.
    **kwargs
        Extra keyword arguments of ``score_func``.

    Returns
    -------
    scorer : PhaseDurationScorer
        Callable as ``scorer(estimator, X, y=None)``.

    Examples
    --------
    >>> from sklearn.metrics import median_absolute_error
    >>> from sklearn_beta.metrics import make_phase_scorer
    >>> make_phase_scorer(median_absolute_error, phase="decode",
    ...                   greater_is_better=False)
    make_phase_scorer(median_absolute_error, greater_is_better=False, \
phase='decode')
    """
    return PhaseDurationScorer(
        score_func, 1 if greater_is_better else -1, kwargs, phase
    )


#: The predefined scorers, by name. ``neg_*`` are errors with their sign
#: flipped (greater is better), as in scikit-learn.
SCORERS = {
    "duration_r2": make_phase_scorer(r2_score),
    "prefill_r2": make_phase_scorer(r2_score, phase="prefill"),
    "decode_r2": make_phase_scorer(r2_score, phase="decode"),
    "neg_duration_mape": make_phase_scorer(
        mean_absolute_percentage_error, greater_is_better=False
    ),
    "neg_prefill_mape": make_phase_scorer(
        mean_absolute_percentage_error, phase="prefill", greater_is_better=False
    ),
    "neg_decode_mape": make_phase_scorer(
        mean_absolute_percentage_error, phase="decode", greater_is_better=False
    ),
    "neg_duration_rmse": make_phase_scorer(
        root_mean_squared_error, greater_is_better=False
    ),
    "neg_duration_mae": make_phase_scorer(mean_absolute_error, greater_is_better=False),
}


def get_scorer_names() -> list[str]:
    """Names of the predefined phase-duration scorers.

    Returns
    -------
    names : list of str
    """
    return sorted(SCORERS)


def get_scorer(scoring):
    """A phase-duration scorer by name (a copy), else scikit-learn's.

    Parameters
    ----------
    scoring : str or callable
        One of :func:`get_scorer_names`, any scikit-learn scorer name, or a
        scorer (returned unchanged).

    Returns
    -------
    scorer : callable

    Examples
    --------
    >>> from sklearn_beta.metrics import get_scorer
    >>> get_scorer("neg_duration_mape")
    make_phase_scorer(mean_absolute_percentage_error, greater_is_better=False)
    """
    if isinstance(scoring, str) and scoring in SCORERS:
        return copy.deepcopy(SCORERS[scoring])
    return _sklearn_get_scorer(scoring)


def phase_scorers(*names: str) -> dict:
    """A ``{name: scorer}`` dict for multi-metric ``scoring=``.

    Parameters
    ----------
    *names : str
        Scorer names; all predefined ones when empty.

    Returns
    -------
    scoring : dict

    Examples
    --------
    >>> from sklearn_beta.metrics import phase_scorers
    >>> sorted(phase_scorers("duration_r2", "neg_decode_mape"))
    ['duration_r2', 'neg_decode_mape']
    """
    return {name: get_scorer(name) for name in (names or get_scorer_names())}


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
        ``beta_true`` gives a probe a zero step time.

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
    probes = WHAT_IF_PROBES if probes is None else probes
    return float(np.max(probe_relative_errors(beta_est, beta_true, probes)))
