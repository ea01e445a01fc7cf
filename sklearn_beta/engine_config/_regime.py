"""Does a trace show queueing? The choice between the phase-exposure fits and
the schedule-consistent fit, and the engine settings the latter needs.

The phase-exposure estimators explain each phase by the steps it overlaps:
right while requests do not wait. A prefill phase that holds a wait in the
engine's queue (every client-side phase, which starts at the send; an
engine-side trace whose arrivals come well before the scheduled start) is
no sum of steps, and :class:`ScheduleBetaRegressor` models that wait
(docs/schedule.md). :func:`detect_queueing` decides from the trace alone and
says why; :func:`schedule_engine_settings` reads ``max_num_seqs`` and the KV
cache from it, engine-side by :func:`estimate_engine_settings`, client-side
from the decode phases (the requests running in the engine). See
``docs/cli.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..core._columns import PhaseColumns
from ._settings import (
    CEILING_SHARE,
    KV_QUANTILE,
    MIN_WAITING_SHARE,
    EngineSettings,
    block_events,
    estimate_engine_settings,
    request_spans,
)

__all__ = ["QueueingDecision", "detect_queueing", "schedule_engine_settings"]

#: A client-side trace's running count (requests between first and last
#: token) is read at this time-weighted quantile: its plateau, robust to the
#: brief overshoots of reporting offsets. Measured on simulated traces: the
#: 0.98 quantile is max_num_seqs exactly where it binds (256 of 256; 64 of 64
#: with a closed-loop client).
RUNNING_QUANTILE = 0.98
#: Client-side, requests queue when the sent requests without a first token
#: number on average at least this share of the running plateau (and at
#: least MIN_QUEUE): 0.01 at light load, 0.34 with a closed-loop client at
#: 130 % of capacity, 1.07 on a saturated vLLM-sized engine.
QUEUE_SHARE = 0.1
MIN_QUEUE = 2.0
#: ... for at least this share of the span: 0 at light load, 3 % on the
#: bursts of data/bench/results.json (5 running at most), 74-88 % on the
#: saturated and closed-loop traces of docs/cli.md.
CLIENT_QUEUEING_SHARE = 0.1


@dataclass(frozen=True)
class QueueingDecision:
    """Result of :func:`detect_queueing`.

    Attributes
    ----------
    queued : bool
        Whether the trace shows waiting that the phase-exposure fits cannot
        explain.
    client_side : bool
        Whether the prefill phases start at the client's sends.
    reason : str
        One line: what was found.
    evidence : dict
        The numbers the decision rests on.
    """

    queued: bool
    client_side: bool
    reason: str
    evidence: dict = field(default_factory=dict)


def is_client_side(phases: pd.DataFrame, arrival: str = "arrival", columns=None):
    """Whether the prefill phases start at the sends: the reader says so
    (``attrs["client_side"]``), or every prefill starts at its arrival."""
    if phases.attrs.get("client_side"):
        return True
    cols = PhaseColumns.coerce(columns)
    if arrival not in phases.columns:
        return False
    kind = phases[cols.phase_type].astype(str).str.lower().to_numpy()
    pre = phases[kind == "prefill"]
    sent = pd.to_numeric(pre[arrival]).to_numpy(dtype=float)
    start = pd.to_numeric(pre[cols.t_start]).to_numpy(dtype=float)
    return bool(sent.size) and bool(np.all(np.abs(start - sent) <= 1e-9))


def client_profile(phases: pd.DataFrame, *, block_size: int = 16, columns=None) -> dict:
    """Running and queued requests of a client-side trace between events,
    per instance.

    The engine's admission is not in the trace; the requests between first
    and last token (``running``) are the ones it runs, less the few in
    prefill; the sent ones without a first token (``queued``) wait for the
    engine or prefill. ``blocks`` counts the running requests' KV blocks
    (prompt blocks from the first token, one more per ``block_size``
    generated tokens)."""
    spans = request_spans(phases, columns, arrival=None)
    send, first, last = spans["start"], spans["prefill_end"], spans["end"]
    n = send.size
    b_time, b_change, b_owner = block_events(
        first, first, last, spans["prompt"], spans["decode"], block_size
    )
    ones, zeros = np.ones(n, np.int64), np.zeros(n, np.int64)
    nb = np.zeros(b_time.size, np.int64)
    time = np.concatenate([send, first, last, b_time])
    instance = spans["instance"][np.concatenate([np.arange(n)] * 3 + [b_owner])]
    d_run = np.concatenate([zeros, ones, -ones, nb])
    d_queue = np.concatenate([ones, -ones, zeros, nb])
    d_blocks = np.concatenate([zeros, zeros, zeros, b_change])
    # Each instance's changes sum to zero: one running sum over the events
    # sorted by instance, then time, counts each instance.
    order = np.lexsort((time, instance))
    time, instance = time[order], instance[order]
    # The value between two distinct times is the sum after every event at
    # the first: keep the last row of each time.
    last_row = np.append(
        (time[1:] != time[:-1]) | (instance[1:] != instance[:-1]), True
    )
    same = np.append(instance[1:] == instance[:-1], False)
    duration = np.where(same, np.append(np.diff(time), 0.0), 0.0)[last_row]
    return {
        "duration": duration,
        "running": np.cumsum(d_run[order])[last_row],
        "queued": np.cumsum(d_queue[order])[last_row],
        "blocks": np.cumsum(d_blocks[order])[last_row],
    }


def _weighted_quantile(values, weights, q: float):
    if not values.size or weights.sum() <= 0:
        return values.max() if values.size else 0
    order = np.argsort(values, kind="stable")
    share = np.cumsum(weights[order]) / weights.sum()
    return values[order][min(int(np.searchsorted(share, q)), order.size - 1)]


def client_evidence(phases, *, block_size: int = 16, columns=None) -> dict:
    """The client-side numbers of :func:`detect_queueing` and
    :func:`schedule_engine_settings`: the running plateau, the share of the
    queueing time spent on it, the mean queue and the KV level."""
    prof = client_profile(phases, block_size=block_size, columns=columns)
    duration, running = prof["duration"], prof["running"]
    span = float(duration.sum())
    plateau = int(_weighted_quantile(running, duration, RUNNING_QUANTILE))
    mean_queue = float(np.dot(prof["queued"], duration) / span) if span > 0 else 0.0
    queueing = prof["queued"] > max(MIN_QUEUE, QUEUE_SHARE * plateau)
    wait_time = float(duration[queueing].sum())
    near = running >= plateau - max(1, int(0.02 * plateau))
    at_plateau = float(duration[queueing & near].sum())
    kv = _weighted_quantile(prof["blocks"][queueing], duration[queueing], KV_QUANTILE)
    spans = request_spans(phases, columns, arrival=None)
    tokens = spans["prompt"] + spans["decode"]
    return {
        "running_plateau": plateau,
        "mean_queue": mean_queue,
        "queueing_share": wait_time / span if span > 0 else 0.0,
        "ceiling_share": at_plateau / wait_time if wait_time > 0 else 0.0,
        "kv_level": int(kv),
        "largest_request": int(-(-tokens.max() // block_size)) if tokens.size else 0,
    }


def detect_queueing(
    phases: pd.DataFrame,
    *,
    arrival: str = "arrival",
    block_size: int = 16,
    columns=None,
) -> QueueingDecision:
    """Whether a trace shows queueing, and why.

    * **Client-side times** (the reader marks them, ``attrs["client_side"]``,
      or every prefill starts at its ``arrival``): the prefill phase runs
      from the send and holds any wait in the engine's queue. Requests queue
      when the sent ones without a first token outnumber
      :data:`QUEUE_SHARE` of the running plateau (requests between first
      and last token; at least :data:`MIN_QUEUE`) for at least
      :data:`CLIENT_QUEUEING_SHARE` of the span.
    * **Engine-side times with arrivals** before the scheduled prefill
      start: requests wait (longer than the median prefill phase, the wait
      for a step boundary) for at least :data:`MIN_WAITING_SHARE` of the
      span (:func:`~sklearn_beta.engine_config.estimate_engine_settings`'
      evidence), or a ``preemptions`` column counts KV preemptions.
    * Otherwise (no arrival column, no waits): no.

    Parameters
    ----------
    phases : DataFrame
        The phase table.
    arrival : str, default="arrival"
        Column of the arrivals (sends) on prefill rows.
    block_size : int, default=16
        Tokens per KV block, for the KV evidence.
    columns : PhaseColumns, mapping or None, default=None
        Column names.

    Returns
    -------
    decision : QueueingDecision
    """
    if is_client_side(phases, arrival, columns):
        ev = client_evidence(phases, block_size=block_size, columns=columns)
        queued = ev["queueing_share"] >= CLIENT_QUEUEING_SHARE
        counts = (
            f"{ev['mean_queue']:.1f} sent requests without a first token on "
            f"average, more than {QUEUE_SHARE:.0%} of the {ev['running_plateau']} "
            f"running for {ev['queueing_share']:.0%} of the span"
        )
        reason = (
            "client-side times with queueing: each prefill phase runs from the "
            f"send and holds the wait in the engine's queue ({counts})"
            if queued
            else f"client-side times without queueing ({counts}; under "
            f"{CLIENT_QUEUEING_SHARE:.0%})"
        )
        return QueueingDecision(queued, True, reason, ev)
    preempted = _preemptions(phases, columns)
    if arrival not in phases.columns:
        if preempted:
            return QueueingDecision(
                True, False, f"{preempted} KV preemption(s) in the trace", {}
            )
        return QueueingDecision(
            False, False, f"no {arrival!r} column: no wait in the queue shows", {}
        )
    from_trace = estimate_engine_settings(
        phases,
        chunk_size=None,
        token_budget=None,
        block_size=block_size,
        arrival=arrival,
        columns=columns,
    )
    ev = dict(from_trace.evidence, preemptions=preempted)
    share = ev["waiting_share"]
    if share >= MIN_WAITING_SHARE or preempted:
        return QueueingDecision(
            True,
            False,
            f"requests wait in the queue for {share:.0%} of the span "
            f"({ev['ceiling_share']:.0%} of it with {ev['running_max']} "
            f"running)" + (f", {preempted} KV preemption(s)" if preempted else ""),
            ev,
        )
    return QueueingDecision(
        False,
        False,
        f"no queueing: requests wait longer than a step for {share:.1%} of "
        f"the span (under {MIN_WAITING_SHARE:.0%})",
        ev,
    )


def _preemptions(phases, columns=None) -> int:
    """Preemptions the trace counts (a ``preemptions`` column), else 0."""
    if "preemptions" not in phases.columns:
        return 0
    cols = PhaseColumns.coerce(columns)
    kind = phases[cols.phase_type].astype(str).str.lower().to_numpy()
    counts = pd.to_numeric(phases.loc[kind == "prefill", "preemptions"])
    return int(counts.fillna(0).sum())


def schedule_engine_settings(
    phases: pd.DataFrame,
    decision: QueueingDecision,
    *,
    max_num_seqs="auto",
    num_gpu_blocks="auto",
    block_size: int = 16,
    chunk_size=None,
    token_budget=None,
    arrival: str = "arrival",
    columns=None,
) -> EngineSettings:
    """The engine settings of a schedule-consistent fit, given or read.

    ``"auto"`` reads ``max_num_seqs`` and ``num_gpu_blocks`` from the trace,
    a value (or None) gives it; the chunking is given (the command line
    chooses it first). Engine-side, this is
    :func:`~sklearn_beta.engine_config.estimate_engine_settings`.
    Client-side, the requests between first and last token are the running
    ones (less the few in prefill): ``max_num_seqs`` is their plateau (the
    :data:`RUNNING_QUANTILE` of their count) when requests queue for at least
    :data:`CLIENT_QUEUEING_SHARE` of the span and the count sits within 2 %
    of the plateau for at least :data:`CEILING_SHARE` of that time;
    otherwise, when requests queue, the KV cache binds and
    ``num_gpu_blocks`` is the running requests' blocks at the
    :data:`KV_QUANTILE` while they queue (low by the blocks of the requests
    in prefill, which the trace does not show as running), unless that
    cannot hold the longest request alone.

    Parameters
    ----------
    phases : DataFrame
        The phase table.
    decision : QueueingDecision
        :func:`detect_queueing`'s result for it.
    max_num_seqs, num_gpu_blocks : int, None or "auto", default="auto"
        Given settings or ``"auto"``.
    block_size : int, default=16
        Tokens per KV block.
    chunk_size, token_budget : int or None, default=None
        The chunking.
    arrival : str, default="arrival"
        Column of the arrivals.
    columns : PhaseColumns, mapping or None, default=None
        Column names.

    Returns
    -------
    settings : EngineSettings
        ``evidence`` says, per setting, ``"given"``, ``"from the trace"`` or
        ``"not binding"``.
    """
    if not decision.client_side:
        return estimate_engine_settings(
            phases,
            max_num_seqs=max_num_seqs,
            num_gpu_blocks=num_gpu_blocks,
            block_size=block_size,
            chunk_size=chunk_size,
            token_budget=token_budget,
            arrival=arrival,
            columns=columns,
        )
    ev = dict(decision.evidence) or client_evidence(
        phases, block_size=block_size, columns=columns
    )
    queued = ev["queueing_share"] >= CLIENT_QUEUEING_SHARE
    binds = queued and ev["ceiling_share"] >= CEILING_SHARE
    notes = []
    if max_num_seqs == "auto":
        max_num_seqs = ev["running_plateau"] if binds else None
        ev["max_num_seqs"] = "from the trace" if binds else "not binding"
        notes.append(
            f"max_num_seqs {max_num_seqs}: the requests between first and last "
            f"token sit at that plateau for {ev['ceiling_share']:.0%} of the "
            "time requests queue"
            if binds
            else "max_num_seqs not binding: the requests between first and "
            f"last token sit within 2 % of their plateau {ev['running_plateau']} "
            f"for {ev['ceiling_share']:.0%} of the time requests queue "
            f"({ev['queueing_share']:.0%} of the span)"
        )
    else:
        ev["max_num_seqs"] = "given"
    if num_gpu_blocks == "auto":
        # A cache that cannot hold the longest request alone is no reading.
        kv_binds = queued and not binds and ev["kv_level"] >= ev["largest_request"]
        num_gpu_blocks = ev["kv_level"] if kv_binds else None
        ev["num_gpu_blocks"] = "from the trace" if kv_binds else "not binding"
        notes.append(
            f"num_gpu_blocks {num_gpu_blocks}: requests queue while the running "
            "count stays below a plateau; the running requests' KV blocks sit "
            "there (a lower bound: requests in prefill are not counted)"
            if kv_binds
            else "num_gpu_blocks not binding: no queue below a running plateau"
        )
    else:
        ev["num_gpu_blocks"] = "given"
    ev["chunking"] = "given"
    return EngineSettings(
        max_num_seqs=max_num_seqs,
        num_gpu_blocks=num_gpu_blocks,
        block_size=int(block_size),
        chunk_size=chunk_size,
        token_budget=token_budget,
        evidence=ev,
        notes=notes,
    )
