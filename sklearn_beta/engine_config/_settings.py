"""Engine settings read from a trace: where ``max_num_seqs`` and the KV cache bind.

A saturated engine leaves its limits in the trace. Requests wait in the queue
(arrival before the prefill start) while the running count, the overlap of
``[prefill start, decode end)`` per instance, sits at a ceiling: that ceiling
is ``max_num_seqs``. When the KV cache binds instead, requests wait while the
running count stays below any fixed ceiling and the running requests' KV
blocks (prompt plus generated tokens, ``block_size`` to a block) peak at the
cache's capacity. The chunking (token budget, chunk size) is read by held-out
replay (:func:`~sklearn_beta.select_engine_config`). See
``docs/engine_config.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import pandas as pd

from ..core._columns import PhaseColumns
from ._search import VLLM_TOKEN_BUDGETS, default_engine_candidates, select_engine_config
from ._trace_fit import DEFAULT_CHUNK_CANDIDATES

__all__ = [
    "EngineSettings",
    "concurrency_profile",
    "estimate_engine_settings",
    "estimate_kv_blocks",
    "estimate_max_num_seqs",
]

#: ``max_num_seqs`` binds when the running count sits at its ceiling for at
#: least this share of the time some request waits. Measured on simulated
#: saturated traces (budget 8192, ceilings 128 and 256): 0.83 to 0.95; with a
#: binding KV cache instead, under 0.01.
CEILING_SHARE = 0.5
#: A limit shows only where requests wait (arrival before the prefill
#: start): at least this share of the trace's span has a waiting request.
MIN_WAITING_SHARE = 0.02


@dataclass(frozen=True)
class Profile:
    """Running and waiting requests and KV blocks between a trace's events.

    Per interval ``[time, time + duration)`` of one instance: ``running``
    (requests between prefill start and decode end), ``waiting`` (arrived,
    prefill not started; zeros without arrivals) and ``blocks`` (KV blocks of
    the running requests).
    """

    instance: np.ndarray
    time: np.ndarray
    duration: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    blocks: np.ndarray


@dataclass(frozen=True)
class EngineSettings:
    """Result of :func:`estimate_engine_settings`.

    Attributes
    ----------
    max_num_seqs : int or None
        The ceiling of the running count when it binds (or the given value);
        None when the trace does not show it (then the replay's default, the
        most running at once, is a lower bound that never binds where the
        engine's did not).
    num_gpu_blocks : int or None
        The peak KV blocks of the running requests when the KV cache binds
        (or the given value); None when it does not show.
    block_size : int
        Tokens per KV block (given, not read from the trace).
    chunk_size, token_budget : int or None
        The chunking chosen by :func:`~sklearn_beta.select_engine_config` (or
        given); None: none.
    engine_config : EngineConfig or None
        The search's result when it ran.
    evidence : dict
        What each estimate rests on: ``running_max``, ``ceiling_share`` (the
        share of the waiting time spent at the running ceiling),
        ``waiting_share`` (the share of the trace's span with a request
        waiting), ``kv_peak`` (peak blocks of the running requests) and, per
        setting, ``"given"``, ``"from the trace"`` or ``"not binding"``.
    notes : list of str
        One line per setting: what was found and why.
    """

    max_num_seqs: int | None
    num_gpu_blocks: int | None
    block_size: int
    chunk_size: int | None
    token_budget: int | None
    engine_config: object = None
    evidence: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def replay_settings(self) -> dict:
        """The keyword arguments of :func:`~sklearn_beta.replay.replay_trace`."""
        return {
            "chunk_size": self.chunk_size,
            "token_budget": self.token_budget,
            "max_num_seqs": self.max_num_seqs,
            "num_gpu_blocks": self.num_gpu_blocks,
            "block_size": self.block_size,
        }


def request_spans(
    phases: pd.DataFrame, columns=None, arrival: str | None = "arrival"
) -> dict:
    """Per request (first appearance order): instance code, arrival (or NaN),
    prefill start and end, decode end, prompt and decode tokens."""
    cols = PhaseColumns.coerce(columns)
    needed = [cols.request_id, cols.phase_type, cols.t_start, cols.t_end]
    needed += [cols.prefill_tokens, cols.decode_tokens]
    missing = [c for c in needed if c not in phases.columns]
    if missing:
        raise ValueError(
            f"The phase table is missing column(s) {missing}; it has "
            f"{list(phases.columns)}."
        )
    frame = phases.reset_index(drop=True)
    kind = frame[cols.phase_type].astype(str).str.lower().to_numpy()
    pre = frame[kind == "prefill"]
    dec = frame[kind == "decode"]
    ids = pre[cols.request_id].to_numpy()
    position = pd.Index(dec[cols.request_id]).get_indexer(ids)
    if (position < 0).any():
        bad = ids[position < 0][:5]
        raise ValueError(
            f"Every request needs a decode row (column {cols.phase_type!r}); "
            f"request(s) without one, first: {bad.tolist()}."
        )
    dec = dec.iloc[position]
    has_instance = cols.instance_id is not None and cols.instance_id in frame
    instance = (
        pd.factorize(pre[cols.instance_id], sort=True)[0]
        if has_instance
        else np.zeros(len(pre), dtype=np.intp)
    )
    if arrival is not None and arrival in frame.columns:
        arrived = pd.to_numeric(pre[arrival]).to_numpy(dtype=float)
    else:
        arrived = np.full(len(pre), np.nan)
    return {
        "instance": np.asarray(instance, dtype=np.intp),
        "arrival": arrived,
        "start": pd.to_numeric(pre[cols.t_start]).to_numpy(dtype=float),
        "prefill_end": pd.to_numeric(pre[cols.t_end]).to_numpy(dtype=float),
        "end": pd.to_numeric(dec[cols.t_end]).to_numpy(dtype=float),
        "prompt": pd.to_numeric(pre[cols.prefill_tokens]).to_numpy(dtype=np.int64),
        "decode": pd.to_numeric(dec[cols.decode_tokens]).to_numpy(dtype=np.int64),
    }


def block_events(
    start, prefill_end, end, prompt, decode, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Times and changes of each request's KV blocks.

    ``ceil(P / block_size)`` blocks at the prefill start; the decode step
    that takes the context to a multiple of ``block_size`` plus one token
    adds a block (decode steps spread evenly over the decode phase, which a
    steady batch makes nearly exact); all freed at the decode end.
    """
    prompt_blocks = -(-prompt // block_size)
    total_blocks = -(-(prompt + decode) // block_size)
    n_inc = total_blocks - prompt_blocks
    # The g-th decode token (g = 1..D) needs a new block when P + g - 1 is a
    # multiple of block_size: g = g0 + k * block_size.
    g0 = np.mod(-prompt, block_size) + 1
    owner = np.repeat(np.arange(prompt.size), n_inc)
    first_of = np.cumsum(n_inc) - n_inc
    k = np.arange(owner.size) - first_of[owner]
    g = g0[owner] + k * block_size
    span = end[owner] - prefill_end[owner]
    inc_time = prefill_end[owner] + (g - 1) / np.maximum(decode[owner], 1) * span
    times = np.concatenate([start, inc_time, end])
    change = np.concatenate(
        [prompt_blocks, np.ones(owner.size, np.int64), -total_blocks]
    )
    return (
        times,
        change,
        np.concatenate([np.arange(prompt.size), owner, np.arange(prompt.size)]),
    )


def concurrency_profile(
    phases: pd.DataFrame,
    *,
    columns=None,
    arrival: str | None = "arrival",
    block_size: int = 16,
) -> Profile:
    """Running and waiting requests and running KV blocks between events.

    Every count is a prefix sum over the instance's events sorted in time
    (each instance's changes sum to zero, so one sum over all instances
    sorted by instance then time gives every instance's counts); the value
    between two distinct times is the sum after every event at the first.
    """
    spans = request_spans(phases, columns, arrival)
    inst = spans["instance"]
    n = inst.size
    # A request arriving during a step waits for its end whatever the load:
    # only a wait longer than the median prefill phase (a step at light
    # load) shows a limit.
    grace = float(np.median(spans["prefill_end"] - spans["start"])) if n else 0.0
    queued_at = spans["arrival"] + grace
    has_arrival = np.isfinite(queued_at) & (queued_at < spans["start"])
    b_time, b_change, b_owner = block_events(
        spans["start"],
        spans["prefill_end"],
        spans["end"],
        spans["prompt"],
        spans["decode"],
        block_size,
    )
    ones = np.ones(n, np.int64)
    zeros = np.zeros(n, np.int64)
    wait = has_arrival.astype(np.int64)
    time = np.concatenate(
        [
            spans["start"],
            spans["end"],
            np.where(has_arrival, queued_at, spans["start"]),
            b_time,
        ]
    )
    owner = np.concatenate([np.arange(n)] * 3 + [b_owner])
    d_run = np.concatenate([ones, -ones, zeros, np.zeros(b_time.size, np.int64)])
    d_wait = np.concatenate([-wait, zeros, wait, np.zeros(b_time.size, np.int64)])
    d_blocks = np.concatenate([zeros, zeros, zeros, b_change])
    instance = inst[owner]
    order = np.lexsort((time, instance))
    time, instance = time[order], instance[order]
    running = np.cumsum(d_run[order])
    waiting = np.cumsum(d_wait[order])
    blocks = np.cumsum(d_blocks[order])
    last = np.ones(time.size, dtype=bool)
    last[:-1] = (time[1:] != time[:-1]) | (instance[1:] != instance[:-1])
    nxt = np.append(time[1:], time[-1])
    same = np.append(instance[1:] == instance[:-1], False)
    duration = np.where(same, nxt - time, 0.0)
    return Profile(
        instance[last],
        time[last],
        duration[last],
        running[last],
        waiting[last],
        blocks[last],
    )


#: The KV estimate is this time-weighted quantile of the running requests'
#: blocks while requests wait. Measured on simulated KV-bound traces (3000
#: requests, caches of 9000 and 18038 blocks, 38-59 preemptions): 0.5 reads
#: 0.5-3.5 % low (the headroom a prompt that does not fit leaves), the peak
#: 0.8-1.3 % high (preempted requests still counted, decode steps spread
#: evenly), 0.9 within 0.1 %.
KV_QUANTILE = 0.9


def kv_level(profile: Profile) -> int:
    """The :data:`KV_QUANTILE` (time-weighted) of the running blocks while
    requests wait; the peak when nobody waits."""
    waiting = (profile.waiting > 0) & (profile.duration > 0)
    if not waiting.any():
        return int(profile.blocks.max()) if profile.blocks.size else 0
    blocks, weight = profile.blocks[waiting], profile.duration[waiting]
    order = np.argsort(blocks, kind="stable")
    share = np.cumsum(weight[order]) / weight.sum()
    at = min(int(np.searchsorted(share, KV_QUANTILE)), order.size - 1)
    return int(blocks[order][at])


def _waiting_stats(profile: Profile) -> tuple[float, float, int]:
    """``(waiting share of the span, share of the waiting time at the
    running ceiling, running ceiling)``."""
    span = float(profile.duration.sum())
    waiting = profile.waiting > 0
    wait_time = float(profile.duration[waiting].sum())
    ceiling = int(profile.running.max()) if profile.running.size else 0
    at_ceiling = float(profile.duration[waiting & (profile.running == ceiling)].sum())
    share = at_ceiling / wait_time if wait_time > 0 else 0.0
    return (wait_time / span if span > 0 else 0.0), share, ceiling


def estimate_max_num_seqs(
    phases: pd.DataFrame,
    *,
    columns=None,
    arrival: str | None = "arrival",
    ceiling_share: float = CEILING_SHARE,
) -> int | None:
    """``max_num_seqs`` from the running count's plateau, or None.

    The running count is the overlap of ``[prefill start, decode end)`` per
    instance (the prefill phase must start at the engine's first scheduled
    step: engine-side or ``view="phases"`` traces, not client sends). It
    binds when requests wait (``arrival`` column before the prefill start)
    for at least :data:`MIN_WAITING_SHARE` of the span and the running count
    sits at its maximum for at least ``ceiling_share`` of that waiting time;
    the estimate is that maximum, exact on traces whose steps are all
    observed (the count changes only at step boundaries). A wait shorter
    than the median prefill phase is the wait for the next step boundary,
    not a limit, and does not count. Without an arrival column nothing
    shows who waited: None.

    Parameters
    ----------
    phases : DataFrame
        The phase table, one prefill and one decode row per request.
    columns : PhaseColumns, mapping or None, default=None
        Column names.
    arrival : str or None, default="arrival"
        Column of the queue arrivals (on prefill rows).
    ceiling_share : float, default=0.5
        Least share of the waiting time spent at the ceiling.

    Returns
    -------
    max_num_seqs : int or None

    Examples
    --------
    >>> from sklearn_beta.datasets import simulate_trace
    >>> from sklearn_beta.engine_config import estimate_max_num_seqs
    >>> phases = simulate_trace(1500, beta=(6e-3, 2.5e-5, 5e-5), chunk_size=None,
    ...                         token_budget=8192, max_num_seqs=64,
    ...                         arrival_rate=30.0, view="engine", random_state=0)
    >>> estimate_max_num_seqs(phases)
    64
    """
    _check_share(ceiling_share)
    profile = concurrency_profile(phases, columns=columns, arrival=arrival)
    waiting_share, share, ceiling = _waiting_stats(profile)
    if waiting_share < MIN_WAITING_SHARE or share < ceiling_share:
        return None
    return ceiling


def estimate_kv_blocks(
    phases: pd.DataFrame,
    *,
    columns=None,
    arrival: str | None = "arrival",
    block_size: int = 16,
    ceiling_share: float = CEILING_SHARE,
) -> int | None:
    """The KV cache's blocks (``num_gpu_blocks``) where it binds, or None.

    The KV cache binds when requests wait for at least
    :data:`MIN_WAITING_SHARE` of the span while the running count is not
    at a plateau (under ``ceiling_share`` of the waiting time at its
    maximum, else ``max_num_seqs`` binds). The running requests' blocks
    (``ceil(P / block_size)`` from the prefill start, one more per
    ``block_size`` generated tokens, decode steps spread evenly over the
    decode phase, all freed at the decode end) sit at the cache's capacity
    while requests wait for it: the estimate is their time-weighted
    :data:`KV_QUANTILE` while requests wait. Not exact: a preempted request
    still counts until its readmission (the trace does not show it leave)
    and the decode steps are spread evenly, so the peak reads high, and a
    prompt that does not fit leaves headroom, so the median reads low;
    measured within 0.1 % (tests assert 1 %).

    Parameters
    ----------
    phases : DataFrame
        The phase table.
    columns : PhaseColumns, mapping or None, default=None
        Column names.
    arrival : str or None, default="arrival"
        Column of the queue arrivals (on prefill rows).
    block_size : int, default=16
        Tokens per block.
    ceiling_share : float, default=0.5
        As in :func:`estimate_max_num_seqs`.

    Returns
    -------
    num_gpu_blocks : int or None
    """
    _check_share(ceiling_share)
    _check_positive_int(block_size, "block_size")
    profile = concurrency_profile(
        phases, columns=columns, arrival=arrival, block_size=block_size
    )
    waiting_share, share, _ = _waiting_stats(profile)
    if waiting_share < MIN_WAITING_SHARE or share >= ceiling_share:
        return None
    return kv_level(profile)


def estimate_engine_settings(
    phases: pd.DataFrame,
    *,
    max_num_seqs: int | None | str = "auto",
    num_gpu_blocks: int | None | str = "auto",
    block_size: int = 16,
    chunk_size: int | None | str = "auto",
    token_budget: int | None | str = "auto",
    candidates=None,
    estimator=None,
    n_splits: int = 3,
    arrival: str | None = "arrival",
    columns=None,
) -> EngineSettings:
    """Every engine setting of the replay, given or read from the trace.

    ``"auto"`` reads a setting from the trace, a value (or None) gives it:
    ``max_num_seqs`` (:func:`estimate_max_num_seqs`), ``num_gpu_blocks``
    (:func:`estimate_kv_blocks`, only when ``max_num_seqs`` is not the
    binding limit) and the chunking by held-out replay
    (:func:`~sklearn_beta.select_engine_config`, over ``candidates``, or the
    default ones; with the token budget given and the chunk size ``"auto"``,
    the chunk sizes under that budget), given the other settings found.

    Parameters
    ----------
    phases : DataFrame
        The phase table (prefill from the engine's first scheduled step, an
        ``arrival`` column for the queue arrivals).
    max_num_seqs, num_gpu_blocks : int, None or "auto", default="auto"
        Given settings or ``"auto"``.
    block_size : int, default=16
        Tokens per KV block.
    chunk_size, token_budget : int, None or "auto", default="auto"
        The chunking, given or ``"auto"`` (both must be given to skip the
        search).
    candidates : iterable of (chunk_size, token_budget), default=None
        The search's candidates when both are ``"auto"``.
    estimator : Pipeline or None, default=None
        The search's estimator (:func:`~sklearn_beta.select_engine_config`).
    n_splits : int, default=3
        The search's time-block folds.
    arrival : str or None, default="arrival"
        Column of the queue arrivals.
    columns : PhaseColumns, mapping or None, default=None
        Column names.

    Returns
    -------
    settings : EngineSettings
    """
    _check_positive_int(block_size, "block_size")
    for name, value in (
        ("max_num_seqs", max_num_seqs),
        ("num_gpu_blocks", num_gpu_blocks),
    ):
        if value != "auto" and value is not None:
            _check_positive_int(value, name)
    profile = concurrency_profile(
        phases, columns=columns, arrival=arrival, block_size=block_size
    )
    waiting_share, share, ceiling = _waiting_stats(profile)
    evidence = {
        "running_max": ceiling,
        "ceiling_share": share,
        "waiting_share": waiting_share,
        "kv_level": kv_level(profile),
    }
    notes = []
    if phases.attrs.get("client_side"):
        notes.append(
            "client-side trace: prefill phases start at the sends, so the "
            "running count is the client's in-flight count and the waits are "
            "not the engine's queue; max_num_seqs and the KV cache read from "
            "it describe the client (give them, or use engine-side times)"
        )
    queued = waiting_share >= MIN_WAITING_SHARE
    stats = (queued, waiting_share, share, ceiling)
    max_num_seqs = _max_num_seqs_setting(max_num_seqs, stats, evidence, notes)
    num_gpu_blocks = _kv_setting(num_gpu_blocks, stats, evidence, notes)
    chunk_size, token_budget, config = _chunking_setting(
        phases,
        (chunk_size, token_budget),
        dict(
            estimator=estimator,
            candidates=candidates,
            n_splits=n_splits,
            max_num_seqs=max_num_seqs,
            num_gpu_blocks=num_gpu_blocks,
            block_size=block_size,
            columns=columns,
        ),
        evidence,
        notes,
    )
    return EngineSettings(
        max_num_seqs=max_num_seqs,
        num_gpu_blocks=num_gpu_blocks,
        block_size=int(block_size),
        chunk_size=chunk_size,
        token_budget=token_budget,
        engine_config=config,
        evidence=evidence,
        notes=notes,
    )


def _max_num_seqs_setting(max_num_seqs, stats, evidence: dict, notes: list):
    """``max_num_seqs`` as given, or the running ceiling where requests wait
    at it for most of their waiting time (None: not binding)."""
    if max_num_seqs != "auto":
        evidence["max_num_seqs"] = "given"
        return max_num_seqs
    queued, waiting_share, share, ceiling = stats
    binds = queued and share >= CEILING_SHARE
    evidence["max_num_seqs"] = "from the trace" if binds else "not binding"
    notes.append(
        f"max_num_seqs {ceiling}: the running count sits there for "
        f"{share:.0%} of the time requests wait"
        if binds
        else f"max_num_seqs not binding: requests wait {waiting_share:.1%} "
        f"of the time, {share:.0%} of it at the running maximum {ceiling}"
    )
    return ceiling if binds else None


def _kv_setting(num_gpu_blocks, stats, evidence: dict, notes: list):
    """``num_gpu_blocks`` as given, or the running requests' KV level where
    requests wait below a running plateau (None: not binding)."""
    if num_gpu_blocks != "auto":
        evidence["num_gpu_blocks"] = "given"
        return num_gpu_blocks
    queued, _, share, ceiling = stats
    binds = queued and share < CEILING_SHARE
    num_gpu_blocks = evidence["kv_level"] if binds else None
    evidence["num_gpu_blocks"] = "from the trace" if binds else "not binding"
    notes.append(
        f"num_gpu_blocks {num_gpu_blocks}: requests wait while the running "
        f"count stays below a plateau ({share:.0%} of the waiting time at "
        f"{ceiling}); the running requests' blocks sit there"
        if binds
        else "num_gpu_blocks not binding: no wait below a running plateau"
    )
    return num_gpu_blocks


def _chunking_setting(phases, chunking, search: dict, evidence: dict, notes: list):
    """``(chunk_size, token_budget, config)``: as given (config None), or by
    held-out replay (:func:`~sklearn_beta.select_engine_config`) given the
    other settings."""
    chunk_size, token_budget = chunking
    if chunk_size != "auto" and token_budget != "auto":
        evidence["chunking"] = "given"
        return chunk_size, token_budget, None
    if search["candidates"] is None:
        search["candidates"] = _chunking_candidates(chunk_size, token_budget)
    estimator = search.pop("estimator")
    config = select_engine_config(phases, estimator, **search)
    evidence["chunking"] = "from the trace"
    notes.append(
        f"chunking: chunk size {config.chunk_size}, token budget "
        f"{config.token_budget} by held-out replay"
    )
    notes.extend(config.notes)
    return config.chunk_size, config.token_budget, config


def _chunking_candidates(chunk_size, token_budget) -> list[tuple]:
    """The search's candidates for the chunking left ``"auto"``."""
    if chunk_size == "auto" and token_budget == "auto":
        return default_engine_candidates()
    if token_budget == "auto":
        return [(chunk_size, b) for b in VLLM_TOKEN_BUDGETS] + [(chunk_size, None)]
    return [(c, token_budget) for c in DEFAULT_CHUNK_CANDIDATES] + [
        (None, token_budget)
    ]


def _check_share(value) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value <= 1:
        raise ValueError(f"ceiling_share must be in (0, 1], got {value!r}.")


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
