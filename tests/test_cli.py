"""The sklearn-beta command: outputs, golden parity, progress and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import load_golden, shared_path

from sklearn_beta import __version__
from sklearn_beta.cli import main
from sklearn_beta.datasets import simulate_trace

TRUE_BETA = [4e-3, 3e-5, 2e-4]
#: BLIS's blackbox models: entry, strictly: exactly these keys and types.
BLIS_SCHEMA = {
    "id": str,
    "GPU": str,
    "tensor_parallelism": int,
    "vllm_version": str,
    "alpha_coeffs": list,
    "beta_coeffs": list,
    "total_kv_blocks": int,
}


def check_blis_document(text: str) -> dict:
    """Parse a BLIS document and check its one entry strictly; return it."""
    document = yaml.safe_load(text)
    assert list(document) == ["models"] and len(document["models"]) == 1
    entry = document["models"][0]
    extra = set(entry) - set(BLIS_SCHEMA) - {"best_loss"}
    assert not extra and set(BLIS_SCHEMA) <= set(entry), sorted(entry)
    for key, kind in BLIS_SCHEMA.items():
        assert type(entry[key]) is kind, (key, entry[key])
    for key in ("alpha_coeffs", "beta_coeffs"):
        assert len(entry[key]) == 3
        assert all(type(c) is float and c >= 0 for c in entry[key])
    return entry


REPO = Path(__file__).resolve().parents[1]
SPANS = REPO / "data" / "otel" / "spans.jsonl"
BENCH = REPO / "data" / "bench" / "results.json"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_reproduces_the_reference_iterative_fit(capsys):
    smoke = shared_path("data", "smoke.csv")
    reference = ("--correction-mode", "beta_informed", "--objective", "duration")
    reference += ("--stopping", "absolute")
    code, out, err = run(
        capsys, "fit", smoke, "--chunk-size", 64, *reference, "--output", "json"
    )
    assert code == 0 and err == ""
    report = json.loads(out)
    golden = load_golden("smoke_c64.json")["iterative"]["beta_informed/eta=1.0"]
    np.testing.assert_allclose(
        list(report["betas"].values()), golden["beta"], rtol=1e-9, atol=1e-15
    )
    assert report["convergence"]["n_iter"] == golden["n_outer_iters"] == 7
    assert report["convergence"]["converged"] is True
    assert len(report["convergence"]["history"]) == 8
    assert report["sklearn_beta_version"] == __version__
    assert report["schema"] == "sklearn-beta/fit/v1"
    assert report["parameters"]["chunk_size"] == 64
    assert report["parameters"]["stopping"] == "absolute"
    assert report["units"]["beta1"] == "s/prefill_token"
    assert report["diagnostics"]["n_phases"] == 4
    np.testing.assert_allclose(
        report["blis"]["beta_coeffs"], np.array(golden["beta"]) * 1e6, rtol=1e-9
    )


def test_baseline_uniform_matches_the_reference(capsys):
    smoke = shared_path("data", "smoke.csv")
    code, out, _ = run(
        capsys,
        "fit",
        smoke,
        "--chunk-size",
        64,
        "--algo",
        "baseline",
        "--correction-mode",
        "uniform",
        "--output",
        "json",
    )
    report = json.loads(out)
    golden = load_golden("smoke_c64.json")["baseline"]["uniform"]
    np.testing.assert_allclose(
        list(report["betas"].values()), golden["beta"], rtol=1e-9
    )
    assert report["convergence"]["converged"] is None
    assert any("beta0 is 0" in n for n in report["notes"])


def test_otel_auto_chunk_size_blis_entry_and_plots(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(
        capsys, "fit", SPANS, "--output", "blis", "--plot", tmp_path / "plots"
    )
    assert code == 0 and err == ""
    assert "# chunk size 256, iterative" in out
    entry = check_blis_document(out)
    np.testing.assert_allclose(entry["beta_coeffs"], [4000.0, 30.0, 200.0], rtol=1e-2)
    assert entry["alpha_coeffs"] == [0.0, 0.0, 0.0]  # server-side spans
    assert entry["id"] == "unknown-model"  # placeholders, named in a comment
    assert "# placeholders: id, GPU" in out
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == [
        "beta_history.png",
        "observed_vs_predicted.png",
        "pressures.png",
        "residuals.png",
    ]


def test_table_output_and_benchmark_format(capsys):
    code, out, _ = run(capsys, "fit", BENCH, "--chunk-size", 256, "--algo", "baseline")
    assert code == 0
    assert "(bench, 120 phases, 60 requests, 1 instance(s))" in out
    assert re.search(r"^beta2\s+\S+\s+s/decode_token\s+\S+$", out, re.M)


def test_progress_only_on_a_terminal(capsys, monkeypatch):
    smoke = shared_path("data", "smoke.csv")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    reference = ("--correction-mode", "beta_informed", "--objective", "duration")
    code, _, err = run(
        capsys, "fit", smoke, "--chunk-size", 64, *reference, "--stopping", "absolute"
    )
    assert code == 0
    assert len(re.findall(r"^  iter +\d+ +beta0=.* change=", err, re.M)) == 7
    code, _, err = run(capsys, "fit", smoke, "--chunk-size", 64, "--quiet")
    assert err == ""


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["fit", "missing.csv"], 1, "does not exist"),
        (["fit", "{smoke}", "--chunk-size", "0"], 2, "expected a positive integer"),
        (["fit", "{smoke}", "--damping", "2"], 2, "'damping'"),
        (["fit", "{smoke}", "--tol", "-1"], 2, "'tol'"),
        (["fit", "{smoke}", "--format", "xml"], 2, "invalid choice: 'xml'"),
        (["fit", "{spans}", "--format", "csv"], 1, "lacks"),
        (["fit", "{bad}"], 1, "'t_end' must be greater"),
        (
            [
                "fit",
                "{smoke}",
                "--algo",
                "baseline",
                "--correction-mode",
                "beta_informed",
            ],
            2,
            "needs the iterative estimator",
        ),
        (["fit", "{smoke}", "--algo", "baseline", "--damping", "0.5"], 2, "damping"),
        (["fit", "{spans}", "--time-unit", "ms"], 2, "--time-unit applies to csv"),
        (["fit", "{smoke}", "--gpu", "H100"], 2, "--output blis"),
        (["fit", "{negative}"], 1, "prefill_tokens"),
        (["fit", "{misspelt}"], 1, "phase_type"),
        (["fit", "{duplicated}"], 1, "request_id"),
        (["fit", "{smoke}", "--plot", "{smoke}"], 0, None),
        ([], 2, "required: command"),
    ],
)
def test_bad_input_is_one_line_on_stderr(capsys, tmp_path, argv, code, message):
    """Under the default --chunk-size auto: checked before any search."""
    files = bad_traces(tmp_path)
    argv = [a.format(**files) for a in argv]
    got, out, err = run(capsys, *argv)
    assert got == code, err
    assert "Traceback" not in err
    if code == 0:  # --plot into a file: the fit is printed, the reason said
        assert out.startswith("sklearn-beta ") and "beta0" in out
        assert err.count("\n") == 1 and "--plot" in err and "warning" in err
        return
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sklearn-beta: error: ")
    assert message in err


def bad_traces(tmp_path) -> dict:
    """A 40-phase trace, and copies with one bad row each."""
    good = simulate_trace(
        20,
        beta=TRUE_BETA,
        chunk_size=64,
        max_num_seqs=4,
        arrival_rate=2.0,
        prompt_tokens=(100, 0.5),
        output_tokens=(20, 0.5),
        random_state=0,
    )
    smoke = tmp_path / "good.csv"
    good.to_csv(smoke, index=False)
    files = {"smoke": smoke, "spans": SPANS}
    variants = {
        "bad": lambda f: f.assign(
            t_start=np.where(f.index == 0, f.t_end + 1, f.t_start)
        ),
        "negative": lambda f: f.assign(
            prefill_tokens=np.where(f.index == 0, -5, f.prefill_tokens)
        ),
        "misspelt": lambda f: f.assign(
            phase_type=np.where(f.index == 2, "prefil", f.phase_type)
        ),
        "duplicated": lambda f: pd.concat([f, f.iloc[[3]]], ignore_index=True),
    }
    for name, change in variants.items():
        files[name] = tmp_path / f"{name}.csv"
        change(good).to_csv(files[name], index=False)
    return files


def test_subprocess_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "sklearn_beta.cli",
            "fit",
            str(SPANS),
            "--chunk-size",
            "256",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""  # not a terminal: no progress
    assert json.loads(ok.stdout)["chunk_size"] == 256


def test_console_script_is_declared():
    import importlib
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["sklearn-beta"].partition(":")
    assert getattr(importlib.import_module(module), func) is main
