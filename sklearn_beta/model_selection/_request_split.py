"""Held-out evaluation by requests: folds of whole requests, and the
held-out replay error of an estimator that replays a whole trace
(``ScheduleBetaRegressor`` with ``trace=``, docs/schedule.md).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state

from ..core._columns import PhaseColumns
from ..core._validation import request_codes

__all__ = ["RequestKFold", "make_schedule_scorer"]

#: What the scorer compares per request: (start, end) of the latency.
QUANTITIES = {
    "ttft": ("arrival", "prefill_end"),
    "decode": ("prefill_end", "decode_end"),
    "e2e": ("arrival", "decode_end"),
}


class RequestKFold(BaseCrossValidator):
    """K folds of whole requests (both phases of a request in one fold).

    For held-out evaluation on traces too short, or too saturated, for time
    blocks (:class:`TraceBlockSplit`): request ``i`` (in order of first
    appearance, or of a shuffled order) goes to fold ``i % n_splits``, so
    every fold spreads over the whole trace. Use it with an estimator that
    replays the whole trace and fits or scores the fold's requests
    (:class:`ScheduleBetaRegressor` with ``trace=``): a subset alone would be
    an engine with less load on it.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.
    shuffle : bool, default=False
        Shuffle the requests before dealing them out.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffle; only with ``shuffle=True``.
    columns : PhaseColumns, mapping or None, default=None
        Column names; the split reads ``request_id``.

    Examples
    --------
    >>> import pandas as pd
    >>> from sklearn_beta.model_selection import RequestKFold
    >>> X = pd.DataFrame({"request_id": [0, 0, 1, 1, 2, 2]})
    >>> [test.tolist() for _, test in RequestKFold(3).split(X)]
    [[0, 1], [2, 3], [4, 5]]
    """

    def __init__(self, n_splits=5, *, shuffle=False, random_state=None, columns=None):
        if isinstance(n_splits, bool) or not isinstance(n_splits, Integral):
            raise TypeError(f"n_splits must be an integer, got {n_splits!r}.")
        if n_splits < 2:
            raise ValueError(f"n_splits must be at least 2, got {n_splits}.")
        if not shuffle and random_state is not None:
            raise ValueError("random_state has no effect without shuffle=True.")
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state
        self.columns = columns

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of folds.

        Returns
        -------
        n_splits : int
        """
        return self.n_splits

    def _iter_test_masks(self, X=None, y=None, groups=None):
        if not isinstance(X, pd.DataFrame):
            raise TypeError(
                "RequestKFold reads request ids from a DataFrame, got "
                f"{type(X).__name__}."
            )
        name = PhaseColumns.coerce(self.columns).request_id
        if name not in X.columns:
            raise ValueError(f"Column {name!r} (request ids) is not in X.")
        codes = request_codes(X, name, [name])
        n_req = int(codes.max()) + 1
        if n_req < self.n_splits:
            raise ValueError(
                f"Cannot split {n_req} request(s) into n_splits={self.n_splits} folds."
            )
        rank = np.arange(n_req)
        if self.shuffle:
            rank = check_random_state(self.random_state).permutation(n_req)
        fold = (rank % self.n_splits)[codes]
        for k in range(self.n_splits):
            yield fold == k


def make_schedule_scorer(quantity: str = "ttft"):
    """Held-out replay error of a fitted :class:`ScheduleBetaRegressor`.

    The scorer replays the estimator's whole ``trace`` (or ``X`` itself when
    it has none) with the fitted coefficients and returns minus the mean
    absolute relative error of ``quantity`` over the requests of ``X``:
    greater is better, as scikit-learn expects.

    Parameters
    ----------
    quantity : {"ttft", "decode", "e2e"}, default="ttft"
        See :func:`~sklearn_beta.replay.replay_errors`.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y=None) -> float``; ``estimator`` is the
        regressor or a pipeline ending in it.

    Examples
    --------
    >>> from sklearn_beta.datasets import simulate_trace
    >>> from sklearn_beta import ScheduleBetaRegressor
    >>> from sklearn_beta.model_selection import make_schedule_scorer
    >>> phases = simulate_trace(200, beta=(5e-3, 2e-5, 8e-5), chunk_size=64,
    ...                         max_num_seqs=16, arrival_rate=20.0,
    ...                         random_state=0)
    >>> model = ScheduleBetaRegressor(64, max_num_seqs=16, arrival=None)
    >>> scorer = make_schedule_scorer("e2e")
    >>> round(-scorer(model.fit(phases), phases), 6)
    0.0
    """
    if quantity not in QUANTITIES:
        raise ValueError(
            f"quantity must be one of {list(QUANTITIES)}, got {quantity!r}."
        )
    start, end = QUANTITIES[quantity]

    def scorer(estimator, X, y=None):
        model = estimator[-1] if isinstance(estimator, Pipeline) else estimator
        if not callable(getattr(model, "replay", None)):
            raise TypeError(
                "make_schedule_scorer scores a fitted ScheduleBetaRegressor (or a "
                f"pipeline ending in one), got {type(model).__name__}."
            )
        replayed = model.replay(X)
        # the relative errors of sklearn_beta.replay.replay_errors
        observed_start = "arrival" if start == "arrival" else "observed_" + start
        predicted = replayed[end].to_numpy() - replayed[start].to_numpy()
        observed = (
            replayed["observed_" + end].to_numpy() - replayed[observed_start].to_numpy()
        )
        return -float(np.mean(np.abs((predicted - observed) / observed)))

    return scorer
