"""sklearn-beta: calibrate LLM inference-engine step times from phase traces.

An engine's busy loop runs steps lasting ``beta0 + beta1 * prefill_tokens +
beta2 * decode_tokens``; traces only show request phases. This package
recovers ``(beta0, beta1, beta2)`` from them, as scikit-learn estimators and as
a functional API that reproduces the published reference.
"""

from ._baseline import BaselineBetaRegressor, BaselineResult, estimate_betas_baseline
from ._engine_config import (
    VLLM_TOKEN_BUDGETS,
    EngineConfig,
    EngineConfigWarning,
    default_engine_candidates,
    select_engine_config,
)
from ._exposure import EXPOSURE_COLUMNS, PhaseExposureTransformer
from ._iterative import (
    IterativeBetaRegressor,
    IterativeResult,
    estimate_betas_iterative,
)
from ._validation import CleaningReport, clean_phases

__version__ = "0.1.0"

__all__ = [
    "EXPOSURE_COLUMNS",
    "VLLM_TOKEN_BUDGETS",
    "BaselineBetaRegressor",
    "BaselineResult",
    "CleaningReport",
    "EngineConfig",
    "EngineConfigWarning",
    "IterativeBetaRegressor",
    "IterativeResult",
    "PhaseExposureTransformer",
    "clean_phases",
    "default_engine_candidates",
    "estimate_betas_baseline",
    "estimate_betas_iterative",
    "select_engine_config",
    "__version__",
]
