"""Validation of the phase table: the public layer's input contract.

Everything below the public layer works on the plain arrays of
:class:`PhaseArrays`; DataFrames never travel further than this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import pandas as pd

PHASE_TYPES = ("prefill", "decode")
_STEP_TOL = 1e-6
_MAX_SHOWN = 5


@dataclass(frozen=True)
class PhaseColumns:
    """Names of the phase-table columns (METHOD.md section 2)."""

    request_id: str = "request_id"
    phase_type: str = "phase_type"
    t_start: str = "t_start"
    t_end: str = "t_end"
    prefill_tokens: str = "prefill_tokens"
    decode_tokens: str = "decode_tokens"
    n_steps: str | None = "N_steps"
    instance: str | None = None

    def required(self) -> list[str]:
        return [
            self.request_id,
            self.phase_type,
            self.t_start,
            self.t_end,
            self.prefill_tokens,
            self.decode_tokens,
        ]


@dataclass(frozen=True)
class PhaseArrays:
    """The phase table as validated, aligned 1-D arrays (one entry per phase).

    ``t_start`` and ``t_end`` are already shifted so that each instance's
    earliest time is 0: differences of epoch timestamps (~1.7e9 s) would
    otherwise lose about seven significant digits.
    """

    request: np.ndarray  # int codes of request_id
    is_prefill: np.ndarray  # bool
    t_start: np.ndarray  # float64, per-instance shifted
    t_end: np.ndarray  # float64, per-instance shifted
    prefill_tokens: np.ndarray  # float64
    decode_tokens: np.ndarray  # float64
    n_steps: np.ndarray | None  # float64 (integer valued) or None
    instance: np.ndarray  # int codes, 0 when the trace has one instance
    time_origin: np.ndarray  # float64, the shift applied, one per instance code

    @property
    def n_phases(self) -> int:
        return self.t_start.shape[0]

    @property
    def duration(self) -> np.ndarray:
        return self.t_end - self.t_start


def _show_rows(frame: pd.DataFrame, mask: np.ndarray, columns: list[str]) -> str:
    rows = frame.loc[np.asarray(mask), [c for c in columns if c in frame.columns]]
    text = rows.head(_MAX_SHOWN).to_string()
    n_bad = int(np.count_nonzero(mask))
    more = f"\n... and {n_bad - _MAX_SHOWN} more" if n_bad > _MAX_SHOWN else ""
    return f"{n_bad} offending row(s), first ones:\n{text}{more}"


def _numeric_column(frame: pd.DataFrame, name: str, context: list[str]) -> np.ndarray:
    column = frame[name]
    if pd.api.types.is_bool_dtype(column):
        raise TypeError(
            f"Column {name!r} is boolean; it must hold numbers. First rows:\n"
            f"{frame[context].head(_MAX_SHOWN).to_string()}"
        )
    if not pd.api.types.is_numeric_dtype(column):
        converted = pd.to_numeric(column, errors="coerce")
        bad = converted.isna().to_numpy() & column.notna().to_numpy()
        if bad.any():
            raise TypeError(
                f"Column {name!r} must be numeric; these values are not numbers. "
                + _show_rows(frame, bad, context)
            )
        column = converted
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"Column {name!r} has NaN or infinite values. "
            + _show_rows(frame, bad, context)
        )
    return values


def _integer_valued(
    frame: pd.DataFrame, values: np.ndarray, name: str, context: list[str], mask=None
) -> None:
    bad = (values < 0) | (np.abs(values - np.round(values)) > _STEP_TOL)
    if mask is not None:
        bad &= mask
    if bad.any():
        raise ValueError(
            f"Column {name!r} must hold non-negative integers. "
            + _show_rows(frame, bad, context)
        )


def check_chunk_size(chunk_size) -> int:
    """Return ``chunk_size`` as an int, or raise if it is not a positive integer."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral | float):
        raise TypeError(
            f"chunk_size must be a positive integer, got {chunk_size!r} "
            f"of type {type(chunk_size).__name__}."
        )
    if isinstance(chunk_size, float) and not chunk_size.is_integer():
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    return int(chunk_size)


def _phase_kind(frame: pd.DataFrame, name: str, context: list[str]) -> np.ndarray:
    # Case and surrounding whitespace are forgiven ("Prefill ", "DECODE"):
    # exporters differ, the meaning does not.
    raw = frame[name]
    normalised = raw.astype("string").str.strip().str.lower()
    is_prefill = (normalised == "prefill").fillna(False).to_numpy(dtype=bool)
    is_decode = (normalised == "decode").fillna(False).to_numpy(dtype=bool)
    bad = ~(is_prefill | is_decode)
    if bad.any():
        raise ValueError(
            f"Column {name!r} must be 'prefill' or 'decode'. "
            + _show_rows(frame, bad, context)
        )
    return is_prefill


def check_phases(phases, columns: PhaseColumns) -> PhaseArrays:
    """Validate a phase table and return it as :class:`PhaseArrays`.

    Raises
    ------
    TypeError
        If ``phases`` is not a DataFrame or a column has the wrong type.
    ValueError
        For missing columns, bad values or an inconsistent table; the message
        names the column and shows the first offending rows.
    """
    if not isinstance(phases, pd.DataFrame):
        raise TypeError(
            "phases must be a pandas DataFrame with one row per phase, "
            f"got {type(phases).__name__}."
        )
    required = columns.required()
    if columns.instance is not None:
        required = required + [columns.instance]
    missing = [c for c in required if c not in phases.columns]
    if missing:
        raise ValueError(
            f"The phase table is missing column(s) {missing}; "
            f"it has {list(phases.columns)}."
        )
    if len(phases) == 0:
        raise ValueError("The phase table is empty: there is nothing to fit.")
    frame = phases.reset_index(drop=True)
    context = list(dict.fromkeys(required))

    if frame[columns.request_id].isna().any():
        bad = frame[columns.request_id].isna().to_numpy()
        raise ValueError(
            f"Column {columns.request_id!r} has missing values. "
            + _show_rows(frame, bad, context)
        )
    is_prefill = _phase_kind(frame, columns.phase_type, context)
    t_start = _numeric_column(frame, columns.t_start, context)
    t_end = _numeric_column(frame, columns.t_end, context)
    prefill_tokens = _numeric_column(frame, columns.prefill_tokens, context)
    decode_tokens = _numeric_column(frame, columns.decode_tokens, context)

    bad = t_end <= t_start
    if bad.any():
        raise ValueError(
            f"Column {columns.t_end!r} must be greater than {columns.t_start!r}. "
            + _show_rows(frame, bad, context)
        )
    _integer_valued(frame, prefill_tokens, columns.prefill_tokens, context, is_prefill)
    _integer_valued(frame, decode_tokens, columns.decode_tokens, context, ~is_prefill)

    n_steps = None
    if columns.n_steps is not None and columns.n_steps in frame.columns:
        n_steps = _numeric_column(frame, columns.n_steps, context + [columns.n_steps])
        _integer_valued(frame, n_steps, columns.n_steps, context + [columns.n_steps])
        n_steps = np.round(n_steps)

    request = pd.factorize(frame[columns.request_id], sort=False)[0]
    _check_one_phase_of_each_kind(frame, request, is_prefill, columns, context)

    if columns.instance is None:
        instance = np.zeros(len(frame), dtype=np.intp)
    else:
        inst_col = frame[columns.instance]
        if inst_col.isna().any():
            raise ValueError(
                f"Column {columns.instance!r} has missing values. "
                + _show_rows(frame, inst_col.isna().to_numpy(), context)
            )
        instance = pd.factorize(inst_col, sort=True)[0].astype(np.intp)

    n_instances = int(instance.max()) + 1
    origin = np.full(n_instances, np.inf)
    np.minimum.at(origin, instance, t_start)
    return PhaseArrays(
        request=request.astype(np.intp),
        is_prefill=is_prefill,
        t_start=t_start - origin[instance],
        t_end=t_end - origin[instance],
        prefill_tokens=prefill_tokens,
        decode_tokens=decode_tokens,
        n_steps=n_steps,
        instance=instance,
        time_origin=origin,
    )


def _check_one_phase_of_each_kind(frame, request, is_prefill, columns, context):
    for kind, mask in (("prefill", is_prefill), ("decode", ~is_prefill)):
        counts = np.bincount(request[mask], minlength=request.max() + 1)
        dup = mask & (counts[request] > 1)
        if dup.any():
            raise ValueError(
                f"Column {columns.request_id!r}: a request may have at most one "
                f"{kind} row. " + _show_rows(frame, dup, context)
            )
