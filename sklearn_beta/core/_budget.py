"""A token budget and no chunk cap: prefill groups, their deficit (method.md 4.1).

vLLM V1 by default caps only the tokens of a step (``max_num_batched_tokens``,
the budget ``B``), not the tokens one prompt may take. Each step serves the
running decodes first and gives the rest of the budget, ``B - p_dec``, to the
waiting prompts in arrival order, each taking what it still needs. So while
any prompt is being prefilled every step is full, and a prompt's last chunk
is topped up by the next prompt in the same step: the only steps short of
budget are those where *every* running prompt finishes.

Prefills that overlap (in time, on one instance) therefore form a *group*
that ends together with its last member, and the per-prompt partial chunk of
section 4 does not exist. What the full pressure ``B - p_dec`` over-counts is
the group's *deficit*: the budget of its steps minus the prompt tokens it
served,

    deficit_g = k_g * cbar_g - sum_{r in g} P_r,
    k_g = ceil(sum P_r / cbar_g),     cbar_g = mean of B - p_dec over the group,

all on the group's last step. It is exact where the decodes do not change
during the group (then ``B - p_dec`` is the same on each of its steps). Read
as the missing mass of section 4 with chunk ``C = B``, it goes on the group's
last segment through the prefills that end there. Prompts that run one after
the other without overlapping, the next one starting on the step after the
last one ended, are two groups: the first one's last step was short.

A prompt alone in its group, with the decodes unchanged while it runs, gets
``B - p_dec`` tokens on every step but its last: it runs
``ceil(P / (B - p_dec))`` steps, a count the step-count objective can fit
(:func:`alone_prefills`). Other prompts of a budget-bound engine share
steps in ways the trace does not show, and their counts are left out.

A chunked engine under a budget (``chunk_size < token_budget``) serves its
capped steps in running order instead: the first started prefills get full
chunks, the next one the rest (:func:`capped_prefill_grants`). What that
changes for the features that weigh a chunk by its prompt, for the capped
prefills' last chunks and for the chains of short last chunks on a capped
step is :func:`capped_prefill_wants` and :func:`capped_last_steps`
(docs/method.md 5.1).
"""

from __future__ import annotations

import numpy as np

from ._engine_model import prefill_steps
from ._grid import Timeline, TraceGrid, count_active, cumulative, phase_integrals


def prefill_groups(
    trace_grid: TraceGrid, is_prefill: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of overlapping prefills: the group of each prefill, and each
    group's first and end grid points.

    A group ends at every grid point that no prefill runs across (starts
    before and ends after it): a prefill starting where another ends begins
    a new group. Group numbers are increasing in time; numbers of grid points
    where no prefill starts are left empty (first point = end point).
    """
    start = trace_grid.start_idx[is_prefill]
    end = trace_grid.end_idx[is_prefill]
    n_points = trace_grid.grid.shape[0]
    across = np.bincount(start + 1, minlength=n_points + 1)[:n_points]
    across = np.cumsum(across - np.bincount(end, minlength=n_points))
    group_of_point = np.cumsum(across == 0) - 1
    group = group_of_point[start]
    n_groups = int(group_of_point[-1]) + 1
    first = np.full(n_groups, n_points - 1, dtype=np.intp)
    np.minimum.at(first, group, start)
    last = np.zeros(n_groups, dtype=np.intp)
    np.maximum.at(last, group, end)
    return group, np.minimum(first, last), last


def budget_group_mass(timeline: Timeline, prefill_tokens: np.ndarray) -> np.ndarray:
    """Missing prefill mass ``mu`` of every phase under a budget-bound engine.

    ``timeline`` must be built with ``chunk_size == token_budget``: its
    full-chunk pressure counts ``B`` per running prefill, capped at
    ``B - p_dec``. Each group's deficit (module docstring) is returned as the
    mass of the prefills that end on its last segment, shared equally, plus
    the ``n B - (B - p_dec)`` tokens the budget cap already removed there,
    which :func:`~sklearn_beta.core._corrections.budget_capped_mass` takes back
    off. 0 on every other phase.
    """
    budget = timeline.token_budget
    trace_grid = timeline.trace_grid
    is_prefill = timeline.is_prefill
    group, first, end = prefill_groups(trace_grid, is_prefill)
    n_groups = first.shape[0]
    tokens = np.bincount(group, weights=prefill_tokens[is_prefill], minlength=n_groups)

    left = np.maximum(budget - timeline.p_dec, 0.0)
    last = np.maximum(end - 1, 0)
    span = trace_grid.grid[end] - trace_grid.grid[first]
    budget_time = cumulative(left * trace_grid.seg_len)
    mean_left = np.divide(
        budget_time[end] - budget_time[first],
        span,
        out=left[last].copy(),
        where=span > 0,
    )
    # A group whose decodes leave no budget served nothing in the model
    # either: no deficit to place.
    steps = np.ceil(
        np.divide(tokens, mean_left, out=np.zeros(n_groups), where=mean_left > 0)
    )
    deficit = np.clip(steps * mean_left - tokens, 0.0, left[last])
    running = count_active(trace_grid, is_prefill)[last]
    mass = running * budget - left[last] + deficit

    phase = np.flatnonzero(is_prefill)
    ends_group = trace_grid.end_idx[phase] == end[group]
    sharing = np.bincount(group[ends_group], minlength=n_groups)
    mu = np.zeros(timeline.n_phases)
    share = mass[group[ends_group]] / sharing[group[ends_group]]
    mu[phase[ends_group]] = np.clip(share, 0.0, budget)
    return mu


def alone_prefills(timeline: Timeline) -> np.ndarray:
    """Prefills alone in their group with the decodes unchanged over their window.

    Their step count is ``ceil(P / (B - p_dec))``, known (module docstring).
    Boolean over phases; False on decodes.
    """
    trace_grid = timeline.trace_grid
    is_prefill = timeline.is_prefill
    group, _, _ = prefill_groups(trace_grid, is_prefill)
    members = np.bincount(group)
    # Changes of p_dec at the grid points strictly inside each window.
    changes = np.zeros(trace_grid.grid.shape[0])
    changes[1:-1] = timeline.p_dec[1:] != timeline.p_dec[:-1]
    changed = np.cumsum(changes)
    start = trace_grid.start_idx[is_prefill]
    end = trace_grid.end_idx[is_prefill]
    steady = changed[end - 1] == changed[start]
    left = timeline.token_budget - timeline.p_dec[start]
    alone = np.zeros(timeline.n_phases, dtype=bool)
    alone[is_prefill] = (members[group] == 1) & steady & (left > 0)
    return alone


def alone_step_counts(
    timeline: Timeline, prefill_tokens: np.ndarray, n_steps: np.ndarray
) -> np.ndarray:
    """``n_steps`` with ``ceil(P / (B - p_dec))`` on the prefills that run alone."""
    alone = alone_prefills(timeline)
    start = timeline.trace_grid.start_idx[alone]
    left = timeline.token_budget - timeline.p_dec[start]
    n_steps = n_steps.copy()
    n_steps[alone] = prefill_steps(prefill_tokens[alone], left)
    return n_steps


def capped_prefill_grants(
    timeline: Timeline,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full-chunk grants of the running prefills on the budget-capped segments.

    A chunked engine under a budget (``chunk_size < token_budget``) serves the
    running prefills in running order, ``min(C, left)`` tokens each, until
    the budget left after the decodes, ``L = B - p_dec``, is spent: on a
    segment where the ``n`` running prefills want more (``n C > L``) the
    ``floor(L / C)`` first started get ``C``, the next gets ``L mod C`` and
    the rest none (:func:`~._engine_model.prefill_grants`). The tokens are
    ``L`` whichever prefills take them, but a feature that weighs each chunk
    by its prompt (the prefill attention) depends on which ones do: the
    earliest started, which are long prompts more often than the average
    running one.

    Returns ``(phase, segment, rank, grant)`` for every running prefill on
    every capped segment, ordered by segment and rank (prefills starting
    together in row order, the engine's admission order). Short last
    chunks are left to the ``mu`` correction (:func:`capped_last_steps`).
    """
    tg = timeline.trace_grid
    chunk = float(timeline.chunk_size)
    capped = np.flatnonzero(timeline.budget_excess > 0)
    # number of capped segments before each grid point
    before = np.zeros(tg.grid.shape[0], dtype=np.intp)
    before[capped + 1] = 1
    before = np.cumsum(before)
    prefill = np.flatnonzero(timeline.is_prefill)
    prefill = prefill[np.argsort(tg.start_idx[prefill], kind="stable")]
    first = before[tg.start_idx[prefill]]
    counts = before[tg.end_idx[prefill]] - first
    offsets = np.cumsum(counts) - counts
    position = np.arange(counts.sum()) - np.repeat(offsets - first, counts)
    segment = capped[position]
    phase = np.repeat(prefill, counts)
    # within a segment, the pairs stay in start order (a stable sort)
    order = np.argsort(segment, kind="stable")
    segment, phase = segment[order], phase[order]
    rank = np.arange(segment.shape[0]) - np.searchsorted(segment, segment)
    left = np.maximum(timeline.token_budget - timeline.p_dec[segment], 0.0)
    grant = np.clip(left - rank * chunk, 0.0, chunk)
    return phase, segment, rank, grant


def _chunk_attention(prompt, grant):
    return grant * (prompt + 0.5 * grant)


def capped_last_steps(
    timeline: Timeline, prompt: np.ndarray, grants, want: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What short last chunks change on budget-capped steps.

    On a capped segment where prefills end, the last step gives each ending
    prefill only what it still wants (``want``, per phase) and the tokens it
    leaves go to the next ones in running order: the step's grants are those
    of :func:`~._engine_model.prefill_grants` with those wants. Returns, per
    phase, the tokens and the attention the step lacks against the
    full-chunk grants of :func:`capped_prefill_grants` (shared equally by
    the prefills ending there, 0 elsewhere), and the tokens each prefill
    gains from them.
    """
    chunk = float(timeline.chunk_size)
    phase, segment, _, grant = grants
    n_phases = timeline.n_phases
    ending = segment == timeline.trace_grid.end_idx[phase] - 1
    wants = np.where(ending, np.clip(want[phase], 0.0, chunk), chunk)
    total = np.cumsum(wants)
    first = np.searchsorted(segment, segment)
    before = total - wants - (total[first] - wants[first])
    left = np.maximum(timeline.token_budget - timeline.p_dec[segment], 0.0)
    last = np.clip(left - before, 0.0, wants)
    tokens = np.bincount(segment, weights=grant - last, minlength=left.shape[0])
    attention = _chunk_attention(prompt[phase], grant)
    attention -= _chunk_attention(prompt[phase], last)
    attention = np.bincount(segment, weights=attention, minlength=left.shape[0])
    n_ending = np.bincount(segment[ending], minlength=left.shape[0])
    owner, at = phase[ending], segment[ending]
    mu = np.zeros(n_phases)
    mu[owner] = tokens[at] / n_ending[at]
    missing = np.zeros(n_phases)
    missing[owner] = attention[at] / n_ending[at]
    gains = np.bincount(
        phase, weights=np.where(ending, 0.0, last - grant), minlength=n_phases
    )
    return mu, missing, gains


def capped_prefill_wants(
    timeline: Timeline,
    grants,
    steps: np.ndarray,
    prompt: np.ndarray,
    gains: np.ndarray,
) -> np.ndarray:
    """What each prefill wants on its last step, at a density.

    Under a chunked engine's budget the last chunk is not ``P - C (N - 1)``:
    capped steps gave the prefill a partial chunk or none. With ``steps``
    per segment it receives ``C`` per uncapped step and its grant of
    :func:`capped_prefill_grants` per capped one, plus the ``gains`` other
    prefills' short last chunks left it (:func:`capped_last_steps`, of the
    previous pass); its prompt less all that but its last step's grant is
    what its last step wants.
    """
    chunk = float(timeline.chunk_size)
    phase, segment, _, grant = grants
    tg = timeline.trace_grid
    capped = timeline.budget_excess > 0
    received = chunk * phase_integrals(tg, np.where(capped, 0.0, steps))
    received += np.bincount(
        phase, weights=grant * steps[segment], minlength=timeline.n_phases
    )
    last_grant = np.full(timeline.n_phases, chunk)
    ending = segment == tg.end_idx[phase] - 1
    last_grant[phase[ending]] = grant[ending]
    return prompt - (received + gains - last_grant)


# --- the chunks of a prefill group, for the step features -------------------


def _left(timeline: Timeline) -> np.ndarray:
    """Prompt tokens a step may take on each segment, ``max(B - p_dec, 0)``."""
    return np.maximum(timeline.token_budget - timeline.p_dec, 0.0)


def serving_order(timeline: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """The prefills in the order a budget-bound engine serves them, and
    their groups (:func:`prefill_groups`).

    The engine gives each step's budget to the running prompts in admission
    order, each taking all it still needs, so a prompt ends no earlier than
    one admitted before it: order by start, then end (then row).
    """
    tg = timeline.trace_grid
    group, _, _ = prefill_groups(tg, timeline.is_prefill)
    prefill = np.flatnonzero(timeline.is_prefill)
    order = np.lexsort((tg.end_idx[prefill], tg.start_idx[prefill]))
    return prefill[order], group[order]


def served_prefill(timeline: Timeline, phase: np.ndarray) -> np.ndarray:
    """The prefill each segment's full steps serve (-1: none), with ``phase``
    in serving order (:func:`serving_order`).

    It is the first one in that order still running: every prompt before it
    has ended, and it takes the whole ``B - p_dec`` of every step of the
    segment but, where it ends, its last.
    """
    tg = timeline.trace_grid
    segments = np.arange(tg.n_segments)
    # ends are monotone in serving order in the engine; the running maximum
    # keeps the search valid on traces where they are not
    ends = np.maximum.accumulate(tg.end_idx[phase]) if phase.size else phase
    first = np.searchsorted(ends, segments, side="right")
    served = np.full(tg.n_segments, -1, dtype=np.intp)
    inside = first < phase.shape[0]
    candidate = phase[first[inside]]
    running = tg.start_idx[candidate] <= segments[inside]
    served[segments[inside][running]] = candidate[running]
    served[_left(timeline) <= 0] = -1
    return served


def group_full_pressures(
    timeline: Timeline, prompt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step prefill attention and prefills served on the full steps of
    a budget-bound engine: ``L (P_f + L / 2)`` and 1 on a segment whose
    steps serve prefill ``f`` (:func:`served_prefill`), ``L = B - p_dec``."""
    phase, _ = serving_order(timeline)
    served = served_prefill(timeline, phase)
    left = _left(timeline)
    on = served >= 0
    attention = np.where(on, left * (prompt[np.maximum(served, 0)] + 0.5 * left), 0.0)
    return attention, on.astype(np.float64)


def group_mean_left(timeline: Timeline) -> np.ndarray:
    """``B - p_dec`` averaged over each prefill group's time (its last
    segment's for a group of no length), per group."""
    tg = timeline.trace_grid
    _, first, end = prefill_groups(tg, timeline.is_prefill)
    left = _left(timeline)
    span = tg.grid[end] - tg.grid[first]
    budget_time = cumulative(left * tg.seg_len)
    return np.divide(
        budget_time[end] - budget_time[first],
        span,
        out=left[np.maximum(end - 1, 0)].copy(),
        where=span > 0,
    )


def _group_positions(group: np.ndarray, prompt: np.ndarray):
    """Whether each prefill (in serving order) starts its group, and the
    prompt tokens of its group up to and including it."""
    new_group = np.ones(group.shape[0], dtype=bool)
    new_group[1:] = group[1:] != group[:-1]
    total = np.cumsum(prompt)
    base = (total - prompt)[new_group][np.cumsum(new_group) - 1]
    return new_group, total - base


def _last_step_offsets(timeline, group, first, segment, steps):
    """Budget of a group's steps before ``segment`` and the width of the
    step grid there: at the density ``steps`` (per segment), the budget of
    every step of the group so far and the segment's ``B - p_dec``; without
    it, none and the group's mean ``B - p_dec`` (:func:`group_mean_left`)."""
    left = _left(timeline)
    if steps is None:
        return np.zeros(first.shape[0]), group_mean_left(timeline)[group[first]]
    _, group_first, _ = prefill_groups(timeline.trace_grid, timeline.is_prefill)
    # grid points are step boundaries: every segment holds a whole number
    # of steps, at least one, which the density estimates (a prompt's last
    # step on a short segment lasts far less than a full one)
    capacity = cumulative(np.maximum(np.rint(steps), 1.0) * left)
    return capacity[segment] - capacity[group_first[group[first]]], left[segment]


def _prompt_runs(timeline: Timeline, prompt: np.ndarray, steps):
    """The runs of a group's prompts that end together (on one grid point),
    in serving order: the prompts (``phase``, their ``group`` and tokens
    ``p``), each run's ``first`` and ``last`` positions in that order, its
    ``segment`` (the one before the grid point), and where the first
    prompt's end falls on the chunk grid: its ``position`` past the budget
    of the group's steps before the segment, and the grid's width there
    (:func:`group_last_steps`). None without prefills."""
    tg = timeline.trace_grid
    phase, group = serving_order(timeline)
    if phase.shape[0] == 0:
        return None
    p = prompt[phase]
    end = tg.end_idx[phase]
    new_group, reach = _group_positions(group, p)
    run = new_group.copy()
    run[1:] |= end[1:] != end[:-1]
    first = np.flatnonzero(run)
    last = np.append(first[1:], phase.shape[0]) - 1
    segment = end[first] - 1
    offset, grid = _last_step_offsets(timeline, group, first, segment, steps)
    grid = np.where(grid > 0, grid, 1.0)
    position = reach[first] - offset
    return phase, group, p, reach, first, last, segment, position, grid


def group_last_steps(
    timeline: Timeline, prompt: np.ndarray, steps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the last step of each prompt of a budget-bound engine takes
    back from the full steps of :func:`group_full_pressures`.

    A group serves its prompts one after the other, each step ``L = B -
    p_dec`` tokens: the concatenated prompts cut into chunks of ``L``. The
    step where prompts end (a grid point, so the last step of the segment
    before it) gives the first of them its last chunk ``b``, the next ones
    ending there their whole prompts, and the rest to the next prompt of the
    group (its first chunk ``a``), or to nobody at the group's end (its
    deficit). ``b`` is where the prompt's end falls on the chunk grid: its
    group's prompt tokens up to it less the budget of the group's steps
    before the segment, modulo ``L``; that budget is the density's
    (``steps`` per segment: exact at the engine's betas), or without one
    0 with the group's mean ``L`` as the grid (exact while the decodes do
    not change during the group, :func:`budget_group_mass`'s
    approximation).

    Returns, per segment, the prompt tokens, prefill attention and prefills
    served that the full steps over-count on the last step (the attention
    and served counts may be negative: the next prompt can be longer, and
    several are served).
    """
    n_seg = timeline.trace_grid.n_segments
    runs = _prompt_runs(timeline, prompt, steps)
    if runs is None:
        return np.zeros(n_seg), np.zeros(n_seg), np.zeros(n_seg)
    phase, group, p, reach, first, last, segment, position, grid = runs
    width = _left(timeline)[segment]
    own = position - grid * (np.ceil(position / grid) - 1.0)
    own = np.clip(own, 0.0, np.minimum(width, p[first]))
    middle = reach[last] - reach[first]
    rest = np.maximum(width - own - middle, 0.0)
    after = np.minimum(last + 1, phase.shape[0] - 1)
    has_next = (last + 1 < phase.shape[0]) & (group[after] == group[last])
    p_next = np.where(has_next, p[after], 0.0)
    gets = np.minimum(rest, p_next)
    square = np.cumsum(1.5 * p * p)
    attention = own * (p[first] + 0.5 * own) + (square[last] - square[first])
    attention += gets * (p_next + 0.5 * gets)
    full = width * (p[first] + 0.5 * width)
    served = (own > 0) + (last - first) + (gets > 0)
    on = width > 0

    def per_segment(mass):
        return np.bincount(segment[on], weights=mass[on], minlength=n_seg)

    tokens = width - own - middle - gets
    return per_segment(tokens), per_segment(full - attention), per_segment(1.0 - served)


def group_step_counts(
    timeline: Timeline, prompt: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The step count of every prefill of a budget-bound engine that the
    chunk grid of the density ``steps`` (per segment) fixes, and where it
    does (boolean per phase).

    Grid points are step boundaries, so each segment of a group holds a
    whole number of steps, at least one: the density's, rounded, as
    :func:`group_last_steps` lays the chunk grid. Where prompts end the
    tokens decide it: the segment's steps are full until the first prompt's
    end, ``ceil(x / L)`` of them, ``x`` its position past the budget of the
    group's earlier steps. A prefill's count is the sum over its window:
    exact once the density's rounding is (at the engine's betas, under 2 %
    step noise, all but about one segment in 10 000 at 10 requests/s), and
    carrying what the trace says of the prompt's steps, which a prompt that
    shares its group otherwise leaves out (docs/method.md 4.2). Prefills
    whose window holds a segment with no budget left, or no segment, are
    not fixed.
    """
    tg = timeline.trace_grid
    count = np.maximum(np.rint(steps), 1.0)
    fixed = np.zeros(timeline.n_phases, dtype=bool)
    runs = _prompt_runs(timeline, prompt, steps)
    if runs is None:
        return phase_integrals(tg, count), fixed
    *_, segment, position, grid = runs
    count[segment] = np.maximum(np.ceil(position / grid), 1.0)
    starved = phase_integrals(tg, (_left(timeline) <= 0).astype(np.float64))
    fixed[:] = timeline.is_prefill & (starved == 0) & (tg.end_idx > tg.start_idx)
    return phase_integrals(tg, count), fixed
