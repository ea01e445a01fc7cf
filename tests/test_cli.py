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
from conftest import data_path, load_golden, run_cli

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


WARNING = "sklearn-beta: warning: "


def warning_messages(err: str) -> list[str]:
    """The messages of a stderr that must hold warning lines and nothing else."""
    lines = err.splitlines()
    assert all(line.startswith(WARNING) for line in lines), err
    return [line[len(WARNING) :] for line in lines]


def test_json_output_reproduces_the_reference_iterative_fit(capsys):
    smoke = data_path("smoke.csv")
    reference = ("--correction-mode", "beta_informed", "--objective", "duration")
    reference += ("--stopping", "absolute")
    code, out, err = run_cli(
        capsys, "fit", smoke, "--chunk-size", 64, *reference, "--output", "json"
    )
    assert code == 0
    report = json.loads(out)
    # Two requests: the betas' intervals are wide, and the fit says so.
    assert warning_messages(err) == report["warnings"] != []
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
    code, out, _ = run_cli(
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
    import matplotlib  # noqa: F401

    code, out, err = run_cli(
        capsys, "fit", SPANS, "--output", "blis-blackbox", "--plot", tmp_path / "plots"
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
        "replay.png",
        "residuals.png",
    ]


def test_table_output_and_benchmark_format(capsys):
    code, out, _ = run_cli(
        capsys, "fit", BENCH, "--chunk-size", 256, "--algo", "baseline"
    )
    assert code == 0
    assert "(bench, 120 phases, 60 requests, 1 instance(s))" in out
    assert re.search(r"^beta2\s+\S+\s+s/decode_token\s+\S+(\s+\[.*\])?$", out, re.M)


def test_progress_only_on_a_terminal(capsys, monkeypatch):
    smoke = data_path("smoke.csv")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    reference = ("--correction-mode", "beta_informed", "--objective", "duration")
    code, _, err = run_cli(
        capsys, "fit", smoke, "--chunk-size", 64, *reference, "--stopping", "absolute"
    )
    assert code == 0
    assert len(re.findall(r"^  iter +\d+ +beta0=.* change=", err, re.M)) == 7
    code, _, err = run_cli(capsys, "fit", smoke, "--chunk-size", 64, "--quiet")
    assert code == 0 and "iter" not in err
    assert len(warning_messages(err)) == 4  # --quiet keeps the fit's warnings


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
        (["fit", "{smoke}", "--bogus"], 2, "--bogus (see 'sklearn-beta fit --help')"),
        (["bogus"], 2, "(see 'sklearn-beta --help')"),
    ],
)
def test_bad_input_is_one_line_on_stderr(capsys, tmp_path, argv, code, message):
    """Under the default --chunk-size auto: checked before any search."""
    files = bad_traces(tmp_path)
    argv = [a.format(**files) for a in argv]
    got, out, err = run_cli(capsys, *argv)
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


def write_tracev2(phases: pd.DataFrame, path, *, uplink=0.002, downlink=0.001):
    """A TraceV2 CSV of simulated phases as a client would log them."""
    pf = phases[phases.phase_type == "prefill"].set_index("request_id")
    de = phases[phases.phase_type == "decode"].set_index("request_id")
    jitter = np.random.default_rng(1).uniform(0, 5e-4, len(pf))
    us = lambda t: np.round(np.asarray(t) * 1e6).astype(np.int64)  # noqa: E731
    table = pd.DataFrame(
        {
            "request_id": pf.index,
            "input_tokens": pf.prefill_tokens.to_numpy() + 7,  # client's count
            "output_tokens": de.decode_tokens.reindex(pf.index).to_numpy() + 1,
            "server_input_tokens": pf.prefill_tokens.to_numpy(),
            "send_time_us": us(pf.t_start - uplink - jitter),
            "first_chunk_time_us": us(pf.t_end + downlink),
            "last_chunk_time_us": us(de.t_end.reindex(pf.index) + downlink),
            "status": "ok",
        }
    )
    failed = table.iloc[:2].assign(status="error")
    pd.concat([table, failed]).to_csv(path, index=False)


def test_tracev2_light_load_within_one_percent_of_the_step_time(capsys, tmp_path):
    phases = simulate_trace(
        300,
        beta=TRUE_BETA,
        chunk_size=256,
        max_num_seqs=16,
        arrival_rate=1.0,
        random_state=0,
    )
    write_tracev2(phases, tmp_path / "trace.csv")
    (tmp_path / "trace.yaml").write_text("trace_version: 2\ntime_unit: us\n")
    code, out, err = run_cli(
        capsys,
        "fit",
        tmp_path / "trace.csv",
        "--trace-header",
        tmp_path / "trace.yaml",
        "--chunk-size",
        256,
        "--output",
        "json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["parameters"]["format"] == "tracev2"  # recognised by columns
    assert any("2 TraceV2 request(s)" in n for n in report["notes"])
    beta = np.array(list(report["betas"].values()))
    probes = np.array([[1, 256, 0], [1, 0, 1], [1, 0, 16], [1, 256, 16], [1, 64, 4]])
    error = probes @ beta / (probes @ TRUE_BETA) - 1
    assert np.abs(error).max() < 0.01, error
    # The client adds 2 + 1 ms and up to 0.5 ms of jitter to every prefill.
    assert 3e-3 < report["alphas"][0] < 3.6e-3


def test_decode_tokens_include_first_flag_states_the_export_convention(
    capsys, tmp_path
):
    phases = simulate_trace(
        150,
        beta=TRUE_BETA,
        chunk_size=64,
        max_num_seqs=8,
        arrival_rate=20.0,
        prompt_tokens=(200, 0.5),
        output_tokens=(30, 0.5),
        random_state=4,
    )
    # An export that counts every output token: the simulator's D decode
    # steps plus the first token, which the last prefill step emitted.
    decode = phases["phase_type"] == "decode"
    counted = phases.assign(decode_tokens=phases["decode_tokens"] + decode)
    path = tmp_path / "counted.csv"
    counted.to_csv(path, index=False)
    fixed = ("--chunk-size", 64, "--output", "json")
    code, out, err = run_cli(
        capsys, "fit", path, *fixed, "--decode-tokens-include-first"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["parameters"]["decode_tokens_include_first"] is True
    np.testing.assert_allclose(list(report["betas"].values()), TRUE_BETA, rtol=1e-3)
    code, out, _ = run_cli(capsys, "fit", path, *fixed)
    wrong = json.loads(out)
    assert wrong["parameters"]["decode_tokens_include_first"] is False
    assert np.abs(np.array(list(wrong["betas"].values())) / TRUE_BETA - 1).max() > 0.02


def test_fleet_with_instance_id_is_fitted_per_instance(capsys, tmp_path):
    phases = simulate_trace(
        80,
        beta=TRUE_BETA,
        chunk_size=64,
        max_num_seqs=8,
        arrival_rate=30.0,
        n_instances=2,
        prompt_tokens=(200, 0.5),
        output_tokens=(30, 0.5),
        random_state=3,
    )
    assert "instance_id" in phases.columns
    path = tmp_path / "fleet.csv"
    phases.to_csv(path, index=False)
    fixed = ("--chunk-size", 64, "--output", "json")
    code, out, _ = run_cli(capsys, "fit", path, *fixed)
    found = json.loads(out)
    assert any("instance column 'instance_id' found" in n for n in found["notes"])
    assert found["trace"]["n_instances"] == 2
    code, out, _ = run_cli(capsys, "fit", path, *fixed, "--instance-col", "instance_id")
    np.testing.assert_allclose(
        list(found["betas"].values()),
        list(json.loads(out)["betas"].values()),
        rtol=1e-12,
    )
    np.testing.assert_allclose(list(found["betas"].values()), TRUE_BETA, rtol=1e-3)
    code, out, _ = run_cli(capsys, "fit", path, *fixed, "--instance-col", "none")
    one = np.array(list(json.loads(out)["betas"].values()))
    assert np.abs(one / TRUE_BETA - 1).max() > 0.05  # one engine: wrong


def test_time_unit_and_the_implausible_step_warning(capsys, tmp_path):
    phases = simulate_trace(
        30,
        beta=TRUE_BETA,
        chunk_size=64,
        max_num_seqs=4,
        arrival_rate=5.0,
        prompt_tokens=(100, 0.5),
        output_tokens=(20, 0.5),
        random_state=0,
    )
    path = tmp_path / "ms.csv"
    phases.assign(t_start=phases.t_start * 1e3, t_end=phases.t_end * 1e3).to_csv(
        path, index=False
    )
    code, out, err = run_cli(
        capsys, "fit", path, "--chunk-size", 64, "--output", "json"
    )
    assert code == 0
    assert err.startswith("sklearn-beta: warning: beta0 = 4 s per step is implausible")
    assert json.loads(out)["warnings"][0].startswith("beta0 = 4 s per step")
    code, out, err = run_cli(
        capsys, "fit", path, "--chunk-size", 64, "--time-unit", "ms", "--output", "json"
    )
    assert err == ""
    np.testing.assert_allclose(
        list(json.loads(out)["betas"].values()), TRUE_BETA, rtol=1e-6
    )


def test_blis_entry_from_options_and_llm_d_config(capsys, tmp_path):
    options = ("--chunk-size", 256, "--model-id", "meta-llama/Llama-3.1-8B-Instruct")
    options += ("--gpu", "H100", "--tensor-parallelism", 2, "--vllm-version", "0.11.0")
    code, out, _ = run_cli(
        capsys,
        "fit",
        SPANS,
        *options,
        "--total-kv-blocks",
        4096,
        "--output",
        "blis-blackbox",
    )
    entry = check_blis_document(out)
    assert entry["id"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (entry["GPU"], entry["tensor_parallelism"]) == ("H100", 2)
    assert (entry["vllm_version"], entry["total_kv_blocks"]) == ("0.11.0", 4096)
    assert "placeholders" not in out
    code, out, _ = run_cli(
        capsys, "fit", SPANS, "--chunk-size", 256, "--output", "llm-d"
    )
    config = yaml.safe_load(out)
    assert config["latency-calculator"] == "per-token"
    # beta0/2 = 2 ms; beta1 + beta0/C = 30 + 15.6 us; beta0 + beta2 = 4.2 ms.
    values = [config[k] for k in ("prefill-overhead", "prefill-time-per-token")]
    values.append(config["inter-token-latency"])
    assert all(re.fullmatch(r"\d+(\.\d+)?us", v) for v in values)
    np.testing.assert_allclose(
        [float(v[:-2]) for v in values], [2000, 45.625, 4200], rtol=1e-2
    )


def test_help_documents_every_option_and_its_default(capsys):
    assert main(["fit", "--help"]) == 0
    help_text = capsys.readouterr().out
    usage = help_text[: help_text.index("\n\n")]
    options = sorted(set(re.findall(r"\[(--[a-z-]+)", usage)) - {"--help"})
    # 30 + --step-model, --model-config + --max-num-seqs, --num-gpu-blocks,
    # --block-size
    assert len(options) == 36  # and --estimator
    entries = {
        block.split()[0]: block
        for block in re.split(r"\n(?=  -)", help_text)
        if block.startswith("  --")
    }
    assert sorted(entries) == options
    for option, block in entries.items():
        assert "(default: " in " ".join(block.split()), option


def test_broken_pipe_is_quiet(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = (
        f"{sys.executable} -m sklearn_beta.cli fit {SPANS} --chunk-size 256 "
        "--output json | head -1"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.stdout == "{\n"
    assert done.stderr == "" and done.returncode == 0


def test_plot_without_matplotlib_still_prints_the_fit(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, out, err = run_cli(
        capsys, "fit", SPANS, "--chunk-size", 256, "--plot", tmp_path / "plots"
    )
    assert code == 0
    assert "beta0         4.000000e-03" in out
    assert err.startswith("sklearn-beta: warning: --plot needs matplotlib")
    assert err.count("\n") == 1


def budgeted_trace(tmp_path, n=300, **engine) -> Path:
    """vLLM V1 stand-in: a token budget, no chunk cap, prompts over it."""
    engine = {
        "chunk_size": 10**6,
        "token_budget": 512,
        "max_num_seqs": 16,
        "arrival_rate": 8.0,
        "prompt_tokens": (600, 0.8),
        "output_tokens": (60, 0.6),
        **engine,
    }
    phases = simulate_trace(
        n, beta=(8e-3, 2.5e-5, 6e-5), noise=0.05, random_state=0, **engine
    )
    path = tmp_path / "budgeted.csv"
    phases.to_csv(path, index=False)
    return path


def test_fully_automatic_fit_reports_engine_and_held_out_replay(capsys, tmp_path):
    path = budgeted_trace(tmp_path)
    candidates = ("--budget-candidates", "512,1024,2048")
    code, out, err = run_cli(capsys, "fit", path, *candidates, "--output", "json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["chunk_size"], report["token_budget"]) == (None, 512)
    assert report["parameters"]["model_chunk_size"] == 512
    engine = report["engine_config"]
    chunks = report["parameters"]["chunk_candidates"]
    assert len(engine["candidates"]) == len(chunks) + 3 + 1
    assert engine["runner_up"] is not None and engine["margin"] > 0
    validation = report["validation"]
    assert validation["n_splits"] == report["parameters"]["cv_folds"] == 3
    for quantity in ("prefill", "ttft", "decode", "e2e"):
        assert 0 < validation[quantity] < 1
        assert len(validation["folds"][quantity]) == 3
    ci = report["confidence_interval"]
    if ci is not None:  # regressors with beta_ci_
        assert 0 < ci["level"] < 1
        for name, value in report["betas"].items():
            low, high = ci[name]
            assert low <= value <= high
    code, out, err = run_cli(capsys, "fit", path, *candidates)
    assert "engine      token budget 512, no chunk cap (held-out replay" in out
    assert "held-out replay (3 time blocks" in out and "decode" in out


def test_engine_settings_skip_the_search(capsys, tmp_path):
    path = budgeted_trace(tmp_path, n=150)
    code, out, _ = run_cli(
        capsys, "fit", path, "--token-budget", 512, "--output", "json"
    )
    report = json.loads(out)
    assert (report["chunk_size"], report["token_budget"]) == (None, 512)
    assert len(report["engine_config"]["candidates"]) == 1
    assert report["engine_config"]["runner_up"] is None
    code, out, _ = run_cli(
        capsys, "fit", path, "--chunk-size", "none", "--output", "json"
    )
    report = json.loads(out)
    assert (report["chunk_size"], report["token_budget"]) == (None, None)
    assert report["validation"]["decode"] > 0


def test_edge_warning_is_one_line_on_stderr(capsys, tmp_path):
    path = budgeted_trace(tmp_path, n=200, token_budget=None, chunk_size=32)
    code, out, err = run_cli(
        capsys,
        "fit",
        path,
        "--chunk-candidates",
        "64,128",
        "--budget-candidates",
        "4096",
        "--output",
        "json",
    )
    assert code == 0 and "Traceback" not in err
    report = json.loads(out)
    # One line per warning: the edge first, then those of the fit reported.
    assert warning_messages(err) == report["warnings"]
    assert err.startswith("sklearn-beta: warning: The engine configuration chosen")
    assert "Runner-up: chunk_size=128" in err.splitlines()[0]
    assert report["chunk_size"] == 64 and report["engine_config"]["edge"] == "low"
    assert any("smallest" in w for w in report["warnings"])


def test_a_set_engine_without_enough_requests_for_folds_is_noted(capsys):
    smoke = data_path("smoke.csv")  # two requests
    code, out, err = run_cli(
        capsys, "fit", smoke, "--chunk-size", 64, "--output", "json"
    )
    assert code == 0
    report = json.loads(out)
    assert warning_messages(err) == report["warnings"]
    assert report["validation"] is None and report["engine_config"] is None
    assert any("no held-out replay validation" in n for n in report["notes"])
    code, out, err = run_cli(capsys, "fit", smoke)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "--chunk-size N or --token-budget B" in err


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_vllm_request_stats_are_recognised_and_fitted(capsys, tmp_path, suffix):
    phases = simulate_trace(
        300,
        beta=TRUE_BETA,
        chunk_size=256,
        max_num_seqs=16,
        arrival_rate=2.0,
        random_state=0,
    )
    pre = phases[phases["phase_type"] == "prefill"].set_index("request_id")
    dec = phases[phases["phase_type"] == "decode"].set_index("request_id")
    stats = pd.DataFrame(
        {
            "request_id": pre.index,
            "queued_ts": pre["t_start"].to_numpy() - 0.01,
            "scheduled_ts": pre["t_start"].to_numpy(),
            "first_token_ts": pre["t_end"].to_numpy(),
            "last_token_ts": dec.loc[pre.index, "t_end"].to_numpy(),
            "num_prompt_tokens": pre["prefill_tokens"].to_numpy(),
            "num_generation_tokens": dec.loc[pre.index, "decode_tokens"].to_numpy() + 1,
        }
    )
    path = tmp_path / f"stats{suffix}"
    if suffix == ".csv":
        stats.to_csv(path, index=False)
    else:
        stats.to_json(path, orient="records", lines=True, double_precision=15)
    phases.to_csv(tmp_path / "phases.csv", index=False)
    options = ["--chunk-size", 256, "--output", "json"]
    code, out, err = run_cli(capsys, "fit", path, *options)
    assert code == 0, err
    report = json.loads(out)
    assert report["parameters"]["format"] == "vllm-stats"
    code, out, err = run_cli(capsys, "fit", tmp_path / "phases.csv", *options)
    assert code == 0, err
    reference = json.loads(out)
    # The same phases as the simulator's table, so the same fit.
    np.testing.assert_allclose(
        list(report["betas"].values()), list(reference["betas"].values()), rtol=1e-6
    )
    beta = np.array(list(report["betas"].values()))
    probes = np.array([[1, 256, 0], [1, 0, 1], [1, 0, 16], [1, 256, 16], [1, 64, 4]])
    assert np.abs(probes @ beta / (probes @ TRUE_BETA) - 1).max() < 0.01


#: An engine whose decode tokens cost nothing: every fit of its trace puts
#: beta2 on its zero bound, and says so.
ZERO_BETA2 = (8e-3, 2.5e-5, 0.0)


@pytest.fixture(scope="module")
def zero_beta2_trace(tmp_path_factory) -> Path:
    """A client-side (TraceV2) trace: its phase-exposure fit
    (``--estimator phase``) chooses the prefill phases' window with a fit
    per window tried, each of which warns."""
    phases = simulate_trace(
        120,
        beta=ZERO_BETA2,
        chunk_size=256,
        max_num_seqs=16,
        arrival_rate=4.0,
        noise=0.05,
        random_state=0,
    )
    path = tmp_path_factory.mktemp("zero_beta2") / "trace.csv"
    write_tracev2(phases, path)
    return path


def zero_bound_line(report: dict) -> str:
    """The warning line of a reported fit with beta2 at 0, from its interval."""
    interval = report["confidence_interval"]
    low, high = interval["beta2"]
    return (
        f"{WARNING}IterativeBetaRegressor: beta2 = 0 is at its zero bound "
        f"({interval['level']:.0%} interval [{low:.4g}, {high:.4g}]): the "
        "non-negativity constraint, not the trace, set it. Check the engine "
        "settings (chunk_size, token_budget) and the decode token convention, "
        "or use a trace with more varied load."
    )


def assert_no_python_warning_dump(err: str) -> None:
    for line in err.splitlines():
        assert ".py:" not in line and not line.startswith(" "), line
        assert "regressor.fit(" not in line and "Warning: " not in line, line


def count_warnings_of(monkeypatch, module, name: str) -> list[int]:
    """Wrap ``module.name`` so that each call's warnings are counted, then
    raised again as the call would have raised them."""
    import warnings

    real, counts = getattr(module, name), []

    def counted(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = real(*args, **kwargs)
        counts.append(len(caught))
        for record in caught:
            warnings.warn(record.message, stacklevel=2)
        return result

    monkeypatch.setattr(module, name, counted)
    return counts


def test_fit_warnings_are_one_line_each_about_the_fit_reported(
    capsys, monkeypatch, zero_beta2_trace
):
    from sklearn_beta.engine_config import _trace_fit

    trials = count_warnings_of(monkeypatch, _trace_fit, "fit_trace")
    # the phase-exposure path's choice of the prefill window (a client-side
    # trace takes the schedule fit by default)
    fixed = ("--chunk-size", 256, "--output", "json", "--estimator", "phase")
    code, out, err = run_cli(capsys, "fit", zero_beta2_trace, *fixed)
    assert code == 0
    report = json.loads(out)
    assert report["betas"]["beta2"] == 0.0  # the truth, on the bound
    assert 0 < report["confidence_interval"]["beta2"][1] < 5e-5
    # Exactly the reported fit's one warning, its interval that of the report.
    assert err.splitlines() == [zero_bound_line(report)]
    assert report["warnings"] == [err.splitlines()[0][len(WARNING) :]]
    assert_no_python_warning_dump(err)
    # One fit per window and each one warned (Python showed the Brent
    # search's 14 distinct messages as 14 two-line dumps).
    assert len(trials) == len(_trace_fit.PREFILL_WINDOWS), trials
    assert all(n >= 1 for n in trials), trials
    monkeypatch.undo()

    code, quiet_out, quiet_err = run_cli(
        capsys, "fit", zero_beta2_trace, *fixed, "--quiet"
    )
    assert (code, quiet_out, quiet_err) == (0, out, err)
    code, strict_out, strict_err = run_cli(
        capsys, "fit", zero_beta2_trace, *fixed, "--strict"
    )
    assert (code, strict_out, strict_err) == (1, out, err)  # report, lines, exit 1


def test_engine_search_candidates_warn_nothing(capsys, monkeypatch, zero_beta2_trace):
    from sklearn_beta.model_selection import TraceContextRegressor

    fits = count_warnings_of(monkeypatch, TraceContextRegressor, "fit")
    candidates = ("--chunk-candidates", "128,256", "--budget-candidates", "2048")
    code, out, err = run_cli(
        capsys,
        "fit",
        zero_beta2_trace,
        *candidates,
        "--output",
        "json",
        "--estimator",
        "phase",
    )
    assert code == 0
    report = json.loads(out)
    assert len(report["engine_config"]["candidates"]) == 4
    assert report["chunk_size"] == 256 and report["betas"]["beta2"] == 0.0
    assert warning_messages(err) == report["warnings"]
    assert err.splitlines() == [zero_bound_line(report)]
    assert_no_python_warning_dump(err)
    # The search fitted each candidate on its folds, and every such fit
    # warned (25 warnings over 10 fits when written): none reached stderr.
    assert len(fits) >= 4 and all(n >= 1 for n in fits), fits


def test_strict_and_the_warning_lines_from_the_module_entry(zero_beta2_trace, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sklearn_beta.cli", "fit", str(zero_beta2_trace)]
        + ["--chunk-size", "256", "--output", "json", "--quiet", "--strict"]
        + ["--estimator", "phase"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)  # the report is printed all the same
    assert done.stderr.splitlines() == [zero_bound_line(report)]
    assert_no_python_warning_dump(done.stderr)


def test_warning_lines_fold_each_message_once():
    import warnings

    from sklearn_beta.cli._main import warning_lines

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            warnings.warn("beta2 is\n  at its bound:\tcheck", UserWarning, stacklevel=1)
        warnings.warn("beta2 is at its bound: check", RuntimeWarning, stacklevel=1)
        warnings.warn("another", UserWarning, stacklevel=1)
    assert len(caught) == 5
    assert warning_lines(caught) == ["beta2 is at its bound: check", "another"]


def test_the_trace_headers_server_section_sets_the_engine(capsys, tmp_path):
    data = REPO / "data" / "tracev2"
    header = tmp_path / "header.yaml"
    header.write_text(
        (data / "header.yaml").read_text()
        + "  max_num_batched_tokens: 2048\n  num_gpu_blocks: 4000\n  block_size: 32\n"
    )
    trace = (data / "trace.csv", "--trace-header", header, "--output", "json")
    code, out, err = run_cli(capsys, "fit", *trace, "--max-num-seqs", 20)
    assert code == 0, err
    report = json.loads(out)
    assert (
        "engine settings from the trace header's server section: token_budget "
        "2048, num_gpu_blocks 4000, block_size 32 (the command line's "
        "--max-num-seqs 20 kept)"
    ) in report["notes"]
    settings = report["engine_settings"]
    assert [settings[k]["value"] for k in ("max_num_seqs", "num_gpu_blocks")] == [
        20,
        4000,
    ]
    assert settings["block_size"]["value"] == 32
    assert (report["token_budget"], report["chunk_size"]) == (2048, None)
