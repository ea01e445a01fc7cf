"""docs/method.md cites the functions that implement each equation: they exist."""

from __future__ import annotations

import importlib
import pkgutil
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

# The page names a module by its file name; it lives in one of the subpackages.
MODULES = {
    name.rsplit(".", 1)[-1]: name
    for _, name, _ in pkgutil.walk_packages(
        importlib.import_module("sklearn_beta").__path__, "sklearn_beta."
    )
}


def test_the_method_page_cites_functions():
    assert len(CITED) > 40


@pytest.mark.parametrize("path", CITED)
def test_cited_function_exists(path):
    module, *attributes = path.split(".")
    target = importlib.import_module(MODULES[module])
    for attribute in attributes:
        target = getattr(target, attribute)
    assert callable(target), path
