"""Warnings specific to sklearn-beta."""

from __future__ import annotations

__all__ = ["IdentifiabilityWarning", "UncertaintyWarning"]


class IdentifiabilityWarning(UserWarning):
    """The trace cannot separate some of the coefficients.

    Raised when the design of the regression does not determine one or more
    of ``beta0``, ``beta1``, ``beta2``: no two phases overlap in time, the
    trace has only one phase type, or the decode pressure never varies. The
    fitted value of such a coefficient is one of many that fit the trace
    equally well. The message names the coefficient(s) and the reason; the
    fitted estimator's ``diagnostics_`` (or the result's ``diagnostics``)
    carry ``not_identified``, ``condition_number`` and ``at_zero_bound``.
    """


class UncertaintyWarning(UserWarning):
    """A fitted beta cannot be trusted as a measurement.

    Raised when a coefficient sits at its zero bound (the non-negativity
    constraint, not the trace, set it), when its confidence interval is
    wider than half of its value, or when a trace is too short for its
    window edges to be tested (``edges="auto"``). The message names the
    coefficient, its value, its interval (``beta_ci_``) and what to change.
    See ``docs/uncertainty.md``.
    """
