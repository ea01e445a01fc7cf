"""Trace adapters: OTLP spans, benchmark results, reference CSV/Parquet, BLIS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sklearn_beta import estimate_betas_iterative
from sklearn_beta.io import (
    read_benchmark_results,
    read_otel_spans,
    read_phases,
    to_blis_coefficients,
)

DATA = Path(__file__).resolve().parents[1] / "data"
SPANS = DATA / "otel" / "spans.jsonl"
BENCH = DATA / "bench" / "results.json"
TRUE_BETA = np.array([4e-3, 3e-5, 2e-4])  # data/make_examples.py
ORIGIN_NS = 1_700_000_000_000_000_000


def _attr(key, value):
    if isinstance(value, str):
        return {"key": key, "value": {"stringValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"doubleValue": value}}


def _span(
    rid,
    start=0.0,
    queue=0.01,
    prefill=0.05,
    decode=0.2,
    prompt=300,
    completion=11,
    cached=None,
    drop=(),
    **extra,
):
    attrs = {
        "gen_ai.request.id": rid,
        "gen_ai.latency.time_in_queue": queue,
        "gen_ai.latency.time_to_first_token": queue + prefill,
        "gen_ai.latency.time_in_model_prefill": prefill,
        "gen_ai.latency.time_in_model_decode": decode,
        "gen_ai.latency.e2e": queue + prefill + decode,
        "gen_ai.usage.prompt_tokens": prompt,
        "gen_ai.usage.completion_tokens": completion,
        **extra,
    }
    if cached is not None:
        attrs["gen_ai.usage.cache_read.input_tokens"] = cached
    return {
        "spanId": f"span-{rid}",
        "name": "llm_request",
        "startTimeUnixNano": str(ORIGIN_NS + round(start * 1e9)),
        "attributes": [_attr(k, v) for k, v in attrs.items() if k not in drop],
    }


def _write_spans(path, spans, resource=(("service.instance.id", "i-0"),)):
    line = {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr(k, v) for k, v in resource]},
                "scopeSpans": [{"spans": spans}],
            }
        ]
    }
    path.write_text(json.dumps(line) + "\n")
    return path


# --- OTLP JSON spans --------------------------------------------------------


def test_otel_fixture_maps_every_request_to_two_phases():
    phases = read_otel_spans(SPANS)
    assert phases.shape == (240, 7)
    assert sorted(phases["instance_id"].unique()) == ["vllm-0", "vllm-1", "vllm-2"]
    assert (phases.groupby("request_id").size() == 2).all()
    assert phases["t_start"].min() == 0.0
    assert phases.attrs["time_origin_unix_nano"] == 1764150000126466453
    # The HTTP span of the gateway is not a request.
    assert not phases["request_id"].astype(str).str.startswith("POST").any()


def test_otel_fixture_subtracts_cached_tokens_where_reported():
    raw = [json.loads(line) for line in SPANS.read_text().splitlines()]
    spans = {}
    for line in raw:
        for rs in line["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    attrs = {a["key"]: a["value"] for a in span["attributes"]}
                    if "gen_ai.request.id" in attrs:
                        spans[attrs["gen_ai.request.id"]["stringValue"]] = attrs
    phases = read_otel_spans(SPANS).set_index(["request_id", "phase_type"])
    cached_ids = [
        r for r, a in spans.items() if "gen_ai.usage.cache_read.input_tokens" in a
    ]
    assert len(cached_ids) == 40 and all(r.startswith("cmpl-0-") for r in cached_ids)
    assert any(
        int(spans[r]["gen_ai.usage.cache_read.input_tokens"]["intValue"]) > 0
        for r in cached_ids
    )
    for rid, attrs in spans.items():
        prompt = int(attrs["gen_ai.usage.prompt_tokens"]["intValue"])
        cached = int(
            attrs.get("gen_ai.usage.cache_read.input_tokens", {"intValue": "0"})[
                "intValue"
            ]
        )
        completion = int(attrs["gen_ai.usage.completion_tokens"]["intValue"])
        assert phases.loc[(rid, "prefill"), "prefill_tokens"] == prompt - cached
        assert phases.loc[(rid, "decode"), "decode_tokens"] == completion - 1


def test_otel_phase_times_follow_queue_prefill_decode(tmp_path):
    path = _write_spans(
        tmp_path / "s.jsonl",
        [
            _span("a", start=0.0, queue=0.25, prefill=0.5, decode=1.0),
            _span("b", start=2.0, queue=0.0, prefill=0.125, decode=0.375, cached=100),
        ],
    )
    phases = read_otel_spans(path)
    expected = pd.DataFrame(
        {
            "request_id": ["a", "a", "b", "b"],
            "phase_type": ["prefill", "decode", "prefill", "decode"],
            "t_start": [0.25, 0.75, 2.0, 2.125],
            "t_end": [0.75, 1.75, 2.125, 2.5],
            "prefill_tokens": [300, 0, 200, 0],
            "decode_tokens": [0, 10, 0, 10],
            "instance_id": ["i-0"] * 4,
        }
    )
    pd.testing.assert_frame_equal(phases, expected, check_dtype=False)


def test_otel_single_token_request_has_no_decode_row(tmp_path):
    path = _write_spans(
        tmp_path / "s.jsonl", [_span("a"), _span("b", completion=1, decode=0.0)]
    )
    phases = read_otel_spans(path)
    assert phases["phase_type"].tolist() == ["prefill", "decode", "prefill"]
    assert phases["request_id"].tolist() == ["a", "a", "b"]


def test_otel_instance_falls_back_to_host_name_then_default(tmp_path):
    path = _write_spans(
        tmp_path / "h.jsonl", [_span("a")], resource=(("host.name", "node-7"),)
    )
    assert read_otel_spans(path)["instance_id"].unique().tolist() == ["node-7"]
    path = _write_spans(tmp_path / "n.jsonl", [_span("a")], resource=())
    assert read_otel_spans(path)["instance_id"].unique().tolist() == ["default"]


@pytest.mark.parametrize(
    "span, message",
    [
        (
            _span("x", drop=("gen_ai.latency.time_in_model_prefill",)),
            "'gen_ai.latency.time_in_model_prefill' is missing",
        ),
        (_span("x", drop=("gen_ai.request.id",)), "'gen_ai.request.id' is missing"),
        (_span("x", cached=400), "'gen_ai.usage.cache_read.input_tokens' exceeds"),
        (_span("x", queue=-0.1), "'gen_ai.latency.time_in_queue' is negative"),
        (_span("x", decode=0.0), "'gen_ai.latency.time_in_model_decode' must be"),
        (_span("x", completion=0), "'gen_ai.usage.completion_tokens' must be >= 1"),
        (_span("x", **{"gen_ai.latency.e2e": 9.0}), "disagree"),
    ],
)
def test_otel_bad_span_is_named(tmp_path, span, message):
    path = _write_spans(tmp_path / "bad.jsonl", [_span("ok"), span])
    with pytest.raises(ValueError, match=message) as info:
        read_otel_spans(path)
    assert "span span-x" in str(info.value)


def test_otel_rejects_duplicates_mixed_instances_and_non_json(tmp_path):
    path = _write_spans(tmp_path / "d.jsonl", [_span("a"), _span("a", start=1.0)])
    with pytest.raises(ValueError, match="repeat 'gen_ai.request.id'"):
        read_otel_spans(path)
    mixed = tmp_path / "m.jsonl"
    _write_spans(mixed, [_span("a")])
    other = _write_spans(tmp_path / "o.jsonl", [_span("b")], resource=())
    mixed.write_text(mixed.read_text() + other.read_text())
    with pytest.raises(ValueError, match="no instance resource attribute"):
        read_otel_spans(mixed)
    broken = tmp_path / "b.jsonl"
    broken.write_text(mixed.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="line 3 is not an OTLP JSON"):
        read_otel_spans(broken)
    with pytest.raises(ValueError, match="no span named 'other'"):
        read_otel_spans(mixed, span_name="other")


def test_otel_fixture_recovers_the_engine_betas():
    phases = read_otel_spans(SPANS)
    result = estimate_betas_iterative(
        phases, chunk_size=256, columns={"instance_id": "instance_id"}
    )
    np.testing.assert_allclose(result.beta, TRUE_BETA, rtol=1e-2)


# --- Benchmark results ------------------------------------------------------


def test_benchmark_results_approximate_phases():
    result = json.loads(BENCH.read_text())
    phases = read_benchmark_results(BENCH)
    n = len(result["ttfts"])
    decoded = np.array(result["output_lens"]) > 1
    assert len(phases) == n + decoded.sum()
    prefill = phases[phases.phase_type == "prefill"].set_index("request_id")
    decode = phases[phases.phase_type == "decode"].set_index("request_id")
    start = np.array(result["start_times"]) - min(result["start_times"])
    np.testing.assert_allclose(prefill["t_start"], start, atol=1e-9)
    np.testing.assert_allclose(prefill["t_end"] - prefill["t_start"], result["ttfts"])
    np.testing.assert_array_equal(prefill["prefill_tokens"], result["input_lens"])
    np.testing.assert_array_equal(
        decode["decode_tokens"], np.array(result["output_lens"])[decoded] - 1
    )
    np.testing.assert_allclose(
        decode["t_end"] - decode["t_start"],
        [sum(x) for x, d in zip(result["itls"], decoded, strict=True) if d],
    )


def test_benchmark_failed_requests_warn_and_bad_files_raise(tmp_path):
    result = json.loads(BENCH.read_text())
    result["errors"][3] = "timeout"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    with pytest.warns(UserWarning, match="1 failed request"):
        phases = read_benchmark_results(path)
    assert 3 not in set(phases["request_id"])
    del result["start_times"]
    path.write_text(json.dumps(result))
    with pytest.raises(
        ValueError, match=r"lacks per-request key\(s\) \['start_times'\]"
    ):
        read_benchmark_results(path)
    result = json.loads(BENCH.read_text())
    result["itls"][0] = result["itls"][0][:-1]
    path.write_text(json.dumps(result))
    with pytest.raises(ValueError, match="'itls' must hold output_len - 1 gaps"):
        read_benchmark_results(path)


# --- Reference schema --------------------------------------------------------


def test_read_phases_csv_and_parquet_by_name(tmp_path):
    phases = read_otel_spans(SPANS)
    shuffled = phases[phases.columns[::-1]].rename(columns={"t_start": "begin"})
    shuffled.to_csv(tmp_path / "p.csv", index=False)
    back = read_phases(tmp_path / "p.csv", columns={"begin": "t_start"})
    pd.testing.assert_frame_equal(back, phases, check_dtype=False)
    import pyarrow  # noqa: F401

    phases.to_parquet(tmp_path / "p.parquet")
    pd.testing.assert_frame_equal(read_phases(tmp_path / "p.parquet"), phases)


def test_read_phases_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_phases(tmp_path / "nope.csv")
    (tmp_path / "x.csv").write_text("request_id,phase_type,t_start\nA,prefill,0\n")
    with pytest.raises(ValueError, match="lacks phase-table column"):
        read_phases(tmp_path / "x.csv")


# --- BLIS --------------------------------------------------------------------


def test_blis_coefficients_are_microseconds():
    assert to_blis_coefficients([0.004, 3e-5, 2e-4]) == [4000.0, 30.0, 200.0]
    assert to_blis_coefficients([4.0, 0.03, 0.2], time_unit=1e-3) == [
        4000.0,
        30.0,
        200.0,
    ]
    with pytest.raises(ValueError, match="three finite, non-negative"):
        to_blis_coefficients([0.1, -1e-5, 0.0])
    with pytest.raises(ValueError, match="three finite, non-negative"):
        to_blis_coefficients([0.1, 0.2])


def test_read_phases_time_unit_scales_to_seconds(tmp_path):
    frame = pd.DataFrame(
        {
            "request_id": ["a", "a"],
            "phase_type": ["prefill", "decode"],
            "t_start": [1500, 1750],
            "t_end": [1750, 2250],
            "prefill_tokens": [10, 0],
            "decode_tokens": [0, 3],
        }
    )
    frame.to_csv(tmp_path / "us.csv", index=False)
    phases = read_phases(tmp_path / "us.csv", time_unit="us")
    np.testing.assert_allclose(phases["t_start"], [1.5e-3, 1.75e-3])
    np.testing.assert_allclose(phases["t_end"], [1.75e-3, 2.25e-3])
    with pytest.raises(ValueError, match="time_unit must be one of"):
        read_phases(tmp_path / "us.csv", time_unit="h")


TRACEV2_HEADER = """\
trace_version: 2
time_unit: {unit}
mode: real
warm_up_requests: 0
server:
  model: meta-llama/Llama-3.1-8B-Instruct
  max_num_seqs: 256
"""
TRACEV2_ROWS = """\
request_id,client_id,tenant_id,slo_class,session_id,round_index,prefix_group,\
prefix_length,streaming,input_tokens,output_tokens,text_tokens,image_tokens,\
audio_tokens,video_tokens,reason_ratio,model,deadline_us,server_input_tokens,\
arrival_time_us,send_time_us,first_chunk_time_us,last_chunk_time_us,num_chunks,\
status,error_message,finish_reason
r0,c0,t0,standard,s0,0,,0,true,100,5,100,0,0,0,0,m,0,0,900,1000,1500,1900,5,ok,,stop
r1,c0,t0,standard,s0,1,,0,true,200,1,200,0,0,0,0,m,0,150,1100,1200,1300,1300,1,ok,,stop
r2,c1,t0,standard,s1,0,,0,true,50,9,50,0,0,0,0,m,0,0,1150,1250,0,0,0,error,boom,
"""


def test_read_tracev2_maps_requests_to_client_phases(tmp_path):
    from sklearn_beta.io import read_tracev2

    (tmp_path / "t.csv").write_text(TRACEV2_ROWS)
    (tmp_path / "t.yaml").write_text(TRACEV2_HEADER.format(unit="ms"))
    phases = read_tracev2(tmp_path / "t.csv", header=tmp_path / "t.yaml")
    assert phases["phase_type"].tolist() == ["prefill", "decode", "prefill"]
    assert phases["request_id"].tolist() == ["r0", "r0", "r1"]
    # Milliseconds from the header; the origin is the earliest send.
    np.testing.assert_allclose(phases["t_start"], [0.0, 0.5, 0.2])
    np.testing.assert_allclose(phases["t_end"], [0.5, 0.9, 0.3])
    # server_input_tokens when non-zero; output_tokens - 1 decode tokens.
    assert phases["prefill_tokens"].tolist() == [100, 0, 150]
    assert phases["decode_tokens"].tolist() == [0, 4, 0]
    assert phases.attrs["notes"] == [
        "1 TraceV2 request(s) with status other than 'ok' dropped"
    ]
    assert phases.attrs["client_side"] is True
    # Without a header the times are microseconds.
    default = read_tracev2(tmp_path / "t.csv")
    np.testing.assert_allclose(default["t_end"], [5e-4, 9e-4, 3e-4])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.replace("send_time_us", "sent_us"), "lacks TraceV2 column"),
        (lambda t: t.replace(",1000,1500,", ",1000,900,"), "earlier than the phase"),
        (lambda t: t.replace(",100,5,", ",-100,5,"), "'input_tokens' must hold"),
        (lambda t: t.replace(",ok,", ",error,"), "No request"),
    ],
)
def test_read_tracev2_errors_name_the_column(tmp_path, change, message):
    from sklearn_beta.io import read_tracev2

    (tmp_path / "t.csv").write_text(change(TRACEV2_ROWS))
    with pytest.raises(ValueError, match=message):
        read_tracev2(tmp_path / "t.csv")
    (tmp_path / "h.yaml").write_text(TRACEV2_HEADER.format(unit="fortnights"))
    with pytest.raises(ValueError, match="time_unit 'fortnights'"):
        read_tracev2(tmp_path / "t.csv", header=tmp_path / "h.yaml")


def test_shipped_tracev2_example_is_reproducible_and_fits(tmp_path):
    import runpy

    from sklearn_beta.engine_config._trace_fit import fit_client_trace
    from sklearn_beta.io import read_tracev2

    script = runpy.run_path(str(DATA / "tracev2" / "make_trace.py"))
    script["main"].__globals__["HERE"] = tmp_path
    script["main"]()
    for name in ("trace.csv", "header.yaml"):
        assert (tmp_path / name).read_text() == (DATA / "tracev2" / name).read_text()
    phases = read_tracev2(
        DATA / "tracev2" / "trace.csv", DATA / "tracev2" / "header.yaml"
    )
    assert phases.attrs["notes"] == [
        "3 TraceV2 request(s) with status other than 'ok' dropped"
    ]
    fit, alpha = fit_client_trace(phases, chunk_size=256, time_resolution=1e-6)
    probes = np.array([[1, 256, 0], [1, 0, 1], [1, 0, 16], [1, 256, 16]])
    error = probes @ fit.beta / (probes @ TRUE_BETA) - 1
    assert np.abs(error).max() < 0.01, error
    assert 2.5e-3 < alpha[0] < 3.5e-3  # 2 ms + 0.5 ms mean jitter + 1 ms


def test_read_phases_of_a_directory_or_glob_concatenates_the_files(tmp_path):
    from sklearn_beta.datasets import simulate_trace

    fleet = simulate_trace(
        60,
        beta=(5e-3, 2e-5, 8e-5),
        chunk_size=64,
        max_num_seqs=8,
        arrival_rate=4.0,
        n_instances=2,
        random_state=0,
    )
    parts = [group for _, group in fleet.groupby("instance_id")]
    for i, part in enumerate(parts):
        part.to_csv(tmp_path / f"engine-{i}.csv", index=False)
    expected = pd.concat(parts, ignore_index=True)
    for source in (tmp_path, str(tmp_path / "engine-*.csv")):
        got = read_phases(source, time_unit="ms")
        pd.testing.assert_frame_equal(
            got[["t_start", "t_end"]], expected[["t_start", "t_end"]] * 1e-3
        )
        pd.testing.assert_series_equal(got["request_id"], expected["request_id"])
    lazy = read_phases(tmp_path, dask=True)
    assert type(lazy).__module__.startswith("dask")
    pd.testing.assert_frame_equal(
        lazy.compute().reset_index(drop=True),
        read_phases(tmp_path),
        check_dtype=False,  # dask's strings are pyarrow-backed
    )
    with pytest.raises(ValueError, match="No trace file"):
        read_phases(str(tmp_path / "*.parquet"))
