"""Estimate step-time betas from a phase trace, with the published command's options.

Usage::

    python examples/run.py                                  # shipped sample, baseline
    python examples/run.py --algo iterative --chunk-size 64
    python examples/run.py --csv my_trace.csv --algo iterative --damping-eta 0.5

Runs the functional API, whose defaults reproduce the published reference, and
prints the betas, the diagnostics, convergence and the last rows of the beta
history. For fleets, plots and simulator exports use the ``sklearn-beta``
command instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sklearn_beta import estimate_betas_baseline, estimate_betas_iterative

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO / "data" / "traces" / "sample.csv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="phase table")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--algo", choices=["baseline", "iterative"], default="baseline")
    parser.add_argument(
        "--correction-mode",
        default=None,
        help="baseline: end|end_inside|uniform|none (default end); iterative: "
        "beta_informed|end|end_inside|uniform|none (default beta_informed)",
    )
    parser.add_argument("--damping-eta", type=float, default=1.0)
    parser.add_argument("--max-outer-iters", type=int, default=25)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--init-correction-mode", default="end")
    parser.add_argument("--min-duration", type=float, default=0.0)
    parser.add_argument("--history-rows", type=int, default=5)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        phases = pd.read_csv(args.csv)
        if args.algo == "baseline":
            result = estimate_betas_baseline(
                phases,
                chunk_size=args.chunk_size,
                correction_mode=args.correction_mode or "end",
                min_duration_sec=args.min_duration,
            )
        else:
            result = estimate_betas_iterative(
                phases,
                chunk_size=args.chunk_size,
                prefill_correction_mode=args.correction_mode or "beta_informed",
                max_outer_iters=args.max_outer_iters,
                tol=args.tol,
                damping_eta=args.damping_eta,
                init_via_baseline_correction=args.init_correction_mode,
                min_duration_sec=args.min_duration,
            )
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(f"trace: {args.csv}  ({len(phases)} phases, chunk size {args.chunk_size})")
    print(f"algorithm: {args.algo}")
    print(f"beta0 = {result.beta0:.9g} s/step")
    print(f"beta1 = {result.beta1:.9g} s/prefill token")
    print(f"beta2 = {result.beta2:.9g} s/decode token")
    print("diagnostics:")
    for key, value in result.diagnostics.items():
        print(f"  {key}: {value}")
    if args.algo == "iterative":
        print(f"converged: {result.converged} after {result.n_outer_iters} iterations")
        print("beta history (last rows):")
        history = pd.DataFrame(
            result.history["beta"], columns=["beta0", "beta1", "beta2"]
        )
        print(history.tail(args.history_rows).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
