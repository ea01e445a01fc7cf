"""Cross-validated comparison of the beta estimators on fleet traces.

1. A simulated trace of 4 engine instances with known betas: baseline vs
   iterative in every correction mode, cross-validated over contiguous time
   blocks of each instance (TraceBlockSplit), each model wrapped in
   TraceContextRegressor so that every phase keeps its full-trace exposures.
2. The same two headline models under other splits: plain pipelines on
   TraceBlockSplit (edge phases lose context), GroupKFold over instances
   (exact, needs several instances) and KFold over random rows (wrong).
3. GridSearchCV over the chunk size, the objective of the iterative
   estimator and, for the published fixed point on durations, its damping;
   refit on the best mean absolute percentage error.
4. Steps 1 and 3 on the sample trace shipped with the package.

Scores are on phase durations: R^2 of all phases, of prefill phases and of
decode phases, and the mean absolute percentage error (MAPE, shown as a
positive percentage). Each cell is the mean +/- standard deviation over folds.

Run:  python examples/compare_models.py     (about 7 s on two cores)
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, cross_validate
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)
from sklearn_beta.datasets import load_sample_trace, simulate_trace
from sklearn_beta.exceptions import UncertaintyWarning
from sklearn_beta.metrics import phase_scorers
from sklearn_beta.model_selection import (
    TraceBlockSplit,
    TraceContextRegressor,
    complete_context_mask,
)

FLEET_BETA = (6e-3, 2.5e-5, 1.5e-4)
SAMPLE_BETA = (5e-3, 2e-5, 8e-5)
INST = "instance_id"
SCORING = phase_scorers("duration_r2", "prefill_r2", "decode_r2", "neg_duration_mape")
FIXED_MODES = ["end", "end_inside", "uniform", "none"]


def pipeline(regressor, chunk_size, instance_col, mode="end"):
    transformer = PhaseExposureTransformer(
        chunk_size=chunk_size,
        correction_mode=mode,
        columns={"instance_id": instance_col},
    )
    return make_pipeline(transformer, regressor)


def configurations(chunk_size, instance_col):
    """Every estimator configuration to compare, by name (plain pipelines)."""
    configs = {
        f"baseline {mode}": pipeline(
            BaselineBetaRegressor(), chunk_size, instance_col, mode
        )
        for mode in FIXED_MODES
    }
    for mode in ["beta_informed", *FIXED_MODES]:
        regressor = IterativeBetaRegressor(correction_mode=mode)
        configs[f"iterative {mode}"] = pipeline(regressor, chunk_size, instance_col)
    # The published estimator: fixed point on durations, absolute stopping.
    reference = IterativeBetaRegressor(
        "beta_informed", objective="duration", stopping="absolute"
    )
    configs["reference iterative"] = pipeline(reference, chunk_size, instance_col)
    return configs


def summarize(results: dict) -> pd.DataFrame:
    """One row per entry of ``results``: mean +/- std over folds of each score."""
    rows = {}
    for name, scores in results.items():
        row = {}
        for key in SCORING.scorers:
            values = scores[f"test_{key}"]
            if key == "neg_duration_mape":
                values, key = -100 * values, "MAPE %"
            mean = (
                f"{np.mean(values):.3g}"
                if key == "MAPE %"
                else f"{np.mean(values):.5f}"
            )
            row[key] = f"{mean} +/- {np.std(values):.1g}"
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def exact_share(phases, cv, instance_col, groups=None):
    """Share (%) of test phases whose fold-local exposures equal the full trace's."""
    masks = [
        complete_context_mask(phases, test, columns={"instance_id": instance_col})
        for _, test in cv.split(phases, groups=groups)
    ]
    return 100 * np.mean(np.concatenate(masks))


def compare_models(phases, cv, chunk_size, instance_col):
    results = {
        name: cross_validate(
            TraceContextRegressor(model, trace=phases), phases, cv=cv, scoring=SCORING
        )
        for name, model in configurations(chunk_size, instance_col).items()
    }
    return summarize(results)


def compare_splits(phases, chunk_size, splits):
    configs = configurations(chunk_size, INST)
    results = {}
    for split_name, cv, groups, in_context in splits:
        for name in ("baseline end", "iterative end_inside"):
            model = configs[name]
            if in_context:
                model = TraceContextRegressor(model, trace=phases)
            exact = 100.0 if in_context else exact_share(phases, cv, INST, groups)
            label = f"{name} | {split_name} | exact {exact:5.1f} %"
            results[label] = cross_validate(
                model, phases, cv=cv, groups=groups, scoring=SCORING
            )
    return summarize(results)


def grid_search(phases, cv, chunks, instance_col):
    search = GridSearchCV(
        TraceContextRegressor(
            pipeline(IterativeBetaRegressor(), 64, instance_col), trace=phases
        ),
        [
            {
                "estimator__phaseexposuretransformer__chunk_size": chunks,
                "estimator__iterativebetaregressor__objective": ["step_count"],
            },
            {
                "estimator__phaseexposuretransformer__chunk_size": chunks,
                "estimator__iterativebetaregressor__objective": ["duration"],
                "estimator__iterativebetaregressor__correction_mode": ["beta_informed"],
                "estimator__iterativebetaregressor__damping": [0.5, 1.0],
            },
        ],
        cv=cv,
        scoring=SCORING,
        refit="neg_duration_mape",
    ).fit(phases)
    results = search.cv_results_
    table = pd.DataFrame(results["params"]).rename(columns=lambda c: c.split("__")[-1])
    table["MAPE %"] = -100 * results["mean_test_neg_duration_mape"]
    table["MAPE std"] = 100 * results["std_test_neg_duration_mape"]
    table["R^2"] = results["mean_test_duration_r2"]
    table["rank"] = results["rank_test_neg_duration_mape"]
    return search, table.sort_values("rank")


def print_search(search, table, true_beta):
    print("\nGridSearchCV, iterative estimator in TraceContextRegressor:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    best = search.best_estimator_
    params = {k.split("__")[-1]: v for k, v in search.best_params_.items()}
    print(f"best parameters: {params}")
    print(f"refit betas:     {', '.join(f'{b:.5g}' for b in best.beta_)}")
    print(f"true betas:      {', '.join(f'{b:.5g}' for b in true_beta)}")


def main():
    warnings.simplefilter("ignore", ConvergenceWarning)
    # Short folds and the wrong chunk sizes give wide or zero-bound intervals
    # by design: the comparison is of scores, not of intervals.
    warnings.simplefilter("ignore", UncertaintyWarning)
    pd.set_option("display.width", 200)
    fleet = simulate_trace(
        2000,
        beta=FLEET_BETA,
        chunk_size=256,
        max_num_seqs=32,
        arrival_rate=24.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(150, 0.8),
        noise=0.02,
        n_instances=4,
        random_state=0,
    )
    blocks = TraceBlockSplit(5, columns={"instance_id": INST})
    print(f"=== Simulated fleet: {len(fleet)} phases, 4 instances, chunk size 256,")
    print(f"    true betas {FLEET_BETA}; TraceBlockSplit(5) in full-trace context")
    print(compare_models(fleet, blocks, 256, INST).to_string())

    print("\n--- The same two models under other splits")
    groups = fleet[INST]
    print(
        compare_splits(
            fleet,
            256,
            [
                ("blocks, context", blocks, None, True),
                ("blocks, plain  ", blocks, None, False),
                ("GroupKFold(4)  ", GroupKFold(n_splits=4), groups, False),
                (
                    "KFold (WRONG)  ",
                    KFold(5, shuffle=True, random_state=0),
                    None,
                    False,
                ),
            ],
        ).to_string()
    )
    print_search(*grid_search(fleet, blocks, [128, 256, 512], INST), FLEET_BETA)

    sample = load_sample_trace()
    sample_blocks = TraceBlockSplit(3)
    print(f"\n=== Shipped sample: {len(sample)} phases, 1 instance, chunk size 64,")
    print(f"    true betas {SAMPLE_BETA}; TraceBlockSplit(3) in full-trace context")
    print(compare_models(sample, sample_blocks, 64, None).to_string())
    print_search(*grid_search(sample, sample_blocks, [32, 64, 128], None), SAMPLE_BETA)


if __name__ == "__main__":
    main()
