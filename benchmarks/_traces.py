"""Large synthetic phase tables for speed measurements.

Speed depends on the number of phases and on how many overlap, not on how
realistic the step times are, so this draws a stationary trace directly in
O(n) instead of simulating every engine step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_trace(
    n_phases: int,
    *,
    running: float = 64.0,
    chunk_size: int = 256,
    seed: int = 0,
    beta=(6e-3, 3e-5, 8e-5),
) -> pd.DataFrame:
    """A trace of ``n_phases`` phases with about ``running`` requests in flight."""
    rng = np.random.default_rng(seed)
    n_req = n_phases // 2
    prompt = np.clip(rng.lognormal(np.log(512), 0.8, n_req), 1, 16384).round()
    output = np.clip(rng.lognormal(np.log(128), 0.8, n_req), 1, 4096).round()
    step = beta[0] + beta[1] * chunk_size * 0.3 + beta[2] * running
    prefill_len = np.ceil(prompt / chunk_size) * step * rng.lognormal(0, 0.1, n_req)
    decode_len = output * step * rng.lognormal(0, 0.1, n_req)
    mean_life = float(np.mean(prefill_len + decode_len))
    arrival = np.cumsum(rng.exponential(mean_life / running, n_req))
    prefill_end = arrival + prefill_len
    ids = np.arange(n_req)
    return pd.DataFrame(
        {
            "request_id": np.repeat(ids, 2),
            "phase_type": np.tile(np.array(["prefill", "decode"], dtype=object), n_req),
            "t_start": np.column_stack([arrival, prefill_end]).ravel(),
            "t_end": np.column_stack([prefill_end, prefill_end + decode_len]).ravel(),
            "prefill_tokens": np.column_stack([prompt, np.zeros(n_req)]).ravel(),
            "decode_tokens": np.column_stack([np.zeros(n_req), output]).ravel(),
        }
    )
