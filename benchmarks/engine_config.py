"""Does ``select_engine_config`` find the simulated engine, and at what cost?

Usage::

    python benchmarks/engine_config.py            # 2000 requests, 4 seeds
    python benchmarks/engine_config.py --requests 50000 --seeds 0 \
        --scenarios real2048 heavy

For each scenario and seed, simulates a trace with known betas and engine
(``simulate_trace``, 5 % step noise), runs ``select_engine_config`` with its
default candidates and prints: whether the true configuration is the choice
or replays identically to it (``found``), the runner-up and margin, the
choice's held-out replay errors (mean absolute relative error of the prefill
phase, TTFT, decode time), the same replay in-sample with the TRUE betas and
engine (the best any betas achieve, about), and the search's wall and CPU
seconds. The ``real*`` scenarios are stand-ins for vLLM V1 traces of small
models on 80 GB GPUs: 3 to 5 requests running, prompts up to about 7000
tokens, a token budget and no chunk cap.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np

from sklearn_beta import select_engine_config
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.replay import replay_errors, replay_trace

BETA = (8e-3, 2.5e-5, 6e-5)
#: Longer than any prompt drawn: no chunk cap in the simulator.
NO_CAP = 10**6
SHORT = dict(prompt_tokens=(600, 0.8), output_tokens=(150, 0.6))
LONG = dict(prompt_tokens=(1200, 0.45), output_tokens=(200, 0.6))
#: name: (simulator settings, true (chunk_size, token_budget))
SCENARIOS = {
    "light": (
        dict(chunk_size=256, max_num_seqs=16, arrival_rate=4.0, **SHORT),
        (256, None),
    ),
    "heavy": (
        dict(chunk_size=512, max_num_seqs=64, arrival_rate=25.0, **SHORT),
        (512, None),
    ),
    "real8192": (
        dict(
            chunk_size=NO_CAP,
            token_budget=8192,
            max_num_seqs=64,
            arrival_rate=2.2,
            **LONG,
        ),
        (None, 8192),
    ),
    "real2048": (
        dict(
            chunk_size=NO_CAP,
            token_budget=2048,
            max_num_seqs=64,
            arrival_rate=2.2,
            **LONG,
        ),
        (None, 2048),
    ),
    "unchunked": (
        dict(chunk_size=NO_CAP, max_num_seqs=32, arrival_rate=6.0, **SHORT),
        (None, None),
    ),
}


def _mape(replayed, quantity: str) -> float:
    return float(np.mean(np.abs(replay_errors(replayed, quantity))))


def run(name: str, n_requests: int, seed: int) -> str:
    settings, truth = SCENARIOS[name]
    phases = simulate_trace(
        n_requests, beta=BETA, noise=0.05, random_state=seed, **settings
    )
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    wall = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = select_engine_config(phases)
    wall = time.perf_counter() - wall
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu
    chosen = (config.chunk_size, config.token_budget)
    found = truth in [chosen, *config.equivalent]
    best = replay_trace(phases, BETA, chunk_size=truth[0], token_budget=truth[1])
    v = config.validation
    return (
        f"{name:9s} {len(phases):>7d} {seed:>4d}  found={found!s:5s} chosen={chosen} "
        f"same={config.equivalent} runner-up={config.runner_up} "
        f"margin={config.margin:+.3f} | held-out prefill {v['prefill']:.2%} "
        f"TTFT {v['ttft']:.2%} decode {v['decode']:.2%} | true engine in-sample "
        f"TTFT {_mape(best, 'ttft'):.2%} decode {_mape(best, 'decode'):.2%} | "
        f"{wall:.1f} s wall, {cpu:.1f} s cpu"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    args = parser.parse_args()
    print("scenario   phases seed")
    for seed in args.seeds:
        for name in args.scenarios:
            print(run(name, args.requests, seed), flush=True)


if __name__ == "__main__":
    main()
