"""Trace adapters: files in, the phase table out; betas out, simulator input.

Every reader returns the phase table of docs/method.md section 2 (one row per
phase, columns ``request_id, phase_type, t_start, t_end, prefill_tokens,
decode_tokens`` and, for the adapters, ``instance_id``), ready for
:class:`~sklearn_beta.PhaseExposureTransformer` or the functional estimators.

* :func:`read_phases`: CSV or Parquet already in the reference schema.
* :func:`read_otel_spans`: OTLP JSON lines of vLLM's ``llm_request`` spans.
* :func:`read_benchmark_results`: a serving benchmark's detailed results, a
  client-side approximation.
* :func:`read_tracev2`: BLIS TraceV2 request traces (client side).
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

from ..core._columns import PHASE_COLUMNS
from ..core._grid import snap_times
from ._bench_results import read_benchmark_results
from ._export import BLIS_UNITS, to_blis_coefficients
from ._otel import (
    DEFAULT_CACHED_TOKENS_ATTRIBUTE,
    DEFAULT_INSTANCE_ATTRIBUTES,
    OTEL_LATENCY_ATTRIBUTES,
    otel_records,
    spans_to_phases,
)
from ._tracev2 import TIME_UNITS, TRACEV2_COLUMNS, tracev2_phases

__all__ = [
    "BLIS_UNITS",
    "OTEL_LATENCY_ATTRIBUTES",
    "TIME_UNITS",
    "TRACEV2_COLUMNS",
    "read_benchmark_results",
    "read_otel_spans",
    "read_phases",
    "read_tracev2",
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
        File format; inferred from the suffix (``.parquet``/``.pq`` is
        Parquet, anything else CSV) when None.
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
        If the file is missing, unreadable, or lacks a schema column.

    Examples
    --------
    >>> from sklearn_beta.io import read_phases
    >>> phases = read_phases("data/traces/sample.csv")  # doctest: +SKIP
    """
    if time_unit not in TIME_UNITS:
        raise ValueError(
            f"time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}."
        )
    if dask:
        from ..distributed._fleet import read_phases_dask

        frame = read_phases_dask(path, columns=columns, blocksize=None)
        for name in ("t_start", "t_end"):
            frame[name] = frame[name] * TIME_UNITS[time_unit]
        return frame
    target = Path(path)
    if target.is_dir() or (not target.is_file() and any(c in str(path) for c in "*?[")):
        from ..distributed._fleet import expand_trace_paths

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
    frame = schema_columns_first(frame, columns, str(path))
    if time_unit != "s":
        for name in ("t_start", "t_end"):
            # Non-numbers stay for the phase validation to name.
            values = pd.to_numeric(frame[name], errors="coerce")
            if values.notna().all():
                frame[name] = values * TIME_UNITS[time_unit]
    return frame


def schema_columns_first(frame, columns: dict | None, source: str):
    """``frame`` (pandas or Dask) renamed by ``columns``, schema columns first.

    Raises ValueError naming ``source`` if a schema column is missing.
    """
    if columns:
        frame = frame.rename(columns=columns)
    missing = [c for c in PHASE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{source!r} lacks phase-table column(s) {missing}; it has "
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
    """Read a BLIS TraceV2 request trace into a phase table.

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

    Parameters
    ----------
    data_csv : str or path-like
        The TraceV2 CSV.
    header : str, path-like, dict or None, default=None
        The TraceV2 YAML header (a path, or the parsed mapping). Its
        ``time_unit`` sets the unit of the ``*_time_us`` columns; without a
        header they are read as microseconds.

    Returns
    -------
    phases : DataFrame
        Columns ``request_id, phase_type, t_start, t_end, prefill_tokens,
        decode_tokens``, times in seconds since the earliest send. ``attrs``
        holds ``notes`` (e.g. how many requests were dropped for their
        status), ``client_side=True``, ``time_origin`` (seconds, in the
        trace's clock) and the ``header``.

    Raises
    ------
    ValueError
        If a file is missing or unreadable, a column is missing, a time or
        token count is not a non-negative integer, a chunk time precedes its
        phase's start, or no request has status ``ok``.

    Examples
    --------
    >>> from sklearn_beta.io import read_tracev2
    >>> phases = read_tracev2("trace.csv", header="trace.yaml")  # doctest: +SKIP
    """
    return tracev2_phases(data_csv, header)
