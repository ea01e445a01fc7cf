"""The schedule-consistent design: observed times as linear functions of the
betas and offsets, given the schedule of one engine replay (docs/schedule.md).

Everything here takes arrays. :func:`schedule_events` reads a replay's step
table (``run_engine(..., record_steps=True)``) and places every observed event
of every request (scheduled, first token, last token) on it: the busy period
it falls in, the request whose arrival started that period (the anchor), and
the number of the period's steps completed before the event.
:func:`difference_design` turns the events into the GLS rows of a random
walk: differences of consecutive events of a period (the first against the
anchor's arrival), each row weighted by the inverse variance of the steps
between its two events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from ..core._step_features import PUBLISHED_FEATURES, full_step_beta

#: Event kinds, in the order of the offset columns of the design.
EVENT_KINDS = ("scheduled", "first_token", "last_token")
#: A period's anchor (its first arrival) sorts before the events at its start.
ANCHOR = -1
#: Variance floor of a difference row, as a fraction of the mean squared step
#: time: two events of the same step differ by the reporting offsets alone,
#: which a random walk of the steps gives no variance.
VARIANCE_FLOOR = 1.0


@dataclass(frozen=True)
class StepBasis:
    """A step model as the schedule fit reads it: the per-step features the
    replay records (names of ``STEP_FEATURES``) and the map from their sums
    to the design columns, one per coefficient (None: the coefficients are
    the features', as in the published model; trained-physics: BLIS's
    identifiable map ``K``, so that the design is ``sums @ K.T``)."""

    features: tuple = PUBLISHED_FEATURES
    basis: np.ndarray | None = None

    @property
    def published(self) -> bool:
        return self.basis is None and tuple(self.features) == PUBLISHED_FEATURES

    @property
    def n_coef(self) -> int:
        return len(self.features) if self.basis is None else self.basis.shape[0]

    def engine_beta(self, coef) -> np.ndarray:
        """The engine loop's betas: the published three as they are, else the
        six of ``STEP_FEATURES``."""
        coef = np.asarray(coef, dtype=np.float64)
        if self.published:
            return coef
        per_feature = coef if self.basis is None else self.basis.T @ coef
        return full_step_beta(self.features, per_feature)

    def step_columns(self, run) -> tuple[np.ndarray, np.ndarray | None]:
        """The recorded steps' features as exact integers (the prefill
        attention doubled: ``sum t (2 s + t)`` is an integer) and the factor
        of each column to its unit (None: all 1)."""
        if self.published:
            return step_features(run.step_prefill_tokens, run.step_decode_tokens), None
        recorded = {
            "steps": np.ones(run.step_start.shape[0]),
            "prefill_tokens": run.step_prefill_tokens,
            "prefill_attention": 2.0 * run.step_prefill_attention,
            "decode_tokens": run.step_decode_tokens,
            "decode_context": run.step_decode_context,
            "batch_size": run.step_batch_size,
        }
        columns = np.column_stack(
            [np.rint(recorded[f]).astype(np.int64) for f in self.features]
        )
        scale = np.array(
            [0.5 if f == "prefill_attention" else 1.0 for f in self.features]
        )
        return columns, scale


def embed_beta(basis: StepBasis, beta3) -> np.ndarray:
    """Coefficients of ``basis`` whose steps come closest (non-negative least
    squares over the six engine coefficients, each row relative to the
    published one) to the published ``beta3``: the start when the step
    model's own phase-exposure fit cannot run."""
    beta3 = np.asarray(beta3, dtype=np.float64)
    if basis.published:
        return beta3
    full = full_step_beta(PUBLISHED_FEATURES, beta3)
    columns = np.column_stack([basis.engine_beta(u) for u in np.eye(basis.n_coef)])
    scale = np.where(full > 0, full, 1.0)
    coef, _ = nnls(columns / scale[:, None], full / scale)
    return coef


@dataclass(frozen=True)
class Schedule:
    """One replay's schedule: the step features and every event placed on it.

    ``features`` are the steps' features (``(1, T_pf, T_dec)`` for the
    published model) as integers, ``scale`` their factors to their units and
    ``basis`` the map to the design columns (see :class:`StepBasis`; None:
    identity); ``cumulative`` their
    prefix sums (row ``n`` sums steps ``0 .. n-1``, all instances in one
    sequence, so that a difference within a period is exact in integers).
    Events are numbered request-major: ``kind`` codes index
    :data:`EVENT_KINDS`; ``position`` is the number of steps (global) before
    the event's time; ``period`` its busy period; ``anchor`` per period the
    request whose arrival started it.
    """

    features: np.ndarray  # (n_steps, 3) int64
    cumulative: np.ndarray  # (n_steps + 1, 3) int64
    period_first: np.ndarray  # (n_periods,) first step of each period
    anchor: np.ndarray  # (n_periods,) request starting each period
    request: np.ndarray  # (n_events,) request of each event
    kind: np.ndarray  # (n_events,)
    position: np.ndarray  # (n_events,)
    period: np.ndarray  # (n_events,)
    scale: np.ndarray | None = None
    basis: np.ndarray | None = None

    def design_of(self, sums: np.ndarray) -> np.ndarray:
        """Design columns of feature sums (float rows of ``features``)."""
        if self.scale is not None:
            sums = sums * self.scale
        return sums if self.basis is None else sums @ self.basis.T

    def step_times(self, coef) -> np.ndarray:
        """Every step's model time under the coefficients ``coef``."""
        if self.scale is None and self.basis is None:
            return self.features @ coef
        return self.design_of(self.features.astype(np.float64)) @ coef

    def mean_design(self) -> np.ndarray:
        """The mean step's design columns."""
        return self.design_of(self.features.mean(axis=0))

    def same_as(self, other: Schedule | None) -> bool:
        """Whether ``other`` is the same schedule (same steps, same events)."""
        return (
            other is not None
            and np.array_equal(self.features, other.features)
            and np.array_equal(self.position, other.position)
            and np.array_equal(self.period_first, other.period_first)
            and np.array_equal(self.anchor, other.anchor)
        )

    def local_signature(self, n_requests: int) -> np.ndarray:
        """Per request, its own share of the schedule: the tokens of the step
        giving its first token, and those from there to its last token.
        Counting requests whose signature changed measures how much of the
        schedule a replay changed without the shift every earlier change
        gives the cumulative sums."""
        position = self.position.reshape(n_requests, -1)
        first, last = position[:, -2], position[:, -1]
        return np.hstack(
            (self.features[first - 1], self.cumulative[last] - self.cumulative[first])
        )


def step_features(prefill_tokens, decode_tokens) -> np.ndarray:
    """``(1, T_pf, T_dec)`` per step, as exact integers."""
    ones = np.ones(prefill_tokens.shape[0], dtype=np.int64)
    return np.column_stack(
        (ones, prefill_tokens.astype(np.int64), decode_tokens.astype(np.int64))
    )


def busy_periods(step_instance, step_start, step_end) -> np.ndarray:
    """First step of each busy period: a step that does not start where the
    previous step of its instance ended starts a period (the engine idled,
    then took the next arrival)."""
    new = np.ones(step_start.shape[0], dtype=bool)
    new[1:] = (step_instance[1:] != step_instance[:-1]) | (
        step_start[1:] != step_end[:-1]
    )
    return np.flatnonzero(new)


def locate(step_instance, step_times, instance, times) -> np.ndarray:
    """Global index of the step of ``instance`` whose time equals ``times``.

    The replay's request times are step boundaries of the same cumulative
    sum, so the match is exact; a time that is not one is a bug upstream.
    """
    n_inst = int(max(step_instance.max(initial=-1), instance.max(initial=-1))) + 1
    bounds = np.searchsorted(step_instance, np.arange(n_inst + 1))
    index = np.empty(times.shape[0], dtype=np.int64)
    order = np.argsort(instance, kind="stable")
    cuts = np.searchsorted(instance[order], np.arange(n_inst + 1))
    for k in range(n_inst):  # a loop over engine instances, not requests
        rows = order[cuts[k] : cuts[k + 1]]
        lo, hi = bounds[k], bounds[k + 1]
        index[rows] = lo + np.searchsorted(step_times[lo:hi], times[rows])
    found = np.zeros(times.shape[0], dtype=bool)
    ok = index < step_times.shape[0]
    found[ok] = step_times[index[ok]] == times[ok]
    if not found.all():
        raise RuntimeError(
            f"{int(np.count_nonzero(~found))} replayed time(s) are not step "
            "boundaries of the replay; first: "
            f"{times[~found][:3].tolist()}."
        )
    return index


def schedule_events(
    run, arrival, instance, *, scheduled: bool, basis: StepBasis | None = None
) -> Schedule:
    """Place every request's observed events on the replay ``run``.

    ``arrival`` are the replay's arrivals (engine clock), ``instance`` the
    requests' instance codes. Events per request: first token (end of the
    step serving its last prompt token) and last token (end of its last
    step), plus, with ``scheduled``, the start of its first prefill step.
    ``basis``: the step model (None: the published one; another needs the
    run's recorded features).
    """
    basis = StepBasis() if basis is None else basis
    features, scale = basis.step_columns(run)
    cumulative = np.zeros((features.shape[0] + 1, features.shape[1]), dtype=np.int64)
    np.cumsum(features, axis=0, out=cumulative[1:])
    first = busy_periods(run.step_instance, run.step_start, run.step_end)
    step_period = np.zeros(features.shape[0], dtype=np.int64)
    step_period[first[1:]] = 1
    np.cumsum(step_period, out=step_period)

    inst = run.step_instance
    ends = [locate(inst, run.step_end, instance, run.prefill_end) + 1]
    ends.append(locate(inst, run.step_end, instance, run.decode_end) + 1)
    kinds = [1, 2]
    if scheduled:
        ends.insert(0, locate(inst, run.step_start, instance, run.prefill_start))
        kinds.insert(0, 0)
    position = np.column_stack(ends)
    # An event at a position n is in the period of step n - 1 (it ends that
    # step), except a scheduled time, which starts step n.
    owner = position - 1
    if scheduled:
        owner[:, 0] += 1
    period = step_period[owner]

    # Each period starts at an arrival: the first request of its instance
    # arriving exactly then (the engine took it when idle).
    start_time = run.step_start[first]
    start_inst = inst[first]
    order = np.lexsort((arrival, instance))
    anchor_pos = np.searchsorted(
        _instance_keys(instance[order], arrival[order]),
        _instance_keys(start_inst, start_time),
    )
    anchor = order[np.minimum(anchor_pos, order.shape[0] - 1)]
    if not np.array_equal(arrival[anchor], start_time):
        raise RuntimeError("A busy period of the replay starts at no arrival.")

    n_req = position.shape[0]
    return Schedule(
        features=features,
        cumulative=cumulative,
        period_first=first,
        anchor=anchor,
        request=np.repeat(np.arange(n_req), len(kinds)),
        kind=np.tile(np.asarray(kinds, dtype=np.int64), n_req),
        position=position.ravel(),
        period=period.ravel(),
        scale=scale,
        basis=basis.basis,
    )


def _instance_keys(instance, times) -> np.ndarray:
    """Sortable records ``(instance, time)``, for one searchsorted over all
    instances at once."""
    keys = np.empty(times.shape[0], dtype=[("i", np.int64), ("t", np.float64)])
    keys["i"] = instance
    keys["t"] = times
    return keys


@dataclass(frozen=True)
class DifferenceDesign:
    """The GLS rows: ``target ~ design @ theta`` with weights ``weight``,
    ``theta = (beta0, beta1, beta2, c_scheduled, c_first, c_last)`` (one
    beta per coefficient of the step model, then the three offsets)."""

    design: np.ndarray  # (n_rows, n_coef + 3)
    target: np.ndarray  # (n_rows,)
    weight: np.ndarray  # (n_rows,)
    prior_weight: np.ndarray | None = None  # before a robust reweighting
    #: Each row's step-noise variance over the squared relative noise (the
    #: squared model step times between its events, no floor); None for
    #: rows that are not differences (levels). The intervals read it.
    variance: np.ndarray | None = None
    #: How many fits' rows of one trace these are (a pooled fit stacks two):
    #: each event is counted that many times.
    copies: int = 1


def difference_design(
    schedule: Schedule,
    observed: np.ndarray,
    anchor_time: np.ndarray,
    beta: np.ndarray,
    keep: np.ndarray | None = None,
) -> DifferenceDesign:
    """Differences of consecutive events within each busy period.

    ``observed`` holds every event's observed time (event order of
    ``schedule``), ``anchor_time`` the observed arrival of each period's
    anchor, ``keep`` which events enter the fit (None: all). Events are
    sorted by period, position and kind; the anchor of a period comes first,
    so its first event is measured from the arrival. A row's variance is the
    sum of the squared model step times between its two events (the step
    noise is proportional to the step time), plus a floor.
    """
    n_periods = schedule.period_first.shape[0]
    period = schedule.period
    position = schedule.position
    kind = schedule.kind
    times = observed
    if keep is not None:
        period, position, kind, times = (
            a[keep] for a in (period, position, kind, times)
        )
    period = np.concatenate((np.arange(n_periods), period))
    position = np.concatenate((schedule.period_first, position))
    kind = np.concatenate((np.full(n_periods, ANCHOR), kind))
    times = np.concatenate((anchor_time, times))
    order = np.lexsort((kind, position, period))
    period, position, kind, times = (a[order] for a in (period, position, kind, times))

    same = period[1:] == period[:-1]
    lo, hi = position[:-1][same], position[1:][same]
    k_lo, k_hi = kind[:-1][same], kind[1:][same]
    cum = schedule.cumulative
    tokens = schedule.design_of((cum[hi] - cum[lo]).astype(np.float64))
    offsets = np.zeros((tokens.shape[0], len(EVENT_KINDS)))
    rows = np.arange(tokens.shape[0])
    offsets[rows, k_hi] += 1.0
    has_lo = k_lo != ANCHOR
    offsets[rows[has_lo], k_lo[has_lo]] -= 1.0
    design = np.hstack((tokens, offsets))
    target = (times[1:] - times[:-1])[same]

    dt = schedule.step_times(beta)
    squares = np.zeros(dt.shape[0] + 1)
    np.cumsum(dt * dt, out=squares[1:])
    variance = squares[hi] - squares[lo]
    floor = VARIANCE_FLOOR * float(np.mean(dt * dt)) if dt.shape[0] else 1.0
    # Two events of one kind at one position differ by nothing the model has.
    informative = np.any(design != 0, axis=1)
    return DifferenceDesign(
        design=design[informative],
        target=target[informative],
        weight=1.0 / (variance[informative] + floor),
        variance=variance[informative],
    )


def level_design(
    schedule: Schedule,
    observed: np.ndarray,
    anchor_time: np.ndarray,
    keep: np.ndarray | None = None,
) -> DifferenceDesign:
    """Every event's time since its period's start (unweighted rows).

    A schedule wrong by a step here and there (betas still far off) barely
    changes the token sums from the period start to an event, whereas it
    changes the differences between neighbouring events completely: these
    rows bring the betas close enough for the replay to find the trace's
    schedule, the differences then fit it exactly (docs/schedule.md).
    """
    start = schedule.period_first[schedule.period]
    tokens = schedule.design_of(
        (schedule.cumulative[schedule.position] - schedule.cumulative[start]).astype(
            np.float64
        )
    )
    offsets = np.eye(len(EVENT_KINDS))[schedule.kind]
    design = np.hstack((tokens, offsets))
    target = observed - anchor_time[schedule.period]
    if keep is not None:
        design, target = design[keep], target[keep]
    return DifferenceDesign(
        design=design, target=target, weight=np.ones(target.shape[0])
    )
