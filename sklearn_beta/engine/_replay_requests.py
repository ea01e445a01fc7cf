"""A trace's requests as the replay needs them: arrays, one entry per request.

Pairs each request's prefill and decode rows of a validated phase table and
returns its arrival, prompt tokens, decode steps, instance and observed phase
times; plus the two facts about a trace the replay derives from it (the
observed concurrency and the clock origin).
"""

from __future__ import annotations

from dataclasses import astuple

import numpy as np

from ..core._engine_model import decode_steps
from ..core._validation import PhaseColumns, check_phases, describe_rows, numeric_column

#: Times at or beyond this (seconds, about 194 days: an epoch clock) are
#: replayed relative to a whole second, so that steps add up precisely.
EPOCH_CLOCK = 2.0**24


def trace_requests(
    phases,
    cols: PhaseColumns,
    arrival_col,
    *,
    include_first: bool = False,
    cached_col: str | None = None,
    intended_col: str | None = None,
) -> dict:
    """Per request (order of first appearance): what the replay needs and the
    observed times, as arrays.

    Decode steps are the ``N_steps`` of decode rows when the table has them,
    else their ``decode_tokens`` read with the decode convention
    (``include_first``: the count holds the first token, one step fewer).
    ``cached_col`` and ``intended_col`` name the prefill rows' prefix-cached
    prompt tokens and intended arrivals (a closed-loop client's), when used.
    """
    arrays = check_phases(phases, cols)
    context = [name for name in astuple(cols) if name in phases.columns]
    request, is_prefill = arrays.request, arrays.is_prefill
    n_req = int(request.max()) + 1
    rows = np.full((2, n_req), -1)
    rows[0, request[is_prefill]] = np.flatnonzero(is_prefill)
    rows[1, request[~is_prefill]] = np.flatnonzero(~is_prefill)
    lone = (rows < 0).any(axis=0)[request]
    if lone.any():
        raise ValueError(
            f"Column {cols.request_id!r}: the replay needs a prefill and a decode "
            "row for every request. " + describe_rows(phases, lone, context)
        )
    pre, dec = rows
    t_start = numeric_column(phases, cols.t_start, context)
    t_end = numeric_column(phases, cols.t_end, context)
    prompt = arrays.prefill_tokens[pre]
    bad = (prompt < 1)[request] & is_prefill
    if bad.any():
        raise ValueError(
            f"Column {cols.prefill_tokens!r}: the replay needs at least one prompt "
            "token per prefill. " + describe_rows(phases, bad, context)
        )
    if arrays.n_steps is None:
        steps = _decode_steps(phases, arrays, cols, include_first, context)
    else:
        steps = arrays.n_steps
    instance_col = cols.instance_id
    instance_id = (
        phases[instance_col].to_numpy()[pre]
        if instance_col in phases.columns
        else np.zeros(n_req, dtype=np.int64)
    )
    requests = {
        "request_id": phases[cols.request_id].to_numpy()[pre],
        "instance": arrays.instance[pre],
        "instance_id": instance_id,
        "prompt": prompt.astype(np.int64),
        "decode_steps": steps[dec].astype(np.int64),
        "prefill_start": t_start[pre],
        "prefill_end": t_end[pre],
        "decode_end": t_end[dec],
    }
    requests["arrival"] = _arrival_times(phases, arrival_col, pre, requests, context)
    requests["cached"] = None
    if cached_col is not None:
        requests["cached"] = _named_column(phases, cached_col, pre, context)
    requests["intended"] = requests["arrival"]
    if intended_col is not None:
        requests["intended"] = _named_column(phases, intended_col, pre, context)
    return requests


def _decode_steps(phases, arrays, cols, include_first, context) -> np.ndarray:
    """Decode steps per row from ``decode_tokens`` under the decode convention."""
    steps = decode_steps(arrays.decode_tokens, include_first)
    bad = ~arrays.is_prefill & (steps < 0)
    if bad.any():
        raise ValueError(
            f"Column {cols.decode_tokens!r}: with decode_tokens_include_first=True "
            "a decode row counts its first token, so it needs at least 1. "
            + describe_rows(phases, bad, context)
        )
    return steps


def _named_column(phases, name, pre, context) -> np.ndarray:
    if name not in phases.columns:
        raise ValueError(
            f"{name!r} is not a column of the phase table; it has "
            f"{list(phases.columns)[:20]}."
        )
    return numeric_column(phases, name, context + [name])[pre]


def _arrival_times(phases, arrival_col, pre, requests, context) -> np.ndarray:
    if arrival_col is None or arrival_col not in phases.columns:
        if arrival_col not in (None, "arrival"):
            raise ValueError(
                f"arrival={arrival_col!r} is not a column of the phase table; it "
                f"has {list(phases.columns)[:20]}."
            )
        return requests["prefill_start"].copy()
    arrival = numeric_column(phases, arrival_col, context + [arrival_col])[pre]
    late = arrival > requests["prefill_start"]
    if late.any():
        mask = np.zeros(len(phases), dtype=bool)
        mask[pre[late]] = True
        raise ValueError(
            f"Column {arrival_col!r}: a request cannot arrive after its prefill "
            "starts. " + describe_rows(phases, mask, context + [arrival_col])
        )
    return arrival


def observed_concurrency(requests) -> np.ndarray:
    """Per instance, the most requests running at once in ``[prefill start,
    decode end)``; an end and a start at the same time do not overlap."""
    instance = requests["instance"]
    times = np.concatenate((requests["prefill_start"], requests["decode_end"]))
    delta = np.repeat([1, -1], instance.shape[0])
    inst = np.concatenate((instance, instance))
    order = np.lexsort((delta, times, inst))  # ends first at a tie
    # instance by instance: each one's count is back to 0 at its end
    running = np.cumsum(delta[order])
    peak = np.zeros(int(instance.max()) + 1, dtype=np.int64)
    np.maximum.at(peak, inst[order], running)
    return peak


def clock_origin(arrival, instance) -> np.ndarray:
    """Per request, a whole second to replay from on an epoch clock, else 0.

    Subtracting a whole number of seconds from a time of that magnitude is
    exact; other clocks are replayed as they are, so that a simulated trace's
    step times are summed exactly as the simulator summed them.
    """
    first = np.full(int(instance.max()) + 1, np.inf)
    np.minimum.at(first, instance, arrival)
    origin = np.where(first >= EPOCH_CLOCK, np.floor(first), 0.0)
    return origin[instance]
