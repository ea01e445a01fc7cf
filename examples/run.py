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
import inspect
import sys
from pathlib import Path

import pandas as pd

from sklearn_beta import estimate_betas_baseline, estimate_betas_iterative

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO / "data" / "traces" / "sample.csv"


#: Command-line option -> keyword of the functional API, per algorithm.
OPTIONS = {
    "baseline": {
        "correction_mode": "correction_mode",
        "min_duration": "min_duration_sec",
    },
    "iterative": {
        "correction_mode": "prefill_correction_mode",
        "damping_eta": "damping_eta",
        "max_outer_iters": "max_outer_iters",
        "tol": "tol",
        "init_correction_mode": "init_via_baseline_correction",
        "min_duration": "min_duration_sec",
    },
}
ESTIMATORS = {
    "baseline": estimate_betas_baseline,
    "iterative": estimate_betas_iterative,
}


def api_default(algo: str, option: str):
    """The functional API's default of an option (never typed here twice)."""
    keyword = OPTIONS[algo][option]
    return inspect.signature(ESTIMATORS[algo]).parameters[keyword].default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="phase table")
    parser.add_argument(
        "--chunk-size", type=int, default=64, help="the published command's default: 64"
    )
    parser.add_argument("--algo", choices=list(ESTIMATORS), default="baseline")
    parser.add_argument(
        "--correction-mode",
        help=f"baseline: end|end_inside|uniform|none (default "
        f"{api_default('baseline', 'correction_mode')}); iterative: "
        f"beta_informed|end|end_inside|uniform|none (default "
        f"{api_default('iterative', 'correction_mode')})",
    )
    for option, kind in (
        ("damping_eta", float),
        ("max_outer_iters", int),
        ("tol", float),
        ("init_correction_mode", str),
    ):
        parser.add_argument(
            "--" + option.replace("_", "-"),
            type=kind,
            help=f"iterative only (default {api_default('iterative', option)})",
        )
    parser.add_argument(
        "--min-duration",
        type=float,
        help=f"seconds (default {api_default('iterative', 'min_duration')})",
    )
    parser.add_argument("--history-rows", type=int, default=5)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = {
        keyword: getattr(args, option)
        for option, keyword in OPTIONS[args.algo].items()
        if getattr(args, option) is not None
    }
    ignored = [
        option
        for option in OPTIONS["iterative"]
        if option not in OPTIONS[args.algo] and getattr(args, option) is not None
    ]
    if ignored:
        print(f"error: {ignored} apply to --algo iterative only", file=sys.stderr)
        return 2
    try:
        phases = pd.read_csv(args.csv)
        result = ESTIMATORS[args.algo](phases, chunk_size=args.chunk_size, **given)
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
        print(result.history.tail(args.history_rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
