"""Validation of the phase table: the public layer's input contract.

Everything below the public layer works on the plain arrays of
:class:`PhaseArrays`; DataFrames never travel further than this module.

Two entry points share one set of row checks:

* :func:`check_phases` raises on the first kind of bad row it finds, with a
  one-paragraph message naming the column and showing the first offending
  rows (the published implementation's behaviour, extended);
* :func:`clean_phases` drops the bad rows instead and says how many it
  dropped and why, for traces damaged by real-world logging.

Problems that dropping rows cannot fix (a missing column, a boolean or
datetime column, an empty table) raise in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from numbers import Integral, Real

import numpy as np
import pandas as pd

PHASE_TYPES = ("prefill", "decode")
_STEP_TOL = 1e-6
# Token and step counts beyond 2**53 are no longer exact integers in float64.
_MAX_COUNT = 2.0**53
_MAX_SHOWN = 5
_CLEAN_HINT = (
    " To drop such rows instead, pass the table through "
    "sklearn_beta.clean_phases(), which reports how many it dropped."
)


#: The reference schema's column names, in order (METHOD.md section 2).
PHASE_COLUMNS = (
    "request_id",
    "phase_type",
    "t_start",
    "t_end",
    "prefill_tokens",
    "decode_tokens",
)


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
    instance_id: str | None = "instance_id"

    @classmethod
    def coerce(cls, columns) -> PhaseColumns:
        """The :class:`PhaseColumns` of ``None``, a ``PhaseColumns`` or a mapping
        {schema name: frame column} (unknown keys raise ValueError)."""
        if columns is None:
            return cls()
        if isinstance(columns, cls):
            return columns
        if not isinstance(columns, Mapping):
            raise TypeError(
                "columns must be None, a PhaseColumns or a mapping from schema "
                f"names to column names, got {type(columns).__name__}."
            )
        valid = [item.name for item in fields(cls)]
        unknown = [key for key in columns if key not in valid]
        if unknown:
            raise ValueError(
                f"Unknown key(s) {unknown} in columns; the valid keys are {valid}."
            )
        return cls(**columns)

    def present_in(self, phases) -> PhaseColumns:
        """These names, the optional instance column dropped when the frame
        lacks it under its default name."""
        if self.instance_id == "instance_id" and "instance_id" not in phases:
            return replace(self, instance_id=None)
        return self

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
    prefill_tokens: np.ndarray  # float64, 0 on decode rows
    decode_tokens: np.ndarray  # float64, 0 on prefill rows
    n_steps: np.ndarray | None  # float64 (integer valued) or None
    instance: np.ndarray  # int codes, 0 when the trace has one instance
    time_origin: np.ndarray  # float64, the shift applied, one per instance code

    @property
    def n_phases(self) -> int:
        return self.t_start.shape[0]

    @property
    def duration(self) -> np.ndarray:
        return self.t_end - self.t_start


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------


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


def check_option(value, options: tuple[str, ...], name: str) -> str:
    """Return ``value`` if it is one of ``options``, else raise ValueError."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}.")
    return value


def check_non_negative(value, name: str) -> float:
    """Return ``value`` as a float if it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{name} must be a non-negative number, got {value!r} "
            f"of type {type(value).__name__}."
        )
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


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


def _check_frame(phases, columns: PhaseColumns) -> list[str]:
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
    required = columns.required()
    if columns.instance_id is not None:
        required = required + [columns.instance_id]
    try:
        missing = [c for c in required if c not in phases.columns]
    except TypeError as exc:  # an unhashable column name
        raise TypeError(f"Column names must be hashable: {exc}.") from None
    if missing:
        raise ValueError(
            f"The phase table is missing column(s) {missing}; it has "
            f"{list(phases.columns)[:20]}. Rename the columns or pass the "
            "*_col parameters naming them."
        )
    wanted = required + ([columns.n_steps] if columns.n_steps in phases.columns else [])
    duplicated = sorted(
        {str(c) for c in wanted if np.count_nonzero(phases.columns == c) > 1}
    )
    if duplicated:
        raise ValueError(
            f"The phase table has several columns named {duplicated}; "
            "each column name must appear once."
        )
    if len(phases) == 0:
        raise ValueError("The phase table is empty: there is nothing to fit.")
    return list(dict.fromkeys(wanted))


def _check_column_types(frame: pd.DataFrame, columns: PhaseColumns) -> None:
    numeric = [columns.t_start, columns.t_end, columns.prefill_tokens]
    numeric += [columns.decode_tokens]
    if columns.n_steps is not None and columns.n_steps in frame.columns:
        numeric.append(columns.n_steps)
    for name in numeric:
        _check_column_type(frame, name)


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


def _row_problems(frame: pd.DataFrame, columns: PhaseColumns):
    """Check every row; return the problems found and the parsed values.

    Values of a token column on rows of the other phase type are not used by
    the method, so they are neither checked nor kept (set to 0).
    """
    problems: list[_RowProblem] = []

    def add(reason, error, message, mask):
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            problems.append(_RowProblem(reason, error, message, mask))

    rid = columns.request_id
    add(
        "missing_request_id",
        ValueError,
        f"Column {rid!r} has missing values.",
        pd.isna(frame[rid]).to_numpy(dtype=bool),
    )
    # Case and surrounding whitespace are forgiven ("Prefill ", "DECODE"):
    # exporters differ, the meaning does not.
    is_prefill, is_decode = _phase_kinds(frame[columns.phase_type])
    add(
        "unknown_phase_type",
        ValueError,
        f"Column {columns.phase_type!r} must be 'prefill' or 'decode' "
        "(case and surrounding spaces are ignored).",
        ~(is_prefill | is_decode),
    )

    used = {
        columns.t_start: np.ones(len(frame), dtype=bool),
        columns.t_end: np.ones(len(frame), dtype=bool),
        columns.prefill_tokens: is_prefill,
        columns.decode_tokens: is_decode,
    }
    if columns.n_steps is not None and columns.n_steps in frame.columns:
        used[columns.n_steps] = np.ones(len(frame), dtype=bool)
    values = {}
    for name, rows in used.items():
        numbers, not_number = _as_numbers(frame[name])
        add(
            "not_a_number",
            TypeError,
            f"Column {name!r} must be numeric; these values are not numbers.",
            not_number & rows,
        )
        add(
            "not_finite",
            ValueError,
            f"Column {name!r} has NaN, missing or infinite values.",
            ~np.isfinite(numbers) & ~not_number & rows,
        )
        values[name] = np.where(rows & np.isfinite(numbers), numbers, 0.0)

    t_start, t_end = values[columns.t_start], values[columns.t_end]
    add(
        "non_positive_duration",
        ValueError,
        f"Column {columns.t_end!r} must be greater than {columns.t_start!r}: "
        "zero-length and reversed phases have no step density.",
        t_end <= t_start,
    )
    for name in used:
        if name in (columns.t_start, columns.t_end):
            continue
        v = values[name]
        bad = (v < 0) | (v >= _MAX_COUNT) | (np.abs(v - np.round(v)) > _STEP_TOL)
        add(
            "bad_count",
            ValueError,
            f"Column {name!r} must hold non-negative integers below 2**53.",
            bad & used[name],
        )
    if columns.instance_id is not None:
        add(
            "missing_instance",
            ValueError,
            f"Column {columns.instance_id!r} has missing values.",
            pd.isna(frame[columns.instance_id]).to_numpy(dtype=bool),
        )
    return problems, is_prefill, values


def _phase_kinds(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Which rows are prefills and which decodes, labels normalised."""

    def normalise(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        kind = values.astype("string").str.strip().str.lower()
        return (
            (kind == "prefill").fillna(False).to_numpy(dtype=bool),
            (kind == "decode").fillna(False).to_numpy(dtype=bool),
        )

    try:
        codes, labels = pd.factorize(column)
    except TypeError:  # unhashable cells (lists, dicts): per row, slowly
        return normalise(column)
    # Normalising only the few distinct labels keeps a 1e6-row table fast.
    label_prefill, label_decode = normalise(pd.Series(labels, dtype=object))
    # Code -1 marks a missing label: it picks the False appended at the end.
    return np.append(label_prefill, False)[codes], np.append(label_decode, False)[codes]


def _codes(column: pd.Series, name: str, sort: bool) -> np.ndarray:
    try:
        return pd.factorize(column, sort=sort)[0].astype(np.intp)
    except TypeError as exc:
        raise TypeError(
            f"Column {name!r} must hold hashable ids (strings or numbers): {exc}."
        ) from None


def _repeated_phases(request: np.ndarray, is_prefill: np.ndarray) -> np.ndarray:
    """Rows whose request has more than one row of the same phase type."""
    key = 2 * request + is_prefill
    counts = np.bincount(key, minlength=2 * (request.max() + 1))
    return counts[key] > 1


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def check_phases(
    phases, columns: PhaseColumns | None, *, need_prefill_tokens: bool = True
) -> PhaseArrays:
    """Validate a phase table and return it as :class:`PhaseArrays`.

    The table is never modified.

    Raises
    ------
    TypeError
        If ``phases`` is not a DataFrame or a column has the wrong type.
    ValueError
        For missing columns, bad values or an inconsistent table; the message
        names the column and shows the first offending rows.
    """
    # need_prefill_tokens: the published N_steps rule (CONTRACTS.md 2), which
    # this branch's checks do not implement yet: they always read the tokens.
    columns = PhaseColumns.coerce(columns)
    if isinstance(phases, pd.DataFrame):
        columns = columns.present_in(phases.columns)
    context = _check_frame(phases, columns)
    _check_column_types(phases, columns)
    problems, is_prefill, values = _row_problems(phases, columns)
    if problems:
        first = problems[0]
        raise first.error(
            f"{first.message} {describe_rows(phases, first.mask, context)}"
            + _CLEAN_HINT
        )
    request = _codes(phases[columns.request_id], columns.request_id, sort=False)
    repeated = _repeated_phases(request, is_prefill)
    if repeated.any():
        raise ValueError(
            f"Column {columns.request_id!r}: a request may have at most one "
            "prefill row and one decode row (duplicated log lines?). "
            + describe_rows(phases, repeated, context)
            + _CLEAN_HINT
        )
    if columns.instance_id is None:
        instance = np.zeros(len(phases), dtype=np.intp)
    else:
        instance = _codes(phases[columns.instance_id], columns.instance_id, sort=True)
    return _shifted_arrays(
        phases, context, columns, request, is_prefill, values, instance
    )


def _shifted_arrays(phases, context, columns, request, is_prefill, values, instance):
    t_start, t_end = values[columns.t_start], values[columns.t_end]
    origin = np.full(int(instance.max()) + 1, np.inf)
    np.minimum.at(origin, instance, t_start)
    start = t_start - origin[instance]
    end = t_end - origin[instance]
    # Times so far apart that float64 cannot resolve a phase once shifted
    # (e.g. 1e-3 s phases next to 1e300 s) would give zero or infinite lengths.
    bad = ~np.isfinite(end) | (end <= start)
    if bad.any():
        raise ValueError(
            f"Columns {columns.t_start!r}/{columns.t_end!r} span too wide a range "
            "for float64: once each instance's earliest time is moved to 0, "
            "these phases have zero or infinite length. "
            + describe_rows(phases, bad, context)
        )
    n_steps = None
    if columns.n_steps is not None and columns.n_steps in values:
        n_steps = np.round(values[columns.n_steps])
    return PhaseArrays(
        request=request,
        is_prefill=is_prefill,
        t_start=start,
        t_end=end,
        prefill_tokens=np.round(values[columns.prefill_tokens]),
        decode_tokens=np.round(values[columns.decode_tokens]),
        n_steps=n_steps,
        instance=instance,
        time_origin=origin,
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
    request_id_col: str = "request_id",
    phase_type_col: str = "phase_type",
    t_start_col: str = "t_start",
    t_end_col: str = "t_end",
    prefill_tokens_col: str = "prefill_tokens",
    decode_tokens_col: str = "decode_tokens",
    n_steps_col: str | None = "N_steps",
    instance_col: str | None = None,
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
    request_id_col, phase_type_col, t_start_col, t_end_col, \
prefill_tokens_col, decode_tokens_col, n_steps_col, instance_col : str
        Column names, as in :func:`estimate_betas_baseline`.

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
    columns = PhaseColumns(
        request_id_col,
        phase_type_col,
        t_start_col,
        t_end_col,
        prefill_tokens_col,
        decode_tokens_col,
        n_steps_col,
        instance_col,
    )
    _check_frame(phases, columns)
    _check_column_types(phases, columns)
    problems, is_prefill, values = _row_problems(phases, columns)
    reason = np.full(len(phases), "", dtype=object)
    for problem in reversed(problems):  # the first reason wins
        reason[problem.mask] = problem.reason

    keep = reason == ""
    request = np.full(len(phases), -1, dtype=np.intp)
    request[keep] = _codes(phases[columns.request_id][keep], request_id_col, False)
    if keep.any():
        repeat = np.zeros(len(phases), dtype=bool)
        repeat[keep] = _repeated_phases(request[keep], is_prefill[keep])
        # Duplicates are judged on the parsed values the method uses, so
        # " 1.0" equals 1.0 and unused cells (which may hold anything) are
        # ignored.
        key = pd.DataFrame(values).assign(_request=request, _prefill=is_prefill)
        if columns.instance_id is not None:
            key["_instance"] = -1
            key.loc[keep, "_instance"] = _codes(
                phases[columns.instance_id][keep], columns.instance_id, False
            )
        exact = np.zeros(len(phases), dtype=bool)
        exact[keep] = key[keep].duplicated().to_numpy()
        exact &= repeat
        reason[exact] = "exact_duplicate"
        keep &= ~exact
        repeat = np.zeros(len(phases), dtype=bool)
        repeat[keep] = _repeated_phases(request[keep], is_prefill[keep])
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
