"""One ``sklearn-beta fit`` run's settings: fit options, instance column, engine.

Shared by the fit in this process (:mod:`sklearn_beta.cli`) and the fit on a
Dask cluster (:mod:`sklearn_beta._cli_fleet`).
"""

from __future__ import annotations

import argparse
import warnings

from ..engine_config._search import (
    EngineConfigWarning,
    default_engine_candidates,
    select_engine_config,
)
from ..engine_config._trace_fit import (
    ITERATIVE_OPTIONS,
    TRANSFORMER_OPTIONS,
    make_model,
)
from ..io._tracev2 import header_engine_settings
from ._options import INSTANCE_COLUMNS

_MAX_ERROR_CHARS = 600


def fit_options(args) -> dict:
    """The :func:`~sklearn_beta._trace_fit.make_model` options of the parsed
    arguments (None where the estimator's default stands)."""
    options = {
        name: getattr(args, name) for name in (*ITERATIVE_OPTIONS, *TRANSFORMER_OPTIONS)
    }
    options |= dict(algo=args.algo, correction_mode=args.correction_mode)
    return options


def instance_column(args, fmt: str, phases, notes: list, count=None) -> str | None:
    """The instance column; a found one is noted with its instance count
    (``count(column)``, by default the table's distinct values)."""
    if args.instance_col == "none":
        return None
    if args.instance_col is not None:
        return args.instance_col
    if fmt in ("otel", "bench"):
        return "instance_id"
    found = next((c for c in INSTANCE_COLUMNS if c in phases.columns), None)
    if found is not None:
        n = count(found) if count is not None else phases[found].nunique()
        notes.append(
            f"instance column {found!r} found: {n} engine instance(s) fitted "
            "per instance (--instance-col none fits one engine)"
        )
    return found


def with_header_engine(args, phases, notes: list):
    """``args`` with the engine settings a TraceV2/V3 header's ``server``
    section gives (:func:`~sklearn_beta.io._tracev2.header_engine_settings`)
    where the command line gives none, and a note naming them; the command
    line's win. A header's ``block_size`` comes with its ``num_gpu_blocks``
    (the cache is counted in its blocks)."""
    given = header_engine_settings(phases.attrs.get("header") or {})
    taken, kept = {}, []
    for setting, value in given.items():
        if setting == "block_size":
            continue
        if getattr(args, setting) is None:
            # a header's threshold of 0 is vLLM's none: no chunk cap
            taken[setting] = "none" if value is None else value
        else:
            kept.append(f"--{setting.replace('_', '-')} {getattr(args, setting)}")
    if "num_gpu_blocks" in taken and "block_size" in given:
        taken["block_size"] = given["block_size"]
    if taken:
        listed = ", ".join(f"{k} {v}" for k, v in taken.items())
        notes.append(
            f"engine settings from the trace header's server section: {listed}"
            + (f" (the command line's {', '.join(kept)} kept)" if kept else "")
        )
    return argparse.Namespace(**{**vars(args), **taken})


def engine_candidates(args) -> list[tuple]:
    """The ``(chunk_size, token_budget)`` candidates the options leave open.

    One pair when the engine is set (``--chunk-size N`` or ``none``, or
    ``--token-budget B`` alone: no chunk cap, as in vLLM V1); otherwise the
    automatic configuration's candidates.
    """
    chunk, budget = args.chunk_size, args.token_budget
    if isinstance(chunk, int) or chunk == "none":
        return [(chunk if isinstance(chunk, int) else None, budget)]
    if budget is None:
        return default_engine_candidates(args.chunk_candidates, args.budget_candidates)
    if chunk is None:
        return [(None, budget)]
    return [(int(c), budget) for c in args.chunk_candidates] + [(None, budget)]


def choose_engine(phases, candidates, options, args, progress, notes):
    """The engine configuration and its held-out replay errors.

    Returns ``(config, warnings)``: the :class:`~sklearn_beta.EngineConfig`
    (None when a set configuration cannot be validated; then the reason is
    appended to ``notes``) and the messages of its
    :class:`~sklearn_beta.EngineConfigWarning`.
    """
    auto = len(candidates) > 1
    progress.say(
        f"{'choosing the engine configuration among' if auto else 'validating'} "
        f"{len(candidates)} candidate(s) by {args.cv_folds}-fold held-out replay..."
    )
    fixed = {k: v for k, v in options.items() if k != "token_budget"}
    # The replay and the time blocks read the instance from "instance_id".
    column = fixed.pop("instance_col")
    if column != "instance_id":
        phases = phases.drop(columns="instance_id", errors="ignore")
        if column is not None:
            phases = phases.rename(columns={column: "instance_id"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EngineConfigWarning)
        try:
            config = select_engine_config(
                phases,
                make_model(instance_col=column and "instance_id", **fixed),
                candidates=candidates,
                n_splits=args.cv_folds,
                **engine_settings(args),
            )
            # Candidates and folds the search dropped instead of failing.
            notes.extend(config.notes)
        except ValueError as exc:
            if auto:
                raise ValueError(
                    "the automatic engine configuration needs a held-out replay "
                    f"of the trace, which failed ({one_line(exc)}); set the "
                    "engine with --chunk-size N or --token-budget B"
                ) from exc
            notes.append(f"no held-out replay validation: {one_line(exc)}")
            config = None
    found = [w for w in caught if issubclass(w.category, EngineConfigWarning)]
    return config, [str(w.message) for w in found]


def engine_settings(args) -> dict:
    """The replay's engine settings given on the command line
    (``--max-num-seqs``, ``--num-gpu-blocks``, ``--block-size``)."""
    return {
        "max_num_seqs": getattr(args, "max_num_seqs", None),
        "num_gpu_blocks": getattr(args, "num_gpu_blocks", None),
        "block_size": getattr(args, "block_size", 16),
    }


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most ``_MAX_ERROR_CHARS`` long."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " | ".join(lines) or type(exc).__name__
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 3] + "..."
    return text
