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
re-weighting of the duration objective) run on the problems of
:mod:`sklearn_beta._partition_problems`, which answer each of the loop's
questions with one reduction of per-partition sums, where the pandas fit asks one
in-memory timeline: the betas agree with the pandas fit of the same rows to
rounding. So do the intervals (:mod:`sklearn_beta._distributed_trust`) and
the window-edge treatment (:mod:`sklearn_beta._distributed_edges`).

Works with the active ``distributed.Client`` (or, without one, Dask's local
scheduler). A worker lost between iterations costs a recomputation: the
persisted partitions are rebuilt from their lineage (the source partitions,
then the chain of lagged passes) and the fit goes on with the same numbers.
"""

from __future__ import annotations

import copy

import dask
import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from ..core._fixed_point import solve_fixed_point
from ..core._nnls import nnls_from_r, scores_from_sums
from ..core._schema import EXPOSURE_COLUMNS, column
from ..core._step_count import solve_step_counts
from ..core._validation import phase_layout
from ..estimators._baseline import BaselineBetaRegressor, diagnostics_from_sums
from ..estimators._iterative import _print_progress
from ..trust._edges import fit_with_edge_context
from ..trust._identifiability import at_zero_bound, identifiability_diagnostics
from ..trust._what_if import findings_of_split, split_from_sums
from ..trust._window_fit import edge_test_settings
from ._blocks import (
    Moments,
    baseline_block,
    build_block,
    combine_stats,
    scale_sums_block,
    start_block,
    table_values,
)
from ._edges import PartitionEdges
from ._fleet import (
    fleet_time_resolution,
    instance_index,
    partition_instances,
    whole_instances,
)
from ._partition_problems import PartitionCounts, PartitionDurations, ReducedState
from ._trust import (
    baseline_solution,
    count_solution,
    duration_solution,
    solution_sums,
)

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
    """The exposure table of a Dask phase table, one partition per partition.

    Its ``instance_id`` codes are the whole fleet's (the sorted instance ids,
    as in memory), not each partition's own: the table is the pandas
    transform's, row by row.
    """
    check_is_fitted(transformer)
    instance_id = transformer._columns().instance_id
    names = None
    if instance_id in X.columns:
        distinct = partition_instances(X, instance_id)
        X = whole_instances(X, instance_id, distinct)
        names = instance_index(distinct)
    else:
        X = whole_instances(X, None)
    if transformer.time_resolution == "auto":
        transformer = copy.copy(transformer)
        transformer.time_resolution = fleet_time_resolution(X, transformer)
    meta = pd.DataFrame(
        {name: pd.Series(dtype=np.float64) for name in EXPOSURE_COLUMNS},
        index=X._meta.index,
    )
    return X.map_partitions(_transform_part, transformer, instance_id, names, meta=meta)


def _transform_part(
    part: pd.DataFrame, transformer, instance_id: str, names: pd.Index | None
) -> pd.DataFrame:
    if len(part) == 0:
        return pd.DataFrame(
            np.empty((0, len(EXPOSURE_COLUMNS))),
            columns=list(EXPOSURE_COLUMNS),
            index=part.index,
        )
    table = transformer.transform(part)
    if names is not None:
        # The partition's codes index its own sorted ids; map them to the
        # fleet's (a monotone map: every per-instance order is kept).
        local = pd.factorize(part[instance_id], sort=True)[1]
        codes = table["instance_id"].to_numpy(dtype=np.intp)
        table["instance_id"] = names.get_indexer(local)[codes].astype(np.float64)
    return table


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
    # One frame deeper than the in-memory fit: fit dispatched here.
    return estimator._set_betas(beta, stacklevel=7)


def _diagnostics(
    estimator, stats, ss_res, duration, beta, unit=1.0, findings=(), weighted_r=None
) -> dict:
    """``design_diagnostics`` and ``identifiability_diagnostics`` from sums.

    ``duration`` (a ``Moments``) and ``ss_res`` are in units of ``unit`` (a
    power of two, so scaling back is exact); the design is in steps and tokens.
    ``findings`` are the step-count fit's noise-limited coefficients;
    ``weighted_r`` the R factor of the fit's phase-weighted ``[design,
    duration]`` (edge context left out), which the collinearity checks read,
    as the pandas fit reads its weighted design.
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
    checked = r_design if weighted_r is None else weighted_r
    diagnostics.update(
        identifiability_diagnostics(
            checked[:, :3],
            np.array([np.linalg.norm(checked[:, 3]) * unit]),
            beta,
            stats["shape"],
            estimator=type(estimator).__name__,
            stacklevel=6,
            extra_findings=list(findings),
        )
    )
    # The zero bound reads the unweighted fit, as in memory.
    diagnostics["at_zero_bound"] = at_zero_bound(
        r_design[:, :3], np.array([norm]), beta
    )
    return diagnostics


def _fit_baseline(estimator, tables: Partitions) -> np.ndarray:
    stats = tables.map(baseline_block, None)
    beta = nnls_from_r(stats["r_design"].r)
    ss_res = tables.map(baseline_block, beta)["ss_res"]
    estimator.diagnostics_ = _diagnostics(
        estimator, stats, ss_res, stats["duration"], beta
    )
    if estimator.n_features_in_ < len(EXPOSURE_COLUMNS):
        # Without the phase windows there are no time blocks: NaN, as in memory.
        estimator.beta_ci_ = estimator._beta_intervals(None, beta, None, None, None)
    else:
        trust = None
        if estimator.confidence_level is not None:
            trust = solution_sums(estimator, tables, baseline_solution, beta)
        estimator.beta_ci_ = _intervals(estimator, trust, beta)
    return beta


def _fit_iterative(estimator, tables: Partitions) -> np.ndarray:
    """``IterativeBetaRegressor._fit_timeline`` on partitions: the same loops
    and the same settings, unit, history and warnings (the estimator's own
    helpers); the diagnostics and intervals from reduced sums."""
    unit = estimator._set_time_unit(lambda: _scale_totals(tables))
    blocks = tables.derive(
        build_block, unit, estimator.correction_mode, estimator.init_correction_mode
    )
    # Nothing reads the exposure table after the blocks: release it, so that
    # each partition is freed once its block is built (a lost worker's
    # blocks are rebuilt from the table's lineage).
    tables.items.clear()
    start = blocks.map(start_block)
    beta_init = nnls_from_r(start["r_init"].r)
    settings = estimator._settings()
    # Looked up here, not bound at import: benchmarks and tests hook it.
    callback = estimator._progress(unit, _print_progress)
    trust, findings, report, weighted_r = None, [], None, None
    if estimator.objective == "step_count":
        result, report = _fit_window(
            estimator, blocks, start, beta_init, settings, callback
        )
        beta, converged, n_iter, state, history, fitted, fitted_start = result
        final, ss_res = state.stats, state.stats["ss_res"]
        # One pass at the solution: the intervals' sums, the typical step and
        # (with edge context left out) the weighted design.
        trust = solution_sums(estimator, fitted, count_solution, beta * unit, unit)
        findings = _noise_limited(state, fitted_start, trust[0]["weighted_design"])
        weighted_r = trust[0].get("r_weighted_design")
        weighted_r = None if weighted_r is None else weighted_r.r
    else:
        problem = PartitionDurations(blocks, start, estimator.correction_mode)
        beta, converged, n_iter, final, history = solve_fixed_point(
            problem, beta_init, settings, callback
        )
        ss_res = problem.residual_sum(beta)
        if estimator.confidence_level is not None:
            trust = solution_sums(
                estimator, blocks, duration_solution, beta * unit, unit, problem.states
            )
    estimator._record_iterations(
        (converged, n_iter, history),
        unit,
        settings,
        caller=type(estimator).__name__,
        stacklevel=7,
    )
    beta = beta * unit
    stats = {**final, "shape": start["shape"]}
    duration = start["duration"]
    diagnostics = _diagnostics(
        estimator, stats, ss_res, duration, beta, unit, findings, weighted_r
    )
    if report is not None:
        diagnostics["edges"] = report.as_dict()
    estimator.diagnostics_ = estimator._last_fit(diagnostics)
    estimator.beta_ci_ = _intervals(estimator, trust, beta, unit)
    return beta


def _fit_window(estimator, blocks, start, beta_init, settings, callback):
    """The step-count fit, with the window-edge treatment of ``edges="auto"``
    (:func:`~sklearn_beta._edges.fit_with_edge_context` on
    :class:`~sklearn_beta._distributed_edges.PartitionEdges`).

    Returns ``(result, report)``: ``solve_step_counts``'s result followed by
    the chosen fit's blocks and starting sums, and the edge report (None
    with ``edges="fit"``).
    """
    window = PartitionEdges(blocks) if estimator.edges == "auto" else None

    def fit(kind, beta_from, final):
        weighted, counted = (blocks, None) if window is None else window.weighted(kind)
        totals = start if counted is None else {**start, **counted}
        chosen = settings if final else edge_test_settings(settings)
        solved = solve_step_counts(
            PartitionCounts(weighted, totals),
            beta_init if beta_from is None else beta_from,
            chosen,
            callback,
        )
        return (*solved, weighted, totals)

    if window is None:
        return fit("all", None, True), None
    result, report, _ = fit_with_edge_context(window, fit, stacklevel=7)
    return result, report


def _noise_limited(state: ReducedState, start: dict, weighted_design) -> list:
    """``_what_if.noise_limited_findings`` of the step-count fit, from sums."""
    r = state.stats["r_newton"].r[:, :3]
    typical = weighted_design / max(float(weighted_design[0]), 1e-300)
    split = split_from_sums(
        r.T @ r, state.loss, start["n_weighted"], state.beta, typical
    )
    return findings_of_split(split, typical)


def _intervals(estimator, trust, beta: np.ndarray, unit: float = 1.0):
    """``beta_ci_`` from :func:`solution_sums`'s result (None without one)."""
    if trust is None or estimator.confidence_level is None:
        return None
    sums, n_lags = trust
    return estimator._intervals_from_sums(beta, sums["sandwich"], n_lags, unit)


def _scale_totals(tables: Partitions) -> tuple[float, float, int]:
    sums = tables.map(scale_sums_block)
    return sums["n_steps"], sums["duration"], sums["count"]


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
