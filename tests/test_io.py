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


def test_shipped_tracev2_example_is_reproducible(tmp_path):
    # its fit: test_replayed_overheads.py::test_the_window_is_the_one_whose_...
    import runpy

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


def _sample_phases():
    return pd.DataFrame(
        {
            "request_id": ["a", "a", "b"],
            "phase_type": ["prefill", "decode", "prefill"],
            "t_start": [0.0, 0.25, 0.1],
            "t_end": [0.25, 0.75, 0.4],
            "prefill_tokens": [10, 0, 20],
            "decode_tokens": [0, 3, 0],
        }
    )


@pytest.mark.parametrize("dask", [False, True], ids=["pandas", "dask"])
def test_read_phases_honours_format_whatever_the_suffix(tmp_path, dask):
    expected = _sample_phases()
    expected.to_csv(tmp_path / "phases.log", index=False)
    expected.to_parquet(tmp_path / "phases.csv")  # Parquet under a CSV name
    got = read_phases(tmp_path / "phases.log", format="csv", dask=dask)
    got = got.compute() if dask else got
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), expected, check_dtype=False
    )
    got = read_phases(tmp_path / "phases.csv", format="parquet", dask=dask)
    got = got.compute() if dask else got
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), expected, check_dtype=False
    )
    # Read by its suffix, the Parquet file is not CSV.
    with pytest.raises(ValueError):
        frame = read_phases(tmp_path / "phases.csv", dask=dask)
        if dask:
            frame.compute()
    with pytest.raises(ValueError, match=r"format must be one of \['csv', 'parquet'\]"):
        read_phases(tmp_path / "phases.log", format="otel", dask=dask)


def test_read_phases_refuses_a_suffix_of_another_format(tmp_path):
    _sample_phases().to_csv(tmp_path / "phases.jsonl", index=False)
    with pytest.raises(ValueError, match="suffix of .* says 'jsonl'. Pass format="):
        read_phases(tmp_path / "phases.jsonl")
    assert len(read_phases(tmp_path / "phases.jsonl", format="csv")) == 3


def test_one_suffix_table_for_the_readers_and_the_command_line():
    from sklearn_beta.cli._main import infer_format
    from sklearn_beta.io import _formats

    assert infer_format("spans.jsonl") == "otel"
    assert infer_format("results.json") == "bench"
    assert infer_format("fleet.PQ") == "parquet"
    assert infer_format("trace.txt") == "csv"
    assert _formats.container_of("t.ndjson") == "jsonl"


TRACEV3_ROWS = """\
request_id,client_id,tenant_id,input_tokens,output_tokens,server_input_tokens,\
arrival_time_us,send_time_us,first_chunk_time_us,last_chunk_time_us,status
r0,c0,alice,100,5,0,900,1000,1500,1900,ok
r1,c0,bob,200,1,150,1100,1200,1300,1300,ok
r2,c1,alice,50,9,0,1150,1250,0,0,error
r3,c1,bob,70,3,0,1150,1700,1800,2000,ok
"""


def _write_v3(tmp_path, rows=TRACEV3_ROWS, version=3):
    (tmp_path / "t.csv").write_text(rows)
    (tmp_path / "t.yaml").write_text(
        TRACEV2_HEADER.format(unit="ms").replace(
            "trace_version: 2", f"trace_version: {version}"
        )
    )
    return tmp_path / "t.csv", tmp_path / "t.yaml"


def test_read_tracev3_keeps_sends_intended_arrivals_and_tenants(tmp_path):
    from sklearn_beta.io import read_tracev2

    phases = read_tracev2(*_write_v3(tmp_path))
    assert phases["request_id"].tolist() == ["r0", "r0", "r1", "r3", "r3"]
    # Milliseconds; the origin is the earliest intended arrival (900 ms).
    np.testing.assert_allclose(phases["t_start"], [0.1, 0.6, 0.3, 0.8, 0.9])
    np.testing.assert_allclose(phases["t_end"], [0.6, 1.0, 0.4, 0.9, 1.1])
    np.testing.assert_allclose(phases["arrival"], [0.1, 0.1, 0.3, 0.8, 0.8])
    np.testing.assert_allclose(phases["intended_arrival"], [0, 0, 0.2, 0.25, 0.25])
    assert phases["tenant_id"].tolist() == ["alice", "alice", "bob", "bob", "bob"]
    assert phases["client_id"].tolist() == ["c0", "c0", "c0", "c1", "c1"]
    assert phases["prefill_tokens"].tolist() == [100, 0, 150, 70, 0]
    assert phases["decode_tokens"].tolist() == [0, 4, 0, 0, 2]
    assert phases.attrs["trace_version"] == 3
    assert phases.attrs["time_origin"] == pytest.approx(0.9)
    notes = phases.attrs["notes"]
    assert notes[0] == "1 TraceV3 request(s) with status other than 'ok' dropped"
    # Lags 100, 100 and 550 ms.
    assert "by 0.25 s on average (at most 0.55 s)" in notes[1]


def test_read_tracev3_accepts_aliases(tmp_path):
    from sklearn_beta.io import read_tracev2

    expected = read_tracev2(*_write_v3(tmp_path))
    renamed = (
        TRACEV3_ROWS.replace("arrival_time_us", "intended_arrival_time_us")
        .replace("tenant_id", "Tenant")
        .replace("first_chunk_time_us", "first_token_time_us")
        .replace(",status", ",Status")
    )
    got = read_tracev2(*_write_v3(tmp_path, renamed))
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: t.replace("arrival_time_us", "due"),
            r"intended_arrival_time_us \(one of \['intended_arrival_time_us', "
            r"'arrival_time_us'",
        ),
        (
            lambda t: t.replace("tenant_id", "team").replace("client_id", "x"),
            r"tenant_id \(one of \['tenant_id', 'tenant'\]\)",
        ),
        (
            lambda t: t.replace(",900,1000,", ",1100,1000,"),
            r"'send_time_us' is earlier than the intended arrival "
            r"'arrival_time_us': 1 offending row\(s\): row 0 \(request_id='r0'",
        ),
    ],
    ids=["no-intended-arrival", "no-tenant", "send-before-arrival"],
)
def test_read_tracev3_errors_name_the_columns(tmp_path, change, message):
    from sklearn_beta.io import read_tracev2

    with pytest.raises(ValueError, match=message):
        read_tracev2(*_write_v3(tmp_path, change(TRACEV3_ROWS)))


def test_read_tracev2_refuses_an_unknown_version(tmp_path):
    from sklearn_beta.io import read_tracev2

    with pytest.raises(ValueError, match="trace_version 4 is not one read here"):
        read_tracev2(*_write_v3(tmp_path, version=4))


def test_tracev3_fits_as_its_tracev2_trace(tmp_path):
    # The shipped TraceV2 example with its sends held back behind earlier
    # intended arrivals: the phases (the sends on) and the fit are the same.
    from sklearn_beta.engine_config._trace_fit import make_model
    from sklearn_beta.io import read_tracev2

    v2 = pd.read_csv(DATA / "tracev2" / "trace.csv", keep_default_na=False)
    lag = (np.arange(len(v2)) % 7) * 1000
    v3 = v2.assign(arrival_time_us=v2["send_time_us"] - lag)
    v3.to_csv(tmp_path / "v3.csv", index=False)
    header = {"trace_version": 3, "time_unit": "us"}
    old = read_tracev2(DATA / "tracev2" / "trace.csv")
    new = read_tracev2(tmp_path / "v3.csv", header)
    shift = new.attrs["time_origin"] - old.attrs["time_origin"]
    np.testing.assert_allclose(new["t_start"] + shift, old["t_start"], atol=1e-9)
    np.testing.assert_allclose(new["t_end"] + shift, old["t_end"], atol=1e-9)
    prefill = new["phase_type"] == "prefill"
    np.testing.assert_array_equal(new["arrival"][prefill], new["t_start"][prefill])
    model = make_model(256)
    beta_old = model.fit(old).steps[-1][1].beta_
    beta_new = make_model(256).fit(new).steps[-1][1].beta_
    np.testing.assert_allclose(beta_new, beta_old, rtol=1e-9)


def _engine_stats(n=120, seed=0):
    """A simulated engine's phases and the request stats vLLM would log."""
    from sklearn_beta.datasets import simulate_trace

    phases = simulate_trace(
        n,
        beta=(5e-3, 2e-5, 8e-5),
        chunk_size=256,
        max_num_seqs=8,
        arrival_rate=10.0,
        random_state=seed,
    )
    pre = phases[phases["phase_type"] == "prefill"].set_index("request_id")
    dec = phases[phases["phase_type"] == "decode"].set_index("request_id")
    wait = np.random.default_rng(seed).uniform(0, 0.05, len(pre))
    stats = pd.DataFrame(
        {
            "request_id": pre.index,
            "queued_ts": 1000.0 + pre["t_start"].to_numpy() - wait,
            "scheduled_ts": 1000.0 + pre["t_start"].to_numpy(),
            "first_token_ts": 1000.0 + pre["t_end"].to_numpy(),
            "last_token_ts": 1000.0 + dec.loc[pre.index, "t_end"].to_numpy(),
            "num_prompt_tokens": pre["prefill_tokens"].to_numpy(),
            "num_generation_tokens": dec.loc[pre.index, "decode_tokens"].to_numpy() + 1,
        }
    )
    return phases, stats


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_vllm_request_stats_rebuild_the_engines_phases(tmp_path, fmt):
    from sklearn_beta.engine_config._trace_fit import make_model
    from sklearn_beta.io import read_vllm_request_stats

    phases, stats = _engine_stats()
    path = tmp_path / f"stats.{fmt}"
    if fmt == "csv":
        stats.to_csv(path, index=False)
    else:
        stats.to_json(path, orient="records", lines=True, double_precision=15)
    got = read_vllm_request_stats(path)
    assert got.attrs["client_side"] is False
    origin = got.attrs["time_origin"]
    assert origin == pytest.approx(stats["queued_ts"].min(), abs=1e-12)
    schema = ["request_id", "phase_type", "prefill_tokens", "decode_tokens"]
    pd.testing.assert_frame_equal(
        got[schema], phases[schema].reset_index(drop=True), check_dtype=False
    )
    for name in ("t_start", "t_end"):
        np.testing.assert_allclose(got[name] + origin - 1000.0, phases[name], atol=1e-9)
    # arrival = queued on both rows; the prefill starts when scheduled.
    np.testing.assert_array_equal(got["arrival"], got["queued"])
    prefill = got["phase_type"] == "prefill"
    np.testing.assert_array_equal(got["scheduled"][prefill], got["t_start"][prefill])
    per_row = stats.set_index("request_id").loc[got["request_id"]]
    np.testing.assert_allclose(
        got["queued"] + origin, per_row["queued_ts"].to_numpy(), atol=1e-9
    )
    beta = make_model(256).fit(got).steps[-1][1].beta_
    expected = make_model(256).fit(phases).steps[-1][1].beta_
    np.testing.assert_allclose(beta, expected, rtol=1e-6)


def test_vllm_request_stats_cached_tokens_instances_and_names(tmp_path):
    from sklearn_beta.io import read_vllm_request_stats

    (tmp_path / "s.log").write_text(
        '{"id": "a", "queued": 5, "scheduled": 7, "first_token": 10, '
        '"last_token": 30, "prompt_tokens": 100, "output_tokens": 5, '
        '"num_cached_tokens": 64, "engine_id": 1}\n'
        '{"id": "b", "queued": 6, "scheduled": 10, "first_token": 12, '
        '"last_token": 12, "prompt_tokens": 40, "output_tokens": 1, '
        '"num_cached_tokens": 0, "engine_id": 0}\n'
    )
    got = read_vllm_request_stats(tmp_path / "s.log", format="jsonl", time_unit="ms")
    assert got["request_id"].tolist() == ["a", "a", "b"]
    assert got["phase_type"].tolist() == ["prefill", "decode", "prefill"]
    assert got["prefill_tokens"].tolist() == [36, 0, 40]
    assert got["decode_tokens"].tolist() == [0, 4, 0]
    assert got["instance_id"].tolist() == [1, 1, 0]
    np.testing.assert_allclose(got["t_start"], [0.002, 0.005, 0.005])
    np.testing.assert_allclose(got["t_end"], [0.005, 0.025, 0.007])
    np.testing.assert_allclose(got["queued"], [0.0, 0.0, 0.001])
    assert got.attrs["time_origin"] == pytest.approx(0.005)
    # columns= renames before the names are looked up.
    (tmp_path / "r.csv").write_text(
        "rid,q,s,f,l,p,o\na,5,7,10,30,36,5\nb,6,10,12,12,40,1\n"
    )
    names = {"rid": "request_id", "q": "queued", "s": "scheduled"}
    names |= {"f": "first_token", "l": "last_token", "p": "prompt_tokens"}
    renamed = read_vllm_request_stats(
        tmp_path / "r.csv", columns=names | {"o": "output_tokens"}, time_unit="ms"
    )
    pd.testing.assert_frame_equal(renamed, got.drop(columns="instance_id"))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s.assign(scheduled_ts=s["queued_ts"] - 1.0),
            r"'scheduled_ts' is earlier than 'queued_ts'.*offending row\(s\): row 0 "
            r"\(request_id=0, queued_ts=",
        ),
        (
            lambda s: s.assign(last_token_ts=s["first_token_ts"] - 1e-3),
            r"'last_token_ts' is earlier than 'first_token_ts'",
        ),
        (
            lambda s: s.drop(columns="first_token_ts"),
            r"first_token \(one of \['first_token', 'first_token_ts', "
            r"'first_token_time'\]\)",
        ),
        (
            lambda s: s.assign(num_generation_tokens=0),
            r"'num_generation_tokens' must be at least 1",
        ),
        (
            lambda s: s.assign(num_prompt_tokens=1.5),
            r"'num_prompt_tokens' must hold non-negative integers",
        ),
        (
            lambda s: s.assign(queued_ts="soon"),
            r"'queued_ts' must hold numbers",
        ),
    ],
    ids=["scheduled<queued", "last<first", "missing", "no-output", "half-token", "nan"],
)
def test_vllm_request_stats_errors_name_the_column(tmp_path, change, message):
    from sklearn_beta.io import read_vllm_request_stats

    _, stats = _engine_stats(20)
    change(stats).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match=message):
        read_vllm_request_stats(tmp_path / "s.csv")


def test_vllm_request_stats_format(tmp_path):
    from sklearn_beta.io import read_vllm_request_stats

    _, stats = _engine_stats(20)
    stats.to_csv(tmp_path / "s.txt", index=False)
    assert len(read_vllm_request_stats(tmp_path / "s.txt")) == 40
    assert len(read_vllm_request_stats(tmp_path / "s.txt", format="csv")) == 40
    with pytest.raises(ValueError, match="s.txt' line 1 is not JSON"):
        read_vllm_request_stats(tmp_path / "s.txt", format="jsonl")
    with pytest.raises(ValueError, match=r"format must be one of \['csv', 'jsonl'\]"):
        read_vllm_request_stats(tmp_path / "s.txt", format="parquet")
    stats.to_csv(tmp_path / "s.parquet", index=False)
    with pytest.raises(ValueError, match="suffix of .* says 'parquet'"):
        read_vllm_request_stats(tmp_path / "s.parquet")


def test_the_format_examples_of_the_docs_read_as_described(tmp_path):
    from sklearn_beta.io import read_tracev2, read_vllm_request_stats

    text = (DATA.parent / "docs" / "formats.md").read_text(encoding="utf-8")
    blocks = text.split("```")[1::2]
    header = next(b for b in blocks if "trace_version: 3" in b).removeprefix("yaml")
    rows = next(b for b in blocks if b.lstrip().startswith("request_id,client_id"))
    stats = next(b for b in blocks if '"queued_ts"' in b)
    (tmp_path / "h.yaml").write_text(header)
    (tmp_path / "t.csv").write_text(rows.lstrip())
    (tmp_path / "s.jsonl").write_text(stats.lstrip())
    v3 = read_tracev2(tmp_path / "t.csv", tmp_path / "h.yaml")
    assert v3["tenant_id"].tolist() == ["alice", "alice", "bob", "bob", "alice"]
    np.testing.assert_allclose(v3["intended_arrival"].unique(), [0, 0.055, 0.11])
    np.testing.assert_allclose(v3["arrival"].unique(), [0, 0.48, 0.9])
    assert "by 0.405 s on average (at most 0.79 s)" in v3.attrs["notes"][0]
    engine = read_vllm_request_stats(tmp_path / "s.jsonl")
    assert engine["prefill_tokens"].tolist() == [990, 0, 498, 0]
    np.testing.assert_allclose(engine["scheduled"].unique(), [0.004, 7.372], atol=1e-9)


def test_read_tracev3_without_status_or_server_counts_keeps_every_request(tmp_path):
    from sklearn_beta.io import read_tracev2

    rows = "\n".join(
        ",".join(line.split(",")[:5] + line.split(",")[6:10])
        for line in TRACEV3_ROWS.replace(",0,0,", ",1300,1400,").splitlines()
    )
    got = read_tracev2(*_write_v3(tmp_path, rows + "\n"))
    assert got["request_id"].tolist() == ["r0", "r0", "r1", "r2", "r2", "r3", "r3"]
    # input_tokens without server_input_tokens.
    assert got["prefill_tokens"].tolist() == [100, 0, 200, 50, 0, 70, 0]
    assert got.attrs["notes"][0].startswith("sends lag")
    (tmp_path / "t.csv").write_text(rows.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="holds no request"):
        read_tracev2(tmp_path / "t.csv", tmp_path / "t.yaml")


@pytest.mark.parametrize(
    "server, expected",
    [
        (None, {}),
        ({"model": "Qwen/Qwen3-14B", "max_num_seqs": 256}, {"max_num_seqs": 256}),
        (
            {"max_num_batched_tokens": 8192, "num_gpu_blocks_override": 18038},
            {"token_budget": 8192, "num_gpu_blocks": 18038},
        ),
        ({"long_prefill_token_threshold": 0}, {"chunk_size": None}),
        ({"long_prefill_token_threshold": 512}, {"chunk_size": 512}),
        (
            {"num_gpu_blocks": 900, "num_gpu_blocks_override": 900},
            {"num_gpu_blocks": 900},
        ),
    ],
)
def test_a_header_server_section_gives_engine_settings(server, expected):
    from sklearn_beta.io._tracev2 import header_engine_settings

    header = {"trace_version": 3} | ({} if server is None else {"server": server})
    assert header_engine_settings(header) == expected


@pytest.mark.parametrize(
    "server, message",
    [
        ("vllm", "'server' must be a mapping"),
        ({"max_num_seqs": 0}, r"server.max_num_seqs must be an integer >= 1, got 0"),
        ({"block_size": "16"}, r"server.block_size must be an integer >= 1"),
        ({"max_num_batched_tokens": True}, "max_num_batched_tokens must be"),
        ({"long_prefill_token_threshold": -1}, "must be an integer >= 0"),
        (
            {"num_gpu_blocks": 900, "num_gpu_blocks_override": 800},
            r"server.num_gpu_blocks \(900\) and server.num_gpu_blocks_override "
            r"\(800\) disagree",
        ),
    ],
)
def test_a_bad_header_server_setting_names_itself(server, message):
    from sklearn_beta.io._tracev2 import header_engine_settings

    with pytest.raises(ValueError, match=message):
        header_engine_settings({"server": server})
