"""BLIS's trained-physics basis, its identifiable coefficients and the export.

Expectations come from shared/blis/trained-physics.md: its formulas written
out with Qwen3-14B's numbers, the whole-microsecond values a build of BLIS
gave, and its alpha example.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import nnls

from sklearn_beta.core._model_config import (
    GPU_SPECS,
    ModelDescription,
    read_model_description,
)
from sklearn_beta.core._trained_physics import (
    BLIS_BETA_NAMES,
    IDENTIFIABLE_FEATURES,
    STEP_FEATURES,
    basis_map,
    blis_step_time,
    identifiable_map,
    to_blis_betas,
    trained_physics_basis,
    trained_physics_design,
)
from sklearn_beta.export import (
    BLIS_TRAINED_PHYSICS_KEYS,
    blis_alphas,
    blis_trained_physics_coeffs,
    format_blis_trained_physics,
)

DATA = Path(__file__).parent / "data"
QWEN = DATA / "qwen3-14b" / "config.json"
PACKAGED = (
    Path(__file__).parent.parent
    / "sklearn_beta"
    / "datasets"
    / "data"
    / "qwen3-14b-config.json"
)
QWEN_KEYS = {
    "num_hidden_layers": 40,
    "hidden_size": 5120,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "intermediate_size": 17408,
    "torch_dtype": "bfloat16",
}


@pytest.fixture
def qwen():
    return read_model_description(QWEN, gpu="H100", tp=1)


def write_config(tmp_path, **changes):
    config = {**QWEN_KEYS, **changes}
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def one_request_steps(prompt: int, output: int):
    """Per-step aggregates of one request alone, from the page's definitions."""
    # One unchunked prefill step (it emits the first token), then output - 1
    # decode steps; in the k-th decode step c = prompt + k - 1.
    T_p = [prompt] + [0] * (output - 1)
    A_p = [prompt * (prompt + prompt / 2)] + [0] * (output - 1)
    T_d = [0] + [1] * (output - 1)
    C_d = [0] + [prompt + k - 1 for k in range(1, output)]
    B = [1] * output
    return T_p, A_p, T_d, C_d, B


def unit(k: int) -> np.ndarray:
    beta = np.zeros(10)
    beta[k] = 1.0
    return beta


# --- the model description ---------------------------------------------------


def test_qwen3_14b_config_reads_as_the_page_states(qwen):
    assert (qwen.n_layers, qwen.hidden_size, qwen.n_heads) == (40, 5120, 40)
    assert (qwen.n_kv_heads, qwen.intermediate_size, qwen.bytes_per_param) == (
        8,
        17408,
        2,
    )
    assert (qwen.head_dim, qwen.kv_dim) == (128.0, 1024.0)
    assert qwen.flops_per_us == 989.5e6 and qwen.bytes_per_us == 3.35e6
    assert qwen.name == "Qwen/Qwen3-14B"
    packaged = read_model_description(PACKAGED, gpu="H100")
    assert json.loads(PACKAGED.read_text()) == json.loads(QWEN.read_text())
    assert packaged.name == qwen.name


def test_head_dim_is_hidden_over_heads_not_the_head_dim_key(tmp_path):
    # Qwen3-0.6B-like: hidden 1024, 16 heads, head_dim 128; BLIS uses 1024/16.
    path = write_config(
        tmp_path, hidden_size=1024, num_attention_heads=16, head_dim=128
    )
    model = read_model_description(path, gpu="L40S", tp=2)
    assert model.head_dim == 64.0 and model.kv_dim == 8 * 64.0
    assert model.flops_per_us == 362.05e6 and model.bytes_per_us == 0.864e6


def test_kv_heads_default_to_heads(tmp_path):
    model = read_model_description(
        write_config(tmp_path, num_key_value_heads=None), gpu="A100-80"
    )
    assert model.n_kv_heads == 40 and model.kv_dim == 5120.0


@pytest.mark.parametrize(
    "quant",
    [
        {"quant_method": "fp8", "weight_block_size": [128, 128]},
        {"quant_method": "fbgemm_fp8"},
        {"quant_method": "modelopt", "quant_algo": "FP8"},
        {
            "quant_method": "compressed-tensors",
            "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}},
        },
    ],
)
def test_fp8_weights_take_one_byte_and_the_fp8_rate(tmp_path, quant):
    path = write_config(tmp_path, quantization_config=quant)
    model = read_model_description(path, gpu="H100")
    assert model.bytes_per_param == 1 and model.flops_per_us == 1979.0e6
    # T_weight halves with 1-byte weights.
    bf16 = read_model_description(write_config(tmp_path), gpu="H100")
    ratio = basis_map(model)[2, 0] / basis_map(bf16)[2, 0]
    assert ratio == pytest.approx(0.5, rel=1e-12)


def test_float16_and_dtype_key_give_two_bytes(tmp_path):
    path = write_config(tmp_path, torch_dtype=None, dtype="float16")
    assert read_model_description(path, gpu="H100").bytes_per_param == 2


@pytest.mark.parametrize(
    ("changes", "gpu", "tp", "match"),
    [
        ({}, "H200", 1, "Unknown GPU 'H200'.*H100, A100-SXM, A100-80, L40S"),
        ({"intermediate_size": None}, "H100", 1, "no 'intermediate_size'"),
        ({"num_hidden_layers": None}, "H100", 1, "config.json has no 'num_hidden"),
        ({"hidden_size": 0}, "H100", 1, "'hidden_size' in .*positive integer"),
        ({}, "H100", 3, "tp = 3 does not divide the 40 attention heads"),
        ({}, "H100", 0, "tp must be a positive integer"),
        ({"num_experts": 64}, "H100", 1, "mixture-of-experts.*dense models"),
        ({"num_local_experts": 8}, "H100", 1, "mixture-of-experts"),
        ({"hidden_size": 5100}, "H100", 1, "not a multiple of 'num_attention"),
        ({"torch_dtype": "float32"}, "H100", 1, "'torch_dtype' in .*'float32'"),
        ({"torch_dtype": None}, "H100", 1, "no 'torch_dtype'"),
        ({"quantization_config": {"quant_method": "awq"}}, "H100", 1, "'awq'"),
        ({"quantization_config": {"quant_method": "fp8"}}, "A100-SXM", 1, "no FP8"),
    ],
)
def test_description_errors(tmp_path, changes, gpu, tp, match):
    with pytest.raises(ValueError, match=match) as info:
        read_model_description(write_config(tmp_path, **changes), gpu=gpu, tp=tp)
    if "no '" in match:
        assert str(tmp_path / "config.json") in str(info.value)


def test_not_json_is_a_value_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_model_description(path, gpu="H100")


def test_a_description_built_by_hand_is_checked(qwen):
    fields = {**qwen.__dict__, "source": ""}
    with pytest.raises(ValueError, match="Unknown GPU 'B200'"):
        ModelDescription(**{**fields, "gpu": "B200"})
    with pytest.raises(ValueError, match="tp = 16 does not divide.*model description"):
        ModelDescription(**{**fields, "tp": 16})
    with pytest.raises(ValueError, match="bytes_per_param must be 2"):
        ModelDescription(**{**fields, "bytes_per_param": 4})
    with pytest.raises(ValueError, match="A100-80 has no FP8"):
        ModelDescription(**{**fields, "bytes_per_param": 1, "gpu": "A100-80"})
    assert ModelDescription(**fields) == replace(qwen, source="")


def test_gpu_table_is_blis_s():
    assert sorted(GPU_SPECS) == ["A100-80", "A100-SXM", "H100", "L40S"]
    assert GPU_SPECS["A100-SXM"] == GPU_SPECS["A100-80"]
    assert GPU_SPECS["L40S"].fp8_tflops == 1466.0


# --- the page's check numbers ------------------------------------------------


def test_decode_alone_at_context_1000_matches_the_page(qwen):
    basis = trained_physics_basis(qwen, [0], [0], [1], [1000], [1])[0]
    assert basis[9] == pytest.approx(40 * 2 * 1024 * 2 * 1001 / 3.35e6, rel=1e-9)
    assert round(basis[9], 2) == 48.96
    weights = (40 * 5120 * (10240 + 2048) * 2 + 40 * 3 * 5120 * 17408 * 2) / 3.35e6
    assert basis[2] == pytest.approx(weights, rel=1e-9)
    assert round(basis[2], 1) == 7887.8
    decode_compute = (
        40 * 2 * 5120 * (2 * 5120 + 2 * 1024)
        + 40 * 4 * 40 * 1000 * 128
        + 40 * 6 * 5120 * 17408
    ) / 989.5e6
    assert basis[1] == pytest.approx(decode_compute, rel=1e-9)
    assert basis[[0, 3, 7, 8]].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert basis[[4, 5, 6]].tolist() == [40.0, 1.0, 1.0]


def test_prefill_of_1000_tokens_matches_the_page(qwen):
    basis = trained_physics_basis(qwen, [1000], [1000 * 1500], [0], [0], [1])[0]
    prefill_compute = (
        40 * 2 * 1000 * 5120 * (2 * 5120 + 2 * 1024)
        + 40 * 4 * 40 * 1.5e6 * 128
        + 40 * 1000 * 6 * 5120 * 17408
    ) / 989.5e6
    assert basis[0] == pytest.approx(prefill_compute, rel=1e-9)
    assert basis[8] == pytest.approx(40 * 2 * 1024 * 1000 * 2 / 3.35e6, rel=1e-9)
    assert basis[[1, 3, 9]].tolist() == [0.0, 0.0, 0.0]


def test_whole_microseconds_of_one_request_match_blis(qwen):
    # One request: 1000 prompt tokens, 3 output tokens; one coefficient at 1.
    basis = trained_physics_basis(qwen, *one_request_steps(1000, 3))
    step = {
        k: blis_step_time(basis, unit(k), truncate=True).tolist() for k in range(10)
    }
    assert step[0][0] == 27946  # prefill compute
    assert step[8][0] == 48  # prefill KV write
    assert step[9][1:] == [48, 49]  # decode KV
    assert step[1][1:] == [27, 27]  # decode compute
    assert step[2] == [7887] * 3  # weights, every step
    assert step[4] == [40] * 3  # per layer
    assert step[5] == step[6] == [1] * 3  # per request, per step
    # At least 1 us: a zero basis still costs a microsecond.
    assert step[7] == [1] * 3 and step[0][1:] == [1, 1]
    untruncated = blis_step_time(basis, unit(9))
    assert untruncated[1] == pytest.approx(40 * 2 * 1024 * 2 * 1001 / 3.35e6, rel=1e-9)


def reported_times(a0, a1, a2, step_us, arrival=0.0):
    """One request's reported times under BLIS's trained-physics alphas.

    From the page: a0 before the waiting queue (delays the engine), a2 added
    to the first-token time and to every inter-token gap (not delaying the
    engine), a1 once at completion. step_us: the request's steps, the first
    emitting the first token.
    """
    engine = arrival + a0 + np.cumsum(step_us)  # when each token is emitted
    reported = engine + a2 * np.arange(1, len(step_us) + 1)
    ttft = reported[0] - arrival
    gaps = np.diff(reported)
    e2e = reported[-1] + a1 - arrival
    return ttft, float(np.mean(gaps)), e2e


def test_alpha_example_of_the_page(qwen):
    basis = trained_physics_basis(qwen, *one_request_steps(1000, 3))
    step = blis_step_time(basis, 100 * unit(6), truncate=True)
    assert step.tolist() == [100.0, 100.0, 100.0]
    assert reported_times(1000, 500, 10, step) == (1110.0, 110.0, 1830.0)


def test_alphas_recovered_from_a_client_trace_with_blis_semantics():
    # Requests of many lengths: the client sees reported times, the fit sees
    # the engine's steps; the residuals carry the alphas.
    rng = np.random.default_rng(3)
    a0, a1, a2 = 1000.0, 500.0, 10.0
    overhead, residual, tokens = [], [], []
    for output in rng.integers(2, 40, size=30):
        steps = rng.uniform(50, 150, size=output)
        ttft, _, e2e = reported_times(a0, a1, a2, steps, arrival=rng.uniform(0, 1e6))
        overhead.append(ttft - steps[0])
        residual.append((e2e - ttft) - steps[1:].sum())
        tokens.append(output - 1)
    alpha = blis_alphas(overhead, residual, tokens)
    np.testing.assert_allclose(alpha, [a0, a1, a2], rtol=1e-9)
    # One decode length: intercept and slope merge into a2.
    same = blis_alphas([1010.0], [520.0], [2])
    np.testing.assert_allclose(same, [750.0, 0.0, 260.0])
    assert blis_alphas([], [], []).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="decode_tokens is negative.*1: -2.0"):
        blis_alphas([1.0], [1.0, 2.0], [1, -2])
    with pytest.raises(ValueError, match="prefill_overhead is not finite.*0: nan"):
        blis_alphas([np.nan], [1.0], [1])


# --- the linear map and the identifiable coefficients -------------------------


def random_steps(rng, n):
    # Mixed steps: prefill only, decode only, both.
    kind = rng.integers(0, 3, size=n)
    has_p, has_d = kind != 1, kind != 0
    prompt = rng.integers(16, 4096, size=n)
    T_p = np.where(has_p, rng.integers(1, 512, size=n), 0)
    A_p = T_p * (prompt + T_p / 2)
    T_d = np.where(has_d, rng.integers(1, 64, size=n), 0)
    C_d = T_d * rng.uniform(100, 6000, size=n) * has_d
    B = T_d + has_p * rng.integers(1, 4, size=n)
    return T_p, A_p, T_d, C_d, B


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_basis_is_the_linear_map_of_the_step_features(tp):
    model = read_model_description(QWEN, gpu="H100", tp=tp)
    T_p, A_p, T_d, C_d, B = random_steps(np.random.default_rng(tp), 200)
    features = np.column_stack([np.ones_like(T_p), T_p, A_p, T_d, C_d, B])
    direct = trained_physics_basis(model, T_p, A_p, T_d, C_d, B)
    np.testing.assert_allclose(features @ basis_map(model).T, direct, rtol=1e-12)
    assert (direct[:, 3] > 0).any() == (tp > 1)
    assert len(STEP_FEATURES) == 6 and len(BLIS_BETA_NAMES) == 10


def test_what_one_trace_cannot_separate():
    model = read_model_description(QWEN, gpu="H100", tp=2)
    M = basis_map(model)
    # Weights, per layer and per step are all constant per step.
    assert np.count_nonzero(M[[2, 4, 6], 1:]) == 0
    # The TP all-reduce row lies in the span of prefill KV and the decode pair.
    span = M[[8, 1, 9]].T
    coef, *_ = np.linalg.lstsq(span, M[3], rcond=None)
    np.testing.assert_allclose(span @ coef, M[3], rtol=1e-10, atol=1e-18)
    # The six identifiable rows are independent.
    K = identifiable_map(model)
    assert K.shape == (6, 6) and np.linalg.matrix_rank(K / K.max(axis=1)[:, None]) == 6
    assert len(IDENTIFIABLE_FEATURES) == 6


def fit_identifiable(model, steps, step_seconds):
    features = np.column_stack([np.ones_like(steps[0]), *steps])
    design = trained_physics_design(features, model)
    scale = design.max(axis=0)
    coef, _ = nnls(design / scale, step_seconds)
    return coef / scale


def test_true_betas_are_recovered_from_exact_step_times(qwen):
    # Truth in the form to_blis_betas writes: constant on b[6], b[3] = b[7] = 0.
    truth = np.array([0.9, 1.4, 0.0, 0.0, 0.0, 6.0, 9000.0, 0.0, 3.0, 2.5])
    steps = random_steps(np.random.default_rng(7), 400)
    seconds = blis_step_time(trained_physics_basis(qwen, *steps), truth) * 1e-6
    coef = fit_identifiable(qwen, steps, seconds)
    betas = to_blis_betas(coef, qwen, time_unit=1.0)
    np.testing.assert_allclose(betas.beta_coeffs, truth, rtol=1e-7, atol=1e-9)
    assert betas.per_step_us == pytest.approx(9000.0, rel=1e-7)
    assert set(betas.fixed) == {"tp_allreduce", "per_moe_layer", "weights", "per_layer"}
    # In milliseconds the same trace gives the same BLIS betas.
    in_ms = to_blis_betas(coef * 1e3, qwen, time_unit=1e-3)
    np.testing.assert_allclose(in_ms.beta_coeffs, betas.beta_coeffs, rtol=1e-11)


def test_blis_global_set_at_tp_2_exports_the_same_step_times():
    # The bundled set has b[2], b[3], b[4] > 0: the export fixes them and still
    # reproduces every step for this deployment.
    model = read_model_description(QWEN, gpu="H100", tp=2)
    truth = np.array(
        [0.152128, 0.0, 1.36252915, 0.752037, 32.09546717, 4.41684444]
        + [126.024825, 481.8613888, 0.0, 1.94710771]
    )
    steps = random_steps(np.random.default_rng(11), 400)
    basis = trained_physics_basis(model, *steps)
    seconds = blis_step_time(basis, truth) * 1e-6
    coef = fit_identifiable(model, steps, seconds)
    for split in ("per_step", "bundled"):
        betas = to_blis_betas(coef, model, constant_split=split)
        exported = np.array(betas.beta_coeffs)
        assert exported[3] == 0.0 and exported[7] == 0.0
        assert np.all(exported >= 0)
        np.testing.assert_allclose(
            blis_step_time(basis, exported), seconds * 1e6, rtol=1e-7
        )
        constant = exported[2] * basis[0, 2] + exported[4] * 40 + exported[6]
        assert constant == pytest.approx(betas.per_step_us, rel=1e-10)
    # bundled keeps the global set's proportions of the three constants.
    bundled = np.array(to_blis_betas(coef, model, constant_split="bundled").beta_coeffs)
    assert bundled[2] / bundled[6] == pytest.approx(truth[2] / truth[6], rel=1e-9)
    assert bundled[4] / bundled[6] == pytest.approx(truth[4] / truth[6], rel=1e-9)
    assert "per_step" in to_blis_betas(coef, model, constant_split="bundled").fixed


# --- the export ---------------------------------------------------------------


def parse_command(line: str) -> dict:
    words = shlex.split(line)
    assert words[:2] == ["blis", "replay"]
    flags = dict(zip(words[2::2], words[3::2], strict=True))
    return flags


@pytest.mark.parametrize("tp", [1, 2])
def test_export_has_exactly_what_blis_reads(tp):
    model = read_model_description(QWEN, gpu="H100", tp=tp)
    coef = [2.1e-7, 3.3e-7, 0.0112, 4.4e-6, 1.7e-7, 0.0]
    coeffs = blis_trained_physics_coeffs(
        coef, model, alpha=[0.0155, 7.7e-4, 4.6e-5], constant_split="bundled"
    )
    assert list(coeffs) == ["alpha_coeffs", "beta_coeffs"]
    assert BLIS_TRAINED_PHYSICS_KEYS == {"alpha_coeffs": 3, "beta_coeffs": 10}
    for key, length in BLIS_TRAINED_PHYSICS_KEYS.items():
        values = coeffs[key]
        assert isinstance(values, list) and len(values) == length
        assert all(type(v) is float and math.isfinite(v) and v >= 0 for v in values)
    assert coeffs["alpha_coeffs"] == [15500.0, 770.0, 46.0]
    assert coeffs["beta_coeffs"][0] == pytest.approx(0.21, rel=1e-11)
    assert json.loads(json.dumps(coeffs)) == coeffs

    text = format_blis_trained_physics(
        coeffs,
        model,
        trace_header="my trace/h.yaml",
        comments=["fitted from\nx.csv"],
        model_config_folder="cfg",
    )
    lines = text.splitlines()
    assert lines[:2] == ["# fitted from", "# x.csv"]
    assert lines[3] == f"alpha_coeffs: {coeffs['alpha_coeffs']}"
    assert lines[4] == f"beta_coeffs: {coeffs['beta_coeffs']}"
    flags = parse_command(lines[5])
    assert [float(v) for v in flags["--alpha-coeffs"].split(",")] == coeffs[
        "alpha_coeffs"
    ]
    assert [float(v) for v in flags["--beta-coeffs"].split(",")] == coeffs[
        "beta_coeffs"
    ]
    assert flags["--latency-model"] == "trained-physics"
    assert flags["--hardware"] == "H100" and flags["--tp"] == str(tp)
    assert flags["--model"] == "qwen/qwen3-14b"
    assert flags["--trace-header"] == "my trace/h.yaml"
    assert flags["--model-config-folder"] == "cfg"
    assert set(flags) == {
        "--trace-header",
        "--trace-data",
        "--model",
        "--latency-model",
        "--hardware",
        "--tp",
        "--alpha-coeffs",
        "--beta-coeffs",
        "--results-path",
        "--model-config-folder",
    }


def test_export_errors(qwen):
    good = [1e-7] * 6
    with pytest.raises(ValueError, match="six finite, non-negative"):
        blis_trained_physics_coeffs([-1e-7, *good[1:]], qwen)
    with pytest.raises(ValueError, match="six finite"):
        blis_trained_physics_coeffs(good[:5], qwen)
    with pytest.raises(ValueError, match="alpha must hold three finite"):
        blis_trained_physics_coeffs(good, qwen, alpha=[1.0, np.inf, 0.0])
    with pytest.raises(ValueError, match="time_unit"):
        blis_trained_physics_coeffs(good, qwen, time_unit=0.0)
    with pytest.raises(ValueError, match="constant_split must be one of"):
        to_blis_betas(good, qwen, constant_split="weights")
    with pytest.raises(ValueError, match="exactly the keys"):
        format_blis_trained_physics({"beta_coeffs": [0.0] * 10}, qwen)
    with pytest.raises(ValueError, match="'beta_coeffs'.*10 finite"):
        format_blis_trained_physics(
            {"alpha_coeffs": [0.0] * 3, "beta_coeffs": [0.0] * 9}, qwen
        )


def test_aggregate_and_step_time_errors(qwen):
    ok = ([10], [150], [0], [0], [1])
    with pytest.raises(ValueError, match=r"T_d is negative.*step 1: -1.0"):
        trained_physics_basis(qwen, [10, 0], [150, 0], [0, -1], [0, 0], [1, 1])
    with pytest.raises(ValueError, match=r"A_p is positive where T_p = 0.*step 0"):
        trained_physics_basis(qwen, [0], [5], [1], [10], [1])
    with pytest.raises(ValueError, match=r"C_d is positive where T_d = 0"):
        trained_physics_basis(qwen, [10], [150], [0], [7], [1])
    with pytest.raises(ValueError, match=r"B is below.*step 0: 2.0"):
        trained_physics_basis(qwen, [10], [150], [2], [7], [2])
    with pytest.raises(ValueError, match="T_p has 1, B has 2"):
        trained_physics_basis(qwen, *ok[:4], [1, 1])
    with pytest.raises(ValueError, match="C_d is infinite"):
        trained_physics_basis(qwen, [0], [0], [1], [np.inf], [1])
    basis = trained_physics_basis(qwen, *ok)
    with pytest.raises(ValueError, match="ten finite"):
        blis_step_time(basis, np.ones(9))
    with pytest.raises(ValueError, match=r"shape \(n_steps, 10\)"):
        blis_step_time(basis[:, :9], np.ones(10))


def test_phase_design_sums_the_steps_basis(qwen):
    # A phase's design row is the sum over its steps of the identifiable basis.
    steps = random_steps(np.random.default_rng(5), 60)
    features = np.column_stack([np.ones_like(steps[0]), *steps])
    phase = np.repeat(np.arange(6), 10)
    exposures = np.zeros((6, 6))
    np.add.at(exposures, phase, features)
    basis = trained_physics_basis(qwen, *steps)[:, [0, 1, 6, 5, 8, 9]]
    summed = np.zeros((6, 6))
    np.add.at(summed, phase, basis)
    np.testing.assert_allclose(
        trained_physics_design(exposures, qwen), summed, rtol=1e-12
    )
    with pytest.raises(ValueError, match=r"shape \(n_phases, 6\)"):
        trained_physics_design(exposures[:, :5], qwen)
    exposures[2, 4] = -1.0
    with pytest.raises(ValueError, match="decode_context is negative.*phase 2: -1.0"):
        trained_physics_design(exposures, qwen)
