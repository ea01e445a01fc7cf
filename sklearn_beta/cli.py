"""The ``sklearn-beta`` command: from a trace file to step-time coefficients.

``sklearn-beta fit TRACE`` reads a trace (reference CSV/Parquet, OTLP JSON
spans, benchmark results or BLIS TraceV2), fits ``(beta0, beta1, beta2)`` and
prints them as a table, as JSON, as a BLIS ``models:`` entry or as llm-d
simulator options; ``--plot DIR`` adds diagnostic figures. Run
``sklearn-beta fit --help`` for the options (``docs/cli.md`` explains them).

Exit codes: 0 success, 1 bad data (the trace, or a fit that failed), 2 bad
usage (an option). Errors are one line on stderr, never a traceback; the
trace and every option are checked before any fitting starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from ._corrections import CORRECTION_MODES, FIXED_CORRECTION_MODES
from ._iterative import OBJECTIVES, STOPPING_RULES
from ._trace_fit import (
    ALGORITHMS,
    DEFAULT_CHUNK_CANDIDATES,
    ITERATIVE_OPTIONS,
    TRANSFORMER_OPTIONS,
    TraceFit,
    check_fit_options,
    fit_client_trace,
    fit_option_defaults,
    fit_trace,
    make_model,
    search_chunk_size,
)
from .export import (
    BLIS_UNITS,
    blis_model_entry,
    format_blis_models,
    format_llm_d_config,
    llm_d_latencies,
    to_blis_coefficients,
)
from .io import (
    TIME_UNITS,
    TRACEV2_COLUMNS,
    read_benchmark_results,
    read_otel_spans,
    read_phases,
    read_tracev2,
)

FORMATS = ("csv", "parquet", "otel", "bench", "tracev2")
OUTPUTS = ("table", "json", "blis", "llm-d")
SCHEMA = "sklearn-beta/fit/v1"
UNITS = {"beta0": "s/step", "beta1": "s/prefill_token", "beta2": "s/decode_token"}
#: Instance columns recognised, in order, when --instance-col is not given.
INSTANCE_COLUMNS = ("instance_id", "instance")
#: Seconds. The library's default keeps every distinct time (0); exported
#: traces log times to the microsecond (TraceV2, OTLP nanoseconds rounded,
#: CSVs of rounded floats), so two events of one engine step can land a few
#: roundings apart and leave sliver segments that bias beta1 (-1.9 % on
#: data/otel/spans.jsonl). One microsecond merges them and is far below any
#: step (BETA0_PLAUSIBLE starts at 10 us).
CLI_TIME_RESOLUTION = 1e-6
#: beta0 outside this range (seconds per step) is warned about: a wrong
#: --time-unit is the usual cause.
BETA0_PLAUSIBLE = (1e-5, 1.0)
EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
_MAX_ERROR_CHARS = 600


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage and exits; one line is enough.
    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sklearn-beta``."""
    parser = _Parser(
        prog="sklearn-beta",
        description="Calibrate LLM engine step-time coefficients from traces.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser
    )
    fit = commands.add_parser(
        "fit",
        help="fit (beta0, beta1, beta2) to a trace",
        description=(
            "Fit step-time coefficients to a trace. Betas are printed in "
            "seconds per step / per token (BLIS and llm-d exports: microseconds). "
            "Exit codes: 0 ok, 1 bad trace or failed fit, 2 bad option."
        ),
    )
    _add_input_options(fit)
    _add_fit_options(fit)
    _add_output_options(fit)
    return parser


def _add_input_options(fit) -> None:
    group = fit.add_argument_group("input")
    group.add_argument("trace", help="trace file")
    group.add_argument(
        "--format",
        choices=FORMATS,
        help="trace format (default: by suffix: .jsonl otel, .json bench, "
        ".parquet/.pq parquet; a CSV with TraceV2 columns tracev2; else csv)",
    )
    group.add_argument(
        "--trace-header",
        metavar="H",
        help="TraceV2 YAML header; its time_unit sets the unit of the times "
        "(default: none, times in microseconds)",
    )
    group.add_argument(
        "--time-unit",
        choices=tuple(u for u in TIME_UNITS if u.isascii()),
        help="unit of t_start/t_end in a csv or parquet trace (default: s)",
    )
    group.add_argument(
        "--instance-col",
        help="column naming the engine instance, 'none' for one engine "
        f"(default: the first of {', '.join(INSTANCE_COLUMNS)} the trace has, "
        "with a note; otel and bench traces: 'instance')",
    )


def _add_fit_options(fit) -> None:
    defaults = fit_option_defaults()
    group = fit.add_argument_group("fit (defaults are the estimators')")
    group.add_argument(
        "--chunk-size",
        default="auto",
        type=_chunk_size,
        help="prefill chunk size in tokens, or 'auto' for a cross-validated "
        "choice among --chunk-candidates (default: auto)",
    )
    group.add_argument(
        "--chunk-candidates",
        type=_int_list,
        default=DEFAULT_CHUNK_CANDIDATES,
        help="comma-separated candidates of --chunk-size auto "
        f"(default: {','.join(map(str, DEFAULT_CHUNK_CANDIDATES))})",
    )
    group.add_argument(
        "--cv-folds",
        type=_positive_int,
        default=5,
        help="folds of --chunk-size auto (default: 5)",
    )
    group.add_argument(
        "--algo",
        choices=ALGORITHMS,
        default="iterative",
        help="estimator (default: iterative)",
    )
    modes = defaults["correction_mode"]
    group.add_argument(
        "--correction-mode",
        choices=CORRECTION_MODES,
        help=f"partial-chunk correction (default: {modes['baseline']} for "
        f"baseline, {modes['iterative']} for iterative; baseline takes only "
        f"{', '.join(FIXED_CORRECTION_MODES)})",
    )
    helps = {
        "objective": f"iterative: {' or '.join(OBJECTIVES)}",
        "token_budget": "the engine's max_num_batched_tokens, if it has one: "
        "makes the prefill pressure budget-aware",
        "damping": "iterative: step size eta in (0, 1]",
        "max_iter": "iterative: most iterations",
        "tol": "iterative: stopping tolerance, > 0",
        "stopping": f"iterative: {' or '.join(STOPPING_RULES)} change of the betas",
        "init_correction_mode": "iterative: correction of the first pass",
        "min_duration": "seconds: floor of phase durations in the step density",
    }
    types = {
        "token_budget": _positive_int,
        "max_iter": _positive_int,
        "damping": float,
        "tol": float,
        "min_duration": float,
    }
    choices = {
        "objective": OBJECTIVES,
        "stopping": STOPPING_RULES,
        "init_correction_mode": FIXED_CORRECTION_MODES,
    }
    for name in (*ITERATIVE_OPTIONS, *TRANSFORMER_OPTIONS):
        if name == "time_resolution":
            continue
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=types.get(name, str),
            choices=choices.get(name),
            help=f"{helps[name]} (default: {defaults[name]})",
        )
    group.add_argument(
        "--time-resolution",
        type=float,
        default=CLI_TIME_RESOLUTION,
        help="seconds: phase boundaries of an instance closer than this are "
        "one instant, so that logging jitter leaves no sliver segments "
        f"(default: {CLI_TIME_RESOLUTION:g}, where the library's is "
        f"{defaults['time_resolution']}: exported traces round times to the "
        "microsecond; 0 keeps every distinct time)",
    )


def _add_output_options(fit) -> None:
    group = fit.add_argument_group("output")
    group.add_argument(
        "--output",
        choices=OUTPUTS,
        default="table",
        help="table, json (schema sklearn-beta/fit/v1), blis (a BLIS "
        "blackbox models: entry) or llm-d (llm-d inference simulator config) "
        "(default: table)",
    )
    for flag, what, kind in (
        ("--model-id", "model id (e.g. the Hugging Face name)", str),
        ("--gpu", "GPU name", str),
        ("--tensor-parallelism", "tensor-parallel degree", _positive_int),
        ("--vllm-version", "vLLM version", str),
        ("--total-kv-blocks", "KV-cache blocks of the engine", _positive_int),
    ):
        group.add_argument(
            flag,
            type=kind,
            help=f"--output blis: the {what} (default: a placeholder, with a note)",
        )
    group.add_argument(
        "--plot",
        metavar="DIR",
        help="also write diagnostic PNGs to DIR (default: no plots); if "
        "plotting fails the fit is printed anyway, with the reason on stderr",
    )
    group.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr even on a terminal (default: progress "
        "only when stderr is a terminal)",
    )


def _chunk_size(text: str):
    if text == "auto":
        return text
    return _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(_positive_int(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}")
    return values


def infer_format(path: str) -> str:
    """Trace format from the file name's suffix (and a CSV's header line)."""
    suffix = Path(path).suffix.lower()
    fmt = {
        ".jsonl": "otel",
        ".json": "bench",
        ".parquet": "parquet",
        ".pq": "parquet",
    }.get(suffix, "csv")
    if fmt == "csv" and Path(path).is_file():
        with open(path, encoding="utf-8", errors="replace") as handle:
            columns = {c.strip() for c in handle.readline().split(",")}
        if set(TRACEV2_COLUMNS) <= columns:
            return "tracev2"
    return fmt


def read_trace(path: str, format: str, *, time_unit=None, header=None):
    """Read a trace file of the given format into a phase table."""
    if format == "otel":
        return read_otel_spans(path)
    if format == "bench":
        return read_benchmark_results(path)
    if format == "tracev2":
        return read_tracev2(path, header)
    return read_phases(path, format=format, time_unit=time_unit or "s")


class _Progress:
    """Progress lines on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)


def _fit_options(args) -> dict:
    options = {
        name: getattr(args, name) for name in (*ITERATIVE_OPTIONS, *TRANSFORMER_OPTIONS)
    }
    options |= dict(algo=args.algo, correction_mode=args.correction_mode)
    return options


def check_usage(args) -> None:
    """Every option, checked before the trace is read (raises _UsageError)."""
    fmt = args.format or infer_format(args.trace)
    if args.time_unit is not None and fmt not in ("csv", "parquet"):
        raise _UsageError(
            f"--time-unit applies to csv and parquet traces, not {fmt} (its "
            "times carry their unit)"
        )
    if args.trace_header is not None and fmt != "tracev2":
        raise _UsageError(f"--trace-header applies to tracev2 traces, not {fmt}")
    blis_only = ("model_id", "gpu", "tensor_parallelism", "vllm_version")
    given = [n for n in (*blis_only, "total_kv_blocks") if getattr(args, n)]
    if given and args.output != "blis":
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise _UsageError(f"{flags} describe(s) --output blis, not {args.output}")
    if args.time_resolution < 0 or not math.isfinite(args.time_resolution):
        raise _UsageError(
            f"--time-resolution must be >= 0 seconds, got {args.time_resolution:g}"
        )
    try:
        check_fit_options(**_fit_options(args))
    except (ValueError, TypeError) as exc:
        raise _UsageError(_one_line(exc)) from exc


def _instance_column(args, fmt: str, phases, notes: list) -> str | None:
    if args.instance_col == "none":
        return None
    if args.instance_col is not None:
        return args.instance_col
    if fmt in ("otel", "bench"):
        return "instance"
    found = next((c for c in INSTANCE_COLUMNS if c in phases.columns), None)
    if found is not None:
        n = phases[found].nunique()
        notes.append(
            f"instance column {found!r} found: {n} engine instance(s) fitted "
            "per instance (--instance-col none fits one engine)"
        )
    return found


def run_fit(args, progress: _Progress) -> tuple[dict, TraceFit]:
    """Run ``fit`` and return the JSON-ready report and the fit."""
    fmt = args.format or infer_format(args.trace)
    phases = read_trace(
        args.trace, fmt, time_unit=args.time_unit, header=args.trace_header
    )
    notes = list(phases.attrs.get("notes", []))
    progress.say(f"read {len(phases)} phases from {args.trace} ({fmt})")
    instance_col = _instance_column(args, fmt, phases, notes)
    options = dict(
        _fit_options(args),
        instance_col=instance_col,
        time_resolution=args.time_resolution,
    )
    first = args.chunk_size if args.chunk_size != "auto" else args.chunk_candidates[0]
    # The whole trace is validated here, before any search or fit.
    make_model(first, **options)[0].fit_transform(phases)
    search = None
    chunk_size = args.chunk_size
    if chunk_size == "auto":
        progress.say(
            f"choosing the chunk size among {list(args.chunk_candidates)} "
            f"by {args.cv_folds}-fold cross-validation..."
        )
        chunk_size, scores = search_chunk_size(
            phases, candidates=args.chunk_candidates, n_splits=args.cv_folds, **options
        )
        search = {
            "cv": f"TraceBlockSplit({args.cv_folds}) in full-trace context",
            "score": "r2 of held-out phase durations",
            "candidates": scores["chunk_size"].tolist(),
            "mean_r2": _finite_or_none(scores["mean_r2"]),
            "std_r2": _finite_or_none(scores["std_r2"]),
        }
        progress.say(f"chunk size {chunk_size}")
    progress.say(f"fitting ({args.algo}, chunk size {chunk_size})...")
    verbose = int(progress.enabled) if args.algo == "iterative" else 0
    if phases.attrs.get("client_side"):
        fit, alpha = fit_client_trace(
            phases, chunk_size=chunk_size, verbose=verbose, **options
        )
    else:
        fit = fit_trace(phases, chunk_size=chunk_size, verbose=verbose, **options)
        alpha = None
    report = build_report(fit, args, fmt, phases, search, options, alpha, notes)
    return report, fit


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
    low, high = BETA0_PLAUSIBLE
    beta0 = betas["beta0"]
    if beta0 > high or 0 < beta0 < low:
        notes.append(
            f"beta0 = {beta0:.3g} s per step is implausible (expected "
            f"{low:g} to {high:g} s): are the times in seconds? (--time-unit)"
        )
    if alpha is None:
        notes.append(
            "alphas (request overheads) are 0: a server-side trace does not "
            "show the client's view of a request"
        )
    return notes


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


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " | ".join(lines) or type(exc).__name__
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 3] + "..."
    return text


def _error(message: str, code: int) -> int:
    print(f"sklearn-beta: error: {message}", file=sys.stderr)
    return code


def _plot(report: dict, fit: TraceFit, directory: str) -> str | None:
    """Write the plots; the reason they failed, or None."""
    try:
        from .plotting import save_fit_plots

        report["plots"] = [str(p) for p in save_fit_plots(fit, directory)]
    except ImportError as exc:
        return f"--plot needs matplotlib (pip install 'sklearn-beta[plot]'): {exc}"
    except (OSError, ValueError, RuntimeError) as exc:
        return f"--plot {directory!r} failed: {_one_line(exc)}"
    return None


def _render(report: dict, args) -> str:
    if args.output == "json":
        return json.dumps(report, indent=2)
    if args.output == "blis":
        return format_blis(report, args)
    if args.output == "llm-d":
        return format_llm_d(report)
    return format_table(report)


def _write(text: str) -> None:
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (e.g. `| head -1`): what it wanted was written.
        # Point stdout at devnull so that the flush at exit cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sklearn-beta``; returns the exit code.

    Parameters
    ----------
    argv : sequence of str or None, default=None
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    code : int
        0 on success (also when the reader of stdout closes it early), 1 for a
        bad trace or a failed fit, 2 for bad usage.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check_usage(args)
    except _UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    progress = _Progress(enabled=not args.quiet and sys.stderr.isatty())
    try:
        report, fit = run_fit(args, progress)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        return _error(_one_line(exc), EXIT_BAD_INPUT)
    plot_error = _plot(report, fit, args.plot) if args.plot else None
    for note in report["notes"]:
        if "implausible" in note:
            print(f"sklearn-beta: warning: {note}", file=sys.stderr)
    try:
        text = _render(report, args)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        return _error(_one_line(exc), EXIT_BAD_INPUT)
    _write(text)
    if plot_error is not None:
        print(f"sklearn-beta: warning: {plot_error}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
