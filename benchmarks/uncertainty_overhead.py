"""What the confidence intervals (on by default) add to a fit's time.

Fits both regressors on the exposure table of ``_traces.speed_trace`` (a
heavily loaded simulated engine) with ``confidence_level=None`` and with the
default, alternating the two, and prints the best CPU time
(``time.process_time``) of each. On a shared machine the difference of two
such times is noisy, so it also prints the CPU time spent inside the
intervals themselves (``sandwich_intervals``, timed around each call) as a
share of the fit with intervals: the overhead proper.

Usage::

    python benchmarks/uncertainty_overhead.py                  # 1e5 and 1e6 phases
    python benchmarks/uncertainty_overhead.py --sizes 100000 --repeats 7
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import partial

from _traces import speed_trace

import sklearn_beta.estimators._base as base
from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)

CHUNK = 256
_spent: list[float] = []


def _timed(function, *args, **kwargs):
    start = time.process_time()
    out = function(*args, **kwargs)
    _spent.append(time.process_time() - start)
    return out


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure(n_phases: int, repeats: int) -> list[dict]:
    phases = speed_trace(n_phases, chunk_size=CHUNK)
    transformer = PhaseExposureTransformer(chunk_size=CHUNK)
    table = transformer.fit_transform(phases)
    transform = best_time(partial(transformer.fit_transform, phases), 2)
    rows = []
    for regressor in (BaselineBetaRegressor, IterativeBetaRegressor):
        times = {None: float("inf"), 0.95: float("inf")}
        for _ in range(repeats):
            for level in times:
                fit = partial(regressor(confidence_level=level).fit, table)
                times[level] = min(times[level], best_time(fit, 1))
        off, on = times[None], times[0.95]
        rows.append(
            dict(
                phases=n_phases,
                estimator=regressor.__name__,
                transform=transform,
                off=off,
                on=on,
                intervals=min(_spent),
            )
        )
        _spent.clear()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    base.sandwich_intervals = partial(_timed, base.sandwich_intervals)
    print(
        "| phases | estimator | transform s | fit s, intervals off | fit s, on | "
        "intervals s | share of the fit | share of transform + fit |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for r in measure(n, args.repeats):
            print(
                f"| {r['phases']:,} | {r['estimator']} | {r['transform']:.3f} | "
                f"{r['off']:.3f} | {r['on']:.3f} | {r['intervals']:.4f} | "
                f"{100 * r['intervals'] / r['on']:.1f}% | "
                f"{100 * r['intervals'] / (r['on'] + r['transform']):.1f}% |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
