"""``--step-model``: fits beyond the published three coefficients, the choice
among step models by held-out error, and their report and exports.

The published model keeps the path of :mod:`sklearn_beta.cli._main` and its
report. Any other step model (``attention``, ``trained-physics``, a list of
features) is fitted here, after the engine configuration is chosen: the
baseline fits its exposures, the iterative estimator runs ``--objective``
(the step counts by default, as for the published model). The
report carries ``step_model`` and every coefficient by name with its
interval; a trained-physics fit adds ``blis_trained_physics``, the
``--alpha-coeffs`` / ``--beta-coeffs`` values BLIS reads (microseconds, its
order).

A trace that takes the schedule-consistent fit (client-side times, or queueing
engine-side) is fitted by :class:`~sklearn_beta.ScheduleBetaRegressor` with
the same step model on the engine the published schedule path found
(:mod:`sklearn_beta.cli._step_schedule`); a trained-physics export then
carries the fitted request overheads as BLIS's alphas.
"""

from __future__ import annotations

import math

import numpy as np

from ..core._model_config import GPU_SPECS, read_model_description
from ..core._step_features import STEP_FEATURES
from ..core._trained_physics import to_blis_betas
from ..engine_config._trace_fit import make_model
from ..io._export_trained_physics import (
    blis_trained_physics_coeffs,
    format_blis_trained_physics,
)
from ..metrics import get_scorer
from ..model_selection import (
    TraceBlockSplit,
    TraceContextRegressor,
    compare_step_models,
)
from ..trust._identifiability import BETA_NAMES
from ._options import STEP_MODEL_CHOICES, UsageError

__all__ = [
    "STEP_MODEL_CHOICES",
    "basis_options",
    "candidate_params",
    "check_step_model_usage",
    "fit_step_model",
    "format_step_model_blis",
    "format_step_model_table",
]

#: The held-out metric of ``--step-model auto``.
AUTO_SCORING = "neg_duration_mape"
_FEATURE_UNITS = {
    "beta0": "s/step",
    "beta1": "s/prefill_token",
    "beta2": "s/decode_token",
    "steps": "s/step",
    "prefill_tokens": "s/prefill_token",
    "prefill_attention": "s/(prefill_token x context_token)",
    "decode_tokens": "s/decode_token",
    "decode_context": "s/context_token",
    "batch_size": "s/request_in_batch",
}
# Trained-physics coefficients are reported as BLIS takes them.
_BLIS_UNITS = {
    "prefill_compute": "x roofline time",
    "decode_compute": "x roofline time",
    "per_step": "us/step",
    "per_request": "us/request_in_batch",
    "prefill_kv": "x roofline time",
    "decode_kv": "x roofline time",
}


def _uses_basis(args) -> bool:
    return args.step_model == "trained-physics" or (
        args.step_model == "auto" and args.model_config is not None
    )


def basis_options(args) -> set[str]:
    """The output group's options that describe the trained-physics
    deployment or its ``blis replay`` line under these arguments."""
    used = {"gpu", "tensor_parallelism"} if _uses_basis(args) else set()
    if args.output == "blis":
        used.add("model_id")
    return used


def check_step_model_usage(args) -> None:
    """The step-model options, checked before the trace is read."""
    _check_basis_inputs(args)
    _check_step_model_outputs(args)


def _check_basis_inputs(args) -> None:
    """The trained-physics basis's deployment: given where it is used,
    readable, and not given where it is not."""
    step_model = args.step_model
    if step_model == "trained-physics" and (args.model_config is None or not args.gpu):
        missing = [
            flag
            for flag, value in (
                ("--model-config", args.model_config),
                ("--gpu", args.gpu),
            )
            if not value
        ]
        raise UsageError(
            f"--step-model trained-physics needs {' and '.join(missing)}: the "
            "model's HuggingFace config.json and the GPU "
            f"({', '.join(GPU_SPECS)})"
        )
    if args.model_config is not None and step_model not in ("trained-physics", "auto"):
        raise UsageError(
            "--model-config describes the trained-physics basis; --step-model "
            f"{_label(step_model)} does not use it"
        )
    if _uses_basis(args):
        if args.gpu not in GPU_SPECS:
            raise UsageError(
                f"--gpu must be one of {', '.join(GPU_SPECS)} for the "
                f"trained-physics basis, got {args.gpu!r}"
            )
        try:
            read_model_description(
                args.model_config, gpu=args.gpu, tp=args.tensor_parallelism or 1
            )
        except (OSError, ValueError) as exc:
            raise UsageError(f"--model-config: {' '.join(str(exc).split())}") from None


def _check_step_model_outputs(args) -> None:
    """The outputs, objective and options the step model can serve."""
    step_model = args.step_model
    if step_model == "published":
        if args.output == "blis":
            raise UsageError(
                "--output blis writes BLIS's trained-physics coefficients (BLIS "
                "after 2026-04-23): add --step-model trained-physics "
                "--model-config PATH --gpu GPU, or use --output blis-blackbox "
                "for the legacy three-coefficient entry. A published fit has no "
                "exact trained-physics form: its context-free decode step would "
                "need a negative decode_kv coefficient"
            )
        return
    if args.output == "blis" and not _uses_basis(args):
        raise UsageError(
            f"--output blis needs a trained-physics fit; --step-model "
            f"{_label(step_model)} has none (add --model-config with auto, or "
            "use --step-model trained-physics)"
        )
    if args.output in ("blis-blackbox", "llm-d"):
        raise UsageError(
            f"--output {args.output} writes the published three coefficients; "
            f"--step-model {_label(step_model)} is not that model"
        )
    for flag, given in (("--plot", args.plot), ("--dask", args.dask)):
        if given is not None:
            raise UsageError(
                f"{flag} works with --step-model published only, not "
                f"{_label(step_model)}"
            )


def _label(step_model) -> str:
    return step_model if isinstance(step_model, str) else ",".join(step_model)


def _pipeline(step_model, args, options: dict, chunk_size: int):
    """The fit's pipeline for one step model."""
    model = make_model(chunk_size, **options)
    transformer, regressor = model[0], model[-1]
    transformer.set_params(step_model=step_model)
    if step_model == "trained-physics":
        transformer.set_params(
            model_config=args.model_config,
            gpu=args.gpu,
            tensor_parallelism=args.tensor_parallelism,
        )
    if options["algo"] == "iterative" and options.get("objective") == "duration":
        regressor.set_params(init_correction_mode=None)
        if options.get("correction_mode") is None:
            # the duration objective's own correction (docs/estimators.md);
            # end_inside converges slowly there (measured: 25 iterations
            # not enough on a 200-request trained-physics trace)
            regressor.set_params(correction_mode="beta_informed")
    return model


def _candidates(args) -> list:
    names = ["published", "attention"]
    return names + ["trained-physics"] if args.model_config is not None else names


def candidate_params(args, prefix: str = "") -> list[dict]:
    """``--step-model auto``'s candidates as parameter settings of an
    estimator whose step-model parameters carry ``prefix``."""
    params = []
    for name in _candidates(args):
        setting = {prefix + "step_model": name}
        if name == "trained-physics":
            setting |= {
                prefix + "model_config": args.model_config,
                prefix + "gpu": args.gpu,
                prefix + "tensor_parallelism": args.tensor_parallelism,
            }
        params.append(setting)
    return params


def _compare(phases, args, options: dict, chunk_size: int, progress) -> tuple:
    """``--step-model auto``: the chosen model and the comparison table."""
    candidates = candidate_params(args, "estimator__phaseexposuretransformer__")
    progress.say(
        f"comparing step models {', '.join(_candidates(args))} by held-out error..."
    )
    # Every candidate on the duration objective, so that only the model
    # differs, and that one: the score is of held-out durations, which the
    # step counts do not fit by least squares, and a spare coefficient takes
    # up that difference (a published trace under a chunked budget scored
    # 0.47 % published, 0.44 % with the decode context, though its step-count
    # betas are within 0.1 %): benchmarks/step_model_cv.py, 19 of 20 on step
    # counts, 20 of 20 here.
    # The baseline has no objective: its comparison is of its own fits.
    iterative = options["algo"] == "iterative"
    duration = {"objective": "duration"} if iterative else {}
    pipe = _pipeline("published", args, options | duration, chunk_size)
    comparison = compare_step_models(
        TraceContextRegressor(pipe, trace=phases),
        phases,
        candidates,
        cv=TraceBlockSplit(args.cv_folds),
        scoring=get_scorer(AUTO_SCORING),
    )
    selection = {
        "metric": "mean absolute relative error of the held-out phase durations",
        "cv": f"TraceBlockSplit({args.cv_folds}) in full-trace context",
        "rule": "the fewest coefficients within one standard error of the best",
        "candidates": comparison["candidates"],
    }
    return comparison["candidates"][comparison["chosen"]]["step_model"], selection


def _coefficients(
    regressor, model_description, alpha=(0.0, 0.0, 0.0), calibrated=None
) -> tuple[dict, dict | None]:
    """Every coefficient by name with its interval and unit; for
    trained-physics the values BLIS takes (microseconds), with the request
    overheads ``alpha`` (BLIS's meaning, seconds). ``calibrated``: the
    ``(beta, interval)`` that replace the regressor's."""
    names = regressor.coef_names_
    beta, ci = (regressor.beta_, getattr(regressor, "beta_ci_", None))
    if calibrated is not None:
        beta, ci = calibrated
    beta = np.asarray(beta, dtype=float)
    ci = np.full((len(names), 2), np.nan) if ci is None else np.asarray(ci, float)
    blis = None
    scale = np.ones(len(names))
    units = [_FEATURE_UNITS.get(n) for n in names]
    if model_description is not None:
        # to microseconds (the trace is in seconds): BLIS's units
        scale = np.full(len(names), 1e6)
        units = [_BLIS_UNITS[n] for n in names]
        blis = blis_trained_physics_coeffs(beta, model_description, alpha=alpha)
    coefficients = {
        name: {
            "value": float(beta[i] * scale[i]),
            "interval": [_finite(ci[i, 0] * scale[i]), _finite(ci[i, 1] * scale[i])],
            "unit": units[i],
        }
        for i, name in enumerate(names)
    }
    return coefficients, blis


def _client_alphas(overheads, regressor, description, beta) -> tuple:
    """``(alpha, note)`` of ``overheads`` at the coefficients ``beta`` of
    ``regressor``'s features, or ``(None, None)`` without it; the replay
    that reads them runs the loop's step features, so a fit of other ones
    (trained-physics: BLIS's basis functions) reads none."""
    if overheads is None:
        return None, None
    names = tuple(regressor.coef_names_)
    if names == BETA_NAMES:  # the published model, chosen by ``auto``
        return overheads(np.asarray(beta, dtype=float))
    if description is not None or not set(names) <= set(STEP_FEATURES):
        return np.zeros(3), (
            "alphas (request overheads) are 0: the replay of the client's "
            "sends that reads them runs the engine loop's step features "
            f"({', '.join(STEP_FEATURES)}), not {', '.join(names)}"
        )
    return overheads(np.asarray(beta, dtype=float), step_model=list(names))


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _objective(model, algo: str) -> str:
    return model[-1].objective if algo == "iterative" else "baseline"


def _fit_note(model, step_model, algo: str) -> str:
    correction = model[-1].get_params().get("correction_mode")
    correction = correction or model[0].correction_mode
    how = (
        f"the iterative estimator's {_objective(model, algo)} objective"
        if algo == "iterative"
        else "the baseline estimator"
    )
    return (
        f"step model {_label(step_model)} fitted by {how}, correction "
        f"{correction}; the engine configuration was chosen with the published "
        "model"
    )


def fit_step_model(
    phases,
    args,
    options: dict,
    chunk_size: int,
    progress,
    overheads=None,
    calibrate=None,
) -> dict:
    """Fit the step model of ``--step-model`` (choosing it for ``auto``);
    the report's step-model sections.

    ``overheads(beta, step_model=...)``, given on client-side times, returns
    ``(alpha, note)``: the client's request overheads at the fitted
    coefficients (BLIS's alphas, seconds;
    :func:`~sklearn_beta.cli._schedule.client_overheads`). They fill the
    report's ``alphas`` and a trained-physics export's ``alpha_coeffs``.
    None: server-side times, no overheads. ``calibrate(beta, interval)``,
    given where a replay of the sends can, returns the published model's
    betas calibrated by it (:func:`~sklearn_beta.cli._schedule.
    calibrated_betas`): applied when ``auto`` chooses the published model,
    as ``--step-model published`` would."""
    selection = None
    step_model = args.step_model
    if step_model == "auto":
        step_model, selection = _compare(phases, args, options, chunk_size, progress)
    progress.say(f"fitting step model {_label(step_model)}...")
    model = _pipeline(step_model, args, options, chunk_size)
    table = model[0].fit_transform(phases)
    regressor = model[-1].fit(table)
    description = model[0].model_description_
    beta, interval = regressor.beta_, getattr(regressor, "beta_ci_", None)
    section, notes = None, []
    if calibrate is not None and tuple(regressor.coef_names_) == BETA_NAMES:
        beta, interval, section, note = calibrate(beta, interval)
        notes.append(note)
    alpha, alpha_note = _client_alphas(overheads, regressor, description, beta)
    coefficients, blis = _coefficients(
        regressor,
        description,
        (0.0, 0.0, 0.0) if alpha is None else alpha,
        calibrated=(beta, interval),
    )
    report = {
        "step_model": step_model,
        "objective": _objective(model, options["algo"]),
        "coefficients": coefficients,
        "confidence_level": getattr(regressor, "confidence_level", None),
        "step_model_selection": selection,
        "alphas": None if alpha is None else [float(a) for a in alpha],
        "replay_calibration": section,
        "notes": [_fit_note(model, step_model, options["algo"]), *notes],
    }
    if alpha_note is not None:
        report["notes"].append(alpha_note)
    if description is not None:
        betas = to_blis_betas(regressor.beta_, description)
        report["blis_trained_physics"] = blis
        report["fixed_coefficients"] = dict(regressor.fixed_coefficients_)
        if alpha is None:
            report["notes"].append(
                "alpha_coeffs are 0: a server-side trace does not show the "
                "client's view of a request"
            )
        report["notes"] += [
            f"BLIS {name} fixed at {why}" for name, why in betas.fixed.items()
        ]
    return report


def format_step_model_table(report: dict) -> str:
    """Human-readable summary of a step-model report."""
    trace = report["parameters"]["trace"]
    lines = [
        f"sklearn-beta {report['sklearn_beta_version']}: {trace}"
        f" ({report['trace']['n_phases']} phases), step model "
        f"{_label(report['step_model'])}, objective {report['objective']}",
        f"chunk size {report['chunk_size']}, token budget {report['token_budget']}",
        "",
    ]
    selection = report.get("step_model_selection")
    if selection is not None:
        lines.append(
            f"step model comparison ({selection['metric']}, {selection['cv']}):"
        )
        lines.append(f"  {'model':<18} {'held-out error':>15} {'+- se':>9}  chosen")
        for row in selection["candidates"]:
            if row["held_out_error"] is None:
                lines.append(f"  {_label(row['step_model']):<18} {'failed':>15}")
                continue
            lines.append(
                f"  {_label(row['step_model']):<18} "
                f"{100 * row['held_out_error']:>14.3f}% "
                f"{100 * row['standard_error']:>8.3f}%  "
                f"{'*' if row['chosen'] else ''}"
            )
        lines.append("")
    level = report.get("confidence_level")
    header = f"{'coefficient':<20} {'value':>14}  "
    header += f"{100 * level:g}% interval" if level else "interval"
    lines.append(header)
    for name, entry in report["coefficients"].items():
        low, high = entry["interval"]
        interval = "-" if low is None or high is None else f"[{low:.6g}, {high:.6g}]"
        lines.append(f"{name:<20} {entry['value']:>14.6g}  {interval}  {entry['unit']}")
    if report.get("alphas") is not None:
        alpha_us = ", ".join(f"{1e6 * a:.4g}" for a in report["alphas"])
        lines.append(
            f"alphas (us: per request, per input token, per output token) {alpha_us}"
        )
    if "blis_trained_physics" in report:
        coeffs = report["blis_trained_physics"]
        lines += [
            "",
            "BLIS trained-physics (microseconds, BLIS's order):",
            f"  alpha_coeffs {coeffs['alpha_coeffs']}",
            f"  beta_coeffs  {coeffs['beta_coeffs']}",
        ]
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_step_model_blis(report: dict, args) -> str:
    """``--output blis``: the trained-physics coefficients and ``blis
    replay`` line (:func:`~sklearn_beta.export.format_blis_trained_physics`)."""
    if "blis_trained_physics" not in report:
        raise ValueError(
            f"--output blis needs a trained-physics fit; the step model chosen "
            f"is {_label(report['step_model'])} (use --step-model trained-physics)"
        )
    description = read_model_description(
        args.model_config, gpu=args.gpu, tp=args.tensor_parallelism or 1
    )
    comments = [
        f"fitted by sklearn-beta {report['sklearn_beta_version']} from "
        f"{report['parameters']['trace']} ({report['trace']['n_phases']} phases)",
        "for BLIS builds after 2026-04-23 (PR #1136); older builds read "
        "--output blis-blackbox",
        *report["notes"],
    ]
    return format_blis_trained_physics(
        report["blis_trained_physics"],
        description,
        model_id=args.model_id,
        trace_header=args.trace_header or "trace_header.yaml",
        comments=comments,
    )


def _alpha_note(offsets: dict, alpha) -> str:
    note = (
        "alpha_coeffs from the fitted request overheads: a0 = queue delay + "
        "first-token offset, a1 = last-token minus first-token offset, a2 = 0 "
        "(no per-token offset is fitted)"
    )
    if offsets["last_token"] < offsets["first_token"]:
        note += "; a1 clipped at 0 (the last-token offset is the smaller)"
    return note
