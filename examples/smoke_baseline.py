"""Smallest baseline fit: four overlapping requests typed in by hand.

The baseline estimator integrates how many prefill and decode tokens shared
each phase's steps, assuming the phase's steps are spread evenly over it, and
regresses the durations on them by non-negative least squares. On this trace
that assumption is off, and so are its betas; compare smoke_iterative.py.
"""

from _tiny_trace import CHUNK_SIZE, PHASES, TRUE_BETA

from sklearn_beta import BaselineBetaRegressor, PhaseExposureTransformer

exposures = PhaseExposureTransformer(chunk_size=CHUNK_SIZE).fit_transform(PHASES)
print(exposures[["n_steps", "prefill_exposure", "decode_exposure", "duration"]])
model = BaselineBetaRegressor().fit(exposures)
print("beta (s/step, s/prefill token, s/decode token):", model.beta_)
print("true beta:                                      ", list(TRUE_BETA))
print("R^2 of phase durations:", round(model.score(exposures), 4))
