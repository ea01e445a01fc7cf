"""Every phase table the tests build, in one place.

Which factory for which test:

* :func:`simulated_trace` -- the package's step-level simulator
  (:func:`sklearn_beta.datasets.simulate_trace`): an engine that really ran
  steps of ``beta0 + beta1 p_pf + beta2 p_dec`` seconds. The independent
  oracle for anything about recovering betas.
* :func:`synthetic_trace` -- random requests whose phase lengths follow the
  step-time model on average, computed here from pairwise phase overlaps
  (not with the package's grid code). Times can sit on a binary grid, so
  shifted copies are exact in float64: for property tests of invariances.
* :func:`make_trace` -- Poisson arrivals over several instances with
  durations drawn directly: for bookkeeping (splitting, instances, weights,
  scoring), not for recovery.
* :func:`random_phases` -- a small valid table with overlapping phases, the
  starting point of the fuzzing strategies.
* :func:`tiny_trace` -- the four-request trace of the smoke examples,
  rebuilt from the simulator call ``examples/_tiny_trace.py`` cites.
* :func:`repeated_trace` -- copies of a trace laid end to end.
* :func:`sequential_trace`, :func:`prefills_only`, :func:`decodes_only`,
  :func:`constant_decode_pressure` -- typed-in degenerate shapes that
  cannot separate some betas, built with :func:`rows_table`.

The published traces and golden figures are files (``tests/data``), read
through :mod:`conftest`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sklearn_beta.core._columns import PHASE_COLUMNS
from sklearn_beta.datasets import simulate_trace

#: Time quantum of :func:`synthetic_trace` with ``quantum=GRID``: a shift by
#: a multiple of it up to 2e9 s keeps every time exact in float64.
GRID = 2.0**-22
BETA = (0.01, 1e-4, 5e-4)


def phase_table(
    request_id, t_arrival, t_prefill_end, t_decode_end, prefill_tokens, decode_tokens
) -> pd.DataFrame:
    """The phase table of requests given by their three times and two counts.

    Rows are all prefills, then all decodes, in the order of the requests.
    """
    n = len(request_id)
    return pd.DataFrame(
        {
            "request_id": np.concatenate([request_id, request_id]),
            "phase_type": ["prefill"] * n + ["decode"] * n,
            "t_start": np.concatenate([t_arrival, t_prefill_end]),
            "t_end": np.concatenate([t_prefill_end, t_decode_end]),
            "prefill_tokens": np.concatenate([prefill_tokens, np.zeros(n, int)]),
            "decode_tokens": np.concatenate([np.zeros(n, int), decode_tokens]),
        }
    )


def simulated_trace(
    seed: int,
    n_requests: int,
    chunk_size: int = 64,
    *,
    n_instances: int = 1,
    beta: tuple[float, float, float] = (5e-3, 3e-5, 2e-4),
    noise: float = 0.05,
) -> pd.DataFrame:
    """A busy, noisy engine (or fleet) of the step-level simulator."""
    return simulate_trace(
        n_requests,
        beta=beta,
        chunk_size=chunk_size,
        max_num_seqs=16,
        arrival_rate=20.0 * n_instances,
        noise=noise,
        n_instances=n_instances,
        random_state=seed % 2**32,
    )


def synthetic_trace(
    seed: int,
    n_requests: int = 20,
    chunk_size: int = 64,
    *,
    n_instances: int = 1,
    quantum: float | None = GRID,
    horizon: float = 20.0,
    beta: tuple[float, float, float] = BETA,
) -> pd.DataFrame:
    """Random requests whose mean step time follows ``beta`` (10 % noise).

    Each request runs ``ceil(P / C)`` prefill steps then ``D`` decode steps;
    a phase's step time is the model's at the pressures it saw in a first
    pass over the same arrivals. Times are multiples of ``quantum`` when
    given. Column ``instance_id`` numbers the instances from 0.
    """
    rng = np.random.default_rng(seed)
    arrival = rng.uniform(0.0, horizon, n_requests)
    prompt = rng.integers(1, 600, n_requests)
    output = rng.integers(1, 60, n_requests)
    instance = rng.integers(0, n_instances, n_requests)
    noise = rng.uniform(0.9, 1.1, (2, n_requests))
    b0, b1, b2 = beta
    n_chunks = np.ceil(prompt / chunk_size)
    step = np.full((2, n_requests), b0 + b1 * chunk_size / 2 + b2 * 2)
    for _ in range(2):  # first pass guesses the load, second uses it
        t0 = arrival
        t1 = t0 + n_chunks * step[0] * noise[0]
        t2 = t1 + output * step[1] * noise[1]
        step = _mean_step_times(t0, t1, t2, instance, chunk_size, beta)
    if quantum is not None:
        t0, t1, t2 = (np.round(t / quantum) * quantum for t in (t0, t1, t2))
        t1 = np.maximum(t1, t0 + quantum)
        t2 = np.maximum(t2, t1 + quantum)
    ids = np.array([f"r{i}" for i in range(n_requests)])
    frame = phase_table(ids, t0, t1, t2, prompt, output)
    # Every instance needs at least one request: renumber the ones in use.
    frame["instance_id"] = pd.factorize(np.tile(instance, 2), sort=True)[0]
    return frame


def _mean_step_times(t0, t1, t2, instance, chunk_size, beta):
    """Time-averaged step time of each request's prefill and decode.

    Pressures by brute force over pairs of phases: ``C`` prefill tokens per
    running prefill and one decode token per running decode, averaged over
    the phase's window. Independent of the package's grid on purpose.
    """
    n = t0.shape[0]
    start, end = np.concatenate([t0, t1]), np.concatenate([t1, t2])
    inst = np.tile(instance, 2)
    is_prefill = np.repeat([True, False], n)
    overlap = np.minimum(end[:, None], end[None, :]) - np.maximum(
        start[:, None], start[None, :]
    )
    overlap = np.where(inst[:, None] == inst[None, :], np.maximum(overlap, 0.0), 0.0)
    length = end - start
    p_pf = chunk_size * (overlap @ is_prefill) / length
    p_dec = (overlap @ ~is_prefill) / length
    b0, b1, b2 = beta
    return (b0 + b1 * p_pf + b2 * p_dec).reshape(2, n)


def make_trace(
    n_requests: int = 200,
    *,
    n_instances: int = 1,
    arrival_rate: float = 20.0,
    seed: int = 0,
    t0: float = 0.0,
    instance_col: str | None = "instance_id",
    decode_median: float = 60.0,
) -> pd.DataFrame:
    """``n_requests`` requests spread over ``n_instances``, durations drawn.

    Rows alternate prefill, decode per request.
    """
    rng = np.random.default_rng(seed)
    instance = rng.integers(0, n_instances, n_requests)
    gaps = rng.exponential(1.0 / arrival_rate, n_requests)
    # Arrivals are cumulative per instance: each instance is its own busy loop.
    order = np.argsort(instance, kind="stable")
    arrival = np.empty(n_requests)
    sorted_gaps = gaps[order]
    sorted_inst = instance[order]
    cum = np.cumsum(sorted_gaps)
    first = np.r_[0, np.flatnonzero(np.diff(sorted_inst)) + 1]
    offset = np.zeros(n_requests)
    offset[first[1:]] = cum[first[1:] - 1]
    arrival[order] = cum - np.maximum.accumulate(offset)
    prefill = np.ceil(rng.lognormal(np.log(300), 0.6, n_requests))
    decode = np.ceil(rng.lognormal(np.log(decode_median), 0.5, n_requests))
    prefill_end = arrival + np.ceil(prefill / 64) * 0.02 * rng.uniform(1, 2, n_requests)
    decode_end = prefill_end + decode * 0.012 * rng.uniform(1, 2, n_requests)
    ids = np.array([f"r{i}" for i in range(n_requests)], dtype=object)
    frame = phase_table(
        ids, t0 + arrival, t0 + prefill_end, t0 + decode_end, prefill, decode
    )
    interleaved = np.arange(2 * n_requests).reshape(2, -1).T.ravel()
    frame = frame.iloc[interleaved].reset_index(drop=True)
    if instance_col is not None:
        frame[instance_col] = np.repeat(instance, 2)
    return frame


def random_phases(rng: np.random.Generator, n_requests: int) -> pd.DataFrame:
    """A small valid trace with overlapping phases, times in milliseconds."""
    start = np.round(rng.uniform(0, 5, n_requests), 3)
    prefill_len = np.round(rng.uniform(0.01, 2, n_requests), 3) + 0.001
    decode_len = np.round(rng.uniform(0.01, 4, n_requests), 3) + 0.001
    ids = [f"r{i}" for i in range(n_requests)]
    prompt = rng.integers(1, 300, n_requests)
    output = rng.integers(1, 40, n_requests)
    prefill_end = start + prefill_len
    return phase_table(
        ids, start, prefill_end, prefill_end + decode_len, prompt, output
    )


def repeated_trace(
    phases: pd.DataFrame, copies: int = 6, period: float = 12.0
) -> pd.DataFrame:
    """``copies`` copies of a trace, each ``period`` seconds after the last,
    with request ids made unique: a longer trace for cross-validation."""
    parts = [
        phases.assign(
            request_id=phases["request_id"].astype(str) + f"-{k}",
            t_start=phases["t_start"] + period * k,
            t_end=phases["t_end"] + period * k,
        )
        for k in range(copies)
    ]
    return pd.concat(parts, ignore_index=True)


# --- Degenerate shapes: traces that cannot separate some betas ---------------


def rows_table(rows) -> pd.DataFrame:
    """A phase table typed in as ``(request_id, phase_type, t_start, t_end,
    prefill_tokens, decode_tokens)`` tuples."""
    return pd.DataFrame(list(rows), columns=list(PHASE_COLUMNS))


def sequential_trace(n=6):
    """Requests one after the other: no two phases ever overlap."""
    rows = []
    for i in range(n):
        t = 10.0 * i
        rows.append((f"r{i}", "prefill", t, t + 1 + 0.1 * i, 50 + 37 * i, 0))
        rows.append((f"r{i}", "decode", t + 2, t + 5 + i, 0, 10 + 3 * i))
    return rows_table(rows)


def prefills_only():
    return rows_table(
        [
            (f"r{i}", "prefill", 0.7 * i, 0.7 * i + 1 + 0.3 * i, 40 + 50 * i, 0)
            for i in range(6)
        ]
    )


def decodes_only():
    return rows_table(
        [
            (f"r{i}", "decode", 0.7 * i, 0.7 * i + 2 + 0.5 * i, 0, 5 + 4 * i)
            for i in range(6)
        ]
    )


def constant_decode_pressure():
    """One decode runs through the whole trace; overlapping prefills inside it."""
    rows = [("long", "decode", 0.0, 20.0, 0, 400)]
    rows += [
        (f"r{i}", "prefill", 1.0 + 2.5 * i, 4.0 + 2.7 * i, 40 + 60 * i, 0)
        for i in range(6)
    ]
    return rows_table(rows)


#: The simulator call ``examples/_tiny_trace.py`` was written down from.
TINY_CALL = dict(
    beta=(0.01, 1e-4, 5e-4),
    chunk_size=32,
    max_num_seqs=4,
    arrival_rate=20.0,
    prompt_tokens=(80, 0.5),
    output_tokens=(8, 0.4),
    random_state=0,
)


def tiny_trace() -> pd.DataFrame:
    """The smoke examples' four requests, times rounded to microseconds."""
    # One engine: the example types in no instance column.
    phases = simulate_trace(4, **TINY_CALL).drop(columns="instance_id")
    return phases.assign(
        request_id="r" + phases.request_id.astype(str),
        t_start=phases.t_start.round(6),
        t_end=phases.t_end.round(6),
    )
