"""The step-count objective: betas under which every phase holds its N_i steps.

A segment of length s holding n steps, with the prefill pressure P, the
decode pressure p_dec and a correction taking m tokens back, lasts
s = n (b0 + b1 P + b2 p_dec) - b1 m. Solved for n, the step density and the
effective pressure p_eff = P - m / n are consistent by construction: no lag.
At the true betas, with the correction on each prefill's last step, the
step counts are exact, so are the phases' token sums; and every phase must
then hold exactly its N_i steps. Fitting the betas to make the phases' step
counts match N_i is a 3-parameter nonlinear least squares. Fitting the
durations instead cannot use this: with the token sums as design, any beta
with b0 = 0 fits the durations exactly (l_i = X_i beta + b0 (N_i - Lambda_i)),
and the reference's fixed point is repelling under heavy load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._corrections import (
    budget_capped_mass,
    counted_phases,
    fixed_correction_mass,
)
from ._fixed_point import (
    MIN_STEP_TIME,
    IterationSettings,
    TimelineProblem,
    beta_change,
    correction_mass,
    history_record,
    step_density,
)
from ._grid import PhaseIntegrals, Timeline
from ._nnls import (
    nnls_fit,
    residual_squares,
    scores_from_sums,
    total_squares,
)

#: Step halvings tried when a Gauss-Newton step does not lower the objective.
MAX_HALVINGS = 8


def solved_step_counts(
    timeline: Timeline, beta: np.ndarray, mass: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps per segment at ``beta``, the density and ``p_eff`` solved together.

    Returns ``(n, prefill_mass, jac)``: the steps on each segment, the prefill
    tokens they hold (``n * p_eff``) and ``dn / dbeta`` of shape (n_seg, 3).
    Where the correction would take back more than the full chunks hold,
    ``p_eff`` is 0 and the segment's steps are ``s / (b0 + b2 p_dec)``.
    """
    solved = SolvedCounts(timeline, beta, mass)
    jac = np.column_stack([solved.jacobian(k) for k in range(3)])
    return solved.n, solved.prefill_mass(), jac


class CountScratch:
    """Scratch arrays of :func:`count_state`, made once per fit and reused by
    every state: at 1e7 phases a state otherwise faults in about a gigabyte
    of fresh memory, page by page (more system time than arithmetic)."""

    def __init__(self, timeline: Timeline):
        n_segments = timeline.trace_grid.n_segments
        self.step_time = np.empty(n_segments)
        self.segment = np.empty(n_segments)
        self.phase = np.empty(timeline.n_phases)
        self.integrals = PhaseIntegrals(timeline.trace_grid)


class SolvedCounts:
    """The steps on every segment at ``beta`` (see :func:`solved_step_counts`),
    with the step time each segment's steps last; the prefill mass and the
    Jacobian's columns are made on demand, one segment-sized array each.
    With a :class:`CountScratch` the step time lives in its buffer, valid
    until the scratch serves the next state.
    """

    def __init__(
        self,
        timeline: Timeline,
        beta: np.ndarray,
        mass: np.ndarray,
        scratch: CountScratch | None = None,
    ):
        s, p_pf, p_dec = timeline.trace_grid.seg_len, timeline.p_pf_full, timeline.p_dec
        self.timeline, self.mass = timeline, mass
        # b0 + b1 p_pf + b2 p_dec, floored, evaluated in place in that order.
        lent = (None, None) if scratch is None else (scratch.step_time, scratch.segment)
        step_time = np.multiply(p_pf, beta[1], out=lent[0])
        step_time += beta[0]
        product = np.multiply(p_dec, beta[2], out=lent[1])
        step_time += product
        np.maximum(step_time, MIN_STEP_TIME, out=step_time)
        n = np.multiply(mass, beta[1])
        n += s
        n /= step_time
        np.multiply(n, p_pf, out=product)
        emptied = product < mass
        if np.any(emptied):
            bare = np.maximum(beta[0] + beta[2] * p_dec[emptied], MIN_STEP_TIME)
            n[emptied] = s[emptied] / bare
            step_time[emptied] = bare
        else:
            emptied = None
        self.n, self.step_time, self.emptied = n, step_time, emptied

    def prefill_mass(self, out: np.ndarray | None = None) -> np.ndarray:
        """Prefill tokens the steps hold, ``max(n * p_pf - mass, 0)``."""
        out = np.multiply(self.n, self.timeline.p_pf_full, out=out)
        out -= self.mass
        return np.maximum(out, 0.0, out=out)

    def jacobian(self, k: int, out: np.ndarray | None = None) -> np.ndarray:
        """Column ``k`` of ``dn / dbeta``: ``-n``, ``mass - n p_pf`` (0 on emptied
        segments, where ``p_eff`` is held at 0) and ``-n p_dec``, over the step
        time."""
        n = self.n
        if k == 1:
            out = np.multiply(n, self.timeline.p_pf_full, out=out)
            np.subtract(self.mass, out, out=out)
        else:
            out = np.negative(n, out=out)
            if k == 2:
                out *= self.timeline.p_dec
        out /= self.step_time
        if k == 1 and self.emptied is not None:
            out[self.emptied] = 0.0
        return out


def _density_of(timeline: Timeline, beta: np.ndarray, n: np.ndarray) -> np.ndarray:
    s = timeline.trace_grid.seg_len
    return np.where(
        s > 0,
        n / np.where(s > 0, s, 1.0),
        step_density(beta, timeline.p_pf_full, timeline.p_dec),
    )


def end_inside_mass(timeline: Timeline) -> np.ndarray:
    """Each prefill's missing mass on the last segment of its window, capped."""
    return budget_capped_mass(
        fixed_correction_mass(
            "end_inside", timeline.trace_grid, timeline.is_prefill, timeline.mu
        ),
        timeline,
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
    n = SolvedCounts(timeline, beta, end_inside_mass(timeline)).n
    return correction_mass(mode, timeline, _density_of(timeline, beta, n), None)


@dataclass(frozen=True)
class CountState:
    """The step-count objective at ``beta``, per phase and per segment."""

    beta: np.ndarray
    residual: np.ndarray  # Lambda_i - N_i, steps
    jac: np.ndarray  # dLambda_i / dbeta, (n_phases, 3)
    design: np.ndarray  # [N_i, N_i pbar_pf_i, N_i pbar_dec_i] at beta
    loss: float
    n: np.ndarray  # steps on each segment
    prefill_mass: np.ndarray  # prefill tokens those steps hold, n * p_eff


def count_state(timeline, beta, mode, fixed, weight, scratch=None) -> CountState:
    """The objective at ``beta``; ``scratch``, a :class:`CountScratch` of the
    timeline, lends the temporaries (none of its arrays is kept)."""
    mass = solved_correction(timeline, beta, mode, fixed)
    scratch = scratch or CountScratch(timeline)
    solved = SolvedCounts(timeline, beta, mass, scratch)
    integrals = scratch.integrals
    n_phases, n_steps = timeline.n_phases, timeline.n_steps
    steps = integrals(solved.n)
    # The design of docs/method.md 6.2.4, N_i times the pressures averaged over the
    # steps: its prediction is l_i N_i / Lambda_i, the phase's duration had
    # it held N_i steps of the lengths the betas give there. Column-major,
    # each column integrated in place through one segment-sized scratch.
    design = np.empty((n_phases, 3), order="F")
    design[:, 0] = n_steps
    prefill_mass = solved.prefill_mass()
    integrals(prefill_mass, out=design[:, 1])
    segment = np.multiply(solved.n, timeline.p_dec, out=scratch.segment)
    integrals(segment, out=design[:, 2])
    jac = np.empty((n_phases, 3), order="F")
    for k in range(3):
        integrals(solved.jacobian(k, out=segment), out=jac[:, k])
    held = steps > 0
    for k in (1, 2):
        np.divide(design[:, k], steps, out=design[:, k], where=held)
        np.copyto(design[:, k], 0.0, where=~held)
        design[:, k] *= n_steps
    residual = np.subtract(steps, n_steps, out=steps)
    squares = np.square(residual, out=scratch.phase)
    squares *= weight
    loss = float(np.sum(squares))
    return CountState(beta, residual, jac, design, loss, solved.n, prefill_mass)


def newton_target(state: CountState) -> np.ndarray:
    """Target of the linearised counts: ``jac @ (beta + Delta) ~ jac @ beta - r``."""
    target = state.jac @ state.beta
    target -= state.residual
    return target


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


class CountedTotals:
    """``counted_totals`` of a step-count problem with per-phase ``weight``
    and a ``timeline`` (the published and the step-model problems)."""

    def counted_totals(self) -> tuple[int, float, float]:
        """Phases of positive weight; the sums of their durations and ``N_i``."""
        counted = self.weight > 0
        return (
            int(np.count_nonzero(counted)),
            float(self.timeline.duration[counted].sum()),
            float(self.timeline.n_steps[counted].sum()),
        )


class TimelineCounts(CountedTotals, TimelineProblem):
    """The step-count objective of one in-memory timeline.

    What :func:`solve_step_counts` asks of a trace: weighted totals, the
    state at given betas, its Gauss-Newton proposal, the basis its stopping
    rule measures a step in, and the duration fit it reports. The Dask
    implementation (:mod:`sklearn_beta.distributed._dask_fit`) answers the same
    questions with sums over partitions, so one loop serves both.
    """

    def __init__(self, timeline, correction_mode, sample_weight=None):
        super().__init__(timeline, correction_mode, sample_weight)
        self.weight = step_count_weights(timeline, sample_weight)
        self.scratch = None
        self.duration_squares = None

    def step_totals(self, beta: np.ndarray) -> tuple[float, float]:
        """Weighted steps the phases hold at ``beta`` (``end_inside``), and ``N_i``."""
        timeline = self.timeline
        if self.correction_mode == "end_inside":
            mass = budget_capped_mass(self.fixed, timeline)
        else:
            mass = end_inside_mass(timeline)
        scratch = self._scratch()
        n = SolvedCounts(timeline, beta, mass, scratch).n
        total = float(np.sum(self.weight * scratch.integrals(n)))
        return total, float(np.sum(self.weight * timeline.n_steps))

    def _scratch(self) -> CountScratch:
        if self.scratch is None:
            self.scratch = CountScratch(self.timeline)
        return self.scratch

    def state(self, beta: np.ndarray) -> CountState:
        return count_state(
            self.timeline,
            beta,
            self.correction_mode,
            self.fixed,
            self.weight,
            self._scratch(),
        )

    def proposal(self, state: CountState) -> np.ndarray:
        """The NNLS of the linearised counts: the full Gauss-Newton step's end."""
        return nnls_fit(state.jac, newton_target(state), self.weight)

    def change_basis(self, state: CountState) -> np.ndarray:
        """What :func:`beta_change` measures a step against: the Jacobian."""
        return state.jac

    def duration_fit(self, state: CountState) -> tuple[float, float]:
        """``(r2, rmse)`` of the durations the state predicts, ``design @ beta``."""
        duration = self.timeline.duration
        if self.duration_squares is None:  # the same at every state
            self.duration_squares = total_squares(duration)
        predicted = state.design @ state.beta
        return scores_from_sums(
            residual_squares(duration, predicted), *self.duration_squares
        )


def initial_scale(problem, beta: np.ndarray) -> np.ndarray:
    """A usable start for the step-count fit from (baseline) ``beta``.

    The baseline often returns ``b0 = 0`` under heavy load; a start there
    makes every step free of overhead. Give ``b0`` a tenth of the mean time
    per step, then rescale all betas so that the weighted step counts add up:
    the counts scale like ``1 / beta``. ``problem`` is a
    :class:`TimelineCounts` or its Dask counterpart.
    """
    beta = np.array(beta, dtype=np.float64)
    _, duration, steps = problem.counted_totals()
    # the per-step overhead's position (a step model may lack one: None)
    overhead = getattr(problem, "overhead", 0)
    if overhead is not None and beta[overhead] <= 0:
        beta[overhead] = 0.1 * (duration / max(steps, 1.0))
    total, target = problem.step_totals(beta)
    if total > 0 and target > 0:
        beta *= total / target
    return beta


def fit_step_counts(
    timeline: Timeline,
    beta_init: np.ndarray,
    settings: IterationSettings,
    sample_weight: np.ndarray | None = None,
    callback: Callable[[dict], None] | None = None,
    on_solution: Callable[[tuple], None] | None = None,
) -> tuple[np.ndarray, bool, int, np.ndarray, list[dict]]:
    """Fit the betas by matching every phase's step count to ``N_i``.

    Minimises ``sum_i w_i (Lambda_i(beta) - N_i)^2`` over ``beta >= 0``, where
    ``Lambda_i`` is the number of steps the phase holds under the step density
    solved at ``beta`` (:func:`solved_step_counts`) and ``w_i`` are
    :func:`step_count_weights`; see :func:`solve_step_counts`. Returns
    ``(beta, converged, n_iter, design, history)`` like :func:`iterate_betas`;
    ``design`` is ``[N_i, N_i pbar_pf_i, N_i pbar_dec_i]`` at the final betas,
    with the pressures averaged over the phase's steps as in
    docs/method.md 6.2.4, and the history's r2 and rmse score the durations it
    predicts, ``design @ beta``. ``on_solution``, if given, receives
    ``(jac, residual, weight)`` of the objective at the returned betas (for
    the confidence intervals, without evaluating the objective again).
    """
    problem = TimelineCounts(timeline, settings.correction_mode, sample_weight)
    beta, converged, n_iter, state, history = solve_step_counts(
        problem, beta_init, settings, callback
    )
    if on_solution is not None:
        on_solution((state.jac, state.residual, problem.weight))
    return beta, converged, n_iter, state.design, history


def solve_step_counts(
    problem,
    beta_init: np.ndarray,
    settings: IterationSettings,
    callback: Callable[[dict], None] | None = None,
) -> tuple[np.ndarray, bool, int, object, list[dict]]:
    """The projected Gauss-Newton loop of the step-count objective.

    Each iteration is one Gauss-Newton step, an NNLS of the linearised counts
    ``beta + Delta`` (``problem.proposal``), taken as ``beta + damping *
    Delta`` and halved while it does not lower the objective; the stopping
    rule measures the full step ``Delta``, so damping changes the path, not
    the solution. ``problem`` is a :class:`TimelineCounts` or the Dask one.
    Returns ``(beta, converged, n_iter, state, history)``, ``state`` being
    the problem's state at the final betas.
    """
    if problem.counted_totals()[0] == 0:
        raise ValueError(
            "The step-count objective needs phases with a known step count and "
            "a positive sample_weight; under the token budget every phase's "
            "count is unknown or weighted 0. Use objective='duration'."
        )
    tol = settings.tol
    beta = initial_scale(problem, beta_init)
    state = problem.state(beta)
    # A step model's problem names its betas (the published: beta0..2).
    columns = getattr(problem, "coef_columns", None)
    history = [
        history_record(0, beta, np.nan, *problem.duration_fit(state), "start", columns)
    ]
    converged, n_iter = False, 0
    for n_iter in range(1, settings.max_iter + 1):
        proposal = problem.proposal(state)
        # Converged when the full Gauss-Newton step is negligible, not when a
        # halved one is: near the minimum the loss comparisons are rounding
        # noise and would shrink the step without the betas having settled.
        step = beta_change(
            proposal, state.beta, problem.change_basis(state), settings.stopping
        )
        shrink = settings.damping
        for _ in range(MAX_HALVINGS):
            candidate = state.beta + shrink * (proposal - state.beta)
            trial = problem.state(candidate)
            if trial.loss <= state.loss or step < tol:
                break
            shrink *= 0.5
        state = trial
        history.append(
            history_record(
                n_iter,
                state.beta,
                step,
                *problem.duration_fit(state),
                f"Gauss-Newton step x{shrink:g}",
                columns,
            )
        )
        if callback is not None:
            callback(history[-1])
        if step < tol:
            converged = True
            break
    return state.beta, converged, n_iter, state, history
