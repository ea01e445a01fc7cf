"""docs/method.md cites the functions that implement each equation: they exist."""

from __future__ import annotations

import importlib
import re

import pytest
from conftest import REPO

TEXT = (REPO / "docs" / "method.md").read_text()
# ``module.function`` in prose or in the equations' margins.
CITED = sorted(
    set(
        re.findall(
            r"(?<![\w.])((?:_[a-z]+(?:_[a-z]+)*|datasets)\.[A-Za-z_]+(?:\.[A-Za-z_]+)?)",
            TEXT,
        )
    )
)


def test_the_method_page_cites_functions():
    assert len(CITED) > 40


@pytest.mark.parametrize("path", CITED)
def test_cited_function_exists(path):
    module, *attributes = path.split(".")
    target = importlib.import_module(f"sklearn_beta.{module}")
    for attribute in attributes:
        target = getattr(target, attribute)
    assert callable(target), path
