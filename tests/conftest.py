"""Shared fixtures and paths of the test suite.

The published traces (``tests/data/{sample,smoke}.csv``) and the published
implementation's outputs on them (``tests/data/golden/*.json``) are part of
the repository: the whole suite runs in a bare clone. Traces the tests build
themselves come from one module, :mod:`trace_factory`.
"""

from __future__ import annotations

import os

# scikit-learn runs its array-API estimator checks only with this set; without
# it they skip, and a clone's suite should run everything it collects.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import json
from pathlib import Path

import pandas as pd
import pytest
import sklearn

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def data_path(*parts: str) -> Path:
    """A file under ``tests/data``."""
    return DATA.joinpath(*parts)


def load_golden(name: str) -> dict:
    """The published figures of one case, e.g. ``load_golden("smoke_c64.json")``."""
    return json.loads(data_path("golden", name).read_text())


def golden_cases() -> list[tuple[str, int]]:
    """``(trace, chunk_size)`` of every golden file, e.g. ``("sample", 32)``."""
    cases = []
    for path in sorted(data_path("golden").glob("*_c*.json")):
        trace, chunk = path.stem.rsplit("_c", 1)
        cases.append((trace, int(chunk)))
    return cases


def column_kwargs(**columns) -> dict:
    """Keyword arguments that name the frame's columns, by schema name.

    ``entry(frame, **column_kwargs(t_end="end"))``: the one place the tests
    spell how the public API takes column names.
    """
    return {"columns": columns}


def published_trace(name: str) -> pd.DataFrame:
    """One of the published traces, ``"smoke"`` or ``"sample"``."""
    return pd.read_csv(data_path(f"{name}.csv"))


@pytest.fixture
def smoke_phases() -> pd.DataFrame:
    """The published 4-phase smoke trace."""
    return published_trace("smoke")


@pytest.fixture
def published_sample() -> pd.DataFrame:
    """The published 8-phase sample trace."""
    return published_trace("sample")


@pytest.fixture
def routing():
    """scikit-learn's metadata routing, on for one test."""
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def saturated_client_trace(beta=(6e-3, 3e-5, 1.2e-4), step_model="published"):
    """Client-side times of 800 requests at 40/s, about 1.7 x the capacity
    of an engine of chunk 256, budget 512 and 64 running, 2 % step noise,
    reporting offsets of 3 ms (first token) and 5 ms (last token)."""
    from sklearn_beta.datasets import simulate_trace

    return simulate_trace(
        800,
        beta=beta,
        step_model=step_model,
        arrival_rate=40.0,
        noise=0.02,
        view="client",
        first_token_offset=0.003,
        last_token_offset=0.005,
        random_state=3,
        chunk_size=256,
        token_budget=512,
        max_num_seqs=64,
        prompt_tokens=(300, 0.5),
        output_tokens=(100, 0.5),
    )


def run_cli(capsys, *argv):
    """``sklearn-beta`` with ``argv`` (each turned to a string), as a user
    runs it: ``(exit code, stdout, stderr)``."""
    from sklearn_beta.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
