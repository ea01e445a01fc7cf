"""``sklearn-beta fit``'s choice of fit, and its schedule-consistent fit.

``--estimator auto`` (the default) asks
:func:`~sklearn_beta.engine_config._regime.detect_queueing` whether the
trace shows queueing: then (and on client-side times) it fits
:class:`~sklearn_beta.ScheduleBetaRegressor` with the engine settings given
or read from the trace, else the phase-exposure fit as before. A schedule
fit that fails or does not converge falls back to the phase-exposure fit
with a note. See docs/cli.md, "Which fit".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_validate

from ..core._columns import PhaseColumns
from ..engine._replay import replay_latencies
from ..engine._what_if import infer_max_in_flight
from ..engine_config._kv_search import KV_STRIDE, KVTrials, scan_kv_blocks
from ..engine_config._regime import (
    QueueingDecision,
    detect_queueing,
    is_client_side,
    schedule_engine_settings,
)
from ..engine_config._replay_calibration import calibrate_by_replay
from ..engine_config._schedule import MISFIT_SEARCH, ScheduleBetaRegressor
from ..engine_config._trace_fit import (
    MIN_UNQUEUED_SHARE,
    PREFILL_WINDOW,
    prefill_steps_of_client_phases,
    replayed_overheads,
    with_sends,
)
from ..model_selection._request_split import RequestKFold, make_schedule_scorer
from ._engine import one_line

#: ``schedule_misfit_`` above this is warned about: about 0.67 times the step
#: noise's sigma when the replay found the trace's schedule (0.009 at 2 %
#: noise), 0.3-0.75 where it converged to another one (docs/schedule.md).
MISFIT_WARNING = 0.1
#: The held-out check's quantities, in the report's order.
HELD_OUT = ("ttft", "decode", "e2e")
#: Most replays of each candidate's fit in the chunking search.
SEARCH_ITER = 8
#: When a chunk cap alone fits best, above the noise (``MISFIT_SEARCH``), the
#: best PAIR_CHUNKS chunk caps are tried under the best PAIR_BUDGETS budgets.
PAIR_CHUNKS = 2
PAIR_BUDGETS = 2
#: :func:`refine_kv` scans a KV cache read from the trace this share above
#: the reading, and KV_SPAN_BELOW below it: the client-side reading was
#: 0.08 % low and 0.5 % high on simulated vLLM-sized traces, an engine-side
#: one 2.1 % high (2642 against 2588 blocks: a preempted request counts
#: until its readmission), docs/schedule.md. The scan goes nearest first
#: and stops at the noise, so the wider side costs only where it is needed.
KV_SPAN = 0.01
KV_SPAN_BELOW = 0.03
#: Where the best size's misfit is above the noise, the trials start again
#: from a fit at it, at most KV_ROUNDS times, scanning KV_NEAR strides
#: either side.
KV_ROUNDS = 2
KV_NEAR = 4
#: A schedule fit whose own forecast of the trace (model time, from the
#: trace's sends) misses the trace's total decode time or end-to-end latency
#: by more than this share is not reported. The fit on the trace's clock
#: (its held-out check) cannot show such a miss: its steps end where the
#: trace's tokens did. Measured: converged fits on the regimes traces
#: forecast within 1 %; under per-request overheads that jitter, a fit that
#: settled on another schedule put a 218 ms last-token offset against
#: 110 ms steps and forecast the decode times 57 % short (docs/schedule.md).
FORECAST_MISS = 0.1


class ScheduleFallback(Exception):
    """The schedule fit gave no usable result; the message says why.
    ``settings``: the engine the schedule path read from the trace, None
    when it failed before."""

    settings = None


def choose_estimator(phases, args, instance_col) -> tuple[str, str]:
    """``("schedule" | "phase", reason)`` of ``--estimator``."""
    if args.estimator == "phase":
        return "phase", "--estimator phase"
    if args.dask is not None:
        return "phase", "--dask: the schedule-consistent fit runs in memory only"
    try:
        decision = detect_queueing(
            schedule_frame(phases, instance_col), block_size=args.block_size
        )
    except Exception as exc:  # noqa: BLE001 - the phase fit, with the reason
        return "phase", f"the queueing check failed ({one_line(exc)})"
    if args.estimator == "schedule":
        return "schedule", "--estimator schedule; " + decision.reason
    if decision.client_side and not decision.queued:
        # A send is no step boundary: even without a queue the request
        # waits for the step in flight, and the client's overheads sit in
        # every phase; the schedule fit models both (measured on
        # benchmarks/regimes.py's light client traces: mean TTFT within
        # 0.1-1.1 % against 30-60 % for the phase fit).
        return "schedule", (
            decision.reason + "; each request still waits for the step in "
            "flight and the client's overheads, which the schedule fit models"
        )
    return ("schedule" if decision.queued else "phase"), decision.reason


def schedule_frame(phases: pd.DataFrame, instance_col) -> pd.DataFrame:
    """The phase table as the schedule fit reads it: the instance in
    ``instance_id``, and on client-side times without an ``arrival`` column
    the sends (the prefill starts) in one."""
    frame = phases
    if instance_col != "instance_id":
        frame = frame.drop(columns="instance_id", errors="ignore")
        if instance_col is not None:
            frame = frame.rename(columns={instance_col: "instance_id"})
    if "arrival" not in frame.columns and phases.attrs.get("client_side"):
        frame = with_sends(frame)
    frame.attrs = dict(phases.attrs)
    return frame


def client_side_table(phases: pd.DataFrame, instance_col) -> bool:
    """Whether a phase table has client-side times (every prefill from its
    send, or the reader says so), as :func:`client_cut` reads it."""
    return is_client_side(schedule_frame(phases, instance_col))


@dataclass(frozen=True)
class ClientCut:
    """A client-side phase table as the phase-exposure fit reads it:
    ``table`` without the sends (which then no longer start the prefill
    phases), and what cuts its prefill phases to the steps that ran their
    prompts (``prompt_chunk`` tokens a step, None: one step a prompt)."""

    table: pd.DataFrame
    prompt_chunk: int | None
    columns: PhaseColumns

    def at(self, window: float = PREFILL_WINDOW) -> pd.DataFrame:
        """The table cut at ``window`` (by default the phase path's chunking
        search's; the fit then chooses its own,
        :func:`~sklearn_beta.engine_config._trace_fit.fit_client_phases`)."""
        return prefill_steps_of_client_phases(
            self.table,
            window_steps=window,
            chunk_size=self.prompt_chunk,
            columns=self.columns,
        )

    def note(self, window: float, unreplayed: str | None = None) -> str:
        """The report's note of the window chosen; ``unreplayed``: why the
        fits' own decode residuals chose it, not a replay of the sends."""
        judge = (
            "in a replay of the sends"
            if unreplayed is None
            else f"in the fits themselves, not in a replay: {unreplayed}"
        )
        if not np.isfinite(window):
            return (
                "client-side times: each prefill phase is fitted from its send "
                "(of the windows tried, the fit that explains the decode "
                f"phases best {judge})"
            )
        steps = "" if self.prompt_chunk is None else f" x ceil(P / {self.prompt_chunk})"
        return (
            f"client-side times: each prefill phase is fitted from {window:g}"
            f"{steps} of its request's own decode steps before its first token "
            "(never before its send), the steps that ran its prompt (of the "
            f"windows tried, the fit that explains the decode phases best {judge}); "
            "the time from the send to there is the client's delay and the "
            "wait, not engine time (the alphas below)"
        )


def client_cut(phases, instance_col, chunking) -> ClientCut | None:
    """The :class:`ClientCut` of a client-side phase table (prefill phases
    from the sends: a CSV or Parquet table's ``arrival``, or a reader's
    ``attrs["client_side"]``: TraceV2/V3, benchmark results), or None for
    server-side tables.

    ``chunking`` is ``(chunk_size, token_budget)``: a prompt's steps are
    ``ceil(P / min(chunk_size, token_budget))`` (one with neither). The
    schedule path's engine read gives it, or the options when they set one
    engine; the phase path's own search cannot, as it reads the cut table.
    """
    if not client_side_table(phases, instance_col):
        return None
    caps = [c for c in chunking if c is not None]
    sends = [c for c in ("arrival", "intended_arrival") if c in phases.columns]
    return ClientCut(
        phases.drop(columns=sends),
        min(caps) if caps else None,
        PhaseColumns.coerce({"instance_id": instance_col}),
    )


def client_overheads(frame, beta, engine, why, step_model="published") -> tuple:
    """``(alpha, note)``: the client's request overheads of a phase-exposure
    fit on client-side times; ``frame`` is the trace with the sends
    (:func:`schedule_frame`), ``(engine, why)`` :func:`client_engine`'s.

    The phase-exposure fit's residuals on such a trace hold the client's
    queueing as well as its overheads; a replay of the sends at the fitted
    betas tells them apart
    (:func:`~sklearn_beta.engine_config._trace_fit.replayed_overheads`) on
    :func:`client_engine`'s engine. The phase-exposure search's chunking is
    no engine to replay: on ``benchmarks/regimes.py --realism``'s client
    traces (budget 8192, no chunk cap) it chose chunk caps of 256-512
    tokens, whose replayed prefills outlast the observed first tokens
    (overheads 0), where the schedule path found the budget and the
    overheads took mean TTFT from -14 to -49 % to within 9 %
    (docs/accuracy.md). The alphas are 0, with a note, where the replay
    fails, where it queues nearly every request, and where
    :func:`client_engine` found no engine to replay (``why``).
    ``beta`` are the coefficients of ``step_model`` (a fit of another step
    model than the published one, ``--step-model``, is replayed with it).
    """
    if engine is None:
        return np.zeros(3), f"alphas (request overheads) are 0: {why}"
    try:
        found = replayed_overheads(
            frame, beta, step_model=step_model, **engine.replay_settings()
        )
    except ValueError as exc:
        return np.zeros(3), (
            "alphas (request overheads) are 0: the replay of the client's sends "
            f"that reads them failed ({one_line(exc)})"
        )
    if found.queued:
        return found.alpha, (
            "alphas (request overheads) are 0: a replay of the client's sends at "
            f"the fitted betas admits fewer than {MIN_UNQUEUED_SHARE:.0%} of the "
            "requests without queueing, and the queue it gets wrong would read "
            "as overhead"
        )
    note = (
        "alphas (request overheads) from a replay of the client's sends at the "
        f"fitted betas (chunk size {engine.chunk_size}, token budget "
        f"{engine.token_budget}, max_num_seqs {engine.max_num_seqs}, KV blocks "
        f"{engine.num_gpu_blocks}): the observed minus replayed first-token "
        f"times of the {found.n_used} of {found.n_requests} requests it admits "
        "without queueing; alpha2 is 0 (a last-token overhead beyond the first "
        "token's is not told apart from the betas' decode error)"
    )
    return found.alpha, note


def calibrated_betas(beta, interval, frame, engine) -> tuple:
    """``(beta, interval, section, note)``: a client-side trace's published
    betas calibrated by replaying its sends on ``engine``
    (:func:`~sklearn_beta.engine_config._replay_calibration.calibrate_by_replay`),
    the report's ``replay_calibration`` section and a note; the betas as
    given, None and why where the replay fails.

    The interval (``(3, 2)`` or None) keeps its widths about the calibrated
    betas: the calibration moves the centre by what the replay tells and
    the phase fit cannot, not the trace's noise behind the widths."""
    beta = np.asarray(beta, dtype=np.float64)
    try:
        found = calibrate_by_replay(
            frame, beta, beta_interval=interval, **engine.replay_settings()
        )
    except ValueError as exc:
        return (
            beta,
            interval,
            None,
            (
                "betas not calibrated by replay: the replay of the client's sends "
                f"failed ({one_line(exc)}); the phase fit's are reported"
            ),
        )
    if interval is not None:
        interval = np.maximum(np.asarray(interval) + (found.beta - beta)[:, None], 0)
    section = {
        "phase_fit_betas": beta.tolist(),
        "mismatch": {"phase_fit": found.mismatch_start, "calibrated": found.mismatch},
        "n_replays": found.n_replays,
        "converged": found.converged,
    }
    change = ", ".join(
        f"beta{k} {100 * (b / a - 1):+.1f} %" if a > 0 else f"beta{k} 0 -> {b:.3g}"
        for k, (a, b) in enumerate(zip(beta, found.beta, strict=True))
    )
    note = (
        "betas calibrated by replaying the client's sends (chunk size "
        f"{engine.chunk_size}, token budget {engine.token_budget}, max_num_seqs "
        f"{engine.max_num_seqs}, KV blocks {engine.num_gpu_blocks}): the "
        "phase fit's moved so that the replay reproduces the decode phases "
        f"best ({change}; mismatch {found.mismatch_start:.4g} -> "
        f"{found.mismatch:.4g} in {found.n_replays} replays"
        + ("" if found.converged else ", not converged")
        + "); the interval keeps the phase fit's widths, and a warning about a "
        "beta's value speaks of the phase fit's"
    )
    return found.beta, interval, section, note


def client_engine(frame, args, engine) -> tuple:
    """``(settings, None)``: the engine a client-side trace's sends replay
    on, or ``(None, why)`` where no replay can stand for the trace.

    ``engine`` is the schedule path's settings (``ScheduleFallback.settings``:
    chunking chosen by the schedule fits' misfit, ``max_num_seqs`` and the
    KV cache read from the trace), or the phase fit's ``(chunk_size,
    token_budget)`` with the rest read here as for the schedule fit. On a
    trace that shows queueing, an engine that bounds no queue (no
    ``max_num_seqs``, no KV cache) admits every request at once: on the
    realism mix at 12 req/s such a replay read 9.5 s of queue as overhead.
    """
    decision = detect_queueing(frame, block_size=args.block_size)
    if isinstance(engine, tuple):
        chunk_size, token_budget = engine
        try:
            settings = read_settings(frame, args, decision)
        except ValueError as exc:
            return None, f"the engine to replay could not be read ({one_line(exc)})"
        engine = replace(settings, chunk_size=chunk_size, token_budget=token_budget)
    unbounded = engine.max_num_seqs is None and engine.num_gpu_blocks is None
    if decision.queued and unbounded:
        return None, (
            "the trace shows queueing and the engine read from it bounds no "
            "queue (no max_num_seqs, no KV cache), so a replay of its sends "
            "would read the queue as overhead"
        )
    return engine, None


def read_settings(frame, args, decision: QueueingDecision):
    """max_num_seqs and the KV cache, given (the command line wins) or read."""
    return schedule_engine_settings(
        frame,
        decision,
        max_num_seqs="auto" if args.max_num_seqs is None else args.max_num_seqs,
        num_gpu_blocks="auto" if args.num_gpu_blocks is None else args.num_gpu_blocks,
        block_size=args.block_size,
    )


def search_chunking(frame, candidates, settings, progress) -> tuple:
    """``(chunk_size, token_budget, engine_config)``: the candidate whose
    schedule fit (at most :data:`SEARCH_ITER` replays) has a positive
    ``beta0`` and the least ``schedule_misfit_``. The phase-exposure search
    reads queueing as step time and under load prefers the smallest budget
    (issue 19); the schedule fit's misfit is the noise level on the right
    engine and tens of
    percent on a wrong one. ``engine_config`` is the report's section."""
    if len(candidates) == 1:
        return (*candidates[0], None)
    progress.say(
        f"choosing the chunking among {len(candidates)} candidates by schedule "
        "fit misfit..."
    )
    rows = _chunking_trials(frame, candidates, settings)
    ranked = _ranked(rows)
    if ranked and _chunk_cap_short_of_the_trace(ranked[0]):
        # a chunk cap fits best and still does not carry the trace: under a
        # token budget (neither alone) it may
        pairs = paired_candidates(ranked, candidates)
        if pairs:
            progress.say(
                f"no candidate within the noise: {len(pairs)} chunk caps under "
                "a token budget..."
            )
            rows += _chunking_trials(frame, pairs, settings)
            ranked = _ranked(rows)
    if not ranked:
        raise ScheduleFallback("every chunking candidate's schedule fit failed")
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    section = {
        "method": "schedule fit of each candidate (at most "
        f"{SEARCH_ITER} replays): least schedule_misfit_ (beta0 > 0)",
        "candidates": rows,
        "runner_up": None
        if runner is None
        else {k: runner[k] for k in ("chunk_size", "token_budget")},
        "margin": None
        if runner is None or not best["schedule_misfit"]
        else runner["schedule_misfit"] / best["schedule_misfit"] - 1,
        "same_engine_on_this_trace": [],
        "edge": False,
    }
    return best["chunk_size"], best["token_budget"], section


def _chunking_trials(frame, candidates, settings) -> list:
    """One row per candidate: its chunking and short fit's misfit."""
    rows = []
    for chunk, budget in candidates:
        trial = replace(settings, chunk_size=chunk, token_budget=budget)
        misfit = _trial_misfit(frame, trial, all_positive=False)
        rows.append(dict(chunk_size=chunk, token_budget=budget, schedule_misfit=misfit))
    return rows


def _chunk_cap_short_of_the_trace(best) -> bool:
    """Whether the best candidate is a chunk cap alone whose misfit is above
    the noise (under a KV cache read from the trace and not yet refined,
    every candidate's is: measured on ``kv_bound_trace``, chunk 256 alone
    1.11, under budget 512 0.85)."""
    alone = best["chunk_size"] is not None and best["token_budget"] is None
    return alone and best["schedule_misfit"] > MISFIT_SEARCH


def _ranked(rows) -> list:
    return sorted(
        (r for r in rows if r["schedule_misfit"] is not None),
        key=lambda r: r["schedule_misfit"],
    )


def paired_candidates(ranked, candidates) -> list:
    """Chunk caps under a token budget to try when a chunk cap alone fits
    best, above the noise: the :data:`PAIR_CHUNKS` best chunk caps of ``ranked``
    (rows with ``chunk_size``, ``token_budget``, best first), each under the
    :data:`PAIR_BUDGETS` best budgets above it and under twice and four
    times itself (an engine's budget need not be a usual vLLM one, e.g.
    chunk 256 under budget 512), without the ``candidates`` tried."""
    chunks = [r["chunk_size"] for r in ranked if r["token_budget"] is None]
    chunks = [c for c in chunks if c is not None][:PAIR_CHUNKS]
    budgets = [r["token_budget"] for r in ranked if r["chunk_size"] is None]
    budgets = [b for b in budgets if b is not None][:PAIR_BUDGETS]
    tried = set(candidates)
    pairs = []
    for chunk in chunks:
        for budget in sorted({*budgets, 2 * chunk, 4 * chunk}):
            if budget > chunk and (chunk, budget) not in tried:
                tried.add((chunk, budget))
                pairs.append((chunk, budget))
    return pairs


def _trial_misfit(frame, settings, *, all_positive: bool):
    """``schedule_misfit_`` of a short fit with these settings; None when it
    fails, a step costs nothing, or with ``all_positive`` a beta is 0."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = schedule_model(frame, settings).set_params(
                max_iter=SEARCH_ITER, confidence_level=None
            )
            model.fit(frame)
    except Exception:  # noqa: BLE001 - a failing candidate is dropped
        return None
    misfit = float(model.schedule_misfit_)
    positive = model.beta_ > 0
    if not (positive.all() if all_positive else positive[0]):
        return None
    return misfit if np.isfinite(misfit) else None


def refine_kv(frame, settings, progress):
    """A KV cache read from the trace, refined by the schedule fit's misfit.

    The reading is off by up to a few tenths of a percent (requests in
    prefill are not counted; a preempted request still is) and the fit is
    sharp in it: on a simulated vLLM-sized trace of 14000 blocks, fits at
    13989, 13999, 14001 and 14010 blocks put beta1 at 0 or -49 %. The
    fit, with the KV bound off, of the requests done before the queue
    forms gives the coefficients and offsets (it does not depend on the
    size; where it does not apply, one fit at the reading of
    :data:`SEARCH_ITER` replays); from them each size costs one replay and
    one fit on differences (``engine_config._kv_search``), scanned over
    :data:`KV_SPAN` above the reading and :data:`KV_SPAN_BELOW` below it.
    Returns ``(settings, rows)``: the settings with the least misfit, every
    trial.
    """
    if settings.evidence.get("num_gpu_blocks") != "from the trace":
        return settings, []
    read = settings.num_gpu_blocks
    progress.say(f"refining the KV cache from the reading {read} blocks...")
    unbound = _unbound(frame, settings, read)
    if unbound is not None:
        return unbound
    try:
        trials = KVTrials(schedule_model(frame, settings), frame, SEARCH_ITER)
    except Exception:  # noqa: BLE001 - the reading stays, as given
        return settings, []
    span = max(KV_STRIDE, round(read * KV_SPAN))
    below = max(KV_STRIDE, round(read * KV_SPAN_BELOW))
    low = max(int(settings.evidence.get("largest_request", 1)), read - below)
    best = scan_kv_blocks(trials, low, read + span)
    tried = dict(trials.tried)
    for _ in range(KV_ROUNDS):
        if trials.misfit(best) <= MISFIT_SEARCH or best == trials.start_blocks:
            break
        # the start, fitted at the reading, was on another schedule: start
        # again at the best size, and scan near it
        misfit = trials.misfit(best)
        trials.restart(best)
        near = KV_NEAR * KV_STRIDE
        again = scan_kv_blocks(trials, max(low, best - near), best + near)
        tried.update(trials.tried)  # from the better start
        if not trials.misfit(again) < misfit:
            break
        best = again
    rows = [
        {"num_gpu_blocks": b, "schedule_misfit": m} for b, m in sorted(tried.items())
    ]
    if not np.isfinite(tried.get(best, np.inf)):
        return settings, rows
    settings = replace(settings, num_gpu_blocks=int(best))
    settings.notes.append(
        f"num_gpu_blocks {best}: the least schedule misfit "
        f"({tried[best]:.3g}) of {len(rows)} sizes from {KV_SPAN_BELOW:.0%} "
        f"below to {KV_SPAN:.0%} above the reading {read}"
    )
    return settings, rows


def _unbound(frame, settings, read):
    """``(settings without a KV bound, rows)`` when a fit without one
    explains the trace (misfit at most :data:`MISFIT_WARNING`), else None.
    The reading is a heuristic (a prefill-bound engine also queues below
    its running plateau): measured on a chunk-256 budget-512 trace of 64
    running, misfits 0.011 without a KV bound, 0.29 at the reading."""
    free = _trial_misfit(
        frame, replace(settings, num_gpu_blocks=None), all_positive=False
    )
    if free is None or free > MISFIT_WARNING:
        return None
    notes = [n for n in settings.notes if not n.startswith("num_gpu_blocks")]
    notes.append(
        f"num_gpu_blocks not binding: the schedule fit without a KV bound "
        f"explains the trace (misfit {free:.3g}) where {read} blocks were read"
    )
    evidence = dict(settings.evidence, num_gpu_blocks="not binding")
    unbound = replace(settings, num_gpu_blocks=None, notes=notes, evidence=evidence)
    return unbound, [{"num_gpu_blocks": None, "schedule_misfit": free}]


def schedule_model(frame, settings) -> ScheduleBetaRegressor:
    """The estimator for these settings (KV cache, client cap from the
    trace's intended arrivals)."""
    kv = None
    if settings.num_gpu_blocks is not None:
        kv = {
            "num_gpu_blocks": settings.num_gpu_blocks,
            "block_size": settings.block_size,
        }
    return ScheduleBetaRegressor(
        chunk_size=settings.chunk_size,
        token_budget=settings.token_budget,
        max_num_seqs=settings.max_num_seqs,
        engine_settings=kv,
        arrival="arrival" if "arrival" in frame.columns else None,
        max_in_flight=infer_max_in_flight(frame),
    )


def fit_schedule(frame, settings, progress, *, strict: bool) -> ScheduleBetaRegressor:
    """The schedule-consistent fit with these settings (raises
    :class:`ScheduleFallback` when it fails, or with ``strict`` when it does
    not converge)."""
    model = schedule_model(frame, settings)
    progress.say("fitting the schedule-consistent estimator...")
    try:
        with warnings.catch_warnings():
            # The phase-exposure starts' warnings concern the start only; the
            # report warns of no convergence and a large misfit itself.
            warnings.simplefilter("ignore")
            model.fit(frame)
    except Exception as exc:  # noqa: BLE001 - any failure falls back, noted
        raise ScheduleFallback(f"the schedule fit failed ({one_line(exc)})") from exc
    if not np.all(np.isfinite(model.beta_)) or not np.any(model.beta_ > 0):
        raise ScheduleFallback(f"the schedule fit gave betas {model.beta_.tolist()}")
    if strict and not model.converged_:
        raise ScheduleFallback(
            f"the schedule fit did not converge in {model.n_iter_} replays"
        )
    return model


def forecast_misses(model, frame) -> dict:
    """The relative error of the fit's forecast of the whole trace (model
    time) on the trace's total first-token, decode and end-to-end times."""
    replayed = model.replay(frame)
    misses = {}
    for quantity in HELD_OUT:
        predicted, observed = replay_latencies(replayed, quantity)
        misses[quantity] = float(predicted.sum() / observed.sum() - 1.0)
    return misses


def check_forecast(model, frame, *, strict: bool) -> tuple[str, str | None]:
    """The report's note on :func:`forecast_misses`, and a warning (None:
    none) where the decode or end-to-end total misses by more than
    ``FORECAST_MISS``; with ``strict`` (the automatic mode) such a miss
    raises :class:`ScheduleFallback` instead."""
    try:
        misses = forecast_misses(model, frame)
    except Exception:  # noqa: BLE001 - the check is optional, noted
        return "no forecast check: the replay of the whole trace failed", None
    note = (
        "the fit's forecast of the whole trace (model time, from its sends) "
        "against its totals: "
        + ", ".join(f"{q} {100 * misses[q]:+.2f} %" for q in misses)
    )
    worst = max(("decode", "e2e"), key=lambda q: abs(misses[q]))
    if abs(misses[worst]) <= FORECAST_MISS:
        return note, None
    message = (
        f"the schedule fit's forecast of the trace misses its total "
        f"{'decode time' if worst == 'decode' else 'end-to-end latency'} "
        f"by {100 * misses[worst]:+.1f} % (more than "
        f"{100 * FORECAST_MISS:.0f} %): it settled on another schedule"
    )
    if strict:
        raise ScheduleFallback(message)
    return note, message


def held_out_check(model, frame, n_splits: int, progress) -> dict | None:
    """Mean absolute relative errors of held-out requests (``RequestKFold``,
    each fold fitted from the full fit's betas amid the whole trace's
    replay); None when the trace has too few requests."""
    n_requests = int(frame["request_id"].nunique())
    if n_requests < 2 * n_splits:
        return None
    progress.say(f"held-out check: {n_splits} folds of requests...")
    estimator = clone(model).set_params(trace=frame, init=model.beta_)
    with warnings.catch_warnings():
        # A fold's convergence is the check's business, not the fit's.
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_validate(
            estimator,
            frame,
            cv=RequestKFold(n_splits, shuffle=True, random_state=0),
            scoring={q: make_schedule_scorer(q) for q in HELD_OUT},
            error_score="raise",
        )
    return validation_section(
        n_splits, {q: float(-np.mean(scores[f"test_{q}"])) for q in HELD_OUT}
    )


def validation_section(n_splits: int, errors: dict) -> dict:
    """The report's ``validation``: the held-out requests' mean absolute
    relative errors by quantity (``HELD_OUT``)."""
    return {
        "metric": "mean absolute relative error of the held-out requests",
        "method": f"RequestKFold({n_splits}, shuffle=True, random_state=0): fit "
        "on the other requests amid the whole trace's replay, score the "
        "held-out requests",
        "n_splits": n_splits,
        **{q: errors[q] for q in HELD_OUT},
    }
