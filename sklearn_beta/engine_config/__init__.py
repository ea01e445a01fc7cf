"""Engine configuration.

The search over chunk sizes and token budgets, its scores, the trace fits it
drives, and the engine settings read from a trace (``max_num_seqs``, the KV
cache) where they bind.
"""

from ._settings import (
    EngineSettings,
    concurrency_profile,
    estimate_engine_settings,
    estimate_kv_blocks,
    estimate_max_num_seqs,
)

__all__ = [
    "EngineSettings",
    "concurrency_profile",
    "estimate_engine_settings",
    "estimate_kv_blocks",
    "estimate_max_num_seqs",
]
