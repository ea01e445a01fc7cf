"""``sklearn-beta fit --step-model``: the JSON schema of a trained-physics fit,
``--output blis`` (BLIS's trained-physics flags), ``--step-model auto`` and
the errors for missing inputs (issue 20 item 4)."""

from __future__ import annotations

import json
import math
import shlex

import numpy as np
import pytest
from conftest import run_cli

from sklearn_beta.core._model_config import read_model_description
from sklearn_beta.core._step_features import STEP_FEATURES
from sklearn_beta.core._trained_physics import IDENTIFIABLE_FEATURES, basis_map
from sklearn_beta.datasets import simulate_trace

QWEN = "tests/data/qwen3-14b/config.json"
CHUNK = 256
TRUE_BLIS = np.array([0.6, 0.9, 0.0, 0.0, 0.0, 40.0, 4000.0, 0.0, 2.0, 3.0])
TRUTHS = {
    "published": (5e-3, 2e-5, 8e-5),
    "attention": (5e-3, 2e-5, 4e-9, 8e-5, 2e-8),
}
TP = ("--step-model", "trained-physics", "--model-config", QWEN, "--gpu", "H100")
#: The report of a non-published fit: exactly these top-level keys.
REPORT_KEYS = {
    "schema",
    "sklearn_beta_version",
    "parameters",
    "trace",
    "chunk_size",
    "token_budget",
    "engine_config",
    "validation",
    "step_model",
    "objective",
    "coefficients",
    "confidence_level",
    "step_model_selection",
    "alphas",  # the client's overheads; null on server-side times
    "replay_calibration",  # the published step's, on client-side times
    "notes",
    "warnings",
    "fit",  # which fit and why (docs/cli.md, "Which fit")
}


def _write(path, phases):
    phases.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    directory = tmp_path_factory.mktemp("step_models")
    lengths = dict(prompt_tokens=(1024, 0.8), chunk_size=CHUNK, random_state=0)
    files = {}
    for name, beta in TRUTHS.items():
        phases = simulate_trace(
            500,
            beta=beta,
            step_model=name,
            max_num_seqs=128,
            arrival_rate=10.0,
            output_tokens=(200, 0.8),
            noise=0.02,
            **lengths,
        )
        files[name] = _write(directory / f"{name}.csv", phases)
    model = read_model_description(QWEN, gpu="H100")
    phases = simulate_trace(
        200,
        beta=basis_map(model).T @ TRUE_BLIS * 1e-6,
        step_model=STEP_FEATURES,
        max_num_seqs=64,
        arrival_rate=8.0,
        output_tokens=(100, 0.8),
        **lengths,
    )
    files["trained-physics"] = _write(directory / "tp.csv", phases)
    return files


def _fit(capsys, trace, *options):
    return run_cli(capsys, "fit", trace, "--chunk-size", CHUNK, "--quiet", *options)


def test_trained_physics_json_schema(capsys, traces):
    code, out, _ = _fit(capsys, traces["trained-physics"], *TP, "--output", "json")
    assert code == 0
    report = json.loads(out)
    assert set(report) == REPORT_KEYS | {"blis_trained_physics", "fixed_coefficients"}
    assert report["step_model"] == "trained-physics"
    assert report["objective"] == "step_count"
    assert report["step_model_selection"] is None
    assert list(report["coefficients"]) == list(IDENTIFIABLE_FEATURES)
    for entry in report["coefficients"].values():
        assert set(entry) == {"value", "interval", "unit"}
        low, high = entry["interval"]
        assert low <= entry["value"] <= high
    blis = report["blis_trained_physics"]
    assert set(blis) == {"alpha_coeffs", "beta_coeffs"}
    assert len(blis["alpha_coeffs"]) == 3 and len(blis["beta_coeffs"]) == 10
    for value in blis["alpha_coeffs"] + blis["beta_coeffs"]:
        assert isinstance(value, float) and math.isfinite(value) and value >= 0
    # BLIS's order and microseconds: the truth's identifiable coefficients
    identifiable = [0, 1, 5, 6, 8, 9]
    np.testing.assert_allclose(
        np.asarray(blis["beta_coeffs"])[identifiable],
        TRUE_BLIS[identifiable],
        rtol=1e-3,  # noise-free: the step-count objective recovers them
    )
    assert set(report["fixed_coefficients"]) == {
        "tp_allreduce",
        "per_moe_layer",
        "weights",
        "per_layer",
    }
    assert any("step_count objective" in note for note in report["notes"])


def _flag(words: list[str], flag: str) -> list[float]:
    return [float(v) for v in words[words.index(flag) + 1].split(",")]


def test_blis_output_is_the_json_values_and_a_replay_line(capsys, traces):
    trace = traces["trained-physics"]
    code, out, _ = _fit(capsys, trace, *TP, "--output", "json")
    assert code == 0
    blis = json.loads(out)["blis_trained_physics"]
    code, out, _ = _fit(capsys, trace, *TP, "--output", "blis", "--model-id", "m/x")
    assert code == 0
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    replay = [line for line in lines if line.startswith("blis replay")]
    assert len(replay) == 1
    words = shlex.split(replay[0])
    assert words[words.index("--latency-model") + 1] == "trained-physics"
    assert words[words.index("--hardware") + 1] == "H100"
    assert words[words.index("--tp") + 1] == "1"
    assert words[words.index("--model") + 1] == "m/x"
    assert _flag(words, "--alpha-coeffs") == blis["alpha_coeffs"]
    assert _flag(words, "--beta-coeffs") == blis["beta_coeffs"]
    values = dict(line.split(": ", 1) for line in lines if ": " in line)
    assert json.loads(values["beta_coeffs"]) == blis["beta_coeffs"]
    assert json.loads(values["alpha_coeffs"]) == blis["alpha_coeffs"]


@pytest.mark.parametrize("truth", list(TRUTHS))
def test_auto_picks_the_true_step_model(capsys, traces, truth):
    code, out, _ = _fit(
        capsys, traces[truth], "--step-model", "auto", "--output", "json"
    )
    assert code == 0
    report = json.loads(out)
    assert report["step_model"] == truth
    rows = report["step_model_selection"]["candidates"]
    assert [r["step_model"] for r in rows] == ["published", "attention"]
    assert [r["chosen"] for r in rows] == [m == truth for m in TRUTHS]
    for row in rows:
        assert row["held_out_error"] > 0 and row["standard_error"] >= 0
    if truth == "attention":  # the published model misses the attention terms
        errors = {r["step_model"]: r["held_out_error"] for r in rows}
        assert errors["published"] > 3 * errors["attention"]


def test_auto_with_the_baseline_compares_baseline_fits(capsys, traces):
    # The comparison's duration objective is the iterative estimator's: the
    # baseline, which has none, used to be refused ("['objective'] belong to
    # the iterative estimator") though no --objective was given.
    code, out, err = _fit(
        capsys, traces["attention"], "--step-model", "auto", "--algo", "baseline",
        "--output", "json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["objective"] == "baseline"
    rows = report["step_model_selection"]["candidates"]
    assert [r["step_model"] for r in rows] == ["published", "attention"]
    assert sum(r["chosen"] for r in rows) == 1


def test_auto_table_prints_the_comparison(capsys, traces):
    code, out, _ = _fit(capsys, traces["attention"], "--step-model", "auto")
    assert code == 0
    assert "held-out error" in out and "+- se" in out and "chosen" in out
    chosen = [line for line in out.splitlines() if line.rstrip().endswith("*")]
    assert len(chosen) == 1 and chosen[0].split()[0] == "attention"


def test_feature_list_and_published_json(capsys, traces):
    code, out, _ = _fit(
        capsys,
        traces["attention"],
        "--step-model",
        "steps,prefill_tokens,prefill_attention,decode_tokens,decode_context",
        "--output",
        "json",
    )
    assert code == 0
    report = json.loads(out)
    assert set(report) == REPORT_KEYS
    assert list(report["coefficients"]) == list(
        ("steps", "prefill_tokens", "prefill_attention", "decode_tokens")
        + ("decode_context",)
    )
    fitted = [c["value"] for c in report["coefficients"].values()]
    np.testing.assert_allclose(fitted, TRUTHS["attention"], rtol=0.1)
    code, out, _ = _fit(capsys, traces["published"], "--output", "json")
    assert code == 0 and json.loads(out)["step_model"] == "published"


@pytest.mark.parametrize(
    "options, message",
    [
        (("--step-model", "trained-physics"), "needs --model-config and --gpu"),
        (("--step-model", "trained-physics", "--gpu", "H100"), "needs --model-config"),
        (
            ("--step-model", "trained-physics", "--model-config", QWEN),
            "needs --gpu",
        ),
        ((*TP[:-1], "B200"), "--gpu must be one of"),
        (("--model-config", QWEN, "--gpu", "H100"), "does not use it"),
        (("--output", "blis"), "--output blis-blackbox"),
        (("--step-model", "attention", "--output", "blis"), "trained-physics fit"),
        (("--step-model", "attention", "--output", "blis-blackbox"), "published"),
        (("--step-model", "steps,kv"), "comma list"),
        ((*TP[:3], "missing.json", "--gpu", "H100"), "--model-config"),
    ],
)
def test_missing_or_wrong_inputs_are_usage_errors(capsys, traces, options, message):
    code, out, err = _fit(capsys, traces["published"], *options)
    assert code == 2 and out == ""
    assert err.startswith("sklearn-beta: error: ") and message in err
    assert len(err.splitlines()) == 1


def test_auto_with_a_model_config_compares_trained_physics(capsys, traces):
    trace = traces["trained-physics"]
    code, out, _ = _fit(
        capsys, trace, "--step-model", "auto", *TP[2:], "--output", "json"
    )
    assert code == 0
    report = json.loads(out)
    rows = report["step_model_selection"]["candidates"]
    assert [r["step_model"] for r in rows] == [
        "published",
        "attention",
        "trained-physics",
    ]
    assert [r["n_coefficients"] for r in rows] == [3, 5, 6]
    # the truth has a per-request term that neither other model has
    assert report["step_model"] == "trained-physics"
    assert len(report["blis_trained_physics"]["beta_coeffs"]) == 10


def test_auto_under_a_budget_and_no_chunk_cap_fits_every_candidate(capsys, traces):
    # Under a budget and no chunk cap prefill groups serve one prompt at a
    # time, for every step feature (docs/method.md 5.1): each candidate is
    # fitted and scored.
    code, out, _ = run_cli(
        capsys,
        "fit",
        traces["published"],
        "--token-budget",
        2048,
        "--quiet",
        "--step-model",
        "auto",
        "--output",
        "json",
    )
    assert code == 0
    report = json.loads(out)
    rows = {r["step_model"]: r for r in report["step_model_selection"]["candidates"]}
    assert all(r["held_out_error"] is not None for r in rows.values())
    assert sum(r["chosen"] for r in rows.values()) == 1
