"""BLIS TraceV2 and TraceV3 request traces (client side) into the phase table.

TraceV2 is what BLIS's ``observe`` and ``replay`` commands write: a YAML
header (``trace_version``, ``time_unit``, ``mode``, ``warm_up_requests``,
``server``) and a CSV with one row per request. A header with
``trace_version: 3`` makes it TraceV3: the same rows, read by the names of
:data:`TRACEV3_COLUMNS` (aliases allowed), with the intended arrival of each
request next to its send and the tenant of each request. Public entry point:
:func:`sklearn_beta.io.read_tracev2`.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

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
#: TraceV3's columns: each one's role, then the names accepted for it (the
#: first is the preferred spelling). Roles ``status`` and
#: ``server_input_tokens`` may be absent (every request then counts as
#: ``ok``, with ``input_tokens`` as its prompt).
TRACEV3_COLUMNS = {
    "request_id": ("request_id", "req_id", "id"),
    "tenant_id": ("tenant_id", "tenant"),
    "input_tokens": ("input_tokens", "prompt_tokens"),
    "output_tokens": ("output_tokens", "completion_tokens"),
    "server_input_tokens": ("server_input_tokens",),
    "intended_arrival_time_us": (
        "intended_arrival_time_us",
        "arrival_time_us",
        "intended_arrival_us",
        "intended_time_us",
    ),
    "send_time_us": ("send_time_us", "sent_time_us", "send_us"),
    "first_chunk_time_us": (
        "first_chunk_time_us",
        "first_token_time_us",
        "first_chunk_us",
    ),
    "last_chunk_time_us": ("last_chunk_time_us", "last_token_time_us", "last_chunk_us"),
    "status": ("status",),
}
#: Request columns TraceV3 carries into the phase table when present.
TRACEV3_CARRIED = {
    "client_id": ("client_id", "client"),
    "instance_id": ("instance_id", "instance"),
    "model": ("model",),
    "adapter": ("adapter",),
}
_V3_OPTIONAL = ("server_input_tokens", "status")
_TIMES = ("send_time_us", "first_chunk_time_us", "last_chunk_time_us")
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
    try:
        parsed = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeError) as exc:
        raise ValueError(f"Cannot read {str(path)!r} as YAML: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"TraceV2 header {str(path)!r} is not a YAML mapping.")
    return parsed


#: The engine settings a TraceV2/V3 header's ``server`` section may give,
#: by vLLM's names: ``{name: setting}`` (the command line's names).
SERVER_SETTINGS = {
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "token_budget",
    "num_gpu_blocks": "num_gpu_blocks",
    "num_gpu_blocks_override": "num_gpu_blocks",
    "block_size": "block_size",
    "long_prefill_token_threshold": "chunk_size",
}


def header_engine_settings(header: dict) -> dict:
    """The engine settings of a TraceV2/V3 header's ``server`` section:
    ``{setting: value}`` for those it gives (:data:`SERVER_SETTINGS`; a
    ``long_prefill_token_threshold`` of 0 is vLLM's "none" and gives no
    chunk cap). Others keys (``model``, ...) are descriptive and ignored.

    Raises
    ------
    ValueError
        When ``server`` is not a mapping, a setting is not a positive
        integer (0 for the threshold), or two names give one setting two
        values.
    """
    server = header.get("server")
    if server is None:
        return {}
    if not isinstance(server, dict):
        raise ValueError(
            f"TraceV2 header's 'server' must be a mapping, got {server!r}."
        )
    found, named = {}, {}
    for key, value in server.items():
        setting = SERVER_SETTINGS.get(str(key).strip().lower())
        if setting is None:
            continue
        least = 0 if setting == "chunk_size" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(
                f"TraceV2 header's server.{key} must be an integer >= {least}, "
                f"got {value!r}."
            )
        value = None if setting == "chunk_size" and value == 0 else value
        if setting in found and found[setting] != value:
            raise ValueError(
                f"TraceV2 header's server.{named[setting]} ({found[setting]}) and "
                f"server.{key} ({value}) disagree."
            )
        found[setting], named[setting] = value, key
    return found


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
        return pd.read_csv(path, keep_default_na=False, dtype={"status": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError) as exc:
        raise ValueError(f"Cannot read {str(path)!r} as CSV: {exc}") from exc


def trace_version(header: dict) -> int:
    """The header's ``trace_version``: 2 (also when absent) or 3."""
    version = header.get("trace_version", 2)
    if str(version).strip() not in ("2", "3"):
        raise ValueError(
            f"trace_version {version!r} is not one read here: 2 (TraceV2) or 3 "
            "(TraceV3)."
        )
    return int(str(version).strip())


def v2_columns(frame: pd.DataFrame, path: Path) -> dict:
    """TraceV2's columns, by their exact names: ``{role: column}``."""
    missing = [c for c in TRACEV2_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks TraceV2 column(s) {missing}; it has "
            f"{list(frame.columns)}."
        )
    return {c: c for c in TRACEV2_COLUMNS}


def v3_columns(frame: pd.DataFrame, path: Path) -> dict:
    """TraceV3's columns found by any accepted name: ``{role: column}``.

    Raises a ValueError listing, for every required role no column matches,
    the names accepted for it.
    """
    names = {str(c).strip().lower(): c for c in frame.columns}
    found, missing = {}, []
    for role, accepted in (TRACEV3_COLUMNS | TRACEV3_CARRIED).items():
        column = next((names[a] for a in accepted if a in names), None)
        if column is not None:
            found[role] = column
        elif role in TRACEV3_COLUMNS and role not in _V3_OPTIONAL:
            missing.append(f"{role} (one of {list(accepted)})")
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks TraceV3 column(s): {'; '.join(missing)}. It has "
            f"{list(frame.columns)}."
        )
    return found


def _integers(frame: pd.DataFrame, name: str, request_col: str) -> np.ndarray:
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
    if bad.any():
        raise ValueError(
            f"TraceV2 column {name!r} must hold non-negative integers: "
            f"{describe_rows(frame, bad, [request_col, name])}"
        )
    return values.astype(np.int64)


def _check_order(frame, times: dict, cols: dict, pairs) -> None:
    """Each ``(early, late)`` pair of roles ordered, else a ValueError."""
    shown = [cols["request_id"], *(cols[r] for r in times)]
    for early, late in pairs:
        bad = times[late] < times[early]
        if bad.any():
            what = "the phase's start" if early in _TIMES else "the intended arrival"
            raise ValueError(
                f"TraceV2 column {cols[late]!r} is earlier than {what} "
                f"{cols[early]!r}: {describe_rows(frame, bad, shown)}"
            )


def _ok_rows(frame: pd.DataFrame, status: str | None, path) -> tuple:
    """The rows of status ``ok`` (all without a status column), and how many
    others were dropped."""
    if frame.empty:
        raise ValueError(f"{str(path)!r} holds no request.")
    if status is None:
        return frame, 0
    ok = (frame[status].astype(str).str.strip().str.lower() == "ok").to_numpy()
    if not ok.any():
        raise ValueError(f"No request of {str(path)!r} has status 'ok'.")
    return frame.loc[ok].reset_index(drop=True), int((~ok).sum())


def tracev2_phases(path: str | PathLike, header=None) -> pd.DataFrame:
    """Implementation of :func:`sklearn_beta.io.read_tracev2`."""
    meta = read_header(header)
    seconds = header_time_unit(meta)
    version = trace_version(meta)
    frame = _read_csv(Path(path))
    cols = (v3_columns if version == 3 else v2_columns)(frame, Path(path))
    frame, n_dropped = _ok_rows(frame, cols.get("status"), path)
    rid = cols["request_id"]
    roles = (("intended_arrival_time_us",) if version == 3 else ()) + _TIMES
    times = {r: _integers(frame, cols[r], rid) for r in roles}
    # A closed-loop client sends no earlier than it meant to.
    pairs = list(zip(roles[:-1], roles[1:], strict=True))
    _check_order(frame, times, cols, pairs)
    output = _integers(frame, cols["output_tokens"], rid)
    prompt = _integers(frame, cols["input_tokens"], rid)
    if "server_input_tokens" in cols:
        server_input = _integers(frame, cols["server_input_tokens"], rid)
        prompt = np.where(server_input > 0, server_input, prompt)
    # Integer time units: subtract the origin before converting to seconds.
    origin = int(times[roles[0]].min())
    seconds_of = {r: (t - origin) * seconds for r, t in times.items()}
    request = {"request_id": frame[rid].to_numpy()}
    if version == 3:
        request |= {
            "arrival": seconds_of["send_time_us"],
            "intended_arrival": seconds_of["intended_arrival_time_us"],
        }
        request |= {r: frame[cols[r]].to_numpy() for r in cols if _carried(r)}
    phases = request_phase_rows(
        request,
        seconds_of["send_time_us"],
        seconds_of["first_chunk_time_us"],
        seconds_of["last_chunk_time_us"],
        prompt,
        output,
    )
    notes = []
    if n_dropped:
        notes.append(
            f"{n_dropped} TraceV{version} request(s) with status other than 'ok' "
            "dropped"
        )
    if version == 3:
        notes += v3_notes(times, seconds, phases)
    phases.attrs.update(
        client_side=True,
        notes=notes,
        time_origin=origin * seconds,
        header=meta,
        trace_version=version,
    )
    return phases


def _carried(role: str) -> bool:
    return role == "tenant_id" or role in TRACEV3_CARRIED


def request_phase_rows(request: dict, start, first, last, prompt, output):
    """The phase table of per-request times, prefill then decode per request.

    ``request`` holds per-request columns carried onto both rows (the first
    is ``request_id``); the times are in seconds. The prefill phase is
    ``[start, first)``, the decode phase ``[first, last)``. The last prefill
    step emits the first output token, so ``output - 1`` tokens are decoded
    and a single-token request has no decode row.
    """
    decoded = output > 1
    n, n_decoded = output.shape[0], int(decoded.sum())
    prefill = pd.DataFrame(
        {
            "request_id": request["request_id"],
            "phase_type": "prefill",
            "t_start": start,
            "t_end": first,
            "prefill_tokens": prompt,
            "decode_tokens": np.zeros(n, dtype=np.int64),
        }
    )
    decode = pd.DataFrame(
        {
            "request_id": request["request_id"][decoded],
            "phase_type": "decode",
            "t_start": first[decoded],
            "t_end": last[decoded],
            "prefill_tokens": np.zeros(n_decoded, dtype=np.int64),
            "decode_tokens": (output - 1)[decoded],
        }
    )
    for name, values in list(request.items())[1:]:
        prefill[name] = values
        decode[name] = values[decoded]
    order = np.argsort(
        np.concatenate([np.arange(n), np.flatnonzero(decoded)]), kind="stable"
    )
    phases = pd.concat([prefill, decode], ignore_index=True).iloc[order]
    return phases.reset_index(drop=True)


def v3_notes(times: dict, seconds: float, phases: pd.DataFrame) -> list[str]:
    """What a TraceV3 trace says about its client and its models."""
    notes = []
    lag = (times["send_time_us"] - times["intended_arrival_time_us"]) * seconds
    if lag.max() > 0:
        notes.append(
            f"sends lag the intended arrivals by {lag.mean():.3g} s on average (at "
            f"most {lag.max():.3g} s): a closed-loop client held requests back; "
            "the phases start at the sends ('arrival'), the intended arrivals are "
            "in 'intended_arrival'"
        )
    for name in ("model", "adapter"):
        if name in phases.columns and phases[name].nunique() > 1:
            notes.append(
                f"{phases[name].nunique()} distinct {name!r} values: their steps "
                "share one engine per instance and are fitted together"
            )
    return notes
