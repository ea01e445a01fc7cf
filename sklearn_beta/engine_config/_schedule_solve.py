"""The replay-and-refit iteration of the schedule-consistent fit.

:func:`solve_schedule` alternates replays of the trace (``schedule_of``: the
betas and offsets to a schedule) with robust GLS fits of the observed times
on that schedule (levels first, then differences) until the schedule stops
changing; :func:`search_snap_offsets`, :func:`fit_unbound_head` and
:func:`profile_level` are the restarts :class:`ScheduleBetaRegressor` runs
when a fit settles far above the step noise, and the fits themselves
(:func:`_robust_fit`, :func:`schedule_misfit`, :func:`schedule_covariance`)
are here too. Nothing here knows the estimator: it passes the trace's
events and the replay (docs/schedule.md, "The iteration").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..core._nnls import nnls_fit
from ..core._step_features import STEP_FEATURES
from ..trust._step_noise import (
    MAD_TO_SD,
    bisquare_covariance,
    noise_sigma,
    residual_sandwich,
)
from ._schedule_design import (
    difference_design,
    level_design,
)

#: The fit on event times (robust to a schedule still wrong in places) hands
#: over to the fit on their differences once its betas move by less than
#: this share of the step time: close enough for the replay to find the
#: trace's schedule (docs/schedule.md).
LEVELS_TOL = 1e-3
#: A fit's ``schedule_misfit`` above this (0.67 x a step-noise sigma of
#: 7.5 %, above the few percent of an engine's step noise) is on another
#: schedule than the trace's: the snapping offsets are searched
#: (``search_snap_offsets``).
MISFIT_SEARCH = 0.05
#: The search: offset levels within ``SEARCH_SPAN`` mean steps of the fit's
#: (a flipped admission moves the schedule by up to a step), on
#: ``SEARCH_POINTS`` points (a 48th of a step apart: the windows that find the
#: trace's schedule are a 24th to a 6th of a step wide, docs/schedule.md), the
#: ``SEARCH_STARTS`` best iterated.
SEARCH_SPAN = 1.0
SEARCH_POINTS = 97
SEARCH_STARTS = 3
#: Least share of the requests whose first token coincides with another's
#: last token at one gap for the trace to show the offsets' gap.
GAP_SHARE = 0.05
#: Reweightings of the robust fit, and the bisquare's tuning constant.
ROBUST_ITER = 5
TUKEY_C = 4.685
#: Common reporting offsets tried before the fit, in typical steps, at most
#: this many, this far apart (``offset_candidates``).
PROFILE_MAX_STEPS = 5.0
PROFILE_MAX = 21
PROFILE_SPACING = 2.5e-3
#: The offsets' common level, profiled after the fit (``profile_level``):
#: shifts within ``LEVEL_SPAN`` mean steps on ``LEVEL_POINTS`` points, then
#: as many within two of their spacings around the best; a shift whose loss
#: is within ``LEVEL_TOL`` of the least counts as the least.
LEVEL_SPAN = 0.25
LEVEL_POINTS = 51
LEVEL_TOL = 0.02
#: The bisquare weights' smallest scale of the standardised residuals (a
#: row's error over its modelled step-noise deviation): a 1 % step noise.
#: 2 % step noise gives a scale of about 0.019, above it.
MIN_ROBUST_SCALE = 0.01
#: Least ``1 - leverage`` of a row in the HC3 intervals of a fit on levels:
#: a row fitted by one coefficient alone (a busy period's first event, the
#: offsets' level) has leverage 1 and no residual.
MIN_LEVERAGE_GAP = 1e-3


#: Names of the published model's coefficients.
BETA_NAMES = ("beta0", "beta1", "beta2")
HISTORY_COLUMNS = [
    "fit",
    *BETA_NAMES,
    "c_scheduled",
    "c_first",
    "c_last",
    "rescheduled",
    "step",
]


def history_columns(coef_names) -> list:
    """``history_``'s columns: the fit, each coefficient, the offsets, the
    rescheduled requests and the step."""
    return ["fit", *coef_names, *HISTORY_COLUMNS[4:]]


@dataclass
class ScheduleSolution:
    """What :func:`solve_schedule` found: the coefficients ``theta`` (three
    betas, then the queue, first-token and last-token offsets), whether the
    schedule settled, the replays it took, the requests each replay
    rescheduled, one history record per fit, the rows of the last fit, their
    ``schedule_misfit`` and the mean model step time of the last replay."""

    theta: np.ndarray
    converged: bool
    n_iter: int
    changes: list
    history: list
    rows: object
    misfit: float = np.inf
    mean_step: float = 0.0
    settled_misfit: float = np.inf  # of the last fit, before a better earlier one


@dataclass
class _LoopState:
    """The replay-and-refit loop's memory between replays."""

    stage: str = "levels"
    last_step: float = np.inf
    fitted_differences: bool = False
    previous: tuple | None = None
    older: object = None
    fit_rows: object = None
    # The offsets the replays snap to: those of the first fit on
    # differences, then kept. Updated every fit, they feed back (an offset
    # too large moves the snapped steps, whose schedule fits a larger one)
    # and can run away.
    snap_offsets: np.ndarray = field(default_factory=lambda: np.zeros(3))
    # The fit on differences of least misfit so far: (misfit, theta, rows).
    best: tuple = (np.inf, None, None)


def solve_schedule(
    trace,
    theta,
    keep,
    free,
    schedule_of,
    max_iter,
    tol,
    snap_offsets=None,
    restart=False,
):
    """Replay, fit the times the schedule makes linear, repeat
    (docs/schedule.md): levels first, then differences, until the schedule
    repeats, the step falls below ``tol`` or the replays alternate between
    two schedules (both then fitted together).

    ``schedule_of(trace, theta, observed_ends, align)`` replays the trace
    (``align``: see ``_TraceEvents.align_admissions``); ``free``
    are the coefficients the trace identifies; ``snap_offsets`` (queue,
    first-token, last-token totals; zeros when None) are the offsets the
    replays snap to and the levels take as known until the first fit on
    differences. ``restart``: fits on differences only, admissions aligned
    and ``snap_offsets`` kept from the start (the search's restarts).
    Where the last fit's misfit is above ``MISFIT_SEARCH`` and an earlier
    fit's lower, that one is returned. Returns a :class:`ScheduleSolution`.
    """
    state, changes, history = _LoopState(), [], []
    if restart:
        state.stage, state.fitted_differences = "differences", True
    if snap_offsets is not None:
        state.snap_offsets = np.asarray(snap_offsets, dtype=float).copy()
    n_iter, converged = 0, False
    while n_iter < max_iter:
        n_iter += 1
        snap = np.r_[theta[:-3], state.snap_offsets]
        # arrivals are aligned once the snapping has its offsets (those of
        # the first fit on differences): offsets still missing strain the
        # snapped steps as a misplaced arrival does
        ends = trace.engine_ends(snap, keep)
        schedule = schedule_of(trace, theta, ends, state.fitted_differences)
        signature = schedule.local_signature(trace.n_requests)
        if state.previous is not None:
            moved = np.any(signature != state.previous[1], 1)
            changes.append(int(np.count_nonzero(moved)))
            if state.fitted_differences and schedule.same_as(state.previous[0]):
                converged = True  # the same schedule fits the same theta
                break
        two_back = state.older
        state.older = None if state.previous is None else state.previous[0]
        state.previous = (schedule, signature)
        new, rows, step, pooled = _fit_schedule(
            state, schedule, two_back, trace, theta, keep, free
        )
        fit = "pooled" if pooled else state.stage
        history.append((fit, *new, changes[-1] if changes else -1, step))
        state.fit_rows, theta = rows, new
        if fit != "levels":
            misfit = schedule_misfit(rows, new, free)
            if misfit < state.best[0]:
                state.best = (misfit, new, rows)
        if _settled(state, step, theta, tol, pooled):
            converged = True
            break
    rows = state.fit_rows
    misfit = settled = schedule_misfit(rows, theta, free)
    if misfit > MISFIT_SEARCH and state.best[0] < misfit:
        # a fit far above the noise is not an answer: an earlier one with
        # less misfit was on a schedule closer to the trace's
        misfit, theta, rows = state.best
    mean_step = float(np.mean(schedule.step_times(theta[:-3])))
    return ScheduleSolution(
        theta, converged, n_iter, changes, history, rows, misfit, mean_step, settled
    )


def search_snap_offsets(trace, solved, keep, free, schedule_of, max_iter, tol):
    """Restarts of the fits on differences from a grid of snapping offsets;
    the solution of least misfit (``solved`` included).

    Under a KV bound a replay snapped with offsets off by a fraction of a
    step admits requests near a step boundary on the other side, and the
    fit can settle on that other schedule (docs/schedule.md). The gap
    between the first- and last-token offsets is read off the trace
    (:func:`coincident_gap`); their level runs from its bound (offsets are
    non-negative) over ``SEARCH_SPAN`` mean steps either side of the fit's,
    ``SEARCH_POINTS`` points, from the fit's betas and from those the
    levels handed over. Each point is one replay and fit; the first at the
    noise level (``MISFIT_SEARCH``), else the ``SEARCH_STARTS`` of least
    misfit, are iterated.
    """
    grid = _search_grid(trace, solved, keep)
    best, replays, shots = solved, solved.n_iter, []
    for start, snap in grid:  # a loop over the grid's points, not requests
        shots.append(
            solve_schedule(trace, start, keep, free, schedule_of, 1, tol, snap, True)
        )
        replays += 1
        if shots[-1].misfit <= MISFIT_SEARCH:
            break  # the trace's schedule: no need to look further
    misfits = [shot.misfit for shot in shots]
    for k in np.argsort(misfits, kind="stable")[:SEARCH_STARTS]:
        start, snap = grid[k]
        iterated = solve_schedule(
            trace, start, keep, free, schedule_of, max_iter, tol, snap, True
        )
        replays += iterated.n_iter
        # a fit at the noise level is an answer; of two, the converged one
        for candidate in (iterated, shots[k]):
            if rank_solution(candidate) < rank_solution(best):
                best = candidate
        if best.misfit <= MISFIT_SEARCH:
            break
    return replace(best, n_iter=replays)


def fit_unbound_head(trace, starts, keep, free, schedule_of, max_iter, tol):
    """The fit on differences of the rows ``keep`` (the requests done before
    the queue forms) replayed by ``schedule_of`` (no KV bound): from each
    of the betas ``starts`` and each common offset of
    ``offset_candidates`` (the gap between the first- and last-token
    offsets read off the trace, :func:`coincident_gap`), one replay and
    fit; the ``SEARCH_STARTS`` of least misfit iterated, the best kept.
    Returns ``(theta, replays, misfit)``.

    Snapped at offsets off by a few steps the head settles on another
    schedule whatever the betas: its profiled full fit kept none of 16
    candidate offsets (levels fits ran off to offsets of seconds) and
    settled at misfit 0.05-0.15 on two of six traces, where one shot per
    pair (64, 0.7 s on 2000 requests) put the right one first
    (docs/schedule.md).
    """
    rows = keep.reshape(trace.n_requests, trace.n_kinds)[:, 0]
    head = {
        k: v[rows] if isinstance(v, np.ndarray) else v
        for k, v in trace.requests.items()
    }
    gap = coincident_gap(trace, keep, typical_step(head)) or 0.0
    grid = [
        (np.r_[beta, 0.0, c + max(gap, 0.0), c + max(-gap, 0.0)])
        for beta in starts
        for c in offset_candidates(head)
    ]
    shots = [
        solve_schedule(trace, theta, keep, free, schedule_of, 1, tol, theta[-3:], True)
        for theta in grid  # a loop over the grid's points, not requests
    ]
    best, replays = None, len(shots)
    misfits = [shot.misfit for shot in shots]
    for k in np.argsort(misfits, kind="stable")[:SEARCH_STARTS]:
        theta = grid[k]
        iterated = solve_schedule(
            trace, theta, keep, free, schedule_of, max_iter, tol, theta[-3:], True
        )
        replays += iterated.n_iter
        if best is None or rank_solution(iterated) < rank_solution(best):
            best = iterated
    return best.theta, replays, best.misfit


def profile_level(trace, keep, theta, direction, schedule_of, step) -> tuple:
    """The shift of the offsets' common level (along ``direction``) that
    the admissions show, and whether they show none (``flat``).

    Each shift is one replay snapped with the shifted offsets at the fit's
    betas and its rows' loss (:func:`level_loss`): a level off by ``d``
    admits the requests arriving within ``d`` of a step boundary at the
    other one, whose rows then miss by a step. Shifts on a grid of
    ``LEVEL_SPAN`` mean steps ``step`` either side (offsets stay
    non-negative), then a finer one around the best; the shifts within
    ``LEVEL_TOL`` of the least loss next to the best form its plateau. No
    shift where the fit's level is on it (the first events of the busy
    periods place it there), else the plateau's middle.
    """
    lowest = -float(np.min(theta[-3:][direction > 0], initial=np.inf))
    span = LEVEL_SPAN * step
    coarse = np.linspace(-span, span, LEVEL_POINTS)
    coarse = np.r_[lowest, coarse[coarse > lowest]]

    def losses(shifts):  # a loop over candidate shifts, not requests
        return np.array(
            [
                level_loss(trace, keep, _shifted(theta, d, direction), schedule_of)
                for d in shifts
            ]
        )

    loss = losses(coarse)
    least = float(np.min(loss))
    flat = bool(np.all(loss <= least * (1 + LEVEL_TOL) + 1e-12))
    zero = float(loss[np.argmin(np.abs(coarse))])
    if flat or zero <= least * (1 + LEVEL_TOL) + 1e-12:
        return 0.0, flat
    spacing = 2 * span / (LEVEL_POINTS - 1)
    best = coarse[int(np.argmin(loss))]
    fine = np.linspace(best - 2 * spacing, best + 2 * spacing, LEVEL_POINTS)
    fine = fine[fine >= lowest]
    fine_loss = losses(fine)
    k = int(np.argmin(fine_loss))
    low = fine_loss <= float(fine_loss[k]) * (1 + LEVEL_TOL) + 1e-12
    lo, hi = k, k
    while lo > 0 and low[lo - 1]:
        lo -= 1
    while hi < fine.shape[0] - 1 and low[hi + 1]:
        hi += 1
    return 0.5 * float(fine[lo] + fine[hi]), False


def _shifted(theta, shift, direction) -> np.ndarray:
    moved = theta.copy()
    moved[-3:] += shift * direction
    return moved


def level_loss(trace, keep, theta, schedule_of) -> float:
    """The truncated squares of the standardised residuals of a replay
    snapped with ``theta``'s offsets, at its betas and offsets: a row missing
    by more than ``TUKEY_C`` robust deviations (a request scheduled at
    another step) counts that much, whatever it misses by."""
    schedule = schedule_of(trace, theta, trace.engine_ends(theta, keep), True)
    anchors = trace.anchor_times(schedule)
    rows = difference_design(schedule, trace.event_times, anchors, theta[:-3], keep)
    z = (rows.target - rows.design @ theta) * np.sqrt(rows.weight)
    scale = robust_scale(z)
    return float(np.sum(np.minimum(z * z, (TUKEY_C * scale) ** 2))) / scale**2


def level_error(solution) -> float:
    """The standard error of the offsets' common level a fit on differences
    reads off its busy periods' first events (the only rows that show it):
    the step noise's scale (``schedule_misfit`` over the normal's median
    absolute deviation) over the root of their summed prior weights; inf
    without such rows."""
    rows = solution.rows
    weight = float(np.sum(_prior(rows)[_anchors(rows)]))
    if not weight > 0 or not np.isfinite(solution.misfit):
        return np.inf
    return MAD_TO_SD * solution.misfit / np.sqrt(weight)


def anchor_rows(rows) -> int:
    """How many rows of a fit on differences measure an event from its busy
    period's start (the only rows that show the offsets' level)."""
    return int(np.count_nonzero(_anchors(rows)))


def _anchors(rows) -> np.ndarray:
    # an anchor row's offset columns sum to one; a difference's cancel
    return rows.design[:, -3:].sum(axis=1) != 0


def _search_grid(trace, solved, keep) -> list:
    """The search's (start theta, snapping offsets) pairs, in order."""
    theta = solved.theta
    gap = coincident_gap(trace, keep, solved.mean_step)
    if gap is None:
        gap = theta[-2] - theta[-1]
    span = SEARCH_SPAN * solved.mean_step
    level = theta[-2] + np.linspace(-span, span, SEARCH_POINTS)
    lowest = max(0.0, gap)  # the fit's offsets are >= 0
    # the bound itself, too: a trace without reporting delays has it
    level = np.r_[lowest, level[level > lowest]]
    starts = [theta]
    levels = [record for record in solved.history if record[0] == "levels"]
    if levels:  # the hand-over to the differences, too
        starts.append(np.r_[levels[-1][1 : theta.shape[0] - 2], theta[-3:]])
    return [(start, np.r_[theta[-3], c, c - gap]) for start in starts for c in level]


def rank_solution(solution) -> tuple:
    """Order of the search's candidates: at the noise level first, then
    converged, then by misfit."""
    return (solution.misfit > MISFIT_SEARCH, not solution.converged, solution.misfit)


def coincident_gap(trace, keep, mean_step):
    """The first-token offset minus the last-token offset, read off the
    trace; None when it does not show it.

    A step that gives one request its first token and another its last
    shows both at one engine time: their observed times differ by the gap
    between the two offsets exactly, whatever the betas or the noise. The
    most frequent difference between a first token and its nearest last
    tokens (to a millionth of a step) is that gap when it recurs for at
    least ``GAP_SHARE`` of the requests.
    """
    times = trace.event_times.reshape(trace.n_requests, trace.n_kinds)[:, -2:]
    if keep is not None:
        times = times[keep.reshape(trace.n_requests, trace.n_kinds)[:, 0]]
    first, last = times[:, 0], np.sort(times[:, 1])
    if last.shape[0] < 2 or mean_step <= 0:
        return None
    j = np.clip(np.searchsorted(last, first), 1, last.shape[0] - 1)
    diff = np.concatenate((first - last[j - 1], first - last[j]))
    quantum = 1e-6 * mean_step
    values, counts = np.unique(np.rint(diff / quantum), return_counts=True)
    k = int(np.argmax(counts))
    if counts[k] < GAP_SHARE * first.shape[0]:
        return None
    return float(np.median(diff[np.rint(diff / quantum) == values[k]]))


def _fit_schedule(state, schedule, two_back, trace, theta, keep, free):
    """One fit on a replay's schedule: ``(theta, rows, step, pooled)``."""
    anchors = trace.anchor_times(schedule)
    new = np.zeros_like(theta)
    if state.stage == "levels":
        rows = level_design(schedule, trace.event_times, anchors, keep)
        # betas only: offsets fitted on levels are weakly identified and, fed
        # back into the snapping, push the schedule off. The snapping's
        # offsets are taken as known instead: left in the targets, a
        # reporting delay of a few steps reads as step time.
        known = rows.design[:, -3:] @ state.snap_offsets
        new[:-3] = nnls_fit(rows.design[:, :-3], rows.target - known, rows.weight)
        new[-3:] = state.snap_offsets
    else:
        rows = difference_design(schedule, trace.event_times, anchors, theta[:-3], keep)
        new[free], rows = _robust_fit(rows, free)
    pooled = state.fitted_differences and schedule.same_as(two_back)
    if pooled:
        # the replays alternate between two schedules (each one's fit
        # replays into the other): both are schedules of the trace within
        # the noise; fit their rows together and stop.
        rows = stack_rows(state.fit_rows, rows)
        new = np.zeros_like(theta)
        new[free], rows = _robust_fit(rows, free)
    step = _relative_step(theta[:-3], new[:-3], schedule)
    new[:-3] = usable_beta(new[:-3], schedule)
    return new, rows, step, pooled


def _settled(state: _LoopState, step: float, theta, tol: float, pooled: bool) -> bool:
    """Move the loop on after a fit; True when it has converged."""
    if state.stage == "levels":
        # close enough, or no closer: the noise of the levels (a random
        # walk) limits them, the differences take over
        if step < LEVELS_TOL or step >= state.last_step:
            state.stage, state.last_step = "differences", np.inf
        else:
            state.last_step = step
        return False
    if step < tol or pooled:
        return True
    if not state.fitted_differences:
        state.snap_offsets = theta[-3:].copy()
    state.fitted_differences = True
    state.last_step = step
    return False


def typical_step(requests) -> float:
    """The median time per decode step of the requests' decode phases."""
    steps = requests["decode_steps"]
    span = requests["decode_end"] - requests["prefill_end"]
    decoding = steps > 0
    if not np.any(decoding):
        return 0.0
    return float(np.median(span[decoding] / steps[decoding]))


def offset_candidates(requests, event="prefill_end") -> np.ndarray:
    """Reporting offsets to profile: a quarter of a typical step apart (the
    basin of the trace's schedule is about that wide: measured +-5 ms
    around a 30 ms delay on 19 ms steps), from zero to the shortest time
    from a send to the ``event`` ("prefill_end": the first token;
    "decode_end": the last; the offset is part of every one) or
    ``PROFILE_MAX_STEPS`` typical steps, at most ``PROFILE_MAX`` of them."""
    step = typical_step(requests)
    ttft = requests[event] - requests["arrival"]
    upper = min(PROFILE_MAX_STEPS * step, float(np.min(ttft, initial=np.inf)))
    if not step > 0 or not upper > 0:
        return np.zeros(1)
    spacing = min(0.25 * step, PROFILE_SPACING)
    n = min(int(upper / spacing) + 1, PROFILE_MAX)
    return np.linspace(0.0, (n - 1) * max(spacing, upper / (PROFILE_MAX - 1)), n)


def schedule_misfit(rows, theta, free) -> float:
    """Median absolute residual of ``rows`` at ``theta``, each over its
    modelled standard deviation (the prior weights): near the step noise on
    the trace's own schedule, far above it on another one."""
    residual = rows.target - rows.design[:, free] @ theta[free]
    return float(np.median(np.abs(residual) * np.sqrt(_prior(rows))))


def schedule_covariance(rows, theta, free) -> np.ndarray:
    """Covariance of ``theta`` from the last fit's rows (zero outside the
    free coefficients the fit left positive).

    Rows of differences have a noise model (``rows.variance``): the
    bisquare fit's covariance at that noise, its scale from the residuals
    (:func:`~sklearn_beta.trust._step_noise.bisquare_covariance`). The HC3
    residual sandwich it replaced leant on the few rows of the ramps, which
    tell ``beta0`` from ``beta2 * max_num_seqs`` apart, and covered 75-78 %
    at 95 % over 40 saturated traces (this: docs/schedule.md,
    "Intervals"). Rows of levels (a fit stopped before the differences)
    have no noise model: HC3.
    """
    design = rows.design[:, free]
    residual = rows.target - design @ theta[free]
    active = theta[free] > 0
    design = design[:, active]
    if rows.variance is None:
        part = residual_sandwich(design, rows.weight, residual, MIN_LEVERAGE_GAP)
    else:
        prior = _prior(rows)
        used = rows.weight > 0  # rows the bisquare set aside carry nothing
        sigma = noise_sigma(residual, rows.variance)
        cutoff = TUKEY_C * robust_scale(residual * np.sqrt(prior))
        part = bisquare_covariance(
            design[used], prior[used], rows.variance[used], sigma, cutoff
        )
        # a pooled fit counts every event once per stacked fit
        part = rows.copies * part
    index = np.flatnonzero(free)[active]
    cov = np.zeros((theta.shape[0], theta.shape[0]))
    cov[np.ix_(index, index)] = part
    return cov


def stack_rows(first, second):
    """Two fits' rows as one least-squares problem (weights as they were
    before the robust reweighting of each)."""
    variances = [r.variance for r in (first, second)]
    return type(first)(
        design=np.vstack((first.design, second.design)),
        target=np.concatenate((first.target, second.target)),
        weight=np.concatenate([_prior(r) for r in (first, second)]),
        variance=None
        if any(v is None for v in variances)
        else np.concatenate(variances),
        copies=first.copies + second.copies,
    )


def _prior(rows) -> np.ndarray:
    return rows.weight if rows.prior_weight is None else rows.prior_weight


def _robust_fit(rows, free, split=False):
    """NNLS with Tukey's bisquare weights on the standardised residuals.

    A request the replay schedules otherwise than the trace did gives its
    difference rows an error of whole steps, which least squares would
    spread over the betas; bisquare weights (``c = 4.685`` robust standard
    deviations, 95 % efficient under Gaussian noise) set such rows aside.
    ``split``: the offsets' parts held >= 0 too (:func:`_split_nnls`).
    Returns the coefficients and the rows with their final weights.
    """
    design = rows.design[:, free]
    root_w = np.sqrt(rows.weight)
    queue = split and bool(free[-3])
    theta = _split_nnls(design, rows.target, rows.weight, queue)
    weight = rows.weight
    for _ in range(ROBUST_ITER):
        z = (rows.target - design @ theta) * root_w
        # At least MIN_ROBUST_SCALE: where most rows fit exactly (a trace
        # without step noise) the median is rounding, and every row of a
        # kind whose reporting jitter no step explains (the first tokens of
        # a client's sends) would go, its offset with it: measured on a
        # noise-free light client trace with 0-0.5 ms of send jitter, the
        # first-token offset came out 0 for 3.25 ms.
        u = z / (TUKEY_C * robust_scale(z))
        weight = rows.weight * np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
        theta = _split_nnls(design, rows.target, weight, queue)
    return theta, replace(rows, weight=weight, prior_weight=rows.weight)


def robust_scale(z) -> float:
    """The bisquare's scale of standardised residuals ``z``: their median
    absolute deviation (normal-consistent), at least ``MIN_ROBUST_SCALE``."""
    return max(MAD_TO_SD * float(np.median(np.abs(z))), MIN_ROBUST_SCALE)


def held_split(solved, free):
    """``solved`` with its offsets' parts held >= 0: where its last fit put
    a reporting delay below the queue delay (scheduled times), that fit
    again with the parts bound (:func:`_split_nnls`), on its rows."""
    theta = solved.theta
    if not (free[-3] and solved.history) or solved.history[-1][0] == "levels":
        return solved
    if theta[-2] >= theta[-3] and theta[-1] >= theta[-3]:
        return solved
    rows = replace(solved.rows, weight=_prior(solved.rows))
    new = np.zeros_like(theta)
    new[free], rows = _robust_fit(rows, free, split=True)
    return replace(
        solved, theta=new, rows=rows, misfit=schedule_misfit(rows, new, free)
    )


def _split_nnls(design, target, weight, queue: bool) -> np.ndarray:
    """NNLS of the free columns, the offsets' parts non-negative too.

    The last three columns are the offset totals ``c_s, c_f, c_l`` when the
    queue delay is fitted (``queue``: scheduled times), else the last two
    are ``c_f, c_l``. NNLS keeps the totals >= 0; the parts
    ``alpha_["first_token"] = c_f - c_s`` and ``alpha_["last_token"] =
    c_l - c_s`` are delays too, and an engine-side trace's noise put them
    below zero (measured: -0.016 and -0.014 ms of 11 ms steps, where
    ``what_if_latencies`` then refused the fit). Where the plain fit keeps
    ``c_f, c_l >= c_s`` it stands (bit for bit); else the fit in the parts,
    ``theta = T @ phi`` with ``phi >= 0`` (``c_f = alpha0 + off_f``).
    """
    theta = nnls_fit(design, target, weight)
    if not queue or (theta[-2] >= theta[-3] and theta[-1] >= theta[-3]):
        return theta
    # only the reported fit: held so within the iteration, the snapping
    # offsets of the engine-side regimes trace's KV scan led its trials
    # away (misfits of 12, where 0.108 found the size)
    parts = np.eye(design.shape[1])
    parts[-2:, -3] = 1.0  # c_f and c_l each hold the queue delay
    return parts @ nnls_fit(design @ parts, target, weight)


def usable_beta(beta: np.ndarray, schedule) -> np.ndarray:
    """``beta`` with a positive step time for every step the replay may run.

    A fit may put ``beta0`` at zero with ``beta1`` or ``beta2`` too; the
    engine refuses zero-length steps, so ``beta0`` gets a millionth of the
    mean step time instead (far below what a trace resolves). Other step
    models keep their coefficients: their replays make the engine's betas
    usable (:func:`usable_engine_beta`).
    """
    beta = np.asarray(beta, dtype=float).copy()
    if schedule is not None and schedule.scale is not None:
        return beta
    if beta[0] > 0 or (beta[1] > 0 and beta[2] > 0):
        return beta
    mean_step = (
        float(np.mean(schedule.step_times(beta))) if schedule is not None else 0.0
    )
    beta[0] = 1e-6 * mean_step if mean_step > 0 else 1e-9
    return beta


def usable_engine_beta(full: np.ndarray) -> np.ndarray:
    """The six engine betas (``STEP_FEATURES``) with a positive time for every
    step: a per-step time far below what a trace resolves where the fit
    left none, as :func:`usable_beta` does for the published three."""
    b = dict(zip(STEP_FEATURES, full, strict=True))
    prefill = b["prefill_tokens"] > 0 or b["prefill_attention"] > 0
    decode = b["decode_tokens"] > 0 or b["decode_context"] > 0
    if b["steps"] > 0 or b["batch_size"] > 0 or (prefill and decode):
        return full
    full = full.copy()
    full[0] = 1e-9
    return full


def _relative_step(old, new, schedule) -> float:
    """Largest change of a coefficient's share of the mean step time."""
    mean_f = schedule.mean_design()
    scale = float(mean_f @ np.maximum(new, old))
    if scale <= 0:
        return np.inf
    return float(np.max(np.abs(new - old) * mean_f) / scale)
