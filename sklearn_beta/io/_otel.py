"""OTLP JSON lines of vLLM's ``llm_request`` spans: parsing and checks.

Private helpers of :func:`sklearn_beta.io.read_otel_spans`, which documents
the field mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

OTEL_LATENCY_ATTRIBUTES = {
    "request_id": "gen_ai.request.id",
    "queue": "gen_ai.latency.time_in_queue",
    "ttft": "gen_ai.latency.time_to_first_token",
    "prefill": "gen_ai.latency.time_in_model_prefill",
    "decode": "gen_ai.latency.time_in_model_decode",
    "e2e": "gen_ai.latency.e2e",
    "prompt_tokens": "gen_ai.usage.prompt_tokens",
    "completion_tokens": "gen_ai.usage.completion_tokens",
}
DEFAULT_CACHED_TOKENS_ATTRIBUTE = "gen_ai.usage.cache_read.input_tokens"
DEFAULT_INSTANCE_ATTRIBUTES = ("service.instance.id", "host.name")

_MAX_SHOWN = 5


def _attribute_value(value: dict):
    # OTLP JSON encodes int64 as a string ("intValue": "123").
    for kind in ("stringValue", "doubleValue", "boolValue"):
        if kind in value:
            return value[kind]
    if "intValue" in value:
        return int(value["intValue"])
    return None


def _attributes(items) -> dict:
    return {item["key"]: _attribute_value(item.get("value", {})) for item in items}


def otel_records(path: Path, span_name: str, instance_attributes) -> list[dict]:
    """One flat record per span named ``span_name``: a loop over the lines."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                payload = json.loads(line)
                resource_spans = payload["resourceSpans"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{str(path)!r} line {line_no} is not an OTLP JSON export "
                    f"object with 'resourceSpans' ({exc})."
                ) from exc
            for resource_span in resource_spans:
                resource = _attributes(
                    resource_span.get("resource", {}).get("attributes", [])
                )
                instance = next(
                    (resource[a] for a in instance_attributes if a in resource), None
                )
                for scope in resource_span.get("scopeSpans", []):
                    for span in scope.get("spans", []):
                        if span.get("name") != span_name:
                            continue
                        record = _attributes(span.get("attributes", []))
                        record["_line"] = line_no
                        record["_span_id"] = span.get("spanId", "?")
                        record["_start_ns"] = span.get("startTimeUnixNano")
                        record["_instance"] = instance
                        records.append(record)
    return records


def _describe(frame: pd.DataFrame, bad: np.ndarray, fields: list[str]) -> str:
    shown = frame.loc[bad, ["_line", "_span_id", *fields]].head(_MAX_SHOWN)
    n_bad = int(np.count_nonzero(bad))
    more = f" (and {n_bad - _MAX_SHOWN} more)" if n_bad > _MAX_SHOWN else ""
    rows = "; ".join(
        f"line {r['_line']} span {r['_span_id']}: "
        + ", ".join(f"{f}={r[f]!r}" for f in fields)
        for _, r in shown.iterrows()
    )
    return f"{rows}{more}"


def _numeric_field(frame: pd.DataFrame, name: str) -> np.ndarray:
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"llm_request span attribute {name!r} is missing or not a finite "
            f"number: {_describe(frame, bad, [name])}."
        )
    return values


def spans_to_phases(frame, cached_attr, consistency_tol) -> pd.DataFrame:
    """The phase table of a frame of ``llm_request`` spans, one row each."""
    request_id = _request_ids(frame)
    arrival, origin_ns = _arrivals(frame)
    queue, prefill, decode, completion = _latencies(frame, consistency_tol)
    prompt = _token_field(frame, OTEL_LATENCY_ATTRIBUTES["prompt_tokens"])
    cached = _cached_tokens(frame, cached_attr, prompt)
    prefill_start = arrival + queue
    phases = _phase_rows(
        request_id,
        prefill_start,
        prefill_start + prefill,
        decode,
        (prompt - cached).astype(np.int64),
        completion,
        _instances(frame),
    )
    phases.attrs["time_origin_unix_nano"] = origin_ns
    return phases


def _reject(frame, bad: np.ndarray, what: str, names: list) -> None:
    """Raise the span reader's ValueError for the rows where ``bad`` holds."""
    if bad.any():
        raise ValueError(f"llm_request {what}: {_describe(frame, bad, names)}.")


def _request_ids(frame) -> pd.Series:
    name = OTEL_LATENCY_ATTRIBUTES["request_id"]
    request_id = frame[name]
    _reject(
        frame,
        request_id.isna().to_numpy(),
        f"span attribute {name!r} is missing",
        [name],
    )
    dup = request_id.duplicated(keep=False).to_numpy()
    _reject(frame, dup, f"spans repeat {name!r}", [name])
    return request_id


def _arrivals(frame) -> tuple[np.ndarray, int]:
    """Span starts in seconds from the earliest, and that origin in ns."""
    start_ns = pd.to_numeric(frame["_start_ns"], errors="coerce")
    what = "span field 'startTimeUnixNano' is missing or not an integer"
    _reject(frame, start_ns.isna().to_numpy(), what, ["_start_ns"])
    # Integer nanoseconds: subtract the origin before converting to float.
    start_ns = start_ns.astype("int64").to_numpy()
    origin_ns = int(start_ns.min())
    return (start_ns - origin_ns) / 1e9, origin_ns


def _latencies(frame, consistency_tol) -> tuple[np.ndarray, ...]:
    """Queue, prefill and decode latencies and completion tokens, checked."""
    attr = OTEL_LATENCY_ATTRIBUTES
    queue, ttft, prefill, decode, e2e = (
        _numeric_field(frame, attr[k])
        for k in ("queue", "ttft", "prefill", "decode", "e2e")
    )
    for key, values in (("queue", queue), ("prefill", prefill), ("decode", decode)):
        _reject(
            frame, values < 0, f"span attribute {attr[key]!r} is negative", [attr[key]]
        )
    what = f"span attribute {attr['prefill']!r} must be positive"
    _reject(frame, prefill <= 0, what, [attr["prefill"]])
    completion = _token_field(frame, attr["completion_tokens"])
    what = (
        f"span attribute {attr['completion_tokens']!r} must be >= 1 (the last prefill "
        "step emits a token)"
    )
    _reject(frame, completion < 1, what, [attr["completion_tokens"]])
    what = (
        f"span attribute {attr['decode']!r} must be positive when "
        f"{attr['completion_tokens']!r} > 1"
    )
    names = [attr["decode"], attr["completion_tokens"]]
    _reject(frame, (completion > 1) & (decode <= 0), what, names)
    if consistency_tol is not None:
        _check_consistent(
            frame, queue + prefill, ttft, ("queue", "prefill"), "ttft", consistency_tol
        )
        _check_consistent(
            frame, ttft + decode, e2e, ("ttft", "decode"), "e2e", consistency_tol
        )
    return queue, prefill, decode, completion


def _cached_tokens(frame, cached_attr, prompt: np.ndarray) -> np.ndarray:
    cached = np.zeros_like(prompt)
    if cached_attr is None or cached_attr not in frame.columns:
        return cached
    present = frame[cached_attr].notna().to_numpy()
    cached[present] = _token_field(frame.loc[present], cached_attr)
    name = OTEL_LATENCY_ATTRIBUTES["prompt_tokens"]
    what = f"span attribute {cached_attr!r} exceeds {name!r}"
    _reject(frame, cached > prompt, what, [cached_attr, name])
    return cached


def _phase_rows(
    request_id, prefill_start, prefill_end, decode, prefill_tokens, completion, instance
) -> pd.DataFrame:
    """One prefill row per span and a decode row after it when it decoded."""
    n = prefill_start.shape[0]
    decoded = completion > 1
    prefill_rows = pd.DataFrame(
        {
            "request_id": request_id.to_numpy(),
            "phase_type": "prefill",
            "t_start": prefill_start,
            "t_end": prefill_end,
            "prefill_tokens": prefill_tokens,
            "decode_tokens": np.zeros(n, dtype=np.int64),
            "instance_id": instance,
        }
    )
    decode_rows = pd.DataFrame(
        {
            "request_id": request_id.to_numpy()[decoded],
            "phase_type": "decode",
            "t_start": prefill_end[decoded],
            "t_end": (prefill_end + decode)[decoded],
            "prefill_tokens": np.zeros(int(decoded.sum()), dtype=np.int64),
            "decode_tokens": (completion - 1)[decoded].astype(np.int64),
            "instance_id": instance[decoded],
        }
    )
    order_key = np.concatenate([np.arange(n), np.flatnonzero(decoded)])
    phases = pd.concat([prefill_rows, decode_rows], ignore_index=True)
    return phases.iloc[np.argsort(order_key, kind="stable")].reset_index(drop=True)


def _token_field(frame: pd.DataFrame, name: str) -> np.ndarray:
    values = _numeric_field(frame, name)
    bad = (values < 0) | (values != np.round(values))
    if bad.any():
        raise ValueError(
            f"llm_request span attribute {name!r} must be a non-negative integer: "
            f"{_describe(frame, bad, [name])}."
        )
    return values


def _check_consistent(frame, total, reported, parts, whole, tol):
    attr = OTEL_LATENCY_ATTRIBUTES
    bad = np.abs(total - reported) > tol
    if bad.any():
        fields = [attr[parts[0]], attr[parts[1]], attr[whole]]
        raise ValueError(
            f"llm_request spans disagree with themselves: {fields[0]!r} + "
            f"{fields[1]!r} differs from {fields[2]!r} by more than "
            f"consistency_tol={tol:g} s: {_describe(frame, bad, fields)}."
        )


def _instances(frame: pd.DataFrame) -> np.ndarray:
    instance = frame["_instance"]
    missing = instance.isna().to_numpy()
    if missing.all():
        return np.full(len(frame), "default", dtype=object)
    if missing.any():
        raise ValueError(
            "Some llm_request spans carry no instance resource attribute while "
            f"others do; spans without one: {_describe(frame, missing, ['_instance'])}."
            " Pass instance_attributes= naming an attribute every resource has."
        )
    return instance.astype(str).to_numpy(dtype=object)
