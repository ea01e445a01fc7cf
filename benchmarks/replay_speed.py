"""Speed of ``sklearn_beta.replay.replay_trace`` up to 1M requests.

Usage::

    python benchmarks/replay_speed.py                          # all scenarios
    python benchmarks/replay_speed.py --sizes 1e4 1e5 --scenarios light
    python benchmarks/replay_speed.py --backend numpy --sizes 1e4

Each run simulates ``n_requests`` requests (not timed), then replays the
trace with the simulator's own engine and prints the wall and CPU seconds of
the replay, split into reading the phase table (validation, pairing the
phases of each request) and the engine loop, plus the number of engine steps
(known from the simulation). ``--backend`` picks the compiled loop (numba, the
default when installed) or the pure-numpy one; the first compiled run of a
fresh install also pays numba's compilation (cached on disk afterwards).
"""

from __future__ import annotations

import argparse
import time

from sklearn_beta import replay
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine import _loop as _engine
from sklearn_beta.engine import _replay

BETA = (5e-3, 2e-5, 8e-5)
COMMON = dict(chunk_size=256, max_num_seqs=256)
SCENARIOS = {
    # ~250 running: every step is a scheduling event
    "heavy": dict(arrival_rate=60.0),
    # ~16 running: long blocks of identical steps, many steps per phase
    "light": dict(arrival_rate=10.0),
    # four instances at ~15 requests/s each, vLLM token budget
    "fleet-budget": dict(arrival_rate=60.0, n_instances=4, token_budget=2048),
}


class _Timed:
    """Wraps the replay's ``run_engine`` to time the engine loop apart."""

    def __init__(self, run):
        self.run = run
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.run(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--backend", choices=["auto", "numba", "numpy"])
    args = parser.parse_args()
    if args.backend:
        _engine.BACKEND = args.backend
    timed = _Timed(_replay.run_engine)
    _replay.run_engine = timed
    print(
        f"{'scenario':<14}{'requests':>9}{'wall s':>9}{'cpu s':>8}{'read s':>8}"
        f"{'loop s':>8}{'steps':>11}"
    )
    for name in args.scenarios:
        settings = {**COMMON, **SCENARIOS[name]}
        for size in args.sizes:
            phases, steps = simulate_trace(
                int(size), beta=BETA, **settings, random_state=0, return_steps=True
            )
            timed.seconds = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            replay.replay_trace(
                phases,
                BETA,
                chunk_size=settings["chunk_size"],
                token_budget=settings.get("token_budget"),
                max_num_seqs=settings["max_num_seqs"],
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"{name:<14}{size:>9.0e}{wall:>9.2f}{cpu:>8.2f}"
                f"{wall - timed.seconds:>8.2f}{timed.seconds:>8.2f}{len(steps):>11}",
                flush=True,
            )


if __name__ == "__main__":
    main()
