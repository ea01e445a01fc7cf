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
    group_full_pressures,
    group_last_steps,
    group_step_counts,
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
from ._fixed_point import MIN_STEP_TIME, correction_rate
from ._grid import PhaseIntegrals, Timeline, count_active, cumulative
from ._nnls import (
    fit_statistics,
    nnls_fit,
    residual_squares,
    scores_from_sums,
    total_squares,
)
from ._step_count import (
    CountedTotals,
    CountState,
    newton_target,
    step_count_weights,
)
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
    model's features in the order of the betas. ``variance_weighted``: weigh
    each phase's duration by the inverse of its variance under independent
    per-step noise (:func:`duration_variance_weights`), re-estimated at every
    pass; else by ``sample_weight`` alone.
    """

    def __init__(
        self,
        timeline: Timeline,
        prompt: np.ndarray | None,
        features: Sequence[str],
        correction_mode: str,
        sample_weight: np.ndarray | None = None,
        variance_weighted: bool = False,
    ):
        tg = timeline.trace_grid
        self.timeline = timeline
        self.features = tuple(features)
        self.coef_columns = tuple(f"beta_{f}" for f in self.features)
        self.mode = correction_mode
        self.sample_weight = sample_weight
        self.variance_weighted = variance_weighted
        #: The phase weights of the last fit (``sample_weight`` unweighted).
        self.weight = sample_weight
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
        self._set_groups(prompt)
        self.p_batch = self.batch = None
        if "batch_size" in self.features:
            self.p_batch = self.batch = self._batch_pressure(prompt)
        self.attention = self.attention_missing = self.fixed_attention = None
        if self.groups and "prefill_attention" in self.features:
            self.attention = group_full_pressures(timeline, prompt)[0]
        elif "prefill_attention" in self.features:
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

    def _set_groups(self, prompt) -> None:
        """A budget-bound engine: prefill groups serve one prompt at a time
        (:func:`~._budget.group_last_steps`); without the prompts there is
        nothing to place but the published group masses."""
        timeline = self.timeline
        bound = timeline.budget_excess is not None and budget_bound(
            timeline.chunk_size, timeline.token_budget
        )
        if bound and prompt is None and "batch_size" in self.features:
            raise ValueError(
                "The 'batch_size' feature of a budget-bound engine needs the "
                "'prefill_tokens' column (which prompts share a step)."
            )
        self.groups = bound and prompt is not None
        self.group_masses = self.group_steps = None
        #: the phases counted in the last pass (:meth:`reweighted`)
        self.counted_now = self.counted
        if self.groups:
            self.group_masses = group_last_steps(timeline, prompt)

    def _batch_pressure(self, prompt) -> np.ndarray:
        """Requests served per full step: every running phase, or under a
        budget-bound engine the decodes and one prompt
        (:func:`~._step_features.batch_mass_per_segment`)."""
        if not self.groups:
            return count_active(self.timeline.trace_grid)
        return self.timeline.p_dec + group_full_pressures(self.timeline, prompt)[1]

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

    def _solved_density(self, beta: np.ndarray) -> np.ndarray:
        """The step density of a fixed placement, solved with the prefill
        pressures it leaves rather than lagged (docstring of
        :class:`FeatureCounts`): a lagged density oscillates on a segment
        whose placed mass takes longer than the segment lasts (``b1 m > s``),
        as ``end_inside`` places a whole chunk's mass on a prefill's last,
        often short, segment (measured: 100 iterations without converging,
        five with the solved density)."""
        tl = self.timeline
        full = {"prefill_tokens": tl.p_pf_full, "prefill_attention": self.attention}
        mass = {
            "prefill_tokens": budget_capped_mass(self.fixed, tl),
            "prefill_attention": None,
        }
        if self.attention is not None:
            mass["prefill_attention"] = budget_capped_attention(
                self.fixed_attention, self.fixed, tl
            )
        return self._density_with(beta, full, mass)

    def _group_density(self, beta: np.ndarray) -> np.ndarray:
        """The density of a budget-bound engine, solved with the masses its
        prompts' last steps take back (:func:`~._budget.group_last_steps`),
        placed on the chunk grid of the previous pass's steps; the lag is in
        where the last steps fall, whole steps, and not in the step time
        (lagged, a group's short last step flipped between states)."""
        tl = self.timeline
        masses = group_last_steps(tl, self.prompt, self.group_steps)
        self.group_masses = masses
        names = ("prefill_tokens", "prefill_attention", "batch_size")
        full = dict(zip(names, (tl.p_pf_full, self.attention, self.batch), strict=True))
        return self._density_with(beta, full, dict(zip(names, masses, strict=True)))

    def _density_with(self, beta, full: dict, mass: dict) -> np.ndarray:
        """Steps per time unit on each segment that lasts ``s = n sum_k b_k
        p_k - sum_k b_k m_k``: ``full`` pressures and ``mass`` taken back by
        name, the other features at their current pressures."""
        s = self.timeline.trace_grid.seg_len
        step_time, bare, taken = np.zeros_like(s), np.zeros_like(s), s.copy()
        for b, name, pressure in zip(
            beta, self.features, self._pressures(), strict=True
        ):
            pressure = full.get(name, pressure)
            step_time += b * pressure
            if name in full:
                taken += b * mass[name]
            if name not in PREFILL_FEATURES:
                bare += b * pressure
        n = taken / np.maximum(step_time, MIN_STEP_TIME)
        emptied = np.zeros(s.shape[0], dtype=bool)
        for name in PREFILL_FEATURES:
            if name in self.features:
                emptied |= n * full[name] < mass[name]
        n[emptied] = s[emptied] / np.maximum(bare[emptied], MIN_STEP_TIME)
        return np.where(
            s > 0,
            n / np.where(s > 0, s, 1.0),
            1.0 / np.maximum(step_time, MIN_STEP_TIME),
        )

    def _corrections(self, density, steps):
        """The missing tokens and attention per segment (the latter None
        without the feature), placed by the mode at ``density``, less what
        a token budget already took off the pressures."""
        tl = self.timeline
        if self.grants is not None:
            return self._capped_corrections(steps)
        if self.groups:
            # the prompts' last steps placed by _group_density
            tokens, attention, self.batch_mass = self.group_masses
            return tokens, attention
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
        if self.groups:
            density = self._group_density(beta)
        elif self.mode == "beta_informed" or self.grants is not None:
            # (a chunked engine's budget places its own corrections, at the
            # lagged density)
            step_time = np.zeros(tg.n_segments)
            for b, pressure in zip(beta, self._pressures(), strict=True):
                step_time += b * pressure
            density = 1.0 / np.maximum(step_time, MIN_STEP_TIME)
        else:
            density = self._solved_density(beta)
        steps = density * tg.seg_len
        per_step = np.maximum(density, MIN_STEP_TIME)
        if self.groups:
            self.group_steps = steps
        mass, missing = self._corrections(density, steps)
        rate = correction_rate(mass, tg.seg_len)
        self.p_pf = np.maximum(tl.p_pf_full - rate / per_step, 0.0)
        if self.attention is not None:
            a_rate = correction_rate(missing, tg.seg_len)
            self.p_attention = np.maximum(self.attention - a_rate / per_step, 0.0)
        if self.batch is not None and self.groups:
            b_rate = correction_rate(self.batch_mass, tg.seg_len)
            self.p_batch = np.maximum(self.batch - b_rate / per_step, 0.0)
        if self.context:
            self.p_context = self._context_pressure(cumulative(steps))
        # the design: N_i times the pressures averaged over its steps
        total = self.integrals(steps)
        n_steps = design_step_counts(tl, total)
        if self.groups:
            # a prompt sharing its group: the steps its group's chunk grid
            # fixes (the density's, where it does not)
            counts, fixed = group_step_counts(tl, self.prompt, steps)
            self.counted_now = self.counted | fixed
            n_steps = np.where(self.counted, n_steps, np.where(fixed, counts, total))
        scale = np.divide(n_steps, total, out=np.zeros_like(total), where=total > 0)
        design = np.empty((tl.n_phases, len(self.features)), order="F")
        for k, pressure in enumerate(self._pressures()):
            self.integrals(pressure * steps, out=design[:, k])
            design[:, k] *= scale
        if self.variance_weighted:
            # the weights of the next fit, at the betas of this pass: from the
            # predicted, not the observed, durations, which carry the noise
            self.weight = duration_variance_weights(
                n_steps, design @ beta, self.sample_weight
            )
        return design

    def fit(self, design: np.ndarray) -> np.ndarray:
        weight = self.weight
        if self.groups:
            # a prompt whose count no chunk grid fixes has the density's: its
            # row repeats the current betas' durations, and only slows the
            # iteration (122 passes to converge on a light noise-free trace, 87
            # without it, damping 1)
            ones = np.ones(self.timeline.n_phases) if weight is None else weight
            weight = np.where(self.counted_now, ones, 0.0)
        return nnls_fit(design, self.timeline.duration, weight)

    def change_basis(self, design: np.ndarray) -> np.ndarray:
        """What :func:`~._fixed_point.beta_change` measures a step against."""
        return design

    def scores(self, design, beta) -> tuple[float, float]:
        return fit_statistics(self.timeline.duration, design @ beta, self.sample_weight)


def duration_variance_weights(n_steps, predicted, sample_weight=None) -> np.ndarray:
    """Inverse variances of the phase durations under per-step noise.

    A phase of ``N`` steps of mean time ``tau = predicted / N``, each step
    scaled by an independent factor of standard deviation ``sigma``, lasts
    ``predicted`` with variance ``sigma^2 N tau^2 = sigma^2 predicted^2 / N``:
    the weight is ``N / predicted^2`` (0 where nothing is predicted), times
    ``sample_weight``, scaled to mean 1 (NNLS does not see the scale).
    """
    weight = np.divide(
        n_steps,
        np.square(predicted),
        out=np.zeros_like(predicted),
        where=predicted > 0,
    )
    if sample_weight is not None:
        weight = weight * sample_weight
    mean = float(np.mean(weight)) if weight.size else 0.0
    return weight / mean if mean > 0 else weight


class BasisDurations:
    """The duration objective in the coordinates of a linear basis of the
    step features (trained-physics): coefficients ``c`` with step-feature
    betas ``K.T @ c`` and design ``features @ K.T``, so that the fit stays
    non-negative in ``c``, the coefficients the basis names."""

    def __init__(self, problem: FeatureDurations, basis: np.ndarray, names):
        self.problem = problem
        self.basis = np.asarray(basis, dtype=np.float64)
        self.features = tuple(names)
        self.coef_columns = tuple(f"beta_{f}" for f in self.features)
        self.timeline = problem.timeline
        self.sample_weight = problem.sample_weight

    @property
    def weight(self):
        return self.problem.weight

    def reweighted(self, coef: np.ndarray) -> np.ndarray:
        return self.problem.reweighted(self.basis.T @ coef) @ self.basis.T

    def fit(self, design: np.ndarray) -> np.ndarray:
        return self.problem.fit(design)

    def change_basis(self, design: np.ndarray) -> np.ndarray:
        return design

    def scores(self, design, coef) -> tuple[float, float]:
        return self.problem.scores(design, coef)


class BasisCounts:
    """The step-count objective (:class:`FeatureCounts`) in the coordinates
    of a linear basis of the step features, as :class:`BasisDurations`: the
    Jacobian and the design are the features' times ``K.T``."""

    def __init__(self, problem: FeatureCounts, basis: np.ndarray, names):
        self.problem = problem
        self.basis = np.asarray(basis, dtype=np.float64)
        self.features = tuple(names)
        self.coef_columns = tuple(f"beta_{f}" for f in self.features)
        self.timeline = problem.timeline
        self.sample_weight = problem.sample_weight
        self.correction_mode = problem.correction_mode
        self.fixed = problem.fixed
        self.last = None
        # the per-step overhead the start gives a floor (initial_scale)
        overhead = [k for k, f in enumerate(names) if f in ("steps", "per_step")]
        self.overhead = overhead[0] if overhead else None

    @property
    def weight(self) -> np.ndarray:
        # the features' problem's, which a budget-bound engine's state sets
        # (FeatureCounts._step_counts)
        return self.problem.weight

    def _in_basis(self, state: CountState, coef: np.ndarray) -> CountState:
        k = self.basis.T
        return replace(state, beta=coef, jac=state.jac @ k, design=state.design @ k)

    def state(self, coef: np.ndarray) -> CountState:
        coef = np.asarray(coef, dtype=np.float64)
        self.last = self._in_basis(self.problem.state(self.basis.T @ coef), coef)
        return self.last

    def counted_totals(self):
        return self.problem.counted_totals()

    def step_totals(self, coef):
        return self.problem.step_totals(self.basis.T @ np.asarray(coef))

    def proposal(self, state: CountState) -> np.ndarray:
        return nnls_fit(state.jac, newton_target(state), self.weight)

    def change_basis(self, state: CountState) -> np.ndarray:
        return column_norms(state.jac)

    def duration_fit(self, state: CountState) -> tuple[float, float]:
        return self.problem.duration_fit(state)


#: The step features a partial last prefill chunk takes mass back from.
PREFILL_FEATURES = ("prefill_tokens", "prefill_attention")


class FeatureCounts(CountedTotals):
    """The step-count objective of a step model on one in-memory timeline.

    The published objective (:mod:`._step_count`) with one pressure per
    feature: a segment of length ``s`` holding ``n`` steps lasts ``s = n
    sum_k b_k p_k - sum_k b_k m_k``, ``m_k`` the mass a partial last chunk
    takes back from feature ``k`` (prefill tokens and attention), so ``n =
    (s + sum b_k m_k) / sum b_k p_k`` and ``dn / db_k = (m_k - n p_k) /
    sum b_k p_k``. Where the masses exceed what the full chunks hold the
    prefill features are emptied. Two inputs depend on the steps themselves
    and are lagged, as in the duration objective: the decode context (the
    cumulative steps) and a ``beta_informed`` placement (the density). Each
    state takes them from the state evaluated before it, which in
    :func:`~._step_count.solve_step_counts` is the accepted one (unless a
    step was halved), so at convergence they agree with the betas; settling
    them by evaluating every state twice doubled the fit's cost. With the
    published features and
    a fixed placement this is :func:`~._step_count.count_state` exactly.

    Under a chunked engine's token budget the masses are the published
    objective's budget-capped ones, not the capped steps' last chunks of
    :meth:`FeatureDurations._capped_corrections`: lagged, those flip
    between states and the fit cycled without converging at 14 requests/s;
    the approximation converges (9 iterations) within 0.4 % of the engine's
    betas on noise-free traces at 10 and 14 requests/s under a 2048-token
    budget, where the duration objective is exact.

    Answers what :func:`~._step_count.solve_step_counts` asks of a trace.
    """

    def __init__(self, problem: FeatureDurations, sample_weight=None):
        tl = problem.timeline
        self.problem = problem
        self.timeline = tl
        self.features = problem.features
        self.coef_columns = tuple(f"beta_{f}" for f in self.features)
        self.overhead = (
            self.features.index("steps") if "steps" in self.features else None
        )
        self.weight = step_count_weights(tl, sample_weight)
        self.sample_weight = sample_weight
        self.correction_mode = problem.mode
        self.fixed = problem.fixed
        #: The state evaluated last (the solution's, once a fit ends).
        self.last = None
        self.integrals = problem.integrals
        self.prefill = np.isin(self.features, PREFILL_FEATURES)
        self.duration_squares = None
        self.masses = self._masses(None)
        # a budget-bound engine's prompts that share a group: counted once
        # a density lays the chunk grid (:meth:`_step_counts`)
        self.sharing = None
        if problem.groups:
            self.sharing = tl.is_prefill & ~counted_phases(tl)

    def _full_pressures(self) -> list[np.ndarray]:
        """Per-step pressure of each feature before any partial chunk."""
        p = self.problem
        by_name = {
            "steps": np.ones(self.timeline.trace_grid.n_segments),
            "prefill_tokens": self.timeline.p_pf_full,
            "prefill_attention": p.attention,
            "decode_tokens": p.p_dec,
            "decode_context": p.p_context,
            "batch_size": p.batch,
        }
        return [by_name[name] for name in self.features]

    def _masses(self, density: np.ndarray | None) -> list:
        """Mass taken back from each feature per segment (None: none); a
        ``beta_informed`` placement needs the step ``density``."""
        p, tl = self.problem, self.timeline
        tg = tl.trace_grid
        if p.groups and p.group_masses is not None:
            # a budget-bound engine's last steps, placed without a density
            # (as the published objective's group deficits)
            names = ("prefill_tokens", "prefill_attention", "batch_size")
            by_name = dict(zip(names, p.group_masses, strict=True))
            return [by_name.get(name) for name in self.features]
        if p.mode == "beta_informed" and density is None:
            # before any density: the last segment of each window
            tokens = static_correction_mass("end_inside", tg, tl.is_prefill, tl.mu)
            attention = None
            if p.attention is not None:
                attention = static_correction_mass(
                    "end_inside", tg, tl.is_prefill, p.attention_missing
                )
        elif p.mode == "beta_informed":
            tokens = beta_informed_correction_mass(
                tg, density, tl.is_prefill, tl.n_steps, tl.mu
            )
            attention = None
            if p.attention is not None:
                attention = beta_informed_correction_mass(
                    tg, density, tl.is_prefill, tl.n_steps, p.attention_missing
                )
        else:
            tokens, attention = p.fixed, getattr(p, "fixed_attention", None)
        capped = budget_capped_mass(tokens, tl)
        by_name = {"prefill_tokens": capped}
        if attention is not None:
            by_name["prefill_attention"] = budget_capped_attention(
                attention, tokens, tl
            )
        return [by_name.get(name) for name in self.features]

    def _counts(self, beta: np.ndarray):
        """``(n, step_time, emptied, pressures)`` at ``beta``: the steps on
        every segment, the time each lasts, the segments whose prefill
        features the masses emptied (or None) and the full pressures."""
        s = self.timeline.trace_grid.seg_len
        pressures = self._full_pressures()
        step_time = np.zeros(s.shape[0])
        bare = np.zeros(s.shape[0])
        taken = s.copy()
        for b, pressure, mass, pre in zip(
            beta, pressures, self.masses, self.prefill, strict=True
        ):
            step_time += b * pressure
            if not pre:
                bare += b * pressure
            if mass is not None:
                taken += b * mass
        np.maximum(step_time, MIN_STEP_TIME, out=step_time)
        n = taken / step_time
        emptied = np.zeros(s.shape[0], dtype=bool)
        for pressure, mass in zip(pressures, self.masses, strict=True):
            if mass is not None:
                emptied |= n * pressure < mass
        if np.any(emptied):
            # no prefill left: the steps last the other features' time
            bare = np.maximum(bare[emptied], MIN_STEP_TIME)
            n[emptied] = s[emptied] / bare
            step_time[emptied] = bare
        else:
            emptied = None
        return n, step_time, emptied, pressures

    def state(self, beta: np.ndarray) -> CountState:
        """The objective at ``beta`` under the lagged context and placement."""
        beta = np.asarray(beta, dtype=np.float64)
        tl = self.timeline
        n, step_time, emptied, pressures = self._counts(beta)
        steps = self.integrals(n)
        n_steps = self._step_counts(n)
        held = steps > 0
        scale = np.divide(n_steps, steps, out=np.zeros_like(steps), where=held)
        n_features = len(self.features)
        design = np.empty((tl.n_phases, n_features), order="F")
        jac = np.empty((tl.n_phases, n_features), order="F")
        for k, (pressure, mass) in enumerate(zip(pressures, self.masses, strict=True)):
            if self.features[k] == "steps":
                # N_i steps of one each: no integral (the published design's)
                design[:, k] = n_steps
                self.integrals(-n / step_time, out=jac[:, k])
                continue
            held_k = n * pressure
            slope = -held_k
            if mass is not None:
                held_k = np.maximum(held_k - mass, 0.0)
                slope = slope + mass
            if emptied is not None and self.prefill[k]:
                held_k[emptied] = 0.0
                slope[emptied] = 0.0
            self.integrals(held_k, out=design[:, k])
            design[:, k] *= scale
            self.integrals(slope / step_time, out=jac[:, k])
        residual = steps - n_steps
        loss = float(np.sum(self.weight * np.square(residual)))
        self._refresh(n)
        self.last = CountState(beta, residual, jac, design, loss, n, None)
        return self.last

    def _step_counts(self, n: np.ndarray) -> np.ndarray:
        """``N_i``, and of the prompts sharing a budget-bound group the
        count the chunk grid of the steps ``n`` fixes
        (:func:`~._budget.group_step_counts`), weighted ``1 / N_i`` as the
        others. Not lagged: the counts are whole steps, constant in the
        betas between two roundings, so the loss stays a function of the
        betas. Sets :attr:`weight` to the state's."""
        tl = self.timeline
        if self.sharing is None:
            return tl.n_steps
        counts, fixed = group_step_counts(tl, self.problem.prompt, n)
        known = self.sharing & fixed
        n_steps = np.where(known, counts, tl.n_steps)
        weight = (~self.sharing | known) / np.maximum(n_steps, 1.0)
        if self.sample_weight is not None:
            weight = weight * self.sample_weight
        self.weight = weight
        return n_steps

    def _refresh(self, n: np.ndarray) -> None:
        """Take the lagged inputs of the next state from the steps ``n`` of
        this one: the decode context of their cumulative count and a
        ``beta_informed`` placement under their density."""
        p = self.problem
        if p.context:
            p.p_context = p._context_pressure(cumulative(n))
        if p.groups:
            p.group_masses = group_last_steps(self.timeline, p.prompt, n)
            self.masses = self._masses(None)
        elif p.mode == "beta_informed":
            self.masses = self._masses(
                correction_rate(n, self.timeline.trace_grid.seg_len)
            )

    def step_totals(self, beta: np.ndarray) -> tuple[float, float]:
        """Weighted steps the phases hold at ``beta``, and ``N_i``."""
        n = self._counts(np.asarray(beta, dtype=np.float64))[0]
        total = float(np.sum(self.weight * self.integrals(n)))
        return total, float(np.sum(self.weight * self.timeline.n_steps))

    def proposal(self, state: CountState) -> np.ndarray:
        """The NNLS of the linearised counts: the full Gauss-Newton step's end."""
        return nnls_fit(state.jac, newton_target(state), self.weight)

    def change_basis(self, state: CountState) -> np.ndarray:
        return column_norms(state.jac)

    def duration_fit(self, state: CountState) -> tuple[float, float]:
        """``(r2, rmse)`` of the durations the state predicts, ``design @ beta``."""
        duration = self.timeline.duration
        if self.duration_squares is None:
            self.duration_squares = total_squares(duration)
        predicted = state.design @ state.beta
        return scores_from_sums(
            residual_squares(duration, predicted), *self.duration_squares
        )


def column_norms(jac: np.ndarray) -> np.ndarray:
    """One row with the columns' norms: all :func:`~._fixed_point.beta_change`
    reads of its basis, without the temporary the size of ``jac`` that
    ``np.linalg.norm`` makes (as the distributed fit reduces them)."""
    return np.sqrt(np.einsum("ij,ij->j", jac, jac))[None, :]
