"""The ``sklearn-beta`` command: from a trace file to step-time coefficients.

``sklearn-beta fit TRACE`` reads a trace (reference CSV/Parquet, OTLP JSON
spans, benchmark results or BLIS TraceV2), fits ``(beta0, beta1, beta2)`` and
prints them as a table, as JSON, as a BLIS ``models:`` entry or as llm-d
simulator options; ``--plot DIR`` adds diagnostic figures. Run
``sklearn-beta fit --help`` for the options (``docs/cli.md`` explains them).

Exit codes: 0 success, 1 bad data (the trace, or a fit that failed; with
``--strict`` also a warning about the fit), 2 bad usage (an option). Errors
and warnings are one line each on stderr, never a traceback or a source
line; the trace and every option are checked before any fitting starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..engine_config._regime import detect_queueing
from ..engine_config._search import (
    EngineConfig,
    model_chunk_size,
)
from ..engine_config._trace_fit import (
    TraceFit,
    check_fit_options,
    fit_client_phases,
    fit_trace,
    make_model,
)
from ..io._formats import CLI_FORMATS, container_of
from ..io._readers import (
    TRACEV2_COLUMNS,
    read_benchmark_results,
    read_otel_spans,
    read_phases,
    read_tracev2,
    read_vllm_request_stats,
)
from ..io._vllm_stats import has_stats_columns
from ..plotting import save_fit_plots, save_replay_plot
from ._engine import (
    choose_engine,
    engine_candidates,
    fit_options,
    instance_column,
    one_line,
    with_header_engine,
)
from ._fleet import check_dask_usage, fleet_client, run_fleet_fit
from ._options import (
    UsageError,
    build_parser,
)
from ._report import (
    SCHEMA,
    build_report,
    engine_summary,
    format_blis,
    format_llm_d,
    format_table,
    trace_summary,
)
from ._schedule import (
    ScheduleFallback,
    calibrated_betas,
    check_forecast,
    choose_estimator,
    client_cut,
    client_engine,
    client_overheads,
    fit_schedule,
    held_out_check,
    read_settings,
    refine_kv,
    schedule_frame,
    search_chunking,
)
from ._schedule_report import schedule_report
from ._step_model import (
    basis_options,
    check_step_model_usage,
    fit_step_model,
    format_step_model_blis,
    format_step_model_table,
)
from ._step_schedule import (
    choose_step_model,
    step_model_fits,
    step_schedule_report,
)

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2


def infer_format(path: str) -> str:
    """Trace format from the file name's suffix (and a CSV's header line or a
    JSON lines file's first record)."""
    container = container_of(path)
    fmt = CLI_FORMATS.get(container, container)
    if fmt in ("csv", "otel") and Path(path).is_file():
        with open(path, encoding="utf-8", errors="replace") as handle:
            line = handle.readline()
        if fmt == "otel":
            try:
                names = json.loads(line)
            except json.JSONDecodeError:
                return fmt
            stats = isinstance(names, dict) and has_stats_columns(names)
            return "vllm-stats" if stats else fmt
        columns = {c.strip().strip('"') for c in line.split(",")}
        if set(TRACEV2_COLUMNS) <= columns:
            return "tracev2"
        if has_stats_columns(columns):
            return "vllm-stats"
    return fmt


def read_trace(path: str, format: str, *, time_unit=None, header=None):
    """Read a trace file of the given format into a phase table."""
    if format == "otel":
        return read_otel_spans(path)
    if format == "bench":
        return read_benchmark_results(path)
    if format == "tracev2":
        return read_tracev2(path, header)
    if format == "vllm-stats":
        return read_vllm_request_stats(path, time_unit=time_unit or "s")
    return read_phases(path, format=format, time_unit=time_unit or "s")


class _Progress:
    """Progress lines on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)


def check_usage(args) -> None:
    """Every option, checked before the trace is read (raises UsageError)."""
    fmt = args.format or infer_format(args.trace)
    if args.time_unit is not None and fmt not in ("csv", "parquet", "vllm-stats"):
        raise UsageError(
            f"--time-unit applies to csv, parquet and vllm-stats traces, not "
            f"{fmt} (its times carry their unit)"
        )
    if args.trace_header is not None and fmt != "tracev2":
        raise UsageError(f"--trace-header applies to tracev2 traces, not {fmt}")
    check_step_model_usage(args)
    blis_only = ("model_id", "gpu", "tensor_parallelism", "vllm_version")
    given = [
        n
        for n in (*blis_only, "total_kv_blocks")
        if getattr(args, n) and n not in basis_options(args)
    ]
    if given and args.output != "blis-blackbox":
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(
            f"{flags} describe(s) --output blis-blackbox, not {args.output}"
        )
    if args.time_resolution < 0 or not math.isfinite(args.time_resolution):
        raise UsageError(
            f"--time-resolution must be >= 0 seconds, got {args.time_resolution:g}"
        )
    try:
        check_fit_options(**fit_options(args))
    except (ValueError, TypeError) as exc:
        raise UsageError(one_line(exc)) from exc
    if args.dask is not None:
        check_dask_usage(args, fmt)
    if args.estimator == "schedule" and args.dask is not None:
        raise UsageError("--estimator schedule runs in memory, not with --dask")


def _validate_trace(phases, candidates, options: dict) -> None:
    """Check the whole trace before any search or fit. This pass is not the
    fit reported: its warnings are the final fit's to give."""
    first = next((c for c, _ in candidates if c is not None), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_model(first, **options)[0].fit_transform(phases)


def _chosen_chunking(config, candidates, phases) -> tuple:
    """``(chunk_size, token_budget, model_chunk)`` of the engine search's
    choice, or of the one candidate when nothing was searched."""
    if config is not None:
        return config.chunk_size, config.token_budget, config.model_chunk_size
    chunk_size, token_budget = candidates[0]
    longest = int(phases["prefill_tokens"].max())
    return chunk_size, token_budget, model_chunk_size(candidates[0], longest)


def run_fit(
    args, progress: _Progress
) -> tuple[dict, TraceFit | None, EngineConfig | None, pd.DataFrame]:
    """Run ``fit``: the JSON-ready report, the fit (None for a schedule
    fit), the engine configuration and the trace as read."""
    fmt = args.format or infer_format(args.trace)
    if args.dask is not None:
        with fleet_client(args.dask) as client:
            return run_fleet_fit(args, progress, fmt, client)
    phases = read_trace(
        args.trace, fmt, time_unit=args.time_unit, header=args.trace_header
    )
    notes = list(phases.attrs.get("notes", []))
    progress.say(f"read {len(phases)} phases from {args.trace} ({fmt})")
    args = with_header_engine(args, phases, notes)
    instance_col = instance_column(args, fmt, phases, notes)
    options = dict(
        fit_options(args),
        instance_col=instance_col,
        time_resolution=args.time_resolution,
    )
    candidates = engine_candidates(args)
    _validate_trace(phases, candidates, options)
    estimator, reason = choose_estimator(phases, args, instance_col)
    engine_read = None
    if estimator == "schedule":
        try:
            report, config = run_schedule_fit(
                phases, args, fmt, (options, candidates), list(notes), progress, reason
            )
            return report, None, config, phases
        except ScheduleFallback as exc:
            engine_read = exc.settings
            fallback = f"{exc}: the phase-exposure fit is reported instead"
            reason = (
                f"{exc}; the schedule fit was chosen because {reason}. Give the "
                "engine (--chunk-size, --token-budget, --max-num-seqs, "
                "--num-gpu-blocks)"
                + ("" if args.estimator == "schedule" else " or --estimator schedule")
            )
    notes.append(f"fit: phase-exposure ({reason})")
    report, fit, config = run_phase_fit(
        phases, args, fmt, (options, candidates), notes, progress, engine_read
    )
    report["fit"] = {"estimator": "phase", "reason": reason}
    if estimator == "schedule":
        report["warnings"].insert(0, fallback)
    return report, fit, config, phases


def run_phase_fit(phases, args, fmt, setup, notes, progress, engine_read=None):
    """The phase-exposure fit (today's path): ``(report, fit, config)``;
    ``setup`` is ``(options, candidates)``; ``engine_read`` the schedule
    path's engine settings when it fell back (the client's overheads are
    replayed on them, :func:`~sklearn_beta.cli._schedule.client_overheads`)."""
    options, candidates = setup
    sent = phases  # the client's overheads replay its sends
    chunking = candidates[0] if len(candidates) == 1 else None
    if engine_read is not None:
        chunking = (engine_read.chunk_size, engine_read.token_budget)
    cut = client_cut(phases, options["instance_col"], chunking or (None, None))
    searched = None
    if cut is not None and chunking is None:
        # Nothing tells a prompt's steps but the search, and a cut at one
        # step a prompt would hide them from it: it reads the sends' phases.
        searched = choose_engine(phases, candidates, options, args, progress, notes)
        chunking = (searched[0].chunk_size, searched[0].token_budget)
        cut = client_cut(phases, options["instance_col"], chunking)
    if cut is not None:
        phases = cut.at()
    config, engine_warnings = searched or choose_engine(
        phases, candidates, options, args, progress, notes
    )
    chunk_size, token_budget, model_chunk = _chosen_chunking(config, candidates, phases)
    options["token_budget"] = token_budget
    progress.say(
        f"fitting ({args.algo}, chunk size {chunk_size}, token budget "
        f"{token_budget})..."
    )
    verbose = int(progress.enabled) if args.algo == "iterative" else 0
    engine = engine_summary(config, (chunk_size, token_budget), args)
    engine_read = (chunk_size, token_budget) if engine_read is None else engine_read
    fit, calibration, calibrate, overheads = None, None, None, None
    if cut is not None:
        progress.say("client-side times: choosing the prefill phases' window...")
        frame = schedule_frame(sent, options["instance_col"])
        replay, why = client_engine(frame, args, engine_read)
        fit, window, phases = fit_client_phases(
            cut.table,
            chunk_size=model_chunk,
            prompt_chunk=cut.prompt_chunk,
            engine=None if replay is None else replay.replay_settings(),
            columns=cut.columns,
            **options,
        )
        notes = [*notes, cut.note(window, why)]
        overheads = partial(client_overheads, frame, engine=replay, why=why)
        if replay is not None:
            calibrate = partial(calibrated_betas, frame=frame, engine=replay)
        if calibrate is not None and args.step_model == "published":
            progress.say("client-side times: calibrating the betas by replay...")
            beta, ci, calibration, note = calibrate(fit.beta, fit.beta_ci)
            fit = replace(fit, beta=beta, beta_ci=ci)
            notes = [*notes, note]
    if args.step_model != "published":
        report = step_model_report(
            phases,
            args,
            fmt,
            engine,
            dict(options, model_chunk=model_chunk, notes=notes),
            progress,
            (overheads, calibrate),
        )
        return report, None, config
    if fit is None:
        fit = fit_trace(phases, chunk_size=model_chunk, verbose=verbose, **options)
    alpha, note = (None, None) if overheads is None else overheads(fit.beta)
    if note is not None:
        notes = [*notes, note]
    trace = trace_summary(phases, fit)
    report = build_report(fit, args, fmt, trace, engine, options, alpha, notes)
    report["replay_calibration"] = calibration
    report["step_model"] = "published"
    report["warnings"] += engine_warnings
    return report, fit, config


def run_schedule_fit(phases, args, fmt, setup, notes, progress, reason):
    """The schedule-consistent fit: ``(report, config)``; raises
    :class:`~sklearn_beta.cli._schedule.ScheduleFallback` when it gives no
    usable result. ``setup`` is ``(options, candidates)``.

    The published path runs once (settings read from the trace, chunking
    search, KV refinement, fit); a step model of ``--step-model`` is then
    fitted on that engine (``cli._step_schedule``), and where the published
    fit does not converge in ``auto`` mode the attention model is tried
    there before falling back."""
    options, candidates = setup
    frame = schedule_frame(phases, options["instance_col"])
    read, section = _schedule_engine(frame, args, candidates, progress)
    settings, kv_rows = refine_kv(frame, read, progress)
    if section is not None and kv_rows:
        section["kv_candidates"] = kv_rows
    strict = args.estimator == "auto"
    try:
        published = fit_schedule(frame, settings, progress, strict=False)
        trouble = None
        if strict and not published.converged_:
            trouble = (
                f"the schedule fit did not converge in {published.n_iter_} replays"
            )
    except ScheduleFallback as exc:
        published, trouble = None, str(exc)
    parts = dict(
        engine={
            "chunk_size": settings.chunk_size,
            "token_budget": settings.token_budget,
            "engine_config": section,
        },
        settings=settings,
        reason=reason,
        notes=notes,
        instance_col=options["instance_col"],
    )
    try:
        if args.step_model != "published":
            return _step_model_schedule(frame, args, fmt, parts, published, progress)
        if trouble is None:
            try:
                return _published_schedule(published, frame, args, fmt, parts, progress)
            except ScheduleFallback as exc:  # its forecast misses the trace
                trouble = str(exc)
        return _attention_rescue(
            frame, args, fmt, parts, (published, trouble), progress
        )
    except ScheduleFallback as exc:
        # The KV cache refined by the schedule fits' misfit goes with them:
        # on the realism mix at 12 req/s (KV-bound) the refinement found no
        # bound, and the fallback's replays admitted every request at once
        # (TTFT +14 %; at the reading +2.1 %).
        exc.settings = read
        raise


def _attention_rescue(frame, args, fmt, parts, published, progress):
    """The published schedule fit did not converge (``published`` is the
    fit or None, and why): the published step may not carry the engine's
    schedule (an attention cost under load), so the attention model is
    fitted on the same engine; reported when it converges, else
    :class:`ScheduleFallback`."""
    model, trouble = published
    rescue = argparse.Namespace(**{**vars(args), "step_model": "attention"})
    try:
        report, config = _step_model_schedule(
            frame, rescue, fmt, parts, model, progress, converged=True
        )
    except ScheduleFallback as exc:
        raise ScheduleFallback(
            f"{trouble}; with the attention step model: {exc}"
        ) from None
    report["notes"].insert(
        0,
        f"{trouble} with the published step model; the attention step "
        "model's did, on the same engine: reported instead",
    )
    return report, config


def _schedule_engine(frame, args, candidates, progress) -> tuple:
    """``(settings, engine_config section)``: the settings given or read
    from the trace with the chunking chosen by the schedule fits' misfit
    (published step model); :func:`refine_kv` refines a KV cache read."""
    decision = detect_queueing(frame, block_size=args.block_size)
    settings = read_settings(frame, args, decision)
    chunk_size, token_budget, section = search_chunking(
        frame, candidates, settings, progress
    )
    settings = replace(settings, chunk_size=chunk_size, token_budget=token_budget)
    return settings, section


def _published_schedule(model, frame, args, fmt, parts, progress):
    """The published schedule fit's report, with its held-out check."""
    forecast_note, miss = check_forecast(model, frame, strict=args.estimator == "auto")
    notes = parts["notes"]
    notes.append(f"fit: schedule-consistent, ScheduleBetaRegressor ({parts['reason']})")
    notes.extend(parts["settings"].notes)
    notes.append(forecast_note)
    try:
        validation = held_out_check(model, frame, args.cv_folds, progress)
    except Exception as exc:  # noqa: BLE001 - the check is optional, noted
        validation = None
        notes.append(f"no held-out check: {one_line(exc)}")
    parts = dict(parts, validation=validation, max_in_flight=model.max_in_flight)
    report = schedule_report(model, frame, args, fmt, parts)
    report["step_model"] = "published"
    if miss:
        report["warnings"].append(miss)
    return report, None


def _step_model_schedule(
    frame, args, fmt, parts, published, progress, *, converged=False
):
    """A step model's schedule fit on the published path's engine (``auto``:
    the candidates compared on held-out requests there). A fit that does not
    converge counts as failed with ``converged`` or ``--estimator auto``;
    :class:`ScheduleFallback` when no candidate is left."""
    fits = step_model_fits(
        frame,
        parts["settings"],
        args,
        published,
        progress,
        strict=converged or args.estimator == "auto",
    )
    try:
        model, selection, validation = choose_step_model(
            frame, fits, args.cv_folds, progress
        )
    except ValueError as exc:
        raise ScheduleFallback(one_line(exc)) from exc
    if not np.all(np.isfinite(model.beta_)) or not np.any(model.beta_ > 0):
        raise ScheduleFallback(f"the schedule fit gave betas {model.beta_.tolist()}")
    forecast_note, miss = check_forecast(
        model, frame, strict=converged or args.estimator == "auto"
    )
    notes = list(parts["notes"])
    notes.append(f"fit: schedule-consistent, ScheduleBetaRegressor ({parts['reason']})")
    notes.extend(parts["settings"].notes)
    notes.append(forecast_note)
    if selection is None:
        try:
            validation = held_out_check(model, frame, args.cv_folds, progress)
        except Exception as exc:  # noqa: BLE001 - the check is optional, noted
            notes.append(f"no held-out check: {one_line(exc)}")
    parts = dict(
        parts,
        notes=notes,
        validation=validation,
        selection=selection,
        step_model=model.step_model,
        max_in_flight=model.max_in_flight,
    )
    report = step_schedule_report(model, frame, args, fmt, parts)
    if miss:
        report["warnings"].append(miss)
    return report, None


#: Python's own default filters hide these: they speak to developers of the
#: code that raised them, not about the fit.
_DEVELOPER_WARNINGS = (
    DeprecationWarning,
    PendingDeprecationWarning,
    ImportWarning,
    ResourceWarning,
)


def warning_lines(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """The messages of recorded warnings, each on one line and each once.

    The message only: never the source file, line or code that raised it.
    Whitespace runs (line breaks included) are folded into one space.
    """
    lines = (" ".join(str(w.message).split()) for w in caught)
    return list(dict.fromkeys(line for line in lines if line))


def _error(message: str, code: int) -> int:
    print(f"sklearn-beta: error: {message}", file=sys.stderr)
    return code


def _plot(report: dict, fit: TraceFit, config, phases, directory: str) -> str | None:
    """Write the plots; the reason they failed, or None."""
    if fit is None:
        return (
            "--plot draws the phase-exposure fit's figures; this report is of "
            "the schedule-consistent fit (--estimator phase for the figures)"
        )
    try:
        report["plots"] = [str(p) for p in save_fit_plots(fit.model, phases, directory)]
        if config is not None:
            report["plots"].append(str(save_replay_plot(config.held_out, directory)))
    except ImportError as exc:
        return f"--plot needs matplotlib (pip install 'sklearn-beta[plot]'): {exc}"
    except (OSError, ValueError, RuntimeError) as exc:
        return f"--plot {directory!r} failed: {one_line(exc)}"
    return None


def step_model_report(
    phases, args, fmt, engine: dict, options, progress, client=(None, None)
) -> dict:
    """The report of a fit of another step model than the published one:
    the trace and engine sections as the published report's, then
    :func:`~sklearn_beta.cli._step_model.fit_step_model`'s sections (with
    the client's ``(overheads, calibrate)`` on client-side times).
    ``options`` holds the fit options, ``model_chunk`` and ``notes``."""
    options = dict(options)
    chunk, notes = options.pop("model_chunk"), options.pop("notes")
    fitted = fit_step_model(phases, args, options, chunk, progress, *client)
    parameters = dict(
        trace=args.trace,
        format=fmt,
        time_unit=args.time_unit,
        chunk_size=args.chunk_size,
        model_chunk_size=chunk,
        model_config=args.model_config,
        gpu=args.gpu,
        tensor_parallelism=args.tensor_parallelism,
        algo=options["algo"],
        instance_col=options["instance_col"],
    )
    report = {
        "schema": SCHEMA,
        "sklearn_beta_version": __version__,
        "parameters": parameters,
        "trace": {
            "n_phases": int(len(phases)),
            "n_requests": int(phases["request_id"].nunique()),
        },
        "chunk_size": engine["chunk_size"],
        "token_budget": engine["token_budget"],
        "engine_config": engine["engine_config"],
        "validation": engine["validation"],
        **fitted,
    }
    report["notes"] = list(notes) + report["notes"]
    report["warnings"] = []
    return report


def _render(report: dict, args) -> str:
    if args.output == "json":
        return json.dumps(report, indent=2)
    # a published schedule fit that did not converge may be rescued by the
    # attention model (_attention_rescue): its report is a step model's
    if args.step_model != "published" or "coefficients" in report:
        if args.output == "blis":
            return format_step_model_blis(report, args)
        if args.output in ("blis-blackbox", "llm-d"):
            raise ValueError(
                f"--output {args.output} writes the published three coefficients, "
                f"and the {report.get('step_model')} step model was fitted "
                "instead (see the notes of --output json); use --output table, "
                "json or blis"
            )
        return format_step_model_table(report)
    if args.output == "blis-blackbox":
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
        bad trace or a failed fit (with ``--strict``, also for a warning about
        the fit), 2 for bad usage.

    Notes
    -----
    Every warning raised while fitting (the package's
    :mod:`~sklearn_beta.exceptions` and any other but Python's developer
    warnings) is recorded, added to the report's ``warnings`` and printed
    once per message as one ``sklearn-beta: warning: MESSAGE`` line on
    stderr, ``--quiet`` or not.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check_usage(args)
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    progress = _Progress(enabled=not args.quiet and sys.stderr.isatty())
    with warnings.catch_warnings(record=True) as caught:
        # Recorded, not shown: Python's display names the source line.
        warnings.simplefilter("always")
        for category in _DEVELOPER_WARNINGS:
            warnings.simplefilter("ignore", category)
        try:
            report, fit, config, phases = run_fit(args, progress)
        except KeyboardInterrupt:
            return _error("interrupted", 130)
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback
            return _error(one_line(exc), EXIT_BAD_INPUT)
        plot_error = (
            _plot(report, fit, config, phases, args.plot) if args.plot else None
        )
    report["warnings"] = list(
        dict.fromkeys([*report["warnings"], *warning_lines(caught)])
    )
    for warning in report["warnings"]:
        print(f"sklearn-beta: warning: {warning}", file=sys.stderr)
    try:
        text = _render(report, args)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        return _error(one_line(exc), EXIT_BAD_INPUT)
    _write(text)
    if plot_error is not None:
        print(f"sklearn-beta: warning: {plot_error}", file=sys.stderr)
    if args.strict and report["warnings"]:
        # As `python -W error` would, but after the report: it is the
        # evidence of what the warnings are about.
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
