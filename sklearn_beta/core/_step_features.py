"""Step models: additive step features and their exposures on the grid.

A step lasts ``sum_k beta_k * f_k(batch)`` over features that add up over the
requests of the step (docs/method.md, section 5.1):

==================  =====================================================
``steps``           1 per step.
``prefill_tokens``  ``T_p``: prompt tokens the step prefills.
``prefill_attention``  ``A_p = sum t * (s + t / 2)`` over the step's
                    prefill chunks (``t`` tokens of a prompt of ``s``).
``decode_tokens``   ``T_d``: running decodes (one token each).
``decode_context``  ``C_d = sum c``: each decode's context, ``P + k - 1``
                    in its ``k``-th decode step.
``batch_size``      ``B``: requests running (admitted, not finished).
==================  =====================================================

A phase's exposure to a feature is the sum of the feature over the steps
inside the phase, estimated from the same grid and phase-local step density
as the published three (:func:`feature_exposures`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._budget import capped_prefill_grants, group_full_pressures, group_last_steps
from ._corrections import budget_capped_mass, fixed_correction_mass
from ._engine_model import budget_bound
from ._grid import PhaseIntegrals, Timeline, count_active

__all__ = [
    "PUBLISHED_FEATURES",
    "STEP_FEATURES",
    "STEP_MODELS",
    "check_step_model",
    "feature_exposures",
    "full_step_beta",
]

#: Every step feature, in the canonical order of the engine's beta vector.
STEP_FEATURES = (
    "steps",
    "prefill_tokens",
    "prefill_attention",
    "decode_tokens",
    "decode_context",
    "batch_size",
)
#: The published model's features, in the order of ``(beta0, beta1, beta2)``.
PUBLISHED_FEATURES = ("steps", "prefill_tokens", "decode_tokens")
#: Named step models.
STEP_MODELS = {
    "published": PUBLISHED_FEATURES,
    "attention": (
        "steps",
        "prefill_tokens",
        "prefill_attention",
        "decode_tokens",
        "decode_context",
    ),
}


def check_step_model(step_model) -> tuple[str, ...]:
    """The features of a step model: a name of :data:`STEP_MODELS` or a list
    of distinct names of :data:`STEP_FEATURES` (the betas' order)."""
    if isinstance(step_model, str):
        if step_model in STEP_MODELS:
            return STEP_MODELS[step_model]
        if step_model == "trained-physics":
            raise ValueError(
                "step_model='trained-physics' is not wired into the step "
                "features yet; use 'published', 'attention' or a list of "
                f"features from {list(STEP_FEATURES)}."
            )
        raise ValueError(
            f"Unknown step_model {step_model!r}; expected one of "
            f"{sorted(STEP_MODELS)} or a list of features from "
            f"{list(STEP_FEATURES)}."
        )
    if not isinstance(step_model, Sequence) or len(step_model) == 0:
        raise ValueError(
            "step_model must be a name or a non-empty list of features from "
            f"{list(STEP_FEATURES)}; got {step_model!r}."
        )
    features = tuple(step_model)
    unknown = [f for f in features if f not in STEP_FEATURES]
    if unknown:
        raise ValueError(
            f"step_model has unknown feature(s) {unknown}; the features are "
            f"{list(STEP_FEATURES)}."
        )
    if len(set(features)) != len(features):
        raise ValueError(f"step_model lists a feature twice: {list(features)}.")
    return features


def full_step_beta(features: Sequence[str], beta) -> np.ndarray:
    """The six coefficients of :data:`STEP_FEATURES` from a model's betas
    (zero for the features the model does not have)."""
    beta = np.asarray(beta, dtype=np.float64)
    if beta.shape != (len(features),):
        raise ValueError(
            f"beta must hold one coefficient per feature of the step model "
            f"{list(features)}, got {beta.tolist()!r}."
        )
    full = np.zeros(len(STEP_FEATURES))
    full[[STEP_FEATURES.index(f) for f in features]] = beta
    return full


def request_prompts(
    request: np.ndarray, is_prefill: np.ndarray, prefill_tokens: np.ndarray
) -> np.ndarray:
    """Each phase's request prompt ``P_r`` (its prefill row's tokens), decode
    rows included."""
    per_request = np.bincount(
        request, weights=np.where(is_prefill, prefill_tokens, 0.0)
    )
    return per_request[request]


def _active_sum(timeline: Timeline, mask: np.ndarray, weight: np.ndarray):
    """``sum of weight`` over the phases in ``mask`` active on each segment
    (a weighted difference array, as :func:`count_active` counts)."""
    tg = timeline.trace_grid
    n_points = tg.grid.shape[0]
    start, end, w = tg.start_idx[mask], tg.end_idx[mask], weight[mask]
    delta = np.bincount(start, weights=w, minlength=n_points)
    delta -= np.bincount(end, weights=w, minlength=n_points)
    return np.cumsum(delta[:-1])


def attention_pressure(timeline: Timeline, prompt: np.ndarray) -> np.ndarray:
    """Full-chunk prefill attention per step, ``sum_r g_r (P_r + g_r/2)``
    over the active prefills: ``g_r = C`` each, and on a segment a token
    budget caps, the grants of the engine's running order
    (:func:`~._budget.capped_prefill_grants`)."""
    chunk = float(timeline.chunk_size)
    full = chunk * (prompt + 0.5 * chunk)
    pressure = _active_sum(timeline, timeline.is_prefill, full)
    if timeline.budget_excess is None:
        return pressure
    phase, segment, _, grant = capped_prefill_grants(timeline)
    capped = timeline.budget_excess > 0
    pressure[capped] = np.bincount(
        segment,
        weights=grant * (prompt[phase] + 0.5 * grant),
        minlength=pressure.shape[0],
    )[capped]
    return pressure


def attention_missing_mass(timeline: Timeline, prompt: np.ndarray) -> np.ndarray:
    """Attention a prefill's partial last chunk lacks: ``C (P + C/2) - rho
    (P + rho/2)`` with ``rho = C - mu`` (0 without a missing mass)."""
    chunk = float(timeline.chunk_size)
    rho = chunk - timeline.mu
    missing = chunk * (prompt + 0.5 * chunk) - rho * (prompt + 0.5 * rho)
    return np.where(timeline.is_prefill & (timeline.mu > 0), missing, 0.0)


def budget_capped_attention(
    attention_mass: np.ndarray, token_mass: np.ndarray, timeline: Timeline
) -> np.ndarray:
    """The missing attention left where a token budget already capped the
    pressure: the share of the missing tokens the cap left
    (:func:`~._corrections.budget_capped_mass`)."""
    if timeline.budget_excess is None:
        return attention_mass
    capped = budget_capped_mass(token_mass, timeline)
    kept = np.divide(capped, token_mass, out=np.ones_like(capped), where=token_mass > 0)
    return attention_mass * kept


def attention_mass_per_segment(
    timeline: Timeline, prompt: np.ndarray, correction_mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Prefill attention per segment: the full-chunk pressure's mass (to be
    weighted by each phase's step density) and the partial last chunks'
    missing attention, placed like ``mu`` (section 4)."""
    tg = timeline.trace_grid
    if budget_bound(timeline.chunk_size, timeline.token_budget):
        # prefill groups: each step's budget goes to one prompt at a time
        pressure, _ = group_full_pressures(timeline, prompt)
        return pressure * tg.seg_len, group_last_steps(timeline, prompt)[1]
    missing = attention_missing_mass(timeline, prompt)
    correction = fixed_correction_mass(
        correction_mode, tg, timeline.is_prefill, missing
    )
    token_mass = fixed_correction_mass(
        correction_mode, tg, timeline.is_prefill, timeline.mu
    )
    correction = budget_capped_attention(correction, token_mass, timeline)
    return attention_pressure(timeline, prompt) * tg.seg_len, correction


def batch_mass_per_segment(
    timeline: Timeline, prompt: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Requests served per segment: the mass of the full steps' count (to
    be weighted by each phase's step density) and what the last steps take
    back (None: nothing).

    Every running phase is served on every step, but under a budget-bound
    engine a prompt waiting behind another in its group gets no tokens:
    the full steps serve the decodes and one prompt, the step where prompts
    end those ending and the next (:func:`~._budget.group_last_steps`).
    """
    tg = timeline.trace_grid
    if not budget_bound(timeline.chunk_size, timeline.token_budget):
        return count_active(tg) * tg.seg_len, None
    if prompt is None:
        raise ValueError(
            "The 'batch_size' exposure of a budget-bound engine needs the "
            "'prefill_tokens' column (which prompts share a step)."
        )
    _, served = group_full_pressures(timeline, prompt)
    return (timeline.p_dec + served) * tg.seg_len, group_last_steps(timeline, prompt)[2]


def context_mass_per_segment(
    timeline: Timeline, prompt: np.ndarray, step_density: np.ndarray
) -> np.ndarray:
    """``int C_d(t) dt`` per segment, with ``C_d(t) = sum_r (P_r - 1/2 +
    lam_r (t - t_rs))`` over the active decodes.

    A decode's context grows by one token per step, ``lam_r = N_r / l_r``
    steps per time unit, so the pressure is piecewise linear: a constant part
    ``sum (P_r - 1/2 - lam_r t_rs)`` and a slope ``sum lam_r``, each
    piecewise constant, integrated exactly at the segment's midpoint. The
    ``k``-th decode step reads ``P + k - 1`` tokens while the steps run grow
    from ``k - 1`` to ``k`` during it, ``k - 1/2`` on average.
    """
    tg = timeline.trace_grid
    is_decode = ~timeline.is_prefill
    t_start = tg.grid[tg.start_idx]
    constant = _active_sum(timeline, is_decode, prompt - 0.5 - step_density * t_start)
    slope = _active_sum(timeline, is_decode, step_density)
    midpoint = 0.5 * (tg.grid[:-1] + tg.grid[1:])
    return (constant + slope * midpoint) * tg.seg_len


def feature_exposures(
    timeline: Timeline,
    step_density: np.ndarray,
    published: np.ndarray,
    prompt: np.ndarray | None,
    features: Sequence[str],
    correction_mode: str,
) -> np.ndarray:
    """Each phase's exposure to each feature, shape (n_phases, len(features)).

    ``published`` is the baseline design ``[N_i, A_pf_i, A_dec_i]`` (the
    ``steps``, ``prefill_tokens`` and ``decode_tokens`` exposures); the
    others are ``lam_i`` times the integral of the feature's pressure over
    the phase window, less the partial chunks' missing attention.
    """
    needs_prompt = {"prefill_attention", "decode_context"} & set(features)
    if needs_prompt and prompt is None:
        raise ValueError(
            f"The step features {sorted(needs_prompt)} need the "
            "'prefill_tokens' column (each request's prompt length)."
        )
    out = np.empty((timeline.n_phases, len(features)), order="F")
    integrals = PhaseIntegrals(timeline.trace_grid)
    for k, name in enumerate(features):
        if name in PUBLISHED_FEATURES:
            out[:, k] = published[:, PUBLISHED_FEATURES.index(name)]
            continue
        correction = None
        if name == "prefill_attention":
            mass, correction = attention_mass_per_segment(
                timeline, prompt, correction_mode
            )
        elif name == "decode_context":
            mass = context_mass_per_segment(timeline, prompt, step_density)
        else:  # batch_size
            mass, correction = batch_mass_per_segment(timeline, prompt)
        integrals(mass, out=out[:, k])
        out[:, k] *= step_density
        if correction is not None:
            out[:, k] -= integrals(correction)
    return out
