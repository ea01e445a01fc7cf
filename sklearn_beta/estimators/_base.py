"""Shared fit / predict / score plumbing of the beta regressors."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context
from sklearn.metrics import r2_score
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from ..core._memory import large_fit_memory
from ..core._schema import (
    EXPOSURE_COLUMNS,
    column,
    fit_design,
    has_column,
    step_model_of,
)
from ..core._step_features import PUBLISHED_FEATURES
from ..core._trained_physics import IDENTIFIABLE_FEATURES, fixed_coefficients
from ..trust._identifiability import BETA_NAMES
from ..trust._uncertainty import trust_warnings
from ._backend import backend_for
from ._fit import FittedBetas

N_BETAS = 3


class BaseBetaRegressor(RegressorMixin, BaseEstimator):
    """Common base: validates the exposure table and defaults ``y`` to durations.

    Subclasses implement ``_fit_table(table, duration, sample_weight) -> beta``
    and ``_predict_table(table) -> durations`` on plain float arrays, and
    ``_fit_source(source) -> beta`` on a backend's data
    source (:mod:`~sklearn_beta.estimators._fit`).
    """

    _min_columns = N_BETAS

    def _check_table(self, X, y=None, *, reset: bool, need_y: bool = True):
        """Validate the exposure table; return it with the target durations."""
        if y is None:
            table = validate_data(self, X, reset=reset, dtype=np.float64)
        else:
            table, y = validate_data(
                self, X, y, reset=reset, dtype=np.float64, y_numeric=True
            )
        self._check_width(table.shape[1])
        return table, self._durations(table, y) if need_y else None

    def _check_width(self, n_columns: int) -> None:
        if n_columns < self._min_columns:
            raise ValueError(
                f"{type(self).__name__} needs the exposure table of "
                f"PhaseExposureTransformer, with at least {self._min_columns} "
                f"columns {list(EXPOSURE_COLUMNS[: self._min_columns])}; got "
                f"{n_columns} feature(s)."
            )

    @staticmethod
    def _durations(table: np.ndarray, y) -> np.ndarray:
        if y is not None:
            return y
        if not has_column(table, "duration"):
            raise ValueError(
                "y is None and the table has no 'duration' column: pass the "
                "observed phase durations as y, or the full exposure table."
            )
        return column(table, "duration")

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Fit the betas.

        Parameters
        ----------
        X : DataFrame or ndarray of shape (n_phases, n_columns)
            Exposure table from :class:`PhaseExposureTransformer`.
        y : array-like of shape (n_phases,), default=None
            Observed phase durations; taken from the table's ``duration``
            column when None.
        sample_weight : array-like of shape (n_phases,), default=None
            Non-negative weights of the phases in the least-squares fit.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        backend = backend_for(X)
        if backend is not None:  # a collection out of memory, such as Dask's
            source = backend.exposures(X, y, sample_weight)
            self._check_width(len(source.columns))
            self.feature_names_in_ = np.asarray(source.columns, dtype=object)
            self.n_features_in_ = len(source.columns)
            # the backend's table's step model, read where its partitions live
            self.step_features_, self.step_basis_ = source.step_model()
            # Level 5: fit's caller, past _fit_context's wrapper.
            return self._set_betas(self._fit_source(source))
        table, duration = self._check_table(X, y, reset=True)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, table, ensure_non_negative=True
            )
        with large_fit_memory(table.shape[0]):
            beta = self._fit_table(table, duration, sample_weight)
        return self._set_betas(beta)

    def _fitted(self, fitted: FittedBetas) -> np.ndarray:
        """Set a fit's ``diagnostics_`` and ``beta_ci_``; return its betas."""
        self.diagnostics_ = fitted.diagnostics
        self.beta_ci_ = fitted.beta_ci
        return fitted.beta

    def _set_betas(self, beta: np.ndarray):
        """The fitted betas as ``beta_`` and ``coef_`` (no intercept), and
        the warnings about those the fit cannot vouch for."""
        self.beta_ = np.asarray(beta, dtype=np.float64)
        self.coef_ = self.beta_.copy()
        self.intercept_ = 0.0
        self.coef_names_ = self._coef_names()
        # What a trained-physics fit leaves to BLIS's export (by name, why).
        self.fixed_coefficients_ = (
            {} if getattr(self, "step_basis_", None) is None else fixed_coefficients()
        )
        self._warn_untrusted()
        return self

    def _warn_untrusted(self) -> None:
        # Coefficients the trace does not identify already raised an
        # IdentifiabilityWarning; do not warn twice about them.
        skip = set(self.diagnostics_["not_identified"])
        ci = self.beta_ci_
        names = self._coef_names()
        if ci is not None:
            ci = np.where(np.isin(names, list(skip))[:, None], np.nan, ci)
        trust_warnings(
            self.beta_,
            ci,
            [n for n in self.diagnostics_["at_zero_bound"] if n not in skip],
            estimator=type(self).__name__,
            level=self.confidence_level,
            names=names,
        )

    def _table_design(self, table: np.ndarray) -> np.ndarray:
        """The design of a table to predict, after checking that it has the
        fit's step model."""
        features = step_model_of(table)
        design, basis = fit_design(table)
        fitted_basis = getattr(self, "step_basis_", None)
        same = features == tuple(getattr(self, "step_features_", PUBLISHED_FEATURES))
        if not same or (basis is None) != (fitted_basis is None):
            fitted = "trained-physics" if fitted_basis is not None else None
            raise ValueError(
                f"The exposure table has step model {list(features)}"
                f"{' (trained-physics)' if basis is not None else ''}, the fit "
                f"had {fitted or list(self.step_features_)}: transform with the "
                "same step_model."
            )
        return design

    def _coef_names(self) -> tuple[str, ...]:
        """Names of the coefficients in warnings and diagnostics: beta0,
        beta1, beta2 for the published step model, else its features."""
        if getattr(self, "step_basis_", None) is not None:
            return IDENTIFIABLE_FEATURES
        features = getattr(self, "step_features_", PUBLISHED_FEATURES)
        return BETA_NAMES if tuple(features) == PUBLISHED_FEATURES else tuple(features)

    def predict(self, X):
        """Predict each phase's duration from the fitted betas.

        Parameters
        ----------
        X : DataFrame or ndarray of shape (n_phases, n_columns)
            Exposure table from :class:`PhaseExposureTransformer`.

        Returns
        -------
        y_pred : ndarray of shape (n_phases,)
            Predicted durations, in the time unit of the trace.
        """
        check_is_fitted(self)
        backend = backend_for(X)
        if backend is not None:
            return backend.predict(self, X)
        table, _ = self._check_table(X, reset=False, need_y=False)
        return self._predict_table(table)

    def score(self, X, y=None, sample_weight=None):
        """R^2 of the predicted phase durations.

        Parameters
        ----------
        X : DataFrame or ndarray of shape (n_phases, n_columns)
            Exposure table.
        y : array-like of shape (n_phases,), default=None
            Observed durations; the table's ``duration`` column when None.
        sample_weight : array-like of shape (n_phases,), default=None
            Weights of the phases.

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        backend = backend_for(X)
        if backend is not None:
            return backend.score(self, X, y, sample_weight)
        table, duration = self._check_table(X, y, reset=False)
        return r2_score(
            duration, self._predict_table(table), sample_weight=sample_weight
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        # Three non-negative coefficients and no intercept: on arbitrary
        # regression data the fit is poor by design.
        tags.regressor_tags.poor_score = True
        return tags
