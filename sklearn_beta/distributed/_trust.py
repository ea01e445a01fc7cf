"""Confidence intervals of a fit on partitions that hold whole instances.

The time-block sandwich of :mod:`sklearn_beta.trust._uncertainty` needs three
things of the whole trace, and each is a reduction of small per-partition
summaries:

* the block length and lag count
  (:func:`~sklearn_beta.trust._time_blocks.block_length`): the phase count, the
  instances' total and longest span, and two exact duration quantiles.
  Quantiles are order statistics; :func:`order_statistics` finds them by radix
  selection on the durations' bit patterns, each pass one 256-bin histogram per
  target rank and partition, then the few remaining candidates (at most
  :data:`GATHER_LIMIT` per rank);
* per partition, once the blocks are known, its
  :class:`~sklearn_beta.trust._uncertainty.SandwichSums`: time blocks never cross
  instances, so the long-run sums, ``J' W J`` and the count of non-empty
  blocks add up over partitions.

The block functions (``*_block``) run where a partition lives, on its
exposure table (the baseline) or its persisted
:class:`~sklearn_beta.distributed._blocks.Block` (the iterative fit); the client
half is :func:`solution_sums`. No dask here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core._schema import column, fit_design, phase_windows
from ..trust._time_blocks import (
    assign_blocks,
    block_length,
    instance_spans,
    quantile_ranks,
    quantiles_of,
)
from ..trust._uncertainty import sandwich_sums
from ._blocks import Block, RFactor, table_values

#: Bits of the duration keys each selection pass resolves (256-bin histograms).
DIGIT_BITS = 8
#: Candidates of a rank gathered to the client instead of another pass.
GATHER_LIMIT = 4096
_SIGN = np.uint64(1 << 63)


@dataclass(frozen=True)
class Largest:
    """A maximum that :func:`~sklearn_beta.distributed._blocks.combine_stats`
    reduces."""

    value: float

    def combine(self, other: Largest) -> Largest:
        return Largest(max(self.value, other.value))


@dataclass(frozen=True)
class Pooled:
    """Arrays per target rank, concatenated by the reduction."""

    arrays: tuple

    def combine(self, other: Pooled) -> Pooled:
        return Pooled(
            tuple(
                np.concatenate(p) for p in zip(self.arrays, other.arrays, strict=True)
            )
        )


# --- Block functions ----------------------------------------------------------


def windows(item, unit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t_start, t_end, instance)`` of a partition's phases, in the trace's unit.

    An exposure table carries them as columns (the grid points are these
    very times); a :class:`Block` holds them on its grid divided by ``unit``,
    a power of two, so multiplying back is exact.
    """
    if isinstance(item, pd.DataFrame):
        values = table_values(item)
        return (
            column(values, "t_start"),
            column(values, "t_end"),
            column(values, "instance_id"),
        )
    t_start, t_end, instance = phase_windows(item.timeline)
    return t_start * unit, t_end * unit, instance


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integers ordered as the float64 ``values`` are."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where((bits & _SIGN) != 0, ~bits, bits | _SIGN)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float64 values of :func:`sortable_keys`."""
    keys = np.asarray(keys, dtype=np.uint64)
    bits = np.where((keys & _SIGN) != 0, keys & ~_SIGN, ~keys)
    return bits.view(np.float64)


def _duration_keys(item, unit: float) -> np.ndarray:
    t_start, t_end, _ = windows(item, unit)
    return sortable_keys(t_end - t_start)


def _matching(keys: np.ndarray, prefix: np.uint64, fixed: int) -> np.ndarray:
    if fixed == 0:
        return keys
    return keys[(keys >> np.uint64(64 - fixed)) == prefix]


def layout_block(item, unit: float) -> dict | None:
    """Phase count and the instances' total and longest span of a partition."""
    if item is None or (isinstance(item, pd.DataFrame) and len(item) == 0):
        return None
    t_start, t_end, instance = windows(item, unit)
    _, _, span = instance_spans(t_start, t_end, instance)
    return {
        "n": t_start.shape[0],
        "total_span": float(span.sum()),
        "longest_span": Largest(float(span.max())),
    }


def key_histogram_block(
    item, unit: float, prefixes: np.ndarray, fixed: int
) -> dict | None:
    """Per target, the histogram of the next digit of the keys under its prefix."""
    if item is None or (isinstance(item, pd.DataFrame) and len(item) == 0):
        return None
    keys = _duration_keys(item, unit)
    shift = np.uint64(64 - fixed - DIGIT_BITS)
    mask = np.uint64((1 << DIGIT_BITS) - 1)
    return {
        "histogram": np.stack(
            [
                np.bincount(
                    ((_matching(keys, p, fixed) >> shift) & mask).astype(np.intp),
                    minlength=1 << DIGIT_BITS,
                )
                for p in prefixes
            ]
        )
    }


def key_gather_block(
    item, unit: float, prefixes: np.ndarray, fixed: int
) -> dict | None:
    """Per target, the keys under its prefix (few: see :data:`GATHER_LIMIT`)."""
    if item is None or (isinstance(item, pd.DataFrame) and len(item) == 0):
        return None
    keys = _duration_keys(item, unit)
    return {"keys": Pooled(tuple(_matching(keys, p, fixed) for p in prefixes))}


def count_solution(block: Block, state, beta: np.ndarray) -> tuple:
    """``(jac, residual, weight, design)`` of the step-count objective at
    ``beta``; the design is the one the phases' steps give."""
    counts = block.counts
    solved = getattr(counts, "last", None)
    if solved is None or not np.array_equal(solved.beta, beta):
        # A step model's problem keeps the solution's state: evaluating it
        # again would move its lagged decode context (the in-memory fit's
        # intervals read the solution's state too).
        solved = counts.state(beta)
    return solved.jac, solved.residual, counts.weight, solved.design


def duration_solution(block: Block, state, beta: np.ndarray) -> tuple:
    """``(jac, residual, weight, None)`` of the duration objective: the last
    design is its Jacobian."""
    return state.design, block.timeline.duration - state.design @ beta, None, None


def baseline_solution(table: pd.DataFrame, state, beta: np.ndarray) -> tuple:
    """``(jac, residual, weight, None)`` of the baseline NNLS."""
    values = table_values(table)
    design = fit_design(values)[0]
    return design, column(values, "duration") - design @ beta, None, None


def solution_block(
    item, state, solution, beta: np.ndarray, unit: float, h: float | None, n_lags
) -> dict | None:
    """A partition's sums at the solution ``beta`` (in the fit's unit).

    ``sandwich``: its :class:`~sklearn_beta.trust._uncertainty.SandwichSums` with
    blocks of length ``h`` (the trace's unit; none when ``h`` is None);
    ``weighted_design``: ``sum_i w_i design_i`` when the solution has a
    design (the typical step of ``_what_if.split_uncertainty``).
    """
    if item is None or (isinstance(item, pd.DataFrame) and len(item) == 0):
        return None
    jac, residual, weight, design = solution(item, state, beta)
    out = {}
    if h is not None:
        t_start, t_end, instance = windows(item, unit)
        instance, origin, span = instance_spans(t_start, t_end, instance)
        block, block_instance = assign_blocks(t_start, t_end, instance, origin, span, h)
        out["sandwich"] = sandwich_sums(
            jac, residual, weight, block, block_instance, n_lags
        )
    if design is not None:
        out["weighted_design"] = weight @ design
        sample_weight = item.counts.sample_weight
        if sample_weight is not None:
            root_w = np.sqrt(sample_weight)
            out["r_weighted_design"] = RFactor.of(
                design * root_w[:, None], item.timeline.duration * root_w
            )
    return out


def _stateless_solution_block(item, *args) -> dict | None:
    return solution_block(item, None, *args)


# --- Client -------------------------------------------------------------------


def order_statistics(parts, unit: float, n: int, ranks: np.ndarray) -> np.ndarray:
    """The durations of the given 0-based ranks over all partitions, exactly.

    Radix selection on :func:`sortable_keys`: each pass fixes the next
    :data:`DIGIT_BITS` of every target's key from the summed histograms of
    the keys sharing the bits fixed so far; once at most
    :data:`GATHER_LIMIT` keys share a target's prefix, they are gathered and
    sorted. ``parts`` maps a block function over the partitions and reduces
    the results (:class:`~sklearn_beta.distributed._dask_fit.Partitions`); ``n`` is
    the number of phases.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    prefixes = np.zeros(ranks.shape[0], dtype=np.uint64)
    remaining = ranks.copy()
    count = np.full(ranks.shape[0], n)
    fixed = 0
    rows = np.arange(ranks.shape[0])
    while fixed < 64 and count.max() > GATHER_LIMIT:
        hist = parts.map(key_histogram_block, unit, prefixes, fixed)["histogram"]
        cum = np.cumsum(hist, axis=1)
        digit = np.argmax(cum > remaining[:, None], axis=1)
        remaining = remaining - (cum[rows, digit] - hist[rows, digit])
        count = hist[rows, digit]
        prefixes = (prefixes << np.uint64(DIGIT_BITS)) | digit.astype(np.uint64)
        fixed += DIGIT_BITS
    if fixed == 64:
        return key_values(prefixes)
    pooled = parts.map(key_gather_block, unit, prefixes, fixed)["keys"].arrays
    keys = np.array([np.sort(k)[r] for k, r in zip(pooled, remaining, strict=True)])
    return key_values(keys)


def solution_sums(
    confidence_level: float | None,
    parts,
    solution,
    beta: np.ndarray,
    unit: float = 1.0,
    states=None,
) -> tuple[dict, int | None]:
    """The partitions' :func:`solution_block` sums at the fitted ``beta``.

    ``beta`` is in the trace's unit and ``unit`` the fit's time unit
    (:func:`~sklearn_beta.core._units.time_scale`); ``solution(item, state,
    beta / unit)`` gives each partition's ``(jac, residual, weight,
    design)``, ``states`` the partitions' per-fit state it reads (or None).
    The sandwich sums are made when ``confidence_level`` is set,
    with the blocks of the whole trace (:func:`block_layout`). Returns the
    reduced sums and the lag count (None without intervals).
    """
    h, n_lags = None, None
    if confidence_level is not None:
        h, n_lags = block_layout(parts, unit)
    args = (solution, beta / unit, unit, h, n_lags)
    if states is None:
        sums = parts.map(_stateless_solution_block, *args)
    else:
        sums = parts.map(solution_block, *args, states=states)
    return sums, n_lags


def block_layout(parts, unit: float) -> tuple[float, int]:
    """Block length and lag count of the trace behind the partitions, as
    :func:`~sklearn_beta.trust._uncertainty.time_blocks` finds them in memory."""
    layout = parts.map(layout_block, unit)
    ranks, weight = quantile_ranks(layout["n"])
    wanted = np.unique(ranks)
    values = order_statistics(parts, unit, layout["n"], wanted)
    median, longest = quantiles_of(values[np.searchsorted(wanted, ranks)], weight)
    return block_length(
        median, longest, layout["total_span"], layout["longest_span"].value
    )
