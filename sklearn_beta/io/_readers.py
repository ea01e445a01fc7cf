"""Trace adapters: files in, the phase table out; betas out, simulator input.

Every reader returns the phase table of docs/method.md section 2 (one row per
phase, columns ``request_id, phase_type, t_start, t_end, prefill_tokens,
decode_tokens`` and, for the adapters, ``instance_id``), ready for
:class:`~sklearn_beta.PhaseExposureTransformer` or the functional estimators.

* :func:`read_phases`: CSV or Parquet already in the reference schema.
* :func:`read_otel_spans`: OTLP JSON lines of vLLM's ``llm_request`` spans.
* :func:`read_benchmark_results`: a serving benchmark's detailed results, a
  client-side approximation.
* :func:`read_tracev2`: BLIS TraceV2 and TraceV3 request traces (client side).
* :func:`read_vllm_request_stats`: vLLM's per-request engine timestamps
  (queued, scheduled, first and last token), CSV or JSON lines.
* :func:`to_blis_coefficients` (from :mod:`sklearn_beta.export`): betas as
  BLIS's ``beta_coeffs``.

How the OpenTelemetry span fields map (all times of a span are relative to
its start ``startTimeUnixNano``, the request's arrival):

=====================  ==============================================================
phase-table column     source
=====================  ==============================================================
``request_id``         ``gen_ai.request.id``
``instance_id``        first present resource attribute of ``instance_attributes``
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

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..core._grid import snap_times
from ._bench_results import read_benchmark_results
from ._export import BLIS_UNITS, to_blis_coefficients
from ._files import expand_trace_paths, read_phases_dask, schema_columns_first
from ._formats import PHASE_FORMATS, check_format
from ._otel import (
    DEFAULT_CACHED_TOKENS_ATTRIBUTE,
    DEFAULT_INSTANCE_ATTRIBUTES,
    OTEL_LATENCY_ATTRIBUTES,
    otel_records,
    spans_to_phases,
)
from ._tracev2 import (
    TIME_UNITS,
    TRACEV2_COLUMNS,
    TRACEV3_CARRIED,
    TRACEV3_COLUMNS,
    tracev2_phases,
)
from ._vllm_stats import VLLM_STATS_COLUMNS, VLLM_STATS_OPTIONAL, vllm_stats_phases

__all__ = [
    "BLIS_UNITS",
    "OTEL_LATENCY_ATTRIBUTES",
    "TIME_UNITS",
    "TRACEV2_COLUMNS",
    "TRACEV3_CARRIED",
    "TRACEV3_COLUMNS",
    "VLLM_STATS_COLUMNS",
    "VLLM_STATS_OPTIONAL",
    "read_benchmark_results",
    "read_otel_spans",
    "read_phases",
    "read_tracev2",
    "read_vllm_request_stats",
    "to_blis_coefficients",
]


# --------------------------------------------------------------------------
# Reference schema: CSV and Parquet
# --------------------------------------------------------------------------


def read_phases(
    path: str | PathLike,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    time_unit: str = "s",
    dask: bool = False,
) -> pd.DataFrame:
    """Read a phase table in the reference schema from CSV or Parquet.

    Columns are found by name, in any order; extra columns are kept.

    Parameters
    ----------
    path : str or path-like
        The file, or a directory (its CSV or Parquet files) or a glob such as
        ``"traces/*.parquet"``: their tables are concatenated, in file order.
    format : {"csv", "parquet"} or None, default=None
        File format, also of a directory's or glob's files and with
        ``dask=True``; inferred from the suffix when None (``.parquet``/``.pq``
        is Parquet, ``.csv`` or a suffix of no other format CSV).
    columns : dict or None, default=None
        Renames applied after reading, ``{name in the file: schema name}``,
        e.g. ``{"start_s": "t_start"}``.
    time_unit : {"s", "ms", "us", "ns"}, default="s"
        Unit of ``t_start`` and ``t_end`` in the file; they are returned in
        seconds.
    dask : bool, default=False
        Return a lazy ``dask.dataframe.DataFrame``, one partition per file
        (:func:`sklearn_beta.fleet.read_phases_dask`; needs
        ``sklearn-beta[dask]``), for the estimators' distributed fit.

    Returns
    -------
    phases : DataFrame
        The table, with the schema's columns first.

    Raises
    ------
    ValueError
        If the file is missing, unreadable, or lacks a schema column, or the
        format (given or inferred) is not CSV or Parquet.

    Examples
    --------
    >>> from sklearn_beta.io import read_phases
    >>> phases = read_phases("data/traces/sample.csv")  # doctest: +SKIP
    """
    if time_unit not in TIME_UNITS:
        raise ValueError(
            f"time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}."
        )
    if format is not None:
        check_format(format, path, PHASE_FORMATS, "read_phases")
    if dask:
        frame = read_phases_dask(path, format=format, columns=columns, blocksize=None)
        for name in ("t_start", "t_end"):
            frame[name] = frame[name] * TIME_UNITS[time_unit]
        return frame
    target = Path(path)
    if target.is_dir() or (not target.is_file() and any(c in str(path) for c in "*?[")):
        files = expand_trace_paths(path)
        return pd.concat(
            [
                read_phases(f, format=format, columns=columns, time_unit=time_unit)
                for f in files
            ],
            ignore_index=True,
        )
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Trace file {str(path)!r} does not exist.")
    format = check_format(format, path, PHASE_FORMATS, "read_phases")
    if format == "csv":
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError) as exc:
            raise ValueError(f"Cannot read {str(path)!r} as CSV: {exc}") from exc
    else:
        frame = _read_parquet(path)
    frame = schema_columns_first(frame, columns, str(path))
    if time_unit != "s":
        for name in ("t_start", "t_end"):
            # Non-numbers stay for the phase validation to name.
            values = pd.to_numeric(frame[name], errors="coerce")
            if values.notna().all():
                frame[name] = values * TIME_UNITS[time_unit]
    return frame


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
        decode_tokens, instance_id``; times in seconds since the earliest arrival
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
    records = otel_records(path, span_name, tuple(instance_attributes))
    if not records:
        raise ValueError(f"{str(path)!r} holds no span named {span_name!r}.")
    frame = pd.DataFrame.from_records(records)
    for name in OTEL_LATENCY_ATTRIBUTES.values():
        if name not in frame.columns:
            frame[name] = np.nan
    phases = spans_to_phases(frame, cached_tokens_attribute, consistency_tol)
    if time_resolution > 0:
        codes = pd.factorize(phases["instance_id"])[0]
        t_start, t_end = snap_times(
            phases["t_start"].to_numpy(),
            phases["t_end"].to_numpy(),
            codes,
            time_resolution,
        )
        phases["t_start"], phases["t_end"] = t_start, t_end
    return phases


# --------------------------------------------------------------------------
# BLIS TraceV2 (client side)
# --------------------------------------------------------------------------


def read_tracev2(data_csv: str | PathLike, header=None) -> pd.DataFrame:
    """Read a BLIS TraceV2 or TraceV3 request trace into a phase table.

    TraceV2 is the request trace BLIS's ``observe`` and ``replay`` commands
    write: a YAML header and a CSV with one row per request (columns listed
    in ``docs/formats.md``; :data:`TRACEV2_COLUMNS` are the ones read).
    Each request with ``status`` ``ok`` gives

    * a prefill row ``[send_time_us, first_chunk_time_us]`` whose
      ``prefill_tokens`` are ``server_input_tokens`` when non-zero, otherwise
      ``input_tokens``;
    * when ``output_tokens > 1``, a decode row ``[first_chunk_time_us,
      last_chunk_time_us]`` with ``output_tokens - 1`` decode tokens (the last
      prefill step emits the first token).

    The times are the client's: the prefill row also holds the network
    round trip, the server's request handling and any queueing, and the
    decode row the streaming delay of the last chunk. Fitted on such a
    trace, these request-level costs are what the exported ``alpha_coeffs``
    estimate (``docs/formats.md``).

    A header with ``trace_version: 3`` makes the CSV a TraceV3 trace: its
    columns are found by any name :data:`TRACEV3_COLUMNS` accepts, and each
    row of a request also carries ``arrival`` (the send, what the engine
    saw), ``intended_arrival`` (when a closed-loop client meant to send it),
    ``tenant_id`` and, when present, the :data:`TRACEV3_CARRIED` columns
    (``client_id``, ``instance_id``, ``model``, ``adapter``).

    Parameters
    ----------
    data_csv : str or path-like
        The TraceV2 or TraceV3 CSV.
    header : str, path-like, dict or None, default=None
        The YAML header (a path, or the parsed mapping). Its ``time_unit``
        sets the unit of the time columns (microseconds without one); its
        ``trace_version`` (2 without one) the columns read.

    Returns
    -------
    phases : DataFrame
        Columns ``request_id, phase_type, t_start, t_end, prefill_tokens,
        decode_tokens`` (and TraceV3's request columns), times in seconds
        since the earliest send (TraceV3: the earliest intended arrival).
        ``attrs`` holds ``notes`` (e.g. how many requests were dropped for
        their status, how far sends lag the intended arrivals),
        ``client_side=True``, ``time_origin`` (seconds, in the trace's
        clock), ``trace_version`` and the ``header``.

    Raises
    ------
    ValueError
        If a file is missing or unreadable, the version is not 2 or 3, a
        column is missing (TraceV3: the message lists the names accepted), a
        time or token count is not a non-negative integer, a chunk time
        precedes its phase's start or a send its intended arrival, or no
        request has status ``ok``.

    Examples
    --------
    >>> from sklearn_beta.io import read_tracev2
    >>> phases = read_tracev2("trace.csv", header="trace.yaml")  # doctest: +SKIP
    """
    return tracev2_phases(data_csv, header)


# --------------------------------------------------------------------------
# vLLM request stats (engine side)
# --------------------------------------------------------------------------


def read_vllm_request_stats(
    path: str | PathLike,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    time_unit: str = "s",
) -> pd.DataFrame:
    """Read vLLM's per-request engine timestamps into a phase table.

    One row (CSV) or JSON object (JSON lines) per request, with the times
    vLLM's engine records for it on its own clock (``RequestStateStats``):
    ``queued``, ``scheduled`` (first scheduled), ``first_token`` and
    ``last_token``, and the counts ``prompt_tokens`` and ``output_tokens``.
    Columns are found by any name :data:`VLLM_STATS_COLUMNS` accepts (vLLM's
    own ``queued_ts``, ``num_generation_tokens``, ... among them); the
    optional :data:`VLLM_STATS_OPTIONAL` are the prompt tokens served from
    the prefix cache and the engine instance. Each request gives

    * a prefill row ``[scheduled, first_token]`` with ``prompt_tokens``
      minus the cached tokens: engine-side, so no queueing inside the phase;
    * when ``output_tokens > 1``, a decode row ``[first_token, last_token]``
      with ``output_tokens - 1`` decode tokens (the last prefill step emits
      the first token).

    Both rows carry ``arrival`` (= ``queued``), ``queued`` and ``scheduled``:
    the wait before the first step, for the replay and the
    schedule-consistent estimator.

    Parameters
    ----------
    path : str or path-like
        The file.
    format : {"csv", "jsonl"} or None, default=None
        File format; None infers it from the suffix (``.jsonl``/``.ndjson``
        JSON lines, ``.csv`` or a suffix of no other format CSV).
    columns : dict or None, default=None
        Renames applied after reading, ``{name in the file: accepted name}``,
        e.g. ``{"t_sched": "scheduled"}``.
    time_unit : {"s", "ms", "us", "ns"}, default="s"
        Unit of the four times; they are returned in seconds since the
        earliest ``queued`` (integer columns are subtracted as integers).

    Returns
    -------
    phases : DataFrame
        Columns ``request_id, phase_type, t_start, t_end, prefill_tokens,
        decode_tokens, arrival, queued, scheduled`` (and ``instance_id`` when
        the file has one), prefill before decode per request. ``attrs``
        holds ``time_origin`` (the earliest ``queued``, in seconds) and
        ``client_side=False``.

    Raises
    ------
    ValueError
        If the file is missing or unreadable, the format is not CSV or JSON
        lines, a column is missing (the message lists the names accepted), a
        time is not a number, the times of a request are not ordered
        ``queued <= scheduled <= first_token <= last_token``, a count is not
        a non-negative integer, ``output_tokens < 1`` or more tokens are
        cached than prompted. The message names the column and the first
        offending rows.

    Examples
    --------
    >>> from sklearn_beta.io import read_vllm_request_stats
    >>> phases = read_vllm_request_stats("stats.jsonl")  # doctest: +SKIP
    """
    return vllm_stats_phases(path, format, columns, time_unit)
