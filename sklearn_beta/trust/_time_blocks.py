"""Time blocks of a trace: what the sandwich intervals group phases by.

Each instance's timeline is cut into equal blocks; a phase belongs to the
block of its midpoint, and residuals are correlated with the blocks up to a
lag count away (see :mod:`sklearn_beta.trust._uncertainty`). The block length and
the lag count come from sums, maxima and two exact duration quantiles of the
whole trace, so that the partitions of a fleet (whole instances each) find
the same blocks from small summaries (:mod:`sklearn_beta.distributed._trust`).
"""

from __future__ import annotations

import numpy as np

#: Most time blocks a trace is cut into; more add nothing but time.
MAX_BLOCKS = 4000
#: Blocks last at least this fraction of the median phase duration, so that a
#: block holds a few phases.
MIN_BLOCK_SHARE = 0.5
#: Residuals of phases further apart than this quantile of the phase
#: durations are treated as uncorrelated (they share no step).
LAG_QUANTILE = 0.99
#: Quantiles of the phase durations that size the blocks and the lag window.
DURATION_QUANTILES = (0.5, LAG_QUANTILE)


def time_blocks(
    t_start: np.ndarray,
    t_end: np.ndarray,
    instance: np.ndarray | None = None,
    max_blocks: int = MAX_BLOCKS,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cut each instance's timeline into equal blocks; assign phases by midpoint.

    The block length and the lag count are :func:`block_length`'s, from the
    exact duration quantiles of :func:`duration_quantiles`.

    Returns
    -------
    block : ndarray of int, shape (n_phases,)
        Block of each phase, numbered instance after instance.
    block_instance : ndarray of int, shape (n_blocks,)
        Instance of each block; lags never cross instances.
    n_lags : int
        Number of later blocks a block's residuals are correlated with.
    """
    t_start = np.asarray(t_start, dtype=np.float64)
    t_end = np.asarray(t_end, dtype=np.float64)
    instance, origin, span = instance_spans(t_start, t_end, instance)
    median, longest = duration_quantiles(t_end - t_start)
    h, n_lags = block_length(
        median, longest, float(span.sum()), float(span.max()), max_blocks
    )
    block, block_instance = assign_blocks(t_start, t_end, instance, origin, span, h)
    return block, block_instance, n_lags


def block_length(
    median: float,
    longest: float,
    total_span: float,
    longest_span: float,
    max_blocks: int = MAX_BLOCKS,
) -> tuple[float, int]:
    """Block length ``h`` and lag count of a trace, from its duration quantiles.

    ``h`` is the larger of half the median phase duration and the instances'
    total span over ``max_blocks``; residuals are correlated up to
    ``n_lags = ceil(q99(duration) / h)`` blocks apart (two phases overlap
    only if their midpoints are closer than the longer of them), at most the
    longest instance's blocks. Only sums and maxima of the trace enter: the
    partitions of a fleet each send theirs.
    """
    h = max(
        MIN_BLOCK_SHARE * float(median),
        total_span / max_blocks,
        np.finfo(float).tiny,
    )
    n_lags = int(np.ceil(longest / h))
    return h, min(n_lags, int(np.floor(longest_span / h)))


def assign_blocks(
    t_start: np.ndarray,
    t_end: np.ndarray,
    instance: np.ndarray,
    origin: np.ndarray,
    span: np.ndarray,
    h: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of length ``h`` within each instance (codes, first times and
    spans of :func:`instance_spans`); returns ``(block, block_instance)``."""
    per_instance = np.floor(span / h).astype(np.intp) + 1
    offset = np.concatenate([[0], np.cumsum(per_instance)[:-1]])
    mid = 0.5 * (t_start + t_end)
    if origin.shape[0] == 1:
        block = np.minimum(((mid - origin[0]) / h).astype(np.intp), per_instance[0] - 1)
    else:
        local = ((mid - origin[instance]) / h).astype(np.intp)
        block = offset[instance] + np.minimum(local, per_instance[instance] - 1)
    return block, np.repeat(np.arange(origin.shape[0]), per_instance)


def quantile_ranks(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Order statistics behind :data:`DURATION_QUANTILES` of ``n`` durations.

    Returns ``(ranks, weight)``, each of shape (n_quantiles, 2): quantile
    ``q`` is ``sum(weight * x[ranks])`` of the sorted durations ``x``, the
    linear interpolation at ``(n - 1) q`` (NumPy's default method).
    """
    position = (n - 1) * np.asarray(DURATION_QUANTILES)
    lower = np.floor(position).astype(np.int64)
    frac = position - lower
    ranks = np.column_stack([lower, np.minimum(lower + 1, n - 1)])
    return ranks, np.column_stack([1.0 - frac, frac])


def quantiles_of(order_values: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """The median and the lag quantile from the order statistics at the ranks
    of :func:`quantile_ranks` (``order_values`` shaped like its ``ranks``)."""
    median, longest = np.sum(order_values * weight, axis=1)
    return float(median), float(longest)


def duration_quantiles(duration: np.ndarray) -> tuple[float, float]:
    """The median and :data:`LAG_QUANTILE` quantile of every phase's duration.

    Exact, not from a sample: quantiles are order statistics, which the
    partitions of a fleet find exactly from small per-partition histograms
    (:func:`sklearn_beta.distributed._trust.order_statistics`), so a fit on
    a Dask cluster forms the same blocks as the fit in memory. A random
    sample cannot be drawn alike from rows spread over partitions, and a
    strided one saw only the prefills of an exposure table (its rows
    interleave each request's short prefill and long decode). The partial
    sort costs about 0.2 s per 10 million phases.
    """
    ranks, weight = quantile_ranks(duration.shape[0])
    wanted = np.unique(ranks)
    values = np.partition(duration, wanted)[wanted]
    return quantiles_of(values[np.searchsorted(wanted, ranks)], weight)


def instance_spans(t_start, t_end, instance):
    """Instance codes 0..k-1 (None for one instance), each instance's first
    time and time span."""
    if instance is None or np.all(instance == instance[0]):
        origin, last = np.min(t_start), np.max(t_end)
        return (
            np.zeros(t_start.shape[0], dtype=np.intp),
            np.array([origin]),
            np.array([last - origin]),
        )
    _, instance = np.unique(instance, return_inverse=True)
    n_inst = int(instance.max()) + 1
    origin = np.full(n_inst, np.inf)
    np.minimum.at(origin, instance, t_start)
    last = np.full(n_inst, -np.inf)
    np.maximum.at(last, instance, t_end)
    return instance, origin, last - origin
