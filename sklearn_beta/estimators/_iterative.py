"""The iterative estimator: step-density re-weighted NNLS (docs/method.md, 6).

:class:`IterativeBetaRegressor` runs either objective on a trace's timeline:
the reference's fixed point of the durations (:mod:`._fixed_point`) or the
step counts (:mod:`._step_count`), through
:func:`~sklearn_beta.estimators._fit.fit_iterative` on a
:class:`TimelineSource` (in memory) or the distributed backend's source.
The functional :func:`~sklearn_beta.estimate_betas_iterative` calls the
same :meth:`IterativeBetaRegressor._fit_timeline`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Real

import numpy as np
from sklearn.utils._param_validation import StrOptions

from ..core._constraints import Number, count
from ..core._corrections import CORRECTION_MODES, FIXED_CORRECTION_MODES
from ..core._design import OBJECTIVES, design_at_betas
from ..core._fixed_point import (
    STOPPING_RULES,
    IterationSettings,
    iterate_betas,
)
from ..core._grid import Timeline
from ..core._nnls import nnls_fit
from ..core._schema import (
    EXPOSURE_COLUMNS,
    column,
    design_columns,
    fit_design,
    read_timeline,
    request_prompts_of,
    step_model_of,
)
from ..core._step_count import fit_step_counts
from ..core._step_features import PUBLISHED_FEATURES
from ..core._trained_physics import IDENTIFIABLE_FEATURES
from ..core._units import rescaled_timeline
from ..core._warnings import warn
from ..trust._identifiability import identifiability_diagnostics
from ..trust._uncertainty import DEFAULT_CONFIDENCE_LEVEL
from ..trust._window_fit import edge_test_settings, fit_step_counts_of_window
from ._base import BaseBetaRegressor
from ._baseline import design_diagnostics
from ._exposure import baseline_exposures, phase_step_density
from ._feature_source import FeatureSource
from ._fit import (
    FitSettings,
    FittedBetas,
    InMemorySource,
    Solution,
    fit_iterative,
)

__all__ = ["IterativeBetaRegressor"]

#: Treatments of a trace's edges (``IterativeBetaRegressor(edges=...)``).
EDGE_TREATMENTS = ("auto", "fit")
#: Phase weightings (``IterativeBetaRegressor(weights=...)``).
WEIGHTINGS = ("auto", "variance")


class TimelineSource(InMemorySource):
    """A trace in memory, for the iterative fit: its timeline, baseline
    design and phase-local step density (from :func:`phase_exposures`), the
    durations fitted and their weights."""

    def __init__(self, timeline, init_design, density, duration, sample_weight=None):
        self.timeline = timeline
        self.init_design = init_design
        self.density = density
        self.duration = duration
        self.sample_weight = sample_weight

    def solve(self, unit: float, settings: FitSettings, callback) -> Solution:
        init_design = self.init_design
        if settings.init_correction_mode is not None:
            init_design = baseline_exposures(
                self.timeline, self.density, settings.init_correction_mode
            )
        scaled = rescaled_timeline(replace(self.timeline, duration=self.duration), unit)
        step_count = settings.objective == "step_count"
        run = fit_step_counts if step_count else iterate_betas

        def fit(weight, beta_init=None, final=True):
            # The result carries the objective's (jac, residual, weight) at its
            # solution last: beta_ci_ comes from the fit the edge treatment keeps.
            if beta_init is None:
                beta_init = nnls_fit(init_design, scaled.duration, weight)
            chosen = settings.iteration
            if not final:
                chosen = edge_test_settings(chosen)
            solved = []
            result = run(
                scaled, beta_init, chosen, weight, callback, on_solution=solved.append
            )
            return (*result, solved[0])

        edges, findings, weight = None, [], self.sample_weight
        if step_count:
            # A window's edges (trust._edges) and a saturated engine's
            # beta0/beta2 split (trust._what_if) are read off the step counts.
            # The diagnostics weigh the phases as the chosen fit did.
            result, edges, weight, findings = fit_step_counts_of_window(
                scaled,
                fit,
                settings.correction_mode,
                weight,
                edges=settings.edges,
            )
        else:
            result = fit(weight)
        beta, converged, n_iter, design, history, objective = result
        state = (design, weight, findings, objective)
        return Solution(beta, converged, n_iter, history, edges, state)

    def diagnostics(self, solution, beta, unit, settings) -> dict:
        design, weight, findings, _ = solution.state
        diagnostics = design_diagnostics(design, self.duration, beta, weight)
        diagnostics.update(
            identifiability_diagnostics(
                design,
                self.duration,
                beta,
                self.timeline,
                weight,
                estimator=settings.caller,
                extra_findings=findings,
            )
        )
        return diagnostics


class IterativeBetaRegressor(BaseBetaRegressor):
    """Step-density re-weighted estimator: the iterative estimator.

    Every grid segment of the trace lasts a whole number of steps of
    ``b0 + b1 p_eff + b2 p_dec`` seconds each, so betas imply a step density
    ``lam`` on every segment, hence a number of steps ``Lambda_i`` inside every
    phase. By default (``objective="step_count"``) the betas are those under
    which every phase holds its known ``N_i`` steps (``ceil(P / C)`` or
    ``D``): a non-negative nonlinear least squares on ``Lambda_i - N_i``,
    solved by Gauss-Newton steps that are each an NNLS, with the density and
    ``p_eff`` solved together on each segment. On simulated traces this
    recovers the betas exactly without noise, in every regime of
    ``benchmarks/accuracy.py``, where the reference's fixed point
    oscillates under heavy load.

    ``objective="duration"`` is the reference's fixed-point iteration
    (docs/method.md, section 6): from the baseline betas, compute ``lam`` from the
    previous iteration's ``p_eff``, place each prefill's missing last-chunk
    tokens, average the pressures over the steps inside every phase and refit
    the durations by NNLS on ``[N_i, N_i pbar_pf_i, N_i pbar_dec_i]``.

    Parameters
    ----------
    correction_mode : {"end_inside", "beta_informed", "end", "uniform", \
"none"}, default="end_inside"
        Placement of the last prefill chunk's missing tokens. ``"end_inside"``
        puts them on the last segment of the prefill, where the partial step
        ran: exact for an engine without a token budget. ``"beta_informed"``
        (the reference default) places them on the last step under the
        current density; with the step-count objective the two agree at the
        solution, but ``"end_inside"`` keeps the objective smooth. The start
        of the iterations is the baseline under the transformer's own
        ``correction_mode`` (see ``init_correction_mode``); ``"none"`` here,
        not on the transformer, fits without the correction.
    damping : float in (0, 1], default=1.0
        Damping ``eta`` of each update. Duration objective: ``beta = (1 -
        eta) beta + eta beta_fit``. Step-count objective: the Gauss-Newton
        step ``Delta`` is taken as ``beta + eta Delta`` (then halved while it
        does not lower the objective); it changes the path and ``n_iter_``,
        not the solution.
    max_iter : int, default=25
        Maximum number of iterations.
    tol : float, default=1e-6
        Stopping threshold on the change of betas per iteration.
    init_correction_mode : {"end", "end_inside", "uniform", "none"} or None, \
default=None
        Correction mode of the initialising baseline fit. None starts from the
        baseline design of the exposure table, i.e. from the
        ``correction_mode`` and ``min_duration`` of the
        :class:`PhaseExposureTransformer` before it (the published
        ``init_via_baseline_correction``); a mode recomputes that design with
        its own placement instead. A table made with another placement than
        ``"end"`` raises a ``ValueError`` where that placement would be
        ignored: with the step-count objective (which reaches the same betas
        from any start) and with an ``init_correction_mode`` that differs
        from it; so does a table whose step densities a ``min_duration``
        floor changed, with the step-count objective. See
        :class:`PhaseExposureTransformer`.
    stopping : {"relative", "absolute"}, default="relative"
        ``"relative"`` stops when every coefficient's contribution (to the
        predicted durations, or to the step counts) moves by less than
        ``tol`` of itself: free of the time unit. ``"absolute"`` is the
        reference rule ``||d beta||_2 < tol`` in the trace's time unit.
    objective : {"step_count", "duration"}, default="step_count"
        What the betas are fitted to; see above. With
        ``IterativeBetaRegressor("beta_informed", objective="duration",
        stopping="absolute")`` the fit reproduces
        :func:`estimate_betas_iterative` (the published reference) exactly.
    confidence_level : float in (0, 1) or None, default=0.95
        Level of the confidence intervals ``beta_ci_``: the time-block robust
        (sandwich) covariance of the fitted objective at the solution, see
        ``docs/uncertainty.md``. None skips them (``beta_ci_`` is None) and
        with them the warning about wide intervals; a beta at its zero bound
        still warns.
    edges : {"auto", "fit"}, default="auto"
        Treatment of the trace's edges with the step-count objective. A trace
        cut from a busy engine misses the requests that ran beside its first
        and last phases, so their pressures are too low. ``"auto"`` tests
        each instance's edge zones (about a request lifetime at each end)
        at the betas of the phases clear of them: an edge whose phases hold
        more steps than their ``N_i`` beyond the noise level (the visible
        load is less than the engine ran) stays context only (in the
        pressures, out of the objective); edges that fit like the interior
        (an engine that started idle, or drained) are fitted, so a complete
        trace is fitted on every phase as before. A trace too short to have
        phases clear of its edges is fitted whole, with a warning. ``"fit"``
        fits every phase (the behaviour before windows were handled, and
        :func:`estimate_betas_iterative`'s). The duration objective always
        fits every phase. See ``docs/windows.md``.
    weights : {"auto", "variance"}, default="auto"
        How the phases are weighted (times ``sample_weight``). Each step's
        time carries independent relative noise, so a phase of ``N_i`` steps
        has a step-count residual of variance proportional to ``N_i`` and a
        duration of variance proportional to ``N_i tau_i^2`` (``tau_i`` its
        mean step time). ``"auto"``: the step counts weighted by ``1 /
        N_i``, the durations unweighted (the published reference).
        ``"variance"``: the durations too are weighted by their inverse
        variance, ``N_i / (N_i tau_i)^2`` with ``N_i tau_i`` the duration the
        betas predict, re-estimated at every iteration (iteratively
        reweighted); on heavy attention traces this narrows the duration
        objective's scatter by about a third (``docs/estimators.md``). With
        the step-count objective the two are the same fit. A published
        table with ``objective="duration"`` then runs as a step model's
        (the reference's fixed point weighs no phase); in memory only (a
        Dask collection raises).
    verbose : int, default=0
        With ``verbose > 0``, print one line per iteration (betas and their
        change) to stderr.

    Attributes
    ----------
    beta_ : ndarray of shape (3,)
        ``[beta0, beta1, beta2]`` (time unit per step, per prefill token, per
        decode token).
    coef_names_ : tuple of str
        The name of each entry of ``beta_``: ``beta0, beta1, beta2`` for the
        published step model, the identifiable trained-physics coefficients
        (``prefill_compute, decode_compute, per_step, per_request,
        prefill_kv, decode_kv``) for ``step_model="trained-physics"``, else
        the features.
    step_features_ : tuple of str
        The step model's features the table was made with.
    step_basis_ : ndarray of shape (6, 6) or None
        For a trained-physics table, the map from the step features to the
        identifiable trained-physics columns the fit ran on; else None.
    fixed_coefficients_ : dict of str to str
        For a trained-physics fit, the BLIS coefficients the trace cannot
        identify, with the value the export gives them and why
        (:func:`~sklearn_beta.core._trained_physics.fixed_coefficients`);
        empty otherwise.
    beta_ci_ : ndarray of shape (n_coefficients, 2) or None
        Lower and upper confidence limits of each entry of ``beta_`` at
        ``confidence_level``, clipped at 0; a beta at its zero bound gets
        ``[0, upper]``. A beta the trace does not identify (named in
        ``diagnostics_["not_identified"]``, with an
        :class:`~sklearn_beta.exceptions.IdentifiabilityWarning`) gets
        ``[0, T / t_k]``: the trace measures the time ``T`` of its typical
        step (upper limit), which holds ``t_k`` of the beta's units, and not
        how the step splits, so nothing excludes a value between 0 and the
        whole step spent on that beta alone; ``inf`` where the typical step
        holds none of its units. None when ``confidence_level`` is None.
    coef_ : ndarray of shape (3,)
        Same values as ``beta_``.
    intercept_ : float
        Always 0.0.
    n_iter_ : int
        Number of iterations run.
    converged_ : bool
        Whether the stopping rule was met within ``max_iter``.
    history_ : DataFrame
        One row per iteration (0 = the start): betas, step (the change the
        stopping rule measures), r2, rmse_seconds and a note.
        With the step-count objective the start is the baseline rescaled to
        the trace's step counts, and r2 / rmse score the durations predicted
        as ``l_i N_i / Lambda_i``.
    diagnostics_ : dict
        n_phases, mean exposures of the last design; r2 and rmse_seconds of
        the last iteration's fit (the reference's report, also the history's
        last row);
        its ``condition_number``, ``not_identified`` and ``at_zero_bound``
        (see :class:`~sklearn_beta.exceptions.IdentifiabilityWarning`);
        with ``edges="auto"`` and the step-count objective, ``edges``: the
        number of phases left as context (``n_context``), each instance's
        start and end edge bias (relative step-count excess of the edge's
        phases) and the largest bias taken as complete (``limit``).
    time_scale_ : float
        The power of two (near the mean time per step) the trace's times were
        divided by for the fit with ``stopping="relative"``, so that the
        floors on step times are in units of the trace's own steps and the
        betas scale exactly with the time unit; 1.0 with ``"absolute"``,
        which keeps the reference's arithmetic bit for bit.
    n_features_in_ : int
        Number of columns of the exposure table.
    feature_names_in_ : ndarray of str
        Column names of the exposure table, when it is a DataFrame.

    See Also
    --------
    BaselineBetaRegressor : The non-iterative estimator.
    estimate_betas_iterative : The functional, reference-compatible API.
    PhaseExposureTransformer : Its ``token_budget`` makes the prefill pressure
        budget-aware.

    Notes
    -----
    Why the step-count objective: under heavy load the duration map's
    Jacobian at the true betas has an eigenvalue below -1 (about -1.5 at
    ~230 running requests, even with exact features), so that the reference
    iteration, started at the truth, drifts into a period-2 oscillation
    between ``b0 = 0`` and a ``b0`` two to four times too large; and with the
    exact token sums as design, any betas with ``b0 = 0`` fit the durations
    exactly, since ``l_i = X_i beta + b0 (N_i - Lambda_i)``. The information
    on the betas is in ``Lambda_i = N_i``: see
    ``benchmarks/accuracy_diagnostics.py``.

    The step-count objective reads the durations off the timeline itself
    (the grid of ``t_start`` and ``t_end``): ``fit`` warns (``UserWarning``)
    when it is given a ``y`` that differs from the exposure table's
    ``duration`` column, which would only enter its starting point and the
    reported ``r2``/``rmse``. With ``objective="duration"`` the betas are a
    regression of ``y``.

    Warns
    -----
    UncertaintyWarning
        When a beta is at its zero bound or its interval is wider than half
        its value.

    References
    ----------
    The iterative estimator of the published trace-only calibration of
    vLLM-style step times; see docs/method.md, section 6.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
    >>> from sklearn_beta.datasets import load_sample_trace
    >>> phases = load_sample_trace()
    >>> model = make_pipeline(PhaseExposureTransformer(chunk_size=64),
    ...                       IterativeBetaRegressor()).fit(phases)
    >>> bool(model[-1].converged_)
    True
    """

    _min_columns = len(EXPOSURE_COLUMNS)

    _parameter_constraints: dict = {
        "correction_mode": [StrOptions(set(CORRECTION_MODES))],
        "damping": [Number(Real, 0, 1, closed="right")],
        "max_iter": [count(1)],
        "tol": [Number(Real, 0, None, closed="neither")],
        "init_correction_mode": [StrOptions(set(FIXED_CORRECTION_MODES)), None],
        "stopping": [StrOptions(set(STOPPING_RULES))],
        "objective": [StrOptions(set(OBJECTIVES))],
        "confidence_level": [Number(Real, 0, 1, closed="neither"), None],
        "edges": [StrOptions(set(EDGE_TREATMENTS))],
        "weights": [StrOptions(set(WEIGHTINGS))],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        correction_mode="end_inside",
        *,
        damping=1.0,
        max_iter=25,
        tol=1e-6,
        init_correction_mode=None,
        stopping="relative",
        objective="step_count",
        confidence_level=DEFAULT_CONFIDENCE_LEVEL,
        edges="auto",
        weights="auto",
        verbose=0,
    ):
        self.correction_mode = correction_mode
        self.damping = damping
        self.max_iter = max_iter
        self.tol = tol
        self.init_correction_mode = init_correction_mode
        self.stopping = stopping
        self.objective = objective
        self.confidence_level = confidence_level
        self.edges = edges
        self.weights = weights
        self.verbose = verbose

    def _fit_table(self, table, duration, sample_weight):
        self.step_features_ = step_model_of(table)
        self.step_basis_ = fit_design(table)[1]
        if self.objective == "step_count":
            _warn_if_y_unused(table, duration)
        if self.step_features_ != PUBLISHED_FEATURES or self._variance_durations():
            # (the published reference's fixed point weighs no phase: a
            # variance-weighted published fit runs as a step model's)
            return self._fit_source(
                self._feature_source(table, duration, sample_weight)
            )
        timeline = read_timeline(table)
        self._check_table_settings(table, timeline)
        return self._fit_timeline(
            timeline,
            design_columns(table),
            column(table, "step_density"),
            duration,
            sample_weight,
        )

    def _check_table_settings(self, table: np.ndarray, timeline: Timeline) -> None:
        """:func:`check_table_settings` of an in-memory exposure table."""
        floored = floored_densities(table)
        check_table_settings(
            TableSettings(
                int(floored.sum()),
                table_correction_mode(table, timeline),
                np.flatnonzero(floored)[:5],
            ),
            name=type(self).__name__,
            objective=self.objective,
            correction_mode=self.correction_mode,
            init_correction_mode=self.init_correction_mode,
        )

    def _fit_timeline(
        self,
        timeline: Timeline,
        init_design: np.ndarray,
        density: np.ndarray,
        duration: np.ndarray,
        sample_weight: np.ndarray | None = None,
        *,
        caller: str | None = None,
        names: dict | None = None,
    ) -> np.ndarray:
        """The fit in memory, shared with :func:`estimate_betas_iterative`.

        ``init_design`` is the trace's baseline design and ``density`` its
        phase-local step density (both from :func:`phase_exposures`);
        ``caller`` names the estimator in warnings and ``names`` maps its
        parameters to the caller's arguments there. Sets the fitted
        attributes (``beta_ci_`` too) but ``beta_``; returns the betas.
        """
        source = TimelineSource(timeline, init_design, density, duration, sample_weight)
        return self._fit_source(source, caller=caller, names=names)

    def _iteration_settings(self) -> IterationSettings:
        return IterationSettings(
            self.correction_mode, self.max_iter, self.tol, self.damping, self.stopping
        )

    def _variance_durations(self) -> bool:
        """Whether the durations are fitted with the variance weights (the
        step counts always are)."""
        return self.weights == "variance" and self.objective == "duration"

    def _fit_source(self, source, *, caller=None, names=None):
        """:func:`~sklearn_beta.estimators._fit.fit_iterative` on ``source``."""
        if self._variance_durations() and not isinstance(source, InMemorySource):
            raise ValueError(
                "IterativeBetaRegressor(weights='variance', objective='duration') "
                "fits traces in memory only; on a Dask collection use "
                "weights='auto', or objective='step_count' (whose step counts "
                "are weighted by their variance already)."
            )
        settings = self._fit_settings(caller, names)
        return self._fitted(fit_iterative(source, settings))

    def _fit_settings(self, caller=None, names=None) -> FitSettings:
        """What :func:`fit_iterative` takes from this estimator."""
        name = type(self).__name__
        return FitSettings(
            name,
            caller or name,
            self.confidence_level,
            names=names,
            objective=self.objective,
            correction_mode=self.correction_mode,
            init_correction_mode=self.init_correction_mode,
            edges=self.edges,
            iteration=self._iteration_settings(),
            verbose=self.verbose,
            coef_names=self._coef_names(),
            weights=self.weights,
        )

    def _fitted(self, fitted: FittedBetas) -> np.ndarray:
        self.time_scale_ = fitted.time_scale
        self.n_iter_ = fitted.n_iter
        self.converged_ = fitted.converged
        self.history_ = fitted.history
        return super()._fitted(fitted)

    def _check_feature_table(self, table) -> np.ndarray:
        """The request prompts of a step model's table; raises where this
        estimator cannot fit it."""
        features = step_model_of(table)
        if self.init_correction_mode is not None:
            raise ValueError(
                "IterativeBetaRegressor(init_correction_mode=...) recomputes a "
                "published design; under step model "
                f"{list(features)} the start is the table's exposures: set "
                "init_correction_mode=None."
            )
        prompt = request_prompts_of(table)
        needs_prompt = {"prefill_attention", "decode_context"} & set(features)
        if needs_prompt and not np.all(np.isfinite(prompt)):
            raise ValueError(
                f"The step features {sorted(needs_prompt)} need each request's "
                "prompt: the exposure table's 'request_prompt' column is NaN "
                "(a trace without 'prefill_tokens')."
            )
        return prompt

    def _feature_source(self, table, duration, sample_weight) -> FeatureSource:
        """The step model's data source (one beyond the published model)."""
        prompt = self._check_feature_table(table)
        design, basis = fit_design(table)
        return FeatureSource(
            read_timeline(table),
            prompt,
            step_model_of(table),
            basis,
            design,
            duration,
            sample_weight,
            basis_names=IDENTIFIABLE_FEATURES,
        )

    def _predict_table(self, table):
        self._table_design(table)  # the step model's check
        features = step_model_of(table)
        if features != PUBLISHED_FEATURES:
            # the duration objective's design at the fitted betas, settled
            # by three lagged passes
            source = self._feature_source(table, column(table, "duration"), None)
            durations = replace(self._fit_settings(), objective="duration")
            problem = source.problem(source.timeline, durations, None)
            for _ in range(3):
                design = problem.reweighted(self.beta_)
            return design @ self.beta_
        view = design_at_betas(
            table,
            self.beta_,
            correction_mode=self.correction_mode,
            objective=self.objective,
        )
        return view.design @ self.beta_


@dataclass(frozen=True)
class TableSettings:
    """What an exposure table shows of the transformer settings that made it:
    the phases whose step density a ``min_duration`` floor changed (and the
    first positions, where known) and the correction placement of its
    baseline design (:func:`table_correction_mode`)."""

    n_floored: int
    correction_mode: str | None
    first_floored: np.ndarray | None = None


def check_table_settings(
    table: TableSettings,
    *,
    name: str,
    objective: str,
    correction_mode: str,
    init_correction_mode: str | None,
) -> None:
    """Reject an exposure table made with transformer settings this fit
    would ignore (docs/method.md, section 6).

    The transformer's ``correction_mode`` and ``min_duration`` shape only
    the baseline design, which is where the iterations start; every later
    step density comes from the betas and every later correction from this
    estimator's own ``correction_mode``. The step-count objective reaches
    the same solution from any start, and an explicit
    ``init_correction_mode`` replaces the table's design: a non-default
    setting there would change nothing, so it is an error. In memory and on
    Dask alike (the partitions' :class:`TableSettings` reduced).
    """
    if table.n_floored and objective == "step_count":
        where = ""
        if table.first_floored is not None:
            where = f" (first at positions {table.first_floored.tolist()})"
        raise ValueError(
            "PhaseExposureTransformer(min_duration > 0) floors the step "
            f"density of {table.n_floored} phase(s){where}, which only enters "
            f"the baseline design; {name}(objective='step_count') computes "
            "every step density from its betas and reaches the same betas from "
            "any start, so it would ignore it. Set min_duration=0 on the "
            "transformer, or use BaselineBetaRegressor (or objective='duration', "
            "which starts from that design)."
        )
    mode = table.correction_mode
    if mode in (None, "end"):
        return
    init = init_correction_mode
    if init is not None and init != mode:
        reason = (
            f"{name}(init_correction_mode={init!r}) recomputes the "
            "starting design with its own placement"
        )
    elif init is None and objective == "step_count":
        reason = (
            f"it only sets where {name}(objective='step_count') starts, "
            "and that fit reaches the same betas from any start"
        )
    else:
        return
    raise ValueError(
        f"PhaseExposureTransformer(correction_mode={mode!r}) places the "
        "last prefill chunk's missing tokens in the baseline design only; "
        f"{reason}, so the transformer's setting would be ignored. {name} "
        f"places them by its own correction_mode (here "
        f"{correction_mode!r}): set {name}(correction_mode={mode!r}) "
        "for that placement (and init_correction_mode to choose the start), "
        "and leave the transformer at correction_mode='end'."
    )


def floored_densities(table: np.ndarray) -> np.ndarray:
    """Phases whose tabled step density is not ``N_i / l_i``: a
    ``min_duration`` floor made it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        plain = phase_step_density(column(table, "n_steps"), column(table, "duration"))
    return ~np.isclose(
        column(table, "step_density"), plain, rtol=1e-12, atol=0.0, equal_nan=True
    )


def table_correction_mode(table: np.ndarray, timeline: Timeline) -> str | None:
    """The fixed placement (``"end"`` first) whose baseline design the table
    holds, or None for a design no placement reproduces (a table not made by
    :class:`PhaseExposureTransformer`).

    Without missing mass every placement gives the same design: ``"end"``.
    """
    prefill = design_columns(table)[:, 1]
    density = column(table, "step_density")
    # The design is recomputed from the same grid by the same code: only
    # rounding separates it from the table's, while placements differ by
    # whole tokens on every prefill with a partial last chunk.
    tolerance = 1e-9 * max(float(np.max(np.abs(prefill), initial=0.0)), 1.0)
    for mode in FIXED_CORRECTION_MODES:  # "end" first
        expected = baseline_exposures(timeline, density, mode)[:, 1]
        if np.allclose(prefill, expected, rtol=0.0, atol=tolerance, equal_nan=True):
            return mode
    return None


def _warn_if_y_unused(table: np.ndarray, duration: np.ndarray) -> None:
    observed = column(table, "duration")
    if duration is observed or np.array_equal(duration, observed):
        return
    warn(
        "IterativeBetaRegressor(objective='step_count') fits the betas to the "
        "step counts of the phase windows in the exposure table; the y given "
        "to fit differs from the table's 'duration' column and only enters "
        "the starting point and the reported r2/rmse. Use "
        "objective='duration' to regress y.",
        UserWarning,
    )
