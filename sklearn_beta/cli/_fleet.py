"""``sklearn-beta fit --dask``: a fleet's trace files fitted on a Dask cluster.

The phase table is read lazily (one partition per file) and never collected
on the client: the exposures, the fit, the intervals and the diagnostics are
reductions of per-partition statistics (:mod:`sklearn_beta._dask_fit`), and
so are the report's trace counts (:func:`fleet_summary`). Two things of the
single-file report need every phase on the client and are not made:
``--plot`` (a usage error with ``--dask``) and the held-out replay
``validation`` of the fitted betas (null, with a note). The automatic engine
configuration (no ``--chunk-size``/``--token-budget``) runs its held-out
replay search on a bounded sample of whole instances collected to the client
(:func:`search_sample`); the fleet is then fitted with its choice.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import pandas as pd

from ..distributed._fleet import connect
from ..engine_config._search import model_chunk_size
from ..engine_config._trace_fit import TraceFit, fitted_summary, make_model
from ..io._formats import PHASE_FORMATS
from ..io._readers import read_phases
from ._engine import choose_engine, engine_candidates, fit_options, instance_column
from ._options import UsageError
from ._report import _json_ready, build_report, engine_label, engine_summary

#: Most phases of the whole instances collected to the client for the
#: automatic engine configuration's held-out replay search (the smallest
#: instance is taken whole when it alone holds more).
SEARCH_SAMPLE_PHASES = 200_000
#: Trace formats ``--dask`` reads (one partition per file): the phase tables'.
DASK_FORMATS = PHASE_FORMATS


@contextmanager
def fleet_client(address: str):
    """The ``distributed.Client`` of ``--dask ADDRESS``, closed on exit
    (with the ``LocalCluster`` it started for ``local``)."""
    # A shuffle of instances straddling files logs its start and end at
    # WARNING level: noise on a command line's stderr, not a problem.
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    try:
        client = connect(address)
    except (OSError, TimeoutError) as exc:
        raise ValueError(
            f"cannot reach the Dask scheduler at {address!r} ({exc}); start one "
            "(dask scheduler; dask worker ADDRESS) or use --dask local"
        ) from exc
    try:
        yield client
    finally:
        cluster = client.cluster if address == "local" else None
        client.close()
        if cluster is not None:
            cluster.close()


def fleet_summary(phases, instance_col: str | None) -> dict:
    """Counts of the report's ``trace`` section, from per-partition counts.

    ``n_requests`` counts the distinct ``(instance, request id)`` pairs (ids
    may repeat across engines): per partition when every instance lies in
    one partition, else by a shuffle of those two columns (never on the
    client). ``instances`` are the distinct instance names, with their
    phase counts in ``instance_sizes``; ``longest_prompt`` is the most
    prefill tokens of a phase.
    """
    import dask  # optional dependency: the dask extra

    parts = phases.to_delayed()
    counts = dask.compute(
        *[dask.delayed(_partition_counts)(p, instance_col) for p in parts]
    )
    sizes: dict = {}
    for c in counts:
        for name, n in c["sizes"].items():
            sizes[name] = sizes.get(name, 0) + int(n)
    whole = sum(len(c["sizes"]) for c in counts) == len(sizes)
    if whole and (instance_col is not None or len(counts) == 1):
        n_requests = sum(c["n_requests"] for c in counts)
    else:
        keys = ["request_id"] if instance_col is None else [instance_col, "request_id"]
        distinct = phases[keys].drop_duplicates(split_out=phases.npartitions)
        n_requests = int(distinct.shape[0].compute())
    return {
        "n_phases": int(sum(c["n_phases"] for c in counts)),
        "n_requests": int(n_requests),
        "instances": ["all"] if instance_col is None else sorted(sizes, key=_sort_key),
        "instance_sizes": sizes,
        "longest_prompt": int(max(c["longest_prompt"] for c in counts)),
    }


def _sort_key(value):
    return (str(type(value)), value)


def _partition_counts(part: pd.DataFrame, instance_col: str | None) -> dict:
    prompts = pd.to_numeric(part["prefill_tokens"], errors="coerce")
    keys = ["request_id"] if instance_col is None else [instance_col, "request_id"]
    sizes = {} if instance_col is None else part[instance_col].value_counts().to_dict()
    return {
        "n_phases": len(part),
        "n_requests": len(part[keys].drop_duplicates()),
        "sizes": sizes,
        "longest_prompt": float(np.nan_to_num(prompts.max(), nan=0.0)),
    }


def search_sample(phases, instance_col: str | None, summary: dict):
    """Whole instances for the engine search, collected to the client.

    Instances in order of their name while the sample holds at most
    :data:`SEARCH_SAMPLE_PHASES` phases (at least the smallest instance).
    Returns ``(sample, chosen, note)``: a pandas phase table, the names of
    its instances and the report's note.
    """
    if instance_col is None:
        if summary["n_phases"] > SEARCH_SAMPLE_PHASES:
            raise ValueError(
                "the automatic engine configuration needs whole instances on the "
                f"client, and this one-engine trace holds {summary['n_phases']} "
                f"phases (more than {SEARCH_SAMPLE_PHASES}); set the engine with "
                "--chunk-size N or --token-budget B, or name the instance column "
                "with --instance-col"
            )
        chosen = ["all"]
        sample = phases.compute()
    else:
        sizes = summary["instance_sizes"]
        chosen, total = [], 0
        for name in summary["instances"]:
            if total + sizes[name] <= SEARCH_SAMPLE_PHASES:
                chosen.append(name)
                total += sizes[name]
        if not chosen:
            chosen = [min(sizes, key=sizes.get)]
        sample = phases[phases[instance_col].isin(chosen)].compute()
    shown = ", ".join(str(c) for c in chosen[:5]) + (", ..." if len(chosen) > 5 else "")
    note = (
        "engine configuration chosen by held-out replay on a sample collected to "
        f"the client: {len(sample)} phases of {len(chosen)} whole instance(s) "
        f"({shown}) out of {summary['n_phases']} phases and "
        f"{len(summary['instances'])} instance(s); the fleet is fitted on the "
        "workers with that configuration. Pass --chunk-size N or --token-budget "
        "B to skip the search"
    )
    return sample, chosen, note


def check_dask_usage(args, fmt: str) -> None:
    if args.dask != "local" and "://" not in args.dask:
        raise UsageError(
            f"--dask takes 'local' or a scheduler address such as "
            f"tcp://HOST:8786, got {args.dask!r}"
        )
    if fmt not in DASK_FORMATS:
        raise UsageError(
            f"--dask reads {' or '.join(DASK_FORMATS)} traces (one partition per "
            f"file), not {fmt}"
        )
    if args.plot:
        raise UsageError(
            "--plot draws every phase, and --dask never collects the phases to "
            "this machine; plot one instance's file without --dask"
        )


def run_fleet_fit(args, progress, fmt: str, client):
    """``run_fit`` with ``--dask``: the phases stay on the cluster's workers.

    The report has the single-file layout; ``validation`` is null (a
    held-out replay needs every phase here) and the ``fleet`` section says
    where the fit ran and what the engine search saw.
    """
    phases = read_phases(
        args.trace, format=fmt, time_unit=args.time_unit or "s", dask=True
    )
    progress.say(
        f"reading {args.trace} lazily, {phases.npartitions} partition(s), on "
        f"{len(client.scheduler_info()['workers'])} Dask worker(s)"
    )
    notes, summaries = [], {}

    def summary_of(column):
        # One pass over the trace's columns for every count of the report.
        if column not in summaries:
            summaries[column] = fleet_summary(phases, column)
        return summaries[column]

    instance_col = instance_column(
        args, fmt, phases, notes, lambda c: len(summary_of(c)["instances"])
    )
    options = dict(
        fit_options(args),
        instance_col=instance_col,
        time_resolution=args.time_resolution,
    )
    summary = summary_of(instance_col)
    pair, config, engine_warnings, searched = _fleet_engine(
        phases, instance_col, summary, options, args, progress, notes
    )
    notes.append(
        "validation is null: the held-out replay of the fitted betas needs "
        "every phase on this machine, which --dask never collects"
    )
    options["token_budget"] = pair[1]
    chosen = engine_label(dict(zip(("chunk_size", "token_budget"), pair, strict=True)))
    progress.say(f"fitting on the cluster ({args.algo}, {chosen})...")
    fit = fit_fleet_trace(
        phases,
        chunk_size=model_chunk_size(pair, summary["longest_prompt"]),
        instance_names=summary["instances"],
        verbose=int(progress.enabled) if args.algo == "iterative" else 0,
        **options,
    )
    engine = engine_summary(config, pair, args) | {"validation": None}
    trace = _trace_section(summary)
    report = build_report(fit, args, fmt, trace, engine, options, None, notes)
    report["fleet"] = {
        "dask": args.dask,
        "n_workers": len(client.scheduler_info()["workers"]),
        "n_partitions": phases.npartitions,
        "engine_search_sample": _json_ready(searched),
    }
    report["warnings"] += engine_warnings
    return report, fit, None, None


def _fleet_engine(phases, instance_col, summary, options, args, progress, notes):
    """The fleet's engine configuration: given, or searched on a sample.

    The search's notes are appended to ``notes``. Returns ``(pair, config,
    warnings, searched)``: the ``(chunk_size, token_budget)`` pair, the
    search's :class:`~sklearn_beta.EngineConfig` and warning lines (None and
    [] when the engine was given) and the report's ``engine_search_sample``.
    """
    candidates = engine_candidates(args)
    if len(candidates) <= 1:
        return candidates[0], None, [], None
    sample, chosen, note = search_sample(phases, instance_col, summary)
    notes.append(note)
    config, engine_warnings = choose_engine(
        sample, candidates, options, args, progress, notes
    )
    searched = {
        "n_phases": len(sample),
        "instances": [str(c) for c in chosen],
        "validation": config.validation,
    }
    return (config.chunk_size, config.token_budget), config, engine_warnings, searched


def _trace_section(summary: dict) -> dict:
    """The report's ``trace`` section of a fleet, from :func:`fleet_summary`."""
    return {
        "n_phases": summary["n_phases"],
        "n_requests": summary["n_requests"],
        "n_instances": len(summary["instances"]),
        "instances": [str(x) for x in summary["instances"]],
        "client_side": False,
    }


def fit_fleet_trace(
    phases, *, chunk_size: int, instance_names: list, **options
) -> TraceFit:
    """Fit the pipeline on a Dask phase table, on the workers.

    Like :func:`~sklearn_beta._trace_fit.fit_trace` but without the per-phase
    fields: the phases stay on the workers.
    """
    algo = options.get("algo", "iterative")
    model = make_model(chunk_size, **options)
    model.fit(phases)
    return TraceFit(**fitted_summary(model, algo), instance_names=instance_names)
