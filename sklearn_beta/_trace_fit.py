"""One fit of a trace with everything needed to report and plot it.

The command-line tool and :mod:`sklearn_beta.plotting` need more than the
betas: the observed and predicted durations of every phase, the pressures
and step density on the grid and the history of the iterative fit. This
module runs the estimators of METHOD.md on their array layer (so that a
progress callback sees every iteration) and keeps those by-products.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline

from ._baseline import BaselineBetaRegressor, design_diagnostics
from ._corrections import fixed_correction_mass
from ._exposure import (
    PhaseExposureTransformer,
    baseline_exposures,
    phase_step_density,
    timeline_from_arrays,
)
from ._identifiability import identifiability_diagnostics
from ._iterative import (
    HISTORY_COLUMNS,
    IterativeBetaRegressor,
    _check_iteration_params,
    iterate_betas,
    reweighted_design,
    step_density,
)
from ._nnls import fit_statistics, nnls_fit
from ._validation import (
    PhaseColumns,
    check_chunk_size,
    check_non_negative,
    check_phases,
)

ALGORITHMS = ("baseline", "iterative")
#: Chunk sizes tried by :func:`search_chunk_size` unless told otherwise.
DEFAULT_CHUNK_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class PressureProfile:
    """Pressures and step density on the trace grid, at the fitted betas.

    Per grid point: ``grid`` (seconds, each instance shifted to start at 0)
    and ``grid_instance``; per segment (one fewer): ``p_pf_full``, ``p_eff``
    (prefill tokens per step after the partial-chunk correction), ``p_dec``
    and ``step_density`` (steps per second, ``1 / (b0 + b1 p_eff + b2 p_dec)``).
    """

    grid: np.ndarray
    grid_instance: np.ndarray
    p_pf_full: np.ndarray
    p_eff: np.ndarray
    p_dec: np.ndarray
    step_density: np.ndarray


@dataclass(frozen=True)
class TraceFit:
    """Result of :func:`fit_trace`: betas, diagnostics and per-phase detail."""

    beta: np.ndarray
    algo: str
    chunk_size: int
    converged: bool | None
    n_iter: int
    tol: float
    stopping: str
    history: pd.DataFrame
    diagnostics: dict
    observed: np.ndarray
    predicted: np.ndarray
    is_prefill: np.ndarray
    t_start: np.ndarray
    instance: np.ndarray
    instance_names: list
    profile: PressureProfile


def fit_trace(
    phases: pd.DataFrame,
    *,
    chunk_size: int,
    algo: str = "iterative",
    correction_mode: str | None = None,
    damping: float = 1.0,
    max_iter: int = 25,
    tol: float = 1e-6,
    init_correction_mode: str = "end",
    min_duration: float = 0.0,
    stopping: str = "relative",
    instance_col: str | None = None,
    callback: Callable[[dict], None] | None = None,
) -> TraceFit:
    """Fit the betas of a phase table and keep what a report needs.

    Parameters
    ----------
    phases : DataFrame
        The phase table (reference column names).
    chunk_size : int
        Prefill chunk size ``C``.
    algo : {"baseline", "iterative"}, default="iterative"
        Estimator of METHOD.md section 5 or 6.
    correction_mode : str or None, default=None
        Partial-chunk correction; None means the estimator's default
        (``"end"`` for the baseline, ``"beta_informed"`` for the iterative).
    damping, max_iter, tol, init_correction_mode, stopping
        Iterative estimator parameters (see
        :class:`~sklearn_beta.IterativeBetaRegressor`).
    min_duration : float, default=0.0
        Duration floor of the phase-local step density.
    instance_col : str or None, default=None
        Column naming the engine instance.
    callback : callable or None, default=None
        Called with each history record of the iterative fit.

    Returns
    -------
    fit : TraceFit
    """
    if algo not in ALGORITHMS:
        raise ValueError(f"algo must be one of {ALGORITHMS}, got {algo!r}.")
    if correction_mode is None:
        correction_mode = "end" if algo == "baseline" else "beta_informed"
    if algo == "baseline" and correction_mode == "beta_informed":
        raise ValueError(
            "correction_mode 'beta_informed' needs the iterative estimator "
            "(algo='iterative')."
        )
    init_mode = correction_mode if algo == "baseline" else init_correction_mode
    _check_iteration_params(
        correction_mode, init_mode, max_iter, tol, damping, stopping
    )
    chunk_size = check_chunk_size(chunk_size)
    check_non_negative(min_duration, "min_duration")
    arrays = check_phases(phases, PhaseColumns(instance=instance_col))
    timeline = timeline_from_arrays(arrays, chunk_size)
    duration = timeline.duration
    density = phase_step_density(timeline.n_steps, duration, min_duration)
    design = baseline_exposures(timeline, density, init_mode)
    beta = nnls_fit(design, duration)
    r2, rmse = fit_statistics(duration, design @ beta)
    history = [dict(zip(HISTORY_COLUMNS, [0, *beta, np.nan, r2, rmse], strict=True))]
    converged, n_iter = None, 0
    if algo == "iterative":
        beta, converged, n_iter, design, history = iterate_betas(
            timeline,
            beta,
            correction_mode=correction_mode,
            max_iter=max_iter,
            tol=tol,
            damping=damping,
            stopping=stopping,
            callback=callback,
        )
    diagnostics = design_diagnostics(design, duration, beta)
    diagnostics.update(
        identifiability_diagnostics(
            design, duration, beta, timeline, estimator=f"fit_trace ({algo})"
        )
    )
    instance_names = (
        ["all"]
        if instance_col is None
        else pd.unique(phases[instance_col].sort_values()).tolist()
    )
    return TraceFit(
        beta=beta,
        algo=algo,
        chunk_size=chunk_size,
        converged=converged,
        n_iter=n_iter,
        tol=tol,
        stopping=stopping,
        history=pd.DataFrame(history, columns=list(HISTORY_COLUMNS)),
        diagnostics=diagnostics,
        observed=duration,
        predicted=design @ beta,
        is_prefill=arrays.is_prefill,
        t_start=arrays.t_start,
        instance=arrays.instance,
        instance_names=instance_names,
        profile=pressure_profile(timeline, beta, correction_mode),
    )


def pressure_profile(timeline, beta, correction_mode, n_passes: int = 3):
    """Pressures and step density at ``beta``; ``p_eff`` settled by a few passes."""
    fixed = None
    if correction_mode != "beta_informed":
        fixed = fixed_correction_mass(
            correction_mode, timeline.trace_grid, timeline.is_prefill, timeline.mu
        )
    p_eff = timeline.p_pf_full
    for _ in range(n_passes):
        _, p_eff = reweighted_design(timeline, beta, p_eff, correction_mode, fixed)
    tg = timeline.trace_grid
    return PressureProfile(
        grid=tg.grid,
        grid_instance=tg.grid_instance,
        p_pf_full=timeline.p_pf_full,
        p_eff=p_eff,
        p_dec=timeline.p_dec,
        step_density=step_density(beta, p_eff, timeline.p_dec),
    )


def search_chunk_size(
    phases: pd.DataFrame,
    *,
    candidates=DEFAULT_CHUNK_CANDIDATES,
    algo: str = "iterative",
    correction_mode: str | None = None,
    damping: float = 1.0,
    max_iter: int = 25,
    tol: float = 1e-6,
    init_correction_mode: str = "end",
    min_duration: float = 0.0,
    stopping: str = "relative",
    instance_col: str | None = None,
    n_splits: int = 5,
) -> tuple[int, pd.DataFrame]:
    """Cross-validated choice of the chunk size (R^2 of held-out durations).

    Folds are contiguous blocks of phases in time (the table sorted by
    ``t_start``, then :class:`~sklearn.model_selection.KFold` without
    shuffling): exposures of a phase depend on the phases overlapping it, so
    a held-out block keeps most of its own context, where random folds would
    thin every pressure out.

    Returns
    -------
    best : int
        The chunk size with the highest mean held-out R^2.
    scores : DataFrame
        One row per candidate: ``chunk_size, mean_r2, std_r2, rank``.
    """
    if algo not in ALGORITHMS:
        raise ValueError(f"algo must be one of {ALGORITHMS}, got {algo!r}.")
    if correction_mode is None:
        correction_mode = "end" if algo == "baseline" else "beta_informed"
    fixed_mode = correction_mode if algo == "baseline" else init_correction_mode
    transformer = PhaseExposureTransformer(
        correction_mode=fixed_mode, min_duration=min_duration, instance_col=instance_col
    )
    if algo == "baseline":
        regressor = BaselineBetaRegressor()
    else:
        regressor = IterativeBetaRegressor(
            correction_mode,
            damping=damping,
            max_iter=max_iter,
            tol=tol,
            init_correction_mode=init_correction_mode,
            stopping=stopping,
        )
    ordered = phases.sort_values("t_start", kind="stable").reset_index(drop=True)
    if len(ordered) < 2 * n_splits:
        raise ValueError(
            f"--chunk-size auto needs at least {2 * n_splits} phases for "
            f"{n_splits}-fold cross-validation, the trace has {len(ordered)}."
        )
    search = GridSearchCV(
        make_pipeline(transformer, regressor),
        {"phaseexposuretransformer__chunk_size": [int(c) for c in candidates]},
        cv=KFold(n_splits=n_splits, shuffle=False),
        error_score=np.nan,
    )
    with warnings.catch_warnings():
        # Non-converged or failed folds are visible in the scores table.
        warnings.simplefilter("ignore")
        search.fit(ordered)
    results = search.cv_results_
    scores = pd.DataFrame(
        {
            "chunk_size": np.asarray(
                results["param_phaseexposuretransformer__chunk_size"], dtype=int
            ),
            "mean_r2": results["mean_test_score"],
            "std_r2": results["std_test_score"],
            "rank": results["rank_test_score"],
        }
    )
    if not np.isfinite(scores["mean_r2"]).any():
        raise ValueError(
            "Every chunk-size candidate failed in cross-validation; pass "
            "--chunk-size N instead."
        )
    return int(search.best_params_["phaseexposuretransformer__chunk_size"]), scores
