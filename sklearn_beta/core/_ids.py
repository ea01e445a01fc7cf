"""Integer codes of a phase table's labels: phase kinds, requests, instances.

Hashing a column of ids is a large share of validating a big table, so each
code is made once, and the common cases (a handful of phase labels, a single
instance) skip the per-row work.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def phase_kinds(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Which rows are prefills and which decodes, labels normalised."""

    def normalise(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        kind = values.astype("string").str.strip().str.lower()
        return (
            (kind == "prefill").fillna(False).to_numpy(dtype=bool),
            (kind == "decode").fillna(False).to_numpy(dtype=bool),
        )

    if pd.api.types.is_string_dtype(column.dtype):
        # The usual table holds exactly "prefill" and "decode": two vectorised
        # comparisons decide it, at a fraction of hashing every row.
        prefill = (column == "prefill").to_numpy(dtype=bool, na_value=False)
        decode = (column == "decode").to_numpy(dtype=bool, na_value=False)
        if np.all(prefill | decode):
            return prefill, decode
    try:
        codes, labels = pd.factorize(column)
    except TypeError:  # unhashable cells (lists, dicts): per row, slowly
        return normalise(column)
    # Normalising only the few distinct labels, as str() then strip and lower
    # (what astype("string") does to each), keeps a 1e6-row table fast.
    kinds = [str(label).strip().lower() for label in labels]
    label_prefill = np.array([kind == "prefill" for kind in kinds], dtype=bool)
    label_decode = np.array([kind == "decode" for kind in kinds], dtype=bool)
    # Code -1 marks a missing label: it picks the False appended at the end.
    return np.append(label_prefill, False)[codes], np.append(label_decode, False)[codes]


def id_codes(column: pd.Series, name: str, sort: bool) -> np.ndarray:
    """Codes 0..k-1 of the ids, by first appearance (``sort=False``) or value."""
    codes = _counted_up(column)
    if codes is not None:
        return codes
    try:
        return pd.factorize(column, sort=sort)[0].astype(np.intp)
    except TypeError as exc:
        raise TypeError(
            f"Column {name!r} must hold hashable ids (strings or numbers): {exc}."
        ) from None


def _counted_up(column: pd.Series) -> np.ndarray | None:
    """The codes of integer ids numbered in the order they first appear.

    Exports and simulators number requests 0, 1, 2, ... as they arrive; then
    ``id - first id`` is the code, both by first appearance and by value,
    found in one pass instead of hashing every row. That holds exactly when
    the first id is the smallest and the running maximum never jumps by
    more than one (every id in between then appears, first, as the maximum
    reaches it). None otherwise.
    """
    # Plain numpy integers only: nullable ones may hold <NA>.
    dtype = column.dtype
    if len(column) == 0 or not (isinstance(dtype, np.dtype) and dtype.kind in "iu"):
        return None
    values = column.to_numpy()
    running = np.maximum.accumulate(values)
    if values[0] != values.min() or np.any(np.diff(running) > 1):
        return None
    return (values - values[0]).astype(np.intp)


def repeated_phases(request: np.ndarray, is_prefill: np.ndarray) -> np.ndarray:
    """Rows whose request has more than one row of the same phase type."""
    key = 2 * request + is_prefill
    counts = np.bincount(key, minlength=2 * (request.max() + 1))
    return counts[key] > 1


def instance_codes(column: pd.Series, name: str) -> np.ndarray | None:
    """Sorted int codes 0..k-1 of the instance ids; None for a single instance.

    One instance (the common case, and every simulated single-engine trace)
    is found from the column's extremes, without hashing every row.
    """
    if pd.api.types.is_numeric_dtype(column) and column.min() == column.max():
        return None
    codes = id_codes(column, name, sort=True)
    return None if not codes.any() else codes
