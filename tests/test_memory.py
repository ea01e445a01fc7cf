"""reuse_freed_memory changes where arrays live, never what a fit returns."""

from __future__ import annotations

import numpy as np
from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.fleet import reuse_freed_memory


def _fit(phases):
    model = make_pipeline(
        PhaseExposureTransformer(chunk_size=64), IterativeBetaRegressor()
    )
    return model.fit(phases)[-1]


def test_fit_inside_reuse_freed_memory_is_bit_identical():
    phases = simulate_trace(
        800,
        beta=(5e-3, 2e-5, 1e-4),
        chunk_size=64,
        max_num_seqs=32,
        arrival_rate=40.0,
        noise=0.05,
        random_state=1,
    )
    outside = _fit(phases)
    with reuse_freed_memory():
        # Arrays far above glibc's mmap threshold, freed and made again.
        for _ in range(3):
            big = np.ones(8_000_000)
            assert big.sum() == 8_000_000
            del big
        inside = _fit(phases)
    after = _fit(phases)
    np.testing.assert_array_equal(inside.beta_, outside.beta_)
    np.testing.assert_array_equal(after.beta_, outside.beta_)
    np.testing.assert_allclose(outside.beta_, (5e-3, 2e-5, 1e-4), rtol=0.02)
