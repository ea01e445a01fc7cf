"""Simulated phase tables for speed measurements, cached on disk.

The iterative estimator's cost is linear in its iteration count, which
depends on how well the trace fits the step model; a simulated trace gives the
iteration counts a user would see. Traces are cached under
``benchmarks/.cache`` because simulating 1e6 phases takes tens of seconds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sklearn_beta.datasets import simulate_trace

CACHE = Path(__file__).resolve().parent / ".cache"
BETA = (6e-3, 3e-5, 8e-5)  # s/step, s/prefill token, s/decode token


def speed_trace(n_phases: int, *, chunk_size: int = 256, seed: int = 0) -> pd.DataFrame:
    """A heavily loaded single-engine trace of ``n_phases`` phases."""
    path = CACHE / f"speed_{n_phases}_{chunk_size}_{seed}.pkl"
    if path.exists():
        return pd.read_pickle(path)
    phases = simulate_trace(
        n_phases // 2,
        beta=BETA,
        chunk_size=chunk_size,
        max_num_seqs=256,
        arrival_rate=60.0,
        prompt_tokens=(512, 0.8),
        output_tokens=(128, 0.8),
        noise=0.02,
        random_state=seed,
    )
    CACHE.mkdir(exist_ok=True)
    phases.to_pickle(path)
    return phases
