"""The sample trace shipped with the package."""

from __future__ import annotations

from importlib import resources

import pandas as pd

SAMPLE_FILE = "sample.csv"


def load_sample_trace() -> pd.DataFrame:
    """Load the sample phase trace shipped with sklearn-beta.

    300 requests (600 phases) simulated by :func:`simulate_trace` on one
    engine instance with chunk size 64 at moderate load, with the plausible
    H100-like true betas ``(5e-3, 2e-5, 8e-5)`` (seconds per step, per
    prefill token, per decode token). The exact generating call is in
    ``data/traces/README.md`` of the repository and in
    ``benchmarks/make_sample.py``.

    Returns
    -------
    phases : DataFrame of shape (600, 6)
        Columns ``request_id``, ``phase_type``, ``t_start``, ``t_end``,
        ``prefill_tokens``, ``decode_tokens``; times in seconds, rounded to
        microseconds.

    See Also
    --------
    simulate_trace : Generate traces like this one with chosen betas.

    Examples
    --------
    >>> from sklearn_beta.datasets import load_sample_trace
    >>> phases = load_sample_trace()
    >>> phases.shape
    (600, 6)
    """
    path = resources.files(__package__).joinpath("data", SAMPLE_FILE)
    with path.open("r") as handle:
        return pd.read_csv(handle)
