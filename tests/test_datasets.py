"""Shipped traces: every typed-in or shipped copy is what its documented call gives."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from trace_factory import TINY_CALL, tiny_trace

from sklearn_beta.datasets import load_sample_trace, simulate_trace

REPO = Path(__file__).resolve().parents[1]
COPIES = (
    REPO / "data" / "traces" / "sample.csv",
    REPO / "sklearn_beta" / "datasets" / "data" / "sample.csv",
)


def test_both_copies_are_byte_identical():
    assert COPIES[0].read_bytes() == COPIES[1].read_bytes()


def test_load_sample_trace_returns_the_shipped_file():
    phases = load_sample_trace()
    assert phases.shape == (600, 6)
    pd.testing.assert_frame_equal(phases, pd.read_csv(COPIES[0]))


def test_documented_call_reproduces_the_sample():
    # the call of data/traces/README.md and benchmarks/make_sample.py
    phases = simulate_trace(
        300,
        beta=(5e-3, 2e-5, 8e-5),
        chunk_size=64,
        max_num_seqs=32,
        arrival_rate=8.0,
        prompt_tokens=(512, 1.0),
        output_tokens=(128, 1.0),
        random_state=0,
    )
    shipped = load_sample_trace()
    for column in ("request_id", "phase_type", "prefill_tokens", "decode_tokens"):
        np.testing.assert_array_equal(phases[column], shipped[column])
    for column in ("t_start", "t_end"):
        np.testing.assert_allclose(phases[column], shipped[column], rtol=0, atol=1e-6)


def test_the_examples_tiny_trace_is_the_simulators():
    # examples/_tiny_trace.py types in the trace both smoke examples fit (a
    # script cannot import the tests); it must stay the simulator's output.
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from _tiny_trace import CHUNK_SIZE, PHASES, TRUE_BETA
    finally:
        sys.path.remove(str(REPO / "examples"))
    assert (TRUE_BETA, CHUNK_SIZE) == (TINY_CALL["beta"], TINY_CALL["chunk_size"])
    pd.testing.assert_frame_equal(PHASES, tiny_trace(), check_dtype=False)
