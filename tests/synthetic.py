"""Small random phase tables for property tests (not a faithful simulator).

Requests arrive at random and run a prefill of ``ceil(P/C)`` steps followed by
a decode of ``D`` steps. Step times follow ``beta0 + beta1 p_pf + beta2 p_dec``
with the pressures each phase saw in a first pass over the same arrivals, with
10% noise. Good enough to give the estimators overlapping phases, varying
pressures and non-zero betas; the estimators' accuracy is tested elsewhere.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sklearn_beta._grid import build_timeline, phase_integrals

#: Time quantum of :func:`synthetic_trace` with ``quantum=GRID``: a shift by
#: a multiple of it up to 2e9 s keeps every time exact in float64.
GRID = 2.0**-22
BETA = (0.01, 1e-4, 5e-4)


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
    """A random phase table; times are multiples of ``quantum`` when given."""
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
        step = _step_times(t0, t1, t2, instance, n_chunks, output, chunk_size, beta)
    if quantum is not None:
        t0, t1, t2 = (np.round(t / quantum) * quantum for t in (t0, t1, t2))
        t1 = np.maximum(t1, t0 + quantum)
        t2 = np.maximum(t2, t1 + quantum)
    ids = np.array([f"r{i}" for i in range(n_requests)])
    frame = pd.DataFrame(
        {
            "request_id": np.concatenate([ids, ids]),
            "phase_type": ["prefill"] * n_requests + ["decode"] * n_requests,
            "t_start": np.concatenate([t0, t1]),
            "t_end": np.concatenate([t1, t2]),
            "prefill_tokens": np.concatenate([prompt, np.zeros(n_requests, int)]),
            "decode_tokens": np.concatenate([np.zeros(n_requests, int), output]),
            "instance": np.concatenate([instance, instance]),
        }
    )
    # Every instance needs at least one request: renumber the ones in use.
    frame["instance"] = pd.factorize(frame["instance"], sort=True)[0]
    return frame


def _step_times(t0, t1, t2, instance, n_chunks, output, chunk_size, beta):
    """Mean step time of each request's prefill and decode under ``beta``."""
    n = t0.shape[0]
    timeline = build_timeline(
        np.concatenate([t0, t1]),
        np.concatenate([t1, t2]),
        np.concatenate([instance, instance]),
        np.repeat([True, False], n),
        np.concatenate([n_chunks, output]).astype(float),
        np.zeros(2 * n),
        chunk_size,
    )
    seg_len = timeline.trace_grid.seg_len
    length = timeline.duration
    b0, b1, b2 = beta
    step_time = b0 + b1 * timeline.p_pf_full + b2 * timeline.p_dec
    mean = phase_integrals(timeline.trace_grid, step_time * seg_len) / length
    return mean.reshape(2, n)
