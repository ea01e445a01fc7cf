"""Cross-validated comparison of the beta estimators on fleet traces.

1. A simulated trace of 4 engine instances with known betas: baseline vs
   iterative in every correction mode, scored by cross-validation over
   contiguous time blocks (TraceBlockSplit) and, for reference, over whole
   instances (GroupKFold) and over random rows (KFold, which is wrong here).
2. GridSearchCV over the chunk size and the damping of the iterative
   estimator, refit on the best mean absolute percentage error.
3. The same comparison and search on the sample trace shipped with the
   package (one instance, 300 requests).

Scores are computed on phase durations: R^2 of all phases, of prefill and of
decode phases, and the mean absolute percentage error (MAPE, shown as a
positive percentage). Mean and standard deviation over the folds.

Run:  python examples/compare_models.py     (about a minute on two cores)
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
from sklearn_beta.metrics import phase_scorers
from sklearn_beta.model_selection import TraceBlockSplit, complete_context_mask

TRUE_BETA = (6e-3, 2.5e-5, 1.5e-4)
CHUNK = 256
INST = "instance_id"
SCORING = phase_scorers("duration_r2", "prefill_r2", "decode_r2", "neg_duration_mape")
FIXED_MODES = ["end", "end_inside", "uniform", "none"]


def models(chunk_size, instance_col):
    """Every estimator configuration to compare, by name."""

    def pipe(regressor, mode="end"):
        transformer = PhaseExposureTransformer(
            chunk_size=chunk_size, correction_mode=mode, instance_col=instance_col
        )
        return make_pipeline(transformer, regressor)

    configs = {
        f"baseline {mode}": pipe(BaselineBetaRegressor(), mode) for mode in FIXED_MODES
    }
    for mode in ["beta_informed", *FIXED_MODES]:
        configs[f"iterative {mode}"] = pipe(
            IterativeBetaRegressor(correction_mode=mode, damping=0.5)
        )
    return configs


def summarize(results: dict) -> pd.DataFrame:
    """One row per configuration: mean +/- std over folds of each score."""
    rows = {}
    for name, scores in results.items():
        row = {}
        for key in SCORING:
            values = scores[f"test_{key}"]
            if key.startswith("neg_") and key.endswith("mape"):
                values, key = -100 * values, "MAPE %"
            row[key] = f"{np.mean(values):7.3f} +/- {np.std(values):6.3f}"
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def compare(phases, cv, chunk_size, instance_col, groups=None):
    results = {
        name: cross_validate(model, phases, cv=cv, groups=groups, scoring=SCORING)
        for name, model in models(chunk_size, instance_col).items()
    }
    return summarize(results)


def exact_share(phases, cv, instance_col, groups=None):
    """Share of test phases whose fold-local exposures equal the full trace's."""
    masks = [
        complete_context_mask(phases, test, instance_col=instance_col)
        for _, test in cv.split(phases, groups=groups)
    ]
    return 100 * np.mean(np.concatenate(masks))


def search(phases, cv, chunks, instance_col):
    grid = GridSearchCV(
        make_pipeline(
            PhaseExposureTransformer(instance_col=instance_col),
            IterativeBetaRegressor(),
        ),
        {
            "phaseexposuretransformer__chunk_size": chunks,
            "iterativebetaregressor__damping": [0.5, 1.0],
        },
        cv=cv,
        scoring=SCORING,
        refit="neg_duration_mape",
    ).fit(phases)
    table = pd.DataFrame(grid.cv_results_["params"]).rename(
        columns=lambda c: c.split("__")[1]
    )
    table["MAPE %"] = -100 * grid.cv_results_["mean_test_neg_duration_mape"]
    table["MAPE std"] = 100 * grid.cv_results_["std_test_neg_duration_mape"]
    table["R^2"] = grid.cv_results_["mean_test_duration_r2"]
    table["rank"] = grid.cv_results_["rank_test_neg_duration_mape"]
    return grid, table.sort_values("rank")


def report(title, phases, cv, chunk_size, chunks, instance_col, true_beta, extra=()):
    print(f"\n=== {title} ===")
    print(
        f"{len(phases)} phases; cv = {cv!r}; exact test exposures: "
        f"{exact_share(phases, cv, instance_col):.1f} % of test phases"
    )
    with pd.option_context("display.width", 200, "display.max_columns", 10):
        print(compare(phases, cv, chunk_size, instance_col).to_string())
        for name, other_cv, groups in extra:
            print(f"\n-- iterative beta_informed and baseline end under {name}:")
            print(
                f"   exact test exposures: "
                f"{exact_share(phases, other_cv, instance_col, groups):.1f} %"
            )
            subset = {
                k: v
                for k, v in models(chunk_size, instance_col).items()
                if k in ("baseline end", "iterative beta_informed")
            }
            results = {
                k: cross_validate(
                    m, phases, cv=other_cv, groups=groups, scoring=SCORING
                )
                for k, m in subset.items()
            }
            print(summarize(results).to_string())
        grid, table = search(phases, cv, chunks, instance_col)
        print("\nGridSearchCV (iterative, beta_informed), refit on MAPE:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    best = grid.best_estimator_[-1]
    print(f"best parameters: {grid.best_params_}")
    print(f"refit betas:     {np.array2string(best.beta_, precision=4)}")
    print(f"true betas:      {np.array2string(np.asarray(true_beta), precision=4)}")


def main():
    warnings.simplefilter("ignore", ConvergenceWarning)
    fleet = simulate_trace(
        2000,
        beta=TRUE_BETA,
        chunk_size=CHUNK,
        max_num_seqs=32,
        arrival_rate=24.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(150, 0.8),
        noise=0.02,
        n_instances=4,
        random_state=0,
    )
    report(
        f"Simulated fleet: 4 instances, chunk size {CHUNK}, betas {TRUE_BETA}",
        fleet,
        TraceBlockSplit(5, instance_col=INST),
        CHUNK,
        [128, 256, 512],
        INST,
        TRUE_BETA,
        extra=[
            ("GroupKFold(4) over instances", GroupKFold(n_splits=4), fleet[INST]),
            (
                "KFold(5, shuffle): WRONG for traces",
                KFold(5, shuffle=True, random_state=0),
                None,
            ),
        ],
    )
    sample = load_sample_trace()
    report(
        "Shipped sample: 1 instance, chunk size 64, betas (5e-3, 2e-5, 8e-5)",
        sample,
        TraceBlockSplit(3),
        64,
        [32, 64, 128],
        None,
        (5e-3, 2e-5, 8e-5),
    )


if __name__ == "__main__":
    main()
