"""Fleet scale: pandas at 1e6-1e7 phases, a 2-worker Dask cluster at 1e7 (and 1e8).

Usage::

    python benchmarks/scale.py                          # pandas 1e6, 1e7; cluster 1e7
    python benchmarks/scale.py --pandas 1000000 --cluster   # selected cases
    python benchmarks/scale.py --large                  # adds 1e8 on the cluster (long)
    python benchmarks/scale.py --pandas --cluster 100000000 --worker-memory 10GB
    python benchmarks/scale.py --save benchmarks/scale_results.json \
        --plot docs/img/scale.png
    python benchmarks/scale.py --compare benchmarks/scale_results.json

pandas cases run each estimator in a fresh process on the cached simulated
trace of ``_traces.speed_trace`` (one heavily loaded engine; beyond 1e6
phases that trace repeated back to back in time, see :func:`tiled_trace`;
read before the clock starts) and report wall and CPU time, minor page
faults and the peak resident set of the process (trace included). Cluster cases start a
``LocalCluster`` of 2 single-threaded worker processes (``--worker-memory``:
each one's Dask memory limit); the phases are generated partition by
partition on the workers (one engine instance per partition,
``simulate_trace`` with a per-partition seed, cached on disk) whenever a
task needs them, as ``read_parquet`` would read them, and never exist in one
process. They report the time of one generating pass, the time to build the
exposures, timelines and starting point, the time per iteration (between the
estimator's progress callbacks), the fit time, each worker's resident set
after the setup and during the iterations, and its peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: ``+reuse``: the same fit inside ``sklearn_beta.fleet.reuse_freed_memory()``.
PANDAS_ESTIMATORS = (
    "pipeline-iterative",
    "pipeline-iterative+reuse",
    "pipeline-baseline",
    "baseline",
)
#: Phases per partition of the cluster cases: one engine instance each.
PHASES_PER_PARTITION = 500_000
#: Distinct simulated engines; partition i reuses seed i % N_SEEDS, as its
#: own instance, so generation does not dominate the benchmark.
N_SEEDS = 4

#: Largest trace simulated in one piece; longer ones repeat it in time.
SIMULATED_PHASES = 1_000_000


def tiled_trace(n_phases: int, *, chunk_size: int):
    """One engine's trace of ``n_phases``: the simulated 1e6-phase trace
    repeated back to back in time (simulating 1e7 phases in one piece takes
    most of an hour on a shared 2-core machine)."""
    import pandas as pd
    from _traces import speed_trace

    base = speed_trace(min(n_phases, SIMULATED_PHASES), chunk_size=chunk_size)
    copies = max(1, n_phases // len(base))
    if copies == 1:
        return base
    span = float(base["t_end"].max() - base["t_start"].min()) + 1.0
    n_requests = int(base["request_id"].max()) + 1
    return pd.concat(
        [
            base.assign(
                t_start=base["t_start"] + k * span,
                t_end=base["t_end"] + k * span,
                request_id=base["request_id"] + k * n_requests,
            )
            for k in range(copies)
        ],
        ignore_index=True,
    )


_PANDAS_CASE = r"""
import json, resource, sys, time, warnings
sys.path.insert(0, {here!r})
from scale import tiled_trace
from sklearn.pipeline import make_pipeline
from sklearn_beta import (BaselineBetaRegressor, IterativeBetaRegressor,
    PhaseExposureTransformer, estimate_betas_baseline)
warnings.simplefilter("ignore")
phases = tiled_trace({n}, chunk_size={chunk})
from contextlib import nullcontext
from sklearn_beta.fleet import reuse_freed_memory
est = {est!r}
usage = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
n_iter = 0
with reuse_freed_memory() if est.endswith("+reuse") else nullcontext():
    if est == "baseline":
        estimate_betas_baseline(phases, chunk_size={chunk})
    else:
        last = (BaselineBetaRegressor() if est == "pipeline-baseline"
                else IterativeBetaRegressor())
        model = make_pipeline(PhaseExposureTransformer(chunk_size={chunk}), last)
        model.fit(phases)
        n_iter = getattr(model[-1], "n_iter_", 0)
seconds = time.perf_counter() - start
end = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps(dict(
    case="pandas", phases={n}, estimator={est!r}, iterations=n_iter,
    seconds=seconds, user_s=end.ru_utime - usage.ru_utime,
    system_s=end.ru_stime - usage.ru_stime,
    minor_faults=end.ru_minflt - usage.ru_minflt,
    peak_rss_mb=end.ru_maxrss / 1024)))
"""


def run_pandas(n: int, estimator: str, chunk: int) -> dict:
    code = _PANDAS_CASE.format(here=str(HERE), n=n, est=estimator, chunk=chunk)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def instance_partition(index: int, chunk: int, size: int):
    """Phases of engine ``index``, simulated where the partition is computed."""
    sys.path.insert(0, str(HERE))
    from _traces import speed_trace

    phases = speed_trace(size, chunk_size=chunk, seed=index % N_SEEDS)
    return phases.assign(instance_id=index)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def _spill_totals(dask_worker) -> dict:
    """What a worker wrote to and read back from its spill directory."""
    metrics = getattr(dask_worker.data, "cumulative_metrics", {})
    return {
        "written_mb": metrics.get(("disk-write", "bytes"), 0.0) / 2**20,
        "read_mb": metrics.get(("disk-read", "bytes"), 0.0) / 2**20,
        "seconds": sum(v for (_, unit), v in metrics.items() if unit == "seconds"),
    }


def run_cluster(
    n: int,
    chunk: int,
    size: int = PHASES_PER_PARTITION,
    objective="step_count",
    memory_limit: str = "auto",
) -> dict:
    """Fit ``n`` phases on a 2-worker ``LocalCluster``.

    The phase partitions are not persisted: each is simulated (read from the
    disk cache of ``_traces.speed_trace``, filled here first so that the
    workers do not race to write it) where a task needs it, as
    ``dask.dataframe.read_parquet`` would read it. ``generate_s`` times one
    such pass; the fit makes three (instance check, ``time_resolution="auto"``,
    exposures). ``setup_s`` runs to the solver loop's start (exposures,
    timelines, starting point); each worker's resident set is read there
    (``worker_rss_setup_mb``, once the exposure table is released) and after
    every iteration (the largest in ``worker_rss_iter_mb``); ``worker_spill``
    says what each wrote to its spill directory and read back, and the
    seconds spent doing so (pickling and disk).
    """
    import dask.dataframe as dd
    from distributed import Client, LocalCluster
    from sklearn.pipeline import make_pipeline

    import sklearn_beta.distributed._dask_fit as dask_fit
    import sklearn_beta.estimators._fit as fit_module
    from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer

    sys.path.insert(0, str(HERE))
    from _traces import speed_trace

    n_parts = max(1, n // size)
    for seed in range(min(N_SEEDS, n_parts)):
        speed_trace(size, chunk_size=chunk, seed=seed)
    stamps, rss = [], []

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=memory_limit,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)

        def record(entry, unit=1.0):
            stamps.append(time.perf_counter())
            rss.append(client.run(_rss_mb))

        def solver_entry(*args, **kwargs):
            record(None)
            return solve_step_counts(*args, **kwargs)

        meta = instance_partition(0, chunk, 1000).iloc[:0]
        phases = dd.from_map(
            instance_partition, range(n_parts), args=(chunk, size), meta=meta
        )
        start = time.perf_counter()
        n_rows = int(phases.map_partitions(len).sum().compute())
        generated = time.perf_counter() - start
        model = make_pipeline(
            PhaseExposureTransformer(
                chunk_size=chunk, columns={"instance_id": "instance_id"}
            ),
            IterativeBetaRegressor(objective=objective, verbose=1),
        )
        original = fit_module.print_progress
        solve_step_counts = dask_fit.solve_step_counts
        fit_module.print_progress = record
        dask_fit.solve_step_counts = solver_entry
        try:
            start = time.perf_counter()
            model.fit(phases)
            seconds = time.perf_counter() - start
        finally:
            fit_module.print_progress = original
            dask_fit.solve_step_counts = solve_step_counts
        peaks = client.run(_peak_rss_mb)
        spilled = client.run(_spill_totals)
    # stamps[0]: the solver loop starts; the next one closes the starting
    # state and the first iteration, each later one an iteration.
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
    return dict(
        case="cluster",
        phases=n_rows,
        estimator=f"pipeline-iterative ({objective})",
        iterations=int(model[-1].n_iter_),
        seconds=seconds,
        generate_s=generated,
        setup_s=stamps[0] - start,
        per_iteration_s=(sum(steps) / len(steps)) if steps else float("nan"),
        worker_peak_rss_mb=sorted(peaks.values()),
        worker_rss_setup_mb=sorted(rss[0].values()),
        worker_rss_iter_mb=sorted(max(r[w] for r in rss[1:]) for w in rss[0]),
        memory_limit=memory_limit,
        worker_spill=list(spilled.values()),
        beta=model[-1].beta_.tolist(),
    )


def format_table(rows: list[dict], reference: dict | None = None) -> str:
    header = (
        f"{'case':<8} {'phases':>10} {'estimator':<32} {'iters':>5} "
        f"{'seconds':>8} {'per-iter':>8} {'user+sys':>9} {'peak RSS MB':>16}"
    )
    if reference:
        header += f" {'vs saved':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        cpu = row.get("user_s", float("nan")) + row.get("system_s", float("nan"))
        rss = row.get("peak_rss_mb")
        rss = (
            f"{rss:.0f}"
            if rss is not None
            else "/".join(f"{m:.0f}" for m in row["worker_peak_rss_mb"])
        )
        line = (
            f"{row['case']:<8} {row['phases']:>10} {row['estimator']:<32} "
            f"{row['iterations']:>5} {row['seconds']:>8.2f} "
            f"{row.get('per_iteration_s', float('nan')):>8.2f} {cpu:>9.2f} {rss:>16}"
        )
        if reference:
            old = reference.get(_key(row))
            line += (
                f" {row['seconds'] / old['seconds']:>8.2f}x" if old else f" {'-':>9}"
            )
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (case, est), group in _groups(rows).items():
        group = sorted(group, key=lambda r: r["phases"])
        ax.plot(
            [r["phases"] for r in group],
            [r["seconds"] for r in group],
            "o-",
            label=f"{case}: {est}",
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="phases",
        ylabel="fit time (s)",
        title="sklearn-beta fit time (2-core machine)",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _key(row: dict) -> tuple:
    return row["case"], row["phases"], row["estimator"]


def merged(rows: list[dict], path: Path) -> list[dict]:
    """The rows saved in ``path`` with those of this run in place of theirs."""
    saved = json.loads(path.read_text()) if path.exists() else []
    new = {_key(row): row for row in rows}
    kept = [row for row in saved if _key(row) not in new]
    return kept + rows


def _groups(rows):
    groups = {}
    for row in rows:
        groups.setdefault((row["case"], row["estimator"]), []).append(row)
    return groups


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pandas", type=int, nargs="*", default=[1_000_000, 10_000_000]
    )
    parser.add_argument("--estimators", nargs="+", default=list(PANDAS_ESTIMATORS))
    parser.add_argument("--cluster", type=int, nargs="*", default=[10_000_000])
    parser.add_argument(
        "--large", action="store_true", help="add 1e8 phases on the cluster (long)"
    )
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument(
        "--partition-phases",
        type=int,
        default=PHASES_PER_PARTITION,
        help="phases per cluster partition (one engine instance each)",
    )
    parser.add_argument(
        "--worker-memory",
        default="auto",
        help="memory_limit of each cluster worker (Dask spills to disk at 60 %%, "
        "pauses at 80 %%, restarts at 95 %%); 'auto': the machine's memory / 2",
    )
    parser.add_argument(
        "--save",
        type=Path,
        help="write the results as JSON, replacing the rows of the cases rerun",
    )
    parser.add_argument("--compare", type=Path, help="JSON saved by an earlier --save")
    parser.add_argument("--plot", type=Path, help="write the log-log plot (PNG)")
    args = parser.parse_args(argv)

    rows = []
    for n in args.pandas:
        for est in args.estimators:
            rows.append(run_pandas(n, est, args.chunk_size))
            print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    for n in args.cluster + ([100_000_000] if args.large else []):
        rows.append(
            run_cluster(
                n,
                args.chunk_size,
                args.partition_phases,
                memory_limit=args.worker_memory,
            )
        )
        print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    reference = None
    if args.compare:
        saved = json.loads(args.compare.read_text())
        reference = {_key(r): r for r in saved}
    print(format_table(rows, reference))
    if args.save:
        rows = merged(rows, args.save)
        args.save.write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
