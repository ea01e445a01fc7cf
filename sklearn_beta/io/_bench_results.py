"""Reader of a serving benchmark's per-request results (client side).

Public through :func:`sklearn_beta.io.read_benchmark_results`.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..core._warnings import warn

_MAX_SHOWN = 5


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
    tokens (the first token closes the prefill, as in
    :func:`sklearn_beta.io.read_otel_spans`);
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
        ``instance_id`` (``"client"``: the client cannot tell instances apart).

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
    result = _load_result(path, start_times_key)
    failed = _failed_requests(result, path)
    if failed.any():
        warn(
            f"{int(failed.sum())} failed request(s) of {len(result['ttfts'])} "
            f"in {str(path)!r} are left out (non-empty 'errors').",
            UserWarning,
        )
    ok = ~failed
    start = np.asarray(result[start_times_key], dtype=np.float64)[ok]
    ttft = np.asarray(result["ttfts"], dtype=np.float64)[ok]
    input_len = np.asarray(result["input_lens"], dtype=np.float64)[ok]
    output_len = np.asarray(result["output_lens"], dtype=np.float64)[ok]
    index = np.flatnonzero(ok)
    itls = [result["itls"][i] for i in index]
    n_itl = np.fromiter((len(x) for x in itls), dtype=np.int64, count=len(itls))
    decode_time = np.fromiter((sum(x) for x in itls), dtype=np.float64, count=len(itls))
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
    phases = _client_phases(index, start, ttft, input_len, output_len, decode_time)
    phases.attrs["client_side"] = True
    return phases


def _load_result(path: Path, start_times_key: str) -> dict:
    """The result file's JSON, checked to hold per-request lists of one length."""
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
    return result


def _failed_requests(result: dict, path: Path) -> np.ndarray:
    """Which requests failed (a non-empty ``errors`` entry); raises if all did."""
    n = len(result["ttfts"])
    errors = result.get("errors") or [""] * n
    failed = np.array([bool(e) for e in errors], dtype=bool)
    if failed.all():
        raise ValueError(f"Every request in {str(path)!r} failed: nothing to fit.")
    return failed


def _client_phases(index, start, ttft, input_len, output_len, decode_time):
    """The phase table the client sees: each request's prefill row, then its
    decode row when it decoded for a positive time."""
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
            "instance_id": "client",
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
            "instance_id": "client",
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
