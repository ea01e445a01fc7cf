"""The iterative fit's data source for a step model beyond the published one.

:class:`FeatureSource` answers :func:`~sklearn_beta.estimators._fit.fit_iterative`
on an exposure table whose step model has other features (docs/method.md,
5.1): either objective, the edge treatment of the step-count objective,
the diagnostics and the intervals of every coefficient. The problems are
:mod:`sklearn_beta.core._feature_fixed_point`'s, solved by the published
loops (:func:`~sklearn_beta.core._fixed_point.solve_fixed_point`,
:func:`~sklearn_beta.core._step_count.solve_step_counts`), so the
published fit and a step model's share one orchestration.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..core._feature_fixed_point import (
    BasisCounts,
    BasisDurations,
    FeatureCounts,
    FeatureDurations,
)
from ..core._fixed_point import solve_fixed_point
from ..core._nnls import nnls_fit
from ..core._step_count import solve_step_counts
from ..core._units import rescaled_timeline
from ..trust._identifiability import identifiability_diagnostics
from ..trust._window_fit import edge_test_settings, fit_step_counts_of_window
from ._baseline import design_diagnostics
from ._fit import FitSettings, InMemorySource, Solution

#: Lagged passes that settle the decode context at given betas.
SETTLING_PASSES = 2


class FeatureSource(InMemorySource):
    """A step model's trace in memory, for the iterative fit.

    ``prompt`` is each phase's request prompt, ``features`` the step model's,
    ``basis`` the trained-physics map ``K`` (None: the features' own
    coefficients), ``init_design`` the table's design (the baseline's start).
    """

    def __init__(
        self,
        timeline,
        prompt,
        features,
        basis,
        init_design,
        duration,
        sample_weight=None,
        basis_names=None,
    ):
        self.timeline = timeline
        self.prompt = prompt
        self.features = tuple(features)
        self.basis = basis
        self.basis_names = basis_names
        self.init_design = init_design
        self.duration = duration
        self.sample_weight = sample_weight

    def problem(self, timeline, settings: FitSettings, weight):
        """The objective of ``settings`` on ``timeline`` with phase ``weight``."""
        return feature_problem(
            timeline,
            self.prompt,
            self.features,
            (self.basis, self.basis_names),
            settings.objective,
            settings.correction_mode,
            weight,
            variance_weighted=settings.weights == "variance",
        )

    def solve(self, unit: float, settings: FitSettings, callback) -> Solution:
        scaled = rescaled_timeline(replace(self.timeline, duration=self.duration), unit)
        step_count = settings.objective == "step_count"

        def fit(weight, beta_init=None, final=True):
            # As TimelineSource's: the objective's (jac, residual, weight) last.
            problem = self.problem(scaled, settings, weight)
            if beta_init is None:
                beta_init = nnls_fit(self.init_design, scaled.duration, weight)
            chosen = settings.iteration
            if not final:
                chosen = edge_test_settings(chosen)
            if step_count:
                beta, converged, n_iter, state, history = solve_step_counts(
                    problem, beta_init, chosen, callback
                )
                solved = (state.jac, state.residual, problem.weight)
                return beta, converged, n_iter, state.design, history, solved
            beta, converged, n_iter, design, history = solve_fixed_point(
                problem, beta_init, chosen, callback
            )
            # the weights the last NNLS ran with (the variance weights' too)
            solved = (design, scaled.duration - design @ beta, problem.weight)
            return beta, converged, n_iter, design, history, solved

        edges, findings, weight = None, [], self.sample_weight
        if step_count:
            result, edges, weight, findings = fit_step_counts_of_window(
                scaled,
                fit,
                settings.correction_mode,
                weight,
                edges=settings.edges,
                linearise=lambda beta: self.linearised(scaled, settings, beta),
                names=settings.coef_names,
            )
        else:
            result = fit(weight)
            weight = result[-1][-1]
        beta, converged, n_iter, design, history, objective = result
        state = (design, weight, findings, objective)
        return Solution(beta, converged, n_iter, history, edges, state)

    def linearised(self, timeline, settings, beta) -> tuple[np.ndarray, np.ndarray]:
        """``(Lambda_i - N_i, dLambda_i / dbeta)`` at ``beta``, the decode
        context settled at it (the edge test's question)."""
        return settled_linearisation(self.problem(timeline, settings, None), beta)

    def diagnostics(self, solution, beta, unit, settings) -> dict:
        design, weight, findings, _ = solution.state
        names = settings.coef_names
        diagnostics = design_diagnostics(design, self.duration, beta, weight, names)
        diagnostics.update(
            identifiability_diagnostics(
                design,
                self.duration,
                beta,
                None,
                weight,
                estimator=settings.caller,
                extra_findings=findings,
                names=names,
            )
        )
        return diagnostics


def feature_problem(
    timeline,
    prompt,
    features,
    basis,
    objective,
    correction_mode,
    weight=None,
    *,
    variance_weighted=False,
):
    """A step model's problem of ``objective`` on ``timeline``: the
    features' own, or in the coordinates of ``basis = (K, names)`` (K None:
    none). ``variance_weighted``: the duration objective's phases weighed by
    their inverse variance (the step counts' always are). Shared with the
    distributed backend's partitions."""
    matrix, names = basis
    durations = FeatureDurations(
        timeline, prompt, features, correction_mode, weight, variance_weighted
    )
    if objective == "step_count":
        counts = FeatureCounts(durations, weight)
        return counts if matrix is None else BasisCounts(counts, matrix, names)
    return durations if matrix is None else BasisDurations(durations, matrix, names)


def settled_linearisation(problem, beta) -> tuple[np.ndarray, np.ndarray]:
    """``(Lambda_i - N_i, dLambda_i / dbeta)`` of a fresh step-count
    ``problem`` at ``beta``, its lagged decode context settled by
    :data:`SETTLING_PASSES` states (the edge test's question, in memory and
    on partitions)."""
    for _ in range(SETTLING_PASSES):
        state = problem.state(beta)
    return state.residual, state.jac
