"""The report of one ``sklearn-beta fit``: JSON document, table and exports.

Builds the JSON-ready report (schema ``sklearn-beta/fit/v1``) from a
:class:`~sklearn_beta._trace_fit.TraceFit` and renders it as a table, a BLIS
``models:`` document or an llm-d simulator config.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from .. import __version__
from ..engine_config._search import select_engine_config
from ..engine_config._trace_fit import (
    ITERATIVE_OPTIONS,
    TRANSFORMER_OPTIONS,
    TraceFit,
    make_model,
)
from ..io._export import (
    BLIS_UNITS,
    blis_model_entry,
    format_blis_models,
    format_llm_d_config,
    llm_d_latencies,
    to_blis_coefficients,
)

SCHEMA = "sklearn-beta/fit/v1"
UNITS = {"beta0": "s/step", "beta1": "s/prefill_token", "beta2": "s/decode_token"}
#: beta0 outside this range (seconds per step) is warned about: a wrong
#: --time-unit is the usual cause.
BETA0_PLAUSIBLE = (1e-5, 1.0)
#: Margins within select_engine_config's tolerance are ties.
_TIE = inspect.signature(select_engine_config).parameters["tolerance"].default


def trace_summary(phases, fit: TraceFit) -> dict:
    """The report's ``trace`` section of a phase table read in memory."""
    return {
        "n_phases": int(len(phases)),
        "n_requests": int(phases["request_id"].nunique()),
        "n_instances": len(fit.instance_names),
        "instances": [str(x) for x in fit.instance_names],
        "client_side": bool(phases.attrs.get("client_side", False)),
    }


def build_report(
    fit: TraceFit, args, fmt: str, trace: dict, engine, options, alpha, notes
) -> dict:
    """The JSON document of one fit (schema ``sklearn-beta/fit/v1``).

    ``trace`` is the ``trace`` section (:func:`trace_summary`), ``engine``
    :func:`engine_summary`'s: the engine configuration and its held-out
    replay errors.
    """
    betas = dict(zip(UNITS, fit.beta.tolist(), strict=True))
    notes = list(notes) + _fit_notes(fit, betas, alpha)
    return {
        "schema": SCHEMA,
        "sklearn_beta_version": __version__,
        "parameters": {
            "trace": args.trace,
            "format": fmt,
            "time_unit": args.time_unit,
            "chunk_size": args.chunk_size,
            "chunk_candidates": list(args.chunk_candidates),
            "budget_candidates": list(args.budget_candidates),
            "cv_folds": args.cv_folds,
            # The replay's engine settings (None: the replay's defaults).
            **{
                name: getattr(args, name, None)
                for name in ("max_num_seqs", "num_gpu_blocks", "block_size")
            },
            "model_chunk_size": fit.chunk_size,
            **_model_parameters(options),
            "instance_col": options["instance_col"],
        },
        "trace": trace,
        "chunk_size": engine["chunk_size"],
        "token_budget": engine["token_budget"],
        "engine_config": engine["engine_config"],
        "betas": betas,
        "confidence_interval": _confidence_interval(fit),
        "validation": engine["validation"],
        "units": dict(UNITS),
        "alphas": None if alpha is None else alpha.tolist(),
        "blis": {
            "beta_coeffs": to_blis_coefficients(fit.beta),
            "alpha_coeffs": to_blis_coefficients(
                np.zeros(3) if alpha is None else alpha
            ),
            "units": list(BLIS_UNITS),
        },
        "diagnostics": _json_ready(fit.diagnostics),
        "convergence": {
            "algo": fit.algo,
            "converged": fit.converged,
            "n_iter": fit.n_iter,
            "history": _json_ready(fit.history.to_dict(orient="records")),
        },
        "notes": notes,
        "warnings": _fit_warnings(betas),
    }


def _model_parameters(options: dict) -> dict:
    # The parameters the estimators ran with, defaults included.
    model = make_model(**options)
    transformer, regressor = model[0].get_params(), model[-1].get_params()
    params = {k: transformer[k] for k in TRANSFORMER_OPTIONS}
    params["algo"] = options["algo"]
    if options["algo"] == "iterative":
        params |= {k: regressor[k] for k in ITERATIVE_OPTIONS}
        params["correction_mode"] = regressor["correction_mode"]
    else:
        params["correction_mode"] = transformer["correction_mode"]
    return params


def _fit_notes(fit: TraceFit, betas: dict, alpha) -> list[str]:
    notes = []
    if fit.converged is False:
        notes.append(
            f"the iterative fit did not converge in {fit.n_iter} iterations "
            f"(last change {fit.history['step'].iloc[-1]:.3g} >= tol {fit.tol:g}); "
            "raise --max-iter or damp with --damping < 1"
        )
    for name, value in betas.items():
        if value == 0.0:
            notes.append(
                f"{name} is 0: the non-negativity bound is active, or the trace "
                "has too little variation in pressures to identify it"
            )
    if alpha is None:
        notes.append(
            "alphas (request overheads) are 0: a server-side trace does not "
            "show the client's view of a request"
        )
    return notes


def _fit_warnings(betas: dict) -> list[str]:
    low, high = BETA0_PLAUSIBLE
    beta0 = betas["beta0"]
    if beta0 > high or 0 < beta0 < low:
        return [
            f"beta0 = {beta0:.3g} s per step is implausible (expected "
            f"{low:g} to {high:g} s): are the times in seconds? (--time-unit)"
        ]
    return []


def _engine_pair(pair: tuple) -> dict:
    return dict(zip(("chunk_size", "token_budget"), pair, strict=True))


def engine_summary(config, pair: tuple, args) -> dict:
    """The report's ``chunk_size``, ``token_budget``, ``engine_config`` and
    ``validation`` from :func:`~sklearn_beta.select_engine_config`'s result
    (None when the set configuration could not be validated)."""
    chunk, budget = pair
    summary = {"chunk_size": chunk, "token_budget": budget}
    if config is None:
        return summary | {"engine_config": None, "validation": None}
    scores = config.scores.astype(object).where(config.scores.notna(), None)
    return summary | {
        "engine_config": {
            "method": "held-out replay: fit on the other time blocks, replay the "
            "whole trace, score the held-out requests",
            "cv": f"TraceBlockSplit({args.cv_folds}) in full-trace context",
            "score": "sqrt(prefill * decode) of the mean absolute relative errors",
            "candidates": _json_ready(scores.to_dict(orient="records")),
            "runner_up": None
            if config.runner_up is None
            else _engine_pair(config.runner_up),
            "margin": _json_ready(config.margin),
            "same_engine_on_this_trace": [_engine_pair(p) for p in config.equivalent],
            "edge": config.edge,
        },
        "validation": {
            "metric": "mean absolute relative error of the held-out requests",
            **_json_ready(config.validation),
        },
    }


def _confidence_interval(fit: TraceFit) -> dict | None:
    # beta_ci_ comes with the trust branch's regressors; absent before it.
    if fit.beta_ci is None or fit.confidence_level is None:
        return None
    bounds = np.asarray(fit.beta_ci, dtype=float)
    return {"level": float(fit.confidence_level)} | {
        name: _json_ready(bounds[i].tolist()) for i, name in enumerate(UNITS)
    }


def _finite_or_none(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, float)]


def _json_ready(value):
    # JSON has no NaN: undefined numbers (r2 without variance) become null.
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def format_table(report: dict) -> str:
    """Human-readable summary of a report."""
    trace, params, diag = report["trace"], report["parameters"], report["diagnostics"]
    conv = report["convergence"]
    if conv["algo"] == "schedule":
        state = "converged" if conv["converged"] else "NOT converged"
        algorithm = (
            f"schedule-consistent (ScheduleBetaRegressor), {state} after "
            f"{conv['n_iter']} replays, schedule misfit "
            f"{report['schedule']['schedule_misfit']:.3g}"
        )
    elif conv["algo"] == "iterative":
        state = "converged" if conv["converged"] else "NOT converged"
        run = f"{state} after {conv['n_iter']} iterations"
    else:
        run = "one NNLS solve"
    if conv["algo"] != "schedule":
        algorithm = f"{conv['algo']}, {params['correction_mode']} correction, {run}"
    lines = [
        f"sklearn-beta {report['sklearn_beta_version']}: {params['trace']} "
        f"({params['format']}, {trace['n_phases']} phases, {trace['n_requests']} "
        f"requests, {trace['n_instances']} instance(s))",
        f"engine      {engine_label(report)}{_choice(report['engine_config'])}",
        *_settings_lines(report.get("engine_settings")),
        f"algorithm   {algorithm}",
        "",
        f"{'coefficient':<12}{'value':>14}  {'unit':<18}{'BLIS (us)':>12}"
        + _ci_header(report["confidence_interval"]),
    ]
    for (name, value), blis in zip(
        report["betas"].items(), report["blis"]["beta_coeffs"], strict=True
    ):
        lines.append(
            f"{name:<12}{value:>14.6e}  {report['units'][name]:<18}{blis:>12.4f}"
            + _ci_cell(report["confidence_interval"], name)
        )
    if report["alphas"] is not None:
        alpha_us = ", ".join(f"{a:.4g}" for a in report["blis"]["alpha_coeffs"])
        lines.append(
            f"alphas (us: per request, per input token, per output token) {alpha_us}"
        )
    lines += [
        "",
        f"r2 {_num(diag['r2'], '.6f')}   rmse {_num(diag['rmse_seconds'], '.4g')} s   "
        f"mean phase duration {_num(diag['mean_duration_seconds'], '.4g')} s",
    ]
    lines += _validation_lines(report["validation"])
    lines += [f"note: {n}" for n in report["notes"]]
    if "plots" in report:
        lines.append("plots: " + ", ".join(report["plots"]))
    return "\n".join(lines)


def _provenance(report: dict) -> list[str]:
    diag = report["diagnostics"]
    return [
        f"fitted by sklearn-beta {report['sklearn_beta_version']} from "
        f"{report['parameters']['trace']}",
        f"{engine_label(report)}, {report['convergence']['algo']}, "
        f"r2 {_num(diag['r2'], '.6f')}",
    ]


def format_blis(report: dict, args) -> str:
    """One YAML document: a ``models:`` list with this fit's entry."""
    described = {
        "model_id": "id",
        "gpu": "GPU",
        "tensor_parallelism": "tensor_parallelism",
        "vllm_version": "vllm_version",
        "total_kv_blocks": "total_kv_blocks",
    }
    missing = [key for attr, key in described.items() if getattr(args, attr) is None]
    comments = _provenance(report) + [
        "microseconds: beta_coeffs [per step, per prefill token, per decode "
        "token], alpha_coeffs [per request, per input token, per output token]",
        "read by BLIS's blackbox latency model (--latency-model blackbox); "
        "see docs/simulators.md for the releases that have it",
    ]
    if missing:
        comments.append(
            f"placeholders: {', '.join(missing)} (pass "
            + ", ".join(
                "--" + a.replace("_", "-") for a, k in described.items() if k in missing
            )
            + ")"
        )
    comments += [f"note: {n}" for n in report["notes"]]
    entry = blis_model_entry(
        list(report["betas"].values()),
        alpha=np.asarray(report["alphas"] or [0.0, 0.0, 0.0]),
        model_id=args.model_id,
        gpu=args.gpu,
        tensor_parallelism=args.tensor_parallelism,
        vllm_version=args.vllm_version,
        total_kv_blocks=args.total_kv_blocks,
    )
    return format_blis_models(entry, comments)


def format_llm_d(report: dict) -> str:
    """The llm-d inference simulator's YAML config for this fit."""
    latencies = llm_d_latencies(
        list(report["betas"].values()),
        # Without a chunk cap, a lone request prefills the exposure model's
        # chunk (the budget or the longest prompt) per step.
        chunk_size=report["chunk_size"] or report["parameters"]["model_chunk_size"],
        alpha=report["alphas"] or (0.0, 0.0, 0.0),
    )
    comments = _provenance(report) + [
        "llm-d-inference-sim --config FILE; a request alone on the engine "
        "(see docs/simulators.md)",
    ]
    comments += [f"note: {n}" for n in report["notes"]]
    return format_llm_d_config(latencies, comments)


def _num(value, spec: str) -> str:
    return "nan" if value is None else format(value, spec)


def engine_label(report: dict) -> str:
    """``chunk size C`` / ``token budget B, no chunk cap`` / ``no chunking``."""
    chunk, budget = report["chunk_size"], report["token_budget"]
    parts = [f"chunk size {chunk}"] if chunk is not None else []
    if budget is not None:
        parts.append(f"token budget {budget}" + ("" if parts else ", no chunk cap"))
    return ", ".join(parts) or "no chunking"


def _choice(engine: dict | None) -> str:
    if engine is None or len(engine["candidates"]) < 2:
        return ""
    how = "held-out replay"
    if engine["method"].startswith("schedule fit"):
        how = "least schedule misfit"
    text = f" ({how}, best of {len(engine['candidates'])} candidates"
    if engine["runner_up"] is not None:
        runner = engine_label(engine["runner_up"])
        margin = engine["margin"]
        text += f"; runner-up {runner}, {_margin(margin)}"
        if margin is not None and abs(margin) <= _TIE:
            text += ", a tie: the trace barely separates them"
    if engine["same_engine_on_this_trace"]:
        same = "; ".join(engine_label(p) for p in engine["same_engine_on_this_trace"])
        text += f"; the same engine on this trace: {same}"
    return text + ")"


def _ci_header(ci: dict | None) -> str:
    return "" if ci is None else f"  {format(ci['level'], '.0%') + ' interval':>30}"


def _ci_cell(ci: dict | None, name: str) -> str:
    if ci is None:
        return ""
    low, high = ci[name]
    return f"  [{_num(low, '.4e')}, {_num(high, '.4e')}]"


def _settings_lines(settings: dict | None) -> list[str]:
    """A schedule fit's engine settings and where each came from."""
    if settings is None:
        return []
    parts = [
        f"{name} {settings[name]['value']} ({settings[name]['source']})"
        for name in ("max_num_seqs", "num_gpu_blocks")
    ]
    return [
        f"settings    {', '.join(parts)}, block size {settings['block_size']['value']}"
    ]


def _validation_lines(validation: dict | None) -> list[str]:
    if validation is None:
        return []
    if "method" in validation:  # a schedule fit's check by requests
        return [
            f"held-out requests (RequestKFold, {validation['n_splits']} folds, "
            f"mean absolute relative error): TTFT {_num(validation['ttft'], '.2%')}, "
            f"decode {_num(validation['decode'], '.2%')}, end-to-end "
            f"{_num(validation['e2e'], '.2%')}"
        ]
    return [
        f"held-out replay ({validation['n_splits']} time blocks, mean absolute "
        f"relative error): prefill {_num(validation['prefill'], '.2%')}, TTFT "
        f"{_num(validation['ttft'], '.2%')}, decode "
        f"{_num(validation['decode'], '.2%')}, end-to-end "
        f"{_num(validation['e2e'], '.2%')}"
    ]


def _margin(margin: float | None) -> str:
    if margin is None:
        return "margin nan"
    if margin >= 99:  # noise-free traces: the true engine's error is near 0
        return "over 100x the error"
    if margin >= 1:
        return f"{margin + 1:.3g}x the error"
    return f"{margin:+.1%} error"
