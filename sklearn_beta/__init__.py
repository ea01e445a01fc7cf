"""sklearn-beta: calibrate LLM inference-engine step times from phase traces.

An engine's busy loop runs steps lasting ``beta0 + beta1 * prefill_tokens +
beta2 * decode_tokens``; traces only show request phases. This package
recovers ``(beta0, beta1, beta2)`` from them, as scikit-learn estimators and as
a functional API that reproduces the published reference.
"""

# Importing the distributed subpackage registers the estimators' Dask backend
# (which imports dask only when a Dask collection arrives).
from . import distributed  # noqa: F401
from .core._cleaning import CleaningReport, clean_phases
from .core._columns import PhaseColumns
from .core._design import DesignAtBetas, design_at_betas
from .core._schema import EXPOSURE_COLUMNS
from .engine_config._schedule import ScheduleBetaRegressor
from .engine_config._search import (
    VLLM_TOKEN_BUDGETS,
    EngineConfig,
    EngineConfigWarning,
    default_engine_candidates,
    select_engine_config,
)
from .estimators._baseline import BaselineBetaRegressor
from .estimators._exposure import PhaseExposureTransformer
from .estimators._functional import (
    BaselineResult,
    IterativeResult,
    estimate_betas_baseline,
    estimate_betas_iterative,
)
from .estimators._iterative import IterativeBetaRegressor
from .trust._bootstrap import block_bootstrap_ci

__version__ = "0.1.0"

__all__ = [
    "EXPOSURE_COLUMNS",
    "VLLM_TOKEN_BUDGETS",
    "BaselineBetaRegressor",
    "BaselineResult",
    "CleaningReport",
    "DesignAtBetas",
    "EngineConfig",
    "EngineConfigWarning",
    "IterativeBetaRegressor",
    "IterativeResult",
    "PhaseColumns",
    "PhaseExposureTransformer",
    "ScheduleBetaRegressor",
    "block_bootstrap_ci",
    "clean_phases",
    "default_engine_candidates",
    "design_at_betas",
    "estimate_betas_baseline",
    "estimate_betas_iterative",
    "select_engine_config",
    "__version__",
]
