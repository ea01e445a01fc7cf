"""The report of a schedule-consistent ``sklearn-beta fit``.

The same JSON layout as the phase-exposure report
(:func:`~sklearn_beta.cli._report.build_report`), so that every output
renders it, plus ``fit`` (which estimator and why), ``engine_settings``
(each setting's value and where it came from) and ``schedule`` (the offsets
``alpha_``, convergence and ``schedule_misfit_``).
"""

from __future__ import annotations

import numpy as np

from .. import __version__
from ..io._export import BLIS_UNITS, to_blis_coefficients
from ._report import SCHEMA, UNITS, _fit_warnings, _json_ready
from ._schedule import MISFIT_WARNING

#: How the report names a setting's provenance.
SOURCES = {
    "given": "given",
    "from the trace": "read from the trace",
    "not binding": "not binding (none)",
}


def blackbox_alphas(model, frame) -> np.ndarray:
    """The fit's offsets as the legacy ``alpha_coeffs`` (per request before
    the queue, per input token, per output token), in seconds.

    Delaying every arrival by ``c_f`` (the first-token offset total: the
    queue delay plus the first-token reporting delay) shifts the whole
    engine timeline by it, so ``alpha0 = c_f`` gives every first token; the
    last token's extra offset ``c_l - c_f`` is spread over the output tokens
    (``alpha2``, per decode token of the trace, clipped at 0); ``alpha1 = 0``.
    """
    first = model.alpha_["queue"] + model.alpha_["first_token"]
    last = model.alpha_["queue"] + model.alpha_["last_token"]
    kind = frame["phase_type"].astype(str).str.lower().to_numpy()
    tokens = frame.loc[kind == "decode", "decode_tokens"].to_numpy(dtype=float)
    mean_tokens = float(tokens.mean()) if tokens.size else 0.0
    per_token = (last - first) / mean_tokens if mean_tokens > 0 else 0.0
    return np.array([max(first, 0.0), 0.0, max(per_token, 0.0)])


def _diagnostics(model, frame) -> dict:
    observed = (frame["t_end"] - frame["t_start"]).to_numpy(dtype=float)
    predicted = model.predict(frame)
    residual = observed - predicted
    total = float(np.sum((observed - observed.mean()) ** 2))
    return {
        "r2": 1.0 - float(np.sum(residual**2)) / total if total > 0 else None,
        "rmse_seconds": float(np.sqrt(np.mean(residual**2))),
        "mean_duration_seconds": float(observed.mean()),
        "schedule_misfit": float(model.schedule_misfit_),
    }


def engine_settings_section(settings) -> dict:
    """Each setting's value and source, and the evidence read."""
    ev = settings.evidence
    section = {
        name: {
            "value": getattr(settings, name),
            "source": SOURCES.get(ev.get(name, "given"), ev.get(name)),
        }
        for name in ("max_num_seqs", "num_gpu_blocks")
    }
    section["block_size"] = {"value": settings.block_size, "source": "given"}
    section["evidence"] = _json_ready(
        {k: v for k, v in ev.items() if k not in ("max_num_seqs", "num_gpu_blocks")}
    )
    section["notes"] = list(settings.notes)
    return section


def _schedule_section(model, max_in_flight) -> dict:
    return {
        "alpha": dict(model.alpha_),
        "alpha_meaning": _alpha_meaning(model.alpha_split_identified_),
        "alpha_totals": dict(model.alpha_totals_),
        "alpha_at_bound": list(model.alpha_at_bound_),
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "schedule_misfit": float(model.schedule_misfit_),
        "init_beta": model.init_beta_.tolist(),
        "init_misfit": _json_ready(dict(model.init_misfit_)),
        "max_in_flight": max_in_flight,
    }


def _alpha_meaning(split_identified: bool) -> dict:
    """What each ``alpha_`` entry is: from client times only the totals
    (a common shift of the queue and reporting delays fits them alike)."""
    if split_identified:
        return {
            "queue": "delay from the arrival (send) to the engine's queue",
            "first_token": "reporting delay of the first token after the engine's step",
            "last_token": "reporting delay of the last token after the engine's step",
        }
    return {
        "queue": "not identified from client times: held at 0, its delay is in "
        "the totals",
        "first_token": "total: delay before the queue plus the first token's "
        "reporting delay (the split is not identified)",
        "last_token": "total: delay before the queue plus the last token's "
        "reporting delay (the split is not identified)",
    }


def schedule_report(model, frame, args, fmt, parts: dict) -> dict:
    """The JSON document of a schedule fit. ``parts``: ``engine``
    (:func:`~sklearn_beta.cli._report.engine_summary`), ``settings``
    (:class:`~sklearn_beta.engine_config.EngineSettings`), ``reason``,
    ``validation`` (:func:`held_out_check`), ``notes`` and
    ``instance_col``."""
    engine, settings = parts["engine"], parts["settings"]
    betas = dict(zip(UNITS, model.beta_.tolist(), strict=True))
    alphas = blackbox_alphas(model, frame)
    instances = (
        sorted(frame["instance_id"].astype(str).unique().tolist())
        if ("instance_id" in frame.columns)
        else ["0"]
    )
    return {
        "schema": SCHEMA,
        "sklearn_beta_version": __version__,
        "parameters": _parameters(args, fmt, settings, parts["instance_col"]),
        "trace": {
            "n_phases": int(len(frame)),
            "n_requests": int(frame["request_id"].nunique()),
            "n_instances": len(instances),
            "instances": instances,
            "client_side": bool(frame.attrs.get("client_side", False)),
        },
        "fit": {"estimator": "schedule", "reason": parts["reason"]},
        "chunk_size": engine["chunk_size"],
        "token_budget": engine["token_budget"],
        "engine_config": engine["engine_config"],
        "engine_settings": engine_settings_section(settings),
        "betas": betas,
        "confidence_interval": _interval(model),
        "validation": parts["validation"],
        "units": dict(UNITS),
        "alphas": alphas.tolist(),
        "blis": {
            "beta_coeffs": to_blis_coefficients(model.beta_),
            "alpha_coeffs": to_blis_coefficients(alphas),
            "units": list(BLIS_UNITS),
        },
        "schedule": _schedule_section(model, parts["max_in_flight"]),
        "diagnostics": _diagnostics(model, frame),
        "convergence": {
            "algo": "schedule",
            "converged": bool(model.converged_),
            "n_iter": int(model.n_iter_),
            "history": _json_ready(model.history_.to_dict(orient="records")),
        },
        "notes": list(parts["notes"]) + _schedule_notes(model, alphas),
        "warnings": _fit_warnings(betas) + _misfit_warnings(model),
    }


def _parameters(args, fmt, settings, instance_col) -> dict:
    return {
        "trace": args.trace,
        "format": fmt,
        "time_unit": args.time_unit,
        "estimator": args.estimator,
        "chunk_size": args.chunk_size,
        "chunk_candidates": list(args.chunk_candidates),
        "budget_candidates": list(args.budget_candidates),
        "cv_folds": args.cv_folds,
        "max_num_seqs": args.max_num_seqs,
        "num_gpu_blocks": args.num_gpu_blocks,
        "block_size": args.block_size,
        "model_chunk_size": settings.chunk_size,
        "token_budget": settings.token_budget,
        "algo": "schedule",
        "instance_col": instance_col,
    }


def _interval(model) -> dict | None:
    if model.beta_ci_ is None:
        return None
    bounds = np.asarray(model.beta_ci_, dtype=float)
    return {"level": float(model.confidence_level)} | {
        name: _json_ready(bounds[i].tolist()) for i, name in enumerate(UNITS)
    }


def _schedule_notes(model, alphas) -> list[str]:
    a = model.alpha_
    notes = [
        f"offsets (s): queue {a['queue']:.4g}, first token {a['first_token']:.4g}, "
        f"last token {a['last_token']:.4g} (alpha_); exported as alpha0 = "
        f"{alphas[0]:.4g} s per request before the queue and alpha2 = "
        f"{alphas[2]:.4g} s per output token"
    ]
    notes += [
        f"{name} is 0: the non-negativity bound is active"
        for name, value in zip(UNITS, model.beta_, strict=True)
        if value == 0.0
    ]
    return notes + _offset_notes(model)


def _offset_notes(model) -> list[str]:
    """What the offsets do not say: the split of a client trace's totals,
    and the offsets the fit holds at zero."""
    notes = []
    if not model.alpha_split_identified_:
        notes.append(
            "offsets: client times show only the totals (the delay before the "
            "queue plus each reporting delay; a common shift of the three fits "
            "them alike), so queue is 0 and first/last token hold the totals"
        )
    if model.alpha_at_bound_:
        notes.append(
            f"offsets {', '.join(model.alpha_at_bound_)} are 0: the "
            "non-negativity bound is active (the times put them a little below: "
            "no such delay, within the step noise)"
        )
    return notes


def _misfit_warnings(model) -> list[str]:
    warnings = []
    if not model.converged_:
        warnings.append(
            f"the schedule fit did not converge in {model.n_iter_} replays: "
            "check the engine settings (--max-num-seqs, --num-gpu-blocks, "
            "--token-budget, --chunk-size)"
        )
    if model.schedule_misfit_ > MISFIT_WARNING:
        warnings.append(
            f"the schedule fit's misfit is {model.schedule_misfit_:.3g} (about "
            "0.67 times the step noise's sigma where the replay finds the "
            f"trace's schedule; above {MISFIT_WARNING:g} it converged to "
            "another schedule or the engine settings are wrong): check "
            "--max-num-seqs, --num-gpu-blocks, --token-budget, --chunk-size"
        )
    return warnings
