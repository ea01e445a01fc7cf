"""Prefill chunking: step counts and partial-chunk corrections (docs/method.md 2, 4, 6).

A prefill of ``P`` tokens runs ``N = ceil(P / C)`` steps, the last of which
processes only ``rho = P - C (N - 1)`` tokens. The full-chunk pressure counts
``C`` tokens on every step, so each request's missing mass ``mu = C - rho``
must be taken back somewhere in time. A correction is represented by its mass
(tokens) on each grid segment; its rate is that mass over the segment length.
"""

from __future__ import annotations

import numpy as np

from ._budget import alone_prefills
from ._engine_model import budget_bound
from ._grid import Timeline, TraceGrid, cumulative, phase_integrals

FIXED_CORRECTION_MODES = ("end", "end_inside", "uniform", "none")
CORRECTION_MODES = ("beta_informed",) + FIXED_CORRECTION_MODES


def missing_prefill_mass(
    is_prefill: np.ndarray,
    prefill_tokens: np.ndarray,
    n_steps: np.ndarray,
    chunk_size: int,
) -> np.ndarray:
    """Tokens ``mu = C - rho`` the last prefill step lacks (0 on decode rows).

    Without prefill token counts (``None``: an ``N_steps`` trace fitted with no
    partial-chunk correction) nothing is known to be missing: ``mu = 0``.
    """
    if prefill_tokens is None:
        return np.zeros(is_prefill.shape[0])
    rho = np.clip(prefill_tokens - chunk_size * (n_steps - 1.0), 0.0, chunk_size)
    mu = np.clip(chunk_size - rho, 0.0, chunk_size)
    return np.where(is_prefill, mu, 0.0)


def fixed_correction_mass(
    mode: str, trace_grid: TraceGrid, is_prefill: np.ndarray, mu: np.ndarray
) -> np.ndarray:
    """Correction mass per segment for the beta-independent modes.

    ``end`` reproduces the reference: all of ``mu`` on the segment that starts
    at the prefill's end (the last one of the instance if the prefill ends at
    its last grid point), which lies *outside* the prefill window.
    ``end_inside`` puts it on the last segment inside the window, where the
    partial step actually ran. ``uniform`` spreads it evenly over the window.
    """
    n_seg = trace_grid.n_segments
    if mode == "none":
        return np.zeros(n_seg)
    take = is_prefill & (mu > 0)
    start, end, mass = trace_grid.start_idx[take], trace_grid.end_idx[take], mu[take]
    if mode == "end":
        inst = trace_grid.grid_instance
        is_last_point = np.ones(inst.shape[0], dtype=bool)
        is_last_point[:-1] = inst[1:] != inst[:-1]
        seg = np.where(is_last_point[end], end - 1, end)
        return np.bincount(seg, weights=mass, minlength=n_seg)
    if mode == "end_inside":
        return np.bincount(end - 1, weights=mass, minlength=n_seg)
    if mode == "uniform":
        t = trace_grid.grid
        rate = mass / (t[end] - t[start])
        n_points = n_seg + 1
        delta = np.bincount(start, weights=rate, minlength=n_points) - np.bincount(
            end, weights=rate, minlength=n_points
        )
        return np.cumsum(delta[:-1]) * trace_grid.seg_len
    raise ValueError(
        f"Unknown correction mode {mode!r}; expected one of {CORRECTION_MODES}."
    )


def static_correction_mass(
    mode: str, trace_grid: TraceGrid, is_prefill: np.ndarray, mu: np.ndarray
) -> np.ndarray | None:
    """The correction of a fixed mode; None for ``beta_informed``, which the
    iterative estimator places anew at every step density."""
    if mode == "beta_informed":
        return None
    return fixed_correction_mass(mode, trace_grid, is_prefill, mu)


def last_step_start(
    trace_grid: TraceGrid,
    cum_steps: np.ndarray,
    step_density: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    n_steps: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each prefill's last step begins under a step density (docs/method.md 6.2).

    The last step starts where the cumulative step count from ``t_rs`` reaches
    ``L - L/N``. Returns the segment holding that time and the time itself.
    """
    total = cum_steps[end] - cum_steps[start]
    target = cum_steps[start] + (total - total / n_steps)
    seg = np.searchsorted(cum_steps, target, side="right") - 1
    seg = np.clip(seg, start, end - 1)
    t_star = trace_grid.grid[seg] + (target - cum_steps[seg]) / step_density[seg]
    return seg, t_star


def beta_informed_correction_mass(
    trace_grid: TraceGrid,
    step_density: np.ndarray,
    is_prefill: np.ndarray,
    n_steps: np.ndarray,
    mu: np.ndarray,
) -> np.ndarray:
    """Correction mass per segment spread over each prefill's last-step window.

    ``mu`` is distributed over the segments overlapping ``[t*, t_re)`` in
    proportion to the steps taken there, ``lam_j * overlap_j``. Vectorised
    with a cumulative step integral, ``searchsorted`` and a difference array:
    the partial first segment of each window is added by ``bincount``, the
    whole segments after it as a rate-per-step ``mu / W`` spread by ``cumsum``.
    """
    n_seg = trace_grid.n_segments
    take = is_prefill & (mu > 0) & (n_steps > 0)
    start, end = trace_grid.start_idx[take], trace_grid.end_idx[take]
    mass_r, steps_r = mu[take], n_steps[take]
    steps_per_segment = step_density * trace_grid.seg_len
    cum_steps = cumulative(steps_per_segment)

    seg, t_star = last_step_start(
        trace_grid, cum_steps, step_density, start, end, steps_r
    )
    first_steps = step_density[seg] * (trace_grid.grid[seg + 1] - t_star)
    window_steps = first_steps + (cum_steps[end] - cum_steps[seg + 1])
    # Rounding can leave a window of no steps when L/N vanishes next to the
    # cumulative sum; its mass then goes to the last segment of the prefill.
    empty = ~(window_steps > 0)
    per_step = np.divide(mass_r, window_steps, out=np.zeros_like(mass_r), where=~empty)

    first = np.bincount(seg, weights=per_step * first_steps, minlength=n_seg)
    first += np.bincount(end[empty] - 1, weights=mass_r[empty], minlength=n_seg)
    n_points = n_seg + 1
    delta = np.bincount(seg + 1, weights=per_step, minlength=n_points) - np.bincount(
        end, weights=per_step, minlength=n_points
    )
    rest = np.cumsum(delta[:-1]) * steps_per_segment
    return first + rest


def budget_capped_mass(mass: np.ndarray, timeline: Timeline) -> np.ndarray:
    """Correction mass left once a token budget has capped the prefill pressure.

    A prefill's last step holds ``min(C k - mu, B - p_dec)`` prefill tokens:
    where the budget already removed ``budget_excess`` tokens from the
    full-chunk pressure, the partial chunk only takes back what exceeds them.
    """
    if timeline.budget_excess is None:
        return mass
    return np.maximum(mass - timeline.budget_excess, 0.0)


def counted_phases(timeline: Timeline) -> np.ndarray:
    """Phases whose step count ``N_i`` is known (True) under a token budget.

    Decodes always run ``D`` steps. A prefill runs ``ceil(P / C)`` steps only
    if no step of its window was short of budget; a capped step may have
    served it a partial chunk, or none. Under a budget and no chunk cap
    (:mod:`sklearn_beta.core._budget`) the prefills alone in their group, with
    the decodes unchanged, are known.
    """
    if timeline.budget_excess is None:
        return np.ones(timeline.n_phases, dtype=bool)
    if budget_bound(timeline.chunk_size, timeline.token_budget):
        return ~timeline.is_prefill | alone_prefills(timeline)
    capped = (timeline.budget_excess > 0).astype(np.float64)
    return ~timeline.is_prefill | (phase_integrals(timeline.trace_grid, capped) == 0)


def design_step_counts(timeline: Timeline, density_steps: np.ndarray) -> np.ndarray:
    """The step counts that scale the duration objective's design rows.

    ``N_i``, except for the prefills a chunked engine's budget capped
    (``chunk_size < token_budget``; not :func:`counted_phases`): a capped
    step gave them a partial chunk or none, so they ran more steps than
    ``ceil(P / C)`` (2.8 % more over the prefills of a heavy trace under a
    2048-token budget), as many as the density puts in their window,
    ``density_steps`` (per phase).
    """
    if timeline.budget_excess is None or budget_bound(
        timeline.chunk_size, timeline.token_budget
    ):
        return timeline.n_steps
    return np.where(counted_phases(timeline), timeline.n_steps, density_steps)
