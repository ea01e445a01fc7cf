"""Step-level replay of an engine over a trace's arrivals and token counts.

The code is in :mod:`sklearn_beta.engine._replay`;
this module is its public face.
"""

from ..engine._replay import (
    REPLAY_QUANTITIES,
    make_replay_scorer,
    replay_errors,
    replay_scorers,
    replay_trace,
)
from ..engine._what_if import fitted_engine, infer_max_in_flight, what_if_latencies

__all__ = [
    "infer_max_in_flight",
    "what_if_latencies",
    "fitted_engine",
    "REPLAY_QUANTITIES",
    "make_replay_scorer",
    "replay_errors",
    "replay_scorers",
    "replay_trace",
]
