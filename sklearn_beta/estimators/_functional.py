"""The functional API of the published package, a thin layer over the estimators.

:func:`estimate_betas_baseline` and :func:`estimate_betas_iterative` keep the
published names, defaults and result layout, the ``*_col`` column keywords
included (mapped onto ``columns=``). Each builds the
:class:`PhaseExposureTransformer` and the regressor its arguments describe,
validates them through their ``_parameter_constraints`` (errors name the
published argument) and runs the regressor's own fit on the trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import InvalidParameterError

from ..core._columns import PhaseColumns, with_column_keywords
from ..core._memory import large_fit_memory, n_rows
from ..core._validation import check_phases
from ..trust._uncertainty import interval_summary
from ._baseline import BaselineBetaRegressor
from ._exposure import PhaseExposureTransformer
from ._iterative import IterativeBetaRegressor

__all__ = [
    "BaselineResult",
    "IterativeResult",
    "estimate_betas_baseline",
    "estimate_betas_iterative",
]

#: The published arguments of the iterative estimator's parameters.
_ITERATIVE_NAMES = {
    "correction_mode": "prefill_correction_mode",
    "damping": "damping_eta",
    "max_iter": "max_outer_iters",
    "tol": "tol",
    "stopping": "stopping",
    "objective": "objective",
}
#: Messages that start with the published implementation's phrase, by argument.
_PUBLISHED_PHRASES = {"chunk_size": "chunk_size must be positive"}
#: The default column names, the ``*_col`` keywords' defaults.
_NAMES = PhaseColumns()


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


@dataclass(frozen=True)
class IterativeResult:
    """Betas of the iterative estimator, its convergence and history.

    ``diagnostics`` holds the published keys ``converged, n_outer_iters,
    tol, damping_eta, init_beta0..2, final_beta0..2, final_r2,
    final_rmse_seconds, final_delta_beta_l2`` and the package's own
    (n_phases, r2, rmse_seconds, mean exposures, identifiability, and
    ``confidence_interval``: ``{"level": 0.95, "beta0": [lo, hi], ...}``,
    :class:`IterativeBetaRegressor`'s ``beta_ci_``).
    ``history`` is the published dict of lists: ``beta``, the start then
    each iteration's ``(beta0, beta1, beta2)`` (n + 1 tuples), and
    ``delta_beta_l2``, ``r2``, ``rmse_seconds`` and ``notes``, one entry per
    iteration.
    """

    beta0: float
    beta1: float
    beta2: float
    converged: bool
    n_outer_iters: int
    diagnostics: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)

    @property
    def beta(self) -> np.ndarray:
        return np.array([self.beta0, self.beta1, self.beta2])


def _validated(estimator, published: dict[str, str], caller: str):
    """``estimator`` once its parameters pass its constraints.

    ``published`` maps the estimator's parameter names to the caller's
    arguments, which the error then names.
    """
    try:
        estimator._validate_params()
    except InvalidParameterError as exc:
        message = str(exc)
        for name, argument in published.items():
            prefix = f"The {name!r} parameter of {type(estimator).__name__}"
            if message.startswith(prefix):
                message = (
                    f"The {argument!r} parameter of {caller}" + message[len(prefix) :]
                )
                phrase = _PUBLISHED_PHRASES.get(argument)
                message = f"{phrase}: {message}" if phrase else message
                break
        raise InvalidParameterError(message) from None
    return estimator


def _transformer(caller: str, correction_argument: str, **params):
    transformer = PhaseExposureTransformer(**params)
    published = {name: name for name in params}
    published |= {
        "correction_mode": correction_argument,
        "min_duration": "min_duration_sec",
    }
    return _validated(transformer, published, caller)


def _phase_arrays(phases, transformer: PhaseExposureTransformer):
    """The validated trace, its token columns optional beside ``N_steps``.

    As published, a trace with an ``N_steps`` column fits without token
    columns whatever the correction mode: the pressures need only ``C`` and
    which phases are active, and with no prompt length no missing mass
    ``mu`` is known, so the correction is zero. The estimators instead
    require ``prefill_tokens`` for any correction but ``"none"`` rather than
    ignore the mode.
    """
    return check_phases(phases, transformer._columns(), need_prefill_tokens=False)


def estimate_betas_baseline(
    phases: pd.DataFrame,
    *,
    chunk_size: int,
    correction_mode: str = "end",
    min_duration_sec: float = 0.0,
    token_budget: int | None = None,
    time_resolution: float | str = 0.0,
    columns: PhaseColumns | dict | None = None,
    n_steps_col: str | None = _NAMES.n_steps,
    prefill_tokens_col: str = _NAMES.prefill_tokens,
    decode_tokens_col: str = _NAMES.decode_tokens,
    t_start_col: str = _NAMES.t_start,
    t_end_col: str = _NAMES.t_end,
    phase_type_col: str = _NAMES.phase_type,
    request_id_col: str = _NAMES.request_id,
) -> BaselineResult:
    """Estimate ``(beta0, beta1, beta2)`` with the baseline estimator.

    Regresses each phase duration on its step count and its time-integrated
    prefill and decode exposures by non-negative least squares, with no
    intercept: :class:`PhaseExposureTransformer` then
    :class:`BaselineBetaRegressor`. With its defaults this reproduces the
    published reference.

    Parameters
    ----------
    phases : DataFrame
        One row per phase (docs/method.md, "The phase table").
    chunk_size : int
        Prefill chunk size ``C`` in tokens.
    correction_mode : {"end", "end_inside", "uniform", "none"}, default="end"
        Placement of the last prefill chunk's missing tokens.
    min_duration_sec : float, default=0.0
        Floor on the duration in the phase-local step density.
    token_budget : int or None, default=None
        Per-step token budget of the engine (see
        :class:`PhaseExposureTransformer`).
    time_resolution : "auto" or float, default=0.0
        Merge phase boundaries closer than this; 0 keeps the reference's grid.
    columns : PhaseColumns, mapping or None, default=None
        Column names (:meth:`PhaseColumns.coerce`); ``N_steps`` and
        ``instance_id`` are used when present.
    n_steps_col : str or None, default="N_steps"
        The published name of ``columns={"n_steps": ...}``: observed step
        counts, used when the column is present (``None`` ignores it). They
        replace the inferred ones, and the trace then needs no token column:
        without ``prefill_tokens`` no prefill's last chunk is known to be
        short, so the partial-chunk correction takes nothing back (zero
        missing mass, whatever the correction mode).
    prefill_tokens_col, decode_tokens_col, t_start_col, t_end_col, \
phase_type_col, request_id_col : str
        The published names of the other ``columns`` fields, defaults
        ``"prefill_tokens"``, ``"decode_tokens"``, ``"t_start"``, ``"t_end"``,
        ``"phase_type"`` and ``"request_id"``. A keyword left at its default
        renames nothing; one that renames a column ``columns`` names
        differently raises ``ValueError``.

    Returns
    -------
    result : BaselineResult
        ``beta0`` (s/step), ``beta1`` and ``beta2`` (s/token) and
        ``diagnostics`` (n_phases, r2, rmse_seconds, mean_duration_seconds,
        mean_steps, mean_A_pf_tokens, mean_A_dec_tokens, condition_number,
        not_identified, at_zero_bound) and the package's own
        ``confidence_interval``: ``{"level": 0.95, "beta0": [lo, hi], ...}``,
        the time-block intervals of :class:`BaselineBetaRegressor`'s
        ``beta_ci_`` (no ``UncertaintyWarning`` here: the estimator warns).

    Raises
    ------
    TypeError, ValueError
        For a phase table or an argument outside the input contract; the
        message starts with the published phrase and names the column or
        argument.

    Warns
    -----
    IdentifiabilityWarning
        When the trace cannot separate some coefficients.
    """
    caller = "estimate_betas_baseline"
    transformer = _transformer(
        caller,
        "correction_mode",
        chunk_size=chunk_size,
        correction_mode=correction_mode,
        min_duration=min_duration_sec,
        token_budget=token_budget,
        time_resolution=time_resolution,
        columns=with_column_keywords(
            columns,
            {
                "n_steps": n_steps_col,
                "prefill_tokens": prefill_tokens_col,
                "decode_tokens": decode_tokens_col,
                "t_start": t_start_col,
                "t_end": t_end_col,
                "phase_type": phase_type_col,
                "request_id": request_id_col,
            },
        ),
    )
    regressor = BaselineBetaRegressor()
    with large_fit_memory(n_rows(phases)):
        timeline, design, _ = transformer._exposures(
            phases, _phase_arrays(phases, transformer)
        )
        beta = regressor._fit_design(
            design, timeline.duration, None, timeline, caller=caller
        )
    return BaselineResult(
        *beta.tolist(), diagnostics=regressor.diagnostics_ | _intervals(regressor)
    )


def estimate_betas_iterative(
    phases: pd.DataFrame,
    *,
    chunk_size: int,
    prefill_correction_mode: str = "beta_informed",
    max_outer_iters: int = 25,
    tol: float = 1e-6,
    damping_eta: float = 1.0,
    init_via_baseline_correction: str = "end",
    min_duration_sec: float = 0.0,
    stopping: str = "absolute",
    objective: str = "duration",
    token_budget: int | None = None,
    time_resolution: float | str = 0.0,
    columns: PhaseColumns | dict | None = None,
    n_steps_col: str | None = _NAMES.n_steps,
    prefill_tokens_col: str = _NAMES.prefill_tokens,
    decode_tokens_col: str = _NAMES.decode_tokens,
    t_start_col: str = _NAMES.t_start,
    t_end_col: str = _NAMES.t_end,
    phase_type_col: str = _NAMES.phase_type,
    request_id_col: str = _NAMES.request_id,
) -> IterativeResult:
    """Estimate ``(beta0, beta1, beta2)`` with the iterative estimator.

    :class:`PhaseExposureTransformer` (``correction_mode`` =
    ``init_via_baseline_correction``, ``min_duration`` = ``min_duration_sec``)
    then :class:`IterativeBetaRegressor` (``correction_mode`` =
    ``prefill_correction_mode``, ``damping`` = ``damping_eta``, ``max_iter``
    = ``max_outer_iters``), with the published defaults: the reference's
    fixed point of the durations, its absolute stopping rule, and its
    results to 1e-9.

    Parameters
    ----------
    phases : DataFrame
        One row per phase (docs/method.md, "The phase table").
    chunk_size : int
        Prefill chunk size ``C`` in tokens.
    prefill_correction_mode : {"beta_informed", "end", "end_inside", \
"uniform", "none"}, default="beta_informed"
        Placement of the last prefill chunk's missing tokens.
    max_outer_iters : int, default=25
        Maximum number of iterations.
    tol : float, default=1e-6
        Stopping threshold on the change of betas (see ``stopping``).
    damping_eta : float in (0, 1], default=1.0
        Damping of each update (see :class:`IterativeBetaRegressor`).
    init_via_baseline_correction : {"end", "end_inside", "uniform", "none"}, \
default="end"
        Correction mode of the initialising baseline fit.
    min_duration_sec : float, default=0.0
        Duration floor of the initialising baseline's step density.
    stopping : {"absolute", "relative"}, default="absolute"
        ``"absolute"`` is the reference rule ``||d beta||_2 < tol``.
    objective : {"duration", "step_count"}, default="duration"
        What the betas are fitted to (see :class:`IterativeBetaRegressor`).
        Every phase is fitted, as the published estimator does: a trace
        cut from a busy engine is better fitted by
        :class:`IterativeBetaRegressor`, whose ``edges="auto"`` treats its
        edges.
    token_budget : int or None, default=None
        Per-step token budget of the engine.
    time_resolution : "auto" or float, default=0.0
        Merge phase boundaries closer than this; 0 keeps the reference's grid.
    columns : PhaseColumns, mapping or None, default=None
        Column names (:meth:`PhaseColumns.coerce`).
    n_steps_col : str or None, default="N_steps"
        The published name of ``columns={"n_steps": ...}``: observed step
        counts, used when the column is present (``None`` ignores it). They
        replace the inferred ones, and the trace then needs no token column:
        without ``prefill_tokens`` no prefill's last chunk is known to be
        short, so the partial-chunk correction takes nothing back (zero
        missing mass, whatever the correction mode).
    prefill_tokens_col, decode_tokens_col, t_start_col, t_end_col, \
phase_type_col, request_id_col : str
        The published names of the other ``columns`` fields, defaults
        ``"prefill_tokens"``, ``"decode_tokens"``, ``"t_start"``, ``"t_end"``,
        ``"phase_type"`` and ``"request_id"``. A keyword left at its default
        renames nothing; one that renames a column ``columns`` names
        differently raises ``ValueError``.

    Returns
    -------
    result : IterativeResult
        Betas, ``converged``, ``n_outer_iters``, the published
        ``diagnostics`` and ``history`` (see :class:`IterativeResult`).

    Warns
    -----
    ConvergenceWarning
        When the stopping rule is not met in ``max_outer_iters`` iterations.
    IdentifiabilityWarning
        When the trace cannot separate some coefficients.
    """
    caller = "estimate_betas_iterative"
    transformer = _transformer(
        caller,
        "init_via_baseline_correction",
        chunk_size=chunk_size,
        correction_mode=init_via_baseline_correction,
        min_duration=min_duration_sec,
        token_budget=token_budget,
        time_resolution=time_resolution,
        columns=with_column_keywords(
            columns,
            {
                "n_steps": n_steps_col,
                "prefill_tokens": prefill_tokens_col,
                "decode_tokens": decode_tokens_col,
                "t_start": t_start_col,
                "t_end": t_end_col,
                "phase_type": phase_type_col,
                "request_id": request_id_col,
            },
        ),
    )
    regressor = _validated(
        IterativeBetaRegressor(
            prefill_correction_mode,
            damping=damping_eta,
            max_iter=max_outer_iters,
            tol=tol,
            stopping=stopping,
            objective=objective,
            # As published: every phase is fitted, window or not.
            edges="fit",
        ),
        _ITERATIVE_NAMES,
        caller,
    )
    with large_fit_memory(n_rows(phases)):
        timeline, design, density = transformer._exposures(
            phases, _phase_arrays(phases, transformer)
        )
        beta = regressor._fit_timeline(
            timeline,
            design,
            density,
            timeline.duration,
            caller=caller,
            names=_ITERATIVE_NAMES,
        )
    history = published_history(regressor.history_)
    return IterativeResult(
        *beta.tolist(),
        converged=regressor.converged_,
        n_outer_iters=regressor.n_iter_,
        diagnostics=published_diagnostics(regressor, history)
        | regressor.diagnostics_
        | _intervals(regressor),
        history=history,
    )


def _intervals(regressor) -> dict:
    """The package's own diagnostics key: the fit's 95 % confidence intervals."""
    return {
        "confidence_interval": interval_summary(
            regressor.beta_ci_, regressor.confidence_level
        )
    }


def published_history(history: pd.DataFrame) -> dict:
    """The published history layout of an iterative fit's ``history_``."""
    beta = history[["beta0", "beta1", "beta2"]].to_numpy()
    return {
        "beta": [tuple(row) for row in beta.tolist()],
        "delta_beta_l2": np.linalg.norm(np.diff(beta, axis=0), axis=1).tolist(),
        "r2": history["r2"].iloc[1:].tolist(),
        "rmse_seconds": history["rmse_seconds"].iloc[1:].tolist(),
        "notes": history["note"].iloc[1:].tolist(),
    }


def published_diagnostics(regressor: IterativeBetaRegressor, history: dict) -> dict:
    """The published diagnostics keys of a fitted iterative estimator.

    ``history`` is its :func:`published_history`.
    """
    beta = history["beta"]
    return {
        "converged": bool(regressor.converged_),
        "n_outer_iters": int(regressor.n_iter_),
        "tol": float(regressor.tol),
        "damping_eta": float(regressor.damping),
        **{f"init_beta{k}": beta[0][k] for k in range(3)},
        **{f"final_beta{k}": beta[-1][k] for k in range(3)},
        "final_r2": history["r2"][-1],
        "final_rmse_seconds": history["rmse_seconds"][-1],
        "final_delta_beta_l2": history["delta_beta_l2"][-1],
    }
