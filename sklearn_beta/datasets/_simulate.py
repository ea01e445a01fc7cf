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
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from ..engine._loop import EngineRun, EngineSettings, check_step_beta, run_engine

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


@validate_params(
    {
        "n_requests": [Interval(Integral, 1, None, closed="left")],
        "beta": ["array-like"],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
        "max_num_seqs": [Interval(Integral, 1, None, closed="left")],
        "arrival_rate": [Interval(Real, 0, None, closed="neither")],
        "prompt_tokens": [tuple, list, np.ndarray],
        "output_tokens": [tuple, list, np.ndarray],
        "token_budget": [Interval(Integral, 1, None, closed="left"), None],
        "noise": [Interval(Real, 0, None, closed="left")],
        "n_instances": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "return_steps": ["boolean"],
        "num_gpu_blocks": [Interval(Integral, 1, None, closed="left"), None],
        "block_size": [Interval(Integral, 1, None, closed="left")],
        "long_prefill_token_threshold": [
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "prefix_cached_fraction": [Interval(Real, 0, 1, closed="left")],
        "request_delay": [Interval(Real, 0, None, closed="left"), tuple, np.ndarray],
        "first_token_offset": [
            Interval(Real, 0, None, closed="left"),
            tuple,
            np.ndarray,
        ],
        "last_token_offset": [
            Interval(Real, 0, None, closed="left"),
            tuple,
            np.ndarray,
        ],
        "noise_outliers": [tuple, None],
        "max_in_flight": [Interval(Integral, 1, None, closed="left"), None],
        "view": [StrOptions({"phases", "engine", "client"})],
        "decode_tokens_include_first": ["boolean"],
        "return_truth": ["boolean"],
        "step_model": [str, list, tuple],
    },
    prefer_skip_nested_validation=True,
)
def simulate_trace(
    n_requests: int,
    *,
    beta,
    chunk_size: int | None,
    max_num_seqs: int,
    arrival_rate: float,
    prompt_tokens: tuple[float, float] | np.ndarray = (512, 1.0),
    output_tokens: tuple[float, float] | np.ndarray = (128, 1.0),
    token_budget: int | None = None,
    noise: float = 0.0,
    n_instances: int = 1,
    random_state=None,
    return_steps: bool = False,
    num_gpu_blocks: int | None = None,
    block_size: int = 16,
    long_prefill_token_threshold: int | None = None,
    prefix_cached_fraction: float = 0.0,
    request_delay: float | tuple[float, float] | np.ndarray = 0.0,
    first_token_offset: float | tuple[float, float] | np.ndarray = 0.0,
    last_token_offset: float | tuple[float, float] | np.ndarray = 0.0,
    max_in_flight: int | None = None,
    view: str = "phases",
    decode_tokens_include_first: bool = False,
    return_truth: bool = False,
    step_model="published",
    noise_outliers: tuple[float, float] | None = None,
) -> pd.DataFrame | tuple:
    """Simulate the phase trace of a vLLM-style engine with known betas.

    Each engine instance runs one busy loop of steps. A step lasts
    ``beta0 + beta1 * T_pf + beta2 * T_dec`` seconds, where ``T_pf`` and
    ``T_dec`` are the prefill and decode tokens it processes, times an
    optional mean-one lognormal noise factor. The scheduler follows vLLM V1, and is
    the loop :func:`sklearn_beta.replay.replay_trace` replays traces with:

    * Requests arrive as a Poisson process of rate ``arrival_rate`` for the
      whole fleet; each request goes to an instance drawn uniformly at random,
      so every instance sees a Poisson process of rate
      ``arrival_rate / n_instances``.
    * At the start of every step, waiting requests that have arrived by then
      are admitted first-come first-served while fewer than ``max_num_seqs``
      run. An admitted request takes part in that very step; one arriving
      during a step joins at the next step boundary.
    * Every step first serves one token to every decoding request, then
      prefill chunks of ``min(chunk_size, prompt left)`` tokens in arrival
      order, until ``token_budget`` (if any) is spent: under a budget some
      prefills get a partial chunk, others none.
    * A request decodes from the step after its last prefill step, one token
      per step for ``D`` steps, and leaves. So the decode phase holds exactly
      ``D`` steps and the prefill phase ``ceil(P / chunk_size)`` (without a
      token budget), as the estimators assume.
    * When nothing runs and nothing waits, the clock jumps to the next arrival.
    * With a bounded KV cache (``num_gpu_blocks``), a request is admitted
      only while the step's budget has room and the free blocks hold its
      prompt; each running request takes one more block per ``block_size``
      tokens of context (prompt plus generated) it grows; when a decode needs
      a block and none is free, the most recently admitted running request is
      preempted: its blocks are freed, it goes back to the front of the
      queue and, readmitted, prefills its prompt and generated tokens again.
      ``docs/simulators.md`` states the model in full.

    The prefill phase runs from the start of the first step that processes
    any of its prompt to the end of the step that processes its last prompt
    token; the decode phase from there to the end of its ``D``-th decode step.
    Step times are summed one step after another, so replaying the trace
    with the same engine gives back the same times bit for bit.

    Parameters
    ----------
    n_requests : int
        Number of requests; the trace has twice as many phases.
    beta : array-like of shape (3,)
        True ``(beta0, beta1, beta2)``: seconds per step, per prefill token and
        per decode token. Non-negative; steps must have positive durations, so
        ``beta0 > 0`` or both ``beta1 > 0`` and ``beta2 > 0``.
    chunk_size : int or None
        Prefill chunk size ``C`` (tokens per request per step); None: no
        per-request cap (vLLM's default), the token budget alone cuts prompts.
    max_num_seqs : int
        Most requests running at once on an instance.
    arrival_rate : float
        Requests per second for the whole fleet.
    prompt_tokens, output_tokens : tuple (median, sigma), default (512, 1.0) \
and (128, 1.0)
        Lognormal prompt length ``P`` and output length ``D``: median and
        sigma of the underlying normal. Draws are rounded and clipped to
        ``[1, ceil(median * exp(4 * sigma))]``; ``sigma = 0`` gives a fixed
        length. An ndarray of shape ``(n_requests,)`` gives every request's
        length itself (positive integers), e.g. a mix of short and long
        prompts as in ``REGIMES.md``; it draws nothing.
    token_budget : int, default=None
        Tokens per step (vLLM's ``max_num_batched_tokens``); ``None`` means no
        budget. Must be at least ``max_num_seqs`` (as vLLM requires), so every
        decoding request always gets its token.
    noise : float, default=0.0
        Standard deviation of the log of the per-step noise factor: each step
        lasts its model time times ``exp(noise * Z - noise**2 / 2)``, ``Z``
        standard normal. The factor has mean one, so ``beta`` are the mean
        step-time coefficients, which least squares on the trace estimate
        (a factor ``exp(noise * Z)`` would make them ``beta *
        exp(noise**2 / 2)``).
    n_instances : int, default=1
        Number of independent engine instances.
    random_state : int, RandomState instance or None, default=None
        Seeds arrivals, lengths, instance choice and step noise (one normal
        draw per step, instance by instance, in time order).
    return_steps : bool, default=False
        Also return the step table.
    num_gpu_blocks : int, default=None
        KV-cache blocks per instance (vLLM's ``num_gpu_blocks``); None is an
        unbounded cache: no admission stall and no preemption. Every request
        must fit alone: ``ceil((P + D) / block_size) <= num_gpu_blocks``.
    block_size : int, default=16
        Tokens per KV-cache block; used with ``num_gpu_blocks``.
    long_prefill_token_threshold : int, default=None
        Most prompt tokens one request prefills per step (vLLM's setting of
        that name); with ``chunk_size``, the smaller one caps. None: no cap.
    prefix_cached_fraction : float, default=0.0
        Share of every prompt found in the prefix cache: ``floor(fraction *
        P)`` tokens (at most ``P - 1``) skip prefill, at every admission;
        the phase table then has a ``cached_tokens`` column (prefill rows).
    request_delay : float, tuple (median, sigma) or ndarray, default=0.0
        Seconds from a request's send to its arrival in the engine's queue
        (network, HTTP, tokenisation): a client-side overhead before the
        queue. A float is every request's; a pair ``(median, sigma)`` draws
        one per request, ``median * exp(sigma * Z)`` (lognormal, unclipped:
        its mean is ``median * exp(sigma**2 / 2)``), as real overheads
        jitter; an ndarray of shape ``(n_requests,)`` gives each request's
        (non-negative, finite), e.g. with rare outliers. With per-request
        delays requests join the queue in the order they arrive there, not
        the order they were sent.
    first_token_offset, last_token_offset : float, tuple or ndarray, default=0.0
        Seconds from the engine emitting the first (last) token to the
        client recording it (detokenisation, network), each request's as
        ``request_delay`` takes it. They shift the reported times of
        ``view="client"`` only, and raise otherwise. A closed-loop client
        frees a request's slot when it records the last token, so it reuses
        the slots in the order it sees requests finish.
    max_in_flight : int, default=None
        A closed-loop client per instance: at most this many of the
        instance's requests outstanding (sent, last token not yet seen);
        a request is sent at its intended (Poisson) arrival, or when one
        completes if later. None: open loop, every request sent at its
        intended arrival.
    view : {"phases", "engine", "client"}, default="phases"
        Which times the phase table shows. ``"phases"``: the prefill phase
        from the first step serving the prompt to the first token, the decode
        phase to the last token (engine clock). ``"engine"``: the same plus
        an ``arrival`` column with the time the request joined the engine's
        queue (vLLM's request stats: queued, scheduled, first and last token).
        ``"client"``: the prefill phase from the send to the first token
        as recorded (``+ first_token_offset``), the decode phase to the last
        token as recorded (``+ last_token_offset``), an ``arrival`` column
        holding the send, and with ``max_in_flight`` an ``intended_arrival``
        column.
    decode_tokens_include_first : bool, default=False
        Whether decode rows' ``decode_tokens`` count the first output token
        (which the last prefill step emits), as most exports do: ``D + 1``
        for a decode phase of ``D`` steps. False writes ``D``.
    return_truth : bool, default=False
        Also return what the engine did per request (last in the tuple).
    step_model : str or list of str, default="published"
        The step time's features (docs/method.md, section 5.1), as
        :class:`~sklearn_beta.PhaseExposureTransformer` takes them:
        ``"published"`` is ``beta0 + beta1 T_pf + beta2 T_dec``;
        ``"attention"`` has ``beta`` of five coefficients for ``(steps,
        prefill_tokens, prefill_attention, decode_tokens, decode_context)``,
        the prefill attention ``sum t (s + t/2)`` over a step's chunks
        (``t`` tokens of a whole prompt ``s``) and the decode context ``sum
        (P + k - 1)`` over its decodes (in their ``k``-th decode step); a
        list of features names them in the order of ``beta``
        (``batch_size``: the requests a step serves). The step table then
        also has ``prefill_attention``, ``decode_context`` and
        ``batch_size``.
    noise_outliers : tuple (share, factor), default=None
        Heavy-tailed step noise (garbage collection, a CUDA graph miss): a
        share ``0 < share < 1`` of the steps, drawn independently, lasts
        ``factor`` (positive, not 1) times its time with ``noise``. The
        factor is not normalised: ``beta`` stays the mean of the other
        steps, and the mean step lasts ``1 + share * (factor - 1)`` times
        the model time. None: no outliers.

    Returns
    -------
    phases : DataFrame
        One row per phase, ordered by request then prefill before decode:
        ``request_id`` (int, in arrival order), ``phase_type``
        (``"prefill"``/``"decode"``), ``t_start``, ``t_end`` (seconds since the
        simulation started, before the first arrival; all instances share
        this clock), ``prefill_tokens`` (``P`` on prefill
        rows, 0 otherwise), ``decode_tokens`` (``D`` on decode rows, 0
        otherwise) and ``instance_id`` (0 for a single engine).
    steps : DataFrame
        Returned with ``return_steps=True``: one row per step, ordered by
        instance then time: ``instance_id``, ``t_start``, ``t_end``,
        ``prefill_tokens``, ``decode_tokens`` (the step's ``T_pf`` and
        ``T_dec``) and ``n_running`` (requests admitted and not finished,
        including prefills that a token budget starves in that step); with
        ``num_gpu_blocks``, also ``kv_blocks`` (blocks in use at the block's
        last step).
    truth : DataFrame
        Returned with ``return_truth=True``: one row per request, by
        ``request_id``: ``instance_id``, ``intended_arrival``, ``send``,
        ``arrival`` (joined the queue), ``admitted`` (first admission),
        ``scheduled`` (first step serving the prompt), ``first_token`` and
        ``last_token`` (engine clock), ``first_token_reported`` and
        ``last_token_reported`` (client clock), ``prompt_tokens``,
        ``cached_tokens``, ``decode_steps`` and ``preemptions``.

    Examples
    --------
    >>> from sklearn_beta.datasets import simulate_trace
    >>> phases, steps = simulate_trace(
    ...     200, beta=(5e-3, 2e-5, 8e-5), chunk_size=64, max_num_seqs=32,
    ...     arrival_rate=20.0, random_state=0, return_steps=True)
    >>> phases.shape
    (400, 7)
    >>> list(steps.columns)
    ['instance_id', 't_start', 't_end', 'prefill_tokens', 'decode_tokens', \
'n_running']
    """
    beta = check_step_beta(beta, step_model)
    for spec, name in (
        (prompt_tokens, "prompt_tokens"),
        (output_tokens, "output_tokens"),
    ):
        _check_length_spec(spec, name, n_requests)
    specs = dict(
        request_delay=request_delay,
        first_token_offset=first_token_offset,
        last_token_offset=last_token_offset,
    )
    for name, spec in specs.items():
        _check_overhead_spec(spec, name, n_requests)
    if view != "client" and (
        _nonzero(first_token_offset) or _nonzero(last_token_offset)
    ):
        raise ValueError(
            "first_token_offset and last_token_offset shift the times a client "
            f"records: they need view='client', got view={view!r}."
        )
    outliers = _check_outliers(noise_outliers)
    rng = check_random_state(random_state)

    arrival = np.cumsum(rng.exponential(1.0 / arrival_rate, size=n_requests))
    prompt = _lengths(rng, prompt_tokens, n_requests)
    output = _lengths(rng, output_tokens, n_requests)
    if n_instances > 1:
        instance = rng.randint(n_instances, size=n_requests)
    else:
        instance = np.zeros(n_requests, dtype=np.intp)
    cached = np.minimum(np.floor(prefix_cached_fraction * prompt), prompt - 1)
    delay, first_offset, last_offset = (
        _overheads(rng, spec, n_requests) for spec in specs.values()
    )
    if outliers is not None:
        outliers = (*outliers, rng.random_sample)

    run = run_engine(
        arrival,
        prompt,
        output,
        instance,
        beta=beta,
        chunk_size=chunk_size,
        token_budget=token_budget,
        max_num_seqs=max_num_seqs,
        noise_normals=rng.standard_normal,
        noise=noise,
        noise_outliers=outliers,
        record_steps=return_steps,
        record_features=not _is_published(step_model),
        cached_tokens=cached.astype(np.int64),
        settings=EngineSettings(
            block_size=block_size,
            num_gpu_blocks=num_gpu_blocks,
            long_prefill_token_threshold=long_prefill_token_threshold,
            max_in_flight=0 if max_in_flight is None else max_in_flight,
            delay=delay,
            done_offset=last_offset,
        ),
    )
    offsets = (first_offset, last_offset)
    truth = _truth_table(run, arrival, prompt, output, instance, cached, offsets)
    phases = _phase_table(truth, view, decode_tokens_include_first, max_in_flight)
    result = (phases,)
    if return_steps:
        result += (_step_table(run, num_gpu_blocks is not None, step_model),)
    if return_truth:
        result += (truth,)
    return result[0] if len(result) == 1 else result


def _nonzero(spec) -> bool:
    if isinstance(spec, np.ndarray):
        return bool(np.any(spec))
    if isinstance(spec, tuple):
        return float(spec[0]) != 0.0
    return spec != 0


def _check_overhead_spec(spec, name: str, n_requests: int) -> None:
    """A float (checked by ``validate_params``), a pair (median, sigma) or one
    non-negative finite value per request."""
    if isinstance(spec, np.ndarray):
        _check_per_request(
            spec,
            f"{name}: an ndarray",
            n_requests,
            lambda v: np.isfinite(v) & (v >= 0),
            f"{name}: values must be finite and non-negative",
        )
    elif isinstance(spec, tuple):
        ok = len(spec) == 2 and all(isinstance(v, Real) for v in spec)
        if not (ok and np.isfinite(spec).all() and spec[0] > 0 and spec[1] >= 0):
            raise ValueError(
                f"{name}: a pair must be (median, sigma) with median > 0 and "
                f"sigma >= 0, got {spec!r}."
            )


def _overheads(rng, spec, size: int):
    """A float as it is (every request's), else one value per request: given,
    or drawn lognormal from (median, sigma)."""
    if isinstance(spec, np.ndarray):
        return spec.astype(np.float64)
    if isinstance(spec, tuple):
        median, sigma = (float(v) for v in spec)
        return median * np.exp(sigma * rng.standard_normal(size))
    return float(spec)


def _check_outliers(spec):
    if spec is None:
        return None
    ok = len(spec) == 2 and all(isinstance(v, Real) for v in spec)
    if ok:
        share, factor = (float(v) for v in spec)
        ok = 0 < share < 1 and np.isfinite(factor) and factor > 0 and factor != 1
    if not ok:
        raise ValueError(
            "noise_outliers must be (share, factor) with 0 < share < 1 and a "
            f"positive factor other than 1, got {spec!r}."
        )
    return share, factor


def _check_length_spec(spec, name: str, n_requests: int) -> None:
    if isinstance(spec, np.ndarray):
        _check_given_lengths(spec, name, n_requests)
        return
    if len(spec) != 2:
        raise ValueError(
            f"{name} must be a pair (median, sigma) or an ndarray of "
            f"n_requests={n_requests} lengths, got {spec!r}."
        )
    median, sigma = (float(v) for v in spec)
    if not (np.isfinite(median) and median >= 1):
        raise ValueError(f"{name}: the median must be at least 1, got {spec!r}.")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"{name}: sigma must be non-negative, got {spec!r}.")


def _check_given_lengths(lengths: np.ndarray, name: str, n_requests: int) -> None:
    _check_per_request(
        lengths,
        f"{name}: an ndarray of lengths",
        n_requests,
        lambda v: np.isfinite(v) & (v >= 1) & (v == np.rint(v)),
        f"{name}: lengths must be positive integers",
    )


def _check_per_request(values, what: str, n_requests: int, valid, rule: str) -> None:
    """One value per request (shape ``(n_requests,)``), each ``valid``; the
    error names the first offending requests and their values."""
    if values.shape != (n_requests,):
        raise ValueError(
            f"{what} must have shape (n_requests,) = ({n_requests},), got "
            f"{values.shape}."
        )
    with np.errstate(invalid="ignore"):
        bad = ~valid(values)
    if np.any(bad):
        rows = np.flatnonzero(bad)[:5]
        raise ValueError(
            f"{rule}; requests {rows.tolist()} have {values[rows].tolist()}."
        )


def _lengths(rng, spec, size: int) -> np.ndarray:
    """Given lengths as they are, else lognormal draws of (median, sigma)."""
    if isinstance(spec, np.ndarray):
        return spec.astype(np.int64)
    median, sigma = (float(v) for v in spec)
    return _lognormal_lengths(rng, median, sigma, size)


def _lognormal_lengths(rng, median: float, sigma: float, size: int) -> np.ndarray:
    upper = np.ceil(median * np.exp(CLIP_SIGMAS * sigma))
    draws = median * np.exp(sigma * rng.standard_normal(size))
    return np.clip(np.rint(draws), 1, upper).astype(np.int64)


def _truth_table(run: EngineRun, arrival, prompt, output, instance, cached, offsets):
    """What the engine did, per request, and the times a client records."""
    first_offset, last_offset = offsets
    return pd.DataFrame(
        {
            "request_id": np.arange(prompt.shape[0]),
            "instance_id": instance,
            "intended_arrival": arrival,
            "send": run.send,
            "arrival": run.arrival,
            "admitted": run.admitted,
            "scheduled": run.prefill_start,
            "first_token": run.prefill_end,
            "last_token": run.decode_end,
            "first_token_reported": run.prefill_end + first_offset,
            "last_token_reported": run.decode_end + last_offset,
            "prompt_tokens": prompt,
            "cached_tokens": cached.astype(np.int64),
            "decode_steps": output,
            "preemptions": run.preemptions,
        }
    )


def _phase_table(truth, view, include_first, max_in_flight) -> pd.DataFrame:
    """Two rows per request (prefill, decode) with the times of ``view``."""
    n = len(truth)
    if view == "client":
        bounds = ("send", "first_token_reported", "last_token_reported")
    else:
        bounds = ("scheduled", "first_token", "last_token")
    start, first, last = (truth[name].to_numpy() for name in bounds)
    is_prefill = np.tile([True, False], n)
    t_start = np.empty(2 * n)
    t_end = np.empty(2 * n)
    t_start[0::2] = start
    t_end[0::2] = first
    t_start[1::2] = first
    t_end[1::2] = last
    decode = truth["decode_steps"].to_numpy() + int(include_first)
    phases = pd.DataFrame(
        {
            "request_id": np.repeat(np.arange(n), 2),
            "phase_type": np.where(is_prefill, "prefill", "decode"),
            "t_start": t_start,
            "t_end": t_end,
            "prefill_tokens": np.where(
                is_prefill, np.repeat(truth["prompt_tokens"].to_numpy(), 2), 0
            ),
            "decode_tokens": np.where(is_prefill, 0, np.repeat(decode, 2)),
            "instance_id": np.repeat(truth["instance_id"].to_numpy(), 2),
        }
    )
    cached = truth["cached_tokens"].to_numpy()
    if cached.any():  # as an engine logs them, e.g. vLLM's num_cached_tokens
        phases["cached_tokens"] = np.where(is_prefill, np.repeat(cached, 2), 0)
    if view == "engine":
        phases["arrival"] = np.repeat(truth["arrival"].to_numpy(), 2)
    elif view == "client":
        phases["arrival"] = np.repeat(truth["send"].to_numpy(), 2)
        if max_in_flight is not None:
            intended = truth["intended_arrival"].to_numpy()
            phases["intended_arrival"] = np.repeat(intended, 2)
    return phases


def _is_published(step_model) -> bool:
    return isinstance(step_model, str) and step_model == "published"


def _step_table(run: EngineRun, with_kv: bool, step_model="published") -> pd.DataFrame:
    fields = (
        run.step_instance,
        run.step_start,
        run.step_end,
        run.step_prefill_tokens,
        run.step_decode_tokens,
        run.step_running,
    )
    steps = pd.DataFrame(dict(zip(STEP_COLUMNS, fields, strict=True)))
    if with_kv:
        steps["kv_blocks"] = run.step_kv_blocks
    if _is_published(step_model):
        return steps
    # the ground truth of the richer step models' features
    steps["prefill_attention"] = run.step_prefill_attention
    steps["decode_context"] = run.step_decode_context
    steps["batch_size"] = run.step_batch_size
    return steps
