"""Partition-wise statistics of the estimators and their reductions.

A fleet trace split into partitions that each hold whole engine instances is
a set of independent timelines: the grid, the pressures and every phase
integral of an instance only involve that instance. What couples the
partitions is the fit: every least-squares solve, loss, stopping rule and
score is a sum over phases. This module holds the partition half as plain
numpy: block functions (``*_block``), run where a partition lives, turn one
exposure-table block and the current betas into a few small statistics (the
R factor of ``[design, target]``, at most 4 x 4; column sums; a loss), and
:func:`combine_stats` reduces them on the client.

The R factor of a stack of R factors is the R factor of the stacked blocks
(tall-skinny QR), so :func:`~sklearn_beta.core._nnls.nnls_from_r` solves the same
least-squares problem as :func:`~sklearn_beta.core._nnls.nnls_fit` on the whole
design. Each block computes with the in-memory objects of the pandas fit
(:class:`~sklearn_beta.core._step_count.TimelineCounts`, ``reweighted_design``).
No dask here: see :mod:`sklearn_beta.distributed._dask_fit` for the scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from functools import partial, reduce

import numpy as np
import pandas as pd
from sklearn.utils import check_array

from ..core._corrections import FIXED_CORRECTION_MODES
from ..core._fixed_point import reweighted_design
from ..core._grid import Timeline
from ..core._nnls import check_finite_design
from ..core._schema import (
    column,
    design_columns,
    fit_design,
    read_timeline,
    request_prompts_of,
    step_basis_of,
    step_model_of,
)
from ..core._step_count import TimelineCounts, newton_target
from ..core._step_features import PUBLISHED_FEATURES
from ..core._trained_physics import IDENTIFIABLE_FEATURES
from ..core._units import rescaled_timeline
from ..estimators._baseline import _timeline_if_available
from ..estimators._exposure import baseline_exposures
from ..estimators._feature_source import feature_problem
from ..estimators._iterative import (
    TableSettings,
    floored_densities,
    table_correction_mode,
)
from ..trust._identifiability import trace_shape

# --- Reductions ---------------------------------------------------------------


@dataclass(frozen=True)
class RFactor:
    """Upper-triangular R of a tall matrix ``M = QR`` (shape (min(n, k), k)).

    ``M'M = R'R``: column norms, singular values and least-squares solutions
    of ``M`` can all be read off ``R``.
    """

    r: np.ndarray

    @classmethod
    def of(cls, *columns: np.ndarray) -> RFactor:
        matrix = np.column_stack(columns)
        if matrix.shape[0] == 0:
            return cls(np.zeros((0, matrix.shape[1])))
        return cls(np.linalg.qr(matrix, mode="r"))

    def combine(self, other: RFactor) -> RFactor:
        return RFactor.of(*np.vstack([self.r, other.r]).T)


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squared deviations, combined by Chan's rule.

    Pairwise combination keeps the spread exact where ``sum(x**2) -
    n mean**2`` would cancel.
    """

    count: float
    total: float
    m2: float

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        if values.shape[0] == 0:
            return cls(0.0, 0.0, 0.0)
        total = float(np.sum(values))
        mean = total / values.shape[0]
        return cls(float(values.shape[0]), total, float(np.sum((values - mean) ** 2)))

    def combine(self, other: Moments) -> Moments:
        count = self.count + other.count
        if self.count == 0 or other.count == 0:
            return self if other.count == 0 else other
        delta = other.total / other.count - self.total / self.count
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / count
        return Moments(count, self.total + other.total, m2)


def _combine(a, b):
    if a is None or b is None:
        return None
    if hasattr(a, "combine"):
        return a.combine(b)
    return a + b


def combine_stats(stats: list[dict | None]) -> dict:
    """Reduce the blocks' statistics key by key (sum, or ``combine``).

    Empty partitions return None and are skipped.
    """
    stats = [s for s in stats if s is not None]
    if not stats:
        raise ValueError("The trace is empty: every partition has zero phases.")
    return {key: reduce(_combine, [s[key] for s in stats]) for key in stats[0]}


# --- Blocks -----------------------------------------------------------------


def table_values(block: pd.DataFrame) -> np.ndarray:
    """An exposure-table block as a finite float64 array."""
    return check_array(block.to_numpy(), dtype=np.float64, ensure_min_samples=0)


def scale_sums_block(block: pd.DataFrame) -> dict | None:
    """Sums behind the fit's time unit (``unit_from_totals``): steps, durations."""
    if len(block) == 0:
        return None
    values = table_values(block)
    return {
        "n_steps": float(np.sum(column(values, "n_steps"))),
        "duration": float(np.sum(column(values, "duration"))),
        "count": values.shape[0],
    }


@dataclass(frozen=True)
class Block:
    """One partition's trace, in the fit's time unit, kept on a worker.

    ``counts`` is the pandas fit's step-count problem of the partition (its
    timeline, fixed correction and weights); ``start`` the partition's
    statistics of the starting point (:func:`start_block`), computed while
    the exposure table was at hand. Every array is the block's own (no view
    of the table, which the fit releases as the blocks are built), the grid
    indexes are int32 and the instance codes the narrowest unsigned type
    that holds them: exact, and 52 bytes per phase on a heavily loaded
    engine (docs/scale.md).
    """

    counts: TimelineCounts
    start: dict
    #: A step model's duration problem (None: the published model's, whose
    #: lagged passes are :class:`DurationState`); its count problem is
    #: ``counts`` (:mod:`sklearn_beta.core._feature_fixed_point`).
    durations: object = None
    #: A step model's count problem under given phase weights, made afresh
    #: (``factory(weight)``; None: the published model's).
    factory: object = None

    @property
    def timeline(self):
        return self.counts.timeline

    def __sizeof__(self) -> int:
        # Dask's memory manager sizes unknown objects by sys.getsizeof: count
        # the arrays, so that it spills and pauses on the true footprint.
        counts = self.counts
        return object.__sizeof__(self) + _array_bytes(
            counts.timeline, counts.timeline.trace_grid, counts.weight, counts.fixed
        )


def _array_bytes(*objects) -> int:
    """Bytes of the arrays among ``objects`` and their dataclass fields."""
    total = 0
    for obj in objects:
        values = (
            [getattr(obj, f.name) for f in fields(obj)] if is_dataclass(obj) else [obj]
        )
        total += sum(v.nbytes for v in values if isinstance(v, np.ndarray))
    return total


def _own(values: np.ndarray) -> np.ndarray:
    """``values``, copied if it is a view (of the exposure table)."""
    return values if values.base is None else values.copy()


def lean_timeline(timeline: Timeline) -> Timeline:
    """The same timeline in less memory, to be kept on a worker for the fit.

    Arrays that view the exposure table are copied, so that releasing the
    table frees it; grid indexes become int32 (below 2**31 grid points) and
    instance codes the narrowest unsigned type that holds them. They only
    index, are compared and are counted: every result is unchanged. Times,
    counts and pressures stay float64, since they enter the arithmetic.
    """
    tg = timeline.trace_grid
    index = np.int32 if tg.grid.shape[0] <= np.iinfo(np.int32).max else np.intp
    codes = np.min_scalar_type(int(tg.grid_instance.max()))
    grid = replace(
        tg,
        grid_instance=tg.grid_instance.astype(codes),
        start_idx=tg.start_idx.astype(index),
        end_idx=tg.end_idx.astype(index),
    )
    return replace(
        timeline,
        trace_grid=grid,
        n_steps=_own(timeline.n_steps),
        duration=_own(timeline.duration),
        mu=_own(timeline.mu),
    )


def build_block(
    table: pd.DataFrame,
    unit: float,
    correction_mode: str,
    init_correction_mode: str | None,
) -> Block | None:
    """Timeline (durations from the table, times / ``unit``), its problem and
    the statistics of the starting point (``init_correction_mode``)."""
    if len(table) == 0:
        return None
    values = table_values(table)
    timeline = replace(read_timeline(values), duration=column(values, "duration"))
    scaled = lean_timeline(rescaled_timeline(timeline, unit))
    features = step_model_of(values)
    if features != PUBLISHED_FEATURES:
        return _feature_block(values, scaled, features, correction_mode)
    counts = TimelineCounts(scaled, correction_mode)
    start = _start_stats(values, counts, unit, init_correction_mode)
    start.update(table_settings_stats(values, timeline))
    return Block(counts, start)


def _feature_block(values, timeline, features, correction_mode) -> Block:
    """A step model's block: both objectives' problems, as the in-memory
    fit makes them (:func:`~sklearn_beta.estimators._feature_source.feature_problem`),
    and the start from the table's design. The in-memory fit checks no
    transformer settings of a step model's table: neither does this one."""
    design, matrix = fit_design(values)
    prompt = _own(request_prompts_of(values))
    basis = (matrix, IDENTIFIABLE_FEATURES)
    factory = partial(
        feature_problem,
        timeline,
        prompt,
        features,
        basis,
        "step_count",
        correction_mode,
    )
    counts = factory(None)
    durations = feature_problem(
        timeline, prompt, features, basis, "duration", correction_mode
    )
    n_weighted, counted_duration, counted_steps = counts.counted_totals()
    start = {
        "r_init": RFactor.of(design, timeline.duration),
        "duration": Moments.of(timeline.duration),
        "shape": None,
        "n_weighted": n_weighted,
        "counted_duration": counted_duration,
        "counted_steps": counted_steps,
        "n_floored": 0,
        "table_modes": np.zeros(len(TABLE_MODES), dtype=np.int64),
    }
    return Block(counts, start, durations, factory)


#: Placements a partition's table can show; the last slot counts tables no
#: placement reproduces.
TABLE_MODES = (*FIXED_CORRECTION_MODES, None)


def table_settings_stats(values: np.ndarray, timeline: Timeline) -> dict:
    """A partition's share of the table settings check, as sums: its floored
    phases and a one-hot count of its correction placement."""
    modes = np.zeros(len(TABLE_MODES), dtype=np.int64)
    modes[TABLE_MODES.index(table_correction_mode(values, timeline))] = 1
    return {"n_floored": int(floored_densities(values).sum()), "table_modes": modes}


def reduced_table_settings(start: dict) -> TableSettings:
    """The trace's :class:`TableSettings` from the reduced partition sums: an
    unrecognised partition makes the placement unknown (None); otherwise the
    first placement other than ``"end"`` any partition shows (a partition
    without missing prefill mass reads as ``"end"`` whatever made it)."""
    counts = start["table_modes"]
    if counts[-1]:
        mode = None
    else:
        pairs = zip(TABLE_MODES[:-1], counts[:-1], strict=True)
        shown = [m for m, c in pairs if c and m != "end"]
        mode = shown[0] if shown else "end"
    return TableSettings(int(start["n_floored"]), mode)


def _start_stats(
    values: np.ndarray,
    counts: TimelineCounts,
    unit: float,
    init_correction_mode: str | None,
) -> dict:
    """Like ``_iterative.TimelineSource.solve``: the baseline NNLS of the
    table's own design, or of the one ``init_correction_mode`` places; the
    trace's shape and weighted totals."""
    timeline = counts.timeline
    if init_correction_mode is None:
        design = design_columns(values)
    else:
        density = column(values, "step_density") * unit
        design = baseline_exposures(timeline, density, init_correction_mode)
    check_finite_design(design)
    n_weighted, counted_duration, counted_steps = counts.counted_totals()
    return {
        "r_init": RFactor.of(design, timeline.duration),
        "duration": Moments.of(timeline.duration),
        "shape": trace_shape(timeline),
        "n_weighted": n_weighted,
        "counted_duration": counted_duration,
        "counted_steps": counted_steps,
    }


def start_block(block: Block | None) -> dict | None:
    """Statistics of the starting point: the baseline NNLS and the trace's shape."""
    return None if block is None else block.start


@dataclass(frozen=True)
class SameModel:
    """A partition's step model (its features and trained-physics constants),
    reduced by checking that every partition has the same."""

    features: tuple
    constants: tuple | None

    def combine(self, other: SameModel) -> SameModel:
        if other != self:
            raise ValueError(
                "The exposure table's partitions hold different step models "
                f"({list(self.features)} and {list(other.features)}): "
                "transform the whole trace with one PhaseExposureTransformer."
            )
        return self


def step_model_block(table: pd.DataFrame) -> dict | None:
    """The step model of a partition's exposure table."""
    if len(table) == 0:
        return None
    values = table_values(table)
    return {"model": SameModel(step_model_of(values), step_basis_of(values))}


def step_totals_block(block: Block | None, beta: np.ndarray) -> dict | None:
    """Weighted step counts at ``beta`` against the known ones (``initial_scale``)."""
    if block is None:
        return None
    total, target = block.counts.step_totals(beta)
    return {"total": total, "target": target}


def design_stats(design: np.ndarray, duration: np.ndarray) -> dict:
    """The NNLS system of a design and what its diagnostics need, one block."""
    return {
        "r_design": RFactor.of(design, duration),
        "design_sum": np.array([np.sum(c) for c in design.T]),
        "design_sumsq": np.einsum("ij,ij->j", design, design),
    }


def residual_sum(design: np.ndarray, duration: np.ndarray, beta: np.ndarray) -> float:
    """``sum((l_i - design_i beta)^2)`` of one block."""
    return float(np.sum((duration - design @ beta) ** 2))


def count_block(block: Block | None, beta: np.ndarray) -> dict | None:
    """The step-count state at ``beta``: loss, Gauss-Newton system, scores."""
    if block is None:
        return None
    state = block.counts.state(beta)
    duration = block.timeline.duration
    root_w = np.sqrt(block.counts.weight)
    target = newton_target(state)
    check_finite_design(state.jac)
    return {
        "loss": state.loss,
        "r_newton": RFactor.of(state.jac * root_w[:, None], target * root_w),
        "jac_sumsq": np.einsum("ij,ij->j", state.jac, state.jac),
        "ss_res": residual_sum(state.design, duration, state.beta),
        **design_stats(state.design, duration),
    }


@dataclass(frozen=True)
class DurationState:
    """The duration objective's lagged ``p_eff`` and the design it gave."""

    p_eff: np.ndarray
    design: np.ndarray

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + _array_bytes(self)


def reweight_block(
    block: Block | None,
    state: DurationState | None,
    beta: np.ndarray,
    correction_mode: str,
) -> DurationState | None:
    """One lagged re-weighting pass of a block (``reweighted_design``)."""
    if block is None:
        return None
    if block.durations is not None:
        # A step model's problem keeps its own lagged pressures, as in memory.
        design = block.durations.reweighted(beta)
        check_finite_design(design)
        return DurationState(None, design)
    p_eff = block.timeline.p_pf_full if state is None else state.p_eff
    design, p_eff = reweighted_design(
        block.timeline, beta, p_eff, correction_mode, block.counts.fixed
    )
    check_finite_design(design)
    return DurationState(p_eff, design)


def duration_block(block: Block | None, state: DurationState | None) -> dict | None:
    """The duration NNLS system of a re-weighted block."""
    if block is None:
        return None
    return design_stats(state.design, block.timeline.duration)


def score_block(
    block: Block | None, state: DurationState | None, beta: np.ndarray
) -> dict | None:
    """Residual sum of squares of a re-weighted block's design at ``beta``."""
    if block is None:
        return None
    return {"ss_res": residual_sum(state.design, block.timeline.duration, beta)}


def baseline_block(block: pd.DataFrame, beta: np.ndarray | None) -> dict | None:
    """The baseline NNLS system (``beta=None``) or its score at ``beta``."""
    if len(block) == 0:
        return None
    values = table_values(block)
    design, duration = fit_design(values)[0], column(values, "duration")
    check_finite_design(design)
    if beta is not None:
        return {"ss_res": residual_sum(design, duration, beta)}
    timeline = _timeline_if_available(values)
    return {
        **design_stats(design, duration),
        "duration": Moments.of(duration),
        "shape": None if timeline is None else trace_shape(timeline),
    }
