"""Cross-validation over contiguous time blocks of each instance.

Public through :mod:`sklearn_beta.model_selection`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator

from ..core._grid import build_grid
from ..core._validation import (
    PhaseColumns,
    describe_rows,
    numeric_column,
    request_codes,
)


@dataclass(frozen=True)
class _TraceTimes:
    """Request codes, times and instance codes of a phase table (arrays only)."""

    request: np.ndarray  # int codes of request_id
    t_start: np.ndarray  # float64, unshifted: splits only compare times
    t_end: np.ndarray
    instance: np.ndarray  # int codes of the instance ids, 0 for one instance


def _present_columns(columns, frame_columns) -> PhaseColumns:
    """The column names, the instance column dropped when left at its default
    name and absent (CONTRACTS.md 1: used when present)."""
    columns = PhaseColumns.coerce(columns)
    default = PhaseColumns().instance_id
    if columns.instance_id == default and default not in frame_columns:
        return replace(columns, instance_id=None)
    return columns


def _trace_times(X, columns, groups=None) -> _TraceTimes:
    """Validate the columns a split needs and return them as arrays."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError(
            "Splitting a trace needs the phase table as a pandas DataFrame, "
            f"got {type(X).__name__}."
        )
    columns = _present_columns(columns, X.columns)
    request_id_col, t_start_col = columns.request_id, columns.t_start
    t_end_col, instance_col = columns.t_end, columns.instance_id
    needed = [request_id_col, t_start_col, t_end_col]
    if groups is None and instance_col is not None:
        needed.append(instance_col)
    missing = [c for c in needed if c not in X.columns]
    if missing:
        raise ValueError(
            f"The phase table is missing column(s) {missing}; it has {list(X.columns)}."
        )
    frame = X.reset_index(drop=True)
    t_start = numeric_column(frame, t_start_col, needed)
    t_end = numeric_column(frame, t_end_col, needed)
    bad = t_end <= t_start
    if bad.any():
        raise ValueError(
            f"Column {t_end_col!r} must be greater than {t_start_col!r}. "
            + describe_rows(frame, bad, needed)
        )
    request = request_codes(frame, request_id_col, needed)

    if groups is not None:
        labels = pd.Series(np.asarray(groups))
        if labels.shape[0] != frame.shape[0]:
            raise ValueError(
                f"groups has {labels.shape[0]} entries; the phase table has "
                f"{frame.shape[0]} rows."
            )
        source = "groups"
    elif instance_col is not None:
        labels = frame[instance_col]
        source = f"column {instance_col!r}"
    else:
        labels = pd.Series(np.zeros(frame.shape[0], dtype=np.intp))
        source = None
    if labels.isna().any():
        raise ValueError(
            f"The instance ids ({source}) have missing values. "
            + describe_rows(frame, labels.isna().to_numpy(), needed)
        )
    instance = pd.factorize(labels, sort=True)[0].astype(np.intp)
    first = np.full(request.max() + 1, -1, dtype=np.intp)
    first[request[::-1]] = instance[::-1]
    bad = instance != first[request]
    if bad.any():
        raise ValueError(
            f"A request's phases must run on one instance ({source}). "
            + describe_rows(frame, bad, needed)
        )
    return _TraceTimes(request, t_start, t_end, instance)


def request_blocks(times: _TraceTimes, n_blocks: int) -> np.ndarray:
    """Block of each phase: its request's rank by start time within its instance.

    Requests are ordered by their first phase start on each instance and cut
    into ``n_blocks`` runs of (nearly) equal size, so blocks are contiguous in
    time and hold the same share of each instance's requests even when the
    load varies along the trace.
    """
    n_req = times.request.max() + 1
    start = np.full(n_req, np.inf)
    np.minimum.at(start, times.request, times.t_start)
    req_instance = np.zeros(n_req, dtype=np.intp)
    req_instance[times.request] = times.instance
    order = np.lexsort((np.arange(n_req), start, req_instance))
    per_instance = np.bincount(req_instance)
    first_rank = np.concatenate([[0], np.cumsum(per_instance)[:-1]])
    rank = np.empty(n_req, dtype=np.intp)
    rank[order] = np.arange(n_req)
    rank -= first_rank[req_instance]
    block = (rank * n_blocks) // per_instance[req_instance]
    return block[times.request]


def overlapping_test(times: _TraceTimes, test: np.ndarray, gap: float) -> np.ndarray:
    """Phases whose request overlaps the span of the test phases of its instance.

    The span of instance k is ``[min t_start, max t_end]`` over its test
    phases, widened by ``gap`` on both sides. Overlap is closed: a phase that
    merely touches the span is dropped too, because the reference's ``end``
    correction puts a prefill's missing mass on the segment starting at its end.
    """
    n_inst = times.instance.max() + 1
    lo = np.full(n_inst, np.inf)
    hi = np.full(n_inst, -np.inf)
    np.minimum.at(lo, times.instance[test], times.t_start[test])
    np.maximum.at(hi, times.instance[test], times.t_end[test])
    inst = times.instance
    touches = (times.t_start <= hi[inst] + gap) & (times.t_end >= lo[inst] - gap)
    # Drop whole requests: a prefill and its decode train or test together.
    request_touches = np.bincount(times.request, weights=touches) > 0
    return request_touches[times.request]


class TraceBlockSplit(BaseCrossValidator):
    """K-fold cross-validation over contiguous time blocks of each instance.

    Each engine instance's requests are ordered by start time and cut into
    ``n_splits`` contiguous blocks of nearly equal size; fold k tests block k
    of every instance. Both phases of a request are always in the same fold.
    Training drops every request with a phase overlapping the test block's
    time span on the same instance, widened by ``gap`` seconds, so that no
    training row's exposures contain a test phase.

    A test block is a stretch of the real trace with all its phases, so
    exposures computed from it alone equal those of the full trace for every
    phase that overlaps no phase outside the block (see
    :func:`complete_context_mask`); only the phases at the block's two edges
    see part of their real pressure. The share of such phases falls as blocks
    get longer; wrap the pipeline in :class:`TraceContextRegressor` to give
    every phase its full-trace exposures.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds (blocks per instance); at least 2.
    gap : float, default=0.0
        Extra margin, in the trace's time unit, around each test block within
        which training phases are dropped as well.
    columns : PhaseColumns, mapping or None, default=None
        Column names (:meth:`~sklearn_beta.PhaseColumns.coerce`); the split
        reads ``request_id``, ``t_start``, ``t_end`` and ``instance_id`` (used
        when present: blocks are then cut per instance). When ``groups`` is
        passed to :meth:`split` it is used instead of the instance column.

    See Also
    --------
    sklearn.model_selection.GroupKFold : With the instance ids as ``groups``,
        folds of whole instances; exact exposures when there are at least
        ``n_splits`` instances.
    complete_context_mask : Which phases of a subset keep their full-trace
        exposures.
    TraceContextRegressor : Full-trace exposures for every fold.

    Examples
    --------
    >>> from sklearn.model_selection import cross_val_score
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn_beta import BaselineBetaRegressor, PhaseExposureTransformer
    >>> from sklearn_beta.datasets import simulate_trace
    >>> from sklearn_beta.model_selection import TraceBlockSplit
    >>> phases = simulate_trace(400, beta=(5e-3, 2e-5, 1e-4), chunk_size=256,
    ...                         max_num_seqs=16, arrival_rate=8.0, random_state=0)
    >>> model = make_pipeline(PhaseExposureTransformer(chunk_size=256),
    ...                       BaselineBetaRegressor())
    >>> scores = cross_val_score(model, phases, cv=TraceBlockSplit(n_splits=4))
    >>> scores.shape
    (4,)
    """

    # groups, when given, are the instance ids (as for GroupKFold).
    __metadata_request__split = {"groups": True}

    def __init__(
        self,
        n_splits=5,
        *,
        gap=0.0,
        columns=None,
    ):
        self.n_splits = n_splits
        self.gap = gap
        self.columns = columns

    def _check_params(self) -> None:
        n = self.n_splits
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 2:
            raise ValueError(f"n_splits must be an integer >= 2, got {n!r}.")
        gap = self.gap
        if isinstance(gap, bool) or not isinstance(gap, Real) or not gap >= 0:
            raise ValueError(f"gap must be a non-negative number, got {gap!r}.")
        if not np.isfinite(gap):
            raise ValueError(f"gap must be finite, got {gap!r}.")

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of folds.

        Parameters
        ----------
        X, y, groups : object
            Ignored.

        Returns
        -------
        n_splits : int
        """
        self._check_params()
        return int(self.n_splits)

    def split(self, X, y=None, groups=None):
        """Generate train and test indices of each fold.

        Parameters
        ----------
        X : DataFrame of shape (n_phases, n_columns)
            The phase table.
        y : object
            Ignored.
        groups : array-like of shape (n_phases,), default=None
            Instance id of each phase; overrides the instance column.

        Yields
        ------
        train : ndarray
            Training row indices: phases not in the fold and not overlapping
            its test block (+/- ``gap``).
        test : ndarray
            Test row indices: the phases of the fold's block.

        Raises
        ------
        ValueError
            If a fold would have no test or no training phases (too few
            requests, or a ``gap`` or overlap that swallows the whole trace).
        """
        self._check_params()
        times = _trace_times(X, self.columns, groups)
        block = request_blocks(times, int(self.n_splits))
        n_requests = times.request.max() + 1
        per_fold = np.bincount(block, minlength=self.n_splits)
        if not per_fold.all():
            raise ValueError(
                f"TraceBlockSplit: fold {np.argmin(per_fold)} has no test phases: "
                f"{n_requests} request(s) cannot fill n_splits={self.n_splits} "
                "blocks."
            )
        folds = []
        for k in range(self.n_splits):
            test = block == k
            train = ~test & ~overlapping_test(times, test, float(self.gap))
            if not train.any():
                raise ValueError(
                    f"TraceBlockSplit: fold {k} has no training phases: every "
                    f"request overlaps its test block (+/- gap={self.gap}). Use "
                    "fewer splits, a smaller gap, or GroupKFold over instances."
                )
            folds.append((np.flatnonzero(train), np.flatnonzero(test)))
        yield from folds

    def _iter_test_masks(self, X=None, y=None, groups=None):
        # split() is overridden; BaseCrossValidator only needs this to exist.
        for _, test in self.split(X, y, groups):
            mask = np.zeros(len(X), dtype=bool)
            mask[test] = True
            yield mask


def complete_context_mask(
    X: pd.DataFrame,
    indices,
    *,
    columns: PhaseColumns | dict | None = None,
) -> np.ndarray:
    """Which phases of ``X.iloc[indices]`` keep their full-trace exposures.

    A phase's exposures computed from a subset of the trace equal those of the
    full trace ``X`` (to rounding) when every phase of ``X`` that overlaps it
    on its instance (closed intervals) is in the subset, and it does not end
    at the subset's last time on an instance whose full trace goes on (the
    reference's ``end`` correction moves mass onto the last segment there).

    Parameters
    ----------
    X : DataFrame of shape (n_phases, n_columns)
        The full phase table.
    indices : array-like of int
        Row positions of the subset (e.g. a fold's test indices).
    columns : PhaseColumns, mapping or None, default=None
        Column names (:meth:`~sklearn_beta.PhaseColumns.coerce`); reads
        ``t_start``, ``t_end`` and ``instance_id`` (used when present).

    Returns
    -------
    complete : ndarray of bool, shape (len(indices),)
        True where the subset's exposures of that phase are exact.

    Examples
    --------
    >>> import pandas as pd
    >>> from sklearn_beta.model_selection import complete_context_mask
    >>> X = pd.DataFrame({"t_start": [0.0, 1.0, 5.0], "t_end": [2.0, 3.0, 6.0]})
    >>> complete_context_mask(X, [0, 2]).tolist()
    [False, True]
    """
    frame = X.reset_index(drop=True)
    columns = _present_columns(columns, frame.columns)
    t_start_col, t_end_col = columns.t_start, columns.t_end
    instance_col = columns.instance_id
    needed = [t_start_col, t_end_col] + ([instance_col] if instance_col else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"The phase table is missing column(s) {missing}; it has "
            f"{list(frame.columns)}. Name them with columns={{schema name: column}}."
        )
    t_start = numeric_column(frame, t_start_col, needed)
    t_end = numeric_column(frame, t_end_col, needed)
    if instance_col is None:
        instance = np.zeros(len(frame), dtype=np.intp)
    else:
        instance = pd.factorize(frame[instance_col], sort=True)[0].astype(np.intp)
    indices = np.asarray(indices, dtype=np.intp)
    # Grid indices are exact integer ranks of the times, instance by instance
    # in one flat array, so closed overlap is a comparison of integers.
    grid = build_grid(t_start, t_end, instance)
    start, end = grid.start_idx, grid.end_idx

    def n_overlapping(pool: np.ndarray) -> np.ndarray:
        starts = np.sort(start[pool])
        ends = np.sort(end[pool])
        return np.searchsorted(starts, end[indices], side="right") - np.searchsorted(
            ends, start[indices], side="left"
        )

    complete = n_overlapping(np.arange(len(frame))) == n_overlapping(indices)
    n_inst = instance.max() + 1
    last_full = np.full(n_inst, -1)
    np.maximum.at(last_full, instance, end)
    last_subset = np.full(n_inst, -1)
    np.maximum.at(last_subset, instance[indices], end[indices])
    inst = instance[indices]
    cut_short = (end[indices] == last_subset[inst]) & (
        last_subset[inst] < last_full[inst]
    )
    return complete & ~cut_short
