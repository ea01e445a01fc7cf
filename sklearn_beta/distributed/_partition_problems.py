"""The fit's problems on persisted partitions, for the pandas fit's solver loops.

:func:`~sklearn_beta.core._step_count.solve_step_counts` and
:func:`~sklearn_beta.core._fixed_point.solve_fixed_point` ask a problem for its
state at given betas, its proposal, the basis of the stopping rule and its
fit statistics. In memory a problem is one timeline
(:class:`~sklearn_beta.core._step_count.TimelineCounts`,
:class:`~sklearn_beta.core._fixed_point.TimelineDurations`); here each answer is
one reduction of per-partition sums (:mod:`sklearn_beta.distributed._blocks`) over
:class:`~sklearn_beta.distributed._dask_fit.Partitions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core._nnls import nnls_from_r, scores_from_sums
from ._blocks import (
    count_block,
    duration_block,
    reweight_block,
    score_block,
    step_totals_block,
)


class PartitionCounts:
    """The step-count problem of
    :func:`~sklearn_beta.core._step_count.solve_step_counts` on persisted
    partitions: each answer a reduction of per-partition sums."""

    def __init__(self, blocks, start: dict, coef_columns=None, overhead=0):
        self.blocks = blocks
        self.start = start
        # a step model's betas: their history columns and the per-step
        # overhead's position (``initial_scale``); None for the published
        self.coef_columns = coef_columns
        self.overhead = overhead

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
    """The fixed-point problem of
    :func:`~sklearn_beta.core._fixed_point.solve_fixed_point` on persisted
    partitions; the lagged passes stay on the workers, chained."""

    def __init__(self, blocks, start: dict, correction_mode: str, coef_columns=None):
        self.blocks = blocks
        self.start = start
        self.correction_mode = correction_mode
        self.states = None
        self.coef_columns = coef_columns

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
