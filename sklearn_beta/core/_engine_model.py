"""One model of the engine: vLLM V1's per-step grants and a phase's step count.

Every consumer of the engine's scheduling reads it from here: the step loop
(:mod:`sklearn_beta.engine._loop`, shared by the simulator and the replay),
the analytic exposures (``core._grid``, ``core._budget``, ``core._corrections``,
``estimators._exposure``) and the engine search (``engine_config._search``).
It sits in the core, below all of them, so that the exposures read it without
depending on the engine.

* **Per-step grants** (:func:`prefill_grants`): every running decode gets its
  token first; running prefills then get ``min(chunk, prompt left)`` tokens
  each in running (admission) order until the token budget left after the
  decodes is spent.
* **The per-step prefill cap** (:func:`effective_chunk_size`): the most prompt
  tokens one request can take in a step, the smallest of the chunk size,
  vLLM's ``long_prefill_token_threshold`` and the token budget.
* **Step counts**: a prefill of ``P`` tokens runs ``ceil(P / C)`` steps
  (without a binding budget), a decode phase one step per decode token.
* **The decode convention** (:func:`decode_steps`): the last prefill step emits
  the first output token, so a decode phase counting ``D`` tokens runs ``D``
  steps when ``decode_tokens`` leaves that token out (the default) and
  ``D - 1`` when it counts it (``decode_tokens_include_first=True``).
* **KV blocks** (:func:`kv_blocks`): a request holding ``t`` tokens of context
  (prompt plus generated) occupies ``ceil(t / block_size)`` blocks.

The grant function is written in the numpy subset numba compiles; with numba
installed it is compiled inside the loop, otherwise it runs as numpy.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

try:  # compiled inside the numba loop, plain numpy from Python
    from numba.extending import register_jitable
except ImportError:  # pragma: no cover - exercised where numba is absent

    def register_jitable(function):
        return function


#: A ``token_budget`` / chunk / KV capacity of None inside the loop: no cap.
NO_CAP = np.iinfo(np.int64).max // 4


def budget_bound(chunk_size: int, token_budget: int | None) -> bool:
    """Whether the budget, not the chunk size, caps every prompt's share of a step."""
    return token_budget is not None and chunk_size >= token_budget


def effective_chunk_size(
    chunk_size: int | None,
    token_budget: int | None,
    long_prefill_token_threshold: int | None = None,
    *,
    longest: int | None = None,
) -> int:
    """Most prompt tokens one request can prefill in a step.

    The smallest of the chunk size, the long-prefill threshold (vLLM's
    per-request per-step cap) and the token budget; with none of them, the
    longest prompt (``longest``), which one step then prefills whole.
    """
    caps = [
        int(v)
        for v in (chunk_size, long_prefill_token_threshold, token_budget)
        if v is not None
    ]
    if caps:
        return min(caps)
    if longest is None:
        raise ValueError("No chunk, threshold or budget: give the longest prompt.")
    return int(longest)


def loop_caps(
    chunk_size: int | None,
    token_budget: int | None,
    long_prefill_token_threshold: int | None = None,
) -> tuple[int, int]:
    """``(chunk, budget)`` as the step loop takes them: :data:`NO_CAP` for None.

    The loop's chunk is the per-request per-step cap, the smaller of the chunk
    size and the long-prefill threshold; the budget caps the step as a whole.
    """
    caps = [int(v) for v in (chunk_size, long_prefill_token_threshold) if v is not None]
    chunk = min(caps) if caps else NO_CAP
    return chunk, NO_CAP if token_budget is None else int(token_budget)


@register_jitable
def prefill_grants(pf_left, n_decoding, chunk, budget):
    """Prompt tokens each running request gets this step (0 for decodes).

    ``pf_left`` is the prompt left per running request in running order (0
    for a decode); the ``n_decoding`` decodes were served first, one token
    each, and the prefills share what is left of ``budget`` in that order.
    """
    grant = np.minimum(pf_left, chunk)
    if budget < NO_CAP:
        before = np.cumsum(grant) - grant
        grant = np.minimum(np.maximum(budget - n_decoding - before, 0), grant)
    return grant


def budgeted_prefill_pressure(
    p_pf_full: np.ndarray, p_dec: np.ndarray, token_budget: int | None
) -> np.ndarray:
    """Prefill pressure under a per-step token budget ``B``.

    The analytic form of :func:`prefill_grants`: a vLLM-style scheduler serves
    the running decodes first and fills the rest of the budget with prefill
    chunks, so a step holds
    ``min(C * #prefills, max(B - p_dec, 0))`` prefill tokens. Without a budget
    this is ``p_pf_full``.
    """
    if token_budget is None:
        return p_pf_full
    if (
        isinstance(token_budget, bool)
        or not isinstance(token_budget, Integral)
        or token_budget < 1
    ):
        raise ValueError(
            f"token_budget must be a positive integer or None, got {token_budget!r}."
        )
    return np.minimum(p_pf_full, np.maximum(token_budget - p_dec, 0.0))


@register_jitable
def kv_blocks(tokens, block_size):
    """KV-cache blocks that ``tokens`` tokens of context occupy."""
    return -(-tokens // block_size)


def prefill_steps(prefill_tokens, chunk_size: int):
    """Steps of a prefill of ``P`` tokens served ``chunk_size`` at a time."""
    return np.ceil(prefill_tokens / chunk_size)


def decode_steps(decode_tokens, include_first: bool):
    """Steps of decode phases counting ``decode_tokens`` output tokens.

    With ``include_first`` the count holds the first output token, which the
    last prefill step emitted: the decode phase runs one step fewer.
    """
    decode_tokens = np.asarray(decode_tokens)
    return decode_tokens - 1 if include_first else decode_tokens


def step_counts(
    is_prefill: np.ndarray,
    prefill_tokens: np.ndarray,
    decode_tokens: np.ndarray,
    chunk_size: int,
    n_steps: np.ndarray | None = None,
) -> np.ndarray:
    """Steps per phase: ``ceil(P / C)`` for a prefill, ``D`` for a decode.

    ``decode_tokens`` counts decode steps (see :func:`exclude_first_decode_token`
    for the other convention). An observed ``n_steps`` (the optional
    ``N_steps`` column) is authoritative. A token array is ``None`` only
    where validation found it not needed.
    """
    if n_steps is not None:
        return np.asarray(n_steps, dtype=np.float64)
    prefill = (
        0.0 if prefill_tokens is None else prefill_steps(prefill_tokens, chunk_size)
    )
    decode = 0.0 if decode_tokens is None else decode_tokens
    return np.where(is_prefill, prefill, decode).astype(np.float64)


def exclude_first_decode_token(
    is_prefill: np.ndarray, decode_tokens: np.ndarray
) -> np.ndarray:
    """Decode tokens without the first output token, which a prefill step made.

    Exports that count every output token in ``decode_tokens`` include the
    one the last prefill step emits; the decode phase then runs ``D - 1``
    steps. A decode row left with no step is an error: its phase has a
    duration but would hold no step.
    """
    decode_tokens = np.asarray(decode_tokens, dtype=np.float64)
    bad = ~is_prefill & (decode_tokens < 2)
    if bad.any():
        rows = np.flatnonzero(bad)[:5]
        raise ValueError(
            "With decode_tokens_include_first=True a decode phase runs "
            "decode_tokens - 1 steps, so column 'decode_tokens' must be at least "
            f"2 on decode rows; {int(bad.sum())} row(s) are not, first at "
            f"positions {rows.tolist()}: {decode_tokens[rows].tolist()}. Drop "
            "these phases, or check which convention the export uses."
        )
    return np.where(is_prefill, decode_tokens, decode_steps(decode_tokens, True))
