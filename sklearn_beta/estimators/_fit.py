"""One fit orchestration per estimator, over a data source.

The estimators validate their input and pick its backend
(:func:`~sklearn_beta.estimators._backend.backend_for`); the backend hands
back a data source, and :func:`fit_baseline` or :func:`fit_iterative` runs
the fit on it, the same steps whatever the source: the betas, the
convergence record, the diagnostics, the intervals. A source answers each
step on its own data: ``_baseline.DesignSource`` and
``_iterative.TimelineSource`` on arrays in memory, the distributed
backend's on partitions, from reduced sums. What a fit needs from its
estimator travels in a :class:`FitSettings`; nothing reads the estimator
itself.

Every warning points at the code that called the estimator
(:func:`~sklearn_beta.core._warnings.warn`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from ..core._fixed_point import HISTORY_COLUMNS, IterationSettings, warn_not_converged
from ..core._grid import Timeline
from ..core._schema import EXPOSURE_COLUMNS, phase_windows
from ..core._units import unit_from_totals
from ..core._warnings import warn
from ..exceptions import UncertaintyWarning
from ..trust._identifiability import BETA_NAMES
from ..trust._time_blocks import time_blocks
from ..trust._uncertainty import SandwichSums, intervals_from_sums, sandwich_sums


@dataclass(frozen=True)
class FitSettings:
    """What a fit takes from its estimator (the iterative fields: None for
    the baseline).

    ``estimator`` is the estimator's class name, ``caller`` the name its
    warnings give (a functional API's own), ``names`` maps the estimator's
    parameters to the caller's arguments in those warnings.
    """

    estimator: str
    caller: str
    confidence_level: float | None
    names: dict | None = None
    objective: str | None = None
    correction_mode: str | None = None
    init_correction_mode: str | None = None
    edges: str | None = None
    iteration: IterationSettings | None = None
    verbose: int = 0
    #: The coefficients' names: beta0..2, or a step model's features.
    coef_names: tuple = BETA_NAMES
    #: The phase weights (``IterativeBetaRegressor(weights=...)``).
    weights: str = "auto"


@dataclass
class FittedBetas:
    """A fit's result, which the estimator sets as its fitted attributes."""

    beta: np.ndarray
    beta_ci: np.ndarray | None
    diagnostics: dict
    converged: bool | None = None
    n_iter: int | None = None
    history: pd.DataFrame | None = None
    time_scale: float | None = None


@dataclass
class Solution:
    """A source's solved fit: the betas (in the fit's time unit), the
    solver's record, the edge report, and whatever the source reads again
    for the diagnostics and intervals (``state``)."""

    beta: np.ndarray
    converged: bool = True
    n_iter: int = 0
    history: list | None = None
    edges: object = None
    state: object = None


def fit_baseline(source, settings: FitSettings) -> FittedBetas:
    """The baseline NNLS on ``source`` (docs/method.md, section 5)."""
    solution = source.baseline()
    beta = solution.beta
    diagnostics = source.diagnostics(solution, beta, 1.0, settings)
    beta_ci = source.intervals(solution, beta, 1.0, diagnostics, settings)
    return FittedBetas(beta, beta_ci, diagnostics)


def fit_iterative(source, settings: FitSettings) -> FittedBetas:
    """The iterative fit on ``source`` (docs/method.md, section 6): either
    objective, with the edge treatment of ``settings.edges``."""
    unit = time_unit(settings.iteration.stopping, source.scale_totals)
    callback = None
    if settings.verbose:
        # Looked up here, not bound at import: benchmarks and tests hook it.
        callback = partial(print_progress, unit=unit)
        if settings.coef_names != BETA_NAMES:  # a step model's betas by name
            callback = partial(callback, names=settings.coef_names)
    solution = source.solve(unit, settings, callback)
    if not solution.converged:
        warn_not_converged(
            settings.caller,
            settings.iteration,
            solution.history[-1]["step"],
            settings.names,
        )
    history = history_frame(solution.history, unit, settings.coef_names)
    beta = solution.beta * unit
    diagnostics = source.diagnostics(solution, beta, unit, settings)
    # The reference reports the last iteration's fit, as the history does.
    last = history.iloc[-1]
    diagnostics.update(r2=last["r2"], rmse_seconds=last["rmse_seconds"])
    if solution.edges is not None:
        diagnostics["edges"] = solution.edges.as_dict()
    beta_ci = source.intervals(solution, beta, unit, diagnostics, settings)
    return FittedBetas(
        beta, beta_ci, diagnostics, solution.converged, solution.n_iter, history, unit
    )


def time_unit(stopping: str, totals) -> float:
    """The fit's time unit: 1 for the absolute stopping rule, else from
    ``totals()``, the sums of ``N_i`` and ``l_i`` and the phase count (read
    only when needed)."""
    if stopping != "relative":
        return 1.0
    steps, duration, n_phases = totals()
    return unit_from_totals(float(steps), float(duration), int(n_phases))


class InMemorySource:
    """What the in-memory sources of the published and of any step model
    share: a ``timeline`` and the ``duration`` fitted. Their totals for the
    time unit, and their ``intervals`` from the solution's last state (the
    weighted Jacobian, residuals and weights at the betas, of the fixed
    point and of the step-count solutions alike)."""

    def scale_totals(self) -> tuple:
        n_steps = np.sum(self.timeline.n_steps)
        return n_steps, np.sum(self.duration), self.duration.shape[0]

    def intervals(self, solution, beta, unit, diagnostics, settings):
        jac, residual, weight = solution.state[-1]
        return beta_intervals(
            self.timeline,
            beta,
            jac,
            residual,
            weight,
            diagnostics,
            settings,
            unit=unit,
        )


def beta_intervals(
    timeline: Timeline | None,
    beta: np.ndarray,
    jac: np.ndarray,
    residual: np.ndarray,
    weight: np.ndarray | None,
    diagnostics: dict,
    settings: FitSettings,
    *,
    unit: float = 1.0,
) -> np.ndarray | None:
    """``beta_ci_`` of the fitted least-squares objective.

    ``jac`` and ``residual`` are the objective's Jacobian (n_phases, 3)
    and residuals at ``beta / unit`` (the fit's time unit), ``weight`` its
    weights, ``diagnostics`` the fit's; the intervals come back in the unit
    of ``beta``. None when ``confidence_level`` is None; NaN, with a
    warning, without the ``timeline`` whose phase windows form the time
    blocks (a table that is not a full exposure table).
    """
    if settings.confidence_level is None:
        return None
    if timeline is None:
        return nan_intervals(settings)
    block, block_instance, n_lags = time_blocks(*phase_windows(timeline))
    sums = sandwich_sums(jac, residual, weight, block, block_instance, n_lags)
    return intervals_of_sums(beta, sums, n_lags, diagnostics, settings, unit)


def intervals_of_sums(
    beta: np.ndarray,
    sums: SandwichSums,
    n_lags: int,
    diagnostics: dict,
    settings: FitSettings,
    unit: float = 1.0,
) -> np.ndarray:
    """``beta_ci_`` from a fit's sandwich sums, in memory and on a Dask
    cluster. A beta at its zero bound (the NNLS constraint set it, not the
    trace) gets a one-sided interval; coefficients the trace does not
    identify (``diagnostics["not_identified"]``) get ``[0, typical step /
    their tokens in it]``
    (:func:`~sklearn_beta.trust._uncertainty.unidentified_intervals`)."""
    names = settings.coef_names
    at_bound = (beta <= 0) | np.isin(names, diagnostics["at_zero_bound"])
    ci = intervals_from_sums(
        beta / unit,
        sums,
        n_lags,
        settings.confidence_level,
        at_bound,
        np.isin(names, diagnostics["not_identified"]),
        typical_step(diagnostics),
    )
    return unit * ci


def typical_step(diagnostics: dict) -> np.ndarray:
    """``[1, T_pf, T_dec]``: the fitted design's tokens per step (a step
    model's features per step; per phase without a ``steps`` feature)."""
    if "mean_exposures" in diagnostics:
        means = np.array(list(diagnostics["mean_exposures"].values()))
        per = diagnostics["mean_exposures"].get("steps", 1.0)
        return means / max(per, np.finfo(float).tiny)
    steps = max(float(diagnostics["mean_steps"]), np.finfo(float).tiny)
    return np.array(
        [
            1.0,
            diagnostics["mean_A_pf_tokens"] / steps,
            diagnostics["mean_A_dec_tokens"] / steps,
        ]
    )


def nan_intervals(settings: FitSettings) -> np.ndarray | None:
    """``beta_ci_`` of a table without phase windows: NaN, with a warning."""
    if settings.confidence_level is None:
        return None
    warn(
        f"{settings.estimator}: beta_ci_ needs the full exposure table "
        f"(columns {list(EXPOSURE_COLUMNS)}) to group phases into time "
        "blocks; it is NaN. Fit on PhaseExposureTransformer's output, "
        "or set confidence_level=None.",
        UncertaintyWarning,
    )
    return np.full((len(settings.coef_names), 2), np.nan)


def coef_columns(names=BETA_NAMES) -> tuple:
    """The history's beta columns: ``beta0..2``, or ``beta_<feature>``."""
    names = tuple(names)
    return names if names == BETA_NAMES else tuple(f"beta_{n}" for n in names)


def history_frame(history: list[dict], unit: float, names=BETA_NAMES) -> pd.DataFrame:
    """The solver's per-iteration records as ``history_`` (trace units)."""
    betas = list(coef_columns(names))
    columns = ["iteration", *betas, *HISTORY_COLUMNS[-3:], "note"]
    frame = pd.DataFrame(history, columns=columns)
    if unit != 1.0:
        frame[[*betas, "rmse_seconds"]] *= unit
    return frame


def print_progress(record: dict, unit: float = 1.0, names=BETA_NAMES) -> None:
    """One line per iteration on stderr (``verbose``)."""
    betas = "  ".join(f"{k}={record[k] * unit:.6g}" for k in coef_columns(names))
    print(
        f"  iter {record['iteration']:3d}  {betas}  change={record['step']:.3g}",
        file=sys.stderr,
        flush=True,
    )
