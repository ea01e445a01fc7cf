"""Speed of ``simulate_trace`` from 1e4 to 1e6 phases.

Usage::

    python benchmarks/simulate_speed.py                         # all scenarios
    python benchmarks/simulate_speed.py --sizes 1e4 1e5 --scenarios light

Each run simulates ``n_phases / 2`` requests with ``return_steps=True`` and
prints wall and CPU seconds, the number of engine steps and the mean batch.
The simulator's cost grows with the number of scheduling events (about three
per request plus arrivals), and at heavy load with the batch size too; timings
on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import time

from sklearn_beta.datasets import simulate_trace

BETA = (5e-3, 2e-5, 8e-5)
COMMON = dict(beta=BETA, chunk_size=256, max_num_seqs=256, random_state=0)
SCENARIOS = {
    # ~250 running: every step is a scheduling event
    "heavy": dict(arrival_rate=60.0),
    # ~16 running: long blocks of identical steps, many steps per phase
    "light": dict(arrival_rate=10.0),
    # four instances at ~15 requests/s each, 5 % step noise, vLLM token budget
    "fleet-noisy-budget": dict(
        arrival_rate=60.0, n_instances=4, noise=0.05, token_budget=2048
    ),
    # vLLM defaults under load: a KV cache of 4000 blocks of 16 tokens that
    # binds (admission stalls, preemptions), 2 % step noise
    "kv-bound": dict(
        arrival_rate=60.0,
        token_budget=8192,
        num_gpu_blocks=4000,
        block_size=16,
        noise=0.02,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    args = parser.parse_args()
    print(
        f"{'scenario':<20}{'phases':>9}{'wall s':>9}{'cpu s':>8}{'steps':>10}"
        f"{'running':>9}"
    )
    for name in args.scenarios:
        for size in args.sizes:
            wall, cpu = time.perf_counter(), time.process_time()
            _, steps = simulate_trace(
                int(size) // 2, **COMMON, **SCENARIOS[name], return_steps=True
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"{name:<20}{size:>9.0e}{wall:>9.2f}{cpu:>8.2f}{len(steps):>10}"
                f"{steps['n_running'].mean():>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
