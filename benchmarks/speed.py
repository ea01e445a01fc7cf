"""Speed and memory of the estimators from 1e3 to 1e6 phases.

Usage::

    python benchmarks/speed.py                      # full table, 1e3..1e6 phases
    python benchmarks/speed.py --sizes 1000 100000  # selected sizes
    python benchmarks/speed.py --save benchmarks/speed_baseline.json
    python benchmarks/speed.py --compare benchmarks/speed_baseline.json
    python benchmarks/speed.py --sizes 100000 --estimators baseline --repeat 20
    python benchmarks/speed.py --sizes 1000000 --estimators pipeline-iterative \
        --step-model published attention all          # step models' cost

Each case runs in a fresh process: timed (the best of ``--repeat`` runs, wall
and CPU seconds), then once under ``tracemalloc`` for the peak memory the fit
allocates (the trace itself excluded). The iterative estimator runs with its
scikit-learn defaults and the table says how many iterations that took, since
its cost is linear in them. ``baseline`` is :func:`estimate_betas_baseline`,
the published function; ``pipeline-baseline`` the scikit-learn pipeline of
:class:`PhaseExposureTransformer` and :class:`BaselineBetaRegressor`. On a
machine shared with other work, the CPU seconds of the best run are the
steadier figure (BLAS threads that spin count there too).

``--step-model`` fits the pipelines (``pipeline-*``) under other step models
of the same trace: ``attention`` (five features), ``all`` (the six step
features) or ``published``; the functional API fits the published model
only. The row's estimator is suffixed with the model (``[attention]``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ESTIMATORS = ("baseline", "iterative", "pipeline-iterative", "pipeline-baseline")

_CASE = r"""
import json, sys, time, tracemalloc, warnings
sys.path.insert(0, {here!r})
from _traces import speed_trace
from sklearn.pipeline import make_pipeline
from sklearn_beta import (estimate_betas_baseline, estimate_betas_iterative,
    BaselineBetaRegressor, IterativeBetaRegressor, PhaseExposureTransformer)
from sklearn_beta.core._step_features import STEP_FEATURES
warnings.simplefilter("ignore")
phases = speed_trace({n}, chunk_size={chunk})
step_model = {step_model!r}
if step_model == "all":
    step_model = list(STEP_FEATURES)

def run():
    if {est!r} == "baseline":
        estimate_betas_baseline(phases, chunk_size={chunk})
        return 0
    if {est!r} == "iterative":
        r = estimate_betas_iterative(phases, chunk_size={chunk})
        return r.n_outer_iters
    last = (BaselineBetaRegressor() if {est!r} == "pipeline-baseline"
            else IterativeBetaRegressor())
    model = make_pipeline(PhaseExposureTransformer(chunk_size={chunk},
                                                   step_model=step_model),
                          last).fit(phases)
    return getattr(model[-1], "n_iter_", 0)

seconds = cpu_seconds = float("inf")
for _ in range({repeat}):
    start, cpu = time.perf_counter(), time.process_time()
    n_iter = run()
    seconds = min(seconds, time.perf_counter() - start)
    cpu_seconds = min(cpu_seconds, time.process_time() - cpu)
tracemalloc.start()
run()
peak = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps(dict(phases={n}, estimator={label!r}, iterations=n_iter,
                      seconds=seconds, cpu_seconds=cpu_seconds, peak_mb=peak,
                      repeat={repeat})))
"""


def run_case(
    n: int, estimator: str, chunk: int, repeat: int = 1, step_model="published"
) -> dict:
    if step_model != "published" and not estimator.startswith("pipeline-"):
        raise SystemExit(
            f"--step-model {step_model}: the functional {estimator!r} fits the "
            "published model only; use the pipeline-* estimators."
        )
    label = estimator if step_model == "published" else f"{estimator}[{step_model}]"
    code = _CASE.format(
        here=str(HERE),
        n=n,
        est=estimator,
        chunk=chunk,
        repeat=repeat,
        step_model=step_model,
        label=label,
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict], reference: dict | None = None) -> str:
    header = (
        f"{'phases':>9} {'estimator':<31} {'iters':>5} {'seconds':>9} "
        f"{'cpu s':>9} {'peak MB':>9}"
    )
    if reference:
        header += f" {'vs saved':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        line = (
            f"{row['phases']:>9} {row['estimator']:<31} {row['iterations']:>5} "
            f"{row['seconds']:>9.3f} {row.get('cpu_seconds', float('nan')):>9.3f} "
            f"{row['peak_mb']:>9.1f}"
        )
        if reference:
            old = reference.get((row["phases"], row["estimator"]))
            line += (
                f" {row['seconds'] / old['seconds']:>8.2f}x" if old else f" {'-':>9}"
            )
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000]
    )
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument(
        "--repeat", type=int, default=1, help="time the best of this many runs"
    )
    parser.add_argument(
        "--step-model",
        nargs="+",
        default=["published"],
        choices=["published", "attention", "all"],
        help="step models of the pipelines (all: the six step features)",
    )
    parser.add_argument("--save", type=Path, help="write the results as JSON")
    parser.add_argument("--compare", type=Path, help="JSON saved by an earlier --save")
    args = parser.parse_args(argv)

    rows = []
    for n in args.sizes:
        for est in args.estimators:
            for model in args.step_model:
                if model != "published" and not est.startswith("pipeline-"):
                    continue
                rows.append(run_case(n, est, args.chunk_size, args.repeat, model))
                print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    reference = None
    if args.compare:
        saved = json.loads(args.compare.read_text())
        reference = {(r["phases"], r["estimator"]): r for r in saved}
    print(format_table(rows, reference))
    if args.save:
        args.save.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
