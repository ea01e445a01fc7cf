"""Accuracy benchmark: which estimator recovers the true betas, and where.

Simulates vLLM-style traces with known betas (``sklearn_beta.datasets.
simulate_trace``) in scenarios that span the regimes where the published
estimators fail (heavy load, large chunks, per-step noise, a token budget, long
prompts, several instances) and runs every estimator and correction mode on
each. For every (scenario, estimator) it prints the relative error of each
beta, the step-time error (mean ``|dt_est - dt_true| / dt_true`` over the
true steps, noise-free: the error a simulator calibrated with the estimate
makes per step) and the seconds the fit took.

The ``oracle`` row regresses the durations on the exact per-phase step and
token sums read off the simulator's steps: what a perfect feature
reconstruction would give, hence the floor that the noise sets.

Usage::

    python benchmarks/accuracy.py                      # full run, 20k requests
    python benchmarks/accuracy.py --quick              # 4k requests per scenario
    python benchmarks/accuracy.py --scenarios heavy_c1024,budget \\
        --estimators default,reference --out results.csv
    python benchmarks/accuracy.py --compare results.csv
    python benchmarks/accuracy.py --render benchmarks/accuracy_results.json

Timings are wall-clock on a shared machine: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    estimate_betas_baseline,
    estimate_betas_iterative,
)
from sklearn_beta.datasets import cut_window, simulate_trace
from sklearn_beta.exceptions import IdentifiabilityWarning
from sklearn_beta.metrics import coefficient_errors, step_time_error, what_if_error

# H100-like step costs: beta0 ~ 5-8 ms per step, beta1 ~ 2-5e-5 s per prefill
# token, beta2 ~ 0.5-2e-4 s per decode token.
LENGTHS = dict(prompt_tokens=(1024, 0.8), output_tokens=(200, 0.8))
#: A chunk size longer than any prompt drawn: the engine has no chunk cap.
NO_CHUNK_CAP = 10**6


@dataclass(frozen=True)
class Scenario:
    """One simulated trace: the simulator's arguments and a description."""

    name: str
    description: str
    beta: tuple[float, float, float]
    chunk_size: int
    arrival_rate: float
    max_num_seqs: int = 256
    token_budget: int | None = None
    noise: float = 0.0
    n_instances: int = 1
    lengths: dict = field(default_factory=lambda: dict(LENGTHS))
    #: None: the complete trace; "arrival" / "completion": the export of a
    #: window holding ``window_share`` of the requests, cut mid-trace
    #: (``sklearn_beta.datasets.cut_window``).
    window: str | None = None
    window_share: float = 0.4

    @property
    def chunk_to_overhead(self) -> float:
        """``beta1 * C / beta0``: a full chunk's cost in per-step overheads."""
        return self.beta[1] * self.chunk_size / self.beta[0]


def window_scenarios() -> list[Scenario]:
    """Complete traces whose load varies, and 40 % windows of each, both cuts.

    Heavy load here means ~130-250 running of 256 with the batch moving (the
    ``heavy_*`` scenarios above saturate at 256 after their ramp); the
    saturated one keeps 128 slots full, where beta0 and beta2 separate only
    through the noise-free variation of the batch.
    """
    bases = [
        (
            "light",
            "light load (~23 running), C=512",
            (6e-3, 3e-5, 1e-4),
            512,
            dict(arrival_rate=7.0),
        ),
        (
            "heavy",
            "heavy varying load (~140 running of 256), C=256",
            (6e-3, 2e-5, 1e-4),
            256,
            dict(arrival_rate=14.8),
        ),
        (
            "heavy_noisy",
            "heavy varying load, C=256, 5% step noise",
            (6e-3, 2e-5, 1e-4),
            256,
            dict(arrival_rate=14.8, noise=0.05),
        ),
        (
            "budget_noisy",
            "heavy varying load (~125 running), C=512, token "
            "budget 2048, 5% step noise",
            (6e-3, 3e-5, 1e-4),
            512,
            dict(arrival_rate=12.0, token_budget=2048, noise=0.05),
        ),
        (
            "fleet_noisy",
            "4 instances (~60 running each), C=512, 5% step noise",
            (6e-3, 3e-5, 1e-4),
            512,
            dict(arrival_rate=44.0, n_instances=4, noise=0.05),
        ),
        (
            "saturated_noisy",
            "saturated engine (128 of 128 running), C=256, 5% step noise",
            (6e-3, 2e-5, 1e-4),
            256,
            dict(arrival_rate=16.0, max_num_seqs=128, noise=0.05),
        ),
    ]
    out = []
    for name, description, beta, chunk, options in bases:
        for window in (None, "arrival", "completion"):
            label = "full" if window is None else f"{window} window"
            out.append(
                Scenario(
                    f"w_{name}" + ("" if window is None else f"_{window[:3]}"),
                    f"{description}; {label}",
                    beta,
                    chunk,
                    window=window,
                    **options,
                )
            )
    return out


SCENARIOS = {
    s.name: s
    for s in [
        Scenario(
            "light",
            "light load (~20 running), C=512",
            (6e-3, 3e-5, 1e-4),
            512,
            arrival_rate=7.0,
        ),
        Scenario(
            "light_noisy",
            "light load, C=512, 5% step noise",
            (6e-3, 3e-5, 1e-4),
            512,
            arrival_rate=7.0,
            noise=0.05,
        ),
        Scenario(
            "heavy_c256",
            "heavy load (~220 running), small chunk C=256",
            (6e-3, 2e-5, 1e-4),
            256,
            arrival_rate=16.0,
        ),
        Scenario(
            "heavy_c512",
            "heavy load, C=512",
            (5e-3, 2.5e-5, 8e-5),
            512,
            arrival_rate=17.5,
        ),
        Scenario(
            "heavy_c1024",
            "heavy load, large chunk C=1024",
            (6e-3, 2.34e-5, 1e-4),
            1024,
            arrival_rate=15.0,
        ),
        Scenario(
            "heavy_c1024_noisy",
            "heavy load, C=1024, 5% step noise",
            (6e-3, 2.34e-5, 1e-4),
            1024,
            arrival_rate=15.0,
            noise=0.05,
        ),
        Scenario(
            "budget",
            "heavy load, C=512, token budget 2048",
            (6e-3, 3e-5, 1e-4),
            512,
            arrival_rate=15.0,
            token_budget=2048,
        ),
        Scenario(
            "budget_noisy",
            "heavy load, C=512, token budget 2048, 5% step noise",
            (6e-3, 3e-5, 1e-4),
            512,
            arrival_rate=15.0,
            token_budget=2048,
            noise=0.05,
        ),
        Scenario(
            "budget_tight",
            "heavy load, C=512, tight token budget 1024 (~90% of steps capped)",
            (6e-3, 3e-5, 1e-4),
            512,
            arrival_rate=15.0,
            token_budget=1024,
        ),
        Scenario(
            "long_prompts",
            "heavy load, long prompts (~4k tokens), C=1024",
            (7e-3, 2.5e-5, 1.5e-4),
            1024,
            arrival_rate=6.0,
            lengths=dict(prompt_tokens=(4096, 0.6), output_tokens=(200, 0.8)),
        ),
        Scenario(
            "instances",
            "4 instances, moderate load each, C=512",
            (6e-3, 3e-5, 1e-4),
            512,
            arrival_rate=40.0,
            n_instances=4,
        ),
        # vLLM V1's default engine: a token budget and no chunk cap (a chunk
        # longer than any prompt). The default estimator is told the budget
        # only in its "+budget" row; without it the exposures have no cap.
        Scenario(
            "v1_budget_light_noisy",
            "vLLM V1 default, light load (~4 running), budget 2048, no chunk "
            "cap, prompts ~1200, 5% step noise",
            (8e-3, 2.5e-5, 6e-5),
            NO_CHUNK_CAP,
            arrival_rate=2.2,
            max_num_seqs=64,
            token_budget=2048,
            noise=0.05,
            lengths=dict(prompt_tokens=(1200, 0.45), output_tokens=(200, 0.6)),
        ),
        Scenario(
            "v1_budget_noisy",
            "vLLM V1 default, heavy load, budget 2048, no chunk cap, 5% step noise",
            (6e-3, 3e-5, 1e-4),
            NO_CHUNK_CAP,
            arrival_rate=15.0,
            token_budget=2048,
            noise=0.05,
        ),
    ]
    + window_scenarios()
}


@dataclass
class Trace:
    """A simulated trace with what the estimators and the metrics need."""

    scenario: Scenario
    phases: pd.DataFrame
    steps: pd.DataFrame  # every step of the continuous trace
    seconds: float
    window_steps: pd.DataFrame | None = None  # the steps inside the window

    @property
    def scored_steps(self) -> pd.DataFrame:
        """The steps a window's step-time error is measured on."""
        return self.steps if self.window_steps is None else self.window_steps

    @property
    def instance_col(self) -> str | None:
        return "instance_id" if self.scenario.n_instances > 1 else None


def simulate(scenario: Scenario, n_requests: int, seed) -> Trace:
    """The scenario's trace; ``seed`` is any ``random_state`` of ``simulate_trace``."""
    start = time.perf_counter()
    phases, steps = simulate_trace(
        n_requests,
        beta=scenario.beta,
        chunk_size=scenario.chunk_size,
        max_num_seqs=scenario.max_num_seqs,
        arrival_rate=scenario.arrival_rate,
        token_budget=scenario.token_budget,
        noise=scenario.noise,
        n_instances=scenario.n_instances,
        random_state=seed,
        return_steps=True,
        **scenario.lengths,
    )
    seconds = time.perf_counter() - start
    if scenario.window is None:
        return Trace(scenario, phases, steps, seconds)
    t0, t1 = window_bounds(phases, scenario.window, scenario.window_share)
    inside = (steps["t_start"] >= t0) & (steps["t_end"] <= t1)
    window = cut_window(phases, t0, t1, how=scenario.window)
    return Trace(scenario, window, steps, seconds, steps[inside])


def window_bounds(phases: pd.DataFrame, how: str, share: float) -> tuple:
    """``[t0, t1]`` centred on the trace, selecting ``share`` of the requests."""
    times = phases.groupby("request_id")
    per_request = times["t_start"].min() if how == "arrival" else times["t_end"].max()
    t0, t1 = per_request.quantile([0.5 - share / 2, 0.5 + share / 2])
    return float(t0), float(t1)


# --- Estimators -------------------------------------------------------------
#
# Each takes a trace and returns (beta, info); info holds n_iter / converged.


def exact_step_sums(trace: Trace) -> np.ndarray:
    """Per phase: its number of steps and the prefill / decode tokens they hold.

    Read off the simulator's step table; phases and steps are matched per
    instance on their (shared-clock) boundaries.
    """
    steps, phases = trace.steps, trace.phases
    inst_s = steps["instance_id"].to_numpy()
    inst_p = (
        phases["instance_id"].to_numpy()
        if "instance_id" in phases
        else np.zeros(len(phases), dtype=int)
    )
    span = 2.0 * max(steps["t_end"].max(), phases["t_end"].max()) + 1.0
    key_start = steps["t_start"].to_numpy() + inst_s * span
    key_end = steps["t_end"].to_numpy() + inst_s * span
    order = np.argsort(key_start, kind="stable")
    key_start, key_end = key_start[order], key_end[order]
    cum = np.vstack(
        [
            np.zeros((1, 3)),
            np.cumsum(
                np.column_stack(
                    [
                        np.ones(len(steps)),
                        steps["prefill_tokens"].to_numpy()[order],
                        steps["decode_tokens"].to_numpy()[order],
                    ]
                ),
                axis=0,
            ),
        ]
    )
    first = np.searchsorted(key_start, phases["t_start"].to_numpy() + inst_p * span)
    last = np.searchsorted(
        key_end, phases["t_end"].to_numpy() + inst_p * span, side="right"
    )
    return cum[last] - cum[first]


def oracle(trace: Trace):
    design = exact_step_sums(trace)
    duration = (trace.phases["t_end"] - trace.phases["t_start"]).to_numpy()
    scale = np.linalg.norm(design, axis=0)
    beta, _ = nnls(design / scale, duration)
    return beta / scale, {}


def baseline(mode: str) -> Callable:
    def fit(trace: Trace):
        result = estimate_betas_baseline(
            trace.phases,
            chunk_size=trace.scenario.chunk_size,
            correction_mode=mode,
            columns={"instance_id": trace.instance_col},
        )
        return result.beta, {}

    return fit


def reference_iterative(mode: str, **options) -> Callable:
    def fit(trace: Trace):
        result = estimate_betas_iterative(
            trace.phases,
            chunk_size=trace.scenario.chunk_size,
            prefill_correction_mode=mode,
            columns={"instance_id": trace.instance_col},
            **options,
        )
        return result.beta, dict(
            n_iter=result.n_outer_iters, converged=result.converged
        )

    return fit


def pipeline(use_budget: bool = False, **regressor_options) -> Callable:
    def fit(trace: Trace):
        budget = trace.scenario.token_budget if use_budget else None
        model = make_pipeline(
            PhaseExposureTransformer(
                chunk_size=trace.scenario.chunk_size,
                token_budget=budget,
                columns={"instance_id": trace.instance_col},
            ),
            IterativeBetaRegressor(**regressor_options),
        )
        with warnings.catch_warnings():
            # Recorded in the results (not_identified, converged) instead.
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", IdentifiabilityWarning)
            model.fit(trace.phases)
        reg = model[-1]
        return reg.beta_, dict(
            n_iter=reg.n_iter_,
            converged=reg.converged_,
            not_identified=",".join(reg.diagnostics_.get("not_identified", [])),
            n_context=reg.diagnostics_.get("edges", {}).get("n_context", 0),
        )

    return fit


@dataclass(frozen=True)
class Estimator:
    name: str
    fit: Callable
    group: str
    needs_budget: bool = False  # only meaningful on scenarios with a budget


def estimators() -> list[Estimator]:
    out = [Estimator("oracle", oracle, "oracle")]
    out += [
        Estimator(f"baseline[{m}]", baseline(m), "baseline")
        for m in ("end", "end_inside", "uniform", "none")
    ]
    out += [
        Estimator(f"reference[{m}]", reference_iterative(m), "reference")
        for m in ("beta_informed", "end", "end_inside", "uniform", "none")
    ]
    # The reference fixed point with the scale-free stopping rule, tight.
    out += [
        Estimator(
            "duration[beta_informed] rel 1e-8",
            pipeline(
                correction_mode="beta_informed",
                objective="duration",
                tol=1e-8,
                max_iter=200,
            ),
            "variant",
        ),
        # Damping stabilises the map where its Jacobian has an eigenvalue
        # below -1 (see accuracy_diagnostics.py), if the start has b0 > 0.
        Estimator(
            "duration[beta_informed] eta=0.5 rel 1e-8",
            pipeline(
                correction_mode="beta_informed",
                objective="duration",
                damping=0.5,
                tol=1e-8,
                max_iter=200,
            ),
            "variant",
        ),
    ]
    out += [
        Estimator(
            "step_count[end_inside] (default)",
            pipeline(),
            "default",
        ),
        Estimator(
            "step_count[end_inside]+budget (default)",
            pipeline(use_budget=True),
            "default",
            needs_budget=True,
        ),
    ]
    out += [
        Estimator(f"step_count[{m}]", pipeline(correction_mode=m), "variant")
        for m in ("beta_informed", "uniform", "none", "end")
    ]
    # The default before windows were handled: every phase in the objective.
    out += [
        Estimator("step_count edges=fit", pipeline(edges="fit"), "edges"),
        Estimator(
            "step_count+budget edges=fit",
            pipeline(use_budget=True, edges="fit"),
            "edges",
            needs_budget=True,
        ),
    ]
    return out


# --- Running and reporting --------------------------------------------------

RESULT_COLUMNS = [
    "scenario",
    "seed",
    "estimator",
    "group",
    "beta0_err",
    "beta1_err",
    "beta2_err",
    "step_time_err",
    "what_if_err",
    "seconds",
    "n_iter",
    "converged",
    "not_identified",
    "n_context",
]


def run(
    scenarios: list[Scenario],
    chosen: list[Estimator],
    n_requests: int,
    seeds: list[int],
    echo: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, traces = [], []
    for scenario, seed in [(sc, seed) for sc in scenarios for seed in seeds]:
        trace = simulate(scenario, n_requests, seed)
        traces.append(dict(describe(trace), seed=seed))
        echo(_describe_line(traces[-1]))
        for est in chosen:
            if est.needs_budget and scenario.token_budget is None:
                continue
            start = time.perf_counter()
            beta, info = est.fit(trace)
            seconds = time.perf_counter() - start
            err = coefficient_errors(scenario.beta, beta)
            rows.append(
                dict(
                    scenario=scenario.name,
                    seed=seed,
                    estimator=est.name,
                    group=est.group,
                    beta0_err=err[0],
                    beta1_err=err[1],
                    beta2_err=err[2],
                    step_time_err=step_time_error(
                        scenario.beta, beta, trace.scored_steps
                    ),
                    what_if_err=what_if_error(beta, scenario.beta),
                    seconds=seconds,
                    n_iter=info.get("n_iter", np.nan),
                    converged=info.get("converged", np.nan),
                    not_identified=info.get("not_identified", ""),
                    n_context=info.get("n_context", np.nan),
                )
            )
            echo(_result_line(rows[-1]))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), pd.DataFrame(traces)


def describe(trace: Trace) -> dict:
    s, steps = trace.scenario, trace.scored_steps
    return dict(
        scenario=s.name,
        description=s.description,
        beta=s.beta,
        chunk_size=s.chunk_size,
        chunk_to_overhead=round(s.chunk_to_overhead, 2),
        token_budget=s.token_budget,
        noise=s.noise,
        n_instances=s.n_instances,
        window=s.window,
        n_phases=len(trace.phases),
        n_steps=len(steps),
        mean_running=float(steps["n_running"].mean()),
        mean_decode_tokens=float(steps["decode_tokens"].mean()),
        mean_prefill_tokens=float(steps["prefill_tokens"].mean()),
        simulate_seconds=trace.seconds,
    )


def _describe_line(d: dict) -> str:
    return (
        f"\n## {d['scenario']}: {d['description']} | beta={d['beta']} "
        f"beta1*C/beta0={d['chunk_to_overhead']} | {d['n_phases']} phases, "
        f"{d['n_steps']} steps, {d['mean_running']:.0f} running, "
        f"T_pf {d['mean_prefill_tokens']:.0f} T_dec {d['mean_decode_tokens']:.0f} "
        f"/step | simulated in {d['simulate_seconds']:.1f}s"
    )


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%" if np.isfinite(x) else str(x)


def _result_line(r: dict) -> str:
    it = "" if not np.isfinite(r["n_iter"]) else f"  it={int(r['n_iter'])}"
    conv = (
        ""
        if r["converged"] is np.nan or r["converged"] != r["converged"]
        else ("" if r["converged"] else " (not converged)")
    )
    return (
        f"  {r['estimator']:<42} b0 {_pct(r['beta0_err']):>9} "
        f"b1 {_pct(r['beta1_err']):>9} b2 {_pct(r['beta2_err']):>9}  "
        f"step {100 * r['step_time_err']:7.3f}%  "
        f"what-if {100 * r['what_if_err']:7.3f}%  {r['seconds']:6.2f}s{it}{conv}"
    )


def markdown_table(results: pd.DataFrame) -> str:
    """The results as a Markdown table (errors in %)."""
    lines = [
        "| scenario | seed | estimator | beta0 | beta1 | beta2 | step time | seconds |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results.to_dict("records"):
        lines.append(
            f"| {r['scenario']} | {r.get('seed', '')} | {r['estimator']} | "
            f"{_pct(r['beta0_err'])} | "
            f"{_pct(r['beta1_err'])} | {_pct(r['beta2_err'])} | "
            f"{100 * r['step_time_err']:.3f}% | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def markdown_summary(results: pd.DataFrame, agg: str = "max") -> str:
    """Step-time error (%) of every estimator (rows) on every scenario.

    With several seeds, ``agg`` ("max" or "mean") combines them.
    """
    scenarios = list(dict.fromkeys(results["scenario"]))
    pivot = results.pivot_table(
        index="estimator", columns="scenario", values="step_time_err", aggfunc=agg
    )
    pivot = pivot.reindex(
        index=list(dict.fromkeys(results["estimator"])), columns=scenarios
    )
    lines = [
        "| estimator | " + " | ".join(scenarios) + " |",
        "|---|" + "---:|" * len(scenarios),
    ]
    for name, row in pivot.iterrows():
        cells = ["" if v != v else f"{100 * v:.2f}" for v in row]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_headline(results: pd.DataFrame) -> str:
    """The reference against the default, per scenario (the budget-aware
    default where the scenario has a budget)."""

    def pct(x):
        return f"{100 * x:+.1f}%" if abs(x) >= 1e-3 else f"{100 * x:+.2f}%"

    def row(r):
        errors = " / ".join(pct(r[f"beta{k}_err"]) for k in range(3))
        return f"{errors} | {100 * r['step_time_err']:.2f}%"

    lines = [
        "| scenario | reference: beta0 / beta1 / beta2 | step time | "
        "default: beta0 / beta1 / beta2 | step time | seconds |",
        "|---|---|---:|---|---:|---:|",
    ]
    if "seed" in results:
        results = results[results["seed"] == results["seed"].min()]
    for scenario, rows in results.groupby("scenario", sort=False):
        by_name = {r["estimator"]: r for r in rows.to_dict("records")}
        reference = by_name.get("reference[beta_informed]")
        default = by_name.get(
            "step_count[end_inside]+budget (default)",
            by_name.get("step_count[end_inside] (default)"),
        )
        if reference is None or default is None:
            continue
        lines.append(
            f"| {scenario} | {row(reference)} | {row(default)} | "
            f"{default['seconds']:.2f} |"
        )
    return "\n".join(lines)


def markdown_windows(results: pd.DataFrame) -> str:
    """Step-time and what-if error (%) of the published estimators and the
    default on the window scenarios and their complete traces (worst seed)."""
    names = [
        ("baseline[end]", "baseline"),
        ("reference[beta_informed]", "reference"),
        ("step_count edges=fit", "edges='fit'"),
        ("step_count+budget edges=fit", "edges='fit'+budget"),
        ("step_count[end_inside] (default)", "default"),
        ("step_count[end_inside]+budget (default)", "default+budget"),
    ]
    rows = results[results["scenario"].str.startswith("w_")]
    present = [(n, label) for n, label in names if n in set(rows["estimator"])]
    head = " | ".join(f"{label}: step / what-if" for _, label in present)
    lines = [f"| scenario | {head} |", "|---|" + "---:|" * len(present)]
    for scenario, group in rows.groupby("scenario", sort=False):
        worst = group.groupby("estimator")[["step_time_err", "what_if_err"]].max()
        flagged = group.groupby("estimator")["not_identified"].agg(
            lambda v: any(isinstance(x, str) and x for x in v)
        )
        cells = [
            f"{100 * worst.loc[n, 'step_time_err']:.2f} / "
            f"{100 * worst.loc[n, 'what_if_err']:.2f}"
            + (" (warns)" if flagged.get(n, False) else "")
            if n in worst.index
            else ""
            for n, _ in present
        ]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(results: pd.DataFrame, baseline_file: Path) -> pd.DataFrame:
    """Step-time error now against a saved run, per (scenario, estimator)."""
    before = read_results(baseline_file)
    keys = ["scenario", "estimator"] + (["seed"] if "seed" in before else [])
    merged = results.merge(
        before[keys + ["step_time_err", "seconds"]],
        on=keys,
        how="left",
        suffixes=("", "_before"),
    )
    merged["step_time_change"] = (
        merged["step_time_err"] - merged["step_time_err_before"]
    )
    return merged


def read_results(path: Path) -> pd.DataFrame:
    if path.suffix == ".json":
        return pd.DataFrame(json.loads(path.read_text())["results"])
    return pd.read_csv(path)


def write_results(path: Path, results: pd.DataFrame, traces: pd.DataFrame, args):
    if path.suffix == ".json":
        payload = dict(
            command=" ".join(sys.argv),
            n_requests=args.n_requests,
            seeds=[int(seed) for seed in str(args.seed).split(",")],
            scenarios=json.loads(traces.to_json(orient="records")),
            results=json.loads(results.to_json(orient="records")),
        )
        path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
    elif path.suffix == ".md":
        path.write_text(markdown_table(results) + "\n")
    else:
        results.to_csv(path, index=False)


def _pick(names: str | None, available: dict, what: str) -> list:
    if not names:
        return list(available.values())
    out = []
    for name in names.split(","):
        matches = [v for k, v in available.items() if k == name or name == "all"]
        if not matches:
            raise SystemExit(f"unknown {what} {name!r}; choose from {list(available)}")
        out += matches
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4k requests/scenario")
    parser.add_argument("--n-requests", type=int, default=None)
    parser.add_argument(
        "--seed",
        default="0",
        help="seed, or comma list of seeds: tables then show the worst seed",
    )
    parser.add_argument(
        "--scenarios", default=None, help=f"comma list of {list(SCENARIOS)}"
    )
    parser.add_argument(
        "--estimators",
        default=None,
        help="comma list of estimator groups: oracle, baseline, reference, "
        "variant, default (all by default)",
    )
    parser.add_argument("--out", type=Path, default=None, help=".csv, .json or .md")
    parser.add_argument("--compare", type=Path, default=None, help="saved run")
    parser.add_argument("--markdown", action="store_true", help="print md tables")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="print the md tables of a saved run (.csv/.json) and exit",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        saved = read_results(args.render)
        tables = [markdown_headline(saved), markdown_summary(saved)]
        if "what_if_err" in saved:
            tables.append(markdown_windows(saved))
        print("\n\n".join(tables + [markdown_table(saved)]))
        return 0
    if args.n_requests is None:
        args.n_requests = 4000 if args.quick else 20000

    scenarios = _pick(args.scenarios, SCENARIOS, "scenario")
    chosen = estimators()
    if args.estimators:
        groups = set(args.estimators.split(","))
        chosen = [e for e in chosen if e.group in groups or e.name in groups]
    print(
        f"# accuracy benchmark: {len(scenarios)} scenarios x {len(chosen)} "
        f"estimators, {args.n_requests} requests each, seed(s) {args.seed}"
    )
    seeds = [int(seed) for seed in str(args.seed).split(",")]
    results, traces = run(scenarios, chosen, args.n_requests, seeds)

    worst = " (worst seed)" if len(seeds) > 1 else ""
    print(f"\n# Summary: step-time error (%){worst}")
    pivot = results.pivot_table(
        index="estimator", columns="scenario", values="step_time_err", aggfunc="max"
    )
    pivot = pivot.reindex(
        index=list(dict.fromkeys(results["estimator"])),
        columns=[s.name for s in scenarios],
    )
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print((100 * pivot).round(3).to_string())
    if args.markdown:
        tables = [
            markdown_headline(results),
            markdown_summary(results),
            markdown_windows(results),
        ]
        print("\n" + "\n\n".join(tables + [markdown_table(results)]))
    if args.compare is not None:
        merged = compare(results, args.compare)
        print(f"\n# Step-time error against {args.compare} (percentage points)")
        for r in merged.to_dict("records"):
            before = r["step_time_err_before"]
            if before != before:
                continue
            print(
                f"  {r['scenario']:<20} {r['estimator']:<42} "
                f"{100 * before:7.3f}% -> {100 * r['step_time_err']:7.3f}% "
                f"({100 * r['step_time_change']:+.3f})"
            )
    if args.out is not None:
        write_results(args.out, results, traces, args)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
