"""Simulator exports: BLIS models: entries, llm-d options, request overheads."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sklearn_beta.datasets import simulate_trace
from sklearn_beta.export import (
    BLIS_MODEL_KEYS,
    blis_model_entry,
    format_blis_models,
    format_llm_d_config,
    llm_d_latencies,
    request_overheads,
    to_blis_coefficients,
)

TRUE_BETA = np.array([4e-3, 3e-5, 2e-4])


def test_blis_entry_has_exactly_the_blackbox_keys_in_microseconds():
    entry = blis_model_entry(TRUE_BETA, alpha=[1e-3, 2e-6, 5e-5], gpu="A100")
    assert tuple(entry) == BLIS_MODEL_KEYS
    assert entry["beta_coeffs"] == [4000.0, 30.0, 200.0]
    assert entry["alpha_coeffs"] == [1000.0, 2.0, 50.0]
    assert entry["GPU"] == "A100" and entry["id"] == "unknown-model"
    with_loss = blis_model_entry(TRUE_BETA, best_loss=0.25)
    assert tuple(with_loss) == (*BLIS_MODEL_KEYS, "best_loss")


def test_blis_document_parses_back_to_the_entry():
    entry = blis_model_entry(
        TRUE_BETA, model_id='org/model "x": v2', tensor_parallelism=4, total_kv_blocks=9
    )
    text = format_blis_models(entry, ["two\nlines of comment"])
    assert text.startswith("# two\n# lines of comment\nmodels:\n  - id: ")
    assert yaml.safe_load(text) == {"models": [entry]}


def test_beta_must_be_three_non_negative_numbers():
    with pytest.raises(ValueError, match="three finite, non-negative"):
        to_blis_coefficients([1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="three finite, non-negative"):
        blis_model_entry(TRUE_BETA, alpha=[0.0, 0.0])


def test_request_overheads_recover_a_known_line():
    prompt = np.array([10, 200, 1000, 4000])
    prefill = 2e-3 + 1e-6 * prompt
    decode_tokens = np.array([10, 30])
    alpha = request_overheads(prefill, prompt, 5e-5 * decode_tokens, decode_tokens)
    np.testing.assert_allclose(alpha, [2e-3, 1e-6, 5e-5], rtol=1e-9)
    # Negative overheads are not overheads: clipped at zero.
    alpha = request_overheads(-prefill, prompt, -decode_tokens * 1.0, decode_tokens)
    np.testing.assert_array_equal(alpha, [0.0, 0.0, 0.0])


def test_llm_d_latencies_match_lone_requests_of_the_simulator():
    """Requests alone on the engine: the step simulator is the oracle."""
    chunk = 256
    phases = simulate_trace(
        60,
        beta=TRUE_BETA,
        chunk_size=chunk,
        max_num_seqs=4,
        arrival_rate=0.01,
        prompt_tokens=(700, 0.8),
        output_tokens=(20, 0.3),
        random_state=0,
    )
    duration = (phases["t_end"] - phases["t_start"]).to_numpy()
    prefill = (phases["phase_type"] == "prefill").to_numpy()
    prompt = phases.loc[prefill, "prefill_tokens"].to_numpy()
    latencies = llm_d_latencies(TRUE_BETA, chunk_size=chunk)
    line = latencies["prefill-overhead"] + prompt * latencies["prefill-time-per-token"]
    error = line - duration[prefill]
    assert np.abs(error).max() <= TRUE_BETA[0] / 2 + 1e-12
    assert abs(error.mean()) < TRUE_BETA[0] / 8  # right on average
    decode_tokens = phases.loc[~prefill, "decode_tokens"].to_numpy()
    np.testing.assert_allclose(
        duration[~prefill] / decode_tokens, latencies["inter-token-latency"]
    )


def test_llm_d_config_is_yaml_with_go_durations():
    latencies = llm_d_latencies(TRUE_BETA, chunk_size=256, alpha=[1e-3, 0, 1e-6])
    config = yaml.safe_load(format_llm_d_config(latencies, ["made by a test"]))
    assert config == {
        "latency-calculator": "per-token",
        "prefill-overhead": "3000us",
        "prefill-time-per-token": "45.625us",
        "inter-token-latency": "4201us",
    }
