"""The report of one ``sklearn-beta fit``: JSON document, table and exports.

Builds the JSON-ready report (schema ``sklearn-beta/fit/v1``) from a
:class:`~sklearn_beta._trace_fit.TraceFit` and renders it as a table, a BLIS
``models:`` document or an llm-d simulator config.
"""

from __future__ import annotations

import math

import numpy as np

from . import __version__
from ._trace_fit import ITERATIVE_OPTIONS, TRANSFORMER_OPTIONS, TraceFit, make_model
from .export import (
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


def build_report(
    fit: TraceFit, args, fmt: str, phases, search, options, alpha, notes
) -> dict:
    """The JSON document of one fit (schema ``sklearn-beta/fit/v1``)."""
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
            "chunk_candidates": list(args.chunk_candidates)
            if args.chunk_size == "auto"
            else None,
            "cv_folds": args.cv_folds if args.chunk_size == "auto" else None,
            **_model_parameters(options),
            "instance_col": options["instance_col"],
        },
        "trace": {
            "n_phases": int(len(phases)),
            "n_requests": int(phases["request_id"].nunique()),
            "n_instances": len(fit.instance_names),
            "instances": [str(x) for x in fit.instance_names],
            "client_side": bool(phases.attrs.get("client_side", False)),
        },
        "chunk_size": fit.chunk_size,
        "chunk_size_search": search,
        "betas": betas,
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


def search_summary(scores, cv_folds: int) -> dict:
    """The report's ``chunk_size_search`` block from the search's scores."""
    return {
        "cv": f"TraceBlockSplit({cv_folds}) in full-trace context",
        "score": "r2 of held-out phase durations",
        "candidates": scores["chunk_size"].tolist(),
        "mean_r2": _finite_or_none(scores["mean_r2"]),
        "std_r2": _finite_or_none(scores["std_r2"]),
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
    if conv["algo"] == "iterative":
        state = "converged" if conv["converged"] else "NOT converged"
        run = f"{state} after {conv['n_iter']} iterations"
    else:
        run = "one NNLS solve"
    chunk = f"{report['chunk_size']}"
    if report["chunk_size_search"] is not None:
        s = report["chunk_size_search"]
        best = s["candidates"].index(report["chunk_size"])
        chunk += f" (cross-validated, held-out r2 {_num(s['mean_r2'][best], '.4f')})"
    lines = [
        f"sklearn-beta {report['sklearn_beta_version']}: {params['trace']} "
        f"({params['format']}, {trace['n_phases']} phases, {trace['n_requests']} "
        f"requests, {trace['n_instances']} instance(s))",
        f"chunk size  {chunk}",
        f"algorithm   {conv['algo']}, {params['correction_mode']} correction, {run}",
        "",
        f"{'coefficient':<12}{'value':>14}  {'unit':<18}{'BLIS (us)':>12}",
    ]
    for (name, value), blis in zip(
        report["betas"].items(), report["blis"]["beta_coeffs"], strict=True
    ):
        lines.append(
            f"{name:<12}{value:>14.6e}  {report['units'][name]:<18}{blis:>12.4f}"
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
    lines += [f"note: {n}" for n in report["notes"]]
    if "plots" in report:
        lines.append("plots: " + ", ".join(report["plots"]))
    return "\n".join(lines)


def _provenance(report: dict) -> list[str]:
    diag = report["diagnostics"]
    return [
        f"fitted by sklearn-beta {report['sklearn_beta_version']} from "
        f"{report['parameters']['trace']}",
        f"chunk size {report['chunk_size']}, {report['convergence']['algo']}, "
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
        chunk_size=report["chunk_size"],
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
