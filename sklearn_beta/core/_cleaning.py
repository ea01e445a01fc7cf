"""Cleaning damaged phase tables: drop the rows the estimators reject.

:func:`clean_phases` runs the row checks of :mod:`sklearn_beta.core._validation`
and, instead of raising on the first kind of bad row, drops every bad row and
counts it under its first reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._ids import id_codes, repeated_phases
from ._validation import (
    PhaseColumns,
    check_column_types,
    phase_layout,
    row_problems,
)


@dataclass(frozen=True)
class CleaningReport:
    """What :func:`clean_phases` dropped and why.

    Attributes
    ----------
    n_rows_in, n_rows_out : int
        Rows before and after cleaning.
    dropped : dict of str to int
        Rows dropped per reason, each row counted once under its first reason:
        ``missing_request_id``, ``unknown_phase_type``, ``not_a_number``,
        ``not_finite``, ``non_positive_duration`` (zero-length or reversed
        phases), ``bad_count`` (negative, non-integer or huge token/step
        counts), ``missing_instance``, ``exact_duplicate`` (a repeated copy of
        a row; the first copy is kept), ``conflicting_duplicate`` (every row
        of a request that has two different prefill or two different decode
        rows), ``unpaired`` (only with ``drop_unpaired=True``).
    dropped_index : pandas.Index
        Index labels of the dropped rows, in the input's order.
    n_prefill_without_decode, n_decode_without_prefill : int
        Requests with only one phase in the cleaned table (kept unless
        ``drop_unpaired=True``): requests cut at the edges of the trace window.
    """

    n_rows_in: int
    n_rows_out: int
    dropped: dict = field(default_factory=dict)
    dropped_index: pd.Index = field(default_factory=pd.Index)
    n_prefill_without_decode: int = 0
    n_decode_without_prefill: int = 0

    @property
    def n_dropped(self) -> int:
        return self.n_rows_in - self.n_rows_out

    def __str__(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.items() if n)
        text = (
            f"clean_phases kept {self.n_rows_out} of {self.n_rows_in} rows and "
            f"dropped {self.n_dropped}" + (f" ({reasons})" if reasons else "") + "."
        )
        if self.n_prefill_without_decode or self.n_decode_without_prefill:
            text += (
                f" The kept table has {self.n_prefill_without_decode} prefill(s) "
                f"without a decode and {self.n_decode_without_prefill} decode(s) "
                "without a prefill (requests cut at the trace window)."
            )
        return text


_REASONS = (
    "missing_request_id",
    "unknown_phase_type",
    "not_a_number",
    "not_finite",
    "non_positive_duration",
    "bad_count",
    "missing_instance",
    "exact_duplicate",
    "conflicting_duplicate",
    "unpaired",
)


def clean_phases(
    phases: pd.DataFrame,
    *,
    drop_unpaired: bool = False,
    columns: PhaseColumns | dict | None = None,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop the rows the estimators would reject, and say how many and why.

    Production traces carry damage the estimators refuse: NaN or unparsable
    fields, zero-length or reversed phases, unknown phase types, duplicated
    log lines. This returns a copy of the table without those rows and a
    :class:`CleaningReport` counting them per reason; the input is not
    modified. Exact duplicate rows keep their first copy; a request with two
    *different* prefill (or decode) rows is dropped whole, since there is no
    telling which copy is right.

    Requests cut at the trace window (a prefill without its decode, or a
    decode without its prefill) are valid phases whose pressure the other
    phases felt, so they are kept unless ``drop_unpaired=True``.

    Problems of a whole column (missing, boolean or datetime column, empty
    table) still raise, as in the estimators.

    Parameters
    ----------
    phases : DataFrame
        One row per phase.
    drop_unpaired : bool, default=False
        Also drop phases whose request has no phase of the other type.
    columns : PhaseColumns, mapping or None, default=None
        Column names: ``None`` for the schema's names, or a mapping from
        schema names to the frame's columns (see :class:`PhaseColumns`). A
        token column is checked where present and needed only as the
        estimators need it with ``N_steps`` (see docs/method.md).

    Returns
    -------
    cleaned : DataFrame
        The kept rows, with the input's columns, dtypes and index labels.
    report : CleaningReport
        Counts of dropped rows per reason and their index labels.

    Raises
    ------
    TypeError, ValueError
        For problems no row-dropping can fix, or if nothing is left.

    Examples
    --------
    >>> import pandas as pd
    >>> from sklearn_beta import clean_phases
    >>> phases = pd.DataFrame({
    ...     "request_id": ["a", "a", "b", "b"],
    ...     "phase_type": ["prefill", "decode", "prefill", "prefill"],
    ...     "t_start": [0.0, 1.0, 0.5, 0.5], "t_end": [1.0, 3.0, 0.5, 0.5],
    ...     "prefill_tokens": [64, 0, 32, 32], "decode_tokens": [0, 8, 0, 0]})
    >>> cleaned, report = clean_phases(phases)
    >>> print(report)
    clean_phases kept 2 of 4 rows and dropped 2 (2 non_positive_duration).
    """
    if not isinstance(drop_unpaired, bool | np.bool_):
        raise TypeError(f"drop_unpaired must be True or False, got {drop_unpaired!r}.")
    # Dropping rows needs no token column an N_steps column makes optional.
    layout = phase_layout(phases, PhaseColumns.coerce(columns), False)
    check_column_types(phases, layout)
    problems, values = row_problems(phases, layout)
    is_prefill, rid = layout.is_prefill, layout.used["request_id"]
    instance_col = layout.used.get("instance_id")
    reason = np.full(len(phases), "", dtype=object)
    for problem in reversed(problems):  # the first reason wins
        reason[problem.mask] = problem.reason

    keep = reason == ""
    request = np.full(len(phases), -1, dtype=np.intp)
    request[keep] = id_codes(phases[rid][keep], rid, False)
    if keep.any():
        repeat = np.zeros(len(phases), dtype=bool)
        repeat[keep] = repeated_phases(request[keep], is_prefill[keep])
        # Duplicates are judged on the parsed values the method uses, so
        # " 1.0" equals 1.0 and unused cells (which may hold anything) are
        # ignored.
        key = pd.DataFrame(values).assign(_request=request, _prefill=is_prefill)
        if instance_col is not None:
            key["_instance"] = -1
            key.loc[keep, "_instance"] = id_codes(
                phases[instance_col][keep], instance_col, False
            )
        exact = np.zeros(len(phases), dtype=bool)
        exact[keep] = key[keep].duplicated().to_numpy()
        exact &= repeat
        reason[exact] = "exact_duplicate"
        keep &= ~exact
        repeat = np.zeros(len(phases), dtype=bool)
        repeat[keep] = repeated_phases(request[keep], is_prefill[keep])
        conflicting = np.isin(request, np.unique(request[repeat])) & keep
        reason[conflicting] = "conflicting_duplicate"
        keep &= ~conflicting

    lone_prefill, lone_decode = _unpaired(request, is_prefill, keep)
    if drop_unpaired:
        reason[lone_prefill | lone_decode] = "unpaired"
        keep &= ~(lone_prefill | lone_decode)
    if not keep.any():
        raise ValueError(
            f"clean_phases dropped all {len(phases)} rows: none is a valid phase. "
            + str(_report(phases, keep, reason, 0, 0))
        )
    n_lone = (0, 0) if drop_unpaired else (lone_prefill.sum(), lone_decode.sum())
    return phases.loc[keep].copy(), _report(phases, keep, reason, *n_lone)


def _unpaired(request, is_prefill, keep):
    n_req = int(request.max()) + 2
    has_pf = np.bincount(request[keep & is_prefill] + 1, minlength=n_req) > 0
    has_dec = np.bincount(request[keep & ~is_prefill] + 1, minlength=n_req) > 0
    lone_prefill = keep & is_prefill & ~has_dec[request + 1]
    lone_decode = keep & ~is_prefill & ~has_pf[request + 1]
    return lone_prefill, lone_decode


def _report(phases, keep, reason, n_lone_prefill, n_lone_decode) -> CleaningReport:
    dropped = {why: int(np.count_nonzero(reason == why)) for why in _REASONS}
    return CleaningReport(
        n_rows_in=len(phases),
        n_rows_out=int(np.count_nonzero(keep)),
        dropped={k: v for k, v in dropped.items() if v},
        dropped_index=phases.index[~keep],
        n_prefill_without_decode=int(n_lone_prefill),
        n_decode_without_prefill=int(n_lone_decode),
    )
