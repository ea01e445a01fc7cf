"""vLLM's per-request engine timestamps (request stats) into the phase table.

vLLM's engine keeps, per request, when it was queued, first scheduled, when
its first token came out and its last, all on the engine's clock, with the
prompt and output token counts (``RequestStateStats``). A file of them, one
row per request as CSV or JSON lines, is an engine-side trace: the prefill
phase starts when the scheduler first gave the request a step, so no
queueing sits inside a phase. Public entry point:
:func:`sklearn_beta.io.read_vllm_request_stats`.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..core._validation import describe_rows
from ._formats import check_format
from ._tracev2 import TIME_UNITS, request_phase_rows

#: The columns read: each one's role, then the names accepted for it (the
#: first is the preferred spelling; vLLM's own field names come next).
VLLM_STATS_COLUMNS = {
    "request_id": ("request_id", "req_id", "id"),
    "queued": ("queued", "queued_ts", "queued_time"),
    "scheduled": ("scheduled", "scheduled_ts", "scheduled_time"),
    "first_token": ("first_token", "first_token_ts", "first_token_time"),
    "last_token": ("last_token", "last_token_ts", "last_token_time"),
    "prompt_tokens": ("prompt_tokens", "num_prompt_tokens", "input_tokens"),
    "output_tokens": (
        "output_tokens",
        "num_generation_tokens",
        "generation_tokens",
        "completion_tokens",
    ),
}
#: Optional columns: prompt tokens served from the prefix cache (not
#: computed, so subtracted from the prefill) and the engine instance.
VLLM_STATS_OPTIONAL = {
    "cached_tokens": ("cached_tokens", "num_cached_tokens"),
    "instance_id": ("instance_id", "instance", "engine_id"),
}
#: The engine's events in the order every request goes through them.
EVENTS = ("queued", "scheduled", "first_token", "last_token")
FORMATS = ("csv", "jsonl")


def _read(path: Path, format: str) -> pd.DataFrame:
    if format == "csv":
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError) as exc:
            raise ValueError(f"Cannot read {str(path)!r} as CSV: {exc}") from exc
    try:
        # No type conversion: "*_time" columns are engine-clock seconds, not
        # dates to parse.
        return pd.read_json(path, lines=True, dtype=False)
    except ValueError as exc:
        raise ValueError(_json_problem(path, exc)) from exc


def _json_problem(path: Path, exc: Exception) -> str:
    """The first line of ``path`` that is not a JSON object, else ``exc``."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                return f"{str(path)!r} line {number} is not JSON: {error}"
            if not isinstance(record, dict):
                return f"{str(path)!r} line {number} is not a JSON object."
    return f"Cannot read {str(path)!r} as JSON lines: {exc}"


def has_stats_columns(names) -> bool:
    """Whether column (or JSON key) ``names`` hold every required column."""
    names = {str(n).strip().lower() for n in names}
    return all(names & set(accepted) for accepted in VLLM_STATS_COLUMNS.values())


def stats_columns(frame: pd.DataFrame, path) -> dict:
    """``{role: column}`` of the columns found by any accepted name.

    Raises a ValueError listing, for every required role no column matches,
    the names accepted for it.
    """
    names = {str(c).strip().lower(): c for c in frame.columns}
    found, missing = {}, []
    for role, accepted in (VLLM_STATS_COLUMNS | VLLM_STATS_OPTIONAL).items():
        column = next((names[a] for a in accepted if a in names), None)
        if column is not None:
            found[role] = column
        elif role in VLLM_STATS_COLUMNS:
            missing.append(f"{role} (one of {list(accepted)})")
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks request-stats column(s): {'; '.join(missing)}. "
            f"It has {list(frame.columns)}. Map other names with "
            "columns={'name in file': 'accepted name'}."
        )
    return found


def _numbers(frame, column: str, shown: list, *, counts: bool) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    what = "numbers"
    if counts:
        bad |= (values < 0) | (values != np.round(values))
        what = "non-negative integers"
    if bad.any():
        raise ValueError(
            f"Request-stats column {column!r} must hold {what}: "
            f"{describe_rows(frame, bad, shown)}"
        )
    return values


def _event_times(frame, cols: dict, shown: list, seconds: float):
    """The four event times in seconds since the earliest ``queued``, and that
    origin (in the file's unit). Integer columns are subtracted as integers,
    so epoch nanoseconds keep their precision."""
    values = {e: _numbers(frame, cols[e], shown, counts=False) for e in EVENTS}
    exact = all(pd.api.types.is_integer_dtype(frame[cols[e]]) for e in EVENTS)
    if exact:
        raw = {e: frame[cols[e]].to_numpy(np.int64) for e in EVENTS}
        origin = raw["queued"].min()
        return {e: (raw[e] - origin) * seconds for e in EVENTS}, origin
    origin = values["queued"].min()
    return {e: (values[e] - origin) * seconds for e in EVENTS}, origin


def _check_order(frame, times: dict, cols: dict, shown: list) -> None:
    for early, late in zip(EVENTS[:-1], EVENTS[1:], strict=True):
        bad = times[late] < times[early]
        if bad.any():
            raise ValueError(
                f"Request-stats column {cols[late]!r} is earlier than "
                f"{cols[early]!r} (every request is queued, scheduled, then "
                f"gives its first and its last token): "
                f"{describe_rows(frame, bad, shown)}"
            )


def _token_counts(frame, cols: dict, shown: list) -> tuple[np.ndarray, np.ndarray]:
    """Prefill tokens (prompt minus cached) and output tokens, validated."""
    count = {
        r: _numbers(frame, cols[r], shown, counts=True).astype(np.int64)
        for r in ("prompt_tokens", "output_tokens", "cached_tokens")
        if r in cols
    }
    prompt, output = count["prompt_tokens"], count["output_tokens"]
    cached = count.get("cached_tokens", np.zeros_like(prompt))
    for bad, message in (
        (
            output < 1,
            f"{cols['output_tokens']!r} must be at least 1 (a request "
            "with a first token has an output)",
        ),
        (
            cached > prompt,
            f"{cols.get('cached_tokens')!r} must not exceed {cols['prompt_tokens']!r}",
        ),
    ):
        if bad.any():
            raise ValueError(
                f"Request-stats column {message}: {describe_rows(frame, bad, shown)}"
            )
    return prompt - cached, output


def vllm_stats_phases(
    path: str | PathLike,
    format: str | None = None,
    columns: dict | None = None,
    time_unit: str = "s",
) -> pd.DataFrame:
    """Implementation of :func:`sklearn_beta.io.read_vllm_request_stats`."""
    if time_unit not in TIME_UNITS:
        raise ValueError(
            f"time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}."
        )
    path = Path(path)
    format = check_format(format, path, FORMATS, "read_vllm_request_stats")
    if not path.is_file():
        raise ValueError(f"Request-stats file {str(path)!r} does not exist.")
    frame = _read(path, format)
    if columns:
        frame = frame.rename(columns=columns)
    if frame.empty:
        raise ValueError(f"{str(path)!r} holds no request.")
    cols = stats_columns(frame, path)
    shown = [cols["request_id"], *(cols[e] for e in EVENTS)]
    times, origin = _event_times(frame, cols, shown, TIME_UNITS[time_unit])
    _check_order(frame, times, cols, shown)
    prefill_tokens, output = _token_counts(frame, cols, shown)
    request = {
        "request_id": frame[cols["request_id"]].to_numpy(),
        "arrival": times["queued"],
        "queued": times["queued"],
        "scheduled": times["scheduled"],
    }
    if "instance_id" in cols:
        request["instance_id"] = frame[cols["instance_id"]].to_numpy()
    phases = request_phase_rows(
        request,
        times["scheduled"],
        times["first_token"],
        times["last_token"],
        prefill_tokens,
        output,
    )
    phases.attrs.update(
        client_side=False,
        notes=[],
        time_origin=float(origin) * TIME_UNITS[time_unit],
    )
    return phases
