"""Choosing the step model by cross-validation: the one-standard-error rule.

:class:`~sklearn.model_selection.GridSearchCV` over a pipeline's
``step_model`` scores every candidate on held-out folds. A richer model fits
at least as well on the training folds and, when the engine does not have
its extra costs, scores on held-out folds within noise of the simpler one:
picking the best mean then picks the richer model about half the time. The
rule here picks the simplest model (fewest step features) whose mean score
lies within one standard error of the best mean (Hastie, Tibshirani and
Friedman, *The Elements of Statistical Learning*, 7.10), the standard error
being the best candidate's fold standard deviation over the square root of
the number of folds. Among equally simple models the better mean wins.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.model_selection import GridSearchCV

from ..core._step_features import check_step_model
from ..core._trained_physics import IDENTIFIABLE_FEATURES

__all__ = ["compare_step_models", "one_standard_error_rule"]


def one_standard_error_rule(scoring: str | None = None):
    """A ``refit`` callable for GridSearchCV that prefers simpler step models.

    Parameters
    ----------
    scoring : str or None, default=None
        The metric's name under multi-metric ``scoring`` (the keys
        ``mean_test_<name>``); None for a single metric (``mean_test_score``).

    Returns
    -------
    refit : callable
        ``refit(cv_results) -> int``: the index of the candidate with the
        fewest step features whose mean test score is at least the best mean
        minus one standard error of the best (its fold standard deviation
        over the square root of the number of folds); ties in the number of
        features go to the better mean. A candidate's step model is its
        parameter whose name ends in ``step_model`` (``"published"`` when it
        has none).

    Examples
    --------
    >>> from sklearn_beta.model_selection import one_standard_error_rule
    >>> results = {
    ...     "params": [{"t__step_model": "published"},
    ...                {"t__step_model": "attention"}],
    ...     "mean_test_score": [-0.0201, -0.0200],
    ...     "std_test_score": [0.002, 0.002],
    ...     "split0_test_score": [0, 0], "split1_test_score": [0, 0],
    ...     "split2_test_score": [0, 0], "split3_test_score": [0, 0]}
    >>> one_standard_error_rule()(results)
    0
    """
    name = "score" if scoring is None else scoring

    def refit(cv_results) -> int:
        mean = np.asarray(cv_results[f"mean_test_{name}"], dtype=float)
        std = np.asarray(cv_results[f"std_test_{name}"], dtype=float)
        n_splits = sum(
            1
            for key in cv_results
            if key.startswith("split") and key.endswith(f"_test_{name}")
        )
        if not np.any(np.isfinite(mean)):
            raise ValueError(f"No candidate has a finite mean test {name}.")
        best = int(np.nanargmax(mean))
        threshold = mean[best] - std[best] / np.sqrt(max(n_splits, 1))
        sizes = np.array([_n_features(p) for p in cv_results["params"]])
        within = np.flatnonzero(np.nan_to_num(mean, nan=-np.inf) >= threshold)
        simplest = within[sizes[within] == sizes[within].min()]
        return int(simplest[np.argmax(mean[simplest])])

    return refit


def _step_model_of(params: dict):
    model = "published"
    for key, value in params.items():
        if key.endswith("step_model"):
            model = value
    return model


def _n_features(params: dict) -> int:
    model = _step_model_of(params)
    if model == "trained-physics":
        return len(IDENTIFIABLE_FEATURES)
    return len(check_step_model(model))


def compare_step_models(estimator, X, candidates, *, cv, scoring, select=None):
    """Score step models on held-out folds and choose one by the
    one-standard-error rule.

    One :class:`~sklearn.model_selection.GridSearchCV` over ``candidates``
    (no refit: the caller fits the chosen model as it needs), every
    candidate on the same folds; a candidate whose fit or score fails
    scores NaN, is listed with a null error and is never chosen.

    Parameters
    ----------
    estimator : estimator
        The estimator whose parameters the candidates set (a pipeline in
        :class:`~sklearn_beta.model_selection.TraceContextRegressor`, a
        :class:`~sklearn_beta.ScheduleBetaRegressor` with ``trace=``, ...).
    X : DataFrame
        The phase table.
    candidates : list of dict
        One parameter setting per candidate; each holds one parameter whose
        name ends in ``step_model`` (the model it stands for), and may set
        others (a trained-physics deployment, a start ``init``).
    cv : cross-validation generator
        The folds (e.g. ``TraceBlockSplit(4)`` or ``RequestKFold(3)``).
    scoring : callable or dict of callables
        Greater is better. A dict scores several metrics; ``select`` names
        the one the rule chooses by.
    select : str or None, default=None
        With a dict ``scoring``, the key of the choosing metric; None for a
        single callable.

    Returns
    -------
    comparison : dict
        ``chosen`` (the index of the chosen candidate) and ``candidates``,
        one dict per candidate in order: ``step_model``, ``n_coefficients``,
        ``held_out_error`` (minus the mean test score of the choosing
        metric), ``standard_error`` (its fold standard deviation over the
        square root of the number of folds), ``chosen``, and with a dict
        ``scoring`` ``errors``, minus every metric's mean test score (None
        where not finite).
    """
    if isinstance(scoring, dict) and select not in scoring:
        raise ValueError(f"select must name a key of scoring, got {select!r}.")
    search = GridSearchCV(
        estimator,
        [{name: [value] for name, value in c.items()} for c in candidates],
        cv=cv,
        scoring=scoring,
        refit=False,
        error_score=np.nan,
    )
    with warnings.catch_warnings():
        # each fold's fit warns as the chosen model's fit would
        warnings.simplefilter("ignore")
        search.fit(X)
    results = search.cv_results_
    chosen = one_standard_error_rule(select)(results)
    name = "score" if select is None else select
    n_splits = sum(
        1
        for key in results
        if key.startswith("split") and key.endswith(f"_test_{name}")
    )
    rows = []
    for i, params in enumerate(results["params"]):
        row = {
            "step_model": _step_model_of(params),
            "n_coefficients": _n_features(params),
            "held_out_error": _finite(-results[f"mean_test_{name}"][i]),
            "standard_error": _finite(
                results[f"std_test_{name}"][i] / math.sqrt(max(n_splits, 1))
            ),
            "chosen": i == chosen,
        }
        if isinstance(scoring, dict):
            row["errors"] = {k: _finite(-results[f"mean_test_{k}"][i]) for k in scoring}
        rows.append(row)
    return {"chosen": chosen, "candidates": rows}


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
