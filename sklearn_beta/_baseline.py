"""The baseline estimator: time-integrated exposures + NNLS (METHOD.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import Interval

from ._base import BaseBetaRegressor
from ._corrections import FIXED_CORRECTION_MODES
from ._exposure import (
    EXPOSURE_COLUMNS,
    baseline_exposures,
    phase_step_density,
    timeline_from_arrays,
    timeline_from_exposures,
    with_time_resolution,
)
from ._identifiability import identifiability_diagnostics
from ._nnls import fit_statistics, nnls_fit
from ._uncertainty import DEFAULT_CONFIDENCE_LEVEL
from ._validation import (
    PhaseColumns,
    check_chunk_size,
    check_non_negative,
    check_option,
    check_phases,
)


@dataclass(frozen=True)
class BaselineResult:
    """Betas of the baseline estimator and the reference's diagnostics."""

    beta0: float
    beta1: float
    beta2: float
    diagnostics: dict = field(default_factory=dict)

    @property
    def beta(self) -> np.ndarray:
        return np.array([self.beta0, self.beta1, self.beta2])


def design_diagnostics(
    design: np.ndarray,
    duration: np.ndarray,
    beta: np.ndarray,
    sample_weight: np.ndarray | None = None,
) -> dict:
    """The diagnostics the reference prints for a fitted design."""
    r2, rmse = fit_statistics(duration, design @ beta, sample_weight)
    return {
        "n_phases": int(design.shape[0]),
        "r2": r2,
        "rmse_seconds": rmse,
        "mean_duration_seconds": float(np.mean(duration)),
        "mean_steps": float(np.mean(design[:, 0])),
        "mean_A_pf_tokens": float(np.mean(design[:, 1])),
        "mean_A_dec_tokens": float(np.mean(design[:, 2])),
    }


def estimate_betas_baseline(
    phases: pd.DataFrame,
    *,
    chunk_size: int,
    correction_mode: str = "end",
    min_duration_sec: float = 0.0,
    token_budget: int | None = None,
    time_resolution: float | str = 0.0,
    request_id_col: str = "request_id",
    phase_type_col: str = "phase_type",
    t_start_col: str = "t_start",
    t_end_col: str = "t_end",
    prefill_tokens_col: str = "prefill_tokens",
    decode_tokens_col: str = "decode_tokens",
    n_steps_col: str | None = "N_steps",
    instance_col: str | None = None,
) -> BaselineResult:
    """Estimate ``(beta0, beta1, beta2)`` with the baseline estimator.

    Regresses each phase duration on its step count and its time-integrated
    prefill and decode exposures by non-negative least squares, with no
    intercept. With its defaults this reproduces the published reference.

    Parameters
    ----------
    phases : DataFrame
        One row per phase (see the README's trace schema).
    chunk_size : int
        Prefill chunk size ``C`` in tokens.
    correction_mode : {"end", "end_inside", "uniform", "none"}, default="end"
        Placement of the last prefill chunk's missing tokens (METHOD.md 4).
    min_duration_sec : float, default=0.0
        Floor on the duration in the phase-local step density.
    token_budget : int or None, default=None
        Per-step token budget of the engine: caps the prefill pressure at
        ``B - p_dec`` (see :class:`~sklearn_beta.PhaseExposureTransformer`).
    time_resolution : "auto" or float, default=0.0
        Merge phase boundaries closer than this into one instant (see
        :class:`PhaseExposureTransformer`); 0 keeps the reference's grid.
    request_id_col, phase_type_col, t_start_col, t_end_col, \
prefill_tokens_col, decode_tokens_col, n_steps_col : str
        Column names.
    instance_col : str or None, default=None
        Column of engine-instance ids; pressures then only sum phases of the
        same instance.

    Returns
    -------
    result : BaselineResult
        ``beta0`` (s/step), ``beta1`` and ``beta2`` (s/token) and
        ``diagnostics`` (n_phases, r2, rmse_seconds, mean_duration_seconds,
        mean_steps, mean_A_pf_tokens, mean_A_dec_tokens, condition_number,
        not_identified, at_zero_bound).

    Raises
    ------
    TypeError, ValueError
        For a phase table or a parameter outside the input contract (see the
        README); the message names the column or parameter.

    Warns
    -----
    IdentifiabilityWarning
        When the trace cannot separate some coefficients (no overlap between
        phases, a single phase type, constant decode pressure).
    """
    columns = PhaseColumns(
        request_id_col,
        phase_type_col,
        t_start_col,
        t_end_col,
        prefill_tokens_col,
        decode_tokens_col,
        n_steps_col,
        instance_col,
    )
    chunk_size = check_chunk_size(chunk_size)
    check_option(correction_mode, FIXED_CORRECTION_MODES, "correction_mode")
    check_non_negative(min_duration_sec, "min_duration_sec")
    arrays = check_phases(phases, columns)
    arrays = with_time_resolution(arrays, chunk_size, time_resolution)
    timeline = timeline_from_arrays(arrays, chunk_size, token_budget)
    density = phase_step_density(timeline.n_steps, timeline.duration, min_duration_sec)
    design = baseline_exposures(timeline, density, correction_mode)
    beta = nnls_fit(design, timeline.duration)
    diagnostics = design_diagnostics(design, timeline.duration, beta)
    diagnostics.update(
        identifiability_diagnostics(
            design,
            timeline.duration,
            beta,
            timeline,
            estimator="estimate_betas_baseline",
        )
    )
    return BaselineResult(*beta.tolist(), diagnostics=diagnostics)


class BaselineBetaRegressor(BaseBetaRegressor):
    """Non-negative least squares of phase durations on their exposures.

    Fits ``l_i ~ beta0 * N_i + beta1 * A_pf_i + beta2 * A_dec_i`` with all
    betas non-negative and no intercept, on the exposure table made by
    :class:`PhaseExposureTransformer` (METHOD.md section 5). Fast and
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
    beta_ : ndarray of shape (3,)
        ``[beta0, beta1, beta2]``: seconds per step, per prefill token and per
        decode token (in the time unit of the trace).
    beta_ci_ : ndarray of shape (3, 2) or None
        Lower and upper confidence limits of each beta at
        ``confidence_level``, clipped at 0. They cover the estimator's noise,
        not its bias: under heavy load the baseline's bias exceeds them (use
        :class:`IterativeBetaRegressor`). NaN when the table has no phase
        windows to form time blocks; None when ``confidence_level`` is None.
    coef_ : ndarray of shape (3,)
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
    vLLM-style step times; see METHOD.md, section 5.

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
        "confidence_level": [Interval(Real, 0, 1, closed="neither"), None],
    }

    def __init__(self, confidence_level=DEFAULT_CONFIDENCE_LEVEL):
        self.confidence_level = confidence_level

    def _fit_table(self, table, duration, sample_weight):
        design = table[:, :3]
        beta = nnls_fit(design, duration, sample_weight)
        self.diagnostics_ = design_diagnostics(design, duration, beta, sample_weight)
        timeline = _timeline_if_available(table)
        self.diagnostics_.update(
            identifiability_diagnostics(
                design,
                duration,
                beta,
                timeline,
                sample_weight,
                estimator=type(self).__name__,
                stacklevel=5,
            )
        )
        # Hook (trust): intervals from the NNLS design and duration residuals.
        residual = duration - design @ beta
        self.beta_ci_ = self._beta_intervals(
            table, beta, design, residual, sample_weight, timeline is not None
        )
        return beta

    def _predict_table(self, table):
        return table[:, :3] @ self.beta_


def _timeline_if_available(table: np.ndarray):
    """The trace behind a full exposure table, for the identifiability checks."""
    if table.shape[1] < len(EXPOSURE_COLUMNS):
        return None
    try:
        return timeline_from_exposures(table)
    except ValueError:  # not a transformer's table: judge the design alone
        return None
