"""At which trace size is every step-model coefficient within 1 %? (issue 20).

Usage::

    python benchmarks/step_model_accuracy.py      # the table, ~50 min, 9 GB
    python benchmarks/step_model_accuracy.py --save run.json
    python benchmarks/step_model_accuracy.py --compare \
        benchmarks/step_model_accuracy_results.json
    python benchmarks/step_model_accuracy.py --regimes heavy --requests 6000 \
        --fits step_count duration variance steps
    python benchmarks/step_model_accuracy.py --model six --requests 6000
    python benchmarks/step_model_accuracy.py --engine budget --regimes heavy

Simulated traces whose true step model is ``attention`` (a per-step cost,
prefill tokens, prefill attention, decode tokens, decode context: H100-like
costs, as tests/test_step_models.py), chunk 256 without a token budget,
``max_num_seqs`` 256, 2 % lognormal step noise, prompts of median 1024 and
outputs of median 200 (log-normal, sigma 0.8: varied outputs give the
decode context some spread apart from the decode tokens), at light load (4
requests/s, ~8 decodes running), moderate load (10 requests/s, ~60-80
running, below the engine's capacity of about 12) and heavy load (14
requests/s: the engine saturates, its 256 slots full in 58 % of the steps
of 6000 requests and 98 % of 96 000, its queue growing, as REGIMES.md's
saturated traces). ``--model six`` adds ``batch_size`` (2e-5 s per running
request) to truth and fit. ``--engine budget`` runs vLLM V1's default
engine instead: a token budget of 2048 per step and no chunk cap
(docs/method.md section 4.2), the same loads; ``--engine chunked-budget``
chunks of 256 under a 2048-token budget.

Per regime and trace size, ``--seeds`` traces (seeds 0, 1, ...) are fitted by
each of ``--fits``:

* ``step_count``: ``IterativeBetaRegressor()``, the default (step-count
  objective, each phase's residual weighted by ``1 / N_i``);
* ``duration``: ``IterativeBetaRegressor("beta_informed",
  objective="duration", damping=0.5, max_iter=100)``, the command line's
  step-model fit;
* ``variance``: the same with ``weights="variance"``;
* ``steps``: not a fit of the trace but the information bound: the weighted
  least squares of the engine's own steps (every step's features and time,
  weights ``1 / step time``), which no fit of the phases can beat.

The table prints, per coefficient, the largest absolute relative error over
the seeds (%) and how many seeds have every coefficient within 1 %.
``--compare`` prints a stored run's numbers next to these and exits with
status 1 if a row of the stored run had more seeds within 1 %.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.core._step_features import STEP_FEATURES, STEP_MODELS
from sklearn_beta.datasets import simulate_trace

#: (chunk_size, token_budget) per engine: the chunked engine without a
#: budget, chunked under a budget, and vLLM V1's default (a budget, no chunk
#: cap).
ENGINES = {
    "chunked": (256, None),
    "chunked-budget": (256, 2048),
    "budget": (2048, 2048),
}
#: True coefficients per model: s/step, s/prefill token, s/(token x context
#: token), s/decode token, s/context token (and s/running request).
MODELS = {
    "attention": (STEP_MODELS["attention"], (5e-3, 2e-5, 4e-9, 8e-5, 2e-8)),
    "six": (STEP_FEATURES, (5e-3, 2e-5, 4e-9, 8e-5, 2e-8, 2e-5)),
}
REGIMES = {"light": 4.0, "moderate": 10.0, "heavy": 14.0}
#: Trace sizes per regime (``--requests`` sets one list for all).
SIZES = {
    "light": (1500, 6000, 24000),
    "moderate": (6000, 24000),
    "heavy": (6000, 24000, 96000, 192000, 384000, 768000, 1536000),
}
FITS = {
    "step_count": dict(),
    "duration": dict(
        correction_mode="beta_informed", objective="duration", damping=0.5, max_iter=100
    ),
    "variance": dict(
        correction_mode="beta_informed",
        objective="duration",
        damping=0.5,
        max_iter=100,
        weights="variance",
    ),
}
TOLERANCE = 0.01
#: Column heads of the table.
SHORT = dict(
    zip(
        STEP_FEATURES,
        ("steps", "pf_tok", "pf_attn", "dec_tok", "dec_ctx", "batch"),
        strict=True,
    )
)


def simulate(model: str, engine: str, regime: str, n_requests: int, seed: int):
    """One trace and its engine steps."""
    features, beta = MODELS[model]
    chunk_size, token_budget = ENGINES[engine]
    return simulate_trace(
        n_requests,
        beta=beta,
        step_model=list(features),
        chunk_size=chunk_size,
        token_budget=token_budget,
        max_num_seqs=256,
        arrival_rate=REGIMES[regime],
        prompt_tokens=(1024, 0.8),
        output_tokens=(200, 0.8),
        noise=0.02,
        random_state=seed,
        return_steps=True,
    )


def step_bound(steps, features, beta) -> np.ndarray:
    """The weighted least squares of the engine's steps: multiplicative
    noise makes a step's standard deviation proportional to its model time
    ``x @ beta``, so each row is divided by it (the best linear unbiased
    estimate a trace of these steps allows)."""
    x = np.column_stack(
        [
            np.ones(len(steps)) if f == "steps" else steps[f].to_numpy(np.float64)
            for f in features
        ]
    )
    y = (steps["t_end"] - steps["t_start"]).to_numpy()
    scale = 1.0 / (x @ np.asarray(beta))
    return np.linalg.lstsq(x * scale[:, None], y * scale, rcond=None)[0]


def fit_betas(phases, features, engine: str, fit: str) -> tuple[np.ndarray, bool]:
    """The betas of one estimator on one trace, and whether it converged."""
    chunk_size, token_budget = ENGINES[engine]
    table = PhaseExposureTransformer(
        chunk_size, token_budget=token_budget, step_model=list(features)
    ).fit_transform(phases)
    regressor = IterativeBetaRegressor(confidence_level=None, **FITS[fit])
    with warnings.catch_warnings():
        # a light trace's relative stopping rule keeps moving by 1e-5
        warnings.simplefilter("ignore")
        regressor.fit(table)
    return regressor.beta_, bool(regressor.converged_)


def run_cell(model, engine, regime, n_requests, fits, n_seeds) -> list[dict]:
    """Every fit's relative errors on ``n_seeds`` traces of one size."""
    features, beta = MODELS[model]
    errors = {fit: [] for fit in fits}
    unconverged = dict.fromkeys(fits, 0)
    seconds = dict.fromkeys(fits, 0.0)
    for seed in range(n_seeds):
        phases, steps = simulate(model, engine, regime, n_requests, seed)
        for fit in fits:
            start = time.perf_counter()
            if fit == "steps":
                betas, converged = step_bound(steps, features, beta), True
            else:
                betas, converged = fit_betas(phases, features, engine, fit)
            seconds[fit] += time.perf_counter() - start
            unconverged[fit] += not converged
            errors[fit].append(betas / np.asarray(beta) - 1.0)
    rows = []
    for fit in fits:
        e = np.array(errors[fit])
        rows.append(
            {
                "model": model,
                "engine": engine,
                "regime": regime,
                "requests": n_requests,
                "fit": fit,
                "seeds": n_seeds,
                "max_abs_error": np.abs(e).max(axis=0).tolist(),
                "std_error": e.std(axis=0).tolist(),
                "mean_error": e.mean(axis=0).tolist(),
                "within": int(np.sum(np.abs(e).max(axis=1) < TOLERANCE)),
                "unconverged": unconverged[fit],
                "seconds": round(seconds[fit], 1),
            }
        )
    return rows


def _format_row(row: dict) -> str:
    errors = " ".join(f"{100 * v:7.2f}" for v in row["max_abs_error"])
    return (
        f"{row['regime']:6s} {row['requests']:7d} {row['fit']:10s} {errors}  "
        f"{row['within']:2d}/{row['seeds']:<2d} {row['unconverged']:5d} "
        f"{row['seconds']:7.1f}"
    )


def _header(model: str) -> str:
    names = " ".join(f"{SHORT[f]:>7s}" for f in MODELS[model][0])
    return (
        f"# step model {model}: largest |relative error| over the seeds, %\n"
        f"{'regime':6s} {'requests':>7s} {'fit':10s} {names}  within unconv "
        f"{'s':>7s}"
    )


def compare(rows: list[dict], stored_path: Path) -> int:
    """The stored run next to this one; 1 if a stored row had more seeds
    within the tolerance."""
    key = ("model", "engine", "regime", "requests", "fit")
    stored = {
        # runs stored before --engine existed are of the chunked engine
        tuple({"engine": "chunked", **r}[k] for k in key): r
        for r in json.loads(stored_path.read_text())["results"]
    }
    print(f"\n# against {stored_path}: seeds within 1 % (stored), worst error %")
    worse = 0
    for row in rows:
        old = stored.get(tuple(row[k] for k in key))
        if old is None:
            print(f"{tuple(row[k] for k in key)}: not in the stored run")
            continue
        worse += row["within"] < old["within"]
        print(
            f"{row['regime']:6s} {row['requests']:7d} {row['fit']:10s} "
            f"{row['within']:2d} ({old['within']:2d})  "
            f"{100 * max(row['max_abs_error']):6.2f} "
            f"({100 * max(old['max_abs_error']):6.2f})"
        )
    return int(worse > 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="attention")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="chunked")
    parser.add_argument(
        "--regimes", nargs="+", choices=sorted(REGIMES), default=list(REGIMES)
    )
    parser.add_argument("--requests", nargs="+", type=int, default=None)
    parser.add_argument(
        "--fits",
        nargs="+",
        choices=[*FITS, "steps"],
        default=["step_count", "steps"],
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--save", type=Path, default=None, help="a .json file")
    parser.add_argument("--compare", type=Path, default=None, help="a stored run")
    args = parser.parse_args(argv)
    chunk_size, token_budget = ENGINES[args.engine]
    print(f"# engine {args.engine}: chunk {chunk_size}, budget {token_budget}")
    print(_header(args.model))
    rows = []
    for regime in args.regimes:
        for n_requests in args.requests or SIZES[regime]:
            cell = run_cell(
                args.model, args.engine, regime, n_requests, args.fits, args.seeds
            )
            for row in cell:
                print(_format_row(row), flush=True)
            rows.extend(cell)
    if args.save is not None:
        payload = {"command": " ".join(sys.argv), "results": rows}
        args.save.write_text(json.dumps(payload, indent=1) + "\n")
    if args.compare is not None:
        return compare(rows, args.compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
