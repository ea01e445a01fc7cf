"""The README's runnable Python examples run, in order, as written."""

from __future__ import annotations

import re
import warnings

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# Blocks 0-2 (quick start, functional API, simulator) and the clean_phases
# block are complete programs; the others are fragments with "..." in them.
RUNNABLE = [0, 1, 2, 7]


def test_readme_blocks_are_where_expected():
    assert BLOCKS[0].startswith("from sklearn.model_selection import GridSearchCV")
    assert BLOCKS[7].startswith("from sklearn_beta import clean_phases")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_readme_python_blocks_run(capsys):
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for i in RUNNABLE:
            exec(compile(BLOCKS[i], f"README block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "'estimator__phaseexposuretransformer__chunk_size': 64" in out
    assert "clean_phases kept" in out
