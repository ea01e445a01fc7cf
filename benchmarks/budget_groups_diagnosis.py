"""Why do step-model fits of vLLM V1's default engine scatter at moderate load?

Usage::

    python benchmarks/budget_groups_diagnosis.py      # 10 seeds at 10/s, ~3 min
    python benchmarks/budget_groups_diagnosis.py --rate 14 --seeds 5 --save d.json

Simulated traces of a budget-bound engine (``--engine budget`` of
``benchmarks/step_model_accuracy.py``: a 2048-token budget, no chunk cap,
attention truth, 2 % step noise) at ``--rate`` requests/s. Per seed:

* the prompts' last-step masses of each segment
  (:func:`~sklearn_beta.core._budget.group_last_steps`) against the
  simulator's steps: placed on the group's mean budget left (the
  transformer's exposures) and on the chunk grid of the step-count state's
  density at the engine's betas (the fit's), with the steps misplaced and
  the share of the prompt tokens and attention misplaced;
* the default step-count fit; the same without counting the prompts that
  share a group (``sharing uncounted``, the fit before they were), with
  the simulator's exact masses (``oracle masses``) and with every prompt
  counted by its true steps (``true counts``); a fit of every segment's
  step count with the exact masses (``segment counts``), the same with the
  counts read off the default fit's density, rounded, and its masses
  (``rounded segments``, a second stage the trace allows); and the
  regression of the engine's own steps (``steps``, the reference of what
  the trace holds).

Printed: each fit's largest error and standard deviation over the seeds, %.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
from scipy.optimize import least_squares
from step_model_accuracy import MODELS, step_bound

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.core import _feature_fixed_point, _step_count
from sklearn_beta.core._budget import group_full_pressures, group_last_steps
from sklearn_beta.core._grid import cumulative
from sklearn_beta.core._schema import read_timeline, request_prompts_of
from sklearn_beta.datasets import simulate_trace

FEATURES, BETA = MODELS["attention"][0], np.asarray(MODELS["attention"][1])
BUDGET = 2048


def simulate(n_requests: int, rate: float, seed: int, noise: float):
    return simulate_trace(
        n_requests,
        beta=BETA,
        step_model=list(FEATURES),
        chunk_size=BUDGET,
        token_budget=BUDGET,
        max_num_seqs=256,
        arrival_rate=rate,
        prompt_tokens=(1024, 0.8),
        output_tokens=(200, 0.8),
        noise=noise,
        random_state=seed,
        return_steps=True,
    )


def _transformer():
    return PhaseExposureTransformer(
        BUDGET, token_budget=BUDGET, step_model=list(FEATURES)
    )


def segment_truth(timeline, prompt, phases, steps):
    """The engine's steps on each segment and the masses their last steps
    take back from the full steps: (steps, (tokens, attention, served))."""
    grid = timeline.trace_grid.grid + phases["t_start"].min()
    n_seg = timeline.trace_grid.n_segments
    segment = np.searchsorted(grid, steps["t_start"].to_numpy() + 1e-9, "right") - 1
    inside = (segment >= 0) & (segment < n_seg)
    segment = segment[inside]

    def per_segment(values=None):
        weights = None if values is None else values.to_numpy()[inside]
        return np.bincount(segment, weights=weights, minlength=n_seg)

    count = per_segment().astype(np.float64)
    attention, _ = group_full_pressures(timeline, prompt)
    tokens = count * timeline.p_pf_full - per_segment(steps["prefill_tokens"])
    attention = count * attention - per_segment(steps["prefill_attention"])
    return count, (tokens, attention, np.zeros(n_seg))


def true_counts(phases, steps) -> np.ndarray:
    start = steps["t_start"].to_numpy()
    end = np.searchsorted(start, phases["t_end"].to_numpy() - 1e-9)
    return end - np.searchsorted(start, phases["t_start"].to_numpy() - 1e-9)


def count_problem(timeline, prompt):
    durations = _feature_fixed_point.FeatureDurations(
        timeline, prompt, FEATURES, "end_inside"
    )
    return _feature_fixed_point.FeatureCounts(durations, None)


def placement_errors(timeline, prompt, count, exact) -> dict:
    """Segments and shares of the prompt tokens and attention that the two
    placements of the last steps put elsewhere than the engine."""
    counts = count_problem(timeline, prompt)
    for _ in range(3):
        state = counts.state(BETA)
    tokens = np.sum(count * timeline.p_pf_full - exact[0])
    attention = np.sum(count * group_full_pressures(timeline, prompt)[0] - exact[1])
    out = {}
    for name, steps in (("mean_left", None), ("density", state.n)):
        masses = group_last_steps(timeline, prompt, steps)
        off = np.abs(masses[0] - exact[0])
        out[name] = {
            "segments": int(np.sum(off > 1e-6)),
            "of_segments": int(np.sum(count > 0)),
            "tokens": float(off.sum() / tokens),
            "attention": float(np.abs(masses[1] - exact[1]).sum() / attention),
        }
    return out


def fit(phases) -> np.ndarray:
    table = _transformer().fit_transform(phases)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        regressor = IterativeBetaRegressor(confidence_level=None).fit(table)
    return regressor.beta_ / BETA - 1.0


def segment_fit(timeline, prompt, count, exact) -> np.ndarray:
    """Every segment's steps fitted to the engine's, ``1 / n`` weights."""
    counts = count_problem(timeline, prompt)
    counts.problem.p_context = counts.problem._context_pressure(cumulative(count))
    counts.masses = [None, exact[0], exact[1], None, None]
    held = count > 0
    root_w = 1.0 / np.sqrt(count[held])

    def residual(scale):
        return (counts._counts(scale * BETA)[0][held] - count[held]) * root_w

    return least_squares(residual, np.ones(BETA.shape[0]), xtol=1e-12).x - 1.0


def rounded_segment_fit(timeline, prompt, start, count) -> tuple[np.ndarray, int]:
    """The same with each segment's steps read off the step-count state's
    density at the fit's betas ``start``, rounded, where it is within a
    quarter step of a whole number (and a phase covers the segment), and
    the fit's own masses: a second stage the trace allows. Returns the
    errors and the segments whose rounded count is not the engine's."""
    counts = count_problem(timeline, prompt)
    scale = 1.0 + start
    for _ in range(3):
        counts.state(scale * BETA)
    density = counts._counts(scale * BETA)[0]
    tg = timeline.trace_grid
    covered = np.zeros(tg.n_segments + 1)
    np.add.at(covered, tg.start_idx, 1.0)
    np.add.at(covered, tg.end_idx, -1.0)
    whole = np.rint(density)
    held = (np.cumsum(covered)[:-1] > 0) & (np.abs(density - whole) < 0.25)
    held &= whole >= 1
    root_w = 1.0 / np.sqrt(whole[held])

    def residual(x):
        return (counts._counts(x * BETA)[0][held] - whole[held]) * root_w

    fitted = least_squares(residual, scale, xtol=1e-12).x - 1.0
    return fitted, int(np.sum(whole[held] != count[held]))


def run_seed(n_requests, rate, seed, noise) -> dict:
    phases, steps = simulate(n_requests, rate, seed, noise)
    table = _transformer().fit_transform(phases).to_numpy()
    timeline, prompt = read_timeline(table), request_prompts_of(table)
    count, exact = segment_truth(timeline, prompt, phases, steps)
    errors = {"default": fit(phases)}
    # before: the prompts sharing a group left out of the step counts
    with mock.patch.object(
        _feature_fixed_point.FeatureCounts,
        "_step_counts",
        lambda self, n: self.timeline.n_steps,
    ):
        errors["sharing uncounted"] = fit(phases)
    with mock.patch.object(
        _feature_fixed_point, "group_last_steps", lambda *a, **k: exact
    ):
        errors["oracle masses"] = fit(phases)
        # every phase counted, with the engine's steps in its window
        every = mock.Mock(side_effect=lambda tl: np.ones(tl.n_phases, dtype=bool))
        with (
            mock.patch.object(_feature_fixed_point, "counted_phases", every),
            mock.patch.object(_step_count, "counted_phases", every),
        ):
            errors["true counts"] = fit(
                phases.assign(N_steps=true_counts(phases, steps))
            )
    errors["segment counts"] = segment_fit(timeline, prompt, count, exact)
    errors["rounded segments"], wrong = rounded_segment_fit(
        timeline, prompt, errors["default"], count
    )
    errors["steps"] = step_bound(steps, FEATURES, BETA) / BETA - 1.0
    return {
        "placement": placement_errors(timeline, prompt, count, exact),
        "rounded_segments_wrong": wrong,
        "errors": {k: v.tolist() for k, v in errors.items()},
    }


def summary(runs: list[dict]) -> dict:
    out = {}
    for name in runs[0]["errors"]:
        e = np.array([r["errors"][name] for r in runs])
        out[name] = {
            "max_abs_error": np.abs(e).max(axis=0).tolist(),
            "std_error": e.std(axis=0).tolist(),
            "within": int(np.sum(np.abs(e).max(axis=1) < 0.01)),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--save", type=Path, default=None, help="a .json file")
    args = parser.parse_args(argv)
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(args.requests, args.rate, seed, args.noise))
        wrong = runs[-1]["rounded_segments_wrong"]
        print(seed, json.dumps(runs[-1]["placement"]), wrong, flush=True)
    table = summary(runs)
    print("# fit: largest |error| %, standard deviation %, seeds within 1 %")
    for name, row in table.items():
        largest = " ".join(f"{100 * v:5.2f}" for v in row["max_abs_error"])
        spread = " ".join(f"{100 * v:5.2f}" for v in row["std_error"])
        print(f"{name:17s} {largest} | {spread} | {row['within']}/{args.seeds}")
    if args.save is not None:
        payload = {"command": " ".join(sys.argv), "summary": table, "runs": runs}
        args.save.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
