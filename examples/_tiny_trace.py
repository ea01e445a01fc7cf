"""Four requests on one engine, typed in: the trace both smoke examples fit.

The times are those of an engine with chunk size 32 whose steps last exactly
``0.01 + 1e-4 * prefill_tokens + 5e-4 * decode_tokens`` seconds (written
down from ``simulate_trace(4, beta=TRUE_BETA, chunk_size=32, max_num_seqs=4,
arrival_rate=20.0, prompt_tokens=(80, 0.5), output_tokens=(8, 0.4),
random_state=0)``, rounded to microseconds).
"""

import pandas as pd

TRUE_BETA = (0.01, 1e-4, 5e-4)  # s/step, s/prefill token, s/decode token
CHUNK_SIZE = 32

PHASES = pd.DataFrame(
    {
        "request_id": ["r0", "r0", "r1", "r1", "r2", "r2", "r3", "r3"],
        "phase_type": ["prefill", "decode"] * 4,
        "t_start": [0.039794, 0.135094, 0.105794, 0.135094,
                    0.157094, 0.231394, 0.199694, 0.243894],
        "t_end": [0.135094, 0.243894, 0.135094, 0.255394,
                  0.231394, 0.321394, 0.243894, 0.394894],
        "prefill_tokens": [204, 0, 49, 0, 129, 0, 74, 0],
        "decode_tokens": [0, 8, 0, 9, 0, 8, 0, 14],
    }
)  # fmt: skip
