"""Smallest iterative fit: four overlapping requests typed in by hand.

The iterative estimator finds the betas under which every phase holds its
known number of steps (ceil(prompt / chunk) for a prefill, one per token for
a decode). On this noise-free trace it recovers the engine's betas exactly.
"""

from _tiny_trace import CHUNK_SIZE, PHASES, TRUE_BETA
from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer

# The four requests are the engine's whole run, not a window cut from busy
# serving: no edge phases to test, so every phase is fitted.
model = make_pipeline(
    PhaseExposureTransformer(chunk_size=CHUNK_SIZE), IterativeBetaRegressor(edges="fit")
).fit(PHASES)
fit = model[-1]
print("beta (s/step, s/prefill token, s/decode token):", fit.beta_)
print("true beta:                                      ", list(TRUE_BETA))
print(f"converged: {fit.converged_} after {fit.n_iter_} iterations")
print(fit.history_.to_string(index=False))
