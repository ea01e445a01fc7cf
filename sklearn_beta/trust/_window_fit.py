"""The step-count fit of a trace in memory that may be a window cut from serving.

:func:`fit_step_counts_of_window` runs the estimator's step-count fit with
the window-edge treatment of :mod:`sklearn_beta.trust._edges` (whose decision
:func:`~sklearn_beta.trust._edges.fit_with_edge_context` asks
:class:`TimelineEdges` its questions about the trace), then checks the
step noise for coefficients it leaves unknown. The Dask fit answers the
same questions from partitions (:mod:`sklearn_beta.distributed._edges`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..core._corrections import static_correction_mass
from ..core._fixed_point import IterationSettings
from ..core._grid import Timeline
from ..core._nnls import nnls_fit
from ..core._step_count import count_state, step_count_weights
from ._edges import (
    EDGE_TEST_TOL,
    EdgeReport,
    context_phases,
    edge_bias,
    edge_zones,
    fit_with_edge_context,
)
from ._identifiability import BETA_NAMES, ZERO_BOUND_SHARE, _join
from ._what_if import noise_limited_findings


def _gauss_newton_step(beta, residual, jac, weight) -> np.ndarray:
    """One projected Gauss-Newton step of ``sum w (Lambda - N)^2`` from ``beta``."""
    return nnls_fit(jac, jac @ beta - residual, weight)


def _relative_move(beta, new, jac, weight) -> float:
    """Relative change of the weighted step counts from ``beta`` to ``new``.

    The counts are homogeneous of degree -1 in the betas, so ``J beta`` is
    minus the counts themselves.
    """
    sw = np.sqrt(weight)
    level = np.linalg.norm(sw * (jac @ beta))
    return float(np.linalg.norm(sw * (jac @ (new - beta))) / max(level, 1e-300))


class TimelineEdges:
    """The edge test's questions (:func:`fit_with_edge_context`) answered on
    one in-memory timeline; the Dask fit has its own answers
    (``_distributed_edges``)."""

    def __init__(self, timeline: Timeline, sample_weight, linearised):
        tg = timeline.trace_grid
        self.t_start = tg.grid[tg.start_idx]
        self.instance = tg.grid_instance[tg.start_idx]
        self.zones = edge_zones(
            self.t_start, tg.grid[tg.end_idx], timeline.is_prefill, self.instance
        )
        self.n_steps = timeline.n_steps
        self.sample_weight = sample_weight
        ones = np.ones(self.n_steps.shape[0])
        self.weight = ones if sample_weight is None else sample_weight
        self.objective_weight = step_count_weights(timeline, sample_weight)
        self.time_unit = timeline.time_unit
        self._linearised = linearised
        self._cache: dict = {}

    def linearised(self, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(Lambda_i - N_i, dLambda_i / dbeta)`` at ``beta``."""
        key = np.asarray(beta, dtype=np.float64).tobytes()
        if key not in self._cache:
            if len(self._cache) > 1:
                # Keep the first (the joint fit's, asked for again) and the
                # latest: each holds four floats per phase.
                del self._cache[list(self._cache)[-1]]
            self._cache[key] = self._linearised(beta)
        return self._cache[key]

    def interior_share(self) -> float:
        steps = self.objective_weight * self.n_steps
        inner = float(np.sum(steps * self.zones.interior))
        return inner / max(float(np.sum(steps)), 1e-300)

    def lifetimes(self) -> np.ndarray:
        """Per instance, the longest a request lasts, in the trace's seconds
        (the zones are in the fit's time unit)."""
        return self.zones.lifetime * self.time_unit

    def gauss_newton_move(self, beta: np.ndarray) -> tuple[np.ndarray, float]:
        """The interior's Gauss-Newton step from ``beta`` and its relative move."""
        residual, jac = self.linearised(beta)
        interior = self.objective_weight * self.zones.interior
        new = _gauss_newton_step(beta, residual, jac, interior)
        return new, _relative_move(beta, new, jac, interior)

    def biases(self, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        return edge_bias(
            self.zones,
            self.instance,
            self.t_start,
            self.linearised(beta)[0],
            self.n_steps,
            self.objective_weight,
        )

    def context(self, beta: np.ndarray, limit: float) -> np.ndarray:
        start_bias, end_bias, _ = self.biases(beta)
        return context_phases(self.zones, self.instance, start_bias, end_bias, limit)

    def n_context(self, beta: np.ndarray, limit: float) -> int:
        """Phases of positive weight on edges found incomplete at ``beta``."""
        return int(np.count_nonzero(self.context(beta, limit) & (self.weight > 0)))

    def weights(self, kind):
        """Phase weights of a fit: ``"all"`` (the sample weights),
        ``"interior"``, or ``("restored", beta, limit)``: without the
        phases of the edges found incomplete at ``beta``."""
        if kind == "all":
            return self.sample_weight
        if kind == "interior":
            return self.weight * self.zones.interior
        _, beta, limit = kind
        return self.weight * ~self.context(beta, limit)


def edge_test_settings(settings: IterationSettings) -> IterationSettings:
    """Settings of a fit that only tests the edges (``final=False``).

    With the relative stopping rule the tolerance is at least
    :data:`EDGE_TEST_TOL`; the absolute rule is in the trace's time unit,
    which has no such scale-free floor, and stays as it is.
    """
    if settings.stopping != "relative":
        return settings
    return replace(settings, tol=max(settings.tol, EDGE_TEST_TOL))


def fit_step_counts_of_window(
    timeline: Timeline,
    fit: Callable[..., tuple],
    correction_mode: str,
    sample_weight: np.ndarray | None,
    *,
    edges: str,
    linearise: Callable | None = None,
    names: tuple = BETA_NAMES,
) -> tuple[tuple, EdgeReport | None, np.ndarray | None, list]:
    """The step-count fit of a trace that may be a window cut from serving.

    ``fit(weight, beta_init=None, final=True)`` is the estimator's fit (see
    :func:`fit_with_edge_context`); its result ends with the objective's
    ``(jac, residual, weight)`` at its betas. With ``edges="auto"`` the edges are
    treated by :func:`fit_with_edge_context`; with ``"fit"`` every phase is
    fitted. Then, at the chosen fit's betas and with its phase weights, the
    step noise is checked for coefficients it leaves unknown
    (:func:`~sklearn_beta.trust._what_if.noise_limited_findings`), reusing the
    linearisation of the edge test where it has one.

    Returns ``(result, report, weight, findings)``: ``fit``'s result, the
    :class:`EdgeReport` (None with ``edges="fit"``), the phase weights of the
    chosen fit (``sample_weight`` with 0 on the context phases) and the
    findings for
    :func:`~sklearn_beta.trust._identifiability.identifiability_diagnostics`.

    ``linearise(beta)``, ``(Lambda_i - N_i, dLambda_i / dbeta)`` at
    ``beta``, is the published objective's unless given (a step model's,
    whose coefficients the findings call ``names``).
    """
    fixed = static_correction_mass(
        correction_mode, timeline.trace_grid, timeline.is_prefill, timeline.mu
    )

    solved, first = {}, {}

    def fitted(weight, beta_init=None, final=True, every_phase=True):
        # Remember the last fit's own linearisation at its betas: asking for
        # it again would rebuild the whole objective (seconds at 1e7 phases).
        result = fit(weight, beta_init, final)
        jac, residual, _ = result[-1]
        solved.update(beta=result[0], linearisation=(residual, jac))
        if every_phase:
            first.update(solved)
        return result

    def linearised(beta):
        if linearise is not None:
            # A step model's state depends on its lagged decode context,
            # hence on the states before it: its linearisation is the fit
            # of every phase's own at its betas, else made afresh at
            # ``beta`` alone; the partitions keep the same two.
            if "beta" in first and np.array_equal(beta, first["beta"]):
                return first["linearisation"]
            return linearise(beta)
        if "beta" in solved and np.array_equal(beta, solved["beta"]):
            return solved["linearisation"]
        state = count_state(timeline, beta, correction_mode, fixed, 1.0)
        return state.residual, state.jac

    report = None
    if edges == "auto":
        window = TimelineEdges(timeline, sample_weight, linearised)
        result, report, kind = fit_with_edge_context(
            window,
            lambda kind, beta_init, final: fitted(
                window.weights(kind), beta_init, final, kind == "all"
            ),
        )
        sample_weight = window.weights(kind)
        linearised = window.linearised
    else:
        result = fitted(sample_weight, None)
    beta, design = result[0], result[3]
    weight = step_count_weights(timeline, sample_weight)
    residual, jac = linearised(beta)
    # The typical step: the design's token counts per step, weighted as the
    # objective weighs the phases.
    typical = np.sum(weight[:, None] * design, 0) / max(
        float(np.sum(weight * design[:, 0])), 1e-300
    )
    findings = noise_limited_findings(jac, residual, weight, beta, typical, names)
    if not findings and report is not None:
        interior = step_count_weights(timeline, window.weights("interior"))
        findings = edge_identified_findings(
            jac, residual, interior, beta, typical, names
        )
    return result, report, sample_weight, findings


def edge_identified_findings(
    jac: np.ndarray,
    residual: np.ndarray,
    interior_weight: np.ndarray,
    beta: np.ndarray,
    typical: np.ndarray,
    names=BETA_NAMES,
) -> list[tuple[tuple[str, ...], str]]:
    """Coefficients only the edge zones separate, one of them at zero.

    Where the phases clear of the edges cannot split the typical step
    (:func:`~sklearn_beta._what_if.noise_limited_findings` on them alone, at
    the chosen fit's betas), the split rests on the edges: the ramp-up and
    drain of a complete trace, or the missing load of a window's cut, which
    the edge test cannot tell apart once the split absorbs it (a beta2 of 0
    makes missing decodes cost nothing, so an arrival cut's start edge fits
    as well as a real ramp). A member of that split at its zero bound is the
    sign: the bound set it, not the trace. The complete trace of a saturated
    engine, identified through its real ramps, keeps every beta positive.
    """
    found = noise_limited_findings(jac, residual, interior_weight, beta, typical, names)
    step = float(typical @ beta)
    at_zero = {
        name
        for name, part in zip(names, beta * typical, strict=True)
        if part <= ZERO_BOUND_SHARE * step
    }
    return [
        (
            names,
            "the phases clear of the trace's edges cannot split the step "
            "between them, and the fit put "
            f"{_join(sorted(at_zero & set(names)))} at zero: the split rests on "
            "the edge phases, where a window cut from a busy engine misses the "
            "load of the requests outside it",
        )
        for names, _ in found
        if at_zero & set(names)
    ]
