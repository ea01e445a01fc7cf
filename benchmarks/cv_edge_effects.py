"""How much does each split distort the exposures, the betas and the scores?

For each split of a fleet trace, compared with the full trace:

* exact %   -- share of test (and training) phases whose fold-local exposures
               equal the full trace's (complete_context_mask);
* exp. err  -- median relative error of the test phases' exposures;
* beta err  -- max over folds and coefficients of |beta_fold - beta_ctx| /
               |beta_ctx|, where beta_fold is fitted on the fold's rows alone
               (what cross-validation does) and beta_ctx on the same rows with
               full-trace context (the full exposure table with sample_weight
               0 outside the training rows);
* score err -- max over folds of |R^2_fold - R^2_ctx| on the test rows.

TraceContextRegressor removes these differences by construction (it fits and
predicts with the full trace's exposures): use it when they matter.

Run:  PYTHONPATH=. python benchmarks/cv_edge_effects.py [n_requests] [n_instances]
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, KFold

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.model_selection import TraceBlockSplit, complete_context_mask

INST = "instance_id"
BETA = (6e-3, 2.5e-5, 1.5e-4)
CHUNK = 256


def fleet(n_requests, n_instances, seed=0):
    return simulate_trace(
        n_requests,
        beta=BETA,
        chunk_size=CHUNK,
        max_num_seqs=32,
        arrival_rate=6.0 * n_instances,
        prompt_tokens=(600, 0.8),
        output_tokens=(150, 0.8),
        noise=0.02,
        n_instances=n_instances,
        random_state=seed,
    )


def measure(phases, cv, regressor, groups=None):
    transformer = PhaseExposureTransformer(
        chunk_size=CHUNK, columns={"instance_id": INST}
    )
    full = transformer.fit_transform(phases)
    exact_test, exact_train, exp_err, beta_err, score_err = [], [], [], [], []
    for train, test in cv.split(phases, groups=groups):
        exact_test.append(
            complete_context_mask(phases, test, columns={"instance_id": INST})
        )
        exact_train.append(
            complete_context_mask(phases, train, columns={"instance_id": INST})
        )
        local_test = transformer.fit_transform(phases.iloc[test])
        cols = ["prefill_exposure", "decode_exposure"]
        ref = full.iloc[test][cols].to_numpy()
        exp_err.append(
            np.abs(local_test[cols].to_numpy() - ref) / np.maximum(np.abs(ref), 1e-12)
        )
        local = regressor().fit(transformer.fit_transform(phases.iloc[train]))
        weight = np.zeros(len(phases))
        weight[train] = 1.0
        ctx = regressor().fit(full, sample_weight=weight)
        beta_err.append(
            np.max(
                np.abs(local.beta_ - ctx.beta_) / np.maximum(np.abs(ctx.beta_), 1e-15)
            )
        )
        y = full["duration"].to_numpy()[test]
        score_local = r2_score(y, local.predict(local_test))
        score_ctx = r2_score(y, ctx.predict(full)[test])
        score_err.append(abs(score_local - score_ctx))
    return {
        "exact test %": 100 * np.mean(np.concatenate(exact_test)),
        "exact train %": 100 * np.mean(np.concatenate(exact_train)),
        "exp. err (median)": float(np.median(np.concatenate(exp_err))),
        "beta err (max)": float(np.max(beta_err)),
        "score err (max)": float(np.max(score_err)),
    }


def main(n_requests=4000, n_instances=4):
    warnings.simplefilter("ignore", ConvergenceWarning)
    phases = fleet(n_requests, n_instances)
    span = phases.groupby(INST)["t_end"].max() - phases.groupby(INST)["t_start"].min()
    life = phases.groupby("request_id").agg(a=("t_start", "min"), b=("t_end", "max"))
    lifetime = life.b - life.a
    print(
        f"{len(phases)} phases, {n_instances} instances, "
        f"{span.mean():.0f} s per instance, median request lifetime "
        f"{lifetime.median():.1f} s (p99 {lifetime.quantile(0.99):.1f} s)"
    )
    splits = [
        ("KFold(5, shuffle)", KFold(5, shuffle=True, random_state=0), None),
        ("GroupKFold(4) instances", GroupKFold(n_splits=n_instances), phases[INST]),
    ] + [
        (
            f"TraceBlockSplit({k})",
            TraceBlockSplit(k, columns={"instance_id": INST}),
            None,
        )
        for k in (3, 5, 10)
    ]
    header = None
    for regressor in (BaselineBetaRegressor, IterativeBetaRegressor):
        print(f"\n{regressor.__name__}")
        for name, cv, groups in splits:
            row = measure(phases, cv, regressor, groups)
            if header is None:
                header = "  " + " " * 26 + "".join(f"{k:>19s}" for k in row)
            print(header) if name.startswith("KFold") else None
            print(f"  {name:<26s}" + "".join(f"{v:19.3g}" for v in row.values()))


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:]])
