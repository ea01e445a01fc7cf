"""sklearn-beta: calibrate LLM inference-engine step times from phase traces.

An engine's busy loop runs steps lasting ``beta0 + beta1 * prefill_tokens +
beta2 * decode_tokens``; traces only show request phases. This package
recovers ``(beta0, beta1, beta2)`` from them, as scikit-learn estimators and as
a functional API that reproduces the published reference.
"""

from ._baseline import BaselineBetaRegressor, BaselineResult, estimate_betas_baseline
from ._exposure import EXPOSURE_COLUMNS, PhaseExposureTransformer
from ._iterative import (
    IterativeBetaRegressor,
    IterativeResult,
    estimate_betas_iterative,
)
from ._uncertainty import block_bootstrap_ci
from ._validation import CleaningReport, clean_phases

__version__ = "0.1.0"

__all__ = [
    "EXPOSURE_COLUMNS",
    "BaselineBetaRegressor",
    "BaselineResult",
    "CleaningReport",
    "IterativeBetaRegressor",
    "IterativeResult",
    "PhaseExposureTransformer",
    "block_bootstrap_ci",
    "clean_phases",
    "estimate_betas_baseline",
    "estimate_betas_iterative",
    "__version__",
]
