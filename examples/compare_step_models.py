"""Choose the step model by cross-validation (issue 20 item 5).

Two simulated engines, one whose steps cost ``beta0 + beta1 T_p + beta2 T_d``
(the published model) and one whose steps also pay for prefill attention
``A_p = sum t (s + t/2)`` and for the decode context ``C_d`` each decode
reads (the "attention" model). For each trace, GridSearchCV over the
transformer's ``step_model`` scores both models on contiguous time blocks
(TraceBlockSplit, every phase with its full-trace exposures through
TraceContextRegressor) by the held-out phase-duration MAPE, and refits the
simplest model within one standard error of the best
(``one_standard_error_rule``): a richer model that only matches the simpler
one loses the tie.

Run:  python examples/compare_step_models.py     (a few seconds)
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.metrics import get_scorer
from sklearn_beta.model_selection import (
    TraceBlockSplit,
    TraceContextRegressor,
    one_standard_error_rule,
)

CHUNK = 256
TRUTHS = {
    "published": (5e-3, 2e-5, 8e-5),
    "attention": (5e-3, 2e-5, 4e-9, 8e-5, 2e-8),
}
PARAM = "estimator__phaseexposuretransformer__step_model"


def compare(truth: str, seed: int = 0) -> GridSearchCV:
    """Cross-validate both step models on a trace simulated with ``truth``."""
    phases = simulate_trace(
        1500,
        beta=TRUTHS[truth],
        step_model=truth,
        chunk_size=CHUNK,
        max_num_seqs=128,
        arrival_rate=10.0,
        prompt_tokens=(1024, 0.8),
        output_tokens=(200, 0.8),
        noise=0.02,
        random_state=seed,
    )
    # The fixed point on durations fits any step model; damping keeps it
    # stable under load.
    pipe = make_pipeline(
        PhaseExposureTransformer(CHUNK),
        IterativeBetaRegressor(
            "beta_informed", objective="duration", damping=0.5, max_iter=100
        ),
    )
    search = GridSearchCV(
        TraceContextRegressor(pipe, trace=phases),
        {PARAM: ["published", "attention"]},
        cv=TraceBlockSplit(4),
        scoring=get_scorer("neg_duration_mape"),
        refit=one_standard_error_rule(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short folds: wide intervals
        return search.fit(phases)


def main() -> None:
    for truth in TRUTHS:
        search = compare(truth)
        results = search.cv_results_
        print(f"trace simulated with the {truth!r} step model")
        for params, mean, std in zip(
            results["params"],
            results["mean_test_score"],
            results["std_test_score"],
            strict=True,
        ):
            print(
                f"  {params[PARAM]:>10}: held-out duration MAPE "
                f"{-100 * mean:6.2f} % +/- {100 * std:.2f} %"
            )
        chosen = search.best_params_[PARAM]
        beta = search.best_estimator_.estimator_[-1].beta_
        print(f"  chosen: {chosen}  betas: {np.array2string(beta, precision=3)}")


if __name__ == "__main__":
    main()
