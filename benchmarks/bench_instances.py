"""Does per-instance parallelism (joblib) pay off for fleet traces?

The grid is one flat array over all instances (zero-length segments between
them), so building exposures is a handful of vectorised passes whatever the
number of instances. This compares, on the same fleet trace:

* flat     -- one PhaseExposureTransformer.transform over the whole fleet;
* serial   -- one transform per instance, concatenated;
* joblib   -- the per-instance transforms in joblib.Parallel(n_jobs).

and the same for a full IterativeBetaRegressor fit (which cannot be split per
instance: the NNLS couples all instances, so only its exposure work could be).

Run:  PYTHONPATH=. python benchmarks/bench_instances.py [n_requests] [n_instances]
Timings are wall-clock medians of 3 runs on a shared machine: noisy.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

sys.path.insert(0, "tests")
from trace_factory import make_trace  # noqa: E402

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer  # noqa: E402


def median_time(func, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(n_requests=100_000, n_instances=64, n_jobs=2):
    phases = make_trace(n_requests, n_instances=n_instances, arrival_rate=20.0)
    transformer = PhaseExposureTransformer(columns={"instance_id": "instance_id"}).fit(
        phases
    )
    parts = [part for _, part in phases.groupby("instance_id")]

    def serial():
        return pd.concat([transformer.transform(p) for p in parts])

    def parallel():
        out = Parallel(n_jobs=n_jobs)(delayed(transformer.transform)(p) for p in parts)
        return pd.concat(out)

    table = transformer.transform(phases)
    rows = {
        "flat transform": median_time(lambda: transformer.transform(phases)),
        "per-instance serial": median_time(serial),
        f"per-instance joblib n_jobs={n_jobs}": median_time(parallel),
        "iterative fit (flat)": median_time(
            lambda: IterativeBetaRegressor(damping=0.5, max_iter=10).fit(table), 1
        ),
    }
    print(f"{len(phases)} phases, {n_instances} instances")
    for name, seconds in rows.items():
        print(f"  {name:<32s} {seconds:8.3f} s")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*args)
