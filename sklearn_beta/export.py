"""Simulator exports: fitted betas (and request overheads) as simulator input.

BLIS builds before PR #1136 (2026-04-23) read the three-coefficient blackbox
model (:func:`blis_model_entry`, :func:`format_blis_models`, the legacy
alphas of :func:`request_overheads`); later builds read the trained-physics
model (:func:`blis_trained_physics_coeffs`,
:func:`format_blis_trained_physics`, the alphas of :func:`blis_alphas`).

The code is in :mod:`sklearn_beta.io._export` and
:mod:`sklearn_beta.io._export_trained_physics`; this module is their public
face, with :func:`read_model_description` (a HuggingFace ``config.json``,
a GPU and a tensor-parallel degree as the :class:`ModelDescription` the
trained-physics export reads).
"""

from .core._model_config import ModelDescription, read_model_description
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
from .io._export_trained_physics import (
    BLIS_TRAINED_PHYSICS_KEYS,
    blis_alphas,
    blis_trained_physics_coeffs,
    format_blis_trained_physics,
)

__all__ = [
    "BLIS_MODEL_KEYS",
    "BLIS_OPTIONAL_KEYS",
    "BLIS_PLACEHOLDERS",
    "BLIS_TRAINED_PHYSICS_KEYS",
    "BLIS_UNITS",
    "LLM_D_OPTIONS",
    "ModelDescription",
    "blis_alphas",
    "blis_model_entry",
    "blis_trained_physics_coeffs",
    "format_blis_models",
    "format_blis_trained_physics",
    "format_llm_d_config",
    "llm_d_latencies",
    "read_model_description",
    "request_overheads",
    "to_blis_coefficients",
]
