"""A step model's schedule-consistent fit on the engine the published
schedule path found.

``sklearn-beta fit`` runs the published schedule path once where the trace
shows queueing (or is client-side): the engine settings read from the
trace, the chunking chosen by the schedule fits' misfit, the KV cache
refined (:mod:`sklearn_beta.cli._schedule`). A step model other than the
published one is then fitted on that same engine, starting from the
published fit's steps (``embed_beta``); ``--step-model auto`` compares the
candidates' fits on held-out requests there (:func:`compare_schedules`).
No second chunking search runs: a search per step model made the command
line's tests take 507 s. See docs/cli.md, "Step models".
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import clone

from .. import __version__
from ..core._model_config import read_model_description
from ..core._step_features import STEP_FEATURES, check_step_model
from ..core._trained_physics import identifiable_map, to_blis_betas
from ..engine_config._schedule_design import StepBasis, embed_beta
from ..io._export_trained_physics import blis_alphas_of_offsets
from ..model_selection import RequestKFold, compare_step_models, make_schedule_scorer
from ._engine import one_line
from ._report import SCHEMA
from ._schedule import HELD_OUT, schedule_model, validation_section
from ._schedule_report import (
    _misfit_warnings,
    _parameters,
    _schedule_section,
    engine_settings_section,
)
from ._step_model import _alpha_note, _candidates, _coefficients

__all__ = [
    "compare_schedules",
    "fit_step_schedule",
    "schedule_step_params",
    "choose_step_model",
    "step_model_fits",
    "step_schedule_report",
]

#: The metric ``--step-model auto`` chooses by on the schedule: the mean of
#: the held-out requests' TTFT and decode-phase errors (the prefill step
#: model shows in the one, the decode step model in the other).
SELECT = "ttft_decode"


def schedule_step_params(step_model, args) -> dict:
    """The estimator parameters of one step model (the trained-physics
    deployment of ``args`` with it)."""
    tp = step_model == "trained-physics"
    # set (None) for the others too: a comparison's candidates share one
    # estimator, whose deployment must not leak into a model without one
    return {
        "step_model": step_model,
        "model_config": args.model_config if tp else None,
        "gpu": args.gpu if tp else None,
        "tensor_parallelism": args.tensor_parallelism if tp else None,
    }


def _basis(params: dict) -> StepBasis:
    step_model = params["step_model"]
    if step_model != "trained-physics":
        return StepBasis(tuple(check_step_model(step_model)))
    deployment = read_model_description(
        params["model_config"],
        gpu=params["gpu"],
        tp=params.get("tensor_parallelism") or 1,
    )
    return StepBasis(STEP_FEATURES, identifiable_map(deployment))


def embedded_start(params: dict, published_beta):
    """The start of a step model's fit: the published fit's steps in that
    model's coefficients; ``"auto"`` (the estimator's own phase-exposure
    starts) without a usable published fit."""
    if published_beta is None or not np.any(np.asarray(published_beta) > 0):
        return "auto"
    return embed_beta(_basis(params), published_beta)


def fit_step_schedule(frame, settings, params: dict, published_beta, progress):
    """The schedule fit of one step model on ``settings``, from the
    published fit's steps; when that start fails or does not converge, from
    the estimator's own starts too, and the converged (else the less
    misfit) fit is kept. Raises the fit's error when both fail."""
    label = params["step_model"]
    label = label if isinstance(label, str) else ",".join(label)
    progress.say(f"fitting step model {label} to the schedule...")
    base = schedule_model(frame, settings).set_params(**params)
    starts = [embedded_start(params, published_beta)]
    if not isinstance(starts[0], str):
        starts.append("auto")
    best, error = None, None
    for init in starts:
        try:
            with warnings.catch_warnings():
                # the starts' warnings concern the start; the report warns
                # of no convergence and a large misfit itself
                warnings.simplefilter("ignore")
                model = clone(base).set_params(init=init).fit(frame)
        except Exception as exc:  # noqa: BLE001 - the other start, else raised
            error = exc
            continue
        if best is None or _rank(model) < _rank(best):
            best = model
        if best.converged_:
            break
    if best is None:
        raise error
    return best


def _rank(model) -> tuple:
    misfit = float(model.schedule_misfit_)
    return (not model.converged_, misfit if np.isfinite(misfit) else np.inf)


def _ttft_decode(estimator, X, y=None) -> float:
    """Minus the mean of the held-out requests' TTFT and decode-phase mean
    absolute relative errors in a replay of the whole trace."""
    ttft = make_schedule_scorer("ttft")(estimator, X)
    decode = make_schedule_scorer("decode")(estimator, X)
    return 0.5 * (ttft + decode)


def compare_schedules(frame, fits: list, n_splits: int, progress) -> dict:
    """``--step-model auto`` on the schedule: every fitted candidate's
    held-out requests (``RequestKFold(n_splits)``, shuffled, seed 0, each
    fold fitted from the full fit's coefficients amid the whole trace's
    replay), chosen by the one-standard-error rule on :data:`SELECT`.

    ``fits`` holds ``(parameters, full fit)`` per candidate, the fit being
    the reason it failed where it did. Returns the report's
    ``step_model_selection`` with ``chosen`` (an index of ``fits``); each
    candidate's ``errors`` are its held-out TTFT, decode and end-to-end
    errors."""
    progress.say(f"comparing {len(fits)} step models by held-out requests...")
    fitted = [(p, m) for p, m in fits if not isinstance(m, str)]
    if not fitted:
        raise ValueError("no step model's schedule fit succeeded")
    scoring = {SELECT: _ttft_decode} | {q: make_schedule_scorer(q) for q in HELD_OUT}
    comparison = compare_step_models(
        clone(fitted[0][1]).set_params(trace=frame),
        frame,
        [p | {"init": m.beta_} for p, m in fitted],
        cv=RequestKFold(n_splits, shuffle=True, random_state=0),
        scoring=scoring,
        select=SELECT,
    )
    rows = iter(comparison["candidates"])
    table = [
        next(rows) if not isinstance(model, str) else _failed_row(params, model)
        for params, model in fits
    ]
    return {
        "metric": "mean of the held-out requests' TTFT and decode-phase mean "
        "absolute relative errors (schedule-consistent fits)",
        "cv": f"RequestKFold({n_splits}, shuffled) replayed in the whole trace",
        "rule": "the fewest coefficients within one standard error of the best",
        "candidates": table,
        "chosen": next(i for i, row in enumerate(table) if row["chosen"]),
    }


def _failed_row(params: dict, reason: str) -> dict:
    return {
        "step_model": params["step_model"],
        "n_coefficients": None,
        "held_out_error": None,
        "standard_error": None,
        "chosen": False,
        "errors": None,
        "error": reason,
    }


def validation_of(row: dict, n_splits: int) -> dict | None:
    """The report's ``validation`` from a comparison row's errors."""
    errors = row.get("errors")
    if not errors:
        return None
    return validation_section(n_splits, errors)


def failure(exc) -> str:
    """A failed candidate's reason, one line."""
    return f"the schedule fit failed ({one_line(exc)})"


def step_schedule_report(model, frame, args, fmt, parts: dict) -> dict:
    """The JSON document of a step model's schedule fit: the step-model
    report's sections (``coefficients`` by name, ``step_model_selection``,
    a trained-physics export) with the schedule report's ``fit``,
    ``engine_settings``, ``schedule`` and ``validation``. ``parts`` as
    :func:`~sklearn_beta.cli._schedule_report.schedule_report`'s, plus
    ``selection``."""
    offsets = dict(model.alpha_)
    alpha = blis_alphas_of_offsets(*offsets.values())
    coefficients, blis = _coefficients(model, model.model_description_, alpha)
    engine, settings = parts["engine"], parts["settings"]
    report = {
        "schema": SCHEMA,
        "sklearn_beta_version": __version__,
        "parameters": _parameters(args, fmt, settings, parts["instance_col"]),
        "trace": {
            "n_phases": int(len(frame)),
            "n_requests": int(frame["request_id"].nunique()),
        },
        "fit": {"estimator": "schedule", "reason": parts["reason"]},
        "chunk_size": engine["chunk_size"],
        "token_budget": engine["token_budget"],
        "engine_config": engine["engine_config"],
        "engine_settings": engine_settings_section(settings),
        "validation": parts["validation"],
        "step_model": parts["step_model"],
        "objective": "schedule",
        "coefficients": coefficients,
        "confidence_level": model.confidence_level,
        "step_model_selection": parts["selection"],
        "request_overheads": offsets,
        "schedule": _schedule_section(model, parts["max_in_flight"]),
        "notes": list(parts["notes"]) + _notes(model, parts["step_model"], offsets),
        "warnings": _misfit_warnings(model),
    }
    if model.model_description_ is not None:
        betas = to_blis_betas(model.beta_, model.model_description_)
        report["blis_trained_physics"] = blis
        report["fixed_coefficients"] = dict(model.fixed_coefficients_)
        report["notes"].append(_alpha_note(offsets, alpha))
        report["notes"] += [
            f"BLIS {name} fixed at {why}" for name, why in betas.fixed.items()
        ]
    return report


def _notes(model, step_model, offsets: dict) -> list[str]:
    label = step_model if isinstance(step_model, str) else ",".join(step_model)
    return [
        f"step model {label} fitted by the schedule-consistent estimator "
        "(ScheduleBetaRegressor) on the engine the published schedule path "
        f"found; {model.n_iter_} replay(s), "
        + ("converged" if model.converged_ else "NOT converged")
        + f", schedule misfit {model.schedule_misfit_:.3g}",
        "request overheads (s): first token {first_token:.6g}, last token "
        "{last_token:.6g} after the engine's, queue delay {queue:.6g}".format(
            **offsets
        ),
    ]


def step_model_fits(frame, settings, args, published, progress, *, strict) -> list:
    """``(parameters, fit or reason it failed)`` of each step model of
    ``--step-model`` (every candidate of ``auto``) on ``settings``; the
    published candidate is the published path's fit ``published`` (None
    when it failed). With ``strict`` (``--estimator auto``) a fit that does
    not converge counts as failed, as the published path's does."""
    names = _candidates(args) if args.step_model == "auto" else [args.step_model]
    start = None if published is None else published.beta_
    fits = []
    for name in names:
        params = schedule_step_params(name, args)
        if name == "published":
            model = published or "the published schedule fit failed"
        else:
            try:
                model = fit_step_schedule(frame, settings, params, start, progress)
            except Exception as exc:  # noqa: BLE001 - listed as failed, noted
                model = failure(exc)
        if strict and not isinstance(model, str) and not model.converged_:
            model = f"the schedule fit did not converge in {model.n_iter_} replays"
        fits.append((params, model))
    return fits


def choose_step_model(frame, fits: list, n_splits: int, progress) -> tuple:
    """``(fit, selection, validation)``: the one fit of a named step model
    with its held-out check, or ``auto``'s comparison and its choice."""
    if len(fits) == 1:
        model = fits[0][1]
        if isinstance(model, str):
            raise ValueError(model)
        return model, None, None
    selection = compare_schedules(frame, fits, n_splits, progress)
    chosen = selection.pop("chosen")
    validation = validation_of(selection["candidates"][chosen], n_splits)
    return fits[chosen][1], selection, validation
