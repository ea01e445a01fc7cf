"""The estimators on a Dask DataFrame: partitions on the workers, sums on the client.

Every partition must hold whole engine instances (the transformer
repartitions when they do not, see :mod:`sklearn_beta.fleet`). The exposure
table is persisted, each partition's timeline is built once where it lives
and kept there, and each iteration sends the betas out and brings back only
the statistics of :mod:`sklearn_beta._distributed` (R factors of at most
4 x 4, column sums, a loss). The phase table never reaches the client.

The solver loops are the pandas fit's own:
:func:`~sklearn_beta._step_count.solve_step_counts` (``initial_scale``,
Gauss-Newton steps with step halving) and
:func:`~sklearn_beta._fixed_point.solve_fixed_point` (the lagged
re-weighting of the duration objective) run on :class:`PartitionCounts` and
:class:`PartitionDurations`, which answer each of the loop's questions with
one reduction of per-partition sums, where the pandas fit asks one
in-memory timeline: the betas agree with the pandas fit of the same rows to
rounding.

Works with the active ``distributed.Client`` (or, without one, Dask's local
scheduler). A worker lost between iterations costs a recomputation: the
persisted partitions are rebuilt from their lineage (the source partitions,
then the chain of lagged passes) and the fit goes on with the same numbers.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from functools import partial

import dask
import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from ._baseline import BaselineBetaRegressor, diagnostics_from_sums
from ._distributed import (
    Moments,
    baseline_block,
    build_block,
    combine_stats,
    count_block,
    duration_block,
    reweight_block,
    scale_sums_block,
    score_block,
    start_block,
    step_totals_block,
    table_values,
)
from ._fixed_point import IterationSettings, solve_fixed_point, warn_not_converged
from ._identifiability import identifiability_diagnostics
from ._iterative import _history_frame, _print_progress
from ._nnls import nnls_from_r, scores_from_sums
from ._schema import EXPOSURE_COLUMNS, column
from ._step_count import solve_step_counts
from ._units import unit_from_totals
from ._validation import phase_layout
from .fleet import fleet_time_resolution, whole_instances

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
    """Validate the parameters and the columns of a Dask phase table (``fit``).

    The rows are validated partition by partition in ``transform``; here the
    column rule of :func:`~sklearn_beta._validation.phase_layout` runs on a
    stand-in with one prefill and one decode row (a partition may hold both).
    """
    transformer._validate_params()
    columns = transformer._columns()
    stand_in = pd.DataFrame({name: [None, None] for name in X.columns})
    if columns.phase_type in stand_in.columns:
        stand_in[columns.phase_type] = ["prefill", "decode"]
    phase_layout(stand_in, columns, transformer._need_tokens())
    transformer.feature_names_in_ = np.asarray(X.columns, dtype=object)
    transformer.n_features_in_ = len(transformer.feature_names_in_)


def transform_partitions(transformer, X):
    """The exposure table of a Dask phase table, one partition per partition."""
    check_is_fitted(transformer)
    instance_id = transformer._columns().instance_id
    X = whole_instances(X, instance_id if instance_id in X.columns else None)
    if transformer.time_resolution == "auto":
        transformer = copy.copy(transformer)
        transformer.time_resolution = fleet_time_resolution(X, transformer)
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
    estimator._check_width(len(X.columns))
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
    _warn_not_distributed(estimator)
    return estimator


def _warn_not_distributed(estimator) -> None:
    """Say which settings the distributed fit does not apply yet.

    The window-edge treatment and the confidence intervals need per-phase
    residuals gathered by time blocks; the distributed fit fits every phase
    (as ``edges="fit"``) and sets ``beta_ci_`` to None.
    """
    estimator.beta_ci_ = None
    missing = []
    if getattr(estimator, "edges", "fit") != "fit":
        missing.append(f"edges={estimator.edges!r} (every phase is fitted)")
    if getattr(estimator, "confidence_level", None) is not None:
        missing.append("confidence intervals (beta_ci_ is None)")
    if missing:
        warnings.warn(
            f"{type(estimator).__name__} on a Dask collection does not apply "
            f"{' nor '.join(missing)} yet; pass edges='fit' and "
            "confidence_level=None to silence this.",
            UserWarning,
            stacklevel=4,
        )


def _diagnostics(estimator, stats, ss_res, duration, beta, unit=1.0) -> dict:
    """``design_diagnostics`` and ``identifiability_diagnostics`` from sums.

    ``duration`` (a ``Moments``) and ``ss_res`` are in units of ``unit`` (a
    power of two, so scaling back is exact); the design is in steps and tokens.
    """
    r_design = stats["r_design"].r
    r2, rmse = scores_from_sums(ss_res, duration.m2, duration.count)
    diagnostics = diagnostics_from_sums(
        duration.count,
        (r2, rmse * unit),
        [duration.total * unit, *stats["design_sum"]],
    )
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
    stats = tables.map(baseline_block, None)
    beta = nnls_from_r(stats["r_design"].r)
    ss_res = tables.map(baseline_block, beta)["ss_res"]
    estimator.diagnostics_ = _diagnostics(
        estimator, stats, ss_res, stats["duration"], beta
    )
    return beta


class PartitionCounts:
    """The step-count problem of :func:`~sklearn_beta._step_count.solve_step_counts`
    on persisted partitions: each answer a reduction of per-partition sums."""

    def __init__(self, blocks: Partitions, start: dict):
        self.blocks = blocks
        self.start = start

    def counted_totals(self) -> tuple[int, float, float]:
        start = self.start
        return (
            start["n_weighted"],
            start["counted_duration"],
            start["counted_steps"],
        )

    def step_totals(self, beta: np.ndarray) -> tuple[float, float]:
        sums = self.blocks.map(step_totals_block, beta)
        return sums["total"], sums["target"]

    def state(self, beta: np.ndarray) -> ReducedState:
        stats = self.blocks.map(count_block, beta)
        return ReducedState(beta, stats["loss"], stats)

    def proposal(self, state: ReducedState) -> np.ndarray:
        return nnls_from_r(state.stats["r_newton"].r)

    def change_basis(self, state: ReducedState) -> np.ndarray:
        # One row with the Jacobian's column norms: all beta_change reads.
        return np.sqrt(state.stats["jac_sumsq"])[None, :]

    def duration_fit(self, state: ReducedState) -> tuple[float, float]:
        moments = self.start["duration"]
        return scores_from_sums(state.stats["ss_res"], moments.m2, moments.count)


@dataclass(frozen=True)
class ReducedState:
    """A problem's state at ``beta``, as the reduced statistics of the partitions."""

    beta: np.ndarray
    loss: float
    stats: dict


class PartitionDurations:
    """The fixed-point problem of :func:`~sklearn_beta._fixed_point.solve_fixed_point`
    on persisted partitions; the lagged passes stay on the workers, chained."""

    def __init__(self, blocks: Partitions, start: dict, correction_mode: str):
        self.blocks = blocks
        self.start = start
        self.correction_mode = correction_mode
        self.states = None

    def reweighted(self, beta: np.ndarray) -> dict:
        if self.states is None:
            self.states = self.blocks.derive(
                reweight_block, None, beta, self.correction_mode
            )
        else:
            self.states = self.blocks.derive(
                reweight_block, beta, self.correction_mode, states=self.states
            )
        return self.blocks.map(duration_block, states=self.states)

    def fit(self, stats: dict) -> np.ndarray:
        return nnls_from_r(stats["r_design"].r)

    def change_basis(self, stats: dict) -> np.ndarray:
        # One row with the design's column norms: all beta_change reads.
        return np.sqrt(stats["design_sumsq"])[None, :]

    def residual_sum(self, beta: np.ndarray) -> float:
        return self.blocks.map(score_block, beta, states=self.states)["ss_res"]

    def scores(self, stats: dict, beta: np.ndarray) -> tuple[float, float]:
        moments = self.start["duration"]
        return scores_from_sums(self.residual_sum(beta), moments.m2, moments.count)


def _fit_iterative(estimator, tables: Partitions) -> np.ndarray:
    """``IterativeBetaRegressor._fit_timeline`` on partitions: the same loops."""
    unit = 1.0
    if estimator.stopping == "relative":
        sums = tables.map(scale_sums_block)
        unit = unit_from_totals(sums["n_steps"], sums["duration"], sums["count"])
    estimator.time_scale_ = unit
    blocks = tables.derive(
        build_block, unit, estimator.correction_mode, estimator.init_correction_mode
    )
    # Nothing reads the exposure table after the blocks: release it, so that
    # each partition is freed once its block is built (a lost worker's
    # blocks are rebuilt from the table's lineage).
    tables.items.clear()
    start = blocks.map(start_block)
    beta_init = nnls_from_r(start["r_init"].r)
    settings = IterationSettings(
        estimator.correction_mode,
        estimator.max_iter,
        estimator.tol,
        estimator.damping,
        estimator.stopping,
    )
    callback = partial(_print_progress, unit=unit) if estimator.verbose else None
    if estimator.objective == "step_count":
        beta, converged, n_iter, state, history = solve_step_counts(
            PartitionCounts(blocks, start), beta_init, settings, callback
        )
        final, ss_res = state.stats, state.stats["ss_res"]
    else:
        problem = PartitionDurations(blocks, start, estimator.correction_mode)
        beta, converged, n_iter, final, history = solve_fixed_point(
            problem, beta_init, settings, callback
        )
        ss_res = problem.residual_sum(beta)
    if not converged:
        caller = type(estimator).__name__
        warn_not_converged(caller, settings, history[-1]["step"], stacklevel=6)
    estimator.n_iter_ = n_iter
    estimator.converged_ = converged
    estimator.history_ = _history_frame(history, unit)
    beta = beta * unit
    diagnostics = _diagnostics(
        estimator,
        {**final, "shape": start["shape"]},
        ss_res,
        start["duration"],
        beta,
        unit,
    )
    # The reference reports the last iteration's fit, as the history does.
    last = estimator.history_.iloc[-1]
    diagnostics.update(r2=last["r2"], rmse_seconds=last["rmse_seconds"])
    estimator.diagnostics_ = diagnostics
    return beta


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
    duration = column(table_values(part), "duration")
    residual = duration - estimator.predict(part)
    return {"ss_res": float(residual @ residual), "duration": Moments.of(duration)}
