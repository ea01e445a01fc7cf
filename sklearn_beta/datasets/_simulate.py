"""A step-level simulator of a vLLM-style engine, with known betas.

The engine model is the one of docs/method.md section 1: a busy loop of steps, each
lasting ``beta0 + beta1 * T_pf + beta2 * T_dec``. The simulator records every
step (the ground truth production traces hide) and the request phases that a
trace would show, so that estimators can be checked against the true betas.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, validate_params

#: Steps until an event for a request that has none (not yet served).
_NO_EVENT = np.iinfo(np.int64).max

STEP_COLUMNS = (
    "instance_id",
    "t_start",
    "t_end",
    "prefill_tokens",
    "decode_tokens",
    "n_running",
)
# Lengths are clipped at median * exp(CLIP_SIGMAS * sigma): the lognormal's
# 4-sigma quantile, so that clipping touches about 3 draws in 100 000.
CLIP_SIGMAS = 4.0
_NOISE_BLOCK = 4096


@validate_params(
    {
        "n_requests": [Interval(Integral, 1, None, closed="left")],
        "beta": ["array-like"],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "max_num_seqs": [Interval(Integral, 1, None, closed="left")],
        "arrival_rate": [Interval(Real, 0, None, closed="neither")],
        "prompt_tokens": [tuple, list],
        "output_tokens": [tuple, list],
        "token_budget": [Interval(Integral, 1, None, closed="left"), None],
        "noise": [Interval(Real, 0, None, closed="left")],
        "n_instances": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "return_steps": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def simulate_trace(
    n_requests: int,
    *,
    beta,
    chunk_size: int,
    max_num_seqs: int,
    arrival_rate: float,
    prompt_tokens: tuple[float, float] = (512, 1.0),
    output_tokens: tuple[float, float] = (128, 1.0),
    token_budget: int | None = None,
    noise: float = 0.0,
    n_instances: int = 1,
    random_state=None,
    return_steps: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate the phase trace of a vLLM-style engine with known betas.

    Each engine instance runs one busy loop of steps. A step lasts
    ``beta0 + beta1 * T_pf + beta2 * T_dec`` seconds, where ``T_pf`` and
    ``T_dec`` are the prefill and decode tokens it processes, times an
    optional lognormal noise factor. The scheduler is a simplified vLLM one:

    * Requests arrive as a Poisson process of rate ``arrival_rate`` for the
      whole fleet; each request goes to an instance drawn uniformly at random,
      so every instance sees a Poisson process of rate
      ``arrival_rate / n_instances``.
    * At the start of every step, waiting requests that have arrived by then
      are admitted first-come first-served while fewer than ``max_num_seqs``
      run. An admitted request takes part in that very step.
    * A running request first prefills its prompt, ``min(chunk_size,
      remaining)`` tokens per step, then decodes one token per step for
      ``D`` steps and leaves. Its first decode token comes from the step after
      its last prefill step, so the decode phase holds exactly ``D`` steps and
      the prefill phase ``ceil(P / chunk_size)`` (without a token budget), as
      the estimators assume.
    * With ``token_budget``, a step first serves one token to every decoding
      request, then prefill chunks in first-come first-served order until the
      budget is spent: some prefills get a partial chunk, others none.
    * When nothing runs and nothing waits, the clock jumps to the next arrival.

    The prefill phase runs from the start of the first step that processes
    any of its prompt to the end of the step that processes its last prompt
    token; the decode phase from there to the end of its ``D``-th decode step.

    Parameters
    ----------
    n_requests : int
        Number of requests; the trace has twice as many phases.
    beta : array-like of shape (3,)
        True ``(beta0, beta1, beta2)``: seconds per step, per prefill token and
        per decode token. Non-negative; steps must have positive durations, so
        ``beta0 > 0`` or both ``beta1 > 0`` and ``beta2 > 0``.
    chunk_size : int
        Prefill chunk size ``C`` (tokens per request per step).
    max_num_seqs : int
        Most requests running at once on an instance.
    arrival_rate : float
        Requests per second for the whole fleet.
    prompt_tokens, output_tokens : tuple (median, sigma), default (512, 1.0) \
and (128, 1.0)
        Lognormal prompt length ``P`` and output length ``D``: median and
        sigma of the underlying normal. Draws are rounded and clipped to
        ``[1, ceil(median * exp(4 * sigma))]``; ``sigma = 0`` gives a fixed
        length.
    token_budget : int, default=None
        Tokens per step (vLLM's ``max_num_batched_tokens``); ``None`` means no
        budget. Must be at least ``max_num_seqs`` (as vLLM requires), so every
        decoding request always gets its token.
    noise : float, default=0.0
        Standard deviation of the log of the per-step noise factor: each step
        lasts its model time times ``exp(N(0, noise))``.
    n_instances : int, default=1
        Number of independent engine instances.
    random_state : int, RandomState instance or None, default=None
        Seeds arrivals, lengths, instance choice and step noise.
    return_steps : bool, default=False
        Also return the step table.

    Returns
    -------
    phases : DataFrame
        One row per phase, ordered by request then prefill before decode:
        ``request_id`` (int, in arrival order), ``phase_type``
        (``"prefill"``/``"decode"``), ``t_start``, ``t_end`` (seconds since the
        simulation started, before the first arrival; all instances share
        this clock), ``prefill_tokens`` (``P`` on prefill
        rows, 0 otherwise), ``decode_tokens`` (``D`` on decode rows, 0
        otherwise), plus ``instance_id`` when ``n_instances > 1``.
    steps : DataFrame
        Returned with ``return_steps=True``: one row per step, ordered by
        instance then time: ``instance_id``, ``t_start``, ``t_end``,
        ``prefill_tokens``, ``decode_tokens`` (the step's ``T_pf`` and
        ``T_dec``) and ``n_running`` (requests admitted and not finished,
        including prefills that a token budget starves in that step).

    Examples
    --------
    >>> from sklearn_beta.datasets import simulate_trace
    >>> phases, steps = simulate_trace(
    ...     200, beta=(5e-3, 2e-5, 8e-5), chunk_size=64, max_num_seqs=32,
    ...     arrival_rate=20.0, random_state=0, return_steps=True)
    >>> phases.shape
    (400, 6)
    >>> list(steps.columns)
    ['instance_id', 't_start', 't_end', 'prefill_tokens', 'decode_tokens', \
'n_running']
    """
    beta = _check_beta(beta)
    prompt_median, prompt_sigma = _check_length_spec(prompt_tokens, "prompt_tokens")
    output_median, output_sigma = _check_length_spec(output_tokens, "output_tokens")
    if token_budget is not None and token_budget < max_num_seqs:
        raise ValueError(
            f"token_budget={token_budget} must be at least max_num_seqs="
            f"{max_num_seqs}: every decoding request needs its token each step."
        )
    rng = check_random_state(random_state)

    arrival = np.cumsum(rng.exponential(1.0 / arrival_rate, size=n_requests))
    prompt = _lognormal_lengths(rng, prompt_median, prompt_sigma, n_requests)
    output = _lognormal_lengths(rng, output_median, output_sigma, n_requests)
    if n_instances > 1:
        instance = rng.randint(n_instances, size=n_requests)
    else:
        instance = np.zeros(n_requests, dtype=np.intp)

    engine = _Engine(
        arrival=arrival,
        prompt=prompt,
        output=output,
        instance=instance,
        n_instances=n_instances,
        beta=beta,
        chunk_size=chunk_size,
        max_num_seqs=max_num_seqs,
        token_budget=token_budget,
        noise=noise,
        rng=rng,
    )
    engine.run()
    phases = engine.phase_table()
    if not return_steps:
        return phases
    return phases, engine.step_table()


def _check_beta(beta) -> np.ndarray:
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


def _check_length_spec(spec, name: str) -> tuple[float, float]:
    if len(spec) != 2:
        raise ValueError(f"{name} must be a pair (median, sigma), got {spec!r}.")
    median, sigma = (float(v) for v in spec)
    if not (np.isfinite(median) and median >= 1):
        raise ValueError(f"{name}: the median must be at least 1, got {spec!r}.")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"{name}: sigma must be non-negative, got {spec!r}.")
    return median, sigma


def _lognormal_lengths(rng, median: float, sigma: float, size: int) -> np.ndarray:
    upper = np.ceil(median * np.exp(CLIP_SIGMAS * sigma))
    draws = median * np.exp(sigma * rng.standard_normal(size))
    return np.clip(np.rint(draws), 1, upper).astype(np.int64)


class _Engine:
    """All instances' busy loops, advanced together one block of steps at a time.

    The running requests of every instance live in one compact batch (a state
    array with one column per request, see :meth:`queued_state`), appended in
    admission order, so that within an instance the batch order is
    first-come first-served. Waiting requests are kept sorted by (instance,
    arrival): each instance's queue is a contiguous block. ``steps`` collects
    per block: its length per instance, ``T_pf``, ``T_dec``, the running
    count, and the start and end of each of its steps.
    """

    def __init__(
        self,
        *,
        arrival,
        prompt,
        output,
        instance,
        n_instances,
        beta,
        chunk_size,
        max_num_seqs,
        token_budget,
        noise,
        rng,
    ):
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.instance = instance
        self.n_instances = n_instances
        self.beta = beta
        self.chunk_size = chunk_size
        self.max_num_seqs = max_num_seqs
        self.token_budget = token_budget
        self.noise = noise
        self.rng = rng

        n = arrival.shape[0]
        # queue position -> request id; instance blocks, arrival order inside
        self.queue = np.argsort(instance, kind="stable")
        counts = np.bincount(instance, minlength=n_instances)
        self.queue_hi = np.cumsum(counts)
        self.queue_lo = self.queue_hi - counts
        # Search all instances' queues in one call: instance i's arrivals
        # are offset by i * span, so the blocks stay sorted and disjoint.
        self.span = 2.0 ** np.ceil(np.log2(arrival[-1] + 1.0))
        self.queue_key = arrival[self.queue] + instance[self.queue] * self.span
        self.key_offset = np.arange(n_instances) * self.span

        self.prefill_start = np.full(n, np.nan)
        self.prefill_end = np.full(n, np.nan)
        self.decode_end = np.full(n, np.nan)
        self.steps: list[tuple[np.ndarray, ...]] = []

    def run(self) -> None:
        """Simulate all instances; the step blocks land in ``self.steps``."""
        if self.n_instances == 1:
            self._run_single()
        else:
            self._run_fleet()

    def _run_fleet(self) -> None:
        """Advance every instance, one block of identical steps per iteration.

        Between scheduling events a batch repeats the same step: each request
        keeps its per-step grant, so ``T_pf``, ``T_dec`` and the model step
        time stay put. An event is a prefill's grant changing or ending
        (after ``remaining // grant`` steps), a decode ending (after its
        remaining tokens), or, when a slot is free, the next arrival, which
        joins at the first step starting at or after it. Each iteration
        advances every instance to its next event at once; under heavy load
        blocks are one step long and this is a plain step loop.
        """
        n_inst = self.n_instances
        b0, b1, b2 = self.beta
        queue, arrival = self.queue, self.arrival
        last_queued = queue.shape[0] - 1
        clock = np.zeros(n_inst)
        head = self.queue_lo.copy()
        hi = self.queue_hi
        n_running = np.zeros(n_inst, dtype=np.int64)
        queued = self.queued_state()
        run = queued[:, :0]
        noise = _NoisePool(self.rng, self.noise)
        step_blocks: list[tuple[np.ndarray, ...]] = []

        while True:
            idle = n_running == 0
            if idle.any():
                waiting = idle & (head < hi)
                if not waiting.any() and idle.all():
                    break
                # an idle engine jumps to its next arrival
                clock[waiting] = np.maximum(
                    clock[waiting], arrival[queue[head[waiting]]]
                )

            # FCFS admission of the arrived requests into free slots
            arrived = np.searchsorted(
                self.queue_key, clock + self.key_offset, side="right"
            )
            # a clock past its last arrival reaches into the next block: clamp
            np.minimum(arrived, hi, out=arrived)
            n_admit = np.minimum(self.max_num_seqs - n_running, arrived - head)
            np.maximum(n_admit, 0, out=n_admit)
            total = int(n_admit.sum())
            if total:
                if n_inst == 1:
                    new = queued[:, head[0] : head[0] + total]
                else:
                    new = queued[:, _concat_ranges(head, n_admit, total)]
                run = np.concatenate((run, new), axis=1)
                head += n_admit
                n_running += n_admit
            active = n_running > 0
            run_req, run_inst, run_prompt, run_pf, run_dec = run

            prefilling, decoding, pf, served, steps_to_event = self._grants(
                run_pf, run_dec, run_inst
            )
            if n_inst == 1:
                t_pf = np.array([pf.sum()], dtype=float)
                t_dec = np.array([decoding.sum()], dtype=float)
                n_steps = np.array([steps_to_event.min()])
            else:
                t_pf = np.bincount(run_inst, weights=pf, minlength=n_inst)
                t_dec = np.bincount(run_inst, weights=decoding, minlength=n_inst)
                n_steps = np.full(n_inst, _NO_EVENT)
                np.minimum.at(n_steps, run_inst, steps_to_event)
                n_steps[~active] = 0
            dt = b0 + b1 * t_pf + b2 * t_dec

            # a free slot and a waiting request: stop near the next arrival
            admits = active & (n_running < self.max_num_seqs) & (head < hi)
            next_arrival = None
            if admits.any():
                next_arrival = arrival[queue[np.minimum(head, last_queued)]]
                reach = np.ceil((next_arrival - clock) / dt).astype(np.int64)
                if self.noise > 0:
                    reach = 2 * reach + 1  # noisy steps may be shorter
                n_steps = np.where(admits, np.minimum(n_steps, reach), n_steps)

            if n_inst == 1:
                start, end, n_steps = _one_block_times(
                    clock, dt, n_steps, noise, next_arrival
                )
                block_end = end[-1:].copy()  # the clock is updated in place
            else:
                start, end, n_steps, block_end = _block_times(
                    clock, dt, n_steps, noise, admits, next_arrival
                )
            # rows are expanded once at the end: the block's steps share these
            step_blocks.append((n_steps, t_pf, t_dec, n_running.copy(), start, end))

            # phase boundaries: the block's first step opens, its last closes
            k = n_steps[run_inst]
            first = served & (run_pf == run_prompt)
            if first.any():
                self.prefill_start[run_req[first]] = clock[run_inst[first]]
            run_pf -= k * pf  # in place: rows of run
            last = served & (run_pf == 0)
            if last.any():
                self.prefill_end[run_req[last]] = block_end[run_inst[last]]
            run_dec -= k * decoding
            done = decoding & (run_dec == 0)
            if done.any():
                self.decode_end[run_req[done]] = block_end[run_inst[done]]
                n_running -= np.bincount(run_inst[done], minlength=n_inst)
                run = run[:, ~done]
            clock = block_end

        self.steps = step_blocks

    def queued_state(self) -> np.ndarray:
        """Each request's running state, one column per queue position.

        Rows: request, instance, prompt length, prompt tokens still to
        prefill, decode tokens still to produce. The running batch holds the
        columns of the admitted requests, in admission order.
        """
        q = self.queue
        return np.stack(
            (q, self.instance[q], self.prompt[q], self.prompt[q], self.output[q])
        )

    def _run_single(self) -> None:
        """:meth:`run` for one instance, its control flow on Python scalars.

        Same blocks and the same floating-point operations as :meth:`run`,
        so both give identical traces; this only sheds the per-instance array
        overhead that dominates at light load.
        """
        b0, b1, b2 = self.beta
        max_num_seqs = self.max_num_seqs
        arrival = self.arrival  # one instance: the queue is the arrival order
        n = arrival.shape[0]
        queued = self.queued_state()
        run = queued[:, :0]
        head, n_running, clock = 0, 0, 0.0
        noise = _NoisePool(self.rng, self.noise)
        blocks: list[tuple] = []

        while True:
            if n_running == 0:
                if head == n:
                    break
                clock = max(clock, float(arrival[head]))
            if n_running < max_num_seqs and head < n and arrival[head] <= clock:
                arrived = int(np.searchsorted(arrival, clock, side="right"))
                n_admit = min(max_num_seqs - n_running, arrived - head)
                run = np.concatenate((run, queued[:, head : head + n_admit]), axis=1)
                head += n_admit
                n_running += n_admit
            run_req, run_inst, run_prompt, run_pf, run_dec = run

            prefilling, decoding, pf, served, steps_to_event = self._grants(
                run_pf, run_dec, run_inst
            )
            k = int(steps_to_event.min())
            t_pf = float(pf.sum())
            t_dec = float(n_running - np.count_nonzero(prefilling))
            dt = b0 + b1 * t_pf + b2 * t_dec

            next_arrival = None
            if n_running < max_num_seqs and head < n:
                next_arrival = float(arrival[head])
                reach = int(np.ceil((next_arrival - clock) / dt))
                if self.noise > 0:
                    reach = 2 * reach + 1  # noisy steps may be shorter
                k = min(k, reach)
            end = clock + np.cumsum(dt * noise.factors(k) * np.ones(k))
            start = np.empty(k)
            start[0] = clock
            start[1:] = end[:-1]
            if next_arrival is not None:
                # the first step starting at or after the arrival admits it
                cut = int(np.searchsorted(start, next_arrival, side="left"))
                if cut < k:
                    k, start, end = cut, start[:cut], end[:cut]
            blocks.append((k, t_pf, t_dec, n_running, start, end))
            block_end = float(end[-1])

            # phase boundaries: the block's first step opens, its last closes
            first = served & (run_pf == run_prompt)
            if first.any():
                self.prefill_start[run_req[first]] = clock
            run_pf -= k * pf  # in place: rows of run
            last = served & (run_pf == 0)
            if last.any():
                self.prefill_end[run_req[last]] = block_end
            run_dec -= k * decoding
            done = decoding & (run_dec == 0)
            if done.any():
                self.decode_end[run_req[done]] = block_end
                n_running -= int(np.count_nonzero(done))
                run = run[:, ~done]
            clock = block_end

        n_steps, t_pf, t_dec, n_running, start, end = zip(*blocks, strict=True)
        self.steps = [
            (np.array(n_steps), np.array(t_pf), np.array(t_dec), np.array(n_running))
            + (np.concatenate(start), np.concatenate(end))
        ]

    def _grants(self, run_pf, run_dec, run_inst):
        """Per-step grants of the running batch, the same for every step of a
        block: prompt tokens per prefill, which requests decode, and how many
        steps until each request's next event (a grant change or its end)."""
        prefilling = run_pf > 0
        pf = np.minimum(run_pf, self.chunk_size)
        if self.token_budget is not None:
            pf = self._apply_budget(pf, prefilling, run_inst)
        decoding = ~prefilling
        served = pf > 0
        steps_to_event = np.where(
            served,
            run_pf // np.maximum(pf, 1),
            np.where(decoding, run_dec, _NO_EVENT),
        )
        return prefilling, decoding, pf, served, steps_to_event

    def _apply_budget(self, pf, prefilling, run_inst):
        """Decodes first, then prefill chunks FCFS until the budget is spent."""
        n_inst = self.n_instances
        idx = np.flatnonzero(prefilling)
        if idx.size == 0:
            return pf
        n_dec = np.bincount(run_inst[~prefilling], minlength=n_inst)
        left = self.token_budget - n_dec
        want = pf[idx]
        inst = run_inst[idx]
        if n_inst > 1:
            # batch order is FCFS within an instance; group instances together
            order = np.argsort(inst, kind="stable")
            idx, want, inst = idx[order], want[order], inst[order]
        cum = np.cumsum(want)
        group_start = np.r_[True, inst[1:] != inst[:-1]]
        before_group = np.maximum.accumulate(np.where(group_start, cum - want, 0))
        served_before = cum - want - before_group
        grant = np.clip(left[inst] - served_before, 0, want)
        pf = pf.copy()
        pf[idx] = grant
        return pf

    def phase_table(self) -> pd.DataFrame:
        n = self.arrival.shape[0]
        request_id = np.repeat(np.arange(n), 2)
        is_prefill = np.tile([True, False], n)
        t_start = np.empty(2 * n)
        t_end = np.empty(2 * n)
        t_start[0::2] = self.prefill_start
        t_end[0::2] = self.prefill_end
        t_start[1::2] = self.prefill_end
        t_end[1::2] = self.decode_end
        table = {
            "request_id": request_id,
            "phase_type": np.where(is_prefill, "prefill", "decode"),
            "t_start": t_start,
            "t_end": t_end,
            "prefill_tokens": np.where(is_prefill, np.repeat(self.prompt, 2), 0),
            "decode_tokens": np.where(is_prefill, 0, np.repeat(self.output, 2)),
        }
        if self.n_instances > 1:
            table["instance_id"] = np.repeat(self.instance, 2)
        return pd.DataFrame(table)

    def step_table(self) -> pd.DataFrame:
        n_steps, t_pf, t_dec, n_running, start, end = (
            np.concatenate(parts) for parts in zip(*self.steps, strict=True)
        )
        # per-block values, iteration-major over instances -> one row per step
        n_inst = self.n_instances
        instance = np.tile(np.arange(n_inst), n_steps.shape[0] // n_inst)
        instance, t_pf, t_dec, n_running = (
            np.repeat(a, n_steps) for a in (instance, t_pf, t_dec, n_running)
        )
        order = np.argsort(instance, kind="stable")  # blocks are in time order
        return pd.DataFrame(
            {
                "instance_id": instance[order],
                "t_start": start[order],
                "t_end": end[order],
                "prefill_tokens": t_pf[order].astype(np.int64),
                "decode_tokens": t_dec[order].astype(np.int64),
                "n_running": n_running[order].astype(np.int64),
            }
        )


class _NoisePool:
    """Lognormal step-noise factors, drawn in large batches from one stream."""

    def __init__(self, rng, sigma: float):
        self.rng = rng
        self.sigma = sigma
        self.pool = np.empty(0)
        self.used = 0

    def factors(self, size: int) -> np.ndarray | float:
        if self.sigma == 0:
            return 1.0
        if self.used + size > self.pool.shape[0]:
            fresh = self.rng.standard_normal(max(size, _NOISE_BLOCK))
            self.pool = np.concatenate((self.pool[self.used :], fresh))
            self.used = 0
        out = np.exp(self.sigma * self.pool[self.used : self.used + size])
        self.used += size
        return out


def _one_block_times(clock, dt, n_steps, noise, next_arrival):
    """:func:`_block_times` for a single instance, without the bookkeeping."""
    k = int(n_steps[0])
    end = clock[0] + np.cumsum(dt[0] * noise.factors(k) * np.ones(k))
    start = np.empty(k)
    start[0] = clock[0]
    start[1:] = end[:-1]
    if next_arrival is not None:
        # the first step starting at or after the arrival admits it
        cut = int(np.searchsorted(start, next_arrival[0], side="left"))
        if cut < k:
            start, end, n_steps = start[:cut], end[:cut], np.array([cut])
    return start, end, n_steps


def _block_times(clock, dt, n_steps, noise, admits, next_arrival):
    """Start and end of every step of the block, cut at admissible arrivals.

    Returns the rows' start and end times (instance-major, in time order),
    the block lengths after the cut and each instance's clock at the end.
    """
    n_inst = clock.shape[0]
    total = int(n_steps.sum())
    row_inst = np.repeat(np.arange(n_inst), n_steps)
    seg_start = np.cumsum(n_steps) - n_steps
    local = np.arange(total) - seg_start[row_inst]
    step_dt = dt[row_inst] * noise.factors(total)
    # cumulated per block, so each step starts exactly where the last ended
    cum = np.cumsum(step_dt)
    stepping = n_steps > 0
    offset = cum[seg_start[stepping]] - step_dt[seg_start[stepping]]
    end = cum - np.repeat(offset, n_steps[stepping]) + clock[row_inst]
    start = np.empty(total)
    start[1:] = end[:-1]
    start[seg_start[stepping]] = clock[stepping]
    if next_arrival is not None:
        # the first step starting at or after the arrival admits it
        late = admits[row_inst] & (start >= next_arrival[row_inst])
        if late.any():
            cut = n_steps.copy()
            np.minimum.at(cut, row_inst[late], local[late])
            keep = local < cut[row_inst]
            row_inst, start, end = row_inst[keep], start[keep], end[keep]
            n_steps = cut
    block_end = clock.copy()
    block_end[row_inst] = end  # the last row of each instance wins
    return start, end, n_steps, block_end


def _concat_ranges(starts: np.ndarray, lengths: np.ndarray, total: int) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``."""
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + np.arange(total) - offsets
