"""The engine loop shared by the simulator and the replay (vLLM V1 semantics).

One busy loop per engine instance; a fleet is a set of independent instances.
Every step, in this order:

1. waiting requests that have arrived by the step's start are admitted first
   come, first served while fewer than ``max_num_seqs`` run (an arrival
   during a step joins at the next step boundary);
2. every running decode gets one token;
3. running prefills get ``min(chunk_size, prompt left)`` tokens each, in
   arrival order, until the token budget left after the decodes is spent;
4. the step lasts ``(beta0 + beta1 * T_pf + beta2 * T_dec) * noise``, the
   noise factor ``exp(sigma Z - sigma^2 / 2)`` of mean one, so that the betas
   are the mean step-time coefficients a least-squares fit estimates.

A request that finishes its prompt decodes from the next step on and leaves
after its decode steps (at once when it has none). Between scheduling events
the batch repeats the same step, so the loop advances a block of identical
steps at a time; step times are accumulated one step after another (a
sequential cumulative sum from the block's start), so they do not depend on
where blocks are cut: a replay whose blocks are cut at other arrivals gives
the same floating-point times.

:func:`_run_instance` is written in the numpy subset that numba compiles. With
numba installed it runs compiled (`pip install sklearn-beta[fast]`); without,
the same function runs as plain numpy, with the same results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:  # optional accelerator: the same loop, compiled
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

#: ``token_budget`` / ``chunk_size`` of None inside the loop: no cap.
_NO_CAP = np.iinfo(np.int64).max // 4
#: Steps until an event for a request that has none in a block.
_NO_EVENT = np.iinfo(np.int64).max
_NOISE_BLOCK = 4096
#: Which implementation runs :func:`_run_instance`: "auto" (numba when
#: installed), "numba" or "numpy". Tests switch it to compare both.
BACKEND = "auto"


@dataclass(frozen=True)
class EngineRun:
    """What the engine did: per request (input order) and per step.

    Every request is served, so no request time is NaN. Steps are ordered
    by instance, then time; the step fields are None unless recorded.
    """

    admitted: np.ndarray  # start of the step that admitted the request
    prefill_start: np.ndarray  # start of the first step serving its prompt
    prefill_end: np.ndarray  # end of the step serving its last prompt token
    decode_end: np.ndarray  # end of its last decode step (= prefill_end if none)
    step_instance: np.ndarray | None
    step_start: np.ndarray | None
    step_end: np.ndarray | None
    step_prefill_tokens: np.ndarray | None
    step_decode_tokens: np.ndarray | None
    step_running: np.ndarray | None


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
    record_steps: bool = False,
    observed_ends: np.ndarray | None = None,
) -> EngineRun:
    """Run every instance's busy loop over its requests.

    Parameters
    ----------
    arrival : ndarray of float, shape (n,)
        Arrival times; an instance serves its requests in arrival order (ties
        in input order).
    prompt : ndarray of int, shape (n,)
        Prompt tokens to prefill (at least 1).
    decode_steps : ndarray of int, shape (n,)
        Decode steps after the prefill (0 allowed).
    instance : ndarray of int, shape (n,)
        Instance codes ``0 .. n_instances - 1``.
    beta : sequence of 3 floats
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
    record_steps : bool
        Also return the step table.
    observed_ends : ndarray of float, shape (2, n), or None
        Observed times of each request's first and last token on the
        engine's clock (NaN: none). A block of steps that ends one of them
        ends at their mean instead of its model time (clamped to leave its
        last step a positive duration), so that the replay runs on the
        trace's clock: the schedule-consistent fit (``estimators._schedule``) replays
        with it. None: model times only.
    """
    n_inst = int(instance.max()) + 1 if instance.shape[0] else 0
    caps = np.broadcast_to(np.asarray(max_num_seqs, dtype=np.int64), (n_inst,))
    if token_budget is not None and token_budget < caps.max(initial=0):
        raise ValueError(
            f"token_budget={token_budget} must be at least max_num_seqs="
            f"{caps.max()}: every running decode needs its token each step."
        )
    order = np.lexsort((np.arange(arrival.shape[0]), arrival, instance))
    bounds = np.searchsorted(instance[order], np.arange(n_inst + 1))
    times = np.full((4, arrival.shape[0]), np.nan)
    pool = _NoisePool(noise_normals, noise)
    steps = []
    loop = _loop()
    for k in range(n_inst):
        rows = order[bounds[k] : bounds[k + 1]]
        if rows.shape[0] == 0:
            continue
        args = (
            np.ascontiguousarray(arrival[rows], dtype=np.float64),
            np.ascontiguousarray(prompt[rows], dtype=np.int64),
            np.ascontiguousarray(decode_steps[rows], dtype=np.int64),
            *(float(b) for b in beta),
            _NO_CAP if chunk_size is None else int(chunk_size),
            _NO_CAP if token_budget is None else int(token_budget),
            int(min(caps[k], rows.shape[0])),
        )
        snap = _NO_SNAP if observed_ends is None else observed_ends[:, rows]
        snap = np.ascontiguousarray(snap, dtype=np.float64)
        guess = int(np.sum(-(-prompt[rows] // (chunk_size or _NO_CAP))))
        guess += int(np.sum(decode_steps[rows]))
        while True:  # a noisy run that outgrows its factor pool reruns
            factors = pool.factors(guess)
            req_times, blocks, step_times, used, done = loop(
                *args, factors, snap, record_steps
            )
            if done:
                break
            guess = 2 * factors.shape[0]
        pool.consume(used)
        times[:, rows] = req_times
        if record_steps:
            steps.append((k, blocks, step_times))
    return _engine_run(times, steps, record_steps)


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


def _engine_run(times, steps, record_steps) -> EngineRun:
    if not record_steps:
        return EngineRun(*times, None, None, None, None, None, None)
    inst = np.concatenate([np.full(s[2].shape[0], s[0], np.int64) for s in steps])
    blocks = np.concatenate([s[1] for s in steps])
    step_times = np.concatenate([s[2] for s in steps])
    per_step = np.repeat(blocks[:, 1:], blocks[:, 0], axis=0)
    return EngineRun(
        *times,
        inst,
        step_times[:, 0],
        step_times[:, 1],
        *per_step.T,
    )


class _NoisePool:
    """Mean-one lognormal noise factors, a prefix of one normal stream.

    ``exp(sigma Z - sigma^2 / 2)`` has mean 1: the steps' mean time is the
    model time, so least squares on the trace estimate the engine's betas
    themselves, not ``beta * exp(sigma^2 / 2)``.
    """

    def __init__(self, normals, sigma: float):
        self.normals = normals
        self.sigma = sigma
        self.pool = np.empty(0)
        self.offset = 0

    def factors(self, size: int) -> np.ndarray:
        """The next ``size`` (or more) factors, without consuming them."""
        if self.normals is None or self.sigma == 0:
            return self.pool[:0]
        need = self.offset + size - self.pool.shape[0]
        if need > 0:
            normals = self.normals(max(need, _NOISE_BLOCK))
            fresh = np.exp(self.sigma * normals - 0.5 * self.sigma**2)
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


def _run_instance(
    arrival,
    prompt,
    output,
    beta0,
    beta1,
    beta2,
    chunk,
    budget,
    max_num_seqs,
    factors,
    snap,
    record,
):
    """One instance's busy loop over its requests, sorted by arrival.

    Returns the request times (4, n): admitted, prefill start, prefill end,
    decode end; the blocks (n_blocks, 4): steps, T_pf, T_dec, running; the
    step times (n_steps, 2): start, end; the number of noise factors used,
    and False when ``factors`` ran out before the end.
    """
    n = arrival.shape[0]
    noisy = factors.shape[0] > 0
    snapping = snap.shape[1] > 0
    times = np.full((4, n), np.nan)
    admitted = times[0]
    prefill_start = times[1]
    prefill_end = times[2]
    decode_end = times[3]
    req = np.empty(max_num_seqs, np.int64)  # the running batch, FCFS order
    pf_left = np.empty(max_num_seqs, np.int64)
    dec_left = np.empty(max_num_seqs, np.int64)
    blocks = np.empty((64 if record else 0, 4), np.int64)
    step_times = np.empty((256 if record else 0, 2))
    n_blocks = 0
    n_steps = 0
    used = 0
    head = 0
    m = 0
    clock = 0.0
    while True:
        if m == 0:
            if head == n:
                break
            clock = max(clock, arrival[head])
        if m < max_num_seqs and head < n and arrival[head] <= clock:
            arrived = np.searchsorted(arrival, clock, side="right")
            n_admit = min(max_num_seqs - m, arrived - head)
            req[m : m + n_admit] = np.arange(head, head + n_admit)
            pf_left[m : m + n_admit] = prompt[head : head + n_admit]
            dec_left[m : m + n_admit] = output[head : head + n_admit]
            admitted[head : head + n_admit] = clock
            head += n_admit
            m += n_admit
        run = req[:m]
        pf = pf_left[:m]
        dec = dec_left[:m]

        # grants: decodes first, then prefill chunks FCFS within the budget
        decoding = pf == 0
        t_dec = np.count_nonzero(decoding)
        grant = np.minimum(pf, chunk)
        if budget < _NO_CAP:
            before = np.cumsum(grant) - grant
            grant = np.minimum(np.maximum(budget - t_dec - before, 0), grant)
        t_pf = np.sum(grant)
        dt = beta0 + beta1 * t_pf + beta2 * t_dec
        served = grant > 0

        # identical steps until a grant changes, a prefill or a decode ends
        to_event = np.full(m, _NO_EVENT)
        to_event[decoding] = dec[decoding]
        to_event[served] = pf[served] // grant[served]
        k = np.min(to_event)
        next_arrival = np.inf
        if m < max_num_seqs and head < n:
            next_arrival = arrival[head]
            # blocks may end early (times do not depend on the cut): stop
            # where the arrival surely is, noisy steps being shorter
            reach = np.ceil((next_arrival - clock) / dt)
            reach = 2.0 * reach + 2.0 if noisy else reach + 1.0
            if reach < k:
                k = np.int64(reach)
        if noisy:
            if used == factors.shape[0]:
                return times, blocks[:n_blocks], step_times[:n_steps], used, False
            k = min(k, factors.shape[0] - used)
        seq = np.empty(k + 1)
        seq[0] = clock
        if noisy:
            seq[1:] = dt * factors[used : used + k]
        else:
            seq[1:] = dt
        ends = np.cumsum(seq)  # ends[j] is the end of step j - 1 ...
        if next_arrival < np.inf:
            # ... and the start of step j: the first starting at or after the
            # arrival admits it, so the block stops before that step
            cut = np.searchsorted(ends[:k], next_arrival, side="left")
            if cut < k:
                k = cut
        block_end = ends[k]
        used += k
        pf_after = pf - k * grant
        last = served & (pf_after == 0)
        done = (decoding & (dec == k)) | (last & (dec == 0))
        if snapping and k > 0:
            observed = np.concatenate((snap[0][run[last]], snap[1][run[done]]))
            observed = observed[~np.isnan(observed)]
            if observed.shape[0] > 0:
                # never back to or before the block's last step start
                floor = ends[k - 1] + 1e-3 * (ends[k] - ends[k - 1])
                block_end = max(np.mean(observed), floor)
        if record:
            if n_blocks == blocks.shape[0]:
                blocks = np.concatenate((blocks, np.empty_like(blocks)))
            blocks[n_blocks, 0] = k
            blocks[n_blocks, 1] = t_pf
            blocks[n_blocks, 2] = t_dec
            blocks[n_blocks, 3] = m
            n_blocks += 1
            while n_steps + k > step_times.shape[0]:
                step_times = np.concatenate((step_times, np.empty_like(step_times)))
            step_times[n_steps : n_steps + k, 0] = ends[:k]
            step_times[n_steps : n_steps + k, 1] = ends[1 : k + 1]
            step_times[n_steps + k - 1, 1] = block_end
            n_steps += k

        # phase boundaries: the block's first step opens, its last closes
        first = served & (pf == prompt[run])
        prefill_start[run[first]] = clock
        pf -= k * grant
        prefill_end[run[last]] = block_end
        dec[decoding] -= k
        if np.any(done):
            decode_end[run[done]] = block_end
            keep = ~done
            m_left = np.count_nonzero(keep)
            req[:m_left] = run[keep]
            pf_left[:m_left] = pf[keep]
            dec_left[:m_left] = dec[keep]
            m = m_left
        clock = block_end
    return times, blocks[:n_blocks], step_times[:n_steps], used, True
