"""The schedule-consistent fit's input from a Dask phase table.

``ScheduleBetaRegressor`` replays the whole trace on one engine loop per
instance, which needs every request at once, but only a few numbers of each:
its prefill's start, end and tokens, its decode's end and tokens, its
instance and the arrival columns. :func:`collect_requests` reduces each
partition to one record per request where it lives, collects the records
(a request split over two partitions gives two, joined here) and returns the
phase table of those columns alone, one prefill and one decode row per
request in the order of their first appearance, which the estimator then
fits in memory as it fits a pandas table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..core._columns import PhaseColumns
from ..core._ids import phase_kinds
from ._dask_fit import Partitions, _run

__all__ = ["collect_requests"]

#: The kinds of phase, in the order of a request's rows.
KINDS = ("prefill", "decode")


def _read_columns(columns: PhaseColumns, extra: Sequence[str], present) -> list:
    """The columns the fit reads that the table has (the readers raise on
    the missing ones later, with the pandas path's messages)."""
    names = [
        columns.request_id,
        columns.t_start,
        columns.t_end,
        columns.prefill_tokens,
        columns.decode_tokens,
        columns.n_steps,
        columns.instance_id,
        *extra,
    ]
    return [n for n in dict.fromkeys(names) if n is not None and n in present]


def _partition_records(part, columns: PhaseColumns, names: list, index: int):
    """One record per request of a partition: each kind's first row's
    ``names`` (prefixed by the kind), its row count, and where the request
    first appears (partition, row)."""
    rid = columns.request_id
    is_kind = phase_kinds(part[columns.phase_type])
    neither = ~(is_kind[0] | is_kind[1])
    if neither.any():
        raise ValueError(
            f"Column {columns.phase_type!r}: {int(neither.sum())} row(s) of "
            f"partition {index} are neither prefill nor decode; first values: "
            f"{part[columns.phase_type].to_numpy()[neither][:5].tolist()}."
        )
    values = [n for n in names if n != rid]
    records = []
    for kind, rows in zip(KINDS, is_kind, strict=True):
        groups = part.loc[rows, [rid, *values]].groupby(rid, sort=False)
        record = groups.first().add_prefix(f"{kind}:")
        record[f"{kind}:n"] = groups.size()
        records.append(record)
    merged = records[0].join(records[1], how="outer")
    rows = pd.Series(np.arange(len(part)), index=part[rid].to_numpy())
    merged["row"] = rows.groupby(level=0).min().reindex(merged.index)
    merged["partition"] = index
    return merged


def _joined(records: pd.DataFrame, rid: str) -> pd.DataFrame:
    """A request's records of several partitions as one (its first
    appearance's position), every request checked to have one row of each
    kind."""
    records = records.sort_values(["partition", "row"], kind="stable")
    joined = records.groupby(level=0, sort=False).first()
    for kind in KINDS:
        counts = records[f"{kind}:n"].groupby(level=0, sort=False).sum()
        bad = counts.reindex(joined.index).to_numpy() != 1
        if bad.any():
            raise ValueError(
                f"Column {rid!r}: the replay needs one prefill and one decode "
                f"row for every request; {int(bad.sum())} request(s) have no "
                f"or several {kind} rows, first: "
                f"{joined.index[bad][:5].tolist()}."
            )
    return joined


def _phase_table(joined: pd.DataFrame, columns: PhaseColumns, names: list):
    """One prefill and one decode row per request, request after request."""
    rid = columns.request_id
    n = len(joined)
    table = {rid: np.repeat(joined.index.to_numpy(), 2)}
    table[columns.phase_type] = np.tile(np.array(KINDS, dtype=object), n)
    for name in names:
        if name == rid:
            continue
        both = [joined[f"{kind}:{name}"].to_numpy() for kind in KINDS]
        table[name] = np.ravel(np.column_stack(both))
    return pd.DataFrame(table)


def collect_requests(X, columns: PhaseColumns, extra: Sequence[str]) -> pd.DataFrame:
    """The phase table a schedule-consistent fit reads, from a Dask one.

    Parameters
    ----------
    X : dask.dataframe.DataFrame
        The phase table.
    columns : PhaseColumns
        Its column names.
    extra : sequence of str
        Further columns the fit reads (arrivals, prefix-cached tokens,
        intended arrivals), carried where present.

    Returns
    -------
    phases : DataFrame
        Two rows per request (prefill, decode) with the columns read, in the
        order of the requests' first rows in ``X``.

    Raises
    ------
    ValueError
        If a row is neither prefill nor decode, or a request lacks a
        prefill or a decode row or has several.
    """
    missing = [
        c for c in (columns.request_id, columns.phase_type) if c not in X.columns
    ]
    if missing:
        raise ValueError(
            f"The phase table lacks the column(s) {missing}; it has "
            f"{list(X.columns)[:20]}."
        )
    names = _read_columns(columns, extra, X.columns)
    import dask  # optional dependency: the dask extra

    parts = Partitions.of(X)
    call = dask.delayed(_partition_records, pure=True)
    tasks = [call(p, columns, names, i) for i, p in enumerate(parts.items)]
    records = pd.concat(list(_run(dask.compute, tasks)))
    joined = _joined(records, columns.request_id)
    return _phase_table(joined, columns, names)
