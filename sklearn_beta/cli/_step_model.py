"""``--step-model``: fits beyond the published three coefficients, the choice
among step models by held-out error, and their report and exports.

The published model keeps the path of :mod:`sklearn_beta.cli._main` and its
report. Any other step model (``attention``, ``trained-physics``, a list of
features) is fitted here, after the engine configuration is chosen: the
baseline fits its exposures, the iterative estimator runs the duration
objective (the step-count objective fits the published model only). The
report carries ``step_model`` and every coefficient by name with its
interval; a trained-physics fit adds ``blis_trained_physics``, the
``--alpha-coeffs`` / ``--beta-coeffs`` values BLIS reads (microseconds, its
order).

A client-side trace (its prefill phases start at the sends, so they hold the
queueing) is fitted by the schedule-consistent estimator
(:class:`~sklearn_beta.ScheduleBetaRegressor`) with the same step model, which
also fits the request overheads; a trained-physics export then carries them
as BLIS's alphas.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.model_selection import GridSearchCV

from ..core._model_config import GPU_SPECS, read_model_description
from ..core._step_features import check_step_model
from ..core._trained_physics import IDENTIFIABLE_FEATURES, to_blis_betas
from ..engine_config._regime import is_client_side
from ..engine_config._schedule import ScheduleBetaRegressor
from ..engine_config._trace_fit import make_model
from ..io._export_trained_physics import (
    blis_alphas_of_offsets,
    blis_trained_physics_coeffs,
    format_blis_trained_physics,
)
from ..metrics import get_scorer
from ..model_selection import (
    RequestKFold,
    TraceBlockSplit,
    TraceContextRegressor,
    make_schedule_scorer,
    one_standard_error_rule,
)
from ._options import STEP_MODEL_CHOICES, UsageError

__all__ = [
    "STEP_MODEL_CHOICES",
    "basis_options",
    "check_step_model_usage",
    "fit_client_step_model",
    "fit_step_model",
    "schedule_model",
    "with_sends",
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
    if args.objective == "step_count":
        raise UsageError(
            "--objective step_count fits the published step model only; "
            f"--step-model {_label(step_model)} runs the duration objective"
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
    """The fit's pipeline for one step model (the duration objective)."""
    model = make_model(chunk_size, **options)
    transformer, regressor = model[0], model[-1]
    transformer.set_params(step_model=step_model)
    if step_model == "trained-physics":
        transformer.set_params(
            model_config=args.model_config,
            gpu=args.gpu,
            tensor_parallelism=args.tensor_parallelism,
        )
    if options["algo"] == "iterative":
        regressor.set_params(objective="duration", init_correction_mode=None)
        if options.get("correction_mode") is None:
            # the duration objective's own correction (docs/estimators.md);
            # end_inside converges slowly there (measured: 25 iterations
            # not enough on a 200-request trained-physics trace)
            regressor.set_params(correction_mode="beta_informed")
    return model


def _candidates(args) -> list:
    names = ["published", "attention"]
    return names + ["trained-physics"] if args.model_config is not None else names


def _compare(phases, args, options: dict, chunk_size: int, progress) -> tuple:
    """``--step-model auto``: the chosen model and the comparison table."""
    param = "estimator__phaseexposuretransformer__step_model"
    candidates = _candidates(args)
    progress.say(f"comparing step models {', '.join(candidates)} by held-out error...")
    # every candidate on the duration objective, so that only the model differs
    pipe = _pipeline("published", args, options, chunk_size)
    grid = [{param: ["published", "attention"]}]
    if "trained-physics" in candidates:
        tp = "estimator__phaseexposuretransformer__"
        grid.append(
            {
                param: ["trained-physics"],
                tp + "model_config": [args.model_config],
                tp + "gpu": [args.gpu],
                tp + "tensor_parallelism": [args.tensor_parallelism],
            }
        )
    search = GridSearchCV(
        TraceContextRegressor(pipe, trace=phases),
        grid,
        cv=TraceBlockSplit(args.cv_folds),
        scoring=get_scorer(AUTO_SCORING),
        refit=one_standard_error_rule(),
        # a model this engine cannot run (attention under a budget-bound
        # chunk) scores NaN and is shown as failed, not chosen
        error_score=np.nan,
    )
    with warnings.catch_warnings():
        # Each fold's fit warns as the final fit will; only the final fit's
        # warnings are the report's.
        warnings.simplefilter("ignore")
        search.fit(phases)
    results = search.cv_results_
    chosen = int(search.best_index_)
    rows = []
    for i, params in enumerate(results["params"]):
        error = _finite(-float(results["mean_test_score"][i]))
        se = _finite(float(results["std_test_score"][i]) / math.sqrt(args.cv_folds))
        rows.append(
            {
                "step_model": params[param],
                "n_coefficients": len(
                    IDENTIFIABLE_FEATURES
                    if params[param] == "trained-physics"
                    else check_step_model(params[param])
                ),
                "held_out_error": error,
                "standard_error": se,
                "chosen": i == chosen,
            }
        )
    selection = {
        "metric": "mean absolute relative error of the held-out phase durations",
        "cv": f"TraceBlockSplit({args.cv_folds}) in full-trace context",
        "rule": "the fewest coefficients within one standard error of the best",
        "candidates": rows,
    }
    return results["params"][chosen][param], selection


def _coefficients(
    regressor, model_description, alpha=(0.0, 0.0, 0.0)
) -> tuple[dict, dict | None]:
    """Every coefficient by name with its interval and unit; for
    trained-physics the values BLIS takes (microseconds), with the request
    overheads ``alpha`` (BLIS's meaning, seconds)."""
    names = regressor.coef_names_
    beta = np.asarray(regressor.beta_, dtype=float)
    ci = getattr(regressor, "beta_ci_", None)
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


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _fit_note(model, step_model, algo: str) -> str:
    correction = model[-1].get_params().get("correction_mode")
    correction = correction or model[0].correction_mode
    how = (
        "the iterative estimator's duration objective (observed phase "
        "durations; the step-count objective fits the published model only)"
        if algo == "iterative"
        else "the baseline estimator"
    )
    return (
        f"step model {_label(step_model)} fitted by {how}, correction "
        f"{correction}; the engine configuration was chosen with the published "
        "model"
    )


def fit_step_model(phases, args, options: dict, chunk_size: int, progress) -> dict:
    """Fit the step model of ``--step-model`` (choosing it for ``auto``);
    the report's step-model sections."""
    if is_client_side(phases):
        return fit_client_step_model(phases, args, options, chunk_size, progress)
    selection = None
    step_model = args.step_model
    if step_model == "auto":
        step_model, selection = _compare(phases, args, options, chunk_size, progress)
    progress.say(f"fitting step model {_label(step_model)}...")
    model = _pipeline(step_model, args, options, chunk_size)
    table = model[0].fit_transform(phases)
    regressor = model[-1].fit(table)
    description = model[0].model_description_
    coefficients, blis = _coefficients(regressor, description)
    report = {
        "step_model": step_model,
        "objective": "duration" if options["algo"] == "iterative" else "baseline",
        "coefficients": coefficients,
        "confidence_level": getattr(regressor, "confidence_level", None),
        "step_model_selection": selection,
        "notes": [_fit_note(model, step_model, options["algo"])],
    }
    if description is not None:
        betas = to_blis_betas(regressor.beta_, description)
        report["blis_trained_physics"] = blis
        report["fixed_coefficients"] = dict(regressor.fixed_coefficients_)
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


def schedule_model(step_model, args, options: dict, chunk_size: int):
    """The schedule-consistent estimator of a step model on the engine the
    command line chose (chunking) or was given (``--max-num-seqs``, the KV
    cache)."""
    settings = None
    if args.num_gpu_blocks is not None:
        settings = {
            "num_gpu_blocks": args.num_gpu_blocks,
            "block_size": args.block_size,
        }
    basis = {}
    if step_model == "trained-physics":
        basis = dict(
            model_config=args.model_config,
            gpu=args.gpu,
            tensor_parallelism=args.tensor_parallelism,
        )
    return ScheduleBetaRegressor(
        chunk_size,
        options.get("token_budget"),
        args.max_num_seqs,
        engine_settings=settings,
        # None: one engine, as the phase-exposure fits read it
        columns={"instance_id": options.get("instance_col")},
        step_model=step_model,
        **basis,
    )


def with_sends(phases):
    """The trace with each request's send (its prefill start on a
    client-side trace) in an ``arrival`` column."""
    if "arrival" in phases.columns:
        return phases
    return phases.assign(
        arrival=phases.groupby("request_id")["t_start"].transform("min")
    )


def fit_client_step_model(phases, args, options: dict, chunk_size: int, progress):
    """A step model on a client-side trace: the schedule-consistent fit (the
    queueing is in the prefill phases), its coefficients and request
    overheads, and for trained-physics BLIS's values with the overheads as
    its alphas (``io._export_trained_physics.blis_alphas_of_offsets``)."""
    step_model, selection = args.step_model, None
    phases = with_sends(phases)
    if step_model == "auto":
        step_model, selection = _compare_schedules(
            phases, args, options, chunk_size, progress
        )
    progress.say(f"fitting step model {_label(step_model)} to the schedule...")
    model = schedule_model(step_model, args, options, chunk_size)
    model.fit(phases)
    offsets = dict(model.alpha_)
    alpha = blis_alphas_of_offsets(*offsets.values())
    coefficients, blis = _coefficients(model, model.model_description_, alpha)
    notes = _schedule_notes(model, step_model, offsets)
    missing = [
        flag
        for flag, value in (
            ("--max-num-seqs", args.max_num_seqs),
            ("--num-gpu-blocks", args.num_gpu_blocks),
            ("--token-budget", options.get("token_budget")),
        )
        if value is None
    ]
    if missing:
        # The published model's schedule path reads them (cli._schedule);
        # this one takes them as given (measured on benchmarks/regimes.py:
        # without them, beta1 = 0 and ITL -9 % to -89 %).
        notes.append(
            "engine settings not given: "
            + ", ".join(missing)
            + " (a step model's schedule fit does not read them from the trace; "
            "give them, or fit the published model, whose fit reads them)"
        )
    report = {
        "step_model": step_model,
        "objective": "schedule",
        "coefficients": coefficients,
        "confidence_level": model.confidence_level,
        "step_model_selection": selection,
        "request_overheads": offsets,
        "notes": notes,
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


def _schedule_notes(model, step_model, offsets: dict) -> list[str]:
    notes = [
        f"step model {_label(step_model)} fitted by the schedule-consistent "
        "estimator (ScheduleBetaRegressor): a client-side trace's prefill "
        "phases hold the queueing, which it replays; "
        f"{model.n_iter_} replay(s), "
        + ("converged" if model.converged_ else "NOT converged")
        + f", schedule misfit {model.schedule_misfit_:.3g}",
        "request overheads (s): first token {first_token:.6g}, last token "
        "{last_token:.6g} after the engine's, queue delay {queue:.6g}".format(
            **offsets
        ),
    ]
    return notes


def _alpha_note(offsets: dict, alpha) -> str:
    note = (
        "alpha_coeffs from the fitted request overheads: a0 = queue delay + "
        "first-token offset, a1 = last-token minus first-token offset, a2 = 0 "
        "(no per-token offset is fitted)"
    )
    if offsets["last_token"] < offsets["first_token"]:
        note += "; a1 clipped at 0 (the last-token offset is the smaller)"
    return note


def _held_out_replay_error(estimator, X, y=None) -> float:
    """Minus the mean of the held-out requests' TTFT and decode-phase mean
    absolute relative errors in a replay of the whole trace: the prefill
    step model shows in the one, the decode step model in the other."""
    ttft = make_schedule_scorer("ttft")(estimator, X)
    decode = make_schedule_scorer("decode")(estimator, X)
    return 0.5 * (ttft + decode)


def _compare_schedules(phases, args, options: dict, chunk_size: int, progress):
    """``--step-model auto`` on a client-side trace: the schedule fits of
    each candidate compared by held-out requests (:class:`RequestKFold`,
    each fold's requests replayed amid the whole trace)."""
    candidates = _candidates(args)
    progress.say(
        f"comparing step models {', '.join(candidates)} by held-out requests..."
    )
    grid = [{"step_model": [c]} for c in candidates if c != "trained-physics"]
    if "trained-physics" in candidates:
        grid.append(
            {
                "step_model": ["trained-physics"],
                "model_config": [args.model_config],
                "gpu": [args.gpu],
                "tensor_parallelism": [args.tensor_parallelism],
            }
        )
    estimator = schedule_model("published", args, options, chunk_size)
    search = GridSearchCV(
        estimator.set_params(trace=phases),
        grid,
        cv=RequestKFold(args.cv_folds, shuffle=True, random_state=0),
        scoring=_held_out_replay_error,
        refit=one_standard_error_rule(),
        error_score=np.nan,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the final fit's warnings are the report's
        search.fit(phases)
    results = search.cv_results_
    rows = [
        _selection_row(results, i, params["step_model"], args.cv_folds, search)
        for i, params in enumerate(results["params"])
    ]
    selection = {
        "metric": "mean of the held-out requests' TTFT and decode-phase mean "
        "absolute relative errors (schedule-consistent fits)",
        "cv": f"RequestKFold({args.cv_folds}, shuffled) replayed in the whole trace",
        "rule": "the fewest coefficients within one standard error of the best",
        "candidates": rows,
    }
    return results["params"][int(search.best_index_)]["step_model"], selection


def _selection_row(results, i: int, step_model, folds: int, search) -> dict:
    error = _finite(-float(results["mean_test_score"][i]))
    se = _finite(float(results["std_test_score"][i]) / math.sqrt(folds))
    n_coefficients = len(
        IDENTIFIABLE_FEATURES
        if step_model == "trained-physics"
        else check_step_model(step_model)
    )
    return {
        "step_model": step_model,
        "n_coefficients": n_coefficients,
        "held_out_error": error,
        "standard_error": se,
        "chosen": i == int(search.best_index_),
    }
