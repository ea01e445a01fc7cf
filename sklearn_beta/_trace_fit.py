"""One fit of a trace with everything needed to report and plot it.

The command-line tool and :mod:`sklearn_beta.plotting` need more than the
betas: the observed and predicted durations of every phase, the pressures
and step density on the grid and the history of the iterative fit. This
module runs the scikit-learn estimators (so the command line gets exactly
their defaults and behaviour) and keeps those by-products.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from ._baseline import BaselineBetaRegressor
from ._corrections import FIXED_CORRECTION_MODES
from ._design import DesignAtBetas, design_at_betas
from ._exposure import PhaseExposureTransformer
from ._fixed_point import HISTORY_COLUMNS
from ._iterative import IterativeBetaRegressor
from ._schema import column
from .model_selection import TraceBlockSplit, TraceContextRegressor

ALGORITHMS = ("baseline", "iterative")
#: Chunk sizes tried by :func:`search_chunk_size` unless told otherwise.
DEFAULT_CHUNK_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024, 2048)


#: Pressures and step density on the trace grid at the fitted betas.
PressureProfile = DesignAtBetas


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
    model: object = None


def make_model(
    chunk_size: int | None = None,
    *,
    algo: str = "iterative",
    correction_mode: str | None = None,
    damping: float = 1.0,
    max_iter: int = 25,
    tol: float = 1e-6,
    init_correction_mode: str = "end",
    min_duration: float = 0.0,
    stopping: str = "relative",
    objective: str = "step_count",
    token_budget: int | None = None,
    time_resolution: float | str = 0.0,
    instance_col: str | None = None,
    verbose: int = 0,
):
    """The pipeline ``PhaseExposureTransformer -> regressor`` for these options.

    ``correction_mode=None`` means the regressor's default (``"end"`` for the
    baseline, ``"end_inside"`` for the iterative estimator).
    """
    if algo not in ALGORITHMS:
        raise ValueError(f"algo must be one of {ALGORITHMS}, got {algo!r}.")
    if algo == "baseline":
        mode = correction_mode or "end"
        if mode not in FIXED_CORRECTION_MODES:
            raise ValueError(
                f"correction_mode {mode!r} needs the iterative estimator "
                f"(algo='iterative'); the baseline takes {FIXED_CORRECTION_MODES}."
            )
        regressor, fixed_mode = BaselineBetaRegressor(), mode
    else:
        regressor = IterativeBetaRegressor(
            damping=damping,
            max_iter=max_iter,
            tol=tol,
            init_correction_mode=init_correction_mode,
            stopping=stopping,
            objective=objective,
            verbose=verbose,
        )
        if correction_mode is not None:
            regressor.set_params(correction_mode=correction_mode)
        fixed_mode = init_correction_mode
    transformer = PhaseExposureTransformer(
        correction_mode=fixed_mode,
        min_duration=min_duration,
        token_budget=token_budget,
        time_resolution=time_resolution,
        columns={"instance_id": instance_col},
    )
    if chunk_size is not None:
        transformer.set_params(chunk_size=chunk_size)
    return make_pipeline(transformer, regressor)


def fit_trace(phases: pd.DataFrame, *, chunk_size: int, **options) -> TraceFit:
    """Fit the betas of a phase table and keep what a report needs.

    Parameters
    ----------
    phases : DataFrame
        The phase table (reference column names).
    chunk_size : int
        Prefill chunk size ``C``.
    **options
        Options of :func:`make_model` (``algo``, ``correction_mode``,
        ``damping``, ``max_iter``, ``tol``, ``init_correction_mode``,
        ``min_duration``, ``stopping``, ``objective``, ``token_budget``,
        ``time_resolution``,
        ``instance_col``, ``verbose``).

    Returns
    -------
    fit : TraceFit
    """
    model = make_model(chunk_size, **options)
    transformer, regressor = model[0], model[-1]
    table = transformer.fit_transform(phases)
    regressor.fit(table)
    values = table.to_numpy()
    algo = options.get("algo", "iterative")
    if algo == "iterative":
        history, converged, n_iter = (
            regressor.history_,
            regressor.converged_,
            regressor.n_iter_,
        )
    else:
        history, converged, n_iter = _baseline_history(regressor), None, 0
    instance_col = options.get("instance_col")
    instance_names = (
        ["all"]
        if instance_col is None
        else pd.unique(phases[instance_col].sort_values()).tolist()
    )
    return TraceFit(
        beta=regressor.beta_,
        algo=algo,
        chunk_size=int(transformer.chunk_size),
        converged=converged,
        n_iter=n_iter,
        tol=options.get("tol", 1e-6),
        stopping=options.get("stopping", "relative"),
        history=history,
        diagnostics=regressor.diagnostics_,
        observed=column(values, "duration"),
        predicted=regressor.predict(table),
        is_prefill=column(values, "is_prefill") == 1,
        t_start=column(values, "t_start"),
        instance=column(values, "instance_id").astype(np.intp),
        instance_names=instance_names,
        profile=pressure_profile(values, regressor),
        model=model,
    )


def _baseline_history(regressor: BaselineBetaRegressor) -> pd.DataFrame:
    diag = regressor.diagnostics_
    return pd.DataFrame(
        [[0, *regressor.beta_, np.nan, diag["r2"], diag["rmse_seconds"]]],
        columns=list(HISTORY_COLUMNS),
    )


def pressure_profile(table: np.ndarray, regressor) -> PressureProfile:
    """Pressures and step density of the trace at the fitted betas.

    With the iterative estimator's step-count objective, the density and
    ``p_eff`` it solves on each segment; otherwise ``p_eff`` settled by a
    few lagged passes at fixed betas.
    """
    # The baseline's correction already sits inside its exposures; for the
    # profile, "end_inside" places the same mass where the partial step ran.
    return design_at_betas(
        table,
        regressor.beta_,
        correction_mode=getattr(regressor, "correction_mode", "end_inside"),
        objective=getattr(regressor, "objective", "duration"),
    )


def search_chunk_size(
    phases: pd.DataFrame,
    *,
    candidates=DEFAULT_CHUNK_CANDIDATES,
    n_splits: int = 5,
    **options,
) -> tuple[int, pd.DataFrame]:
    """Cross-validated choice of the chunk size (R^2 of held-out durations).

    Folds are contiguous time blocks of every instance
    (:class:`~sklearn_beta.model_selection.TraceBlockSplit`) and every fit
    sees the whole trace's exposures
    (:class:`~sklearn_beta.model_selection.TraceContextRegressor`): a held-out
    block cut out of its context has truncated pressures at its edges, which
    biases the choice (measured: a sorted KFold picked 1024 for a true 512
    and 2048 for a true 1024; in context every true size was found).
    ``options`` are those of :func:`make_model`.

    Returns
    -------
    best : int
        The chunk size with the highest mean held-out R^2.
    scores : DataFrame
        One row per candidate: ``chunk_size, mean_r2, std_r2, rank``.
    """
    options = {**options, "verbose": 0}
    if len(phases) < 2 * n_splits:
        raise ValueError(
            f"--chunk-size auto needs at least {2 * n_splits} phases for "
            f"{n_splits}-fold cross-validation, the trace has {len(phases)}."
        )
    trace = phases.reset_index(drop=True)
    search = GridSearchCV(
        TraceContextRegressor(make_model(**options), trace=trace),
        {
            "estimator__phaseexposuretransformer__chunk_size": [
                int(c) for c in candidates
            ]
        },
        cv=TraceBlockSplit(
            n_splits, columns={"instance_id": options.get("instance_col")}
        ),
        error_score=np.nan,
    )
    with warnings.catch_warnings():
        # Non-converged or failed folds are visible in the scores table.
        warnings.simplefilter("ignore")
        search.fit(trace)
    results = search.cv_results_
    scores = pd.DataFrame(
        {
            "chunk_size": np.asarray(
                results["param_estimator__phaseexposuretransformer__chunk_size"],
                dtype=int,
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
    best = search.best_params_["estimator__phaseexposuretransformer__chunk_size"]
    return int(best), scores
