"""Validation of the phase table: the public layer's input contract.

Everything below the public layer works on the plain arrays of
:class:`PhaseArrays`; DataFrames never travel further than this module.

:func:`check_phases` raises on the first kind of bad row it finds, with a
one-paragraph message that starts with the published implementation's phrase
and goes on to name the column and show the first offending rows.
:func:`sklearn_beta.core._cleaning.clean_phases` runs the same column and row
checks (:func:`phase_layout`, :func:`row_problems`) and drops the bad rows
instead. Problems that dropping rows cannot fix (a missing column, a boolean
or datetime column, an empty table) raise in both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from ._columns import OPTIONAL_COLUMNS, PhaseArrays, PhaseColumns
from ._ids import id_codes, instance_codes, phase_kinds, repeated_phases

PHASE_TYPES = ("prefill", "decode")
_STEP_TOL = 1e-6
# Token and step counts beyond 2**53 are no longer exact integers in float64.
_MAX_COUNT = 2.0**53
_MAX_SHOWN = 5
_CLEAN_HINT = (
    " To drop such rows instead, pass the table through "
    "sklearn_beta.clean_phases(), which reports how many it dropped."
)


#: How the published messages name each column: the schema's spelling.
_SCHEMA_NAME = {"n_steps": "N_steps"}
_NUMERIC = ("t_start", "t_end", "prefill_tokens", "decode_tokens", "n_steps")
_COUNTS = ("prefill_tokens", "decode_tokens", "n_steps")
#: Columns read on every row (the token columns only on their phase's rows).
_EVERY_ROW = ("t_start", "t_end", "n_steps")


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


def _format_value(value) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(float(value))
    return repr(value)


def describe_rows(frame: pd.DataFrame, mask: np.ndarray, columns: list[str]) -> str:
    """One line listing how many rows ``mask`` selects and the first five.

    Rows are named by the caller's index labels, so the user can find them.
    """
    positions = np.flatnonzero(mask)
    shown = [c for c in dict.fromkeys(columns) if c in frame.columns]
    rows = []
    for pos in positions[:_MAX_SHOWN]:
        values = ", ".join(f"{c}={_format_value(frame[c].iloc[pos])}" for c in shown)
        rows.append(f"row {_format_value(frame.index[pos])} ({values})")
    n_more = positions.size - _MAX_SHOWN
    more = f"; and {n_more} more" if n_more > 0 else ""
    return f"{positions.size} offending row(s): " + "; ".join(rows) + more + "."


# --------------------------------------------------------------------------
# Column-level checks: dropping rows cannot fix these
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Which schema columns the frame has and the method uses."""

    used: dict  # schema name -> frame column, for the columns read
    is_prefill: np.ndarray
    is_decode: np.ndarray

    @property
    def context(self) -> list:
        """Columns shown next to an offending row."""
        return list(dict.fromkeys(self.used.values()))


def phase_layout(phases, columns: PhaseColumns, need_prefill_tokens: bool) -> _Layout:
    """Column-level checks; the columns to read, and each row's phase type.

    The published rule on step counts: with an ``N_steps`` column they come
    from it, so ``decode_tokens`` is not needed and ``prefill_tokens`` only
    for the partial-chunk correction of prefill rows. A token column is
    needed only if the table has rows of its phase type.
    """
    if not isinstance(phases, pd.DataFrame):
        raise TypeError(
            "phases must be a pandas DataFrame with one row per phase, "
            f"got {type(phases).__name__}."
        )
    if isinstance(phases.columns, pd.MultiIndex):
        raise TypeError(
            "The phase table has multi-level column labels; flatten them to one "
            "name per column first, e.g. df.columns = "
            "df.columns.get_level_values(-1)."
        )
    if len(phases) == 0:
        raise ValueError("No phase rows: the phase table is empty, nothing to fit.")
    names = {item.name: getattr(columns, item.name) for item in fields(columns)}
    present = {k: v for k, v in names.items() if v is not None and v in phases.columns}
    duplicated = []
    if not phases.columns.is_unique:
        repeated = phases.columns[phases.columns.duplicated()]
        duplicated = sorted({str(c) for c in present.values() if c in repeated})
    if duplicated:
        raise ValueError(
            f"The phase table has several columns named {duplicated}; "
            "each column name must appear once."
        )
    if "phase_type" in present:
        is_prefill, is_decode = phase_kinds(phases[columns.phase_type])
        has_prefill, has_decode = is_prefill.any(), is_decode.any()
    else:
        is_prefill = is_decode = np.zeros(len(phases), dtype=bool)
        has_prefill = has_decode = True
    has_n_steps = "n_steps" in present
    needed = {
        "prefill_tokens": has_prefill and (need_prefill_tokens or not has_n_steps),
        "decode_tokens": has_decode and not has_n_steps,
    }
    for name, default in OPTIONAL_COLUMNS.items():  # named on purpose: must be there
        needed[name] = names[name] not in (None, default)
    missing = [v for k, v in names.items() if needed.get(k, True) and k not in present]
    missing = list(dict.fromkeys(missing))  # one column may serve two fields
    if missing:
        raise ValueError(
            f"Missing required columns: {missing}. The phase table has "
            f"{list(phases.columns)[:20]}; rename its columns or name them with "
            "columns={schema name: column name}."
        )
    return _Layout(present, is_prefill, is_decode)


def check_column_types(frame: pd.DataFrame, layout: _Layout) -> None:
    for name in _NUMERIC:
        if name in layout.used:
            _check_column_type(frame, layout.used[name])


def _check_column_type(frame: pd.DataFrame, name: str) -> None:
    column = frame[name]
    kind = None
    if pd.api.types.is_bool_dtype(column):
        kind = "boolean"
    elif pd.api.types.is_datetime64_any_dtype(column):
        kind = "a datetime"
    elif pd.api.types.is_timedelta64_dtype(column):
        kind = "a timedelta"
    elif pd.api.types.is_complex_dtype(column):
        kind = "complex"
    if kind is not None:
        hint = ""
        if "date" in kind or "delta" in kind:
            hint = (
                " Convert it to float seconds first, e.g. "
                f"(df[{name!r}] - df[{name!r}].min()).dt.total_seconds()."
            )
        raise TypeError(
            f"Column {name!r} is {kind} (dtype {column.dtype}); it must hold "
            f"real numbers (seconds for times, counts for tokens).{hint}"
        )


def _is_bool(value) -> bool:
    return isinstance(value, bool | np.bool_)


# --------------------------------------------------------------------------
# Row-level checks: each yields a mask of bad rows
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _RowProblem:
    reason: str  # key in CleaningReport.dropped
    error: type  # exception check_phases raises
    message: str  # what is wrong, naming the column
    mask: np.ndarray


def _as_numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Float values of a column and the mask of entries that are not numbers."""
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(
            len(column), dtype=bool
        )
    present = ~pd.isna(column).to_numpy(dtype=bool)
    if column.dtype == object:
        # pandas would read True as 1: a flag is not a count or a time.
        column = column.mask(column.map(_is_bool).astype(bool))
    try:
        converted = pd.to_numeric(column, errors="coerce")
    except (TypeError, ValueError):
        # Unhashable or exotic objects (lists, dicts): judge them one by one.
        converted = pd.to_numeric(
            column.map(lambda v: v if pd.api.types.is_scalar(v) else np.nan),
            errors="coerce",
        )
    values = pd.Series(converted).to_numpy(dtype=np.float64, na_value=np.nan)
    return values, present & np.isnan(values)


def numeric_column(frame: pd.DataFrame, name: str, context: list[str]) -> np.ndarray:
    """Finite float values of one column, checked as :func:`check_phases` does.

    For other modules that read a few columns of a phase table (e.g. the
    cross-validation splitters): same types accepted, same messages.
    """
    _check_column_type(frame, name)
    values, not_number = _as_numbers(frame[name])
    if not_number.any():
        raise TypeError(
            f"Column {name!r} must be numeric; these values are not numbers. "
            + describe_rows(frame, not_number, context)
        )
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"Column {name!r} has NaN, missing or infinite values. "
            + describe_rows(frame, bad, context)
        )
    return values


def row_problems(frame: pd.DataFrame, layout: _Layout):
    """Check every row; return the problems found and the parsed values.

    Values of a token column on rows of the other phase type are not used by
    the method, so they are neither checked nor kept (set to 0). Each message
    starts with the published implementation's phrase, which scripts match.
    The problems come in the order :func:`check_phases` reports the first of.
    """
    used = layout.used
    rows_of = _rows_of_columns(layout, len(frame))
    problems = _identity_problems(frame, layout)
    values = {}
    integral = set()
    for key in _NUMERIC:
        if key not in used:
            continue
        values[key], found = _column_values(frame[used[key]], key, rows_of[key])
        problems += found
        if _is_integer_column(frame, layout, key):
            integral.add(key)
    problems += _duration_problems(values, used)
    for key in _COUNTS:
        if key in values:
            problems += _count_problems(
                values[key], key, used[key], rows_of[key], key in integral
            )
    if "instance_id" in used:
        problems += _problem(
            "missing_instance",
            ValueError,
            f"Column {used['instance_id']!r} has missing values.",
            pd.isna(frame[used["instance_id"]]).to_numpy(dtype=bool),
        )
    return problems, values


def _problem(reason: str, error: type, message: str, mask) -> list[_RowProblem]:
    """The problem of the rows in ``mask``, as a list: empty when none is bad."""
    mask = np.asarray(mask, dtype=bool)
    return [_RowProblem(reason, error, message, mask)] if mask.any() else []


def _rows_of_columns(layout: _Layout, n_rows: int) -> dict:
    """The rows each numeric column is read on: a token column only on the
    rows of its phase type."""
    everywhere = np.ones(n_rows, dtype=bool)
    return {
        "t_start": everywhere,
        "t_end": everywhere,
        "prefill_tokens": layout.is_prefill,
        "decode_tokens": layout.is_decode,
        "n_steps": everywhere,
    }


def _identity_problems(frame: pd.DataFrame, layout: _Layout) -> list[_RowProblem]:
    """Rows without a request id, and rows of neither phase type."""
    rid = layout.used["request_id"]
    problems = _problem(
        "missing_request_id",
        ValueError,
        f"Column {rid!r} has missing values.",
        pd.isna(frame[rid]).to_numpy(dtype=bool),
    )
    # Case and surrounding whitespace are forgiven ("Prefill ", "DECODE"):
    # exporters differ, the meaning does not.
    problems += _problem(
        "unknown_phase_type",
        ValueError,
        f"phase_type must be one of {list(PHASE_TYPES)} (column "
        f"{layout.used['phase_type']!r}; case and surrounding spaces are ignored).",
        ~(layout.is_prefill | layout.is_decode),
    )
    return problems


def _column_values(
    column: pd.Series, key: str, rows: np.ndarray
) -> tuple[np.ndarray, list[_RowProblem]]:
    """A numeric column's float values (0 where not read or not finite) and
    its entries that are not numbers or not finite, on the rows it is read."""
    name = column.name
    numbers, not_number = _as_numbers(column)
    problems = []
    # Masks are built only where a one-pass look (a sum, a minimum) finds
    # something to show: on a clean table each column is read once or twice.
    if not_number.any():
        problems += _problem(
            "not_a_number",
            TypeError,
            f"Column {name!r} must be numeric; these values are not numbers.",
            not_number & rows,
        )
    if np.isfinite(np.sum(numbers)):
        return (numbers if key in _EVERY_ROW else np.where(rows, numbers, 0)), problems
    finite = np.isfinite(numbers)
    problems += _problem(
        "not_finite",
        ValueError,
        f"Column {name!r} has NaN, missing or infinite values.",
        ~finite & ~not_number & rows,
    )
    return np.where(rows & finite, numbers, 0.0), problems


def _duration_problems(values: dict, used: dict) -> list[_RowProblem]:
    """Phases that do not end after they start."""
    return _problem(
        "non_positive_duration",
        ValueError,
        f"non-positive durations: column {used['t_end']!r} must be greater than "
        f"column {used['t_start']!r} (zero-length and reversed phases have no "
        "step density).",
        values["t_end"] <= values["t_start"],
    )


def _count_problems(
    counts: np.ndarray, key: str, name: str, rows: np.ndarray, integral: bool
) -> list[_RowProblem]:
    """Negative counts, then counts that are not whole numbers below 2**53."""
    label = _SCHEMA_NAME.get(key, key)
    problems = []
    # Off the column's rows the counts are 0: neither negative nor fractional.
    if counts.size and np.min(counts) < 0:
        problems += _problem(
            "bad_count",
            ValueError,
            f"{label} contains negative values (column {name!r}).",
            (counts < 0) & rows,
        )
    if _whole_numbers(counts, integral):
        return problems
    fractional = np.abs(counts - np.round(counts)) > _STEP_TOL
    problems += _problem(
        "bad_count",
        ValueError,
        f"{label} must be integer-valued (column {name!r}: whole numbers "
        "within 1e-6, below 2**53).",
        (counts >= 0) & ((counts >= _MAX_COUNT) | fractional),
    )
    return problems


def _is_integer_column(frame: pd.DataFrame, layout: _Layout, key: str) -> bool:
    return pd.api.types.is_integer_dtype(frame[layout.used[key]])


def _whole_numbers(values: np.ndarray, integral: bool) -> bool:
    """Whether every value is a whole number below 2**53 (within 1e-6)."""
    if not values.size:
        return True
    if np.max(values) >= _MAX_COUNT:
        return False
    if integral:  # read from an integer column: whole by construction
        return True
    deviation = np.round(values)
    deviation -= values
    return bool(np.max(np.abs(deviation, out=deviation)) <= _STEP_TOL)


def request_codes(frame: pd.DataFrame, name: str, context: list[str]) -> np.ndarray:
    """Int codes of the request ids in column ``name``, in order of appearance.

    For other modules that read a few columns of a phase table: a missing
    id is named with its rows, as :func:`check_phases` does.
    """
    ids = frame[name]
    if ids.isna().any():
        raise ValueError(
            f"Column {name!r} has missing values. "
            + describe_rows(frame, ids.isna().to_numpy(), context)
        )
    return id_codes(ids, name, sort=False)


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def check_phases(
    phases, columns: PhaseColumns | None, *, need_prefill_tokens: bool = True
) -> PhaseArrays:
    """Validate a phase table and return it as :class:`PhaseArrays`.

    The table is never modified.

    Parameters
    ----------
    phases : DataFrame
        One row per phase.
    columns : PhaseColumns, mapping or None
        Column names, as :meth:`PhaseColumns.coerce` reads them.
    need_prefill_tokens : bool, default=True
        Whether the prefill rows' token counts are needed even when an
        ``N_steps`` column gives the step counts: the caller passes
        ``correction_mode != "none"``, since only the partial-chunk
        correction uses them then.

    Raises
    ------
    TypeError
        If ``phases`` is not a DataFrame or a column has the wrong type.
    ValueError
        For missing columns, bad values or an inconsistent table; the message
        starts with the published implementation's phrase, then names the
        column and shows the first offending rows.
    """
    columns = PhaseColumns.coerce(columns)
    layout = phase_layout(phases, columns, need_prefill_tokens)
    check_column_types(phases, layout)
    problems, values = row_problems(phases, layout)
    if problems:
        first = problems[0]
        raise first.error(
            f"{first.message} {describe_rows(phases, first.mask, layout.context)}"
            + _CLEAN_HINT
        )
    rid = layout.used["request_id"]
    request = id_codes(phases[rid], rid, sort=False)
    repeated = repeated_phases(request, layout.is_prefill)
    for kind, rows in (("prefill", layout.is_prefill), ("decode", layout.is_decode)):
        if repeated.any() and np.any(repeated & rows):
            raise ValueError(
                f"Multiple {kind} rows per request (column {rid!r}; duplicated "
                "log lines?): a request may have at most one prefill row and one "
                "decode row. "
                + describe_rows(phases, repeated & rows, layout.context)
                + _CLEAN_HINT
            )
    instance = None
    if "instance_id" in layout.used:
        name = layout.used["instance_id"]
        instance = instance_codes(phases[name], name)
    return _shifted_arrays(phases, layout, request, values, instance)


def _shifted_arrays(phases, layout, request, values, instance):
    if instance is None:  # one instance: one origin, no per-row lookups
        origin = np.array([np.min(values["t_start"])])
        start = values["t_start"] - origin[0]
        end = values["t_end"] - origin[0]
        instance = np.zeros(len(phases), dtype=np.intp)
    else:
        origin = np.full(int(instance.max()) + 1, np.inf)
        np.minimum.at(origin, instance, values["t_start"])
        start = values["t_start"] - origin[instance]
        end = values["t_end"] - origin[instance]
    # Times so far apart that float64 cannot resolve a phase once shifted
    # (e.g. 1e-3 s phases next to 1e300 s) would give zero or infinite lengths.
    bad = ~np.isfinite(end) | (end <= start)
    if bad.any():
        used = layout.used
        raise ValueError(
            f"non-positive durations: columns {used['t_start']!r}/{used['t_end']!r} "
            "span too wide a range for float64: once each instance's earliest "
            "time is moved to 0, these phases have zero or infinite length. "
            + describe_rows(phases, bad, layout.context)
        )
    # Counts within 1e-6 of whole numbers become whole; those read from an
    # integer column already are.
    counts = {
        k: values[k] if _is_integer_column(phases, layout, k) else np.round(values[k])
        for k in _COUNTS
        if k in values
    }
    return PhaseArrays(
        request=request,
        is_prefill=layout.is_prefill,
        t_start=start,
        t_end=end,
        prefill_tokens=counts.get("prefill_tokens"),
        decode_tokens=counts.get("decode_tokens"),
        n_steps=counts.get("n_steps"),
        instance=instance,
        time_origin=origin,
    )
