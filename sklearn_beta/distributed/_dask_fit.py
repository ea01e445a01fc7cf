"""The estimators on a Dask DataFrame: partitions on the workers, sums on the client.

Every partition must hold whole engine instances (the transformer
repartitions when they do not, see :mod:`sklearn_beta.fleet`). The exposure
table is persisted, each partition's timeline is built once where it lives
and kept there, and each iteration sends the betas out and brings back only
the statistics of :mod:`sklearn_beta.distributed._blocks` (R factors of at
most 4 x 4, column sums, a loss). The phase table never reaches the client.

The fit is the in-memory fit's orchestration
(:func:`~sklearn_beta.estimators._fit.fit_baseline`,
:func:`~sklearn_beta.estimators._fit.fit_iterative`) on a
:class:`PartitionSource`, and the solver loops are the in-memory fit's own:
:func:`~sklearn_beta.core._step_count.solve_step_counts` (``initial_scale``,
Gauss-Newton steps with step halving) and
:func:`~sklearn_beta.core._fixed_point.solve_fixed_point` (the lagged
re-weighting of the duration objective) run on the problems of
:mod:`sklearn_beta.distributed._partition_problems`, which answer each of the
loop's questions with one reduction of per-partition sums, where the pandas
fit asks one in-memory timeline: the betas agree with the pandas fit of the
same rows to rounding. So do the intervals
(:mod:`sklearn_beta.distributed._trust`) and the window-edge treatment
(:mod:`sklearn_beta.distributed._edges`).

Works with the active ``distributed.Client`` (or, without one, Dask's local
scheduler). A worker lost between iterations costs a recomputation: the
persisted partitions are rebuilt from their lineage (the source partitions,
then the chain of lagged passes) and the fit goes on with the same numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from ..core._columns import PhaseColumns
from ..core._fixed_point import solve_fixed_point
from ..core._nnls import nnls_from_r, scores_from_sums
from ..core._schema import EXPOSURE_COLUMNS, column
from ..core._step_count import solve_step_counts
from ..core._step_features import PUBLISHED_FEATURES
from ..core._trained_physics import identifiable_map_of
from ..core._validation import phase_layout
from ..estimators._baseline import diagnostics_from_sums
from ..estimators._fit import (
    FitSettings,
    Solution,
    coef_columns,
    intervals_of_sums,
    nan_intervals,
)
from ..estimators._iterative import check_table_settings
from ..trust._edges import fit_with_edge_context
from ..trust._identifiability import (
    BETA_NAMES,
    at_zero_bound,
    identifiability_diagnostics,
)
from ..trust._what_if import findings_of_split, split_from_sums
from ..trust._window_fit import edge_test_settings
from ._blocks import (
    Moments,
    baseline_block,
    build_block,
    combine_stats,
    reduced_table_settings,
    scale_sums_block,
    start_block,
    step_model_block,
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

#: History columns of a step model's per-step overhead (initial_scale).
_OVERHEADS = ("beta_steps", "beta_per_step")

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
        import dask  # optional dependency: the dask extra

        tasks = self._tasks(fn, args, states)
        return Partitions(list(_run(dask.persist, tasks)))

    def map(self, fn, *args, states: Partitions | None = None) -> dict:
        """Compute ``fn(item[, state], *args)`` everywhere and reduce the results."""
        import dask  # optional dependency: the dask extra

        return combine_stats(list(_run(dask.compute, self._tasks(fn, args, states))))

    def _tasks(self, fn, args, states):
        import dask  # optional dependency: the dask extra

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


def check_phase_partitions(X, columns: PhaseColumns, need_tokens: bool) -> None:
    """Check the columns of a Dask phase table (the transformer's ``fit``).

    The rows are validated partition by partition in ``transform``; here the
    column rule of :func:`~sklearn_beta.core._validation.phase_layout` runs
    on a stand-in with one prefill and one decode row (a partition may hold
    both).
    """
    stand_in = pd.DataFrame({name: [None, None] for name in X.columns})
    if columns.phase_type in stand_in.columns:
        stand_in[columns.phase_type] = ["prefill", "decode"]
    phase_layout(stand_in, columns, need_tokens)


def transform_partitions(
    transformer, X, columns: PhaseColumns, need_tokens: bool, chunk: int
):
    """The exposure table of a Dask phase table, one partition per partition.

    Each partition is the fitted ``transformer``'s ``transform`` of it;
    ``columns``, ``need_tokens`` and ``chunk`` (the most prompt tokens of a
    step) are the transformer's. Its ``instance_id`` codes are the whole
    fleet's (the sorted instance ids, as in memory), not each partition's
    own: the table is the pandas transform's, row by row.
    """
    check_is_fitted(transformer)
    instance_id = columns.instance_id
    names = None
    if instance_id in X.columns:
        distinct = partition_instances(X, instance_id)
        X = whole_instances(X, instance_id, distinct)
        names = instance_index(distinct)
    else:
        X = whole_instances(X, None)
    if transformer.get_params()["time_resolution"] == "auto":
        resolution = fleet_time_resolution(X, columns, need_tokens, chunk)
        transformer = copy.copy(transformer).set_params(time_resolution=resolution)
    # a step model's table has more columns than the published twelve
    columns = list(transformer.get_feature_names_out())
    meta = pd.DataFrame(
        {name: pd.Series(dtype=np.float64) for name in columns},
        index=X._meta.index,
    )
    return X.map_partitions(
        _transform_part, transformer, instance_id, names, columns, meta=meta
    )


def _transform_part(
    part: pd.DataFrame,
    transformer,
    instance_id: str,
    names: pd.Index | None,
    columns: list,
) -> pd.DataFrame:
    if len(part) == 0:
        return pd.DataFrame(
            np.empty((0, len(columns))), columns=columns, index=part.index
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


def partition_exposures(X, y=None, sample_weight=None) -> PartitionSource:
    """The data source of a Dask exposure table (the regressors' ``fit``)."""
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None:
            raise TypeError(_NOT_COLLECTED.format(name=name))
    n_columns = len(X.columns)
    if n_columns <= EXPOSURE_COLUMNS.index("duration"):
        # In memory y gives the durations of a design-only table; here they
        # can only be the table's own column.
        raise ValueError(
            "On a Dask DataFrame the durations are the exposure table's "
            f"'duration' column (column {EXPOSURE_COLUMNS.index('duration')}); "
            f"the table has {n_columns} columns {list(X.columns)}. Fit on "
            "PhaseExposureTransformer's output, or at least on its columns "
            f"{list(EXPOSURE_COLUMNS[:4])}."
        )
    return PartitionSource(X)


@dataclass
class _Reduced:
    """What a solved fit on partitions keeps for its diagnostics and intervals."""

    stats: dict
    ss_res: float
    duration: Moments
    findings: list = field(default_factory=list)
    weighted_r: np.ndarray | None = None
    trust: tuple | None = None
    baseline: bool = False


class PartitionSource:
    """A Dask exposure table, for :mod:`~sklearn_beta.estimators._fit`.

    Every question of the fit is answered by a reduction of per-partition
    sums: the table is persisted on first use and each partition's timeline
    is built once where it lives.
    """

    def __init__(self, X):
        self.columns = list(X.columns)
        self._frame = X
        self._tables = None
        self._model = None

    def step_model(self) -> tuple[tuple, np.ndarray | None]:
        """The table's step model and trained-physics basis (None: none), as
        :func:`~sklearn_beta.core._schema.step_model_of` reads them in memory;
        asked before the fit."""
        if self._model is None:
            model = self._persisted().map(step_model_block)["model"]
            basis = None
            if model.constants is not None:
                basis = identifiable_map_of(*model.constants)
            self._model = (model.features, basis)
        return self._model

    def _persisted(self) -> Partitions:
        if self._tables is None:
            self._tables = Partitions.of(self._frame.persist())
        return self._tables

    def baseline(self) -> Solution:
        tables = self._persisted()
        stats = tables.map(baseline_block, None)
        beta = nnls_from_r(stats["r_design"].r)
        ss_res = tables.map(baseline_block, beta)["ss_res"]
        return Solution(
            beta, state=_Reduced(stats, ss_res, stats["duration"], baseline=True)
        )

    def scale_totals(self) -> tuple[float, float, int]:
        sums = self._persisted().map(scale_sums_block)
        return sums["n_steps"], sums["duration"], sums["count"]

    def solve(self, unit: float, settings: FitSettings, callback) -> Solution:
        """The in-memory fit's loops and settings on the partitions."""
        published = self.step_model()[0] == PUBLISHED_FEATURES
        if not published:
            _check_feature_settings(settings)
        tables = self._persisted()
        blocks = tables.derive(
            build_block, unit, settings.correction_mode, settings.init_correction_mode
        )
        # Nothing reads the exposure table after the blocks: release it, so that
        # each partition is freed once its block is built (a lost worker's
        # blocks are rebuilt from the table's lineage).
        tables.items.clear()
        start = blocks.map(start_block)
        if published:  # as in memory: a step model's table is not checked
            _check_table_settings(start, settings)
        beta_init = nnls_from_r(start["r_init"].r)
        columns = None if published else coef_columns(settings.coef_names)
        trust, findings, report, weighted_r = None, [], None, None
        if settings.objective == "step_count":
            result, report = _fit_window(
                settings, blocks, start, beta_init, callback, columns
            )
            beta, converged, n_iter, state, history, fitted, fitted_start = result
            final, ss_res = state.stats, state.stats["ss_res"]
            # One pass at the solution: the intervals' sums, the typical step and
            # (with edge context left out) the weighted design.
            trust = solution_sums(
                settings.confidence_level, fitted, count_solution, beta * unit, unit
            )
            weighted = trust[0]["weighted_design"]
            findings = _noise_limited(
                state, fitted_start, weighted, settings.coef_names
            )
            weighted_r = trust[0].get("r_weighted_design")
            weighted_r = None if weighted_r is None else weighted_r.r
        else:
            problem = PartitionDurations(
                blocks, start, settings.correction_mode, columns
            )
            beta, converged, n_iter, final, history = solve_fixed_point(
                problem, beta_init, settings.iteration, callback
            )
            ss_res = problem.residual_sum(beta)
            if settings.confidence_level is not None:
                trust = solution_sums(
                    settings.confidence_level,
                    blocks,
                    duration_solution,
                    beta * unit,
                    unit,
                    problem.states,
                )
        stats = {**final, "shape": start["shape"]}
        reduced = _Reduced(
            stats, ss_res, start["duration"], findings, weighted_r, trust
        )
        return Solution(beta, converged, n_iter, history, report, reduced)

    def diagnostics(self, solution, beta, unit, settings) -> dict:
        """``design_diagnostics`` and ``identifiability_diagnostics`` from sums.

        The durations and ``ss_res`` are in units of ``unit`` (a power of
        two, so scaling back is exact); the design is in steps and tokens.
        The findings are the step-count fit's noise-limited coefficients;
        ``weighted_r`` the R factor of the fit's phase-weighted ``[design,
        duration]`` (edge context left out), which the collinearity checks
        read, as the pandas fit reads its weighted design.
        """
        reduced = solution.state
        stats, duration = reduced.stats, reduced.duration
        names = settings.coef_names
        k = len(names)
        r_design = stats["r_design"].r
        r2, rmse = scores_from_sums(reduced.ss_res, duration.m2, duration.count)
        diagnostics = diagnostics_from_sums(
            duration.count,
            (r2, rmse * unit),
            [duration.total * unit, *stats["design_sum"]],
            None if names == BETA_NAMES else names,
        )
        # Only the design's Gram matrix and the durations' norm enter: the R
        # factor of [design, duration] carries both.
        norm = np.linalg.norm(r_design[:, k]) * unit
        checked = r_design if reduced.weighted_r is None else reduced.weighted_r
        diagnostics.update(
            identifiability_diagnostics(
                checked[:, :k],
                np.array([np.linalg.norm(checked[:, k]) * unit]),
                beta,
                stats["shape"],
                estimator=settings.caller,
                extra_findings=list(reduced.findings),
                names=names,
            )
        )
        # The zero bound reads the unweighted fit, as in memory.
        diagnostics["at_zero_bound"] = at_zero_bound(
            r_design[:, :k], np.array([norm]), beta, names=names
        )
        return diagnostics

    def intervals(self, solution, beta, unit, diagnostics, settings):
        """``beta_ci_`` from the sums at the solution (None without them)."""
        reduced = solution.state
        if settings.confidence_level is None:
            return None
        if reduced.baseline:
            if len(self.columns) < len(EXPOSURE_COLUMNS):
                # Without the phase windows there are no time blocks: NaN, as
                # in memory.
                return nan_intervals(settings)
            reduced.trust = solution_sums(
                settings.confidence_level, self._persisted(), baseline_solution, beta
            )
        sums, n_lags = reduced.trust
        return intervals_of_sums(
            beta, sums["sandwich"], n_lags, diagnostics, settings, unit
        )


def _check_table_settings(start: dict, settings: FitSettings) -> None:
    """``check_table_settings`` of the partitions' reduced table settings."""
    check_table_settings(
        reduced_table_settings(start),
        name=settings.estimator,
        objective=settings.objective,
        correction_mode=settings.correction_mode,
        init_correction_mode=settings.init_correction_mode,
    )


def _check_feature_settings(settings: FitSettings) -> None:
    """What the in-memory fit of a step model refuses."""
    if settings.init_correction_mode is not None:
        raise ValueError(
            f"{settings.estimator}(init_correction_mode=...) recomputes a "
            "published design; under a step model the start is the table's "
            "exposures: set init_correction_mode=None."
        )


def _fit_window(settings, blocks, start, beta_init, callback, columns=None):
    """The step-count fit, with the window-edge treatment of ``edges="auto"``
    (:func:`~sklearn_beta.trust._edges.fit_with_edge_context` on
    :class:`~sklearn_beta.distributed._edges.PartitionEdges`).

    Returns ``(result, report)``: ``solve_step_counts``'s result followed by
    the chosen fit's blocks and starting sums, and the edge report (None
    with ``edges="fit"``).
    """
    window = PartitionEdges(blocks) if settings.edges == "auto" else None

    def fit(kind, beta_from, final):
        weighted, counted = (blocks, None) if window is None else window.weighted(kind)
        totals = start if counted is None else {**start, **counted}
        chosen = settings.iteration if final else edge_test_settings(settings.iteration)
        overhead = 0
        if columns is not None:  # a step model's per-step overhead, if any
            steps = [k for k, c in enumerate(columns) if c in _OVERHEADS]
            overhead = steps[0] if steps else None
        solved = solve_step_counts(
            PartitionCounts(weighted, totals, columns, overhead),
            beta_init if beta_from is None else beta_from,
            chosen,
            callback,
        )
        return (*solved, weighted, totals)

    if window is None:
        return fit("all", None, True), None
    result, report, _ = fit_with_edge_context(window, fit)
    return result, report


def _noise_limited(
    state: ReducedState, start: dict, weighted_design, names=BETA_NAMES
) -> list:
    """``_what_if.noise_limited_findings`` of the step-count fit, from sums."""
    r = state.stats["r_newton"].r[:, :-1]
    typical = weighted_design / max(float(weighted_design[0]), 1e-300)
    split = split_from_sums(
        r.T @ r, state.loss, start["n_weighted"], state.beta, typical
    )
    return findings_of_split(split, typical, names)


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
