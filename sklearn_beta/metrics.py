"""Metrics: errors against known betas, and scorers for model selection.

The code is in :mod:`sklearn_beta.model_selection._metrics`;
this module is its public face.
"""

from .model_selection._metrics import (
    PhaseDurationScorer,
    PhaseScorers,
    coefficient_errors,
    get_scorer,
    get_scorer_names,
    make_phase_scorer,
    phase_durations,
    phase_scorers,
    step_time_error,
    what_if_error,
)

__all__ = [
    "PhaseDurationScorer",
    "PhaseScorers",
    "coefficient_errors",
    "get_scorer",
    "get_scorer_names",
    "make_phase_scorer",
    "phase_durations",
    "phase_scorers",
    "step_time_error",
    "what_if_error",
]
