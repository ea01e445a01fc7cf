"""Coverage with the workload held fixed: only the step noise is redrawn.

``benchmarks/interval_coverage.py`` redraws everything per seed: arrivals, lengths
and step noise. The intervals ``beta_ci_`` are conditional on the trace's
workload; this benchmark checks them against the spread of the betas when
only the per-step noise changes. It relies on ``simulate_trace`` drawing the
prompt and output lengths (two ``standard_normal`` calls) before any step
noise: the random state is reseeded just before the third call.

Usage::

    python benchmarks/coverage_fixed_workload.py --load heavy_long --workload 0
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
from accuracy import simulate
from interval_coverage import LOADS, transformer

from sklearn_beta import IterativeBetaRegressor


class NoiseReseeded(np.random.RandomState):
    """Workload draws from ``seed``, step noise from ``noise_seed``."""

    def __init__(self, seed: int, noise_seed: int):
        super().__init__(seed)
        self.normal_calls, self.noise_seed = 0, noise_seed

    def standard_normal(self, *args, **kwargs):
        self.normal_calls += 1
        if self.normal_calls == 3:
            self.seed(self.noise_seed)
        return super().standard_normal(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", default="heavy_long", choices=list(LOADS))
    parser.add_argument("--workload", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=40)
    args = parser.parse_args(argv)
    scenario, n_requests = LOADS[args.load]
    truth = np.asarray(scenario.beta)
    betas, ses, covered = [], [], []
    for seed in range(args.seeds):
        reseeded = NoiseReseeded(args.workload, 1000 + seed)
        phases = simulate(scenario, n_requests, reseeded).phases
        table = transformer(scenario).fit_transform(phases)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = IterativeBetaRegressor().fit(table)
        ci = model.beta_ci_
        betas.append(model.beta_)
        ses.append((ci[:, 1] - ci[:, 0]) / (2 * 1.96))
        covered.append((ci[:, 0] <= truth) & (truth <= ci[:, 1]))
    betas, ses = np.array(betas), np.array(ses)
    err = 100 * (betas.mean(0) / truth - 1)
    print(
        f"{args.load}, workload {args.workload}, {args.seeds} noise seeds: "
        f"coverage {np.round(np.mean(covered, 0), 3)}, "
        f"mean error % {np.round(err, 3)}, "
        f"sd/se {np.round(betas.std(0, ddof=1) / ses.mean(0), 2)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
