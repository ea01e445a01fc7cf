"""The python blocks of the docs pages run as pasted, in order per page.

A page's blocks may use ``phases`` (the user's trace), ``beta`` and a fitted
``model`` without defining them: they get the shipped sample (true betas
5e-3, 2e-5, 8e-5, chunk size 64) or, on schedule.md, a saturated client-side
trace. Signature listings (``f(x, *, a=...)``) are not code and are skipped.
README.md and cross_validation.md have their own tests (test_readme.py).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import REPO, saturated_client_trace
from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.datasets import load_sample_trace

SAMPLE_BETA = (5e-3, 2e-5, 8e-5)  # data/traces/README.md
# Blocks left out for time: the schedule page's grid search (about 14 s).
SLOW = {"schedule.md": "GridSearchCV"}
PAGES = [
    "engine_config.md",
    "input_contract.md",
    "replay.md",
    "schedule.md",
    "simulated_traces.md",
    "simulators.md",
    "uncertainty.md",
    "windows.md",
]


def blocks(page: str) -> list[str]:
    text = (REPO / "docs" / page).read_text()
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def is_signature(code: str) -> bool:
    return ", *," in code or " -> " in code


def namespace(page: str) -> dict:
    if page == "schedule.md":
        return {"phases": saturated_client_trace()}
    phases = load_sample_trace()
    model = make_pipeline(
        PhaseExposureTransformer(chunk_size=64), IterativeBetaRegressor()
    ).fit(phases)
    return {"phases": phases, "beta": SAMPLE_BETA, "model": model}


def test_every_page_with_python_blocks_is_listed():
    with_blocks = {
        path.name for path in (REPO / "docs").glob("*.md") if blocks(path.name)
    }
    # scale.md needs a Dask scheduler; the README's Dask block is run instead.
    assert with_blocks - {"scale.md", "cross_validation.md"} == set(PAGES)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("page", PAGES)
def test_doc_blocks_run_in_order(page, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # blocks read data files by repository path
    ns = namespace(page)
    ran = 0
    for i, code in enumerate(blocks(page)):
        if is_signature(code) or SLOW.get(page, "\0") in code:
            continue
        exec(compile(code, f"docs/{page} block {i}", "exec"), ns)
        ran += 1
    assert ran >= 1
    out = capsys.readouterr().out
    if page == "engine_config.md":
        # the sample's true engine: chunk size 64, no budget
        assert (ns["config"].chunk_size, ns["config"].token_budget) == (64, None)
    if page == "simulators.md":
        # 0.0155 s, 0.77 ms, 46 us per request/token, in microseconds
        assert "alpha_coeffs: [15500.0, 770.0, 46.0]" in out
    if page == "uncertainty.md":
        ci = ns["model"][-1].beta_ci_
        assert ci.shape == (3, 2)
        # noise-free sample, times rounded to microseconds: a point interval
        np.testing.assert_allclose(ci.mean(axis=1), SAMPLE_BETA, rtol=1e-4)
    if page == "schedule.md":
        np.testing.assert_allclose(ns["model"].beta_[0], 6e-3, rtol=0.02)


def test_cli_page_documents_every_option_and_only_those(capsys):
    from sklearn_beta.cli import main

    assert main(["fit", "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    options = set(re.findall(r"\[(--[a-z-]+)", usage)) - {"--help"}
    text = (REPO / "docs" / "cli.md").read_text()
    # the options table: one row per option or group of options
    rows = [line for line in text.splitlines() if line.startswith("| `--")]
    documented = {
        o for row in rows for o in re.findall(r"`(--[a-z-]+)", row.split(" | ")[0])
    }
    assert options == documented
