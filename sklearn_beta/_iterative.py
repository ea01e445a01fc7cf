"""The iterative estimator: step-density re-weighted, MM-style NNLS (METHOD.md 6)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions

from ._base import BaseBetaRegressor
from ._baseline import design_diagnostics
from ._corrections import (
    CORRECTION_MODES,
    FIXED_CORRECTION_MODES,
    beta_informed_correction_mass,
    budget_capped_mass,
    counted_phases,
    fixed_correction_mass,
    static_correction_mass,
)
from ._exposure import (
    _COL,
    EXPOSURE_COLUMNS,
    baseline_exposures,
    phase_step_density,
    timeline_from_arrays,
    timeline_from_exposures,
    with_time_resolution,
)
from ._grid import Timeline, phase_integrals, phase_integrals_many
from ._identifiability import identifiability_diagnostics
from ._nnls import fit_statistics, nnls_fit
from ._validation import (
    PhaseColumns,
    check_chunk_size,
    check_non_negative,
    check_phases,
)

MIN_STEP_TIME = 1e-12
STOPPING_RULES = ("absolute", "relative")
OBJECTIVES = ("duration", "step_count")
#: Step halvings tried when a Gauss-Newton step does not lower the objective.
MAX_HALVINGS = 8
HISTORY_COLUMNS = ("iteration", "beta0", "beta1", "beta2", "step", "r2", "rmse_seconds")


@dataclass(frozen=True)
class IterativeResult:
    """Betas of the iterative estimator, its convergence and history."""

    beta0: float
    beta1: float
    beta2: float
    converged: bool
    n_outer_iters: int
    diagnostics: dict = field(default_factory=dict)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def beta(self) -> np.ndarray:
        return np.array([self.beta0, self.beta1, self.beta2])


def step_density(beta: np.ndarray, p_eff: np.ndarray, p_dec: np.ndarray) -> np.ndarray:
    """Steps per second on each segment: ``1 / max(b0 + b1 p_eff + b2 p_dec, 1e-12)``.

    This is ``step_density`` of METHOD.md 6.2.1, the inverse step time.
    """
    step_time = beta[0] + beta[1] * p_eff + beta[2] * p_dec
    return 1.0 / np.maximum(step_time, MIN_STEP_TIME)


def correction_rate(mass: np.ndarray, seg_len: np.ndarray) -> np.ndarray:
    """Correction rate (tokens/s) from its mass per segment."""
    # Float output even when no prefill has a missing mass (bincount of an
    # empty selection is integer), e.g. chunk_size=1.
    mass = np.asarray(mass, dtype=np.float64)
    return np.divide(mass, seg_len, out=np.zeros_like(mass), where=seg_len > 0)


def effective_prefill_pressure(
    p_pf_full: np.ndarray, correction_rate: np.ndarray, density: np.ndarray
) -> np.ndarray:
    """``p_eff = max(p_pf_full - c / max(lam, 1e-12), 0)`` in tokens per step."""
    return np.maximum(
        p_pf_full - correction_rate / np.maximum(density, MIN_STEP_TIME), 0.0
    )


def step_averaged_design(
    timeline: Timeline, density: np.ndarray, p_eff: np.ndarray
) -> np.ndarray:
    """The design ``[N_i, N_i * pbar_pf_i, N_i * pbar_dec_i]`` (METHOD 6.2.4).

    ``pbar`` are pressures averaged over the steps taken inside the phase,
    ``int_i p * lam / int_i lam``, and 0 where the phase holds no steps.
    """
    tg = timeline.trace_grid
    steps = density * tg.seg_len
    total = phase_integrals(tg, steps)
    safe = np.where(total > 0, total, 1.0)
    pbar_pf = np.where(total > 0, phase_integrals(tg, p_eff * steps) / safe, 0.0)
    pbar_dec = np.where(
        total > 0, phase_integrals(tg, timeline.p_dec * steps) / safe, 0.0
    )
    n = timeline.n_steps
    return np.column_stack([n, n * pbar_pf, n * pbar_dec])


def correction_mass(
    mode: str, timeline: Timeline, density: np.ndarray, fixed: np.ndarray | None
) -> np.ndarray:
    """The correction of this iteration: fixed, or placed by the step density.

    Under a token budget only the part of it the cap has not already taken
    back remains (:func:`budget_capped_mass`).
    """
    if mode != "beta_informed":
        return budget_capped_mass(fixed, timeline)
    mass = beta_informed_correction_mass(
        timeline.trace_grid, density, timeline.is_prefill, timeline.n_steps, timeline.mu
    )
    return budget_capped_mass(mass, timeline)


def reweighted_design(
    timeline: Timeline,
    beta: np.ndarray,
    p_eff: np.ndarray,
    mode: str,
    fixed: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One re-weighting pass: step density from ``beta`` and the previous
    ``p_eff``, then the correction, the new ``p_eff`` and the design.

    Returns the design and the new ``p_eff``. The lag is deliberate (METHOD 6):
    the density of pass m uses ``p_eff`` of pass m-1.
    """
    density = step_density(beta, p_eff, timeline.p_dec)
    mass = correction_mass(mode, timeline, density, fixed)
    rate = correction_rate(mass, timeline.trace_grid.seg_len)
    p_eff = effective_prefill_pressure(timeline.p_pf_full, rate, density)
    return step_averaged_design(timeline, density, p_eff), p_eff


def settled_design(
    timeline: Timeline,
    beta: np.ndarray,
    mode: str,
    fixed: np.ndarray | None,
    n_passes: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Design and ``p_eff`` at fixed betas after ``n_passes`` lagged passes.

    At fixed betas the lagged re-weighting settles in a few passes; this is
    the duration objective's view of a trace at fitted betas.
    """
    p_eff = timeline.p_pf_full
    for _ in range(n_passes):
        design, p_eff = reweighted_design(timeline, beta, p_eff, mode, fixed)
    return design, p_eff


def beta_change(
    new: np.ndarray, old: np.ndarray, design: np.ndarray, rule: str
) -> float:
    """How far the betas moved in one iteration.

    ``absolute`` is the reference's ``||beta_m - beta_m-1||_2``, in the
    trace's time unit. ``relative`` measures each coefficient's move by its
    contribution to the durations, ``|d beta_k| * ||X_k||``, against that
    contribution itself (floored at 1e-9 of the whole prediction so that a
    coefficient at zero does not divide by zero): free of time and token units.
    """
    if rule == "absolute":
        return float(np.linalg.norm(new - old))
    scale = np.linalg.norm(design, axis=0)
    moved = np.abs(new - old) * scale
    level = np.abs(new) * scale
    floor = 1e-9 * max(level.sum(), np.finfo(float).tiny)
    return float(np.max(moved / np.maximum(level, floor)))


def iterate_betas(
    timeline: Timeline,
    beta_init: np.ndarray,
    *,
    correction_mode: str = "beta_informed",
    max_iter: int = 25,
    tol: float = 1e-6,
    damping: float = 1.0,
    stopping: str = "absolute",
    sample_weight: np.ndarray | None = None,
    callback: Callable[[dict], None] | None = None,
) -> tuple[np.ndarray, bool, int, np.ndarray, list[dict]]:
    """Run the fixed-point iteration of METHOD.md section 6.

    Returns ``(beta, converged, n_iter, design, history)`` where ``design`` is
    the last iteration's design and ``history`` one record per iteration,
    iteration 0 being the initial betas. A record's r2 and rmse are those of
    the iteration's undamped NNLS fit, as the reference reports them.
    """
    fixed = static_correction_mass(
        correction_mode, timeline.trace_grid, timeline.is_prefill, timeline.mu
    )
    beta = np.asarray(beta_init, dtype=np.float64)
    p_eff = timeline.p_pf_full
    duration = timeline.duration
    history = [_record(0, beta, np.nan, np.nan, np.nan)]
    converged, design, n_iter = False, None, 0
    for n_iter in range(1, max_iter + 1):
        design, p_eff = reweighted_design(timeline, beta, p_eff, correction_mode, fixed)
        beta_fit = nnls_fit(design, duration, sample_weight)
        new = (1.0 - damping) * beta + damping * beta_fit
        step = beta_change(new, beta, design, stopping)
        # The reference scores the undamped NNLS fit of the iteration.
        r2, rmse = fit_statistics(duration, design @ beta_fit, sample_weight)
        history.append(_record(n_iter, new, step, r2, rmse))
        if callback is not None:
            callback(history[-1])
        beta = new
        if step < tol:
            converged = True
            break
    return beta, converged, n_iter, design, history


# --- The step-count objective -------------------------------------------------
#
# A segment of length s holding n steps, with the prefill pressure P, the
# decode pressure p_dec and a correction taking m tokens back, lasts
# s = n (b0 + b1 P + b2 p_dec) - b1 m. Solved for n, the step density and the
# effective pressure p_eff = P - m / n are consistent by construction: no lag.
# At the true betas, with the correction on each prefill's last step, the
# step counts are exact, so are the phases' token sums; and every phase must
# then hold exactly its N_i steps. Fitting the betas to make the phases' step
# counts match N_i is a 3-parameter nonlinear least squares. Fitting the
# durations instead cannot use this: with the token sums as design, any beta
# with b0 = 0 fits the durations exactly (l_i = X_i beta + b0 (N_i - Lambda_i)),
# and the reference's fixed point is repelling under heavy load.


def solved_step_counts(
    timeline: Timeline, beta: np.ndarray, mass: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps per segment at ``beta``, the density and ``p_eff`` solved together.

    Returns ``(n, prefill_mass, jac)``: the steps on each segment, the prefill
    tokens they hold (``n * p_eff``) and ``dn / dbeta`` of shape (n_seg, 3).
    Where the correction would take back more than the full chunks hold,
    ``p_eff`` is 0 and the segment's steps are ``s / (b0 + b2 p_dec)``.
    """
    s, p_pf, p_dec = timeline.trace_grid.seg_len, timeline.p_pf_full, timeline.p_dec
    full = np.maximum(beta[0] + beta[1] * p_pf + beta[2] * p_dec, MIN_STEP_TIME)
    n = (s + beta[1] * mass) / full
    jac = np.column_stack([-n, mass - n * p_pf, -n * p_dec])
    jac /= full[:, None]
    emptied = n * p_pf < mass
    if np.any(emptied):
        bare = np.maximum(beta[0] + beta[2] * p_dec[emptied], MIN_STEP_TIME)
        n_bare = s[emptied] / bare
        n[emptied] = n_bare
        jac[emptied] = (
            np.column_stack([-n_bare, np.zeros_like(n_bare), -n_bare * p_dec[emptied]])
            / bare[:, None]
        )
    return n, np.maximum(n * p_pf - mass, 0.0), jac


def _phase_sums(timeline: Timeline, per_segment) -> np.ndarray:
    """Sum over each phase's segments of one per-segment column, or of several
    (a list of columns, or an (n_segments, k) array)."""
    tg = timeline.trace_grid
    if isinstance(per_segment, np.ndarray) and per_segment.ndim == 1:
        return phase_integrals(tg, per_segment)
    if isinstance(per_segment, np.ndarray):
        per_segment = per_segment.T
    return phase_integrals_many(tg, per_segment)


def _density_of(timeline: Timeline, beta: np.ndarray, n: np.ndarray) -> np.ndarray:
    s = timeline.trace_grid.seg_len
    return np.where(
        s > 0,
        n / np.where(s > 0, s, 1.0),
        step_density(beta, timeline.p_pf_full, timeline.p_dec),
    )


def solved_correction(
    timeline: Timeline, beta: np.ndarray, mode: str, fixed: np.ndarray | None
) -> np.ndarray:
    """Correction mass of the step-count objective at ``beta``.

    Fixed modes do not depend on ``beta``. ``beta_informed`` places each
    prefill's missing mass on its last step under the density solved with
    the mass on the last segment of the window (``end_inside``).
    """
    if mode != "beta_informed":
        return budget_capped_mass(fixed, timeline)
    inside = budget_capped_mass(
        fixed_correction_mass(
            "end_inside", timeline.trace_grid, timeline.is_prefill, timeline.mu
        ),
        timeline,
    )
    n, _, _ = solved_step_counts(timeline, beta, inside)
    return correction_mass(mode, timeline, _density_of(timeline, beta, n), None)


@dataclass(frozen=True)
class _CountState:
    beta: np.ndarray
    residual: np.ndarray  # Lambda_i - N_i, steps
    jac: np.ndarray  # dLambda_i / dbeta, (n_phases, 3)
    design: np.ndarray  # [N_i, N_i pbar_pf_i, N_i pbar_dec_i] at beta
    loss: float


def _count_state(timeline, beta, mode, fixed, weight) -> _CountState:
    mass = solved_correction(timeline, beta, mode, fixed)
    n, prefill_mass, jac = solved_step_counts(timeline, beta, mass)
    sums = _phase_sums(timeline, [n, prefill_mass, n * timeline.p_dec, *jac.T])
    # Segments outnumber phases two to one: free the per-segment arrays before
    # the design is built (the peak memory of a large fit was here).
    del mass, n, prefill_mass, jac
    steps = sums[:, 0]
    residual = steps - timeline.n_steps
    # The design of METHOD 6.2.4, N_i times the pressures averaged over the
    # steps: its prediction is l_i N_i / Lambda_i, the phase's duration had
    # it held N_i steps of the lengths the betas give there.
    per_step = np.divide(
        sums[:, 1:3],
        steps[:, None],
        out=np.zeros_like(sums[:, 1:3]),
        where=steps[:, None] > 0,
    )
    design = np.column_stack([timeline.n_steps, timeline.n_steps[:, None] * per_step])
    loss = float(np.sum(weight * residual**2))
    # A copy, so that a kept state does not hold all six columns of ``sums``.
    return _CountState(beta, residual, sums[:, 3:].copy(), design, loss)


def step_count_weights(
    timeline: Timeline, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """Weights of the step-count residuals ``Lambda_i - N_i``.

    ``1 / N_i``: per-step noise makes a phase's step-count error grow like
    ``sqrt(N_i)``. Phases whose ``N_i`` a token budget makes unknown
    (:func:`counted_phases`) get weight 0.
    """
    weight = counted_phases(timeline) / np.maximum(timeline.n_steps, 1.0)
    if sample_weight is not None:
        weight = weight * sample_weight
    return weight


def initial_scale(
    timeline: Timeline, beta: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """A usable start for the step-count fit from (baseline) ``beta``.

    The baseline often returns ``b0 = 0`` under heavy load; a start there
    makes every step free of overhead. Give ``b0`` a tenth of the mean time
    per step, then rescale all betas so that the weighted step counts add up:
    the counts scale like ``1 / beta``.
    """
    beta = np.array(beta, dtype=np.float64)
    counted = weight > 0
    per_step = timeline.duration[counted].sum() / max(
        timeline.n_steps[counted].sum(), 1.0
    )
    if beta[0] <= 0:
        beta[0] = 0.1 * per_step
    mass = budget_capped_mass(
        fixed_correction_mass(
            "end_inside", timeline.trace_grid, timeline.is_prefill, timeline.mu
        ),
        timeline,
    )
    n, _, _ = solved_step_counts(timeline, beta, mass)
    total = float(np.sum(weight * _phase_sums(timeline, n)))
    target = float(np.sum(weight * timeline.n_steps))
    if total > 0 and target > 0:
        beta *= total / target
    return beta


def fit_step_counts(
    timeline: Timeline,
    beta_init: np.ndarray,
    *,
    correction_mode: str = "beta_informed",
    max_iter: int = 25,
    tol: float = 1e-6,
    stopping: str = "relative",
    sample_weight: np.ndarray | None = None,
    callback: Callable[[dict], None] | None = None,
) -> tuple[np.ndarray, bool, int, np.ndarray, list[dict]]:
    """Fit the betas by matching every phase's step count to ``N_i``.

    Minimises ``sum_i w_i (Lambda_i(beta) - N_i)^2`` over ``beta >= 0``, where
    ``Lambda_i`` is the number of steps the phase holds under the step density
    solved at ``beta`` (:func:`solved_step_counts`) and ``w_i`` are
    :func:`step_count_weights`. Each iteration is one projected Gauss-Newton
    step, an NNLS of the linearised counts (halved while it does not lower
    the objective). Returns ``(beta, converged, n_iter, design, history)``
    like :func:`iterate_betas`; ``design`` is ``[N_i, N_i pbar_pf_i,
    N_i pbar_dec_i]`` at the final betas, with the pressures averaged over
    the phase's steps as in METHOD.md 6.2.4, and the history's r2 and rmse
    score the durations it predicts, ``design @ beta``.
    """
    fixed = static_correction_mass(
        correction_mode, timeline.trace_grid, timeline.is_prefill, timeline.mu
    )
    weight = step_count_weights(timeline, sample_weight)
    if not np.any(weight > 0):
        raise ValueError(
            "The step-count objective needs phases with a known step count and "
            "a positive sample_weight; under the token budget every phase's "
            "count is unknown or weighted 0. Use objective='duration'."
        )
    beta = initial_scale(timeline, beta_init, weight)
    state = _count_state(timeline, beta, correction_mode, fixed, weight)
    history = [_record(0, beta, np.nan, *_duration_fit(timeline, state))]
    converged, n_iter = False, 0
    for n_iter in range(1, max_iter + 1):
        target = state.jac @ state.beta - state.residual
        proposal = nnls_fit(state.jac, target, weight)
        # Converged when the full Gauss-Newton step is negligible, not when a
        # halved one is: near the minimum the loss comparisons are rounding
        # noise and would shrink the step without the betas having settled.
        step = beta_change(proposal, state.beta, state.jac, stopping)
        shrink = 1.0
        for _ in range(MAX_HALVINGS):
            candidate = state.beta + shrink * (proposal - state.beta)
            trial = _count_state(timeline, candidate, correction_mode, fixed, weight)
            if trial.loss <= state.loss or step < tol:
                break
            shrink *= 0.5
        state = trial
        history.append(
            _record(n_iter, state.beta, step, *_duration_fit(timeline, state))
        )
        if callback is not None:
            callback(history[-1])
        if step < tol:
            converged = True
            break
    return state.beta, converged, n_iter, state.design, history


def _duration_fit(timeline: Timeline, state: _CountState) -> tuple[float, float]:
    return fit_statistics(timeline.duration, state.design @ state.beta)


def _record(iteration, beta, step, r2, rmse) -> dict:
    return dict(
        zip(HISTORY_COLUMNS, [iteration, *beta.tolist(), step, r2, rmse], strict=True)
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
    request_id_col: str = "request_id",
    phase_type_col: str = "phase_type",
    t_start_col: str = "t_start",
    t_end_col: str = "t_end",
    prefill_tokens_col: str = "prefill_tokens",
    decode_tokens_col: str = "decode_tokens",
    n_steps_col: str | None = "N_steps",
    instance_col: str | None = None,
) -> IterativeResult:
    """Estimate ``(beta0, beta1, beta2)`` with the iterative estimator.

    Starts from the baseline estimate and alternates between the step density
    the current betas imply and an NNLS fit on step-averaged pressures, until
    the betas stop moving. With its defaults this reproduces the published
    reference, including its absolute stopping rule.

    Parameters
    ----------
    phases : DataFrame
        One row per phase (see the README's trace schema).
    chunk_size : int
        Prefill chunk size ``C`` in tokens.
    prefill_correction_mode : {"beta_informed", "end", "end_inside", "uniform", \
"none"}, default="beta_informed"
        Placement of the last prefill chunk's missing tokens.
    max_outer_iters : int, default=25
        Maximum number of re-weighting iterations.
    tol : float, default=1e-6
        Stopping threshold on the change of betas (see ``stopping``).
    damping_eta : float in (0, 1], default=1.0
        ``beta_m = (1 - eta) beta_m-1 + eta beta_fit``.
    init_via_baseline_correction : {"end", "end_inside", "uniform", "none"}, \
default="end"
        Correction mode of the initialising baseline fit.
    min_duration_sec : float, default=0.0
        Duration floor of the initialising baseline's step density.
    stopping : {"absolute", "relative"}, default="absolute"
        ``"absolute"`` is the reference rule ``||d beta||_2 < tol`` (seconds);
        ``"relative"`` is scale-free (see :func:`beta_change`).
    objective : {"duration", "step_count"}, default="duration"
        ``"duration"`` is the reference's fixed-point iteration of NNLS fits
        of the durations. ``"step_count"`` fits the betas so that every phase
        holds its ``N_i`` steps under the step density they imply
        (:func:`fit_step_counts`); ``damping_eta`` does not apply to it.
    token_budget : int or None, default=None
        Per-step token budget of the engine; see
        :class:`~sklearn_beta.PhaseExposureTransformer`.
    time_resolution : "auto" or float, default=0.0
        Merge phase boundaries closer than this into one instant (see
        :class:`PhaseExposureTransformer`); 0 keeps the reference's grid.
    request_id_col, phase_type_col, t_start_col, t_end_col, \
prefill_tokens_col, decode_tokens_col, n_steps_col, instance_col : str
        Column names, as in :func:`estimate_betas_baseline`.

    Returns
    -------
    result : IterativeResult
        Betas, ``converged``, ``n_outer_iters``, ``diagnostics`` of the last
        design (as :func:`estimate_betas_baseline`'s, with ``condition_number``,
        ``not_identified`` and ``at_zero_bound``) and ``history`` (one row per
        iteration, 0 = initial betas).

    Warns
    -----
    IdentifiabilityWarning
        When the trace cannot separate some coefficients.
    """
    _check_iteration_params(
        prefill_correction_mode,
        init_via_baseline_correction,
        max_outer_iters,
        tol,
        damping_eta,
        stopping,
        objective,
    )
    check_non_negative(min_duration_sec, "min_duration_sec")
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
    arrays = check_phases(phases, columns)
    arrays = with_time_resolution(arrays, chunk_size, time_resolution)
    timeline = timeline_from_arrays(arrays, chunk_size, token_budget)
    density = phase_step_density(timeline.n_steps, timeline.duration, min_duration_sec)
    init_design = baseline_exposures(timeline, density, init_via_baseline_correction)
    beta0 = nnls_fit(init_design, timeline.duration)
    beta, converged, n_iter, design, history = run_iterations(
        objective,
        timeline,
        beta0,
        correction_mode=prefill_correction_mode,
        max_iter=max_outer_iters,
        tol=tol,
        damping=damping_eta,
        stopping=stopping,
    )
    diagnostics = design_diagnostics(design, timeline.duration, beta)
    diagnostics.update(r2=history[-1]["r2"], rmse_seconds=history[-1]["rmse_seconds"])
    diagnostics.update(
        identifiability_diagnostics(
            design,
            timeline.duration,
            beta,
            timeline,
            estimator="estimate_betas_iterative",
        )
    )
    return IterativeResult(
        *beta.tolist(),
        converged=converged,
        n_outer_iters=n_iter,
        diagnostics=diagnostics,
        history=pd.DataFrame(history, columns=list(HISTORY_COLUMNS)),
    )


def run_iterations(
    objective: str,
    timeline: Timeline,
    beta_init: np.ndarray,
    *,
    damping: float = 1.0,
    **kwargs,
) -> tuple[np.ndarray, bool, int, np.ndarray, list[dict]]:
    """Dispatch to :func:`iterate_betas` or :func:`fit_step_counts`."""
    if objective == "step_count":
        return fit_step_counts(timeline, beta_init, **kwargs)
    return iterate_betas(timeline, beta_init, damping=damping, **kwargs)


def _check_iteration_params(
    mode, init_mode, max_iter, tol, damping, stopping, objective="duration"
):
    if mode not in CORRECTION_MODES:
        raise ValueError(
            f"prefill_correction_mode must be one of {CORRECTION_MODES}, got {mode!r}."
        )
    if init_mode not in FIXED_CORRECTION_MODES:
        raise ValueError(
            "init_via_baseline_correction must be one of "
            f"{FIXED_CORRECTION_MODES}, got {init_mode!r}."
        )
    if isinstance(max_iter, bool) or not isinstance(max_iter, Integral) or max_iter < 1:
        raise ValueError(f"max_outer_iters must be an integer >= 1, got {max_iter!r}.")
    if isinstance(tol, bool) or not isinstance(tol, Real) or not 0 < tol < np.inf:
        raise ValueError(f"tol must be a positive number, got {tol!r}.")
    bad_type = isinstance(damping, bool) or not isinstance(damping, Real)
    if bad_type or not 0 < damping <= 1:
        raise ValueError(f"damping_eta must be in (0, 1], got {damping!r}.")
    if stopping not in STOPPING_RULES:
        raise ValueError(f"stopping must be one of {STOPPING_RULES}, got {stopping!r}.")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")


class IterativeBetaRegressor(BaseBetaRegressor):
    """Step-density re-weighted estimator: the iterative estimator.

    Every grid segment of the trace lasts a whole number of steps of
    ``b0 + b1 p_eff + b2 p_dec`` seconds each, so betas imply a step density
    ``lam`` on every segment, hence a number of steps ``Lambda_i`` inside every
    phase. By default (``objective="step_count"``) the betas are those under
    which every phase holds its known ``N_i`` steps (``ceil(P / C)`` or
    ``D``): a non-negative nonlinear least squares on ``Lambda_i - N_i``,
    solved by Gauss-Newton steps that are each an NNLS, with the density and
    ``p_eff`` solved together on each segment. On simulated traces this
    recovers the betas exactly without noise, in every regime of
    ``benchmarks/accuracy.py``, where the reference's fixed point
    oscillates under heavy load.

    ``objective="duration"`` is the reference's fixed-point iteration
    (METHOD.md section 6): from the baseline betas, compute ``lam`` from the
    previous iteration's ``p_eff``, place each prefill's missing last-chunk
    tokens, average the pressures over the steps inside every phase and refit
    the durations by NNLS on ``[N_i, N_i pbar_pf_i, N_i pbar_dec_i]``.

    Parameters
    ----------
    correction_mode : {"end_inside", "beta_informed", "end", "uniform", \
"none"}, default="end_inside"
        Placement of the last prefill chunk's missing tokens. ``"end_inside"``
        puts them on the last segment of the prefill, where the partial step
        ran: exact for an engine without a token budget. ``"beta_informed"``
        (the reference default) places them on the last step under the
        current density; with the step-count objective the two agree at the
        solution, but ``"end_inside"`` keeps the objective smooth.
    damping : float in (0, 1], default=1.0
        Damping ``eta`` of the update ``beta = (1 - eta) beta + eta beta_fit``
        of the duration objective; ignored by the step-count objective.
    max_iter : int, default=25
        Maximum number of iterations.
    tol : float, default=1e-6
        Stopping threshold on the change of betas per iteration.
    init_correction_mode : {"end", "end_inside", "uniform", "none"}, default="end"
        Correction mode of the initialising baseline fit.
    stopping : {"relative", "absolute"}, default="relative"
        ``"relative"`` stops when every coefficient's contribution (to the
        predicted durations, or to the step counts) moves by less than
        ``tol`` of itself: free of the time unit. ``"absolute"`` is the
        reference rule ``||d beta||_2 < tol`` in the trace's time unit.
    objective : {"step_count", "duration"}, default="step_count"
        What the betas are fitted to; see above. With
        ``IterativeBetaRegressor("beta_informed", objective="duration",
        stopping="absolute")`` the fit reproduces
        :func:`estimate_betas_iterative` (the published reference) exactly.
    verbose : int, default=0
        With ``verbose > 0``, print one line per iteration (betas and their
        change) to stderr.

    Attributes
    ----------
    beta_ : ndarray of shape (3,)
        ``[beta0, beta1, beta2]`` (time unit per step, per prefill token, per
        decode token).
    coef_ : ndarray of shape (3,)
        Same values as ``beta_``.
    intercept_ : float
        Always 0.0.
    n_iter_ : int
        Number of iterations run.
    converged_ : bool
        Whether the stopping rule was met within ``max_iter``.
    history_ : DataFrame
        One row per iteration (0 = the start): betas, step, r2, rmse_seconds.
        With the step-count objective the start is the baseline rescaled to
        the trace's step counts, and r2 / rmse score the durations predicted
        as ``l_i N_i / Lambda_i``.
    diagnostics_ : dict
        n_phases, r2, rmse_seconds and mean exposures of the last design;
        its ``condition_number``, ``not_identified`` and ``at_zero_bound``
        (see :class:`~sklearn_beta.exceptions.IdentifiabilityWarning`).
    time_scale_ : float
        The power of two (near the mean time per step) the trace's times were
        divided by for the fit with ``stopping="relative"``, so that the
        floors on step times are in units of the trace's own steps and the
        betas scale exactly with the time unit; 1.0 with ``"absolute"``,
        which keeps the reference's arithmetic bit for bit.
    n_features_in_ : int
        Number of columns of the exposure table.
    feature_names_in_ : ndarray of str
        Column names of the exposure table, when it is a DataFrame.

    See Also
    --------
    BaselineBetaRegressor : The non-iterative estimator.
    estimate_betas_iterative : The functional, reference-compatible API.
    PhaseExposureTransformer : Its ``token_budget`` makes the prefill pressure
        budget-aware.

    Notes
    -----
    Why the step-count objective: under heavy load the duration map's
    Jacobian at the true betas has an eigenvalue below -1 (about -1.5 at
    ~230 running requests, even with exact features), so that the reference
    iteration, started at the truth, drifts into a period-2 oscillation
    between ``b0 = 0`` and a ``b0`` two to four times too large; and with the
    exact token sums as design, any betas with ``b0 = 0`` fit the durations
    exactly, since ``l_i = X_i beta + b0 (N_i - Lambda_i)``. The information
    on the betas is in ``Lambda_i = N_i``: see
    ``benchmarks/accuracy_diagnostics.py``.

    The step-count objective reads the durations off the timeline itself
    (the grid of ``t_start`` and ``t_end``); an explicit ``y`` in ``fit``
    only enters its starting point and the reported ``r2``/``rmse``. With
    ``objective="duration"`` the betas are a regression of ``y``.

    References
    ----------
    The iterative estimator of the published trace-only calibration of
    vLLM-style step times; see METHOD.md, section 6.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
    >>> from sklearn_beta.datasets import load_sample_trace
    >>> phases = load_sample_trace()
    >>> model = make_pipeline(PhaseExposureTransformer(chunk_size=64),
    ...                       IterativeBetaRegressor()).fit(phases)
    >>> bool(model[-1].converged_)
    True
    """

    _min_columns = len(EXPOSURE_COLUMNS)

    _parameter_constraints: dict = {
        "correction_mode": [StrOptions(set(CORRECTION_MODES))],
        "damping": [Interval(Real, 0, 1, closed="right")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "init_correction_mode": [StrOptions(set(FIXED_CORRECTION_MODES))],
        "stopping": [StrOptions(set(STOPPING_RULES))],
        "objective": [StrOptions(set(OBJECTIVES))],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        correction_mode="end_inside",
        *,
        damping=1.0,
        max_iter=25,
        tol=1e-6,
        init_correction_mode="end",
        stopping="relative",
        objective="step_count",
        verbose=0,
    ):
        self.correction_mode = correction_mode
        self.damping = damping
        self.max_iter = max_iter
        self.tol = tol
        self.init_correction_mode = init_correction_mode
        self.stopping = stopping
        self.objective = objective
        self.verbose = verbose

    def _fit_table(self, table, duration, sample_weight):
        self.time_scale_ = _time_scale(table, duration, self.stopping)
        unit = self.time_scale_
        scaled = _rescaled(table, unit)
        timeline = _timeline_with_target(scaled, duration / unit)
        init_design = baseline_exposures(
            timeline, scaled[:, _COL["step_density"]], self.init_correction_mode
        )
        beta_init = nnls_fit(init_design, timeline.duration, sample_weight)
        # Neither is read again; at 1e7 phases they hold 1.2 GB.
        del scaled, init_design
        beta, converged, n_iter, design, history = run_iterations(
            self.objective,
            timeline,
            beta_init,
            correction_mode=self.correction_mode,
            max_iter=self.max_iter,
            tol=self.tol,
            damping=self.damping,
            stopping=self.stopping,
            sample_weight=sample_weight,
            callback=partial(_print_progress, unit=unit) if self.verbose else None,
        )
        beta = beta * unit
        if not converged:
            warnings.warn(
                f"IterativeBetaRegressor did not converge in max_iter={self.max_iter} "
                f"iterations (last change {history[-1]['step']:.3g} >= tol="
                f"{self.tol:g}); increase max_iter or damp with damping < 1.",
                ConvergenceWarning,
                stacklevel=4,
            )
        self.n_iter_ = n_iter
        self.converged_ = converged
        self.history_ = _history_frame(history, unit)
        self.diagnostics_ = design_diagnostics(design, duration, beta, sample_weight)
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
        return beta

    def _predict_table(self, table):
        # The design is in steps and tokens: no time unit to undo.
        timeline = timeline_from_exposures(_rescaled(table, self.time_scale_))
        return self.predictive_design(timeline) @ self.beta_

    def predictive_design(self, timeline: Timeline, n_passes: int = 3) -> np.ndarray:
        """Design of a trace (in units of ``time_scale_``) at the fitted betas.

        With ``objective="step_count"`` the density solved at the betas;
        otherwise ``p_eff`` settled by ``n_passes`` lagged passes.
        """
        fixed = static_correction_mass(
            self.correction_mode, timeline.trace_grid, timeline.is_prefill, timeline.mu
        )
        beta = self.beta_ / self.time_scale_
        if self.objective == "step_count":
            weight = np.ones(timeline.n_phases)
            return _count_state(
                timeline, beta, self.correction_mode, fixed, weight
            ).design
        design, _ = settled_design(
            timeline, beta, self.correction_mode, fixed, n_passes
        )
        return design


def _timeline_with_target(table: np.ndarray, duration: np.ndarray) -> Timeline:
    timeline = timeline_from_exposures(table)
    if duration is timeline.duration:
        return timeline
    return replace(timeline, duration=duration)


def _time_scale(table: np.ndarray, duration: np.ndarray, stopping: str) -> float:
    """A power of two near the mean time per step; 1.0 for the reference rule.

    A power of two divides float64 times exactly, so the fit sees the very
    same trace, only in units where a step lasts about 1.
    """
    if stopping == "absolute":
        return 1.0
    steps = float(np.sum(table[:, _COL["n_steps"]]))
    per_step = (
        float(np.sum(duration)) / steps if steps > 0 else float(np.mean(duration))
    )
    if not np.isfinite(per_step) or per_step <= 0:
        return 1.0
    return float(2.0 ** np.round(np.log2(per_step)))


def _rescaled(table: np.ndarray, unit: float) -> np.ndarray:
    if unit == 1.0:
        return table
    out = table.copy()
    for name in ("duration", "t_start", "t_end"):
        out[:, _COL[name]] /= unit
    out[:, _COL["step_density"]] *= unit
    return out


def _history_frame(history: list[dict], unit: float) -> pd.DataFrame:
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    if unit != 1.0:
        frame[["beta0", "beta1", "beta2", "rmse_seconds"]] *= unit
    return frame


def _print_progress(record: dict, unit: float = 1.0) -> None:
    b0, b1, b2 = (record[k] * unit for k in ("beta0", "beta1", "beta2"))
    print(
        f"  iter {record['iteration']:3d}  beta0={b0:.6g}  beta1={b1:.6g}  "
        f"beta2={b2:.6g}  change={record['step']:.3g}",
        file=sys.stderr,
        flush=True,
    )
