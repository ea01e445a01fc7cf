"""Regenerate the shipped sample trace from the simulator.

Usage::

    python benchmarks/make_sample.py

Writes the same bytes to ``data/traces/sample.csv`` (used by the examples) and
``sklearn_beta/datasets/data/sample.csv`` (returned by ``load_sample_trace``).
The betas are plausible H100-like values, not measurements.
"""

from __future__ import annotations

from pathlib import Path

from sklearn_beta.datasets import simulate_trace

REPO = Path(__file__).resolve().parents[1]
TARGETS = (
    REPO / "data" / "traces" / "sample.csv",
    REPO / "sklearn_beta" / "datasets" / "data" / "sample.csv",
)
TRUE_BETA = (5e-3, 2e-5, 8e-5)


def make_sample():
    """The sample phase table, times rounded to microseconds."""
    phases = simulate_trace(
        300,
        beta=TRUE_BETA,
        chunk_size=64,
        max_num_seqs=32,
        arrival_rate=8.0,
        prompt_tokens=(512, 1.0),
        output_tokens=(128, 1.0),
        random_state=0,
    )
    # one engine: the simulator's instance_id column (all 0) is left out
    return phases.drop(columns="instance_id").round({"t_start": 6, "t_end": 6})


def main() -> None:
    text = make_sample().to_csv(index=False, lineterminator="\n")
    for path in TARGETS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
