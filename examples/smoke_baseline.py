"""Smallest possible baseline fit: three requests typed in by hand.

Three requests overlap on one engine (chunk size 32). The baseline estimator
integrates how many prefill and decode tokens shared each phase's steps and
regresses the durations on them.
"""

import pandas as pd

from sklearn_beta import BaselineBetaRegressor, PhaseExposureTransformer

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

exposures = PhaseExposureTransformer(chunk_size=32).fit_transform(phases)
print(exposures[["n_steps", "prefill_exposure", "decode_exposure", "duration"]])
model = BaselineBetaRegressor().fit(exposures)
print("beta (s/step, s/prefill token, s/decode token):", model.beta_)
print("R^2 of phase durations:", round(model.score(exposures), 4))
