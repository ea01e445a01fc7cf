"""What the intervals and the edge test add to a fit on a Dask cluster.

Simulates a fleet of four engines, then fits it in memory and on a 2-worker
in-process ``LocalCluster`` (4 partitions, one engine each) three ways: the
default (intervals and ``edges="auto"``), ``edges="fit"``, and
``edges="fit", confidence_level=None``. Prints each fit's wall time, the
time of every reduction of the default Dask fit (``Partitions.map``, by
block function) and the largest relative difference of the Dask betas and
intervals from the pandas ones. Wall times on a shared machine are noisy:
compare the per-reduction times.

Usage::

    python benchmarks/dask_overhead.py                 # 1e6 requests, 2e6 phases
    python benchmarks/dask_overhead.py --requests 100000
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict

import dask.dataframe as dd
import distributed
import numpy as np
from sklearn.pipeline import make_pipeline

import sklearn_beta.distributed._dask_fit as dask_fit
from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.datasets import simulate_trace

SETTINGS = {
    "default": {},
    "edges=fit": {"edges": "fit"},
    "edges=fit, no intervals": {"edges": "fit", "confidence_level": None},
}


def model(**options):
    return make_pipeline(
        PhaseExposureTransformer(chunk_size=64), IterativeBetaRegressor(**options)
    )


def timed(fit, phases):
    start = time.perf_counter()
    fitted = fit.fit(phases)[-1]
    return fitted, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    args = parser.parse_args()
    fleet = simulate_trace(
        args.requests,
        beta=(5e-3, 2e-5, 1e-4),
        chunk_size=64,
        max_num_seqs=32,
        arrival_rate=40.0,
        noise=0.05,
        n_instances=4,
        random_state=0,
    )
    print(f"{len(fleet)} phases, 4 engines")
    warnings.simplefilter("ignore")
    local = {name: timed(model(**o), fleet) for name, o in SETTINGS.items()}
    spent = defaultdict(float)
    original = dask_fit.Partitions.map

    def recorded(self, fn, *a, **k):
        start = time.perf_counter()
        out = original(self, fn, *a, **k)
        spent[fn.__name__] += time.perf_counter() - start
        return out

    with (
        distributed.LocalCluster(
            n_workers=2, processes=False, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        ddf = dd.from_pandas(fleet.sort_values("instance_id"), npartitions=4).persist()
        remote = {}
        for name, options in SETTINGS.items():
            dask_fit.Partitions.map = recorded if name == "default" else original
            remote[name] = timed(model(**options), ddf)
        dask_fit.Partitions.map = original
    print(f"{'fit':<26}{'pandas s':>10}{'dask s':>10}")
    for name in SETTINGS:
        print(f"{name:<26}{local[name][1]:>10.2f}{remote[name][1]:>10.2f}")
    print("reductions of the default Dask fit (s):")
    for fn, seconds in spent.items():
        print(f"  {fn:<28}{seconds:>8.2f}")
    a, b = local["default"][0], remote["default"][0]
    print(
        f"max relative difference: betas {np.max(np.abs(b.beta_ / a.beta_ - 1)):.1e}, "
        f"intervals {np.max(np.abs(b.beta_ci_ / a.beta_ci_ - 1)):.1e}"
    )


if __name__ == "__main__":
    main()
