"""Edges of a window: phases whose concurrency the trace may not show in full.

A trace exported from a busy engine is a window ``[t0, t1]`` of continuous
serving. Requests that ran beside the window's first and last phases are
missing from it (they arrived before ``t0``, or ended after ``t1``), so near
each edge the trace's pressures are lower than the load the engine ran. A
phase there is fitted against too little load: its steps look cheaper than
they were, and under load a few hundred such phases move the betas by tens of
percents (docs/windows.md).

Where can the trace be incomplete? Per instance, with ``A``/``Z`` its first
and last time, ``a`` the first time a request ends and ``z`` the last time
one starts, and ``L`` the longest a request lasts:

* at the start, requests in flight at ``A`` finish within ``L`` (a window cut
  by arrival), and requests that ended before the window's start ran only
  before ``a`` (cut by completion): ``[A, max(a, A + L))``;
* at the end, symmetrically, ``(min(z, Z - L), Z]``.

A phase touching such an edge zone is kept as *context*: it counts in the
pressures of its neighbours but not in the objective. Whether an edge really
was incomplete is then read off the fit: at the betas fitted on the interior,
the phases of an incomplete edge hold many more steps than their ``N_i``
(the visible load makes steps look short), while a complete edge (an engine
that really started idle, or drained) fits like the interior. Edges that fit
like the interior go back into the objective. A complete trace is thus
fitted on all its phases, as before.

Every function here works on arrays of one trace (phases, instance codes);
no loop over phases, requests or segments. The fit of a window in memory is
:mod:`sklearn_beta.trust._window_fit`; the Dask fit asks the same questions of
partitions of whole instances (:mod:`sklearn_beta.distributed._edges`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core._warnings import warn
from ..exceptions import UncertaintyWarning

#: An edge whose phases' step counts at the interior's betas are off by more
#: than this relative bias (summed over the edge) is always called incomplete.
#: Without step noise a complete edge fits to rounding; a missing request
#: among ~100 running changes a step by about a percent.
EDGE_BIAS_FLOOR = 1e-3
#: ... and so is an edge off by more than this many root-mean-square biases
#: of interior blocks of the same length (the step noise's own level).
EDGE_BIAS_SPREAD = 4.0
#: Relative stopping threshold of the interior fit that only tests the edges
#: (biases are compared at EDGE_BIAS_FLOOR and above); the final fit runs to
#: the estimator's own ``tol`` from there.
EDGE_TEST_TOL = 1e-4
#: The edges are tested only when the phases clear of them hold at least this
#: share of the objective's steps. Below it the interior's own fit is too
#: loose to judge the edges by: on complete heavy simulated traces whose one
#: longest request spans half the trace, 0.3 % to 3 % of the steps were
#: interior and a complete edge looked incomplete (beta0 fitted at 0), while
#: the windows of docs/windows.md keep 24 % to 65 % interior.
MIN_INTERIOR_SHARE = 0.1


@dataclass(frozen=True)
class EdgeZones:
    """Per phase: whether it touches its instance's start or end edge zone.

    ``start`` and ``end`` are boolean arrays of shape (n_phases,);
    ``lifetime`` is the longest request span per instance code.
    """

    start: np.ndarray
    end: np.ndarray
    lifetime: np.ndarray
    interior_start: np.ndarray  # per instance: max(a, A + L)
    interior_end: np.ndarray  # per instance: min(z, Z - L)

    @property
    def interior(self) -> np.ndarray:
        return ~(self.start | self.end)


def _per_instance(values, instance, n_inst, reduce, fill):
    out = np.full(n_inst, fill, dtype=np.float64)
    reduce.at(out, instance, values)
    return out


def edge_zones(
    t_start: np.ndarray,
    t_end: np.ndarray,
    is_prefill: np.ndarray,
    instance: np.ndarray,
) -> EdgeZones:
    """The edge zones of every instance of a trace (see the module docstring).

    A request starts with its prefill and ends with its decode, so ``a`` is
    the first decode end and ``z`` the last prefill start (the first end and
    the last start of any phase when one phase type is absent). The longest
    request is bounded by the longest prefill plus the longest decode: a
    conservative ``L`` that needs no request ids.
    """
    instance = np.asarray(instance, dtype=np.intp)
    n_inst = int(instance.max()) + 1 if instance.size else 0
    duration = t_end - t_start
    lo_all = _per_instance(t_start, instance, n_inst, np.minimum, np.inf)
    hi_all = _per_instance(t_end, instance, n_inst, np.maximum, -np.inf)

    def typed(values, mask, reduce, fill):
        some = _per_instance(values[mask], instance[mask], n_inst, reduce, fill)
        every = _per_instance(values, instance, n_inst, reduce, fill)
        return np.where(np.isfinite(some), some, every)

    first_end = typed(t_end, ~is_prefill, np.minimum, np.inf)
    last_start = typed(t_start, is_prefill, np.maximum, -np.inf)
    longest = _per_instance(
        np.where(is_prefill, duration, 0.0), instance, n_inst, np.maximum, 0.0
    ) + _per_instance(
        np.where(is_prefill, 0.0, duration), instance, n_inst, np.maximum, 0.0
    )
    interior_start = np.maximum(first_end, lo_all + longest)
    interior_end = np.minimum(last_start, hi_all - longest)
    return EdgeZones(
        start=t_start < interior_start[instance],
        end=t_end > interior_end[instance],
        lifetime=longest,
        interior_start=interior_start,
        interior_end=interior_end,
    )


def edge_bias(
    zones: EdgeZones,
    instance: np.ndarray,
    t_start: np.ndarray,
    residual: np.ndarray,
    n_steps: np.ndarray,
    weight: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Relative step-count bias of each edge, and what the noise allows.

    ``residual`` is ``Lambda_i - N_i`` at the interior's betas and ``weight``
    the objective's weights. Returns ``(start_bias, end_bias, limit)``: per
    instance, ``sum w r / sum w N`` over the phases of each edge zone (NaN
    where the zone holds no weighted phase) and the largest bias a complete
    edge shows (:func:`bias_limit` of :func:`edge_bias_sums`).
    """
    start_bias, end_bias, spread = edge_bias_sums(
        zones, instance, t_start, residual, n_steps, weight
    )
    return start_bias, end_bias, bias_limit(spread)


def edge_bias_sums(
    zones: EdgeZones,
    instance: np.ndarray,
    t_start: np.ndarray,
    residual: np.ndarray,
    n_steps: np.ndarray,
    weight: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`edge_bias` before its limit: the edges' biases and ``[sum of
    squares, count]`` of the interior blocks' biases (instances add up)."""
    instance = np.asarray(instance, dtype=np.intp)
    n_inst = zones.lifetime.shape[0]
    wr, wn = weight * residual, weight * n_steps

    def bias(mask, groups, n_groups):
        num = np.bincount(groups[mask], wr[mask], minlength=n_groups)
        den = np.bincount(groups[mask], wn[mask], minlength=n_groups)
        return np.divide(num, den, out=np.full(n_groups, np.nan), where=den > 0)

    start_bias = bias(zones.start, instance, n_inst)
    end_bias = bias(zones.end & ~zones.start, instance, n_inst)
    inner = zones.interior
    span = np.maximum(zones.lifetime, np.finfo(float).tiny)
    block = np.floor((t_start - zones.interior_start[instance]) / span[instance])
    n_blocks = int(np.max(block[inner], initial=0)) + 1
    group = np.where(inner, instance * n_blocks + np.maximum(block, 0), 0)
    blocks = bias(inner, group.astype(np.intp), n_inst * n_blocks)
    blocks = blocks[np.isfinite(blocks)]
    return start_bias, end_bias, np.array([np.sum(blocks**2), blocks.size])


def bias_limit(spread: np.ndarray) -> float:
    """The largest bias a complete edge shows: ``max(EDGE_BIAS_FLOOR,
    EDGE_BIAS_SPREAD * rms)``, rms the root-mean-square interior block bias
    (``spread`` of :func:`edge_bias_sums`)."""
    total, count = spread
    rms = float(np.sqrt(total / count)) if count else 0.0
    return max(EDGE_BIAS_FLOOR, EDGE_BIAS_SPREAD * rms)


def context_phases(
    zones: EdgeZones, instance: np.ndarray, start_bias, end_bias, limit: float
) -> np.ndarray:
    """Phases left as context: those touching an edge found incomplete.

    An edge with no weighted phase (NaN bias) cannot be tested and stays
    context.
    """
    instance = np.asarray(instance, dtype=np.intp)
    bad_start = ~(np.abs(start_bias) <= limit)
    bad_end = ~(np.abs(end_bias) <= limit)
    return (zones.start & bad_start[instance]) | (zones.end & bad_end[instance])


@dataclass(frozen=True)
class EdgeReport:
    """What the edge treatment did, for ``diagnostics_["edges"]``."""

    n_context: int  # phases left out of the objective as context
    start_bias: list  # per instance, relative step-count bias of the start edge
    end_bias: list
    limit: float  # largest bias a complete edge shows

    def as_dict(self) -> dict:
        return dict(
            n_context=self.n_context,
            start_bias=self.start_bias,
            end_bias=self.end_bias,
            limit=self.limit,
        )


def fit_with_edge_context(
    edges, fit: Callable[..., tuple]
) -> tuple[tuple, EdgeReport, object]:
    """Fit every phase, test the edges, refit without the incomplete ones.

    ``edges`` answers the test's questions (``_window_fit.TimelineEdges`` in
    memory, ``_distributed_edges.PartitionEdges`` on Dask). ``fit(kind,
    beta_init, final)`` runs the estimator with the phase weights of
    ``kind`` (``"all"``, ``"interior"`` or ``("restored", beta, limit)``,
    see ``TimelineEdges.weights``; ``beta_init=None``: its own start;
    ``final=False``: to the looser :data:`EDGE_TEST_TOL`, enough to test
    the edges) and returns a tuple whose first item is the betas.

    The edges are tested at the interior's betas. A complete trace is fitted
    once: one Gauss-Newton step from the fit of every phase, with the
    interior's weights, barely changes the interior's step counts (below
    :data:`EDGE_BIAS_FLOOR`), so the joint betas fit the interior as well as
    its own, and the edges pass there. Otherwise the interior is fitted in
    full and the edges tested at its betas. Edges off at the interior's betas
    may still be complete: where the interior leaves a coefficient loose (a
    saturated engine whose batch only moves at the trace's ramps), the edges
    identify it, and every phase then fits as well as the interior fits
    itself; the fit of every phase stands. When the interior holds less than
    :data:`MIN_INTERIOR_SHARE` of the steps (a trace shorter than about two
    request lifetimes), the edges cannot be tested: every phase is fitted,
    with a warning that gives the
    longest request lifetime (``edges.lifetimes()``, in seconds: the zones'
    times may be in the fit's unit), and the report's ``limit`` is NaN.

    Returns ``(result, report, kind)``: the chosen fit's result, the
    :class:`EdgeReport` and the weights' kind of that fit.
    """
    joint = fit("all", None, True)
    interior_share = edges.interior_share()
    if interior_share < MIN_INTERIOR_SHARE:
        lifetimes = edges.lifetimes()
        warn(
            f"Only {interior_share:.1%} of the trace's steps lie clear of its "
            "edges (the longest request lasts up to "
            f"{lifetimes.max():.4g} s, against a trace of about two request "
            "lifetimes or less): too few to test the edges, so every phase is "
            "fitted. If the trace is a window cut from a busy engine, its edges "
            "miss the load of requests outside it and the betas are biased; "
            "export a longer window.",
            UncertaintyWarning,
        )
        nan = [float("nan")] * lifetimes.shape[0]
        return joint, EdgeReport(0, nan, nan, float("nan")), "all"

    def report(n_context, start_bias, end_bias, limit):
        return EdgeReport(n_context, start_bias.tolist(), end_bias.tolist(), limit)

    beta_joint = joint[0]
    beta_step, move = edges.gauss_newton_move(beta_joint)
    if move < EDGE_BIAS_FLOOR:
        # The interior fits the joint betas as well as its own: test there.
        start_bias, end_bias, limit = edges.biases(beta_joint)
        if edges.n_context(beta_joint, limit) == 0:
            return joint, report(0, start_bias, end_bias, limit), "all"
    interior = fit("interior", beta_step, False)
    start_bias, end_bias, limit = edges.biases(interior[0])
    n_context = edges.n_context(interior[0], limit)
    joint_start, joint_end, _ = edges.biases(beta_joint)
    if n_context == 0 or edges.n_context(beta_joint, limit) == 0:
        return joint, report(0, joint_start, joint_end, limit), "all"
    restored = ("restored", interior[0], limit)
    final = fit(restored, interior[0], True)
    return final, report(n_context, start_bias, end_bias, limit), restored
