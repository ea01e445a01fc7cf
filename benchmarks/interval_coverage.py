"""Coverage benchmark: do the 95 % intervals ``beta_ci_`` cover the true betas?

Simulates traces with known betas and per-step noise at light and heavy load
(the ``light`` and ``heavy_c1024`` scenarios of ``benchmarks/accuracy.py``,
with ``noise=0.05``, and a fleet of 4 instances), fits the default pipeline
``PhaseExposureTransformer -> IterativeBetaRegressor`` and the baseline on
each seed, and counts how often each beta's interval holds the truth.

The simulator's noise factor ``exp(noise Z - noise^2 / 2)`` has mean one:
its betas are the mean step-time coefficients a least-squares fit
estimates, and coverage is counted against them.

The ``schedule`` load fits :class:`ScheduleBetaRegressor` on client-side
saturated traces (the engine of docs/schedule.md's accuracy table: chunk
256, budget 512, 64 running, 40 requests/s offered, 1500 requests, 2 % step
noise, a 30 ms delay before the queue and tokens seen 10 ms late) and
counts the coverage of its ``beta_ci_`` (the bisquare fit's covariance at
the modelled step noise; ``benchmarks/interval_coverage_schedule_hc3.json``
holds the HC3 sandwich's run before it), and the root mean square error of
the first-token offset (which holds the delay before the queue).

With ``--bootstrap N`` it also runs the block bootstrap
(:func:`sklearn_beta.block_bootstrap_ci`, N resamples) on the first
``--bootstrap-seeds`` seeds and compares its widths with the sandwich's.

Usage::

    python benchmarks/interval_coverage.py            # 40 seeds, ~2-3 min
    python benchmarks/interval_coverage.py --seeds 10 --out cov.json
    python benchmarks/interval_coverage.py \
        --compare benchmarks/interval_coverage_results.json
    python benchmarks/interval_coverage.py --bootstrap 200 --bootstrap-seeds 5
    python benchmarks/interval_coverage.py --loads schedule --out sched.json \
        --compare benchmarks/interval_coverage_schedule_hc3.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from accuracy import SCENARIOS
from accuracy import simulate as simulate_scenario
from sklearn.base import clone

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    ScheduleBetaRegressor,
    block_bootstrap_ci,
)
from sklearn_beta.datasets import simulate_trace

NOISE = 0.05
#: Scenario -> (accuracy.py scenario, requests per trace). Traces are small
#: so that 40 seeds of each run in a few minutes.
LOADS = {
    "light": (replace(SCENARIOS["light"], noise=NOISE), 1000),
    "heavy": (replace(SCENARIOS["heavy_c1024"], noise=NOISE), 6000),
    "fleet": (replace(SCENARIOS["instances"], noise=NOISE), 2000),
    # A 6000-request heavy trace holds only ~7 independent stretches, so its
    # interval widths scatter; the same load over 20000 requests has ~25.
    "heavy_long": (replace(SCENARIOS["heavy_c1024"], noise=NOISE), 20000),
}
#: The schedule fit's load: engine, truth, trace and overheads (s).
SCHEDULE = dict(
    beta=(6e-3, 3e-5, 1.2e-4),
    engine=dict(chunk_size=256, token_budget=512, max_num_seqs=64),
    requests=1500,
    rate=40.0,
    noise=0.02,
    delay=0.03,
    offset=0.01,
)
ESTIMATORS = {
    "iterative (default)": IterativeBetaRegressor(),
    "baseline": BaselineBetaRegressor(),
}
NAMES = ("beta0", "beta1", "beta2")


def simulate(load: str, seed: int) -> tuple[pd.DataFrame, object]:
    scenario, n_requests = LOADS[load]
    return simulate_scenario(scenario, n_requests, seed).phases, scenario


def transformer(scenario) -> PhaseExposureTransformer:
    # A fleet's instance_id column is read by the default columns.
    return PhaseExposureTransformer(chunk_size=scenario.chunk_size)


def run_schedule_seed(seed: int, level: float) -> list[dict]:
    """One client-side saturated trace, fitted by ScheduleBetaRegressor."""
    cfg = SCHEDULE
    phases = simulate_trace(
        cfg["requests"],
        beta=cfg["beta"],
        arrival_rate=cfg["rate"],
        prompt_tokens=(300, 0.5),
        output_tokens=(100, 0.5),
        noise=cfg["noise"],
        request_delay=cfg["delay"],
        first_token_offset=cfg["offset"],
        last_token_offset=cfg["offset"],
        view="client",
        random_state=seed,
        **cfg["engine"],
    )
    model = ScheduleBetaRegressor(**cfg["engine"], confidence_level=level)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(phases)
    seconds = time.perf_counter() - start
    truth = np.asarray(cfg["beta"])
    row = _row(
        "schedule", seed, "schedule", "sandwich", model.beta_, model.beta_ci_, truth
    )
    # client-side: the first-token total holds the delay before the queue
    alpha, total = model.alpha_["first_token"], cfg["delay"] + cfg["offset"]
    row["alpha_err"] = float(alpha / total - 1.0)
    return [row | dict(seconds=seconds, misfit=model.schedule_misfit_)]


def run_seed(load: str, seed: int, level: float, n_boot: int) -> list[dict]:
    if load == "schedule":
        return run_schedule_seed(seed, level)
    phases, scenario = simulate(load, seed)
    table = transformer(scenario).fit_transform(phases)
    truth = np.asarray(scenario.beta)
    rows = []
    for name, template in ESTIMATORS.items():
        model = clone(template).set_params(confidence_level=level)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(table)
        seconds = time.perf_counter() - start
        rows.append(
            _row(load, seed, name, "sandwich", model.beta_, model.beta_ci_, truth)
            | dict(seconds=seconds)
        )
        if n_boot:
            start = time.perf_counter()
            ci = block_bootstrap_ci(
                model,
                table,
                n_resamples=n_boot,
                confidence_level=level,
                random_state=seed,
            )
            rows.append(
                _row(load, seed, name, "bootstrap", model.beta_, ci, truth)
                | dict(seconds=time.perf_counter() - start)
            )
    return rows


def _row(load, seed, estimator, method, beta, ci, truth) -> dict:
    row = dict(load=load, seed=seed, estimator=estimator, method=method)
    for k, name in enumerate(NAMES):
        row[f"{name}_err"] = float(beta[k] / truth[k] - 1.0)
        row[f"{name}_width"] = float((ci[k, 1] - ci[k, 0]) / truth[k])
    return row | {
        f"{name}_covered": bool(ci[k, 0] <= truth[k] <= ci[k, 1])
        for k, name in enumerate(NAMES)
    }


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Coverage (fraction of seeds), median relative width, mean error and
    spread per group."""
    groups = results.groupby(["load", "estimator", "method"], sort=False)
    out = groups.size().rename("seeds").to_frame()
    for name in NAMES:
        out[f"{name} cov"] = groups[f"{name}_covered"].mean()
    for name in NAMES:
        out[f"{name} width%"] = 100 * groups[f"{name}_width"].median()
    for name in NAMES:
        out[f"{name} bias%"] = 100 * groups[f"{name}_err"].mean()
    # Spread of the estimates across seeds over the standard error the
    # intervals imply (half-width / 1.96): 1 for a calibrated width, below 1
    # where the Student-t quantile of few time blocks widens them.
    for name in NAMES:
        implied = groups[f"{name}_width"].mean() / (2 * 1.96)
        out[f"{name} sd/se"] = groups[f"{name}_err"].std() / implied
    if "alpha_err" in results:  # the schedule fit's first-token offset
        out["alpha rmse%"] = 100 * groups["alpha_err"].apply(
            lambda e: float(np.sqrt(np.mean(e**2)))
        )
    return out.reset_index()


def markdown(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    lines = [head, rule]
    for row in table.itertuples(index=False):
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first..first+seeds-1"
    )
    parser.add_argument("--loads", default="light,heavy,fleet")
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--bootstrap", type=int, default=0, help="resamples")
    parser.add_argument("--bootstrap-seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument("--compare", type=Path, default=None, help="saved JSON")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    rows = []
    start = time.perf_counter()
    for load in args.loads.split(","):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            n_boot = (
                args.bootstrap if seed - args.first_seed < args.bootstrap_seeds else 0
            )
            rows += run_seed(load, seed, args.level, n_boot)
        print(f"{load}: {args.seeds} seeds done", file=sys.stderr, flush=True)
    results = pd.DataFrame(rows)
    table = summary(results)
    print(
        f"# coverage of {args.level:.0%} intervals, noise={NOISE}, "
        f"{time.perf_counter() - start:.0f}s"
    )
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    if args.markdown:
        print("\n" + markdown(table))
    if args.compare is not None:
        before = summary(pd.DataFrame(json.loads(args.compare.read_text())["results"]))
        keys = ["load", "estimator", "method"]
        merged = table.merge(before, on=keys, suffixes=("", " before"))
        print(f"\n# coverage against {args.compare}")
        for r in merged.to_dict("records"):
            changes = "  ".join(
                f"{n} {r[f'{n} cov before']:.3f}->{r[f'{n} cov']:.3f}" for n in NAMES
            )
            print(f"  {r['load']:<6} {r['estimator']:<20} {r['method']:<9} {changes}")
    if args.out is not None:
        payload = dict(
            command=" ".join(["python benchmarks/interval_coverage.py", *sys.argv[1:]]),
            noise=NOISE,
            level=args.level,
            loads={k: dict(requests=n) for k, (_, n) in LOADS.items()}
            | {"schedule": SCHEDULE},
            summary=json.loads(table.to_json(orient="records")),
            results=rows,
        )
        args.out.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
