"""What the wrong decode-token convention costs (issue 10, point 7).

Real exports often count the first output token, which the last prefill step
emits, in ``decode_tokens``; the simulator (and the reference) do not. This
script simulates the ``accuracy.py`` scenarios, adds one to every decode
row's ``decode_tokens`` (an export that counts all output tokens), and fits
the default pipeline with ``decode_tokens_include_first`` right (True) and
wrong (False), and the unshifted trace with the default (False) and wrongly
True. It prints the relative error of each beta and the step-time error
(``sklearn_beta.metrics.step_time_error``: the per-step error of a simulator
calibrated with the estimate).

Usage::

    python benchmarks/decode_convention.py                  # 4000 requests, ~1 min
    python benchmarks/decode_convention.py --n-requests 2000 --scenarios light

Scenarios are those of ``accuracy.py`` plus ``*_short_outputs`` variants
with 32-token (median) outputs, where one step in ``D`` weighs most.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace

import numpy as np
from accuracy import LENGTHS, SCENARIOS, simulate
from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.metrics import coefficient_errors, step_time_error

#: Chat-like short outputs, where one decode step in D matters most.
SHORT_OUTPUTS = dict(LENGTHS, output_tokens=(32, 0.8))
SCENARIOS = SCENARIOS | {
    f"{name}_short_outputs": replace(
        SCENARIOS[name],
        name=f"{name}_short_outputs",
        description=SCENARIOS[name].description + ", 32-token outputs",
        lengths=SHORT_OUTPUTS,
    )
    for name in ("light", "heavy_c1024")
}
DEFAULT_SCENARIOS = (
    "light,heavy_c1024,long_prompts,light_short_outputs,heavy_c1024_short_outputs"
)


def fit(phases, scenario, include_first: bool) -> np.ndarray:
    model = make_pipeline(
        PhaseExposureTransformer(
            chunk_size=scenario.chunk_size,
            decode_tokens_include_first=include_first,
        ),
        IterativeBetaRegressor(confidence_level=None),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(phases)[-1].beta_


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-requests", type=int, default=4000)
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        f"| scenario | export counts first token | decode_tokens_include_first | "
        f"beta0 | beta1 | beta2 | step time |  ({args.n_requests} requests)"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name]
        trace = simulate(scenario, args.n_requests, args.seed)
        counted = trace.phases.copy()
        decode = counted["phase_type"] == "decode"
        counted.loc[decode, "decode_tokens"] += 1
        for exported, phases in (("no", trace.phases), ("yes", counted)):
            for setting in (False, True):
                beta = fit(phases, scenario, setting)
                err = coefficient_errors(scenario.beta, beta)
                step = step_time_error(scenario.beta, beta, trace.steps)
                right = setting == (exported == "yes")
                print(
                    f"| {name} | {exported} | {setting}{'' if right else ' (wrong)'} | "
                    + " | ".join(f"{100 * e:+.2f}%" for e in err)
                    + f" | {100 * step:.2f}% |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
