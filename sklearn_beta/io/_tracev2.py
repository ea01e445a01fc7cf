"""BLIS TraceV2 request traces (client side) into the phase table.

TraceV2 is what BLIS's ``observe`` and ``replay`` commands write: a YAML
header (``trace_version``, ``time_unit``, ``mode``, ``warm_up_requests``,
``server``) and a CSV with one row per request. Public entry point:
:func:`sklearn_beta.io.read_tracev2`.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..core._validation import describe_rows

#: Columns :func:`read_tracev2` needs (the CSV has more; they are ignored).
TRACEV2_COLUMNS = (
    "request_id",
    "input_tokens",
    "output_tokens",
    "server_input_tokens",
    "send_time_us",
    "first_chunk_time_us",
    "last_chunk_time_us",
    "status",
)
#: Seconds per unit of the header's ``time_unit``.
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_UNIT_ALIASES = {"seconds": "s", "milliseconds": "ms", "microseconds": "us"}
_UNIT_ALIASES |= {"nanoseconds": "ns"}


def read_header(header) -> dict:
    """The TraceV2 YAML header as a dict (``None`` gives ``{}``)."""
    if header is None:
        return {}
    if isinstance(header, dict):
        return dict(header)
    path = Path(header)
    if not path.is_file():
        raise ValueError(f"TraceV2 header {str(path)!r} does not exist.")
    import yaml

    try:
        parsed = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeError) as exc:
        raise ValueError(f"Cannot read {str(path)!r} as YAML: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"TraceV2 header {str(path)!r} is not a YAML mapping.")
    return parsed


def header_time_unit(header: dict) -> float:
    """Seconds per time unit named by the header (microseconds by default)."""
    unit = str(header.get("time_unit", "us")).strip().lower()
    unit = _UNIT_ALIASES.get(unit, unit)
    if unit not in TIME_UNITS:
        raise ValueError(
            f"TraceV2 header time_unit {header.get('time_unit')!r} is not one of "
            f"{sorted(TIME_UNITS)}."
        )
    return TIME_UNITS[unit]


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"TraceV2 file {str(path)!r} does not exist.")
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype={"status": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError) as exc:
        raise ValueError(f"Cannot read {str(path)!r} as CSV: {exc}") from exc
    missing = [c for c in TRACEV2_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks TraceV2 column(s) {missing}; it has "
            f"{list(frame.columns)}."
        )
    return frame


def _integers(frame: pd.DataFrame, name: str) -> np.ndarray:
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
    if bad.any():
        raise ValueError(
            f"TraceV2 column {name!r} must hold non-negative integers: "
            f"{describe_rows(frame, bad, ['request_id', name])}."
        )
    return values.astype(np.int64)


def tracev2_phases(path: str | PathLike, header=None) -> pd.DataFrame:
    """Implementation of :func:`sklearn_beta.io.read_tracev2`."""
    meta = read_header(header)
    seconds = header_time_unit(meta)
    frame = _read_csv(Path(path))
    ok = frame["status"].astype(str).str.strip().str.lower() == "ok"
    n_dropped = int((~ok).sum())
    frame = frame.loc[ok.to_numpy()].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"No request of {str(path)!r} has status 'ok'.")
    times = {c: _integers(frame, c) for c in TRACEV2_COLUMNS[4:7]}
    send, first, last = times.values()
    for name, early, late in (
        ("first_chunk_time_us", send, first),
        ("last_chunk_time_us", first, last),
    ):
        bad = late < early
        if bad.any():
            raise ValueError(
                f"TraceV2 column {name!r} is earlier than the phase's start: "
                f"{describe_rows(frame, bad, ['request_id', *TRACEV2_COLUMNS[4:7]])}."
            )
    output = _integers(frame, "output_tokens")
    server_input = _integers(frame, "server_input_tokens")
    prompt = np.where(server_input > 0, server_input, _integers(frame, "input_tokens"))
    # Integer time units: subtract the origin before converting to seconds.
    origin = int(send.min())
    to_s = lambda t: (t - origin) * seconds  # noqa: E731
    request_id = frame["request_id"].to_numpy()
    # The last prefill step emits the first output token.
    decoded = output > 1
    n = len(frame)
    prefill = pd.DataFrame(
        {
            "request_id": request_id,
            "phase_type": "prefill",
            "t_start": to_s(send),
            "t_end": to_s(first),
            "prefill_tokens": prompt,
            "decode_tokens": np.zeros(n, dtype=np.int64),
        }
    )
    decode = pd.DataFrame(
        {
            "request_id": request_id[decoded],
            "phase_type": "decode",
            "t_start": to_s(first)[decoded],
            "t_end": to_s(last)[decoded],
            "prefill_tokens": np.zeros(int(decoded.sum()), dtype=np.int64),
            "decode_tokens": (output - 1)[decoded],
        }
    )
    order = np.argsort(
        np.concatenate([np.arange(n), np.flatnonzero(decoded)]), kind="stable"
    )
    phases = pd.concat([prefill, decode], ignore_index=True).iloc[order]
    phases = phases.reset_index(drop=True)
    notes = []
    if n_dropped:
        notes.append(
            f"{n_dropped} TraceV2 request(s) with status other than 'ok' dropped"
        )
    phases.attrs.update(
        client_side=True,
        notes=notes,
        time_origin=origin * seconds,
        header=meta,
    )
    return phases
