"""Partition-wise statistics of the estimators and their reductions.

A fleet trace split into partitions that each hold whole engine instances is
a set of independent timelines: the grid, the pressures and every phase
integral of an instance only involve that instance. What couples the
partitions is the fit: every least-squares solve, loss, stopping rule and
score is a sum over phases. This module holds both halves as plain numpy:

* block functions (``*_block``), run where a partition lives, turn one
  exposure-table block and the current betas into a few small statistics:
  the R factor of ``[design, target]`` (at most 4 x 4), column sums, a loss;
* :func:`combine_stats` reduces those across blocks on the client, and
  :func:`nnls_from_r` solves the NNLS of the whole trace from the reduced R.

The R factor of a stack of R factors is the R factor of the stacked blocks
(tall-skinny QR), so the solve sees the same least-squares problem as
:func:`~sklearn_beta._nnls.nnls_fit` on the concatenated design, with the
accuracy of a QR rather than of normal equations. No dask here: see
:mod:`sklearn_beta._dask_fit` for the scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from sklearn.utils import check_array

from ._baseline import _timeline_if_available
from ._corrections import (
    budget_capped_mass,
    fixed_correction_mass,
    static_correction_mass,
)
from ._exposure import _COL, baseline_exposures
from ._grid import Timeline
from ._identifiability import trace_shape
from ._iterative import (
    _count_state,
    _phase_sums,
    _rescaled,
    _timeline_with_target,
    reweighted_design,
    solved_step_counts,
    step_count_weights,
)
from ._nnls import check_finite_design

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
    """Count, mean and sum of squared deviations, combined by Chan's rule.

    Pairwise combination keeps the spread exact where ``sum(x**2) -
    n mean**2`` would cancel.
    """

    count: float
    mean: float
    m2: float

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        if values.shape[0] == 0:
            return cls(0.0, 0.0, 0.0)
        mean = float(np.mean(values))
        return cls(float(values.shape[0]), mean, float(np.sum((values - mean) ** 2)))

    def combine(self, other: Moments) -> Moments:
        count = self.count + other.count
        if count == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / count
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / count
        return Moments(count, mean, m2)


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


def nnls_from_r(r_aug: RFactor) -> np.ndarray:
    """NNLS of ``min ||A beta - b||, beta >= 0`` from the R factor of ``[A b]``.

    ``||A beta - b||^2 = ||R_A beta - (Q'b)||^2 + const``. Columns are scaled
    to unit norm first, as :func:`~sklearn_beta._nnls.nnls_fit` does, since
    the active-set solver's tolerances are absolute.
    """
    k = r_aug.r.shape[1] - 1
    design, qtb = r_aug.r[:, :k], r_aug.r[:, k]
    scale = np.linalg.norm(design, axis=0)
    usable = scale > 0
    beta = np.zeros(k)
    if not usable.any():
        return beta
    solution, _ = nnls(design[:, usable] / scale[usable], qtb)
    beta[usable] = solution / scale[usable]
    return beta


def column_norm_row(sum_of_squares: np.ndarray) -> np.ndarray:
    """A one-row matrix with the given column norms, for ``beta_change``."""
    return np.sqrt(sum_of_squares)[None, :]


def fit_statistics_from(ss_res: float, moments: Moments) -> tuple[float, float]:
    """``(r2, rmse)`` of :func:`~sklearn_beta._nnls.fit_statistics`, unit weights."""
    r2 = 1.0 - ss_res / moments.m2 if moments.m2 > 0 else float("nan")
    return r2, float(np.sqrt(ss_res / moments.count))


# --- Blocks -----------------------------------------------------------------


def table_values(block: pd.DataFrame) -> np.ndarray:
    """An exposure-table block as a finite float64 array."""
    return check_array(block.to_numpy(), dtype=np.float64, ensure_min_samples=0)


def scale_sums_block(block: pd.DataFrame) -> dict | None:
    """Sums behind the fit's time unit (``_time_scale``): steps, durations."""
    if len(block) == 0:
        return None
    values = table_values(block)
    return {
        "n_steps": float(np.sum(values[:, _COL["n_steps"]])),
        "duration": float(np.sum(values[:, _COL["duration"]])),
        "count": float(values.shape[0]),
    }


def time_scale_from(sums: dict, stopping: str) -> float:
    """The partition-sum form of ``_iterative._time_scale``."""
    if stopping == "absolute":
        return 1.0
    steps = sums["n_steps"]
    per_step = (
        sums["duration"] / steps if steps > 0 else sums["duration"] / sums["count"]
    )
    if not np.isfinite(per_step) or per_step <= 0:
        return 1.0
    return float(2.0 ** np.round(np.log2(per_step)))


@dataclass(frozen=True)
class Block:
    """One partition's trace, in the fit's time unit, kept on a worker."""

    timeline: Timeline
    step_density: np.ndarray
    fixed: np.ndarray | None
    weight: np.ndarray


def build_block(block: pd.DataFrame, unit: float, correction_mode: str) -> Block | None:
    """Timeline, step density, fixed correction and step-count weights."""
    if len(block) == 0:
        return None
    values = table_values(block)
    scaled = _rescaled(values, unit)
    timeline = _timeline_with_target(scaled, values[:, _COL["duration"]] / unit)
    tg = timeline.trace_grid
    return Block(
        timeline=timeline,
        step_density=scaled[:, _COL["step_density"]],
        fixed=static_correction_mass(
            correction_mode, tg, timeline.is_prefill, timeline.mu
        ),
        weight=step_count_weights(timeline),
    )


def start_block(block: Block | None, init_correction_mode: str) -> dict | None:
    """Statistics of the starting point: the baseline NNLS and the trace's shape."""
    if block is None:
        return None
    timeline = block.timeline
    design = baseline_exposures(timeline, block.step_density, init_correction_mode)
    check_finite_design(design)
    counted = block.weight > 0
    return {
        "r_init": RFactor.of(design, timeline.duration),
        "duration": Moments.of(timeline.duration),
        "shape": trace_shape(timeline),
        "n_weighted": int(np.count_nonzero(counted)),
        "counted_duration": float(timeline.duration[counted].sum()),
        "counted_steps": float(timeline.n_steps[counted].sum()),
    }


def scale_count_block(block: Block | None, beta: np.ndarray) -> dict | None:
    """Weighted step counts at ``beta`` against the known ones (``initial_scale``)."""
    if block is None:
        return None
    timeline = block.timeline
    mass = budget_capped_mass(
        fixed_correction_mass(
            "end_inside", timeline.trace_grid, timeline.is_prefill, timeline.mu
        ),
        timeline,
    )
    n, _, _ = solved_step_counts(timeline, beta, mass)
    return {
        "total": float(np.sum(block.weight * _phase_sums(timeline, n))),
        "target": float(np.sum(block.weight * timeline.n_steps)),
    }


def design_stats(design: np.ndarray, duration: np.ndarray) -> dict:
    """The NNLS system of a design and what its diagnostics need, one block."""
    return {
        "r_design": RFactor.of(design, duration),
        "design_sum": design.sum(axis=0),
        "design_sumsq": np.einsum("ij,ij->j", design, design),
    }


def residual_sum(design: np.ndarray, duration: np.ndarray, beta: np.ndarray) -> float:
    """``sum((l_i - design_i beta)^2)`` of one block."""
    return float(np.sum((duration - design @ beta) ** 2))


def count_block(
    block: Block | None, beta: np.ndarray, correction_mode: str
) -> dict | None:
    """The step-count state at ``beta``: loss, Gauss-Newton system, scores."""
    if block is None:
        return None
    timeline = block.timeline
    state = _count_state(timeline, beta, correction_mode, block.fixed, block.weight)
    root_w = np.sqrt(block.weight)
    target = state.jac @ state.beta - state.residual
    return {
        "loss": state.loss,
        "r_newton": RFactor.of(state.jac * root_w[:, None], target * root_w),
        "jac_sumsq": np.einsum("ij,ij->j", state.jac, state.jac),
        "ss_res": residual_sum(state.design, timeline.duration, state.beta),
        **design_stats(state.design, timeline.duration),
    }


@dataclass(frozen=True)
class DurationState:
    """The duration objective's lagged ``p_eff`` and the design it gave."""

    p_eff: np.ndarray
    design: np.ndarray


def reweight_block(
    block: Block | None,
    state: DurationState | None,
    beta: np.ndarray,
    correction_mode: str,
) -> DurationState | None:
    """One lagged re-weighting pass of a block (``reweighted_design``)."""
    if block is None:
        return None
    p_eff = block.timeline.p_pf_full if state is None else state.p_eff
    design, p_eff = reweighted_design(
        block.timeline, beta, p_eff, correction_mode, block.fixed
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
    design, duration = values[:, :3], values[:, _COL["duration"]]
    check_finite_design(design)
    if beta is not None:
        return {"ss_res": residual_sum(design, duration, beta)}
    timeline = _timeline_if_available(values)
    return {
        **design_stats(design, duration),
        "duration": Moments.of(duration),
        "shape": None if timeline is None else trace_shape(timeline),
    }
