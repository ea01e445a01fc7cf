"""Trace adapters: files in, the phase table out; betas out, simulator input.

The code is in :mod:`sklearn_beta.io._readers`;
this module is its public face.
"""

from ._readers import (
    BLIS_UNITS,
    OTEL_LATENCY_ATTRIBUTES,
    TIME_UNITS,
    TRACEV2_COLUMNS,
    TRACEV3_CARRIED,
    TRACEV3_COLUMNS,
    VLLM_STATS_COLUMNS,
    VLLM_STATS_OPTIONAL,
    read_benchmark_results,
    read_otel_spans,
    read_phases,
    read_tracev2,
    read_vllm_request_stats,
    to_blis_coefficients,
)

__all__ = [
    "BLIS_UNITS",
    "OTEL_LATENCY_ATTRIBUTES",
    "TIME_UNITS",
    "TRACEV2_COLUMNS",
    "TRACEV3_CARRIED",
    "TRACEV3_COLUMNS",
    "VLLM_STATS_COLUMNS",
    "VLLM_STATS_OPTIONAL",
    "read_benchmark_results",
    "read_otel_spans",
    "read_phases",
    "read_tracev2",
    "read_vllm_request_stats",
    "to_blis_coefficients",
]
