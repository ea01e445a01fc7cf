"""Long fuzz run of the input contract: malformed tables -> only documented errors.

Runs the cases of tests/fuzzing.py (small valid traces damaged by random
mutations, with random and sometimes invalid parameters, fed to the
functions, the pipelines, clean_phases, and the regressors on damaged
exposure tables) and asserts that each one returns finite non-negative betas
or raises ValueError/TypeError from a check, leaving the input untouched.
Prints how many cases were tried and how they ended.

    PYTHONPATH=. python benchmarks/fuzz.py --examples 5000 [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzzing import fuzz_cases, run_entry  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    outcomes: Counter = Counter()

    @hypothesis_seed(args.seed)
    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=fuzz_cases())
    def fuzz(case):
        entry, frame, params = case
        outcomes[entry, run_entry(entry, frame, params)] += 1

    start = time.perf_counter()
    fuzz()
    elapsed = time.perf_counter() - start
    total = sum(outcomes.values())
    print(
        f"fuzz cases tried: {total} in {elapsed:.1f} s (seed {args.seed}); "
        "no undocumented exception, no non-finite or negative beta, no input modified"
    )
    for entry in sorted({e for e, _ in outcomes}):
        row = {o: n for (e, o), n in outcomes.items() if e == entry}
        print(
            f"  {entry:10s} " + ", ".join(f"{o}: {n}" for o, n in sorted(row.items()))
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
