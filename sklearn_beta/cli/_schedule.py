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
from dataclasses import replace

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_validate

from ..engine._what_if import infer_max_in_flight
from ..engine_config._regime import (
    QueueingDecision,
    detect_queueing,
    schedule_engine_settings,
)
from ..engine_config._schedule import ScheduleBetaRegressor
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


class ScheduleFallback(Exception):
    """The schedule fit gave no usable result; the message says why."""


def choose_estimator(phases, args, instance_col) -> tuple[str, str]:
    """``("schedule" | "phase", reason)`` of ``--estimator``."""
    if args.estimator == "phase":
        return "phase", "--estimator phase"
    if args.step_model != "published":
        return "phase", (
            "--step-model "
            + str(args.step_model)
            + ": the schedule-consistent fit has the published three "
            "coefficients only"
        )
    if args.dask is not None:
        return "phase", "--dask: the schedule-consistent fit runs in memory only"
    try:
        decision = detect_queueing(
            schedule_frame(phases, instance_col), block_size=args.block_size
        )
    except (ValueError, TypeError, KeyError) as exc:
        return "phase", f"the queueing check failed ({one_line(exc)})"
    if args.estimator == "schedule":
        return "schedule", "--estimator schedule; " + decision.reason
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
        kind = frame["phase_type"].astype(str).str.lower()
        sends = frame.loc[kind == "prefill"].set_index("request_id")["t_start"]
        frame = frame.assign(arrival=frame["request_id"].map(sends).to_numpy())
    frame.attrs = dict(phases.attrs)
    return frame


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
    schedule fit (at most :data:`SEARCH_ITER` replays) has all betas
    positive and the least ``schedule_misfit_``. The phase-exposure search
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
    rows = []
    for chunk, budget in candidates:
        trial = replace(settings, chunk_size=chunk, token_budget=budget)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = schedule_model(frame, trial).set_params(
                    max_iter=SEARCH_ITER, confidence_level=None
                )
                model.fit(frame)
            misfit, converged = float(model.schedule_misfit_), bool(model.converged_)
            if not np.all(model.beta_ > 0) or not np.isfinite(misfit):
                misfit = None  # a degenerate engine: steps of no time
        except Exception:  # noqa: BLE001 - a failing candidate is dropped
            misfit, converged = None, False
        rows.append(
            dict(
                chunk_size=chunk,
                token_budget=budget,
                schedule_misfit=misfit,
                converged=converged,
            )
        )
    ranked = sorted(
        (r for r in rows if r["schedule_misfit"] is not None),
        key=lambda r: r["schedule_misfit"],
    )
    if not ranked:
        raise ScheduleFallback("every chunking candidate's schedule fit failed")
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    section = {
        "method": "schedule fit of each candidate (at most "
        f"{SEARCH_ITER} replays): least schedule_misfit_, all betas positive",
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
    return {
        "metric": "mean absolute relative error of the held-out requests",
        "method": f"RequestKFold({n_splits}, shuffle=True, random_state=0): fit "
        "on the other requests amid the whole trace's replay, score the "
        "held-out requests",
        "n_splits": n_splits,
        **{q: float(-np.mean(scores[f"test_{q}"])) for q in HELD_OUT},
    }
