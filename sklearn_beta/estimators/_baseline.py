"""The baseline estimator: time-integrated exposures + NNLS (docs/method.md, 5)."""

from __future__ import annotations

from numbers import Real

import numpy as np

from ..core._constraints import Number
from ..core._grid import Timeline
from ..core._nnls import fit_statistics, nnls_fit
from ..core._schema import (
    EXPOSURE_COLUMNS,
    fit_design,
    has_column,
    read_timeline,
    step_model_of,
)
from ..core._step_features import PUBLISHED_FEATURES
from ..trust._identifiability import BETA_NAMES, identifiability_diagnostics
from ..trust._uncertainty import DEFAULT_CONFIDENCE_LEVEL
from ._base import BaseBetaRegressor
from ._fit import FitSettings, Solution, beta_intervals, fit_baseline

__all__ = ["BaselineBetaRegressor"]


def design_diagnostics(
    design: np.ndarray,
    duration: np.ndarray,
    beta: np.ndarray,
    sample_weight: np.ndarray | None = None,
    features=PUBLISHED_FEATURES,
) -> dict:
    """The diagnostics the reference prints for a fitted design; a step model
    other than the published one has ``mean_exposures`` by feature instead of
    the three ``mean_*`` exposures."""
    scores = fit_statistics(duration, design @ beta, sample_weight)
    sums = [float(np.sum(duration))] + [float(np.sum(c)) for c in design.T]
    return diagnostics_from_sums(design.shape[0], scores, sums, features)


def diagnostics_from_sums(
    n_phases: int, scores: tuple[float, float], sums: list[float], features=None
) -> dict:
    """:func:`design_diagnostics` from ``(r2, rmse)`` and the sums of the
    durations and of the design's columns over the phases (``features``: a
    step model's other than the published one, by name)."""
    means = [total / n_phases for total in sums]
    if features is not None and tuple(features) != PUBLISHED_FEATURES:
        return {
            "n_phases": int(n_phases),
            "r2": scores[0],
            "rmse_seconds": scores[1],
            "mean_duration_seconds": means[0],
            "mean_exposures": dict(zip(features, means[1:], strict=True)),
        }
    return {
        "n_phases": int(n_phases),
        "r2": scores[0],
        "rmse_seconds": scores[1],
        "mean_duration_seconds": means[0],
        "mean_steps": means[1],
        "mean_A_pf_tokens": means[2],
        "mean_A_dec_tokens": means[3],
    }


class DesignSource:
    """An exposure table in memory, for the baseline: its design, durations,
    weights and, for a full exposure table, the trace's timeline."""

    def __init__(self, design, duration, sample_weight=None, timeline=None):
        self.design = design
        self.duration = duration
        self.sample_weight = sample_weight
        self.timeline = timeline

    def baseline(self) -> Solution:
        return Solution(nnls_fit(self.design, self.duration, self.sample_weight))

    def diagnostics(self, solution, beta, unit, settings) -> dict:
        names = settings.coef_names
        features = PUBLISHED_FEATURES if names == BETA_NAMES else names
        diagnostics = design_diagnostics(
            self.design, self.duration, beta, self.sample_weight, features
        )
        diagnostics.update(
            identifiability_diagnostics(
                self.design,
                self.duration,
                beta,
                self.timeline,
                self.sample_weight,
                estimator=settings.caller,
                names=names,
            )
        )
        return diagnostics

    def intervals(self, solution, beta, unit, diagnostics, settings):
        return beta_intervals(
            self.timeline,
            beta,
            self.design,
            self.duration - self.design @ beta,
            self.sample_weight,
            diagnostics,
            settings,
        )


class BaselineBetaRegressor(BaseBetaRegressor):
    """Non-negative least squares of phase durations on their exposures.

    Fits ``l_i ~ beta0 * N_i + beta1 * A_pf_i + beta2 * A_dec_i`` with all
    betas non-negative and no intercept, on the exposure table made by
    :class:`PhaseExposureTransformer` (docs/method.md, section 5). Fast and
    reference-exact, but biased wherever the step density inside a phase is
    far from uniform (heavy load, large chunks); prefer
    :class:`IterativeBetaRegressor` there.

    Parameters
    ----------
    confidence_level : float in (0, 1) or None, default=0.95
        Level of the confidence intervals ``beta_ci_``: the time-block robust
        (sandwich) covariance of the NNLS fit, see ``docs/uncertainty.md``.
        None skips them (``beta_ci_`` is None) and with them the warning
        about wide intervals; a beta at its zero bound still warns.

    Attributes
    ----------
    beta_ : ndarray of shape (n_step_features,)
        ``[beta0, beta1, beta2]``: seconds per step, per prefill token and per
        decode token (in the time unit of the trace); under another step model
        of the transformer, one coefficient per feature of
        ``step_features_``, in seconds per unit of the feature.
    coef_names_ : tuple of str
        The name of each entry of ``beta_``: ``beta0, beta1, beta2`` for the
        published step model, the identifiable trained-physics coefficients
        (``prefill_compute, decode_compute, per_step, per_request,
        prefill_kv, decode_kv``) for ``step_model="trained-physics"``, else
        the features.
    step_basis_ : ndarray of shape (6, 6) or None
        For a trained-physics table, the map from the step features to the
        identifiable trained-physics columns the fit ran on; else None.
    fixed_coefficients_ : dict of str to str
        For a trained-physics fit, the BLIS coefficients the trace cannot
        identify, with the value the export gives them and why
        (:func:`~sklearn_beta.core._trained_physics.fixed_coefficients`);
        empty otherwise.
    step_features_ : tuple of str
        The step model's features the table was made with (its
        ``step_model``), in the order of ``beta_``.
    beta_ci_ : ndarray of shape (n_step_features, 2) or None
        Lower and upper confidence limits of each beta at
        ``confidence_level``, clipped at 0. They cover the estimator's noise,
        not its bias: under heavy load the baseline's bias exceeds them (use
        :class:`IterativeBetaRegressor`). A beta the trace does not identify
        gets ``[0, T / t_k]``, the whole typical step spent on it alone (see
        :class:`IterativeBetaRegressor`). NaN when the table has no phase
        windows to form time blocks; None when ``confidence_level`` is None.
    coef_ : ndarray of shape (n_step_features,)
        Same values as ``beta_``.
    intercept_ : float
        Always 0.0: the model has no intercept.
    diagnostics_ : dict
        n_phases, r2, rmse_seconds and mean exposures of the fit;
        ``condition_number`` of the column-normalised design,
        ``not_identified`` and ``at_zero_bound`` (lists of coefficient names).
        See :class:`~sklearn_beta.exceptions.IdentifiabilityWarning`.
    n_features_in_ : int
        Number of columns of the exposure table.
    feature_names_in_ : ndarray of str
        Column names of the exposure table, when it is a DataFrame.

    See Also
    --------
    IterativeBetaRegressor : Step-density re-weighted estimator.
    estimate_betas_baseline : The functional, reference-compatible API.

    References
    ----------
    The baseline estimator of the published trace-only calibration of
    vLLM-style step times; see docs/method.md, section 5.

    Warns
    -----
    UncertaintyWarning
        When a beta is at its zero bound or its interval is wider than half
        its value.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn_beta import BaselineBetaRegressor, PhaseExposureTransformer
    >>> from sklearn_beta.datasets import load_sample_trace
    >>> phases = load_sample_trace()
    >>> model = make_pipeline(PhaseExposureTransformer(chunk_size=64),
    ...                       BaselineBetaRegressor()).fit(phases)
    >>> model[-1].beta_.shape
    (3,)
    """

    _parameter_constraints: dict = {
        "confidence_level": [Number(Real, 0, 1, closed="neither"), None],
    }

    def __init__(self, confidence_level=DEFAULT_CONFIDENCE_LEVEL):
        self.confidence_level = confidence_level

    def _fit_table(self, table, duration, sample_weight):
        self.step_features_ = step_model_of(table)
        design, self.step_basis_ = fit_design(table)
        return self._fit_design(
            design,
            duration,
            sample_weight,
            _timeline_if_available(table),
        )

    def _fit_design(
        self,
        design: np.ndarray,
        duration: np.ndarray,
        sample_weight: np.ndarray | None = None,
        timeline: Timeline | None = None,
        *,
        caller: str | None = None,
    ) -> np.ndarray:
        """The fit in memory, shared with :func:`estimate_betas_baseline`.

        ``timeline`` (None when unknown) lets the identifiability checks look
        at the trace and forms the time blocks of ``beta_ci_``; ``caller``
        names the estimator in warnings. Sets ``diagnostics_`` and
        ``beta_ci_`` and returns the betas.
        """
        source = DesignSource(design, duration, sample_weight, timeline)
        return self._fit_source(source, caller=caller)

    def _fit_source(self, source, *, caller=None) -> np.ndarray:
        """:func:`~sklearn_beta.estimators._fit.fit_baseline` on ``source``."""
        name = type(self).__name__
        settings = FitSettings(
            name, caller or name, self.confidence_level, coef_names=self._coef_names()
        )
        return self._fitted(fit_baseline(source, settings))

    def _predict_table(self, table):
        return self._table_design(table) @ self.beta_


def _timeline_if_available(table: np.ndarray) -> Timeline | None:
    """The trace behind a full exposure table, for the identifiability checks."""
    if not has_column(table, EXPOSURE_COLUMNS[-1]):
        return None
    try:
        return read_timeline(table)
    except ValueError:  # not a transformer's table: judge the design alone
        return None
