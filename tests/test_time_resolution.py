"""Near-coincident boundaries: logging jitter must not create sliver segments."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO
from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.core._grid import snap_times
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.io import read_otel_spans

BETA = np.array([4e-3, 3e-5, 2e-4])


def test_snap_times_merges_runs_per_instance():
    t_start = np.array([0.0, 1.0, 1.0 + 1e-13, 0.0])
    t_end = np.array([1.0 - 1e-13, 2.0, 3.0, 1.0 + 5e-14])
    instance = np.array([0, 0, 0, 1])
    start, end = snap_times(t_start, t_end, instance, 1e-9)
    np.testing.assert_array_equal(start, [0.0, 1.0 - 1e-13, 1.0 - 1e-13, 0.0])
    np.testing.assert_array_equal(end, [1.0 - 1e-13, 2.0, 3.0, 1.0 + 5e-14])
    same = snap_times(t_start, t_end, instance, 0.0)
    assert same[0] is t_start and same[1] is t_end


def _jittered(phases, rng, size=1e-12):
    """Each phase's end moved by float-scale jitter: coincident events split."""
    out = phases.copy()
    out["t_end"] = out["t_end"] + rng.uniform(-size, size, len(out))
    # A decode starts where its prefill ended, as a logger would rebuild it.
    prefill_end = out.loc[out.phase_type == "prefill"].set_index("request_id").t_end
    is_decode = out.phase_type == "decode"
    out.loc[is_decode, "t_start"] = out.loc[is_decode, "request_id"].map(prefill_end)
    return out


def test_jitter_is_absorbed_by_time_resolution():
    phases = simulate_trace(
        1500,
        beta=BETA,
        chunk_size=256,
        max_num_seqs=12,
        arrival_rate=15.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(40, 0.8),
        random_state=3,
    )
    jittered = _jittered(phases, np.random.default_rng(0))

    def fit(trace, resolution):
        transformer = PhaseExposureTransformer(256, time_resolution=resolution)
        return make_pipeline(transformer, IterativeBetaRegressor()).fit(trace)[-1]

    exact = fit(phases, 0.0).beta_
    np.testing.assert_allclose(exact, BETA, rtol=1e-6)
    np.testing.assert_allclose(fit(jittered, 1e-6).beta_, BETA, rtol=1e-6)
    np.testing.assert_allclose(fit(jittered, "auto").beta_, BETA, rtol=1e-6)
    # Without merging, the slivers take the partial chunks: beta1 is biased.
    raw = fit(jittered, 0.0).beta_
    assert abs(raw[1] / BETA[1] - 1) > 1e-3


def test_otel_reader_snaps_rebuilt_boundaries():
    spans = REPO / "data" / "otel" / "spans.jsonl"
    raw = read_otel_spans(spans, time_resolution=0.0)
    snapped = read_otel_spans(spans)
    assert np.abs(snapped.t_start - raw.t_start).max() < 1e-6
    assert snapped.t_start.nunique() < raw.t_start.nunique()
    model = make_pipeline(
        PhaseExposureTransformer(256, columns={"instance_id": "instance_id"}),
        IterativeBetaRegressor(),
    )
    np.testing.assert_allclose(model.fit(snapped)[-1].beta_, BETA, rtol=1e-5)


def test_resolution_that_swallows_a_phase_is_an_error():
    phases = simulate_trace(
        50,
        beta=BETA,
        chunk_size=256,
        max_num_seqs=8,
        arrival_rate=5.0,
        random_state=0,
    )
    transformer = PhaseExposureTransformer(256, time_resolution=10.0)
    with pytest.raises(ValueError, match="time_resolution=10 merges the start and end"):
        transformer.fit_transform(phases)
