"""A client-side phase table's prefill phases cut to the steps that ran their
prompts (``prefill_steps_of_client_phases``), and the command line's
phase-exposure fit of client-side CSV tables that fits them (issue 19: the
phase fit took the client's time as step time)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from test_replayed_overheads import BETA, ENGINE, client_trace

from sklearn_beta.engine_config._trace_fit import (
    PREFILL_WINDOW_STEPS,
    prefill_steps_of_client_phases,
)
from sklearn_beta.replay import what_if_latencies


def table(rows):
    return pd.DataFrame(
        rows,
        columns=[
            "request_id",
            "phase_type",
            "t_start",
            "t_end",
            "prefill_tokens",
            "decode_tokens",
            "instance_id",
        ],
    )


HAND = table(
    [
        # decode steps of 0.1 s: 1.5 of them before the first token
        (0, "prefill", 0.0, 1.0, 300, 0, 0),
        (0, "decode", 1.0, 2.0, 0, 10, 0),
        # steps of 0.2 s reach back past the send: the send stays
        (1, "prefill", 0.95, 1.0, 300, 0, 0),
        (1, "decode", 1.0, 3.0, 0, 10, 0),
        # no decode token: no step to measure, the start stays
        (2, "prefill", 0.5, 1.2, 300, 0, 0),
        (2, "decode", 1.2, 1.2, 0, 0, 0),
        # the same request id on another instance, steps of 0.05 s
        (0, "decode", 4.0, 4.5, 0, 10, 1),
        (0, "prefill", 3.0, 4.0, 300, 0, 1),
    ]
)


def test_each_prefill_starts_its_own_decode_steps_before_its_first_token():
    cut = prefill_steps_of_client_phases(HAND)
    expected = HAND.t_start.to_numpy().copy()
    expected[0] = 1.0 - PREFILL_WINDOW_STEPS * 0.1
    expected[7] = 4.0 - PREFILL_WINDOW_STEPS * 0.05
    np.testing.assert_allclose(cut.t_start.to_numpy(), expected, rtol=0, atol=1e-12)
    # rows, order, ends and the other columns as given; the input untouched
    pd.testing.assert_frame_equal(
        cut.drop(columns="t_start"), HAND.drop(columns="t_start")
    )
    assert HAND.t_start.iloc[0] == 0.0


def test_a_chunk_cap_gives_the_prompt_its_steps():
    cut = prefill_steps_of_client_phases(HAND, chunk_size=100)
    # 300 tokens in chunks of 100: three steps of 0.1 s, 1.5 decode steps each
    assert cut.t_start.iloc[0] == pytest.approx(1.0 - 3 * PREFILL_WINDOW_STEPS * 0.1)
    assert cut.t_start.iloc[2] == 0.95  # request 1: its send


def test_renamed_columns_are_read():
    renamed = HAND.rename(columns={"t_start": "begin", "instance_id": "gpu"})
    columns = {"t_start": "begin", "instance_id": "gpu"}
    cut = prefill_steps_of_client_phases(renamed, columns=columns)
    expected = prefill_steps_of_client_phases(HAND).t_start.to_numpy()
    np.testing.assert_array_equal(cut.begin.to_numpy(), expected)


@pytest.fixture(scope="module")
def light_client(tmp_path_factory):
    phases = client_trace(
        20.0, request_delay=0.02, first_token_offset=0.005, last_token_offset=0.008
    )
    path = tmp_path_factory.mktemp("cut") / "client.csv"
    phases.to_csv(path, index=False)
    return path


def test_a_light_client_fit_forecasts_heavier_loads(capsys, light_client):
    code, out, err = run_cli(
        capsys,
        *("fit", light_client, "--estimator", "phase", "--output", "json"),
        *("--chunk-size", "none", "--token-budget", 2048, "--max-num-seqs", 64),
    )
    assert code == 0, err
    report = json.loads(out)
    beta = list(report["betas"].values())
    assert any(n.startswith("client-side times: each prefill") for n in report["notes"])
    # The simulator with these betas against the simulated truth (which
    # replays within 0.3 %): fitted at 20 req/s, the mean ITL at 20, 60 and
    # 120 req/s measured +2.4, -0.9, -0.8 %; with the prefill phases fitted
    # from the sends (before), -34, -44, -43 %.
    for rate in (20.0, 60.0, 120.0):
        phases = client_trace(
            rate, request_delay=0.02, first_token_offset=0.005, last_token_offset=0.008
        )
        decode = phases[phases.phase_type == "decode"]
        observed = ((decode.t_end - decode.t_start) / decode.decode_tokens).mean()
        replayed = what_if_latencies(phases, beta, **ENGINE).itl.mean()
        assert replayed / observed - 1 == pytest.approx(0.0, abs=0.03)
    # the truth's own forecast, the oracle's check
    truth = what_if_latencies(phases, BETA, **ENGINE).itl.mean()
    assert truth / observed - 1 == pytest.approx(0.0, abs=0.005)


def test_an_engine_side_table_is_fitted_as_given(capsys, tmp_path):
    from sklearn_beta.datasets import simulate_trace

    phases = simulate_trace(
        300, beta=BETA, arrival_rate=20.0, view="engine", random_state=0, **ENGINE
    )
    path = tmp_path / "engine.csv"
    phases.to_csv(path, index=False)
    code, out, err = run_cli(
        capsys, "fit", path, "--estimator", "phase", "--output", "json"
    )
    assert code == 0, err
    notes = json.loads(out)["notes"]
    assert not any(n.startswith("client-side times") for n in notes)
