"""A short fuzz run: malformed tables only ever raise ValueError or TypeError.

benchmarks/fuzz.py runs the same cases for longer.
"""

from __future__ import annotations

from fuzzing import fuzz_cases, run_entry
from hypothesis import HealthCheck, given, settings


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(case=fuzz_cases())
def test_malformed_tables_raise_only_documented_errors(case):
    entry, frame, params = case
    run_entry(entry, frame, params)
