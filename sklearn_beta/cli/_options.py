"""The argument parser of ``sklearn-beta`` (options, their help and defaults).

Estimator options take their defaults from the estimator classes
(:func:`sklearn_beta.engine_config._search.fit_option_defaults`): ``--help`` shows them,
and an option not given keeps the estimator's own default.
"""

from __future__ import annotations

import argparse

from .. import __version__
from ..core._corrections import CORRECTION_MODES, FIXED_CORRECTION_MODES
from ..core._step_features import STEP_FEATURES, check_step_model
from ..engine_config._search import VLLM_TOKEN_BUDGETS, fit_option_defaults
from ..engine_config._trace_fit import (
    ALGORITHMS,
    DEFAULT_CHUNK_CANDIDATES,
    ITERATIVE_OPTIONS,
    TRANSFORMER_OPTIONS,
)
from ..estimators._iterative import OBJECTIVES, STOPPING_RULES
from ..io._readers import TIME_UNITS

FORMATS = ("csv", "parquet", "otel", "bench", "tracev2", "vllm-stats")
OUTPUTS = ("table", "json", "blis", "blis-blackbox", "llm-d")
#: ``--estimator`` choices (docs/cli.md, "Which fit").
ESTIMATORS = ("auto", "phase", "schedule")
#: Named choices of ``--step-model`` (or a comma list of step features).
STEP_MODEL_CHOICES = ("published", "attention", "trained-physics", "auto")
#: Instance columns recognised, in order, when --instance-col is not given.
INSTANCE_COLUMNS = ("instance_id", "instance")
#: Seconds. The library's default keeps every distinct time (0); exported
#: traces log times to the microsecond (TraceV2, OTLP nanoseconds rounded,
#: CSVs of rounded floats), so two events of one engine step can land a few
#: roundings apart and leave sliver segments that bias beta1 (-1.9 % on
#: data/otel/spans.jsonl). One microsecond merges them and is far below any
#: step (BETA0_PLAUSIBLE starts at 10 us).
CLI_TIME_RESOLUTION = 1e-6


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage and exits; one line is enough. Unknown
    # options reach the top parser, but are the command's (fit, the only one):
    # its --help lists the options, the top one's does not.
    def error(self, message):
        where = self.prog
        if message.startswith("unrecognized arguments") and " " not in where:
            where += " fit"
        raise UsageError(f"{message} (see '{where} --help')")


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
    add_step_model_options(fit)
    return parser


def _add_input_options(fit) -> None:
    group = fit.add_argument_group("input")
    group.add_argument(
        "trace", help="trace file, or a glob or directory of csv/parquet files"
    )
    group.add_argument(
        "--format",
        choices=FORMATS,
        help="trace format (default: by suffix: .jsonl otel, .json bench, "
        ".parquet/.pq parquet; a CSV with TraceV2 columns tracev2; a CSV or "
        "JSON lines with vLLM request-stats columns vllm-stats; else csv)",
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
        help="unit of the times of a csv, parquet or vllm-stats trace (default: s)",
    )
    group.add_argument(
        "--dask",
        metavar="local|tcp://HOST:PORT",
        help="fit on a Dask cluster: 'local' starts one sized to this machine, "
        "an address joins a running scheduler. TRACE may then be a glob or a "
        "directory of csv or parquet files, read one partition per file and "
        "never collected; see docs/cli.md for what the report then omits "
        "(default: fit in this process)",
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
    _add_engine_options(group, defaults)
    _add_estimator_choice(group, defaults)
    _add_estimator_settings(group, defaults)
    _add_trace_convention_options(group, defaults)


def _add_engine_options(group, defaults: dict) -> None:
    """The engine's chunking, given or chosen by held-out replay."""
    group.add_argument(
        "--chunk-size",
        type=_chunk_size,
        help="the engine's prefill chunk size in tokens, 'none' for no chunk "
        "cap, or 'auto'. Without --chunk-size and --token-budget (default) the "
        "engine configuration is chosen by held-out replay error among "
        "--chunk-candidates (no budget), --budget-candidates (no chunk cap) "
        "and no chunking; 'auto' with --token-budget B chooses the chunk size "
        "under that budget (default: not set, chosen automatically)",
    )
    group.add_argument(
        "--chunk-candidates",
        type=_int_list,
        default=DEFAULT_CHUNK_CANDIDATES,
        help="comma-separated chunk sizes of the automatic configuration "
        f"(default: {','.join(map(str, DEFAULT_CHUNK_CANDIDATES))})",
    )
    group.add_argument(
        "--budget-candidates",
        type=_int_list,
        default=VLLM_TOKEN_BUDGETS,
        help="comma-separated token budgets (max_num_batched_tokens) of the "
        f"automatic configuration (default: {','.join(map(str, VLLM_TOKEN_BUDGETS))})",
    )
    group.add_argument(
        "--max-num-seqs",
        type=_positive_int,
        help="the engine's most running requests (vLLM's max_num_seqs), given "
        "to the held-out replay and the schedule fit (default: the most the "
        "trace shows running at once; the schedule fit reads the plateau "
        "where requests wait at it)",
    )
    group.add_argument(
        "--num-gpu-blocks",
        type=_positive_int,
        help="the engine's KV cache in blocks (vLLM's num_gpu_blocks), given "
        "to the held-out replay: admission waits for a prompt's blocks and a "
        "full cache preempts (default: no KV bound; the schedule fit reads it "
        "where requests wait below a running plateau)",
    )
    group.add_argument(
        "--block-size",
        type=_positive_int,
        default=16,
        help="tokens per KV block, with --num-gpu-blocks (default: 16)",
    )
    group.add_argument(
        "--cv-folds",
        type=_folds,
        default=defaults["n_splits"],
        help="time-block folds of the held-out replay that chooses the engine "
        f"configuration and validates the fit (default: {defaults['n_splits']})",
    )


def _add_estimator_choice(group, defaults: dict) -> None:
    """The estimator and its partial-chunk correction."""
    group.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default="auto",
        help="which fit: 'phase' (the phase-exposure fit of --algo, with the "
        "request overheads searched on client-side times), 'schedule' (the "
        "schedule-consistent fit, ScheduleBetaRegressor, with max_num_seqs and "
        "the KV cache read from the trace unless given) or 'auto': the "
        "schedule fit when the trace shows queueing or has client-side times, "
        "else the phase fit; the report says which and why (default: auto)",
    )
    group.add_argument(
        "--algo",
        choices=ALGORITHMS,
        default=defaults["algo"],
        help=f"estimator (default: {defaults['algo']})",
    )
    modes = defaults["correction_mode"]
    group.add_argument(
        "--correction-mode",
        choices=CORRECTION_MODES,
        help=f"partial-chunk correction (default: {modes['baseline']} for "
        f"baseline, {modes['iterative']} for iterative; baseline takes only "
        f"{', '.join(FIXED_CORRECTION_MODES)})",
    )


def _add_estimator_settings(group, defaults: dict) -> None:
    """One option per setting of the estimators (a default of None keeps the
    estimator's own); the trace's time and decode conventions have theirs."""
    helps = {
        "objective": f"iterative: {' or '.join(OBJECTIVES)}",
        "token_budget": "the engine's per-step token budget "
        "(max_num_batched_tokens), if it has one; alone (no --chunk-size) it "
        "means no chunk cap, as in vLLM V1",
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
        if name in ("time_resolution", "decode_tokens_include_first"):
            continue
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=types.get(name, str),
            choices=choices.get(name),
            help=f"{helps[name]} (default: {defaults[name]})",
        )


def _add_trace_convention_options(group, defaults: dict) -> None:
    """How the trace's times and decode token counts are read."""
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
    group.add_argument(
        "--decode-tokens-include-first",
        action="store_true",
        default=defaults["decode_tokens_include_first"],
        help="decode_tokens counts the first output token, which the last "
        "prefill step emits (e.g. vLLM's num_generation_tokens): a decode "
        "phase then runs decode_tokens - 1 steps; an N_steps column "
        f"overrides it (default: {defaults['decode_tokens_include_first']}, "
        "decode_tokens are the decode phase's steps, as in the reference and "
        "the simulator)",
    )


def _add_output_options(fit) -> None:
    group = fit.add_argument_group("output")
    group.add_argument(
        "--output",
        choices=OUTPUTS,
        default="table",
        help="table, json (schema sklearn-beta/fit/v1), blis (BLIS's "
        "trained-physics --alpha-coeffs/--beta-coeffs and a blis replay line, "
        "BLIS after 2026-04-23; needs --step-model trained-physics), "
        "blis-blackbox (the legacy three-coefficient models: entry, BLIS "
        "before 2026-04-23) or llm-d (llm-d inference simulator config) "
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
            help=f"--output blis-blackbox: the {what} (default: a placeholder, "
            "with a note)"
            + {
                "--gpu": "; the trained-physics basis's GPU",
                "--tensor-parallelism": "; the trained-physics basis's tp",
                "--model-id": "; --output blis: the replay's --model",
            }.get(flag, ""),
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
        help="no progress on stderr even on a terminal; warnings are still "
        "printed (default: progress only when stderr is a terminal)",
    )
    group.add_argument(
        "--strict",
        action="store_true",
        help="exit with code 1 when the fit warns (a beta at its bound, an "
        "interval too wide, an unidentified coefficient, an engine "
        "configuration at the edge of the candidates, ...), after printing "
        "the result and the warnings, as python -W error would (default: "
        "warnings leave the exit code at 0)",
    )


def _chunk_size(text: str):
    if text in ("auto", "none"):
        return text
    return _positive_int(text)


def _folds(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 folds, got {text!r}")
    return value


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


def _step_model(text: str):
    """``--step-model``: a name of :data:`STEP_MODEL_CHOICES` or a comma
    list of step features."""
    if text in STEP_MODEL_CHOICES:
        return text
    features = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return list(check_step_model(features))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(STEP_MODEL_CHOICES)} or a comma list "
            f"of {', '.join(STEP_FEATURES)}; got {text!r}"
        ) from None


def add_step_model_options(fit) -> None:
    """``--step-model`` and ``--model-config`` (``--gpu`` and
    ``--tensor-parallelism`` are the output group's, reused)."""
    group = fit.add_argument_group("step model")
    group.add_argument(
        "--step-model",
        type=_step_model,
        default="published",
        metavar="published|attention|trained-physics|auto|FEATURES",
        help="the step time's features: published (beta0 + beta1 T_p + beta2 "
        "T_d), attention (adds prefill attention and decode context), "
        "trained-physics (BLIS's roofline basis; needs --model-config and "
        "--gpu), auto (the simplest within one standard error of the best "
        "held-out phase-duration error; trained-physics among them when "
        f"--model-config is given), or a comma list of {', '.join(STEP_FEATURES)}. "
        "Other than published, the iterative estimator runs the duration "
        "objective (default: published)",
    )
    group.add_argument(
        "--model-config",
        metavar="PATH",
        help="the model's HuggingFace config.json, for the trained-physics "
        "basis; --gpu (H100, A100-SXM, A100-80, L40S) and "
        "--tensor-parallelism (default 1) complete the deployment "
        "(default: none; used by trained-physics and auto only)",
    )
