"""The Examples sections of the package's docstrings run as written."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil

import pytest

import sklearn_beta

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(sklearn_beta.__path__, "sklearn_beta.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, monkeypatch):
    # Some examples read data/ files by relative path, as a user at the
    # repository root would.
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
