"""The sklearn-beta command: outputs, golden parity, progress and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import data_path, load_golden

from sklearn_beta import __version__
from sklearn_beta.cli import main

REPO = Path(__file__).resolve().parents[1]
SPANS = REPO / "data" / "otel" / "spans.jsonl"
BENCH = REPO / "data" / "bench" / "results.json"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_reproduces_the_reference_iterative_fit(capsys):
    smoke = data_path("smoke.csv")
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
    smoke = data_path("smoke.csv")
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


def test_otel_auto_chunk_size_blis_block_and_plots(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(
        capsys, "fit", SPANS, "--output", "blis", "--plot", tmp_path / "plots"
    )
    assert code == 0 and err == ""
    assert "# chunk size 256, iterative" in out
    coeffs = re.search(r"^beta_coeffs: \[(.*)\]$", out, re.M).group(1)
    np.testing.assert_allclose(
        [float(c) for c in coeffs.split(",")], [4000.0, 30.0, 200.0], rtol=1e-2
    )
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
    smoke = data_path("smoke.csv")
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
        (["fit", "missing.csv", "--chunk-size", "64"], 1, "does not exist"),
        (["fit", "{smoke}", "--chunk-size", "0"], 2, "expected a positive integer"),
        (["fit", "{smoke}", "--chunk-size", "64", "--damping", "2"], 1, "'damping'"),
        (["fit", "{smoke}", "--format", "xml"], 2, "invalid choice: 'xml'"),
        (["fit", "{spans}", "--format", "csv", "--chunk-size", "64"], 1, "lacks"),
        (["fit", "{bad}", "--chunk-size", "64"], 1, "'t_end' must be greater"),
        (
            [
                "fit",
                "{smoke}",
                "--algo",
                "baseline",
                "--correction-mode",
                "beta_informed",
                "--chunk-size",
                "64",
            ],
            1,
            "needs the iterative estimator",
        ),
        ([], 2, "required: command"),
    ],
)
def test_bad_input_is_one_line_on_stderr(capsys, tmp_path, argv, code, message):
    smoke = data_path("smoke.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(smoke.read_text().replace("A,prefill,0.0,2.0", "A,prefill,3.0,2.0"))
    argv = [a.format(smoke=smoke, spans=SPANS, bad=bad) for a in argv]
    got, out, err = run(capsys, *argv)
    assert got == code
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sklearn-beta: error: ")
    assert message in err
    assert "Traceback" not in err


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
