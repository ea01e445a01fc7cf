"""The ``sklearn-beta`` command: from a trace file to step-time coefficients.

``sklearn-beta fit TRACE`` reads a trace (reference CSV/Parquet, OTLP JSON
spans or benchmark results), fits ``(beta0, beta1, beta2)`` and prints them
as a table, as JSON or as a BLIS ``beta_coeffs`` block; ``--plot DIR`` adds
diagnostic figures. Run ``sklearn-beta fit --help`` for the options.

Bad input ends the command with one line on stderr and exit code 1 (2 for
bad usage); progress goes to stderr only when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import math
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
    TraceFit,
    fit_trace,
    search_chunk_size,
)
from .io import (
    BLIS_UNITS,
    read_benchmark_results,
    read_otel_spans,
    read_phases,
    to_blis_coefficients,
)

FORMATS = ("csv", "parquet", "otel", "bench")
OUTPUTS = ("table", "json", "blis")
SCHEMA = "sklearn-beta/fit/v1"
UNITS = {"beta0": "s/step", "beta1": "s/prefill_token", "beta2": "s/decode_token"}
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
            "Fit step-time coefficients to a trace. Times are read in seconds; "
            "betas are printed in seconds per step / per token."
        ),
    )
    fit.add_argument("trace", help="trace file")
    fit.add_argument(
        "--format",
        choices=FORMATS,
        help="trace format; by suffix when omitted: .jsonl otel, .json bench, "
        ".parquet/.pq parquet, otherwise csv",
    )
    fit.add_argument(
        "--chunk-size",
        default="auto",
        type=_chunk_size,
        help="prefill chunk size in tokens, or 'auto' for a cross-validated "
        "choice among --chunk-candidates (default: auto)",
    )
    fit.add_argument(
        "--chunk-candidates",
        type=_int_list,
        default=DEFAULT_CHUNK_CANDIDATES,
        help="comma-separated candidates of --chunk-size auto "
        f"(default: {','.join(map(str, DEFAULT_CHUNK_CANDIDATES))})",
    )
    fit.add_argument("--cv-folds", type=_positive_int, default=5, help="default: 5")
    fit.add_argument("--algo", choices=ALGORITHMS, default="iterative")
    fit.add_argument(
        "--correction-mode",
        choices=CORRECTION_MODES,
        help="partial-chunk correction (default: end for baseline, "
        "end_inside for iterative)",
    )
    fit.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="step_count",
        help="iterative estimator: step_count (default, the accurate one) or "
        "duration (the published fixed point)",
    )
    fit.add_argument(
        "--token-budget",
        type=_positive_int,
        default=None,
        help="the engine's max_num_batched_tokens, if it has one: makes the "
        "prefill pressure budget-aware",
    )
    fit.add_argument(
        "--damping", type=float, default=1.0, help="eta in (0, 1] (default: 1.0)"
    )
    fit.add_argument("--max-iter", type=_positive_int, default=25)
    fit.add_argument("--tol", type=float, default=1e-6)
    fit.add_argument(
        "--stopping",
        choices=STOPPING_RULES,
        default="relative",
        help="relative: scale-free (default); absolute: ||d beta||_2 < tol in "
        "seconds, as the published reference",
    )
    fit.add_argument(
        "--init-correction-mode", choices=FIXED_CORRECTION_MODES, default="end"
    )
    fit.add_argument("--min-duration", type=float, default=0.0)
    fit.add_argument(
        "--time-resolution",
        type=float,
        default=1e-6,
        help="seconds: phase boundaries closer than this are one instant, so "
        "that logging jitter leaves no sliver segments (default: 1e-6; 0 keeps "
        "every distinct time)",
    )
    fit.add_argument(
        "--instance-col",
        help="column naming the engine instance; 'none' for one instance "
        "(default: 'instance' for otel and bench traces, none otherwise)",
    )
    fit.add_argument("--output", choices=OUTPUTS, default="table")
    fit.add_argument("--plot", metavar="DIR", help="write diagnostic PNGs to DIR")
    fit.add_argument(
        "--quiet", action="store_true", help="no progress even on a terminal"
    )
    return parser


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
    return tuple(_positive_int(part) for part in text.split(",") if part.strip())


def infer_format(path: str) -> str:
    """Trace format from the file name's suffix."""
    suffix = Path(path).suffix.lower()
    return {
        ".jsonl": "otel",
        ".json": "bench",
        ".parquet": "parquet",
        ".pq": "parquet",
    }.get(suffix, "csv")


def read_trace(path: str, format: str):
    """Read a trace file of the given format into a phase table."""
    if format == "otel":
        return read_otel_spans(path)
    if format == "bench":
        return read_benchmark_results(path)
    return read_phases(path, format=format)


class _Progress:
    """Iteration lines on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)


def _fit_options(args) -> dict:
    return dict(
        algo=args.algo,
        correction_mode=args.correction_mode,
        damping=args.damping,
        max_iter=args.max_iter,
        tol=args.tol,
        init_correction_mode=args.init_correction_mode,
        min_duration=args.min_duration,
        stopping=args.stopping,
        objective=args.objective,
        token_budget=args.token_budget,
        time_resolution=args.time_resolution,
        instance_col=args.instance_col,
    )


def run_fit(args, progress: _Progress) -> dict:
    """Run ``fit`` and return the JSON-ready report."""
    fmt = args.format or infer_format(args.trace)
    if args.instance_col is None and fmt in ("otel", "bench"):
        args.instance_col = "instance"
    if args.instance_col == "none":
        args.instance_col = None
    phases = read_trace(args.trace, fmt)
    progress.say(f"read {len(phases)} phases from {args.trace} ({fmt})")
    options = _fit_options(args)
    search = None
    chunk_size = args.chunk_size
    if chunk_size == "auto":
        progress.say(
            f"choosing the chunk size among {list(args.chunk_candidates)} "
            f"by {args.cv_folds}-fold cross-validation..."
        )
        chunk_size, scores = search_chunk_size(
            phases,
            candidates=args.chunk_candidates,
            n_splits=args.cv_folds,
            **options,
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
    fit = fit_trace(
        phases, chunk_size=chunk_size, verbose=int(progress.enabled), **options
    )
    report = build_report(fit, args, fmt, phases, search)
    if args.plot:
        from .plotting import save_fit_plots

        report["plots"] = [str(p) for p in save_fit_plots(fit.model, phases, args.plot)]
    return report


def build_report(fit: TraceFit, args, fmt: str, phases, search) -> dict:
    """The JSON document of one fit (schema ``sklearn-beta/fit/v1``)."""
    betas = dict(zip(UNITS, fit.beta.tolist(), strict=True))
    notes = []
    if fit.converged is False:
        notes.append(
            f"the iterative fit did not converge in {fit.n_iter} iterations "
            f"(last change {fit.history['step'].iloc[-1]:.3g} >= tol {args.tol:g}); "
            "raise --max-iter or damp with --damping < 1"
        )
    for name, value in betas.items():
        if value == 0.0:
            notes.append(
                f"{name} is 0: the non-negativity bound is active, or the trace "
                "has too little variation in pressures to identify it"
            )
    return {
        "schema": SCHEMA,
        "sklearn_beta_version": __version__,
        "parameters": {
            "trace": args.trace,
            "format": fmt,
            "chunk_size": args.chunk_size,
            "chunk_candidates": list(args.chunk_candidates)
            if args.chunk_size == "auto"
            else None,
            "cv_folds": args.cv_folds if args.chunk_size == "auto" else None,
            "algo": fit.algo,
            "correction_mode": args.correction_mode
            or ("end" if fit.algo == "baseline" else "end_inside"),
            "objective": args.objective if fit.algo == "iterative" else None,
            "token_budget": args.token_budget,
            "time_resolution": args.time_resolution,
            "damping": args.damping,
            "max_iter": args.max_iter,
            "tol": args.tol,
            "stopping": args.stopping,
            "init_correction_mode": args.init_correction_mode,
            "min_duration": args.min_duration,
            "instance_col": args.instance_col,
        },
        "trace": {
            "n_phases": int(len(phases)),
            "n_requests": int(phases["request_id"].nunique()),
            "n_instances": len(fit.instance_names),
            "instances": [str(x) for x in fit.instance_names],
        },
        "chunk_size": fit.chunk_size,
        "chunk_size_search": search,
        "betas": betas,
        "units": dict(UNITS),
        "blis": {
            "beta_coeffs": to_blis_coefficients(fit.beta),
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


def _finite_or_none(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, float)]


def _json_ready(value):
    # JSON has no NaN: undefined numbers (r2 without variance) become null.
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
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
    lines += [
        "",
        f"r2 {_num(diag['r2'], '.6f')}   rmse {_num(diag['rmse_seconds'], '.4g')} s   "
        f"mean phase duration {_num(diag['mean_duration_seconds'], '.4g')} s",
    ]
    lines += [f"note: {n}" for n in report["notes"]]
    if "plots" in report:
        lines.append("plots: " + ", ".join(report["plots"]))
    return "\n".join(lines)


def format_blis(report: dict) -> str:
    """The BLIS coefficient block (YAML), with the fit's provenance as comments."""
    coeffs = ", ".join(f"{c:.8g}" for c in report["blis"]["beta_coeffs"])
    diag = report["diagnostics"]
    return "\n".join(
        [
            f"# fitted by sklearn-beta {report['sklearn_beta_version']} from "
            f"{report['parameters']['trace']}",
            f"# chunk size {report['chunk_size']}, {report['convergence']['algo']}, "
            f"r2 {_num(diag['r2'], '.6f')}",
            "# microseconds: [per step, per prefill token, per decode token]",
            f"beta_coeffs: [{coeffs}]",
        ]
    )


def _num(value, spec: str) -> str:
    return "nan" if value is None else format(value, spec)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " | ".join(lines) or type(exc).__name__
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 3] + "..."
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sklearn-beta``; returns the exit code.

    Parameters
    ----------
    argv : sequence of str or None, default=None
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    code : int
        0 on success, 1 for bad input, 2 for bad usage.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"sklearn-beta: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    progress = _Progress(enabled=not args.quiet and sys.stderr.isatty())
    try:
        report = run_fit(args, progress)
    except (ValueError, TypeError, ImportError, OSError) as exc:
        print(f"sklearn-beta: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.output == "json":
        print(json.dumps(report, indent=2))
    elif args.output == "blis":
        print(format_blis(report))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
