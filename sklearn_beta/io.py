"""Trace adapters: files in, the phase table out; betas out, simulator input.

Every reader returns the phase table of docs/method.md section 2 (one row per
phase, columns ``request_id, phase_type, t_start, t_end, prefill_tokens,
decode_tokens`` and, for the adapters, ``instance``), ready for
:class:`~sklearn_beta.PhaseExposureTransformer` or the functional estimators.

* :func:`read_phases`: CSV or Parquet already in the reference schema.
* :func:`read_otel_spans`: OTLP JSON lines of vLLM's ``llm_request`` spans.
* :func:`read_benchmark_results`: a serving benchmark's detailed results, a
  client-side approximation.
* :func:`to_blis_coefficients`: betas as BLIS's ``beta_coeffs``.

How the OpenTelemetry span fields map (all times of a span are relative to
its start ``startTimeUnixNano``, the request's arrival):

=====================  ==============================================================
phase-table column     source
=====================  ==============================================================
``request_id``         ``gen_ai.request.id``
``instance``           first present resource attribute of ``instance_attributes``
                       (default ``service.instance.id``, then ``host.name``)
prefill ``t_start``    arrival + ``gen_ai.latency.time_in_queue``
prefill ``t_end``      prefill ``t_start`` + ``gen_ai.latency.time_in_model_prefill``
                       (the first output token)
``prefill_tokens``     ``gen_ai.usage.prompt_tokens`` minus the cached prompt tokens
                       ``gen_ai.usage.cache_read.input_tokens`` (0 when absent)
decode ``t_start``     prefill ``t_end``
decode ``t_end``       decode ``t_start`` + ``gen_ai.latency.time_in_model_decode``
``decode_tokens``      ``gen_ai.usage.completion_tokens - 1``
=====================  ==============================================================

The first output token is produced by the last prefill step (the step that
completes the prompt samples it), so the decode phase, from the first to the
last output token, holds ``completion_tokens - 1`` steps of one token each:
``decode_tokens = completion_tokens - 1``. A request with a single output
token has no decode phase and gives only its prefill row.

Times are returned in seconds since the earliest arrival in the file; the
origin, in Unix nanoseconds, is kept in ``frame.attrs["time_origin_unix_nano"]``.
Subtracting it in integer nanoseconds keeps full precision, which epoch
seconds as floats (~1.7e9) would not.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ._columns import PHASE_COLUMNS
from ._grid import snap_times

__all__ = [
    "BLIS_UNITS",
    "OTEL_LATENCY_ATTRIBUTES",
    "read_benchmark_results",
    "read_otel_spans",
    "read_phases",
    "to_blis_coefficients",
]


#: Span attributes :func:`read_otel_spans` requires, by their role.
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

#: Unit of each entry of :func:`to_blis_coefficients`.
BLIS_UNITS = ("us/step", "us/prefill_token", "us/decode_token")
_MAX_SHOWN = 5


# --------------------------------------------------------------------------
# Reference schema: CSV and Parquet
# --------------------------------------------------------------------------


def read_phases(
    path: str | PathLike,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read a phase table in the reference schema from CSV or Parquet.

    Columns are found by name, in any order; extra columns are kept.

    Parameters
    ----------
    path : str or path-like
        The file.
    format : {"csv", "parquet"} or None, default=None
        File format; inferred from the suffix (``.parquet``/``.pq`` is
        Parquet, anything else CSV) when None.
    columns : dict or None, default=None
        Renames applied after reading, ``{name in the file: schema name}``,
        e.g. ``{"start_s": "t_start"}``.

    Returns
    -------
    phases : DataFrame
        The table, with the schema's columns first.

    Raises
    ------
    ValueError
        If the file is missing, unreadable, or lacks a schema column.

    Examples
    --------
    >>> from sklearn_beta.io import read_phases
    >>> phases = read_phases("data/traces/sample.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Trace file {str(path)!r} does not exist.")
    if format is None:
        format = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    if format == "csv":
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError) as exc:
            raise ValueError(f"Cannot read {str(path)!r} as CSV: {exc}") from exc
    elif format == "parquet":
        frame = _read_parquet(path)
    else:
        raise ValueError(f"format must be 'csv' or 'parquet', got {format!r}.")
    if columns:
        frame = frame.rename(columns=columns)
    missing = [c for c in PHASE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks phase-table column(s) {missing}; it has "
            f"{list(frame.columns)}. Map differently named columns with "
            "columns={'name in file': 'schema name'}."
        )
    rest = [c for c in frame.columns if c not in PHASE_COLUMNS]
    return frame[list(PHASE_COLUMNS) + rest]


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError as exc:
        raise ImportError(
            "Reading Parquet needs pyarrow: pip install 'sklearn-beta[parquet]'."
        ) from exc
    except Exception as exc:  # pyarrow raises its own, unrelated, error types
        raise ValueError(f"Cannot read {str(path)!r} as Parquet: {exc}") from exc


# --------------------------------------------------------------------------
# OpenTelemetry: OTLP JSON lines of vLLM's llm_request spans
# --------------------------------------------------------------------------


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


def _otel_records(path: Path, span_name: str, instance_attributes) -> list[dict]:
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


def read_otel_spans(
    path: str | PathLike,
    *,
    span_name: str = "llm_request",
    instance_attributes: Sequence[str] = DEFAULT_INSTANCE_ATTRIBUTES,
    cached_tokens_attribute: str | None = DEFAULT_CACHED_TOKENS_ATTRIBUTE,
    consistency_tol: float | None = 1e-3,
    time_resolution: float = 1e-6,
) -> pd.DataFrame:
    """Read vLLM request spans exported as OTLP JSON lines into a phase table.

    The file is what an OpenTelemetry collector's file exporter writes: one
    JSON object per line, ``{"resourceSpans": [{"resource": {...},
    "scopeSpans": [{"spans": [...]}]}]}``. Each span named ``span_name``
    becomes one request: a prefill row and, when it produced more than one
    token, a decode row. Spans of other names are ignored. The field mapping
    is in the module docstring (:mod:`sklearn_beta.io`).

    Parameters
    ----------
    path : str or path-like
        The ``.jsonl`` export.
    span_name : str, default="llm_request"
        Name of the per-request span.
    instance_attributes : sequence of str, default=("service.instance.id", \
"host.name")
        Resource attributes naming the engine instance, tried in order. When
        no span's resource has any of them, all spans share the instance
        ``"default"``.
    cached_tokens_attribute : str or None, default=\
"gen_ai.usage.cache_read.input_tokens"
        Span attribute holding the prompt tokens served from the prefix
        cache; they are not computed, so they are subtracted from the prefill
        tokens. Spans without it count 0 cached tokens. None ignores caching.
    consistency_tol : float or None, default=1e-3
        Tolerance, in seconds, of the checks ``queue + prefill == ttft`` and
        ``ttft + decode == e2e``; None skips them.
    time_resolution : float, default=1e-6
        Phase boundaries of one instance closer than this many seconds are
        taken as one instant. Boundaries are rebuilt from the span start and
        latencies, so two events of one engine step (a request finishing and
        the next one's prefill starting) come out a few float roundings or
        nanoseconds apart, and a partial-chunk correction landing on such a
        sliver biases ``beta1`` (measured: -1.9 % on
        ``data/otel/spans.jsonl``). 0 keeps the times as computed.

    Returns
    -------
    phases : DataFrame
        Columns ``request_id, phase_type, t_start, t_end, prefill_tokens,
        decode_tokens, instance``; times in seconds since the earliest arrival
        (``attrs["time_origin_unix_nano"]``). Rows are ordered by request,
        prefill before decode.

    Raises
    ------
    ValueError
        If the file is not OTLP JSON, holds no such span, or a span lacks a
        required attribute or has an impossible value (negative latency,
        cached tokens above prompt tokens, no decode time for a request that
        decoded, inconsistent latencies, duplicate request ids, instance
        attribute on some spans only). The message names the line, the span
        id and the attribute.

    Examples
    --------
    >>> from sklearn_beta.io import read_otel_spans
    >>> phases = read_otel_spans("data/otel/spans.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Span file {str(path)!r} does not exist.")
    records = _otel_records(path, span_name, tuple(instance_attributes))
    if not records:
        raise ValueError(f"{str(path)!r} holds no span named {span_name!r}.")
    frame = pd.DataFrame.from_records(records)
    for name in OTEL_LATENCY_ATTRIBUTES.values():
        if name not in frame.columns:
            frame[name] = np.nan
    phases = _spans_to_phases(frame, cached_tokens_attribute, consistency_tol)
    if time_resolution > 0:
        codes = pd.factorize(phases["instance"])[0]
        t_start, t_end = snap_times(
            phases["t_start"].to_numpy(),
            phases["t_end"].to_numpy(),
            codes,
            time_resolution,
        )
        phases["t_start"], phases["t_end"] = t_start, t_end
    return phases


def _spans_to_phases(frame, cached_attr, consistency_tol) -> pd.DataFrame:
    attr = OTEL_LATENCY_ATTRIBUTES
    request_id = frame[attr["request_id"]]
    bad = request_id.isna().to_numpy()
    if bad.any():
        raise ValueError(
            f"llm_request span attribute {attr['request_id']!r} is missing: "
            f"{_describe(frame, bad, [attr['request_id']])}."
        )
    dup = request_id.duplicated(keep=False).to_numpy()
    if dup.any():
        raise ValueError(
            f"llm_request spans repeat {attr['request_id']!r}: "
            f"{_describe(frame, dup, [attr['request_id']])}."
        )
    start_ns = pd.to_numeric(frame["_start_ns"], errors="coerce")
    bad = start_ns.isna().to_numpy()
    if bad.any():
        raise ValueError(
            "llm_request span field 'startTimeUnixNano' is missing or not an "
            f"integer: {_describe(frame, bad, ['_start_ns'])}."
        )
    # Integer nanoseconds: subtract the origin before converting to float.
    start_ns = start_ns.astype("int64").to_numpy()
    origin_ns = int(start_ns.min())
    arrival = (start_ns - origin_ns) / 1e9

    queue, ttft, prefill, decode, e2e = (
        _numeric_field(frame, attr[k])
        for k in ("queue", "ttft", "prefill", "decode", "e2e")
    )
    for key, values in (("queue", queue), ("prefill", prefill), ("decode", decode)):
        bad = values < 0
        if bad.any():
            raise ValueError(
                f"llm_request span attribute {attr[key]!r} is negative: "
                f"{_describe(frame, bad, [attr[key]])}."
            )
    bad = prefill <= 0
    if bad.any():
        raise ValueError(
            f"llm_request span attribute {attr['prefill']!r} must be positive: "
            f"{_describe(frame, bad, [attr['prefill']])}."
        )
    prompt = _token_field(frame, attr["prompt_tokens"])
    completion = _token_field(frame, attr["completion_tokens"])
    bad = completion < 1
    if bad.any():
        raise ValueError(
            f"llm_request span attribute {attr['completion_tokens']!r} must be "
            f">= 1 (the last prefill step emits a token): "
            f"{_describe(frame, bad, [attr['completion_tokens']])}."
        )
    cached = np.zeros_like(prompt)
    if cached_attr is not None and cached_attr in frame.columns:
        present = frame[cached_attr].notna().to_numpy()
        cached[present] = _token_field(frame.loc[present], cached_attr)
        bad = cached > prompt
        if bad.any():
            raise ValueError(
                f"llm_request span attribute {cached_attr!r} exceeds "
                f"{attr['prompt_tokens']!r}: "
                f"{_describe(frame, bad, [cached_attr, attr['prompt_tokens']])}."
            )
    decoded = completion > 1
    bad = decoded & (decode <= 0)
    if bad.any():
        raise ValueError(
            f"llm_request span attribute {attr['decode']!r} must be positive when "
            f"{attr['completion_tokens']!r} > 1: "
            f"{_describe(frame, bad, [attr['decode'], attr['completion_tokens']])}."
        )
    if consistency_tol is not None:
        _check_consistent(
            frame, queue + prefill, ttft, ("queue", "prefill"), "ttft", consistency_tol
        )
        _check_consistent(
            frame, ttft + decode, e2e, ("ttft", "decode"), "e2e", consistency_tol
        )

    instance = _instances(frame)
    prefill_start = arrival + queue
    prefill_end = prefill_start + prefill
    n = len(frame)
    prefill_rows = pd.DataFrame(
        {
            "request_id": request_id.to_numpy(),
            "phase_type": "prefill",
            "t_start": prefill_start,
            "t_end": prefill_end,
            "prefill_tokens": (prompt - cached).astype(np.int64),
            "decode_tokens": np.zeros(n, dtype=np.int64),
            "instance": instance,
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
            "instance": instance[decoded],
        }
    )
    order_key = np.concatenate([np.arange(n), np.flatnonzero(decoded)])
    phases = pd.concat([prefill_rows, decode_rows], ignore_index=True)
    phases = phases.iloc[np.argsort(order_key, kind="stable")].reset_index(drop=True)
    phases.attrs["time_origin_unix_nano"] = origin_ns
    return phases


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


# --------------------------------------------------------------------------
# Client side: a serving benchmark's detailed results
# --------------------------------------------------------------------------


def read_benchmark_results(
    path: str | PathLike,
    *,
    start_times_key: str = "start_times",
) -> pd.DataFrame:
    """Read a serving benchmark's per-request results into a phase table.

    An approximation: the client sees neither queueing nor the engine's
    clock. The prefill phase is ``[start, start + ttft)``, so it also holds
    the time in queue and the network round trip; the decode phase is
    ``[start + ttft, start + ttft + sum(itl))`` with ``output_len - 1`` decode
    tokens (the first token closes the prefill, as in :func:`read_otel_spans`);
    ``prefill_tokens`` is the whole ``input_len`` (the client does not know
    what the prefix cache served). Expect ``beta0`` and ``beta1`` to absorb
    the queueing: use server-side spans when you have them.

    The file is the JSON a benchmark client such as vLLM's serving benchmark
    saves with per-request details: lists ``input_lens``, ``output_lens``,
    ``ttfts`` (seconds), ``itls`` (per request, the list of inter-token gaps
    in seconds), optionally ``errors``, and the per-request send times under
    ``start_times_key`` (seconds, any origin).

    Parameters
    ----------
    path : str or path-like
        The result file.
    start_times_key : str, default="start_times"
        Key of the per-request send times.

    Returns
    -------
    phases : DataFrame
        Columns ``request_id`` (the request's index in the file),
        ``phase_type, t_start, t_end, prefill_tokens, decode_tokens`` and
        ``instance`` (``"client"``: the client cannot tell instances apart).

    Raises
    ------
    ValueError
        If a key is missing, the lists differ in length, or a value is
        impossible (negative, non-positive TTFT of a successful request, the
        number of ITLs not ``output_len - 1``).

    Warns
    -----
    UserWarning
        When failed requests (non-empty ``errors`` entry) are left out,
        with their count.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Benchmark result file {str(path)!r} does not exist.")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a JSON document: {exc}") from exc
    keys = [start_times_key, "input_lens", "output_lens", "ttfts", "itls"]
    missing = [k for k in keys if not isinstance(result, dict) or k not in result]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks per-request key(s) {missing}; save the "
            "benchmark with its detailed, per-request results."
        )
    lengths = {k: len(result[k]) for k in keys}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"Per-request lists of {str(path)!r} differ in length: {lengths}."
        )
    n = lengths["ttfts"]
    errors = result.get("errors") or [""] * n
    failed = np.array([bool(e) for e in errors], dtype=bool)
    if failed.all():
        raise ValueError(f"Every request in {str(path)!r} failed: nothing to fit.")
    if failed.any():
        warnings.warn(
            f"{int(failed.sum())} failed request(s) of {n} in {str(path)!r} are "
            "left out (non-empty 'errors').",
            UserWarning,
            stacklevel=2,
        )
    ok = ~failed
    start = np.asarray(result[start_times_key], dtype=np.float64)[ok]
    ttft = np.asarray(result["ttfts"], dtype=np.float64)[ok]
    input_len = np.asarray(result["input_lens"], dtype=np.float64)[ok]
    output_len = np.asarray(result["output_lens"], dtype=np.float64)[ok]
    itls = [result["itls"][i] for i in np.flatnonzero(ok)]
    n_itl = np.fromiter((len(x) for x in itls), dtype=np.int64, count=len(itls))
    decode_time = np.fromiter((sum(x) for x in itls), dtype=np.float64, count=len(itls))
    index = np.flatnonzero(ok)
    _check_bench(path, index, ttft > 0, "ttfts", "must be positive", ttft)
    _check_bench(path, index, input_len >= 0, "input_lens", "must be >= 0", input_len)
    _check_bench(
        path, index, output_len >= 1, "output_lens", "must be >= 1", output_len
    )
    _check_bench(
        path,
        index,
        n_itl == output_len - 1,
        "itls",
        "must hold output_len - 1 gaps",
        n_itl,
    )
    decoded = (output_len > 1) & (decode_time > 0)
    prefill_end = start - start.min() + ttft
    prefill_rows = pd.DataFrame(
        {
            "request_id": index,
            "phase_type": "prefill",
            "t_start": prefill_end - ttft,
            "t_end": prefill_end,
            "prefill_tokens": input_len.astype(np.int64),
            "decode_tokens": 0,
            "instance": "client",
        }
    )
    decode_rows = pd.DataFrame(
        {
            "request_id": index[decoded],
            "phase_type": "decode",
            "t_start": prefill_end[decoded],
            "t_end": (prefill_end + decode_time)[decoded],
            "prefill_tokens": 0,
            "decode_tokens": (output_len - 1)[decoded].astype(np.int64),
            "instance": "client",
        }
    )
    phases = pd.concat([prefill_rows, decode_rows], ignore_index=True)
    order = np.argsort(
        np.concatenate([np.arange(len(index)), np.flatnonzero(decoded)]), kind="stable"
    )
    return phases.iloc[order].reset_index(drop=True)


def _check_bench(path, index, ok, key, rule, values):
    bad = ~ok
    if bad.any():
        shown = ", ".join(
            f"request {i}: {v!r}"
            for i, v in zip(
                index[bad][:_MAX_SHOWN], values[bad][:_MAX_SHOWN], strict=True
            )
        )
        raise ValueError(f"{str(path)!r}: {key!r} {rule}; {shown}.")


# --------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------


def to_blis_coefficients(beta, *, time_unit: float = 1.0) -> list[float]:
    """Betas as BLIS's ``beta_coeffs``: microseconds per step and per token.

    Parameters
    ----------
    beta : array-like of shape (3,)
        ``[beta0, beta1, beta2]`` as fitted: time per step, per prefill token
        and per decode token, in the trace's time unit.
    time_unit : float, default=1.0
        Seconds per unit of the trace's times (1.0 for seconds, 1e-3 for
        milliseconds).

    Returns
    -------
    beta_coeffs : list of float
        ``[per step, per prefill token, per decode token]`` in microseconds
        (units :data:`BLIS_UNITS`).

    Raises
    ------
    ValueError
        If ``beta`` does not hold three finite, non-negative numbers.

    Examples
    --------
    >>> from sklearn_beta.io import to_blis_coefficients
    >>> to_blis_coefficients([0.004, 3e-5, 2e-4])
    [4000.0, 30.0, 200.0]
    """
    beta = np.asarray(beta, dtype=np.float64)
    if beta.shape != (3,) or not np.all(np.isfinite(beta)) or np.any(beta < 0):
        raise ValueError(
            "beta must hold three finite, non-negative numbers [beta0, beta1, "
            f"beta2], got {beta.tolist()!r}."
        )
    if not np.isfinite(time_unit) or time_unit <= 0:
        raise ValueError(f"time_unit must be a positive number, got {time_unit!r}.")
    # Rounded to 1e-9 us so that 0.004 s gives 4000.0, not 4000.0000000000005.
    return np.round(beta * time_unit * 1e6, 9).tolist()
