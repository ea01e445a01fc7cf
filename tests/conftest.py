"""Shared fixtures: the published traces and golden figures live in ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"{path} is absent: the published traces and golden figures "
            "are read from ../shared, next to the repository"
        )
    return path


@pytest.fixture
def smoke_phases() -> pd.DataFrame:
    return pd.read_csv(shared_path("data", "smoke.csv"))


@pytest.fixture
def published_sample() -> pd.DataFrame:
    return pd.read_csv(shared_path("data", "sample.csv"))


def load_golden(name: str) -> dict:
    return json.loads(shared_path("golden", name).read_text())
