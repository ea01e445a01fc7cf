"""The betas of a client-side trace calibrated by replaying its sends
(``calibrate_by_replay``), and the command line's phase fit that reports
them (issue 19: near saturation, the phase fit's few per cent on a step
moved the forecast queue by much more)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine._replay import replay_trace
from sklearn_beta.engine_config._replay_calibration import (
    calibrate_by_replay,
    replay_mismatch,
)

BETA = np.array([5e-3, 2e-5, 1e-4])
ENGINE = dict(chunk_size=None, token_budget=2048, max_num_seqs=64)


@pytest.fixture(scope="module")
def busy_client():
    """A client-side trace near the engine's cap (64 running), overheads
    that jitter request by request: a lognormal of CV 0.5 about 20 ms."""
    rng = np.random.RandomState(3)
    n = 600
    sigma = np.sqrt(np.log1p(0.25))
    delay = 0.02 * np.exp(sigma * rng.standard_normal(n) - 0.5 * sigma**2)
    return simulate_trace(
        n,
        beta=BETA,
        arrival_rate=60.0,
        noise=0.02,
        view="client",
        random_state=3,
        prompt_tokens=(400, 0.5),
        output_tokens=(100, 0.5),
        request_delay=delay,
        first_token_offset=0.005,
        **ENGINE,
    )


def test_the_replay_of_the_true_betas_mismatches_least(busy_client):
    # the objective's oracle: the simulator's own betas against 5 % off
    truth = replay_mismatch(
        replay_trace(busy_client, BETA, arrival="arrival", **ENGINE)
    )
    for k in range(3):
        for factor in (0.95, 1.05):
            beta = BETA.copy()
            beta[k] *= factor
            replayed = replay_trace(busy_client, beta, arrival="arrival", **ENGINE)
            assert replay_mismatch(replayed) > truth


def test_betas_off_by_ten_per_cent_come_back(busy_client):
    start = BETA * np.array([0.9, 1.1, 0.85])
    found = calibrate_by_replay(busy_client, start, prior_weight=0.0, **ENGINE)
    assert found.converged and found.mismatch < found.mismatch_start
    np.testing.assert_array_equal(found.start, start)
    # the step of the trace's mean batch, its prompt and decode tokens
    probes = np.array([[1, 400, 0], [1, 0, 40], [1, 400, 40]])
    error = probes @ found.beta / (probes @ BETA) - 1
    # the decode phases tell a prompt's step least: measured -1.5 %, the
    # others within 0.8 %
    assert np.abs(error).max() < 0.02, error
    before = probes @ start / (probes @ BETA) - 1
    assert np.abs(before).max() > 0.1


def test_the_ridge_holds_the_betas_near_the_start(busy_client):
    start = BETA * np.array([1.1, 0.9, 0.9])
    free = calibrate_by_replay(busy_client, start, prior_weight=0.0, **ENGINE)
    held = calibrate_by_replay(busy_client, start, prior_weight=10.0, **ENGINE)
    moved = lambda found: np.abs(np.log(found.beta / start)).sum()  # noqa: E731
    assert moved(held) < 0.2 * moved(free)


def test_a_beta_at_zero_is_placed_by_the_replay(busy_client):
    # the phase fit's bound says only that it could not place the beta
    found = calibrate_by_replay(busy_client, [5e-3, 0.0, 1e-4], **ENGINE)
    # from a tenth of its scale (a 400-token prompt costing a tenth of a
    # step); the trace's mean step within 1.5 %, a prompt's step 3.4 % low
    assert found.beta[1] == pytest.approx(BETA[1], rel=0.1)
    probes = np.array([[1, 400, 0], [1, 0, 40], [1, 400, 40]])
    error = probes @ found.beta / (probes @ BETA) - 1
    assert np.abs(error).max() < 0.04, error


@pytest.mark.parametrize(
    "beta, options, message",
    [
        ([0.0, 0.0, 0.0], {}, "one of them positive"),
        ([np.nan, 1e-5, 1e-4], {}, "three finite betas"),
        ([1e-3, 1e-5], {}, "three finite betas"),
        (BETA, {"prior_weight": -1.0}, "prior_weight must be >= 0"),
    ],
)
def test_bad_starts_are_refused(busy_client, beta, options, message):
    with pytest.raises(ValueError, match=message):
        calibrate_by_replay(busy_client, beta, **options, **ENGINE)


def phase_fit_report(capsys, path, *options) -> dict:
    """The command line's JSON report of the phase path on ENGINE."""
    code, out, err = run_cli(
        capsys,
        *("fit", path, "--estimator", "phase", "--output", "json", *options),
        *("--chunk-size", "none", "--token-budget", 2048, "--max-num-seqs", 64),
    )
    assert code == 0, err
    return json.loads(out)


def test_the_command_line_reports_the_calibration(capsys, tmp_path, busy_client):
    path = tmp_path / "trace.csv"
    busy_client.to_csv(path, index=False)
    report = phase_fit_report(capsys, path)
    section = report["replay_calibration"]
    beta = np.array(list(report["betas"].values()))
    start = np.array(section["phase_fit_betas"])
    assert not np.allclose(beta, start)
    assert section["mismatch"]["calibrated"] < section["mismatch"]["phase_fit"]
    assert section["n_replays"] > 3
    # the interval keeps the phase fit's widths about the calibrated betas
    interval = np.array([report["confidence_interval"][f"beta{k}"] for k in range(3)])
    assert np.all((interval[:, 0] <= beta) & (beta <= interval[:, 1]))
    notes = [n for n in report["notes"] if n.startswith("betas calibrated")]
    assert len(notes) == 1 and "max_num_seqs 64" in notes[0]


def test_auto_choosing_the_published_step_is_calibrated_as_it(
    capsys, tmp_path, busy_client
):
    path = tmp_path / "trace.csv"
    busy_client.to_csv(path, index=False)
    reports = {
        step_model: phase_fit_report(capsys, path, "--step-model", step_model)
        for step_model in ("published", "auto")
    }
    auto = reports["auto"]
    assert auto["step_model"] == "published"  # the simulator's own step
    beta = [auto["coefficients"][f"beta{k}"]["value"] for k in range(3)]
    section = auto["replay_calibration"]
    assert beta != section["phase_fit_betas"]
    assert section["mismatch"]["calibrated"] < section["mismatch"]["phase_fit"]
    assert any(n.startswith("betas calibrated by replaying") for n in auto["notes"])
    # the same phase fit and calibration as --step-model published's
    published = reports["published"]
    np.testing.assert_allclose(beta, list(published["betas"].values()), rtol=1e-6)
