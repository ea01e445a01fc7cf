"""Scorers of phase durations for cross-validation and GridSearchCV.

Public through :mod:`sklearn_beta.metrics`.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import get_scorer as _sklearn_get_scorer
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    r2_score,
    root_mean_squared_error,
)
from sklearn.pipeline import Pipeline
from sklearn.utils.metadata_routing import MetadataRequest

from ..core._schema import column, has_column
from ..core._warnings import warn
from ..estimators._base import BaseBetaRegressor
from ..estimators._exposure import PhaseExposureTransformer, validated_phases
from ._context import TraceContextRegressor

# --- Scorers for cross-validation and GridSearchCV (phase durations) ---
#
# Scikit-learn's string scorers compute ``metric(y, estimator.predict(X))`` and
# fail when ``y`` is None, which is how a phase table is cross-validated (the
# target, each phase's duration, is in the table). These scorers are plain
# callables ``scorer(estimator, X, y=None)`` that take the target from the
# model's view of the phases instead: the ``duration`` and ``is_prefill`` of
# the exposure table (for the usual two-step pipeline, read by validating the
# phase table, which gives the same values without building the grid). An
# explicit ``y`` still wins. They request ``sample_weight`` through
# scikit-learn's public metadata-routing API (``set_score_request``), and
# :func:`phase_scorers` makes one multi-metric callable that predicts once.

PHASES = (None, "prefill", "decode")
#: The predefined scorers: name -> (metric, phase, greater_is_better).
_PREDEFINED = MappingProxyType(
    {
        "duration_r2": (r2_score, None, True),
        "prefill_r2": (r2_score, "prefill", True),
        "decode_r2": (r2_score, "decode", True),
        "neg_duration_mape": (mean_absolute_percentage_error, None, False),
        "neg_prefill_mape": (mean_absolute_percentage_error, "prefill", False),
        "neg_decode_mape": (mean_absolute_percentage_error, "decode", False),
        "neg_duration_rmse": (root_mean_squared_error, None, False),
        "neg_duration_mae": (mean_absolute_error, None, False),
    }
)


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
            arrays = validated_phases(first, X)
            return arrays.duration, arrays.is_prefill
        table = estimator[:-1].transform(X)
    elif isinstance(estimator, BaseBetaRegressor):
        table = X
    else:
        return None
    table = np.asarray(table, dtype=np.float64)
    if not (has_column(table, "duration") and has_column(table, "is_prefill")):
        return None, None
    return column(table, "duration"), column(table, "is_prefill") == 1


def phase_durations(estimator, X, y=None):
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

    Returns
    -------
    y_true, y_pred : ndarray of shape (n_phases,)
        Observed and predicted durations.
    is_prefill : ndarray of bool of shape (n_phases,) or None
        Phase kind, None when the table does not tell.
    """
    observed = _observed_durations(estimator, X)
    y_pred = np.asarray(estimator.predict(X))
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


class _ScoreRequest:
    """``set_score_request(sample_weight=...)`` on scikit-learn's public API."""

    _sample_weight_request = None

    def set_score_request(self, *, sample_weight=None):
        """Request ``sample_weight`` from the metadata routing of ``score``.

        Parameters
        ----------
        sample_weight : bool, str or None, default=None
            True to receive the routed ``sample_weight``, False not to, a
            string to receive it under that alias; None: an error if passed.

        Returns
        -------
        self : object
        """
        self._sample_weight_request = sample_weight
        return self

    def get_metadata_routing(self) -> MetadataRequest:
        """The metadata this scorer consumes: ``sample_weight``, as requested.

        Returns
        -------
        routing : MetadataRequest
        """
        request = MetadataRequest(owner=type(self).__name__)
        request.score.add_request(
            param="sample_weight", alias=self._sample_weight_request
        )
        return request


class PhaseDurationScorer(_ScoreRequest):
    """Score predicted phase durations, optionally of one phase kind only.

    A plain callable ``scorer(estimator, X, y=None, sample_weight=None)``;
    build one with :func:`make_phase_scorer` or :func:`get_scorer`.

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
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}.")
        self._score_func = score_func
        self._sign = sign
        self._kwargs = dict(kwargs)
        self._phase = phase

    def __repr__(self):
        name = getattr(self._score_func, "__name__", repr(self._score_func))
        sign = "" if self._sign > 0 else ", greater_is_better=False"
        phase = "" if self._phase is None else f", phase={self._phase!r}"
        extra = "".join(f", {k}={v!r}" for k, v in self._kwargs.items())
        return f"make_phase_scorer({name}{sign}{phase}{extra})"

    def __call__(self, estimator, X, y_true=None, *, sample_weight=None):
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

        Returns
        -------
        score : float
        """
        durations = phase_durations(estimator, X, y_true)
        return self.score_durations(*durations, sample_weight=sample_weight)

    def score_durations(self, y_true, y_pred, is_prefill, *, sample_weight=None):
        """The score of observed and predicted durations of known kinds."""
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
                warn(
                    f"No {self._phase} phase to score: returning NaN.",
                    UndefinedMetricWarning,
                )
                return float("nan")
        kwargs = dict(self._kwargs)
        if sample_weight is not None:
            kwargs["sample_weight"] = np.asarray(sample_weight, np.float64)[keep]
        return self._sign * float(
            self._score_func(y_true[keep], y_pred[keep], **kwargs)
        )


class PhaseScorers(_ScoreRequest):
    """Several phase-duration scorers as one multi-metric callable.

    ``scorers(estimator, X, y=None)`` returns ``{name: score}`` from one
    prediction; pass it as ``scoring=`` (with ``refit="<name>"`` in a
    search). Build it with :func:`phase_scorers`.

    Parameters
    ----------
    scorers : dict of str to PhaseDurationScorer
        The scorers, by name.
    """

    def __init__(self, scorers: dict):
        self.scorers = dict(scorers)

    def __repr__(self):
        return f"PhaseScorers({sorted(self.scorers)})"

    def __call__(self, estimator, X, y_true=None, *, sample_weight=None) -> dict:
        """The score of every scorer, from one prediction.

        Parameters
        ----------
        estimator, X, y_true, sample_weight
            As for :class:`PhaseDurationScorer`.

        Returns
        -------
        scores : dict of str to float
        """
        durations = phase_durations(estimator, X, y_true)
        return {
            name: scorer.score_durations(*durations, sample_weight=sample_weight)
            for name, scorer in self.scorers.items()
        }


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


def get_scorer_names() -> list[str]:
    """Names of the predefined phase-duration scorers.

    Returns
    -------
    names : list of str
    """
    return sorted(_PREDEFINED)


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
    if isinstance(scoring, str) and scoring in _PREDEFINED:
        metric, phase, greater_is_better = _PREDEFINED[scoring]
        return make_phase_scorer(
            metric, phase=phase, greater_is_better=greater_is_better
        )
    return _sklearn_get_scorer(scoring)


def phase_scorers(*names: str) -> PhaseScorers:
    """One multi-metric scorer for ``scoring=``: several scores, one prediction.

    Parameters
    ----------
    *names : str
        Scorer names; all predefined ones when empty.

    Returns
    -------
    scoring : PhaseScorers
        ``scoring(estimator, X, y=None)`` returns ``{name: score}``.

    Examples
    --------
    >>> from sklearn_beta.metrics import phase_scorers
    >>> phase_scorers("duration_r2", "neg_decode_mape")
    PhaseScorers(['duration_r2', 'neg_decode_mape'])
    """
    return PhaseScorers(
        {name: get_scorer(name) for name in (names or get_scorer_names())}
    )
