"""The engine loop shared by the simulator and the replay (vLLM V1 semantics).

One busy loop per engine instance; a fleet is a set of independent instances.
What a step grants is the engine model's (:mod:`sklearn_beta.core._engine_model`).
Every step, in this order:

1. with a bounded KV cache (``num_gpu_blocks`` blocks of ``block_size``
   tokens), every running decode takes the block its next token needs; when
   none is free, the most recently admitted running request is preempted:
   its blocks are freed and it goes back to the front of the waiting queue
   (a step that preempts admits nobody, as vLLM's scheduler does);
2. waiting requests (preempted ones first, then arrivals by the step's
   start) are admitted first come, first served while fewer than
   ``max_num_seqs`` run and, with a bounded KV cache, while the step's token
   budget has room and the free blocks hold the request's prompt plus any
   output to recompute (an arrival during a step joins at the next boundary);
3. every running decode gets one token;
4. running prefills get ``min(chunk, prompt left)`` tokens each, in running
   order, until the token budget left after the decodes is spent; a
   readmitted request prefills its prompt and its generated tokens again
   (less its prefix-cache hits), and its last prefill step emits its next
   token;
5. the step lasts ``(beta0 + beta1 * T_pf + beta2 * T_dec) * noise``, the
   noise factor ``exp(sigma Z - sigma^2 / 2)`` of mean one, so that the betas
   are the mean step-time coefficients a least-squares fit estimates. A step
   model with more features (``core._step_features``) adds ``beta_A * A_p +
   beta_C * C_d + beta_B * B``: the prefill attention ``sum t (s + t/2)``
   over the step's chunks (``t`` tokens of a prompt of ``s``), the decode
   context ``sum c`` (``c = P + k - 1`` in a request's ``k``-th decode step)
   and the requests served. ``C_d`` grows by ``T_dec`` a step, so the steps
   of a block lengthen linearly.

A request that finishes its prompt decodes from the next step on and leaves
after its decode steps (at once when it has none). Between scheduling events
the batch repeats the same step, so the loop advances a block of identical
steps at a time (with a bounded KV cache a block also ends before the step
whose new blocks would not fit); step times are accumulated one step after
another (a sequential cumulative sum from the block's start), so they do not
depend on where blocks are cut: a replay whose blocks are cut at other
arrivals gives the same floating-point times.

A closed-loop client (``max_in_flight``) sends a request at its intended
arrival while fewer than ``max_in_flight`` of the instance's requests are
outstanding, else when one completes (its last token reported); a request
reaches the queue ``delay`` after it is sent.

:func:`_run_instance` is written in the numpy subset that numba compiles. With
numba installed it runs compiled (`pip install sklearn-beta[fast]`); without,
the same function runs as plain numpy, with the same results.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..core._engine_model import NO_CAP, kv_blocks, loop_caps, prefill_grants
from ..core._step_features import (
    PUBLISHED_FEATURES,
    STEP_FEATURES,
    check_step_model,
    full_step_beta,
)

try:  # optional accelerator: the same loop, compiled
    import numba
    from numba.extending import register_jitable
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

    def register_jitable(function):
        return function


#: Steps until an event for a request that has none in a block.
_NO_EVENT = np.iinfo(np.int64).max
_NOISE_BLOCK = 4096
#: Which implementation runs :func:`_run_instance`: "auto" (numba when
#: installed), "numba" or "numpy". Tests switch it to compare both.
BACKEND = "auto"


@dataclass(frozen=True)
class EngineSettings:
    """The scheduler's settings beyond the step grants' chunk and budget.

    ``num_gpu_blocks`` None is an unbounded KV cache (no admission stall, no
    preemption); ``long_prefill_token_threshold`` caps a request's prefill
    tokens per step; ``max_in_flight`` 0 is an open-loop client; ``delay`` is
    the time from a request's send to its arrival in the engine's queue;
    ``done_offset`` the time from its last token to the client seeing it.
    Either is one float for every request or an ndarray of one per request
    (input order): then requests join the queue in the order they arrive,
    not the order they were sent, and a closed-loop client reuses the slots
    in the order it sees requests finish.
    """

    block_size: int = 16
    num_gpu_blocks: int | None = None
    long_prefill_token_threshold: int | None = None
    max_in_flight: int = 0
    delay: float | np.ndarray = 0.0
    done_offset: float | np.ndarray = 0.0


@dataclass(frozen=True)
class EngineRun:
    """What the engine did: per request (input order) and per step.

    Every request is served, so no request time is NaN. Steps are ordered
    by instance, then time; the step fields are None unless recorded.
    """

    admitted: np.ndarray  # start of the step that first admitted the request
    prefill_start: np.ndarray  # start of the first step serving its prompt
    prefill_end: np.ndarray  # end of the step emitting its first token
    decode_end: np.ndarray  # end of the step emitting its last token
    send: np.ndarray  # when the client sent it (its intended arrival if open loop)
    arrival: np.ndarray  # when it joined the engine's queue (send + delay)
    preemptions: np.ndarray  # times it was preempted
    step_instance: np.ndarray | None
    step_start: np.ndarray | None
    step_end: np.ndarray | None
    step_prefill_tokens: np.ndarray | None
    step_decode_tokens: np.ndarray | None
    step_running: np.ndarray | None
    step_kv_blocks: np.ndarray | None = field(default=None)
    step_prefill_attention: np.ndarray | None = field(default=None)
    step_decode_context: np.ndarray | None = field(default=None)
    step_batch_size: np.ndarray | None = field(default=None)


def run_engine(
    arrival: np.ndarray,
    prompt: np.ndarray,
    decode_steps: np.ndarray,
    instance: np.ndarray,
    *,
    beta,
    chunk_size: int | None,
    token_budget: int | None,
    max_num_seqs,
    noise_normals=None,
    noise: float = 0.0,
    noise_outliers=None,
    record_steps: bool = False,
    record_features: bool = False,
    cached_tokens: np.ndarray | None = None,
    settings: EngineSettings | None = None,
    observed_ends: np.ndarray | None = None,
) -> EngineRun:
    """Run every instance's busy loop over its requests.

    Parameters
    ----------
    arrival : ndarray of float, shape (n,)
        Arrival times (the intended ones under a closed-loop client, whose
        sends may lag them); an instance serves its requests in arrival
        order (ties in input order).
    prompt : ndarray of int, shape (n,)
        Prompt tokens (at least 1).
    decode_steps : ndarray of int, shape (n,)
        Decode steps after the prefill (0 allowed).
    instance : ndarray of int, shape (n,)
        Instance codes ``0 .. n_instances - 1``.
    beta : sequence of 3 or 6 floats
        ``(beta0, beta1, beta2)``, or the six coefficients of
        ``core._step_features.STEP_FEATURES`` (steps, prefill tokens,
        prefill attention, decode tokens, decode context, batch size).
    chunk_size, token_budget : int or None
        Per-request prefill chunk and per-step token budget; None: no cap.
    max_num_seqs : int or ndarray of int (one per instance)
        Not above ``token_budget``, so that every decode gets its token.
    noise_normals : callable or None
        ``noise_normals(size)`` returns that many standard normals, the next
        ones of one stream; step ``j`` of the fleet (instance-major, in time
        order) takes the ``j``-th. None: noise-free.
    noise : float
        Standard deviation of the log of each step's mean-one noise factor
        ``exp(noise * Z - noise**2 / 2)``.
    noise_outliers : tuple (share, factor, uniforms) or None
        Heavy-tailed steps: a step whose uniform draw (``uniforms(size)``,
        the next ones of a stream, drawn with the normals) is below
        ``share`` lasts ``factor`` times its noisy time. None: no outliers.
    record_steps : bool
        Also return the step table.
    record_features : bool
        With ``record_steps``, also each step's prefill attention, decode
        context and batch size (the default step table does without them,
        at the default's speed).
    cached_tokens : ndarray of int, shape (n,), or None
        Prompt tokens found in the prefix cache, which skip prefill (below
        the prompt: its last token is always computed). None: no hits.
    settings : EngineSettings or None
        KV cache, long-prefill threshold and client; None: the defaults.
    observed_ends : ndarray of float, shape (2, n), or None
        Observed times of each request's first and last token on the
        engine's clock (NaN: none). A block of steps that ends one of them
        ends at their mean instead of its model time (clamped to leave its
        last step a positive duration), so that the replay runs on the
        trace's clock: the schedule-consistent fit
        (``engine_config._schedule``) replays with it. None: model times only.
    """
    settings = EngineSettings() if settings is None else settings
    n_inst = int(instance.max()) + 1 if instance.shape[0] else 0
    caps = np.broadcast_to(np.asarray(max_num_seqs, dtype=np.int64), (n_inst,))
    if token_budget is not None and token_budget < caps.max(initial=0):
        raise ValueError(
            f"token_budget={token_budget} must be at least max_num_seqs="
            f"{caps.max()}: every running decode needs its token each step."
        )
    cached = _check_cached(cached_tokens, prompt)
    _check_kv_fits(prompt, decode_steps, settings)
    chunk, budget = loop_caps(
        chunk_size, token_budget, settings.long_prefill_token_threshold
    )
    order = np.lexsort((np.arange(arrival.shape[0]), arrival, instance))
    bounds = np.searchsorted(instance[order], np.arange(n_inst + 1))
    times = np.full((6, arrival.shape[0]), np.nan)
    pool = _NoisePool(noise_normals, noise, noise_outliers)
    steps = []
    loop = _loop()
    for k in range(n_inst):
        rows = order[bounds[k] : bounds[k + 1]]
        if rows.shape[0] == 0:
            continue
        args = _instance_args(
            rows,
            arrival,
            prompt,
            decode_steps,
            cached,
            beta,
            chunk,
            budget,
            int(min(caps[k], rows.shape[0])),
            settings,
        )
        snap = _NO_SNAP if observed_ends is None else observed_ends[:, rows]
        snap = np.ascontiguousarray(snap, dtype=np.float64)
        guess = int(np.sum(-(-prompt[rows] // chunk)))
        guess += int(np.sum(decode_steps[rows]))
        while True:  # a noisy run that outgrows its factor pool reruns
            factors = pool.factors(guess)
            req_times, blocks, step_times, used, done = loop(
                *args,
                factors,
                snap,
                record_steps,
                record_steps and record_features,
            )
            if done:
                break
            guess = 2 * factors.shape[0]
        pool.consume(used)
        times[:, rows] = req_times
        if record_steps:
            steps.append((k, blocks, step_times))
    return _engine_run(
        times, steps, record_steps, settings.delay, record_steps and record_features
    )


def _instance_args(
    rows, arrival, prompt, decode_steps, cached, beta, chunk, budget, cap, settings
) -> tuple:
    """One instance's requests and the engine's limits, as the loop takes
    them (contiguous arrays, then scalars)."""
    num_gpu_blocks = settings.num_gpu_blocks
    return (
        np.ascontiguousarray(arrival[rows], dtype=np.float64),
        np.ascontiguousarray(prompt[rows], dtype=np.int64),
        np.ascontiguousarray(decode_steps[rows], dtype=np.int64),
        np.ascontiguousarray(cached[rows], dtype=np.int64),
        *(float(b) for b in _loop_beta(beta)),
        chunk,
        budget,
        cap,
        int(settings.block_size),
        NO_CAP if num_gpu_blocks is None else int(num_gpu_blocks),
        int(settings.max_in_flight),
        *_per_request(settings, rows, arrival.shape[0]),
    )


def _per_request(settings: EngineSettings, rows, n: int) -> tuple:
    """The instance's delays and done offsets (one per request) and whether
    they differ between requests: equal ones keep the loop's arrivals in
    send order, so it skips the sorting (and stays bit for bit the same)."""
    out = []
    for value in (settings.delay, settings.done_offset):
        full = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))
        out.append(np.ascontiguousarray(full[rows]))
    jitter = any(np.ndim(v) > 0 and np.ptp(v) > 0 for v in out)
    return (*out, bool(jitter))


def _check_cached(cached_tokens, prompt) -> np.ndarray:
    if cached_tokens is None:
        return np.zeros(prompt.shape[0], dtype=np.int64)
    cached = np.asarray(cached_tokens)
    bad = (cached < 0) | (cached >= prompt)
    if bad.any():
        rows = np.flatnonzero(bad)[:5]
        raise ValueError(
            "Prefix-cached prompt tokens must lie in [0, prompt tokens - 1] (the "
            f"last prompt token is always computed); {int(bad.sum())} request(s) "
            f"are not, first at positions {rows.tolist()}: cached "
            f"{cached[rows].tolist()} of prompts {prompt[rows].tolist()}."
        )
    return cached.astype(np.int64)


def _check_kv_fits(prompt, decode_steps, settings: EngineSettings) -> None:
    """Every request's longest context must fit the KV cache on its own."""
    if settings.num_gpu_blocks is None:
        return
    needed = kv_blocks(prompt.astype(np.int64) + decode_steps, settings.block_size)
    bad = needed > settings.num_gpu_blocks
    if bad.any():
        rows = np.flatnonzero(bad)[:5]
        raise ValueError(
            f"num_gpu_blocks={settings.num_gpu_blocks} of block_size="
            f"{settings.block_size} cannot hold {int(bad.sum())} request(s) alone "
            "(prompt plus decode tokens), first at positions "
            f"{rows.tolist()}: {needed[rows].tolist()} blocks needed."
        )


def _loop_beta(beta) -> np.ndarray:
    """The loop's six coefficients: beta0, beta1, beta2 (steps, prefill and
    decode tokens), then prefill attention, decode context and batch size."""
    beta = np.asarray(beta, dtype=np.float64)
    if beta.shape == (3,):
        return np.concatenate((beta, np.zeros(3)))
    # STEP_FEATURES order: steps, T_p, A_p, T_d, C_d, B
    return beta[[0, 1, 3, 2, 4, 5]]


def check_beta(beta) -> np.ndarray:
    """``beta`` as three floats that give every step a positive duration."""
    values = np.asarray(beta, dtype=float)
    if values.shape != (3,) or not np.all(np.isfinite(values)):
        raise ValueError(
            f"beta must be three finite numbers (beta0, beta1, beta2), got {beta!r}."
        )
    if np.any(values < 0):
        raise ValueError(f"beta must be non-negative, got {beta!r}.")
    if not (values[0] > 0 or (values[1] > 0 and values[2] > 0)):
        raise ValueError(
            f"beta={beta!r} allows zero-length steps: need beta0 > 0, or both "
            "beta1 > 0 and beta2 > 0."
        )
    return values


def check_step_beta(beta, step_model="published") -> np.ndarray:
    """The engine's coefficients of a step model: ``check_beta``'s three for
    the published model, else the six of ``STEP_FEATURES`` (zero for the
    features the model lacks), checked to give every step a positive time."""
    features = check_step_model(step_model)
    if features == PUBLISHED_FEATURES:
        return check_beta(beta)
    values = np.asarray(beta, dtype=float)
    if values.shape != (len(features),) or not np.all(np.isfinite(values)):
        raise ValueError(
            f"beta must be {len(features)} finite numbers, one per feature of "
            f"step_model {list(features)}, got {beta!r}."
        )
    if np.any(values < 0):
        raise ValueError(f"beta must be non-negative, got {beta!r}.")
    full = dict(zip(STEP_FEATURES, full_step_beta(features, values), strict=True))
    prefill = full["prefill_tokens"] > 0 or full["prefill_attention"] > 0
    decode = full["decode_tokens"] > 0 or full["decode_context"] > 0
    if not (full["steps"] > 0 or full["batch_size"] > 0 or (prefill and decode)):
        raise ValueError(
            f"beta={beta!r} of step_model {list(features)} allows zero-length "
            "steps: need steps > 0 or batch_size > 0, or a positive prefill "
            "and a positive decode coefficient."
        )
    return full_step_beta(features, values)


def _engine_run(times, steps, record_steps, delay, record_features) -> EngineRun:
    # the loop's rows: admitted, prefill start and end, decode end, send and
    # preemptions; the queue arrival is the send plus the delay, as there
    delay = np.asarray(delay, dtype=np.float64)
    times = [*times[:5], times[4] + delay, times[5].astype(np.int64)]
    if not record_steps:
        return EngineRun(*times, None, None, None, None, None, None, None)
    inst = np.concatenate([np.full(s[2].shape[0], s[0], np.int64) for s in steps])
    blocks = np.concatenate([s[1] for s in steps])
    step_times = np.concatenate([s[2] for s in steps])
    columns = 8 if record_features else 5
    per_step = np.repeat(blocks[:, 1:columns], blocks[:, 0], axis=0)
    run = EngineRun(
        *times,
        inst,
        step_times[:, 0],
        step_times[:, 1],
        *per_step[:, :4].T,
    )
    if not record_features:
        return run
    # a block's decode context grows by its decode tokens every step
    first = np.repeat(np.cumsum(blocks[:, 0]) - blocks[:, 0], blocks[:, 0])
    within = np.arange(per_step.shape[0]) - first
    return replace(
        run,
        step_prefill_attention=per_step[:, 4] / 2.0,
        step_decode_context=per_step[:, 5] + within * per_step[:, 1],
        step_batch_size=per_step[:, 6],
    )


class _NoisePool:
    """Mean-one lognormal noise factors, a prefix of one normal stream.

    ``exp(sigma Z - sigma^2 / 2)`` has mean 1: the steps' mean time is the
    model time, so least squares on the trace estimate the engine's betas
    themselves, not ``beta * exp(sigma^2 / 2)``.
    """

    def __init__(self, normals, sigma: float, outliers=None):
        self.normals = normals
        self.sigma = sigma
        self.outliers = outliers
        self.pool = np.empty(0)
        self.offset = 0

    def factors(self, size: int) -> np.ndarray:
        """The next ``size`` (or more) factors, without consuming them."""
        if self.normals is None or (self.sigma == 0 and self.outliers is None):
            return self.pool[:0]
        need = self.offset + size - self.pool.shape[0]
        if need > 0:
            normals = self.normals(max(need, _NOISE_BLOCK))
            fresh = np.exp(self.sigma * normals - 0.5 * self.sigma**2)
            if self.outliers is not None:
                # the outliers are not normalised: beta stays the typical step's
                share, factor, uniforms = self.outliers
                hit = uniforms(normals.shape[0]) < share
                fresh = np.where(hit, factor * fresh, fresh)
            self.pool = np.concatenate((self.pool, fresh))
        return self.pool[self.offset :]

    def consume(self, used: int) -> None:
        self.offset += used


def _loop():
    backend = BACKEND
    if backend == "auto":
        backend = "numpy" if numba is None else "numba"
    if backend == "numpy":
        return _run_instance
    if numba is None:
        raise ImportError("BACKEND='numba' needs numba: pip install sklearn-beta[fast]")
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = numba.njit(cache=True, nogil=True)(_run_instance)
    return _COMPILED


_COMPILED = None
#: ``observed_ends`` of a replay on model time only.
_NO_SNAP = np.empty((2, 0))


#: Rows of the running batch: request, prompt left, prompt to prefill when
#: admitted, decode steps left, tokens in the KV cache, KV blocks held.
_REQ, _PF, _PF_TOTAL, _DEC, _CTX, _HELD = 0, 1, 2, 3, 4, 5
#: Rows of the requests' token counts: prompt, decode steps, prefix-cached
#: prompt tokens, output tokens generated so far.
_PROMPT, _OUTPUT, _CACHED, _GENERATED = 0, 1, 2, 3
#: The scheduler's limits: per-request chunk, step budget, running requests,
#: KV block size.
_CHUNK, _BUDGET, _MAX_SEQS, _BLOCK = 0, 1, 2, 3


def _run_instance(
    intended,
    prompt,
    output,
    cached,
    beta0,
    beta1,
    beta2,
    beta_attention,
    beta_context,
    beta_batch,
    chunk,
    budget,
    max_num_seqs,
    block_size,
    num_blocks,
    max_in_flight,
    delay,
    done_offset,
    jitter,
    factors,
    snap,
    record,
    record_features,
):
    """One instance's busy loop over its requests, sorted by intended arrival.

    Returns the request times (6, n): admitted (first admission), prefill
    start, prefill end (first token), decode end (last token), send and
    preemptions; the blocks (n_blocks, 8): steps, T_pf, T_dec, running, KV
    blocks in use, twice the prefill attention, the first step's decode
    context and the requests served; the step times (n_steps, 2): start,
    end; the number of noise factors used, and False when ``factors`` ran
    out before the end. ``delay`` and ``done_offset`` hold one value per
    request; ``jitter`` says they differ, so that the queue (``queue``: the
    sent requests by arrival, ``qarr`` their arrivals) must be sorted.
    """
    n = intended.shape[0]
    noisy = factors.shape[0] > 0
    snapping = snap.shape[1] > 0
    kv = num_blocks < NO_CAP
    times = np.full((6, n), np.nan)
    times[5] = 0.0
    # the client: every request is sent at once (open loop), or while fewer
    # than max_in_flight are outstanding, the next when one completes
    n_sent = n if max_in_flight == 0 else min(max_in_flight, n)
    times[4, :n_sent] = intended[:n_sent]
    arrival = np.empty(n)
    arrival[:n_sent] = times[4, :n_sent] + delay[:n_sent]
    queue = np.arange(n)
    if jitter:
        queue[:n_sent] = np.argsort(arrival[:n_sent], kind="mergesort")
    qarr = np.empty(n)
    qarr[:n_sent] = arrival[queue[:n_sent]]
    first = n_sent
    released = np.empty(n - first)  # the closed-loop client's slot releases, sorted
    tokens = np.zeros((4, n), np.int64)
    tokens[_PROMPT] = prompt
    tokens[_OUTPUT] = output
    tokens[_CACHED] = cached
    limits = np.array([chunk, budget, max_num_seqs, block_size], np.int64)
    batch = np.zeros((6, max_num_seqs), np.int64)  # running, admission order
    front = np.empty(n, np.int64)  # preempted requests; the top is next
    blocks = np.empty((64 if record else 0, 8), np.int64)
    features = beta_attention != 0 or beta_context != 0 or beta_batch != 0
    step_times = np.empty((256 if record else 0, 2))
    n_front = n_blocks = n_steps = used = head = m = 0
    free = num_blocks
    clock = 0.0
    while True:
        if m == 0 and n_front == 0:
            if head == n:
                break
            clock = max(clock, qarr[head])
        preempting = False
        if kv and m > 0:
            m, free, n_front, preempting = _grow_kv(
                batch, m, free, block_size, front, n_front, times
            )
        if kv and not preempting:
            waiting = np.array([head, n_sent, n_front, free])
            m = _admit_within_kv(
                batch, m, waiting, queue, qarr, clock, tokens, front, times, limits
            )
            head, n_sent, n_front, free = waiting
        elif not kv and m < max_num_seqs and head < n_sent and qarr[head] <= clock:
            m, head = _admit_arrived(
                batch, m, head, n_sent, queue, qarr, clock, tokens, times, limits
            )
        if m == 0:  # every running request was preempted: readmit
            continue
        # grants: decodes first, then prefill chunks in running order
        decoding = batch[_PF, :m] == 0
        t_dec = np.count_nonzero(decoding)
        grant = prefill_grants(batch[_PF, :m], t_dec, chunk, budget)
        t_pf = np.sum(grant)
        dt = beta0 + beta1 * t_pf + beta2 * t_dec
        slope = 0.0
        attention2 = context = served = 0
        if features or record_features:
            attention2, context, served = _step_features(
                batch, m, grant, decoding, tokens
            )
            if features:
                # the default model's steps stay bit for bit the same
                dt += (
                    beta_attention * 0.5 * attention2
                    + beta_context * context
                    + beta_batch * served
                )
                slope = beta_context * t_dec
        k = _steps_to_event(batch, m, grant, decoding)
        if preempting:
            k = min(k, 1)  # the step after a preemption admits again
        elif kv and t_dec > 0:
            k = _steps_before_kv_full(batch, m, decoding, free, block_size, k)
        next_arrival = np.inf
        if m < max_num_seqs and n_front == 0 and head < n_sent:
            if qarr[head] > clock:
                next_arrival = qarr[head]
                k = _reach(next_arrival, clock, dt, noisy, k)
        if noisy:
            if used == factors.shape[0]:
                return times, blocks[:n_blocks], step_times[:n_steps], used, False
            k = min(k, factors.shape[0] - used)
        ends, k = _step_ends(clock, dt, k, factors, used, noisy, next_arrival, slope)
        if snapping and k > 0:
            ends[k] = _snapped_end(batch, m, k, grant, decoding, ends, snap, times)
        block_end = ends[k]
        used += k
        last = _advance(batch, m, k, grant, decoding, clock, block_end, times, kv)
        if kv:
            free -= _grow_blocks(batch, m, decoding, block_size)
            run = batch[_REQ, :m]
            tokens[_GENERATED, run[decoding]] += k
            tokens[_GENERATED, run[last]] += 1
        if record:
            block = np.array(
                [
                    k,
                    t_pf,
                    t_dec,
                    m,
                    num_blocks - free if kv else 0,
                    attention2,
                    context,
                    served,
                ]
            )
            blocks, step_times = _record(
                blocks, step_times, n_blocks, n_steps, block, ends
            )
            n_blocks += 1
            n_steps += k
        done = (decoding | last) & (batch[_DEC, :m] == 0)
        if np.any(done):
            times[3, batch[_REQ, :m][done]] = block_end
            if kv:
                free += np.sum(batch[_HELD, :m][done])
            if n_sent < n:
                seen = np.sort(block_end + done_offset[batch[_REQ, :m][done]])
                client = (intended, delay, times, arrival, queue, qarr, released)
                n_sent = _send_next(
                    client, first, head, n_sent, seen, block_end, jitter
                )
            m = _retire(batch, m, done)
        clock = block_end
    return times, blocks[:n_blocks], step_times[:n_steps], used, True


@register_jitable
def _grow_kv(batch, m, free, block_size, front, n_front, times):
    """This step's decodes take the KV block their next token needs.

    When none is free, the most recently admitted running request is
    preempted (possibly the one needing the block): its blocks are freed and
    it goes on top of the queue front. Returns ``(m, free, n_front,
    preempting)``.
    """
    decoding = batch[_PF, :m] == 0
    need = np.where(decoding, kv_blocks(batch[_CTX, :m] + 1, block_size), 0)
    grow = np.maximum(need - batch[_HELD, :m], 0)
    if np.sum(grow) <= free:
        batch[_HELD, :m] += grow
        return m, free - np.sum(grow), n_front, False
    i = 0
    while i < m:
        if grow[i] > 0:
            while free == 0:
                m -= 1
                free += batch[_HELD, m]
                front[n_front] = batch[_REQ, m]
                n_front += 1
                times[5, batch[_REQ, m]] += 1.0
                if m == i:
                    break
            if i == m:
                break
            batch[_HELD, i] += 1
            free -= 1
        i += 1
    return m, free, n_front, True


@register_jitable
def _admit_arrived(batch, m, head, n_sent, queue, qarr, clock, tokens, times, limits):
    """Admit the requests arrived by ``clock``, FCFS, while slots are free.
    Returns ``(m, head)``."""
    arrived = head + np.searchsorted(qarr[head:n_sent], clock, side="right")
    n_admit = min(limits[_MAX_SEQS] - m, arrived - head)
    new = queue[head : head + n_admit]
    rows = slice(m, m + n_admit)
    batch[_REQ, rows] = new
    batch[_PF, rows] = tokens[_PROMPT][new] - tokens[_CACHED][new]
    batch[_PF_TOTAL, rows] = batch[_PF, rows]
    batch[_DEC, rows] = tokens[_OUTPUT][new]
    times[0][new] = clock
    return m + n_admit, head + n_admit


@register_jitable
def _admit_within_kv(
    batch, m, waiting, queue, qarr, clock, tokens, front, times, limits
):
    """Admit FCFS (the preempted first) while a slot, room in the step's
    budget and the blocks of the prompt plus any output to recompute are
    free; the first that does not fit stops admission. ``waiting`` holds the
    queue's head, sent requests, preempted requests and free blocks, updated
    in place; returns the running count."""
    head, n_sent, n_front, free = waiting
    chunk = limits[_CHUNK]
    room = limits[_BUDGET] - np.count_nonzero(batch[_PF, :m] == 0)
    room -= np.sum(np.minimum(batch[_PF, :m], chunk))
    while m < limits[_MAX_SEQS] and room > 0:
        if n_front > 0:
            r = front[n_front - 1]
        elif head < n_sent and qarr[head] <= clock:
            r = queue[head]
        else:
            break
        generated = tokens[_GENERATED, r]
        need = kv_blocks(tokens[_PROMPT, r] + generated, limits[_BLOCK])
        if need > free:
            break
        if n_front > 0:
            n_front -= 1
        else:
            head += 1
        batch[_REQ, m] = r
        batch[_PF, m] = tokens[_PROMPT, r] - tokens[_CACHED, r] + generated
        batch[_PF_TOTAL, m] = batch[_PF, m]
        batch[_DEC, m] = tokens[_OUTPUT, r] - generated
        batch[_CTX, m] = tokens[_CACHED, r]
        batch[_HELD, m] = need
        free -= need
        if np.isnan(times[0, r]):
            times[0, r] = clock
        room -= min(batch[_PF, m], chunk)
        m += 1
    waiting[0] = head
    waiting[2] = n_front
    waiting[3] = free
    return m


@register_jitable
def _step_features(batch, m, grant, decoding, tokens):
    """Twice the prefill attention ``sum t (2 s + t)`` over the step's chunks
    (``s`` the whole prompt), the decode context ``sum P + D - d`` (``d``
    decode steps left: ``P + k - 1`` in the ``k``-th) and the requests served."""
    run = batch[_REQ, :m]
    grant_served = grant > 0
    prompt = tokens[_PROMPT][run]
    attention2 = np.sum(grant * (2 * prompt + grant))
    done_steps = tokens[_OUTPUT][run] - batch[_DEC, :m]
    context = np.sum(np.where(decoding, prompt + done_steps, 0))
    served = np.count_nonzero(decoding) + np.count_nonzero(grant_served)
    return attention2, context, served


@register_jitable
def _steps_to_event(batch, m, grant, decoding):
    """Identical steps until a grant changes, a prefill or a decode ends."""
    served = grant > 0
    to_event = np.full(m, _NO_EVENT)
    to_event[decoding] = batch[_DEC, :m][decoding]
    to_event[served] = batch[_PF, :m][served] // grant[served]
    return np.min(to_event)


@register_jitable
def _reach(next_arrival, clock, dt, noisy, k):
    """Steps until the next arrival surely started: blocks may end early
    (times do not depend on the cut), noisy steps being shorter."""
    reach = np.ceil((next_arrival - clock) / dt)
    reach = 2.0 * reach + 2.0 if noisy else reach + 1.0
    if reach < k:
        return np.int64(reach)
    return k


@register_jitable
def _step_ends(clock, dt, k, factors, used, noisy, next_arrival, slope):
    """Ends of the block's ``k`` steps, summed one after another from
    ``clock`` (``ends[j]`` is the end of step ``j - 1`` and the start of step
    ``j``), and ``k`` cut before the first step starting at or after
    ``next_arrival``, which admits it. Step ``j`` lasts ``dt + j * slope``
    (the decode context's growth) times its noise factor."""
    seq = np.empty(k + 1)
    seq[0] = clock
    if slope != 0.0:
        seq[1:] = dt + slope * np.arange(k)
        if noisy:
            seq[1:] *= factors[used : used + k]
    elif noisy:
        seq[1:] = dt * factors[used : used + k]
    else:
        seq[1:] = dt
    ends = np.cumsum(seq)
    if next_arrival < np.inf:
        cut = np.searchsorted(ends[:k], next_arrival, side="left")
        if cut < k:
            k = cut
    return ends, k


@register_jitable
def _snapped_end(batch, m, k, grant, decoding, ends, snap, times):
    """The block's end on the trace's clock: the mean observed time of the
    first tokens (a request's first, not a recomputation's) and last tokens
    it gives, none before its last step starts; its model end without any."""
    run = batch[_REQ, :m]
    last = (grant > 0) & (batch[_PF, :m] - k * grant == 0)
    dec = batch[_DEC, :m]
    done = (decoding & (dec == k)) | (last & (dec == 0))
    first = last & np.isnan(times[2][run])
    observed = np.concatenate((snap[0][run[first]], snap[1][run[done]]))
    observed = observed[~np.isnan(observed)]
    if observed.shape[0] == 0:
        return ends[k]
    return max(np.mean(observed), ends[k - 1] + 1e-3 * (ends[k] - ends[k - 1]))


@register_jitable
def _advance(batch, m, k, grant, decoding, clock, block_end, times, kv):
    """Serve ``k`` identical steps: prompt and decode tokens, context, and the
    phase boundaries (the block's first step opens a prefill, its last closes
    one). Returns the requests whose prompt ended."""
    run = batch[_REQ, :m]
    pf = batch[_PF, :m]
    served = grant > 0
    if kv:  # a readmitted request's phases started before
        first = served & np.isnan(times[1][run])
    else:
        first = served & (pf == batch[_PF_TOTAL, :m])
    times[1, run[first]] = clock
    pf -= k * grant
    last = served & (pf == 0)
    if kv:
        times[2, run[last & np.isnan(times[2][run])]] = block_end
        batch[_CTX, :m] += np.where(decoding, k, k * grant)
    else:
        times[2, run[last]] = block_end
    batch[_DEC, :m][decoding] -= k
    return last


@register_jitable
def _grow_blocks(batch, m, decoding, block_size):
    """Blocks the decodes took during the block (they fit: see
    :func:`_steps_before_kv_full`); returns how many."""
    held = batch[_HELD, :m]
    need = np.where(decoding, kv_blocks(batch[_CTX, :m], block_size), held)
    grown = np.maximum(need - held, 0)
    held += grown
    return np.sum(grown)


@register_jitable
def _record(blocks, step_times, n_blocks, n_steps, block, ends):
    """Write the block (steps, T_pf, T_dec, running, KV blocks in use) and its
    steps' times, growing the buffers as needed."""
    if n_blocks == blocks.shape[0]:
        blocks = np.concatenate((blocks, np.empty_like(blocks)))
    blocks[n_blocks] = block
    k = block[0]
    while n_steps + k > step_times.shape[0]:
        step_times = np.concatenate((step_times, np.empty_like(step_times)))
    step_times[n_steps : n_steps + k, 0] = ends[:k]
    step_times[n_steps : n_steps + k, 1] = ends[1 : k + 1]
    return blocks, step_times


@register_jitable
def _retire(batch, m, done):
    """Drop the finished requests from the batch, keeping the others' order;
    returns how many run."""
    keep = ~done
    m_left = np.count_nonzero(keep)
    for row in range(batch.shape[0]):
        batch[row, :m_left] = batch[row, :m][keep]
    return m_left


@register_jitable
def _steps_before_kv_full(batch, m, decoding, free, block_size, k):
    """Most of the next ``k`` steps whose decodes' new KV blocks fit in ``free``.

    Step ``j`` (1-based) of a block needs ``ceil((context + j) / block_size)``
    blocks per decode; the blocks it needs beyond those held grow with ``j``,
    so the last step that fits is found by bisection.
    """
    ctx = batch[_CTX, :m][decoding]
    have = batch[_HELD, :m][decoding]
    if np.sum(np.maximum(kv_blocks(ctx + k, block_size) - have, 0)) <= free:
        return k
    low = 1  # step 1's blocks were taken before the block
    high = k
    while high - low > 1:
        mid = (low + high) // 2
        if np.sum(np.maximum(kv_blocks(ctx + mid, block_size) - have, 0)) <= free:
            low = mid
        else:
            high = mid
    return np.int64(low)


@register_jitable
def _send_next(client, first, head, n_sent, seen, clock, jitter):
    """A closed-loop client sends one new request per slot it sees freed
    (``seen``: when, sorted), in request order and not before its intended
    arrival; returns the number sent. The first ``first`` requests went out
    before any slot was freed. Slots are reused in the order they are seen
    freed, so with per-request done offsets one seen freed before sends
    still to come takes the first of them."""
    intended, delay, times, arrival, queue, qarr, released = client
    n = intended.shape[0]
    n_released = n_sent - first
    fixed = n_released  # releases already at or before the clock keep their sends
    if jitter:
        fixed = np.searchsorted(released[:n_released], clock, side="right")
    pending = np.sort(np.concatenate((released[fixed:n_released], seen)))
    pending = pending[: n - first - fixed]
    released[fixed : fixed + pending.shape[0]] = pending
    stop = first + fixed + pending.shape[0]
    for j in range(first + fixed, stop):
        times[4, j] = max(intended[j], released[j - first])
        arrival[j] = times[4, j] + delay[j]
    if not jitter:  # sends in request order arrive in that order
        queue[n_sent:stop] = np.arange(n_sent, stop)
        qarr[n_sent:stop] = arrival[n_sent:stop]
        return stop
    # the moved and the new sends are all still to arrive: re-sort the tail
    tail = np.sort(np.concatenate((queue[head:n_sent], np.arange(n_sent, stop))))
    queue[head:stop] = tail[np.argsort(arrival[tail], kind="mergesort")]
    qarr[head:stop] = arrival[queue[head:stop]]
    return stop
