"""The reference's fixed point of the duration objective (docs/method.md, section 6).

At betas ``beta`` every grid segment holds ``step_density`` steps per unit of
time; each prefill's missing last-chunk mass is placed under that density;
the pressures averaged over the steps inside every phase give the design
``[N_i, N_i pbar_pf_i, N_i pbar_dec_i]``, and an NNLS of the durations on it
gives the next betas. The lag is the reference's: the density of pass m uses
``p_eff`` of pass m-1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ._corrections import (
    beta_informed_correction_mass,
    budget_capped_mass,
    design_step_counts,
    static_correction_mass,
)
from ._grid import Timeline, phase_integrals
from ._nnls import fit_statistics, nnls_fit
from ._warnings import warn

#: Floor on a step time, in the fit's time unit.
MIN_STEP_TIME = 1e-12
#: How the change of betas per iteration is measured (:func:`beta_change`).
STOPPING_RULES = ("absolute", "relative")
#: Columns of an iterative fit's history (one row per iteration, 0 = start).
HISTORY_COLUMNS = ("iteration", "beta0", "beta1", "beta2", "step", "r2", "rmse_seconds")


def step_density(beta: np.ndarray, p_eff: np.ndarray, p_dec: np.ndarray) -> np.ndarray:
    """Steps per second on each segment: ``1 / max(b0 + b1 p_eff + b2 p_dec, 1e-12)``.

    This is ``step_density`` of docs/method.md 6.2.1, the inverse step time.
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
    """The design ``[N_i, N_i * pbar_pf_i, N_i * pbar_dec_i]`` (docs/method.md 6.2.4).

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
    n = design_step_counts(timeline, total)
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

    Returns the design and the new ``p_eff``. The lag is deliberate (docs/method.md 6):
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
    n_passes: int,
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


@dataclass(frozen=True)
class IterationSettings:
    """How an iterative fit runs; the estimator's parameters, typed there."""

    correction_mode: str
    max_iter: int
    tol: float
    damping: float
    stopping: str


class TimelineProblem:
    """A fit's problem on one in-memory timeline: the trace, the correction
    mode, the weights and the correction that does not depend on the betas."""

    def __init__(
        self,
        timeline: Timeline,
        correction_mode: str,
        sample_weight: np.ndarray | None = None,
    ):
        self.timeline = timeline
        self.correction_mode = correction_mode
        self.sample_weight = sample_weight
        self.fixed = static_correction_mass(
            correction_mode, timeline.trace_grid, timeline.is_prefill, timeline.mu
        )


class TimelineDurations(TimelineProblem):
    """The duration objective's fixed point on one in-memory timeline.

    What :func:`solve_fixed_point` asks of a trace: the next lagged
    re-weighting pass at given betas (the problem keeps the lagged ``p_eff``),
    that pass's NNLS of the durations, the basis its stopping rule measures a
    step in and its fit statistics. The Dask implementation
    (:mod:`sklearn_beta.distributed._dask_fit`) answers with sums over partitions.
    """

    def __init__(self, timeline, correction_mode, sample_weight=None):
        super().__init__(timeline, correction_mode, sample_weight)
        self.p_eff = timeline.p_pf_full

    def reweighted(self, beta: np.ndarray) -> np.ndarray:
        """The next pass's design (:func:`reweighted_design`); keeps its ``p_eff``."""
        design, self.p_eff = reweighted_design(
            self.timeline, beta, self.p_eff, self.correction_mode, self.fixed
        )
        return design

    def fit(self, design: np.ndarray) -> np.ndarray:
        return nnls_fit(design, self.timeline.duration, self.sample_weight)

    def change_basis(self, design: np.ndarray) -> np.ndarray:
        """What :func:`beta_change` measures a step against: the design."""
        return design

    def scores(self, design: np.ndarray, beta: np.ndarray) -> tuple[float, float]:
        """``(r2, rmse)`` of the pass's design at ``beta``."""
        return fit_statistics(self.timeline.duration, design @ beta, self.sample_weight)


def iterate_betas(
    timeline: Timeline,
    beta_init: np.ndarray,
    settings: IterationSettings,
    sample_weight: np.ndarray | None = None,
    callback: Callable[[dict], None] | None = None,
    on_solution: Callable[[tuple], None] | None = None,
) -> tuple[np.ndarray, bool, int, np.ndarray, list[dict]]:
    """Run the fixed-point iteration of docs/method.md, section 6.

    Returns ``(beta, converged, n_iter, design, history)`` where ``design`` is
    the last iteration's design and ``history`` one record per iteration,
    iteration 0 being the initial betas (:func:`solve_fixed_point`).
    ``on_solution``, if given, receives the fitted objective's ``(jac,
    residual, weight)`` at the returned betas: the last design, the duration
    residuals and ``sample_weight`` (for the confidence intervals).
    """
    problem = TimelineDurations(timeline, settings.correction_mode, sample_weight)
    beta, converged, n_iter, design, history = solve_fixed_point(
        problem, beta_init, settings, callback
    )
    if on_solution is not None:
        on_solution((design, timeline.duration - design @ beta, sample_weight))
    return beta, converged, n_iter, design, history


def solve_fixed_point(
    problem,
    beta_init: np.ndarray,
    settings: IterationSettings,
    callback: Callable[[dict], None] | None = None,
) -> tuple[np.ndarray, bool, int, object, list[dict]]:
    """The fixed-point loop on a :class:`TimelineDurations` or the Dask one.

    Returns ``(beta, converged, n_iter, last_pass, history)``, ``last_pass``
    being what ``problem.reweighted`` returned last (a design in memory). A
    record's r2 and rmse are those of the iteration's undamped NNLS fit, as
    the reference reports them.
    """
    damping = settings.damping
    beta = np.asarray(beta_init, dtype=np.float64)
    columns = getattr(problem, "coef_columns", None)  # a step model's betas
    history = [history_record(0, beta, np.nan, np.nan, np.nan, "start", columns)]
    note = "NNLS of the durations" + (f", damped by {damping:g}" if damping < 1 else "")
    converged, last_pass, n_iter = False, None, 0
    for n_iter in range(1, settings.max_iter + 1):
        last_pass = problem.reweighted(beta)
        beta_fit = problem.fit(last_pass)
        new = (1.0 - damping) * beta + damping * beta_fit
        step = beta_change(
            new, beta, problem.change_basis(last_pass), settings.stopping
        )
        # The reference scores the undamped NNLS fit of the iteration.
        r2, rmse = problem.scores(last_pass, beta_fit)
        history.append(history_record(n_iter, new, step, r2, rmse, note, columns))
        if callback is not None:
            callback(history[-1])
        beta = new
        if step < settings.tol:
            converged = True
            break
    return beta, converged, n_iter, last_pass, history


def warn_not_converged(
    caller: str,
    settings: IterationSettings,
    last_step: float,
    names: dict | None = None,
) -> None:
    """The ConvergenceWarning of a fit that ran out of iterations.

    ``names`` maps the estimator's parameters to the caller's arguments.
    """
    max_iter, damping = ((names or {}).get(k, k) for k in ("max_iter", "damping"))
    warn(
        f"{caller} did not converge in {max_iter}={settings.max_iter} "
        f"iterations (last change {last_step:.3g} >= tol="
        f"{settings.tol:g}); increase {max_iter} or damp with {damping} < 1.",
        ConvergenceWarning,
    )


def history_record(iteration, beta, step, r2, rmse, note="", columns=None) -> dict:
    """One row of the history; ``note`` says how the iteration went.
    ``columns`` names the betas (a step model's), ``beta0..2`` by default."""
    names = HISTORY_COLUMNS if columns is None else history_columns(columns)
    values = [iteration, *np.asarray(beta).tolist(), step, r2, rmse]
    return dict(zip(names, values, strict=True), note=note)


def history_columns(coef_columns) -> tuple:
    """A history's columns with the betas named ``coef_columns``."""
    return ("iteration", *coef_columns, *HISTORY_COLUMNS[-3:])
