"""The estimators on a Dask DataFrame: partitions on the workers, sums on the client.

Every partition must hold whole engine instances (the transformer
repartitions when they do not, see :mod:`sklearn_beta.fleet`). The exposure
table is persisted, each partition's timeline is built once where it lives
and kept there, and each iteration sends the betas out and brings back only
the statistics of :mod:`sklearn_beta._distributed` (R factors of at most
4 x 4, column sums, a loss). The phase table never reaches the client.

The fit follows the pandas fit step by step (time unit, baseline start,
``initial_scale``, Gauss-Newton steps with step halving, the lagged
re-weighting of the duration objective, the stopping rule, the history and
the diagnostics), each sum over phases replaced by a sum of per-partition
sums: the betas agree with the pandas fit of the same rows to rounding.

Works with the active ``distributed.Client`` (or, without one, Dask's local
scheduler). A worker lost between iterations costs a recomputation: the
persisted partitions are rebuilt from their lineage (the source partitions,
then the chain of lagged passes) and the fit goes on with the same numbers.
"""

from __future__ import annotations

import copy
import warnings

import dask
import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from ._baseline import BaselineBetaRegressor
from ._distributed import (
    Moments,
    build_block,
    column_norm_row,
    combine_stats,
    count_block,
    duration_block,
    fit_statistics_from,
    nnls_from_r,
    reweight_block,
    scale_count_block,
    scale_sums_block,
    score_block,
    start_block,
    table_values,
    time_scale_from,
)
from ._distributed import baseline_block as _baseline_block
from ._exposure import _COL, EXPOSURE_COLUMNS
from ._identifiability import identifiability_diagnostics
from ._iterative import (
    MAX_HALVINGS,
    _history_frame,
    _print_progress,
    _record,
    beta_change,
)
from .fleet import auto_time_resolution, whole_instances

_NOT_COLLECTED = (
    "On a Dask DataFrame the durations are the exposure table's 'duration' "
    "column, read where each partition lives; {name} must be None."
)


class Partitions:
    """One persisted object per partition; maps return reduced statistics."""

    def __init__(self, items: list):
        self.items = items

    @classmethod
    def of(cls, frame) -> Partitions:
        return cls(frame.to_delayed())

    def derive(self, fn, *args, states: Partitions | None = None) -> Partitions:
        """Persist ``fn(item[, state], *args)`` of every partition where it lives."""
        tasks = self._tasks(fn, args, states)
        return Partitions(list(_run(dask.persist, tasks)))

    def map(self, fn, *args, states: Partitions | None = None) -> dict:
        """Compute ``fn(item[, state], *args)`` everywhere and reduce the results."""
        return combine_stats(list(_run(dask.compute, self._tasks(fn, args, states))))

    def _tasks(self, fn, args, states):
        call = dask.delayed(fn, pure=False)
        if states is None:
            return [call(item, *args) for item in self.items]
        return [
            call(item, state, *args)
            for item, state in zip(self.items, states.items, strict=True)
        ]


def _run(scheduler_call, tasks):
    try:
        return scheduler_call(*tasks)
    except Exception as exc:
        if type(exc).__name__ in (
            "KilledWorker",
            "CancelledError",
            "FutureCancelledError",
        ):
            raise RuntimeError(
                "The Dask cluster lost the partitions of this fit and could not "
                f"rebuild them from their lineage ({type(exc).__name__}: {exc}); "
                "nothing was fitted. Refit once the cluster is stable."
            ) from exc
        raise


# --- Transformer ------------------------------------------------------------


def check_phase_partitions(transformer, X) -> None:
    """Validate the parameters and the columns of a Dask phase table (``fit``)."""
    transformer._validate_params()
    columns = transformer._columns()
    required = columns.required() + (
        [columns.instance] if columns.instance is not None else []
    )
    missing = [c for c in required if c not in X.columns]
    if missing:
        raise ValueError(
            f"The phase table is missing column(s) {missing}; it has "
            f"{list(X.columns)[:20]}."
        )
    transformer.feature_names_in_ = np.asarray(X.columns, dtype=object)
    transformer.n_features_in_ = len(transformer.feature_names_in_)


def transform_partitions(transformer, X):
    """The exposure table of a Dask phase table, one partition per partition."""
    check_is_fitted(transformer)
    columns = transformer._columns()
    X = whole_instances(X, columns.instance)
    if transformer.time_resolution == "auto":
        transformer = copy.copy(transformer)
        transformer.time_resolution = auto_time_resolution(
            X, columns, transformer.chunk_size
        )
    meta = pd.DataFrame(
        {name: pd.Series(dtype=np.float64) for name in EXPOSURE_COLUMNS},
        index=X._meta.index,
    )
    return X.map_partitions(_transform_part, transformer, meta=meta)


def _transform_part(part: pd.DataFrame, transformer) -> pd.DataFrame:
    if len(part) == 0:
        return pd.DataFrame(
            np.empty((0, len(EXPOSURE_COLUMNS))),
            columns=list(EXPOSURE_COLUMNS),
            index=part.index,
        )
    return transformer.transform(part)


# --- Regressors -------------------------------------------------------------


def fit_partitions(estimator, X, y=None, sample_weight=None):
    """Fit a beta regressor on a Dask exposure table."""
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None:
            raise TypeError(_NOT_COLLECTED.format(name=name))
    if len(X.columns) < estimator._min_columns:
        raise ValueError(
            f"{type(estimator).__name__} needs the exposure table of "
            f"PhaseExposureTransformer, with at least {estimator._min_columns} "
            f"columns {list(EXPOSURE_COLUMNS[: estimator._min_columns])}; got "
            f"{len(X.columns)} feature(s)."
        )
    estimator.feature_names_in_ = np.asarray(X.columns, dtype=object)
    estimator.n_features_in_ = len(X.columns)
    tables = Partitions.of(X.persist())
    if isinstance(estimator, BaselineBetaRegressor):
        beta = _fit_baseline(estimator, tables)
    else:
        beta = _fit_iterative(estimator, tables)
    estimator.beta_ = np.asarray(beta, dtype=np.float64)
    estimator.coef_ = estimator.beta_.copy()
    estimator.intercept_ = 0.0
    return estimator


def _diagnostics(estimator, stats, ss_res, duration, beta, unit=1.0) -> dict:
    """``design_diagnostics`` and ``identifiability_diagnostics`` from sums.

    ``duration`` and ``ss_res`` are in units of ``unit`` (a power of two, so
    scaling back is exact); the design is in steps and tokens.
    """
    r_design = stats["r_design"].r
    n = duration.count
    r2, rmse = fit_statistics_from(ss_res, duration)
    diagnostics = {
        "n_phases": int(n),
        "r2": r2,
        "rmse_seconds": rmse * unit,
        "mean_duration_seconds": duration.mean * unit,
        "mean_steps": float(stats["design_sum"][0] / n),
        "mean_A_pf_tokens": float(stats["design_sum"][1] / n),
        "mean_A_dec_tokens": float(stats["design_sum"][2] / n),
    }
    # Only the design's Gram matrix and the durations' norm enter: the R
    # factor of [design, duration] carries both.
    norm = np.linalg.norm(r_design[:, 3]) * unit
    diagnostics.update(
        identifiability_diagnostics(
            r_design[:, :3],
            np.array([norm]),
            beta,
            stats["shape"],
            estimator=type(estimator).__name__,
            stacklevel=6,
        )
    )
    return diagnostics


def _fit_baseline(estimator, tables: Partitions) -> np.ndarray:
    stats = tables.map(_baseline_block, None)
    beta = nnls_from_r(stats["r_design"])
    ss_res = tables.map(_baseline_block, beta)["ss_res"]
    estimator.diagnostics_ = _diagnostics(
        estimator, stats, ss_res, stats["duration"], beta
    )
    return beta


def _fit_iterative(estimator, tables: Partitions) -> np.ndarray:
    unit = time_scale_from(tables.map(scale_sums_block), estimator.stopping)
    estimator.time_scale_ = unit
    blocks = tables.derive(build_block, unit, estimator.correction_mode)
    start = blocks.map(start_block, estimator.init_correction_mode)
    beta_init = nnls_from_r(start["r_init"])
    callback = None
    if estimator.verbose:

        def callback(record):
            _print_progress(record, unit=unit)

    run = _fit_step_counts if estimator.objective == "step_count" else _iterate
    beta, converged, n_iter, final, history = run(
        estimator, blocks, start, beta_init, callback
    )
    if not converged:
        warnings.warn(
            f"IterativeBetaRegressor did not converge in max_iter="
            f"{estimator.max_iter} iterations (last change "
            f"{history[-1]['step']:.3g} >= tol={estimator.tol:g}); increase "
            "max_iter or damp with damping < 1.",
            ConvergenceWarning,
            stacklevel=5,
        )
    estimator.n_iter_ = n_iter
    estimator.converged_ = converged
    estimator.history_ = _history_frame(history, unit)
    beta = beta * unit
    estimator.diagnostics_ = _diagnostics(
        estimator,
        {**final, "shape": start["shape"]},
        final["ss_res"],
        start["duration"],
        beta,
        unit,
    )
    return beta


def _fit_step_counts(estimator, blocks, start, beta_init, callback):
    """``fit_step_counts`` with every sum over phases a sum over partitions."""
    if start["n_weighted"] == 0:
        raise ValueError(
            "The step-count objective needs phases with a known step count and "
            "a positive sample_weight; under the token budget every phase's "
            "count is unknown or weighted 0. Use objective='duration'."
        )
    mode, tol = estimator.correction_mode, estimator.tol
    beta = _initial_scale(blocks, start, beta_init)
    state = blocks.map(count_block, beta, mode)
    moments = start["duration"]
    history = [_record(0, beta, np.nan, *fit_statistics_from(state["ss_res"], moments))]
    converged, n_iter = False, 0
    for n_iter in range(1, estimator.max_iter + 1):
        proposal = nnls_from_r(state["r_newton"])
        norms = column_norm_row(state["jac_sumsq"])
        step = beta_change(proposal, beta, norms, estimator.stopping)
        shrink = 1.0
        for _ in range(MAX_HALVINGS):
            candidate = beta + shrink * (proposal - beta)
            trial = blocks.map(count_block, candidate, mode)
            if trial["loss"] <= state["loss"] or step < tol:
                break
            shrink *= 0.5
        state, beta = trial, candidate
        scores = fit_statistics_from(state["ss_res"], moments)
        history.append(_record(n_iter, beta, step, *scores))
        if callback is not None:
            callback(history[-1])
        if step < tol:
            converged = True
            break
    return beta, converged, n_iter, state, history


def _initial_scale(blocks: Partitions, start: dict, beta_init: np.ndarray):
    """``initial_scale`` from partition sums: ``b0`` floor, then rescaling."""
    beta = np.array(beta_init, dtype=np.float64)
    per_step = start["counted_duration"] / max(start["counted_steps"], 1.0)
    if beta[0] <= 0:
        beta[0] = 0.1 * per_step
    sums = blocks.map(scale_count_block, beta)
    if sums["total"] > 0 and sums["target"] > 0:
        beta *= sums["total"] / sums["target"]
    return beta


def _iterate(estimator, blocks, start, beta_init, callback):
    """``iterate_betas``: the lagged passes stay on the workers, chained."""
    mode, damping = estimator.correction_mode, estimator.damping
    beta = np.asarray(beta_init, dtype=np.float64)
    history = [_record(0, beta, np.nan, np.nan, np.nan)]
    states, converged, n_iter = None, False, 0
    for n_iter in range(1, estimator.max_iter + 1):
        states = (
            blocks.derive(reweight_block, None, beta, mode)
            if states is None
            else blocks.derive(reweight_block, beta, mode, states=states)
        )
        stats = blocks.map(duration_block, states=states)
        beta_fit = nnls_from_r(stats["r_design"])
        new = (1.0 - damping) * beta + damping * beta_fit
        norms = column_norm_row(stats["design_sumsq"])
        step = beta_change(new, beta, norms, estimator.stopping)
        # The reference scores the undamped NNLS fit of the iteration.
        ss_fit = blocks.map(score_block, beta_fit, states=states)["ss_res"]
        history.append(
            _record(n_iter, new, step, *fit_statistics_from(ss_fit, start["duration"]))
        )
        if callback is not None:
            callback(history[-1])
        beta = new
        if step < estimator.tol:
            converged = True
            break
    same = np.array_equal(beta, beta_fit)
    stats["ss_res"] = (
        ss_fit if same else blocks.map(score_block, beta, states=states)["ss_res"]
    )
    return beta, converged, n_iter, stats, history


def predict_partitions(estimator, X):
    """Predicted durations of a Dask exposure table, as a lazy Dask Series."""
    check_is_fitted(estimator)
    return X.map_partitions(
        _predict_part, estimator, meta=pd.Series(dtype=np.float64, index=X._meta.index)
    )


def _predict_part(part: pd.DataFrame, estimator) -> pd.Series:
    if len(part) == 0:
        return pd.Series(np.empty(0), index=part.index)
    return pd.Series(estimator.predict(part), index=part.index)


def score_partitions(estimator, X, y=None, sample_weight=None) -> float:
    """R^2 of the predicted durations of a Dask exposure table (``r2_score``)."""
    check_is_fitted(estimator)
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None:
            raise TypeError(_NOT_COLLECTED.format(name=name))
    stats = Partitions.of(X).map(_score_part, estimator)
    ss_res, ss_tot = stats["ss_res"], stats["duration"].m2
    if ss_tot == 0:
        # r2_score's convention for a constant target (force_finite=True).
        return 1.0 if ss_res == 0 else 0.0
    return float(1.0 - ss_res / ss_tot)


def _score_part(part: pd.DataFrame, estimator) -> dict | None:
    if len(part) == 0:
        return None
    duration = table_values(part)[:, _COL["duration"]]
    residual = duration - estimator.predict(part)
    return {"ss_res": float(residual @ residual), "duration": Moments.of(duration)}
