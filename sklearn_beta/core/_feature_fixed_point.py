"""The duration objective's fixed point for any step model (docs/method.md 6, 5.1).

The published iteration of :mod:`._fixed_point` with one pressure per step
feature: at betas ``beta`` every segment's step lasts ``sum_k beta_k p_k``,
so it holds ``lam = 1 / step time`` steps per time unit; the partial chunks'
missing tokens and attention are taken back where the last steps ran; each
phase's design row is ``N_i`` times its pressures averaged over the steps
inside it, and an NNLS of the durations gives the next betas.

The decode context of a decode ``r`` at time ``t`` is ``P_r`` plus the steps
it has run, ``Lambda(t) - Lambda(t_rs)`` with ``Lambda`` the cumulative steps:
linear inside a segment. A step from ``Lambda = k`` to ``k + 1`` averages
``k + 1/2``, and the ``k``-th decode step reads ``P + k - 1`` tokens, so the
pressure is ``sum_r (P_r - Lambda(t_rs) - 1/2) + n_dec Lambda(t)``; with a
constant density on a segment its step-weighted integral is exact at the
segment's midpoint. The lag is the published one: the density of pass m uses
the corrected pressures and the cumulative steps of pass m-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import numpy as np

from ._budget import (
    capped_last_steps,
    capped_prefill_grants,
    capped_prefill_wants,
)
from ._corrections import (
    beta_informed_correction_mass,
    budget_capped_mass,
    counted_phases,
    design_step_counts,
    fixed_correction_mass,
    static_correction_mass,
)
from ._engine_model import budget_bound
from ._fixed_point import MIN_STEP_TIME, beta_change, correction_rate
from ._grid import PhaseIntegrals, Timeline, count_active, cumulative
from ._nnls import fit_statistics, nnls_fit
from ._step_features import (
    _active_sum,
    attention_missing_mass,
    attention_pressure,
    budget_capped_attention,
    context_mass_per_segment,
)


def last_segment_mass(trace_grid, is_prefill, mass) -> np.ndarray:
    """Each prefill's ``mass`` on the last segment of its window."""
    return np.bincount(
        np.maximum(trace_grid.end_idx - 1, 0),
        weights=np.where(is_prefill, mass, 0.0),
        minlength=trace_grid.n_segments,
    )


#: Passes over the chains of short last chunks on budget-capped steps.
MAX_GAIN_PASSES = 100


class FeatureDurations:
    """The duration objective of a step model on one in-memory timeline.

    ``prompt``: each phase's request prompt ``P_r``; ``features``: the step
    model's features in the order of the betas.
    """

    def __init__(
        self,
        timeline: Timeline,
        prompt: np.ndarray | None,
        features: Sequence[str],
        correction_mode: str,
        sample_weight: np.ndarray | None = None,
    ):
        tg = timeline.trace_grid
        self.timeline = timeline
        self.features = tuple(features)
        self.mode = correction_mode
        self.sample_weight = sample_weight
        self.integrals = PhaseIntegrals(tg)
        self.fixed = static_correction_mass(
            correction_mode, tg, timeline.is_prefill, timeline.mu
        )
        self.p_dec = timeline.p_dec
        self.p_pf = timeline.p_pf_full
        self.counted = counted_phases(timeline)
        self.prompt = prompt
        # a chunked engine's budget: who gets the capped steps' tokens
        self.grants = None
        if timeline.budget_excess is not None and not budget_bound(
            timeline.chunk_size, timeline.token_budget
        ):
            self.grants = capped_prefill_grants(timeline)
            self.gains = np.zeros(timeline.n_phases)
            last = np.maximum(tg.end_idx - 1, 0)
            self.ends_capped = timeline.is_prefill & (timeline.budget_excess[last] > 0)
        self.p_batch = None
        if "batch_size" in self.features:
            self.p_batch = count_active(tg)
        self.attention = self.attention_missing = self.fixed_attention = None
        if "prefill_attention" in self.features:
            self.attention = attention_pressure(timeline, prompt)
            self.attention_missing = attention_missing_mass(timeline, prompt)
            self.fixed_attention = static_correction_mass(
                correction_mode, tg, timeline.is_prefill, self.attention_missing
            )
        self.p_attention = self.attention
        self.context = "decode_context" in self.features
        self.p_context = None
        if self.context:
            self.is_decode = ~timeline.is_prefill
            self.decode_start = tg.start_idx
            self.context_prompt = np.where(self.is_decode, prompt - 0.5, 0.0)
            # the first pass: the context of the phase-local step densities
            local = timeline.n_steps / timeline.duration
            mass = context_mass_per_segment(timeline, prompt, local)
            self.p_context = correction_rate(mass, tg.seg_len)

    def _context_pressure(self, cum_steps: np.ndarray) -> np.ndarray:
        """Decode context per step on each segment under cumulative steps
        ``cum_steps`` (per grid point), at the segment's midpoint."""
        constant = _active_sum(
            self.timeline,
            self.is_decode,
            self.context_prompt - cum_steps[self.decode_start],
        )
        midpoint = 0.5 * (cum_steps[:-1] + cum_steps[1:])
        return constant + self.p_dec * midpoint

    def _pressures(self) -> list[np.ndarray]:
        """Per-step pressure of each feature, in the model's order."""
        by_name = {
            "steps": np.ones(self.timeline.trace_grid.n_segments),
            "prefill_tokens": self.p_pf,
            "prefill_attention": self.p_attention,
            "decode_tokens": self.p_dec,
            "decode_context": self.p_context,
            "batch_size": self.p_batch,
        }
        return [by_name[name] for name in self.features]

    def _corrections(self, density, steps):
        """The missing tokens and attention per segment (the latter None
        without the feature), placed by the mode at ``density``, less what
        a token budget already took off the pressures."""
        tl = self.timeline
        if self.grants is not None:
            return self._capped_corrections(steps)
        if self.mode != "beta_informed":
            mass, missing = self.fixed, self.fixed_attention
        else:
            place = partial(
                beta_informed_correction_mass, tl.trace_grid, density, tl.is_prefill
            )
            mass = place(tl.n_steps, tl.mu)
            missing = (
                None
                if self.attention is None
                else place(tl.n_steps, self.attention_missing)
            )
        if missing is not None:
            missing = budget_capped_attention(missing, mass, tl)
        return budget_capped_mass(mass, tl), missing

    def _capped_corrections(self, steps):
        """:meth:`_corrections` of a chunked engine under a budget: each
        prefill's last want at this density and the grants of the capped
        last steps (:func:`~._budget.capped_last_steps`).

        ``beta_informed`` places a prefill's missing mass on its last
        segment: its last step lies there (grid points are step boundaries),
        and spreading the mass onto the segment before, as a slightly low
        density does, lowers the density there further: a fixed point 1-2 %
        off the engine's betas on a heavy noise-free trace.
        """
        tl = self.timeline
        chunk = float(tl.chunk_size)
        # a short last chunk leaves tokens to the next prefill, whose last
        # chunk it shortens in turn: one link of such chains per pass
        for _ in range(MAX_GAIN_PASSES):
            want = capped_prefill_wants(tl, self.grants, steps, self.prompt, self.gains)
            mu_capped, missing_capped, gains = capped_last_steps(
                tl, self.prompt, self.grants, want
            )
            settled = np.array_equal(gains, self.gains)
            self.gains = gains
            if settled:
                break
        uncounted = np.clip(chunk - want, 0.0, chunk)
        mu = np.where(self.counted, tl.mu, uncounted)
        mu = np.where(self.ends_capped, mu_capped, np.where(tl.is_prefill, mu, 0.0))
        place = partial(fixed_correction_mass, self.mode, tl.trace_grid, tl.is_prefill)
        if self.mode in ("beta_informed", "end_inside"):
            # on the last segment, negative masses too: a short last chunk
            # can hand its tokens to longer prompts
            place = partial(last_segment_mass, tl.trace_grid, tl.is_prefill)
        if self.attention is None:
            return place(mu), None
        missing = attention_missing_mass(replace(tl, mu=mu), self.prompt)
        missing = np.where(self.ends_capped, missing_capped, missing)
        return place(mu), place(missing)

    def reweighted(self, beta: np.ndarray) -> np.ndarray:
        """One lagged pass: density from ``beta`` and the previous pressures,
        then the corrections, the new pressures and the design."""
        tl = self.timeline
        tg = tl.trace_grid
        step_time = np.zeros(tg.n_segments)
        for b, pressure in zip(beta, self._pressures(), strict=True):
            step_time += b * pressure
        density = 1.0 / np.maximum(step_time, MIN_STEP_TIME)
        steps = density * tg.seg_len
        per_step = np.maximum(density, MIN_STEP_TIME)
        mass, missing = self._corrections(density, steps)
        rate = correction_rate(mass, tg.seg_len)
        self.p_pf = np.maximum(tl.p_pf_full - rate / per_step, 0.0)
        if self.attention is not None:
            a_rate = correction_rate(missing, tg.seg_len)
            self.p_attention = np.maximum(self.attention - a_rate / per_step, 0.0)
        if self.context:
            self.p_context = self._context_pressure(cumulative(steps))
        # the design: N_i times the pressures averaged over its steps
        total = self.integrals(steps)
        n_steps = design_step_counts(tl, total)
        scale = np.divide(n_steps, total, out=np.zeros_like(total), where=total > 0)
        design = np.empty((tl.n_phases, len(self.features)), order="F")
        for k, pressure in enumerate(self._pressures()):
            self.integrals(pressure * steps, out=design[:, k])
            design[:, k] *= scale
        return design

    def fit(self, design: np.ndarray) -> np.ndarray:
        return nnls_fit(design, self.timeline.duration, self.sample_weight)

    def scores(self, design, beta) -> tuple[float, float]:
        return fit_statistics(self.timeline.duration, design @ beta, self.sample_weight)


def iterate_feature_betas(
    problem: FeatureDurations,
    beta_init: np.ndarray,
    max_iter: int,
    tol: float,
    damping: float,
    stopping: str,
) -> tuple[np.ndarray, bool, int, np.ndarray, list[dict]]:
    """The fixed-point loop of a step model: ``(beta, converged, n_iter,
    design, history)``, one history record per iteration (0: the start)."""
    names = [f"beta_{f}" for f in problem.features]
    beta = np.asarray(beta_init, dtype=np.float64)
    history = [_record(0, names, beta, np.nan, np.nan, np.nan)]
    converged, design, n_iter = False, None, 0
    for n_iter in range(1, max_iter + 1):
        design = problem.reweighted(beta)
        beta_fit = problem.fit(design)
        new = (1.0 - damping) * beta + damping * beta_fit
        step = beta_change(new, beta, design, stopping)
        r2, rmse = problem.scores(design, beta_fit)
        history.append(_record(n_iter, names, new, step, r2, rmse))
        beta = new
        if step < tol:
            converged = True
            break
    return beta, converged, n_iter, design, history


def _record(iteration, names, beta, step, r2, rmse) -> dict:
    return {
        "iteration": iteration,
        **dict(zip(names, np.asarray(beta).tolist(), strict=True)),
        "step": step,
        "r2": r2,
        "rmse_seconds": rmse,
    }


class BasisDurations:
    """The duration objective in the coordinates of a linear basis of the
    step features (trained-physics): coefficients ``c`` with step-feature
    betas ``K.T @ c`` and design ``features @ K.T``, so that the fit stays
    non-negative in ``c``, the coefficients the basis names."""

    def __init__(self, problem: FeatureDurations, basis: np.ndarray, names):
        self.problem = problem
        self.basis = np.asarray(basis, dtype=np.float64)
        self.features = tuple(names)
        self.timeline = problem.timeline
        self.sample_weight = problem.sample_weight

    def reweighted(self, coef: np.ndarray) -> np.ndarray:
        return self.problem.reweighted(self.basis.T @ coef) @ self.basis.T

    def fit(self, design: np.ndarray) -> np.ndarray:
        return self.problem.fit(design)

    def scores(self, design, coef) -> tuple[float, float]:
        return self.problem.scores(design, coef)
