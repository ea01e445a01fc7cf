"""Fits and scores in full-trace context, for any split.

Public through :mod:`sklearn_beta.model_selection`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, MetaEstimatorMixin, RegressorMixin, clone
from sklearn.metrics import r2_score
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted


class TraceContextRegressor(MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """Fit and predict on rows of a trace with the exposures of the whole trace.

    Cross-validation hands an estimator a subset of the phase table, and a
    pipeline builds the exposures of that subset alone: phases at the edges
    of a block lose the pressure of their neighbours outside it. This wrapper
    knows the full ``trace``. ``fit(X)`` fits ``estimator`` on the full trace
    with ``sample_weight`` zero outside the rows of ``X``: a zero weight takes
    a phase out of the least squares, not out of the pressures, so the
    training rows keep their full-trace exposures (and, for the iterative
    estimator, their full-trace step density). ``predict(X)`` predicts the
    whole trace and returns the rows of ``X``, so test phases are scored with
    their full-trace exposures too.

    Rows of ``X`` are identified by their index labels in ``trace``;
    scikit-learn's splitters select rows with ``iloc`` and keep the labels.

    Honest only with a split that keeps training phases away from test
    phases in time (:class:`TraceBlockSplit`, or ``GroupKFold`` over
    instances): with a random split, training phases would carry the
    pressure of the overlapping test phases, whose durations are the target.

    Parameters
    ----------
    estimator : Pipeline
        A pipeline whose transformers turn a phase table into an exposure
        table and whose last step accepts ``sample_weight`` in ``fit``, e.g.
        ``make_pipeline(PhaseExposureTransformer(), IterativeBetaRegressor())``.
    trace : DataFrame
        The full phase table, with a unique index.

    Attributes
    ----------
    estimator_ : Pipeline
        The fitted pipeline (fitted on ``trace`` with weights).
    beta_ : ndarray of shape (3,)
        The fitted betas of the pipeline's last step.
    exposures_ : DataFrame
        Exposure table of the full trace, indexed like ``trace``.
    predictions_ : ndarray of shape (len(trace),)
        Predicted durations of every phase of the trace.

    Examples
    --------
    >>> from sklearn.model_selection import cross_val_score
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn_beta import BaselineBetaRegressor, PhaseExposureTransformer
    >>> from sklearn_beta.datasets import load_sample_trace
    >>> from sklearn_beta.model_selection import (
    ...     TraceBlockSplit, TraceContextRegressor)
    >>> phases = load_sample_trace()
    >>> model = TraceContextRegressor(
    ...     make_pipeline(PhaseExposureTransformer(), BaselineBetaRegressor()),
    ...     trace=phases)
    >>> cross_val_score(model, phases, cv=TraceBlockSplit(3)).shape
    (3,)
    """

    def __init__(self, estimator, trace):
        self.estimator = estimator
        self.trace = trace

    def _positions(self, X) -> np.ndarray:
        if not isinstance(X, pd.DataFrame):
            raise TypeError(
                "TraceContextRegressor identifies rows by their index labels: X "
                f"must be a DataFrame of rows of `trace`, got {type(X).__name__}."
            )
        if not self.trace.index.is_unique:
            raise ValueError(
                "trace must have a unique index: its labels identify the rows."
            )
        pos = self.trace.index.get_indexer(X.index)
        if np.any(pos < 0):
            missing = X.index[pos < 0][:5].tolist()
            raise ValueError(
                f"{int(np.count_nonzero(pos < 0))} row(s) of X are not in trace, "
                f"first index labels: {missing}."
            )
        return pos

    def fit(self, X, y=None, sample_weight=None):
        """Fit on the rows of ``X``, in the context of the full trace.

        Parameters
        ----------
        X : DataFrame
            Rows of ``trace`` (matched by index label).
        y : None
            Must be None: the durations come from the trace.
        sample_weight : array-like of shape (len(X),), default=None
            Weights of the rows of ``X``; the other phases get weight 0.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        if y is not None:
            raise ValueError(
                "TraceContextRegressor takes the durations from the trace: y "
                "must be None."
            )
        if not isinstance(self.trace, pd.DataFrame):
            raise TypeError(
                f"trace must be the phase table (DataFrame), got "
                f"{type(self.trace).__name__}."
            )
        if not isinstance(self.estimator, Pipeline) or len(self.estimator) < 2:
            raise TypeError(
                "estimator must be a Pipeline of a phase-table transformer and a "
                "regressor, e.g. make_pipeline(PhaseExposureTransformer(), "
                f"IterativeBetaRegressor()); got {self.estimator!r}."
            )
        pos = self._positions(X)
        weight = np.zeros(len(self.trace))
        np.add.at(weight, pos, 1.0 if sample_weight is None else sample_weight)
        pipeline = clone(self.estimator)
        # Fit the steps directly: Pipeline.fit would need the weights routed
        # by name (or requested, with metadata routing on).
        exposures = pipeline[:-1].fit_transform(self.trace)
        pipeline[-1].fit(exposures, sample_weight=weight)
        self.estimator_ = pipeline
        self.exposures_ = exposures
        self.predictions_ = np.asarray(pipeline[-1].predict(exposures))
        self.beta_ = getattr(pipeline[-1], "beta_", None)
        self.n_features_in_ = pipeline[0].n_features_in_
        return self

    def exposures(self, X) -> pd.DataFrame:
        """Full-trace exposure rows of the phases in ``X``.

        Parameters
        ----------
        X : DataFrame
            Rows of ``trace``.

        Returns
        -------
        exposures : DataFrame
        """
        check_is_fitted(self)
        return self.exposures_.iloc[self._positions(X)]

    def predict(self, X):
        """Predicted durations of the phases in ``X``, in full-trace context.

        Parameters
        ----------
        X : DataFrame
            Rows of ``trace``.

        Returns
        -------
        y_pred : ndarray of shape (len(X),)
        """
        check_is_fitted(self)
        return self.predictions_[self._positions(X)]

    def score(self, X, y=None, sample_weight=None):
        """R^2 of the predicted durations of the phases in ``X``.

        Parameters
        ----------
        X : DataFrame
            Rows of ``trace``.
        y : array-like of shape (len(X),), default=None
            Observed durations; taken from the trace when None.
        sample_weight : array-like of shape (len(X),), default=None
            Weights of the phases.

        Returns
        -------
        score : float
        """
        if y is None:
            y = self.exposures(X)["duration"].to_numpy()
        return r2_score(y, self.predict(X), sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        tags.input_tags.string = True
        return tags
