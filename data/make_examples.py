"""Write the example traces under ``data/`` from a tiny step-level engine model.

Each engine instance runs the package's engine loop (``sklearn_beta.engine._loop``,
vLLM V1 scheduling, no token budget): every step gives each running prefill
one chunk of at most ``CHUNK`` uncached prompt tokens and each running decode
one token, and lasts ``beta0 + beta1 * prefill_tokens + beta2 *
decode_tokens``. A request's last prefill step emits its first output token.
The script records what a vLLM server's ``llm_request`` span and a
benchmark client would see and writes:

* ``data/otel/spans.jsonl``: OTLP JSON lines, as an OpenTelemetry
  collector's file exporter writes them (three instances; cached prompt
  tokens reported on one of them only);
* ``data/bench/results.json``: a serving benchmark's detailed result file.

Run ``PYTHONPATH=. python data/make_examples.py`` from the repository root;
the output is deterministic. The true betas are in ``TRUE_BETA`` (seconds).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from sklearn_beta.engine._loop import run_engine

TRUE_BETA = (4e-3, 3e-5, 2e-4)  # s/step, s/prefill token, s/decode token
CHUNK = 256
MAX_RUNNING = 12
HERE = Path(__file__).resolve().parent
EPOCH_NS = 1_764_150_000_000_000_000  # 2025-11-26, an arbitrary wall-clock origin


def make_requests(rng, n, rate, cache_fraction):
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
    prompt = rng.integers(60, 1500, n)
    cached = np.where(rng.random(n) < cache_fraction, (rng.integers(0, 4, n) * 128), 0)
    cached = np.minimum(cached, prompt - 1)
    output = rng.integers(1, 90, n)
    return arrival, prompt, cached, output


def simulate(arrival, prompt, cached, output):
    """Step-level simulation of one instance; returns per-request timestamps.

    The package's engine loop (the one of ``simulate_trace`` and the replay):
    admission time, end of the last prefill step (which emits the first output
    token, so ``output - 1`` decode steps follow) and end of the last step.
    """
    run = run_engine(
        arrival,
        prompt - cached,
        output - 1,
        np.zeros(len(arrival), dtype=np.int64),
        beta=TRUE_BETA,
        chunk_size=CHUNK,
        token_budget=None,
        max_num_seqs=MAX_RUNNING,
    )
    return run.admitted, run.prefill_end, run.decode_end


def attr(key, value):
    if isinstance(value, str):
        return {"key": key, "value": {"stringValue": value}}
    if isinstance(value, int | np.integer):
        return {"key": key, "value": {"intValue": str(int(value))}}
    return {"key": key, "value": {"doubleValue": float(value)}}


def llm_request_span(rid, arrival, prompt, cached, output, sched, first, end, cache):
    start_ns = EPOCH_NS + round(arrival * 1e9)
    end_ns = EPOCH_NS + round(end * 1e9)
    attributes = [
        attr("gen_ai.response.model", "example-7b"),
        attr("gen_ai.request.id", rid),
        attr("gen_ai.usage.prompt_tokens", int(prompt)),
        attr("gen_ai.usage.completion_tokens", int(output)),
        attr("gen_ai.latency.time_in_queue", sched - arrival),
        attr("gen_ai.latency.time_to_first_token", first - arrival),
        attr("gen_ai.latency.time_in_model_prefill", first - sched),
        attr("gen_ai.latency.time_in_model_decode", end - first),
        attr("gen_ai.latency.e2e", end - arrival),
    ]
    if cache:
        attributes.append(attr("gen_ai.usage.cache_read.input_tokens", int(cached)))
    return {
        "traceId": hashlib.sha256(rid.encode()).hexdigest()[:32],
        "spanId": hashlib.sha256(rid.encode()).hexdigest()[32:48],
        "name": "llm_request",
        "kind": 2,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(end_ns),
        "attributes": attributes,
        "status": {},
    }


def write_otel(rng):
    lines = []
    for k, (host, rate, cache) in enumerate(
        [
            ("gpu-node-a", 6.0, True),
            ("gpu-node-b", 9.0, False),
            ("gpu-node-c", 4.0, False),
        ]
    ):
        arrival, prompt, cached, output = make_requests(
            rng, 40, rate, 0.6 if cache else 0
        )
        sched, first, end = simulate(arrival, prompt, cached, output)
        resource = {
            "attributes": [
                attr("service.name", "vllm"),
                attr("service.instance.id", f"vllm-{k}"),
                attr("host.name", host),
            ]
        }
        spans = [
            llm_request_span(f"cmpl-{k}-{i:03d}", *row, cache)
            for i, row in enumerate(
                zip(arrival, prompt, cached, output, sched, first, end, strict=True)
            )
        ]
        # The file exporter writes one line per export batch.
        for b in range(0, len(spans), 8):
            scope = {"scope": {"name": "vllm.llm_engine"}, "spans": spans[b : b + 8]}
            lines.append(
                {"resourceSpans": [{"resource": resource, "scopeSpans": [scope]}]}
            )
    # A span of another kind, exported by the HTTP layer: the reader ignores it.
    http = {
        "name": "POST /v1/completions",
        "kind": 2,
        "startTimeUnixNano": str(EPOCH_NS),
        "endTimeUnixNano": str(EPOCH_NS + 1_000_000),
        "attributes": [attr("http.route", "/v1/completions")],
    }
    lines.insert(
        3,
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [attr("service.name", "api-gateway")]},
                    "scopeSpans": [{"scope": {"name": "http"}, "spans": [http]}],
                }
            ]
        },
    )
    text = "\n".join(json.dumps(line, separators=(",", ":")) for line in lines)
    (HERE / "otel" / "spans.jsonl").write_text(text + "\n")


def write_bench(rng):
    arrival, prompt, cached, output = make_requests(rng, 60, 7.0, 0.0)
    sched, first, end = simulate(arrival, prompt, cached, output)
    network = 0.002 + rng.exponential(0.001, len(arrival))  # request + first chunk
    ttft = first - arrival + network
    itls = []
    for i in range(len(arrival)):
        # Decode tokens arrive evenly enough for an example; real ITLs jitter.
        gaps = np.diff(np.linspace(first[i], end[i], output[i]))
        itls.append([round(g, 6) for g in gaps.tolist()])
    result = {
        "date": "20251126-101500",
        "backend": "vllm",
        "model_id": "example-7b",
        "tokenizer_id": "example-7b",
        "num_prompts": len(arrival),
        "request_rate": 7.0,
        "burstiness": 1.0,
        "max_concurrency": None,
        "duration": float(end.max() - arrival.min()),
        "completed": len(arrival),
        "total_input_tokens": int(prompt.sum()),
        "total_output_tokens": int(output.sum()),
        "request_throughput": len(arrival) / float(end.max()),
        "mean_ttft_ms": float(ttft.mean() * 1e3),
        "median_ttft_ms": float(np.median(ttft) * 1e3),
        "start_times": [round(a, 6) for a in arrival.tolist()],
        "input_lens": prompt.tolist(),
        "output_lens": output.tolist(),
        "ttfts": [round(x, 6) for x in ttft.tolist()],
        "itls": itls,
        "generated_texts": ["" for _ in arrival],
        "errors": ["" for _ in arrival],
    }
    (HERE / "bench" / "results.json").write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    rng = np.random.default_rng(20251126)
    write_otel(rng)
    write_bench(rng)
