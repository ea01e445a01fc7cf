"""Shared fit / predict / score plumbing of the beta regressors."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context
from sklearn.metrics import r2_score
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from ..core._grid import Timeline
from ..core._memory import large_fit_memory
from ..core._schema import EXPOSURE_COLUMNS, column, has_column, phase_windows
from ..distributed._fleet import is_dask_collection
from ..exceptions import UncertaintyWarning
from ..trust._identifiability import BETA_NAMES
from ..trust._time_blocks import time_blocks
from ..trust._uncertainty import (
    SandwichSums,
    intervals_from_sums,
    sandwich_sums,
    trust_warnings,
)

N_BETAS = 3


class BaseBetaRegressor(RegressorMixin, BaseEstimator):
    """Common base: validates the exposure table and defaults ``y`` to durations.

    Subclasses implement ``_fit_table(table, duration, sample_weight) -> beta``
    and ``_predict_table(table) -> durations`` on plain float arrays.
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
        if is_dask_collection(X):  # fleet scale: see sklearn_beta._dask_fit
            from ..distributed._dask_fit import fit_partitions

            return fit_partitions(self, X, y, sample_weight)
        table, duration = self._check_table(X, y, reset=True)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, table, ensure_non_negative=True
            )
        with large_fit_memory(table.shape[0]):
            beta = self._fit_table(table, duration, sample_weight)
        # _fit_table has set beta_ci_ through _beta_intervals.
        return self._set_betas(beta)

    def _set_betas(self, beta: np.ndarray, stacklevel: int = 6):
        """The fitted betas as ``beta_`` and ``coef_`` (no intercept), and
        the warnings about those the fit cannot vouch for (``stacklevel``
        from the warning to the user's ``fit`` call)."""
        self.beta_ = np.asarray(beta, dtype=np.float64)
        self.coef_ = self.beta_.copy()
        self.intercept_ = 0.0
        self._warn_untrusted(stacklevel)
        return self

    def _beta_intervals(
        self,
        timeline: Timeline | None,
        beta: np.ndarray,
        jac: np.ndarray,
        residual: np.ndarray,
        weight: np.ndarray | None,
        *,
        unit: float = 1.0,
        stacklevel: int = 6,
    ) -> np.ndarray | None:
        """``beta_ci_`` of the fitted least-squares objective.

        ``jac`` and ``residual`` are the objective's Jacobian (n_phases, 3)
        and residuals at ``beta / unit`` (the fit's time unit), ``weight``
        its weights; the intervals come back in the unit of ``beta``. None
        when ``confidence_level`` is None; NaN, with a warning, without the
        ``timeline`` whose phase windows form the time blocks (a table that
        is not a full exposure table).
        """
        if self.confidence_level is None:
            return None
        if timeline is None:
            warnings.warn(
                f"{type(self).__name__}: beta_ci_ needs the full exposure table "
                f"(columns {list(EXPOSURE_COLUMNS)}) to group phases into time "
                "blocks; it is NaN. Fit on PhaseExposureTransformer's output, "
                "or set confidence_level=None.",
                UncertaintyWarning,
                stacklevel=stacklevel,
            )
            return np.full((len(BETA_NAMES), 2), np.nan)
        block, block_instance, n_lags = time_blocks(*phase_windows(timeline))
        sums = sandwich_sums(jac, residual, weight, block, block_instance, n_lags)
        return self._intervals_from_sums(beta, sums, n_lags, unit)

    def _at_bound(self, beta: np.ndarray) -> np.ndarray:
        # The NNLS constraint set these, not the trace: one-sided intervals.
        bound = self.diagnostics_["at_zero_bound"]
        return (beta <= 0) | np.isin(BETA_NAMES, bound)

    def _intervals_from_sums(
        self, beta: np.ndarray, sums: SandwichSums, n_lags: int, unit: float = 1.0
    ) -> np.ndarray:
        """``beta_ci_`` from a fit's sandwich sums, in memory and on a Dask
        cluster (``_dask_fit``). Coefficients the trace does not identify
        (``diagnostics_["not_identified"]``) get ``[0, typical step / their
        tokens in it]`` (:func:`~sklearn_beta._uncertainty.unidentified_intervals`)."""
        ci = intervals_from_sums(
            beta / unit,
            sums,
            n_lags,
            self.confidence_level,
            self._at_bound(beta),
            np.isin(BETA_NAMES, self.diagnostics_["not_identified"]),
            self._typical_step(),
        )
        return unit * ci

    def _typical_step(self) -> np.ndarray:
        """``[1, T_pf, T_dec]``: the fitted design's tokens per step."""
        diag = self.diagnostics_
        steps = max(float(diag["mean_steps"]), np.finfo(float).tiny)
        return np.array(
            [1.0, diag["mean_A_pf_tokens"] / steps, diag["mean_A_dec_tokens"] / steps]
        )

    def _warn_untrusted(self, stacklevel: int) -> None:
        # Coefficients the trace does not identify already raised an
        # IdentifiabilityWarning; do not warn twice about them.
        skip = set(self.diagnostics_["not_identified"])
        ci = self.beta_ci_
        if ci is not None:
            ci = np.where(np.isin(BETA_NAMES, list(skip))[:, None], np.nan, ci)
        trust_warnings(
            self.beta_,
            ci,
            [n for n in self.diagnostics_["at_zero_bound"] if n not in skip],
            estimator=type(self).__name__,
            level=self.confidence_level,
            stacklevel=stacklevel,
        )

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
        if is_dask_collection(X):
            from ..distributed._dask_fit import predict_partitions

            return predict_partitions(self, X)
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
        if is_dask_collection(X):
            from ..distributed._dask_fit import score_partitions

            return score_partitions(self, X, y, sample_weight)
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
