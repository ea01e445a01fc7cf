"""A short fuzz run: malformed tables only ever raise ValueError or TypeError.

benchmarks/fuzz.py runs the same cases for longer.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzzing import ENTRIES, PARAM_VALUES, fuzz_cases, run_entry
from hypothesis import HealthCheck, given, settings
from trace_factory import random_phases


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


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_undamaged_tables_fit_through_every_entry(entry, seed):
    # The fuzz run passes when an entry raises a documented error; this
    # keeps it honest: the same harness on undamaged tables must fit.
    params = {key: values[0] for key, values in PARAM_VALUES.items()}
    params["exposure_edits"] = []
    frame = random_phases(np.random.default_rng(seed), 6)
    assert run_entry(entry, frame, params) == "ok"
