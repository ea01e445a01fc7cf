"""Write ``trace.csv`` and ``header.yaml``: a BLIS TraceV2 example (client side).

Run from the repository root (``python data/tracev2/make_trace.py``); the
output is deterministic. One engine is simulated step by step
(``sklearn_beta.datasets.simulate_trace``) at light load with true betas
4 ms/step, 30 µs/prefill token, 200 µs/decode token and a chunk of 256
tokens; a client then logs each request as TraceV2 does: sent 2 ms (plus up
to 1 ms of jitter) before the engine's first step, each chunk received 1 ms
after the engine emitted it. Three requests failed (status ``error``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sklearn_beta.datasets import simulate_trace

HERE = Path(__file__).resolve().parent
TRUE_BETA = (4e-3, 3e-5, 2e-4)
COLUMNS = (
    "request_id, client_id, tenant_id, slo_class, session_id, round_index, "
    "prefix_group, prefix_length, streaming, input_tokens, output_tokens, "
    "text_tokens, image_tokens, audio_tokens, video_tokens, reason_ratio, model, "
    "deadline_us, server_input_tokens, arrival_time_us, send_time_us, "
    "first_chunk_time_us, last_chunk_time_us, num_chunks, status, error_message, "
    "finish_reason"
).split(", ")
HEADER = """\
trace_version: 2
time_unit: us
mode: real
warm_up_requests: 0
server:
  model: example/simulated-8b
  max_num_seqs: 16
"""


def main() -> None:
    phases = simulate_trace(
        200,
        beta=TRUE_BETA,
        chunk_size=256,
        max_num_seqs=16,
        arrival_rate=1.0,
        random_state=7,
    )
    rng = np.random.default_rng(7)
    prefill = phases[phases["phase_type"] == "prefill"].set_index("request_id")
    decode = phases[phases["phase_type"] == "decode"].set_index("request_id")
    n = len(prefill)
    send = prefill["t_start"] - 0.002 - rng.uniform(0.0, 0.001, n)
    first = prefill["t_end"] + 0.001
    last = decode["t_end"].reindex(prefill.index) + 0.001
    output = decode["decode_tokens"].reindex(prefill.index).to_numpy() + 1
    epoch_us = 1_767_225_600_000_000  # 2026-01-01, as a client clock would read
    us = lambda t: epoch_us + np.round(np.asarray(t) * 1e6).astype(np.int64)  # noqa: E731
    status = np.where(np.isin(np.arange(n), [17, 90, 151]), "error", "ok")
    table = pd.DataFrame(
        {
            "request_id": [f"req-{i:04d}" for i in prefill.index],
            "client_id": "client-0",
            "tenant_id": "default",
            "slo_class": "standard",
            "session_id": [f"s-{i:04d}" for i in prefill.index],
            "round_index": 0,
            "prefix_group": "",
            "prefix_length": 0,
            "streaming": "true",
            "input_tokens": prefill["prefill_tokens"].to_numpy(),
            "output_tokens": output,
            "text_tokens": prefill["prefill_tokens"].to_numpy(),
            "image_tokens": 0,
            "audio_tokens": 0,
            "video_tokens": 0,
            "reason_ratio": 0.0,
            "model": "example/simulated-8b",
            "deadline_us": 0,
            "server_input_tokens": prefill["prefill_tokens"].to_numpy(),
            "arrival_time_us": us(send),
            "send_time_us": us(send),
            "first_chunk_time_us": us(first),
            "last_chunk_time_us": us(last),
            "num_chunks": output,
            "status": status,
            "error_message": np.where(status == "ok", "", "upstream timeout"),
            "finish_reason": np.where(status == "ok", "length", ""),
        },
        columns=COLUMNS,
    )
    table.to_csv(HERE / "trace.csv", index=False)
    (HERE / "header.yaml").write_text(HEADER)


if __name__ == "__main__":
    main()
