"""The edge treatment of windows (``edges="auto"``) on partitions of whole instances.

:func:`~sklearn_beta.trust._edges.fit_with_edge_context` asks a trace a few
questions: the interior's share of the steps, a Gauss-Newton step of the
interior's phases, the edges' step-count biases and the phases on
incomplete edges at given betas, and fits with the weights those answers
give. Edge zones, biases and context phases are per instance, hence local
to a partition; the noise level of the test is a sum over interior blocks.
:class:`PartitionEdges` answers each question with one reduction of the
block functions here, and derives the weighted step-count problems on the
workers. No dask here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core._nnls import nnls_from_r
from ..core._schema import phase_windows
from ..core._step_count import TimelineCounts
from ..estimators._feature_source import settled_linearisation
from ..trust._edges import (
    EdgeZones,
    bias_limit,
    context_phases,
    edge_bias_sums,
    edge_zones,
)
from ._blocks import Block, RFactor


@dataclass(frozen=True)
class ByInstance:
    """Arrays indexed by the fleet's instance codes, NaN where a partition
    holds no such instance; the reduction fills each from the partition
    that has it."""

    arrays: tuple

    def combine(self, other: ByInstance) -> ByInstance:
        return ByInstance(
            tuple(_fill(a, b) for a, b in zip(self.arrays, other.arrays, strict=True))
        )


def _fill(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.full(max(a.shape[0], b.shape[0]), np.nan)
    out[: a.shape[0]] = a
    head = out[: b.shape[0]]
    missing = np.isnan(head)
    head[missing] = b[missing]
    return out


@dataclass(frozen=True)
class EdgeState:
    """A partition's edge zones and what its biases are grouped by."""

    zones: EdgeZones
    instance: np.ndarray
    t_start: np.ndarray


# --- Block functions ----------------------------------------------------------


def edge_state_block(block: Block | None) -> EdgeState | None:
    """The edge zones of a partition's instances (its own timeline's times)."""
    if block is None:
        return None
    t_start, t_end, instance = phase_windows(block.timeline)
    zones = edge_zones(t_start, t_end, block.timeline.is_prefill, instance)
    return EdgeState(zones, instance, t_start)


def share_block(block: Block | None, edge: EdgeState | None) -> dict | None:
    """What the edge test needs that no betas change: the objective-weighted
    steps of the interior and of every phase, the request lifetimes and, per
    instance, the phases of positive weight in the start zone, the end zone
    and both."""
    if block is None:
        return None
    steps = block.counts.weight * block.timeline.n_steps
    zones, counted = edge.zones, _weight(block) > 0
    n_inst = zones.lifetime.shape[0]

    def per_instance(mask):
        count = np.bincount(edge.instance[mask & counted], minlength=n_inst)
        return _present(edge, count.astype(np.float64))

    return {
        "interior_steps": float(np.sum(steps * zones.interior)),
        "steps": float(np.sum(steps)),
        "lifetimes": ByInstance(
            (_present(edge, zones.lifetime * block.timeline.time_unit),)
        ),
        "zone_counts": ByInstance(
            (
                per_instance(zones.start),
                per_instance(zones.end),
                per_instance(zones.start & zones.end),
            )
        ),
    }


def probe_block(
    block: Block | None, edge: EdgeState | None, beta: np.ndarray
) -> dict | None:
    """The edge test at ``beta``, one evaluation of the objective: the R
    factor of the interior's linearised counts, the partition's instances'
    edge biases and the interior blocks' spread."""
    if block is None:
        return None
    residual, jac = _linearised(block, beta)
    weight = block.counts.weight
    root_w = np.sqrt(weight * edge.zones.interior)
    start_bias, end_bias, spread = edge_bias_sums(
        edge.zones,
        edge.instance,
        edge.t_start,
        residual,
        block.timeline.n_steps,
        weight,
    )
    target = jac @ beta
    target -= residual
    return {
        "step_r": RFactor.of(jac * root_w[:, None], target * root_w),
        "biases": ByInstance((start_bias, end_bias)),
        "spread": spread,
    }


def _linearised(block: Block, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Lambda_i - N_i, dLambda_i / dbeta)`` of a block at ``beta``, a step
    model's as the in-memory edge test makes it."""
    if block.factory is not None:
        # The fit of every phase ran on these blocks: at its betas, its own
        # state (as in memory), else afresh.
        last = block.counts.last
        if last is not None and np.array_equal(last.beta, beta):
            return last.residual, last.jac
        return settled_linearisation(block.factory(None), beta)
    state = block.counts.state(beta)
    return state.residual, state.jac


def _biases(block: Block, edge: EdgeState, beta: np.ndarray) -> tuple:
    return edge_bias_sums(
        edge.zones,
        edge.instance,
        edge.t_start,
        _linearised(block, beta)[0],
        block.timeline.n_steps,
        block.counts.weight,
    )


def _present(edge: EdgeState, values: np.ndarray) -> np.ndarray:
    """``values`` per instance code, NaN for the codes of other partitions."""
    count = np.bincount(edge.instance, minlength=values.shape[0])
    return np.where(count > 0, values, np.nan)


def _context(block: Block, edge: EdgeState, beta: np.ndarray, limit: float):
    start_bias, end_bias, _ = _biases(block, edge, beta)
    return context_phases(edge.zones, edge.instance, start_bias, end_bias, limit)


def _weight(block: Block) -> np.ndarray:
    sample_weight = block.counts.sample_weight
    return np.ones(block.timeline.n_phases) if sample_weight is None else sample_weight


def weighted_block(block: Block | None, edge: EdgeState | None, kind) -> Block | None:
    """The partition's step-count problem with the phase weights of ``kind``
    (:meth:`~sklearn_beta.trust._window_fit.TimelineEdges.weights`)."""
    if block is None:
        return None
    if kind == "interior":
        keep = edge.zones.interior
    else:
        _, beta, limit = kind
        keep = ~_context(block, edge, beta, limit)
    weight = _weight(block) * keep
    if block.factory is not None:
        return replace(block, counts=block.factory(weight))
    counts = TimelineCounts(block.timeline, block.counts.correction_mode, weight)
    return replace(block, counts=counts)


def counted_block(block: Block | None) -> dict | None:
    """:meth:`~sklearn_beta.core._step_count.TimelineCounts.counted_totals`
    of a block."""
    if block is None:
        return None
    n_weighted, duration, steps = block.counts.counted_totals()
    return {
        "n_weighted": n_weighted,
        "counted_duration": duration,
        "counted_steps": steps,
    }


# --- Client -------------------------------------------------------------------


def gauss_newton_move(beta: np.ndarray, step_r: np.ndarray) -> tuple[np.ndarray, float]:
    """The projected Gauss-Newton step from ``beta`` and the relative change
    of the weighted step counts it makes, from the R factor of
    ``[sqrt(w) J, sqrt(w) (J beta - r)]`` (``_window_fit._relative_move``: the
    counts are homogeneous of degree -1, so ``J beta`` is minus the counts)."""
    new = nnls_from_r(step_r)
    gram = step_r[:, :-1].T @ step_r[:, :-1]
    change = new - beta
    level = np.sqrt(max(float(beta @ gram @ beta), 0.0))
    move = np.sqrt(max(float(change @ gram @ change), 0.0))
    return new, move / max(level, 1e-300)


class PartitionEdges:
    """:class:`~sklearn_beta.trust._window_fit.TimelineEdges`'s answers from partitions.

    ``blocks`` are the persisted step-count problems of every phase
    (:class:`~sklearn_beta.distributed._dask_fit.Partitions` of :class:`Block`), whose
    instance codes are the fleet's: per-instance results come back in the
    order of the whole fleet's instances, as in memory.
    """

    def __init__(self, blocks):
        self.blocks = blocks
        self.edges = blocks.derive(edge_state_block)
        self._share = None
        self._probes: dict = {}

    def _shares(self) -> dict:
        if self._share is None:
            self._share = self.blocks.map(share_block, states=self.edges)
        return self._share

    def _probe(self, beta: np.ndarray) -> dict:
        # The test asks several questions at the same betas: one pass each.
        key = np.asarray(beta, dtype=np.float64).tobytes()
        if key not in self._probes:
            self._probes[key] = self.blocks.map(probe_block, beta, states=self.edges)
        return self._probes[key]

    def interior_share(self) -> float:
        share = self._shares()
        return share["interior_steps"] / max(share["steps"], 1e-300)

    def lifetimes(self) -> np.ndarray:
        return self._shares()["lifetimes"].arrays[0]

    def gauss_newton_move(self, beta: np.ndarray) -> tuple[np.ndarray, float]:
        return gauss_newton_move(beta, self._probe(beta)["step_r"].r)

    def biases(self, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        probe = self._probe(beta)
        start_bias, end_bias = probe["biases"].arrays
        return start_bias, end_bias, bias_limit(probe["spread"])

    def n_context(self, beta: np.ndarray, limit: float) -> int:
        """Phases of positive weight on the edges found incomplete at ``beta``
        (``_edges.context_phases``), counted per instance and zone: a phase
        in both zones of an instance with both edges incomplete counts once."""
        start_bias, end_bias, _ = self.biases(beta)
        n_start, n_end, n_both = (
            np.nan_to_num(c) for c in self._shares()["zone_counts"].arrays
        )
        bad_start = ~(np.abs(start_bias) <= limit)
        bad_end = ~(np.abs(end_bias) <= limit)
        count = bad_start * n_start + bad_end * n_end - (bad_start & bad_end) * n_both
        return int(round(float(np.sum(count))))

    def weighted(self, kind):
        """The blocks with the phase weights of ``kind`` (``"all"``: these)
        and their :func:`counted_block` totals."""
        if kind == "all":
            return self.blocks, None
        blocks = self.blocks.derive(weighted_block, kind, states=self.edges)
        return blocks, blocks.map(counted_block)
