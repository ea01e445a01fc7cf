"""Simulator exports: fitted betas (and request overheads) as simulator input.

The code is in :mod:`sklearn_beta.io._export`;
this module is its public face.
"""

from .io._export import (
    BLIS_MODEL_KEYS,
    BLIS_OPTIONAL_KEYS,
    BLIS_PLACEHOLDERS,
    BLIS_UNITS,
    LLM_D_OPTIONS,
    blis_model_entry,
    format_blis_models,
    format_llm_d_config,
    llm_d_latencies,
    request_overheads,
    to_blis_coefficients,
)

__all__ = [
    "BLIS_MODEL_KEYS",
    "BLIS_OPTIONAL_KEYS",
    "BLIS_PLACEHOLDERS",
    "BLIS_UNITS",
    "LLM_D_OPTIONS",
    "blis_model_entry",
    "format_blis_models",
    "format_llm_d_config",
    "llm_d_latencies",
    "request_overheads",
    "to_blis_coefficients",
]
