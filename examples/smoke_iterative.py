"""Smallest possible iterative fit: three requests typed in by hand.

The iterative estimator starts from the baseline betas and re-weights every
phase's pressures by the step density those betas imply, until they settle.
"""

import pandas as pd
from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer

phases = pd.DataFrame(
    {
        "request_id": ["r1", "r1", "r2", "r2", "r3", "r3"],
        "phase_type": ["prefill", "decode"] * 3,
        "t_start": [0.00, 0.30, 0.10, 0.55, 0.40, 0.90],
        "t_end": [0.30, 1.10, 0.55, 1.30, 0.90, 1.60],
        "prefill_tokens": [80, 0, 100, 0, 50, 0],
        "decode_tokens": [0, 8, 0, 7, 0, 6],
    }
)

model = make_pipeline(
    PhaseExposureTransformer(chunk_size=32), IterativeBetaRegressor()
).fit(phases)
fit = model[-1]
print("beta (s/step, s/prefill token, s/decode token):", fit.beta_)
print(f"converged: {fit.converged_} after {fit.n_iter_} iterations")
print(fit.history_.to_string(index=False))
