"""Small synthetic phase tables for tests that need overlap, not engine realism.

Phases overlap the way they do on a busy engine (Poisson arrivals, prefill then
decode), but their durations are drawn directly, not simulated step by step:
these traces test bookkeeping (splitting, instances, weights, scoring), not
beta recovery.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


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
    """A phase table of ``n_requests`` requests spread over ``n_instances``."""
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
    frame = pd.DataFrame(
        {
            "request_id": np.repeat(ids, 2),
            "phase_type": np.tile(["prefill", "decode"], n_requests),
            "t_start": t0 + np.column_stack([arrival, prefill_end]).ravel(),
            "t_end": t0 + np.column_stack([prefill_end, decode_end]).ravel(),
            "prefill_tokens": np.column_stack([prefill, np.zeros(n_requests)]).ravel(),
            "decode_tokens": np.column_stack([np.zeros(n_requests), decode]).ravel(),
        }
    )
    if instance_col is not None:
        frame[instance_col] = np.repeat(instance, 2)
    return frame
