"""Does cross-validation pick the true step model? (issue 20, done-when).

Usage::

    python benchmarks/step_model_cv.py                 # 20 traces, the table
    python benchmarks/step_model_cv.py --out benchmarks/step_model_cv_results.json
    python benchmarks/step_model_cv.py --compare benchmarks/step_model_cv_results.json
    python benchmarks/step_model_cv.py --traces 4      # the first 4 only

Twenty simulated traces of 2000 requests each with 2 % step noise, chunk
256, ``max_num_seqs`` 128, prompts of median 1024 and outputs of median 200
(log-normal, sigma 0.8): light load (4 requests/s, ~25 running) and heavy
load (14 requests/s, the 128 slots full), chunked without a budget and
chunked under a 2048-token budget, and three true step models: the published
three coefficients, ``context`` (the published ones and the decode context,
a KV-read cost) and ``attention`` (the context and the prefill attention).
Each regime has two published traces, two attention traces and one context
trace (seeds 0 and 1).

Each trace is scored as the command line's ``--step-model auto`` scores it
(:mod:`sklearn_beta.cli._step_model`), with the same function,
``sklearn_beta.model_selection.compare_step_models``: ``GridSearchCV`` over
the three step models of an iterative duration fit in full-trace context
(``TraceContextRegressor``), ``TraceBlockSplit(4)``, the held-out phase
durations' mean absolute relative error (``neg_duration_mape``), and the
one-standard-error rule (``one_standard_error_rule``), which takes the
fewest coefficients within one standard error of the best mean. The table
prints every candidate's held-out error, the standard error and the choice;
``--compare`` prints the choices and errors of a stored run next to these and
exits with status 1 if fewer traces are picked right.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.metrics import get_scorer
from sklearn_beta.model_selection import (
    TraceBlockSplit,
    TraceContextRegressor,
    compare_step_models,
)

CHUNK = 256
CONTEXT = ("steps", "prefill_tokens", "decode_tokens", "decode_context")
#: The true step models and their H100-like costs (as tests/test_step_models.py).
TRUTHS = {
    "published": ("published", (5e-3, 2e-5, 8e-5)),
    "context": (CONTEXT, (5e-3, 2e-5, 8e-5, 2e-8)),
    "attention": ("attention", (5e-3, 2e-5, 4e-9, 8e-5, 2e-8)),
}
#: Candidates, simplest first.
CANDIDATES = ("published", "context", "attention")
REGIMES = {
    "light chunked": dict(arrival_rate=4.0, token_budget=None),
    "light budget": dict(arrival_rate=4.0, token_budget=2048),
    "heavy chunked": dict(arrival_rate=14.0, token_budget=None),
    "heavy budget": dict(arrival_rate=14.0, token_budget=2048),
}
#: Per regime: (truth, seed); 4 regimes x 5 = 20 traces.
PER_REGIME = (
    ("published", 0),
    ("attention", 0),
    ("context", 0),
    ("published", 1),
    ("attention", 1),
)
TRACES = [(regime, truth, seed) for regime in REGIMES for truth, seed in PER_REGIME]
PARAM = "estimator__phaseexposuretransformer__step_model"


def simulate(regime: str, truth: str, seed: int, n_requests: int):
    step_model, beta = TRUTHS[truth]
    return simulate_trace(
        n_requests,
        beta=beta,
        step_model=step_model,
        chunk_size=CHUNK,
        max_num_seqs=128,
        noise=0.02,
        prompt_tokens=(1024, 0.8),
        output_tokens=(200, 0.8),
        random_state=seed,
        **REGIMES[regime],
    )


def choose(phases, token_budget, n_folds: int = 4) -> dict:
    """The ``--step-model auto`` choice on one trace, with every candidate's
    held-out error and standard error (``compare_step_models``, the
    comparison the command line runs)."""
    pipe = make_pipeline(
        PhaseExposureTransformer(CHUNK, token_budget=token_budget),
        IterativeBetaRegressor(
            "beta_informed", objective="duration", damping=0.5, max_iter=100
        ),
    )
    comparison = compare_step_models(
        TraceContextRegressor(pipe, trace=phases),
        phases,
        [{PARAM: _as_param(c)} for c in CANDIDATES],
        cv=TraceBlockSplit(n_folds),
        scoring=get_scorer("neg_duration_mape"),
    )
    rows = comparison["candidates"]
    return {
        "chosen": CANDIDATES[comparison["chosen"]],
        **{
            f"error_{c}": _nan(rows[i]["held_out_error"])
            for i, c in enumerate(CANDIDATES)
        },
        **{
            f"se_{c}": _nan(rows[i]["standard_error"]) for i, c in enumerate(CANDIDATES)
        },
    }


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def _as_param(candidate: str):
    step_model = TRUTHS[candidate][0]
    return list(step_model) if isinstance(step_model, tuple) else step_model


def run(n_traces: int, n_requests: int) -> list[dict]:
    rows = []
    for regime, truth, seed in TRACES[:n_traces]:
        start = time.perf_counter()
        phases = simulate(regime, truth, seed, n_requests)
        row = {"regime": regime, "truth": truth, "seed": seed}
        row.update(choose(phases, REGIMES[regime]["token_budget"]))
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def _format_row(row: dict) -> str:
    errors = "  ".join(
        f"{100 * row[f'error_{c}']:6.2f}±{100 * row[f'se_{c}']:4.2f}"
        for c in CANDIDATES
    )
    mark = "ok" if row["chosen"] == row["truth"] else "WRONG"
    return (
        f"{row['regime']:14s} {row['truth']:9s} {row['seed']:4d}  {errors}  "
        f"{row['chosen']:9s} {mark:5s} {row['seconds']:6.1f}"
    )


def _header() -> str:
    names = "  ".join(f"{c + ' %':>11s}" for c in CANDIDATES)
    return f"{'regime':14s} {'truth':9s} seed  {names}  {'chosen':9s} right {'s':>6s}"


def compare(rows: list[dict], baseline: Path) -> int:
    """Print the stored run's choices and errors next to these; 1 if fewer
    traces are picked right."""
    stored = {
        (r["regime"], r["truth"], r["seed"]): r
        for r in json.loads(baseline.read_text())["results"]
    }
    print(f"\n# against {baseline}: chosen (stored), error of the truth (stored)")
    right = stored_right = 0
    for row in rows:
        key = (row["regime"], row["truth"], row["seed"])
        old = stored.get(key)
        if old is None:
            print(f"{key}: not in the stored run")
            continue
        right += row["chosen"] == row["truth"]
        stored_right += old["chosen"] == old["truth"]
        truth = f"error_{row['truth']}"
        print(
            f"{row['regime']:14s} {row['truth']:9s} {row['seed']:4d}  "
            f"{row['chosen']:9s} ({old['chosen']:9s})  "
            f"{100 * row[truth]:6.2f} % ({100 * old[truth]:6.2f} %)"
        )
    print(f"right: {right} (stored {stored_right})")
    return int(right < stored_right)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=len(TRACES))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="a .json file")
    parser.add_argument("--compare", type=Path, default=None, help="a stored run")
    args = parser.parse_args(argv)
    print(_header())
    rows = run(args.traces, args.requests)
    right = sum(r["chosen"] == r["truth"] for r in rows)
    print(f"\ntrue step model chosen in {right} of {len(rows)} traces")
    if args.out is not None:
        payload = {"requests": args.requests, "results": rows}
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    if args.compare is not None:
        return compare(rows, args.compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
