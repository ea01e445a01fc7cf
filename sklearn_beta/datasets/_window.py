"""Windows of a trace: what a real export of ``[t0, t1]`` holds.

An engine serves continuously; an export covers a window of wall-clock time
and keeps the requests it selects whole, with every phase as logged. Requests
that ran beside them but were selected out are simply absent, so the pressures
near the window's edges are lower than the engine's real load.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import pandas as pd

from ..core._columns import PhaseColumns
from ..core._constraints import check_option
from ..core._validation import numeric_column, request_codes

CUTS = ("arrival", "completion")


def _check_bound(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}.")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return float(value)


def cut_window(
    phases: pd.DataFrame,
    t0: float,
    t1: float,
    how: str = "arrival",
    *,
    columns: PhaseColumns | dict | None = None,
) -> pd.DataFrame:
    """The phases a real export of the window ``[t0, t1]`` holds.

    Production traces are cut from an engine that was busy before ``t0`` and
    stays busy after ``t1``. An export selects whole requests:

    * ``how="arrival"``: the requests that arrived in ``[t0, t1]``. A phase
      table does not log the arrival itself; the request's earliest
      ``t_start`` (its first step) stands for it, which is what a request
      log keyed on the first scheduled step selects.
    * ``how="completion"``: the requests whose last phase ended in
      ``[t0, t1]``, as span exporters cut (a span is written when it ends).

    Every phase of a selected request is kept as logged, also the parts that
    run outside the window; rows keep their index and order.

    Parameters
    ----------
    phases : DataFrame
        The phase table of the continuous trace (e.g. from
        :func:`simulate_trace`).
    t0, t1 : float
        Window bounds in the trace's time unit, ``t0 < t1``.
    how : {"arrival", "completion"}, default="arrival"
        Which requests the export keeps (see above).
    columns : PhaseColumns, mapping or None, default=None
        Names of the phase-table columns (:meth:`PhaseColumns.coerce`; only
        ``request_id``, ``t_start`` and ``t_end`` are read); None means the
        schema's names.

    Returns
    -------
    window : DataFrame
        The selected rows of ``phases``.

    Raises
    ------
    ValueError
        If ``t0 >= t1``, ``how`` is unknown, a needed column is missing or
        not numeric, a ``request_id`` is missing, or the window selects no
        request.

    Examples
    --------
    >>> from sklearn_beta.datasets import cut_window, simulate_trace
    >>> phases = simulate_trace(300, beta=(5e-3, 2e-5, 8e-5), chunk_size=64,
    ...                         max_num_seqs=32, arrival_rate=20.0,
    ...                         random_state=0)
    >>> window = cut_window(phases, 5.0, 10.0, how="completion")
    >>> bool(window.groupby("request_id")["t_end"].max().between(5, 10).all())
    True
    """
    if not isinstance(phases, pd.DataFrame):
        raise TypeError(
            f"phases must be a pandas DataFrame, got {type(phases).__name__}."
        )
    check_option(how, CUTS, "how")
    t0, t1 = _check_bound(t0, "t0"), _check_bound(t1, "t1")
    if not t0 < t1:
        raise ValueError(f"The window needs t0 < t1, got t0={t0!r}, t1={t1!r}.")
    columns = PhaseColumns.coerce(columns)
    request_col, start_col, end_col = columns.request_id, columns.t_start, columns.t_end
    needed = [request_col, start_col, end_col]
    missing = [c for c in needed if c not in phases.columns]
    if missing:
        raise ValueError(
            f"The phase table is missing column(s) {missing}; it has "
            f"{list(phases.columns)}."
        )
    # Row labels stay: error messages name the caller's rows.
    request = request_codes(phases, request_col, needed)
    if how == "arrival":
        times = numeric_column(phases, start_col, needed)
        per_request = np.full(request.max() + 1, np.inf)
        np.minimum.at(per_request, request, times)
    else:
        times = numeric_column(phases, end_col, needed)
        per_request = np.full(request.max() + 1, -np.inf)
        np.maximum.at(per_request, request, times)
    keep = ((per_request >= t0) & (per_request <= t1))[request]
    if not keep.any():
        what = "first t_start" if how == "arrival" else "last t_end"
        raise ValueError(
            f"The window [{t0:g}, {t1:g}] (how={how!r}) selects no request: "
            f"the requests' {what} runs from {per_request.min():g} to "
            f"{per_request.max():g}."
        )
    return phases.iloc[np.flatnonzero(keep)]
