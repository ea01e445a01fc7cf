"""Invariants of the estimators as property-based tests on random traces.

Each property is checked on a few dozen small random traces (see
``synthetic.py``): enough to catch an ordering, origin or unit dependence,
few enough to run in seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.pipeline import make_pipeline
from trace_factory import GRID, simulated_trace, synthetic_trace

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    estimate_betas_baseline,
    estimate_betas_iterative,
)
from sklearn_beta.core._corrections import (
    FIXED_CORRECTION_MODES,
    beta_informed_correction_mass,
    fixed_correction_mass,
)
from sklearn_beta.core._fixed_point import step_averaged_design, step_density
from sklearn_beta.core._grid import (
    build_grid,
    count_active,
    cumulative,
    phase_integrals,
)
from sklearn_beta.core._validation import PhaseColumns, check_phases
from sklearn_beta.estimators._exposure import (
    baseline_exposures,
    phase_step_density,
    timeline_from_arrays,
)

PROPERTY = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
seeds = st.integers(0, 2**32 - 1)
sizes = st.integers(8, 30)
chunks = st.sampled_from([16, 32, 64])


INST = "instance_id"
sources = st.sampled_from(["synthetic", "simulated"])


def any_trace(source, seed, n, **kwargs):
    return (simulated_trace if source == "simulated" else trace)(seed, n, **kwargs)


def trace(seed, n, **kwargs):
    # Dense enough that phases overlap: the estimators then identify all betas.
    return synthetic_trace(seed, n, horizon=n / 5, **kwargs)


def unit_scales(diagnostics):
    """Per coefficient, the mean duration over the mean exposure: a change of
    beta_k by this much moves the mean predicted duration by 100%."""
    d = diagnostics
    means = np.array([d["mean_steps"], d["mean_A_pf_tokens"], d["mean_A_dec_tokens"]])
    return d["mean_duration_seconds"] / np.where(means > 0, np.abs(means), np.inf)


def fit_all(phases, chunk_size, **kwargs):
    """Betas and unit scales of the functional baseline and iterative fits."""
    results = [
        fit(phases, chunk_size=chunk_size, **kwargs)
        for fit in (estimate_betas_baseline, estimate_betas_iterative)
    ]
    return (
        np.concatenate([r.beta for r in results]),
        np.concatenate([unit_scales(r.diagnostics) for r in results]),
    )


def fit_estimators(phases, chunk_size):
    """Betas and unit scales of the scikit-learn pipelines."""
    fitted = [
        make_pipeline(PhaseExposureTransformer(chunk_size), regressor).fit(phases)[-1]
        for regressor in (BaselineBetaRegressor(), IterativeBetaRegressor())
    ]
    return (
        np.concatenate([f.beta_ for f in fitted]),
        np.concatenate([unit_scales(f.diagnostics_) for f in fitted]),
    )


def assert_same_betas(actual, expected, rtol):
    """Each beta equal to ``rtol`` of itself or of the durations it explains.

    A coefficient NNLS pins near zero (worth 1e-4 of the durations, say) is
    only determined to ``rtol`` of the durations, not of its own tiny value,
    so the tolerance is ``rtol * (|beta_k| + mean duration / mean exposure_k)``.
    """
    (beta, _), (beta_ref, scale) = actual, expected
    bound = rtol * (np.abs(beta_ref) + scale)
    assert np.all(np.abs(beta - beta_ref) <= bound), (beta, beta_ref, bound)


def times(phases, factor=1.0, offset=0.0):
    return phases.assign(
        t_start=phases.t_start * factor + offset, t_end=phases.t_end * factor + offset
    )


@PROPERTY
@given(source=sources, seed=seeds, n=sizes, chunk=chunks, perm_seed=seeds)
def test_row_order_does_not_change_betas(source, seed, n, chunk, perm_seed):
    phases = any_trace(source, seed, n, chunk_size=chunk)
    order = np.random.default_rng(perm_seed).permutation(len(phases))
    shuffled = phases.iloc[order]
    assert_same_betas(fit_all(shuffled, chunk), fit_all(phases, chunk), 1e-12)
    assert_same_betas(
        fit_estimators(shuffled, chunk), fit_estimators(phases, chunk), 1e-12
    )


@PROPERTY
@given(seed=seeds, n=sizes, offset=st.integers(0, int(2e9 / GRID)))
def test_time_shift_on_exact_grid_leaves_betas_unchanged(seed, n, offset):
    # Times are multiples of 2**-22 s below 2**31 s: shifting them by a
    # multiple of 2**-22 up to 2e9 s is exact in float64.
    phases = trace(seed, n)
    shifted = times(phases, offset=offset * GRID)
    assert_same_betas(fit_all(shifted, 64), fit_all(phases, 64), 1e-9)


@PROPERTY
@given(source=sources, seed=seeds, n=sizes, offset=st.floats(0.0, 2e9))
def test_time_shift_on_arbitrary_times_leaves_betas_unchanged(source, seed, n, offset):
    # Shifting arbitrary float times rounds each by up to 1.2e-7 s (half an
    # ulp at 2e9 s): a float64 limit that no estimator can undo, harmless
    # against phases of tens of milliseconds and more.
    if source == "simulated":
        phases = simulated_trace(seed, n)
    else:
        phases = trace(seed, n, quantum=None)
    shifted = times(phases, offset=offset)
    assert_same_betas(fit_all(shifted, 64), fit_all(phases, 64), 1e-6)


@PROPERTY
@given(source=sources, seed=seeds, n=sizes, chunk=chunks)
def test_milliseconds_multiply_betas_by_1000(source, seed, n, chunk):
    phases = any_trace(source, seed, n, chunk_size=chunk)
    beta_ms, _ = fit_estimators(times(phases, 1e3), chunk)
    beta_s, scale_s = fit_estimators(phases, chunk)
    assert_same_betas((beta_ms / 1e3, None), (beta_s, scale_s), 1e-9)


def test_milliseconds_keep_iteration_count():
    # The relative stopping rule is unit-free: same iterations in s and ms.
    phases = trace(3, 30)
    fits = [
        make_pipeline(PhaseExposureTransformer(64), IterativeBetaRegressor()).fit(p)[-1]
        for p in (phases, times(phases, 1e3))
    ]
    assert fits[0].n_iter_ == fits[1].n_iter_ > 1


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_milliseconds_with_beta0_at_zero():
    # Step times of 0 hit the 1e-12 floor; the regressor fits in units of the
    # trace's own steps (time_scale_), so the floor means the same in s and ms.
    phases = synthetic_trace(52, 12, 64, horizon=3.0, beta=(0.0, 1e-4, 5e-4))
    fits = [
        make_pipeline(PhaseExposureTransformer(64), IterativeBetaRegressor()).fit(p)[-1]
        for p in (phases, times(phases, 1e3))
    ]
    assert fits[0].beta_[0] == 0.0
    np.testing.assert_allclose(fits[1].beta_ / 1e3, fits[0].beta_, rtol=1e-9)


def timeline_of(phases, chunk):
    return timeline_from_arrays(check_phases(phases, PhaseColumns()), chunk)


@PROPERTY
@given(seed=seeds, n=sizes, chunk=chunks)
def test_correction_masses_integrate_to_mu(seed, n, chunk):
    timeline = timeline_of(trace(seed, n, chunk_size=chunk), chunk)
    tg = timeline.trace_grid
    density = step_density(
        np.array([0.01, 1e-4, 5e-4]), timeline.p_pf_full, timeline.p_dec
    )
    for r in np.flatnonzero(timeline.is_prefill & (timeline.mu > 0))[:5]:
        only_r = np.zeros(timeline.n_phases, dtype=bool)
        only_r[r] = True
        for mode in FIXED_CORRECTION_MODES[:-1]:
            mass = fixed_correction_mass(mode, tg, only_r, timeline.mu)
            if mode == "uniform":
                assert mass.sum() == pytest.approx(timeline.mu[r], rel=1e-12)
            else:  # all of mu on one segment: exact
                assert mass.sum() == timeline.mu[r]
        mass = beta_informed_correction_mass(
            tg, density, only_r, timeline.n_steps, timeline.mu
        )
        assert mass.sum() == pytest.approx(timeline.mu[r], rel=1e-12)
        # The step-density placement stays inside the prefill's window.
        inside = np.zeros(tg.n_segments, dtype=bool)
        inside[tg.start_idx[r] : tg.end_idx[r]] = True
        assert np.all(mass[~inside] == 0)


@PROPERTY
@given(seed=seeds, n=sizes, data=st.data())
def test_integrals_are_additive_over_a_split_point(seed, n, data):
    phases = trace(seed, n)
    timeline = timeline_of(phases, 64)
    tg = timeline.trace_grid
    signal = timeline.p_dec * tg.seg_len
    cum = cumulative(signal)
    i = data.draw(st.integers(0, tg.n_segments - 1))
    k = data.draw(st.integers(i + 1, tg.n_segments))
    j = data.draw(st.integers(i, k))
    whole = cum[k] - cum[i]
    assert (cum[j] - cum[i]) + (cum[k] - cum[j]) == pytest.approx(whole, rel=1e-12)

    # Refining the grid with extra split points (phantom phases that add
    # grid points but no pressure) leaves every phase integral unchanged.
    t_start, t_end = tg.grid[tg.start_idx], tg.grid[tg.end_idx]
    splits = np.sort(data.draw(st.lists(st.floats(0, tg.grid[-1]), min_size=1)))
    fine = build_grid(
        np.concatenate([t_start, splits]), np.concatenate([t_end, splits + GRID])
    )
    real = np.arange(fine.start_idx.shape[0]) < t_start.shape[0]
    decodes = real & np.concatenate([~timeline.is_prefill, np.zeros(splits.size, bool)])
    p_dec_fine = count_active(fine, decodes)
    fine_integrals = phase_integrals(fine, p_dec_fine * fine.seg_len)[real]
    np.testing.assert_allclose(
        fine_integrals, phase_integrals(tg, signal), rtol=1e-12, atol=1e-12
    )


@PROPERTY
@given(seed=seeds, n=sizes, chunk=chunks)
def test_exposures_are_non_negative(seed, n, chunk):
    timeline = timeline_of(trace(seed, n, chunk_size=chunk), chunk)
    density = phase_step_density(timeline.n_steps, timeline.duration)
    # Uncorrected baseline exposures: integrals of non-negative pressures.
    assert np.all(baseline_exposures(timeline, density, "none") >= 0)
    # Decode exposure and steps never carry a correction.
    for mode in FIXED_CORRECTION_MODES:
        design = baseline_exposures(timeline, density, mode)
        assert np.all(design[:, [0, 2]] >= 0)
    # The iterative design clips p_eff at 0: non-negative in every mode.
    lam = step_density(np.array([0.01, 1e-4, 5e-4]), timeline.p_pf_full, timeline.p_dec)
    for p_eff in (timeline.p_pf_full, np.zeros_like(timeline.p_pf_full)):
        assert np.all(step_averaged_design(timeline, lam, p_eff) >= 0)


def test_reference_end_correction_can_make_prefill_exposure_negative(
    published_sample,
):
    # Reference quirk (docs/method.md 4, 8): "end" takes mu back on the segment after
    # the prefill, which may belong to another phase only; that phase's
    # corrected prefill exposure goes negative. Kept for golden parity.
    timeline = timeline_of(published_sample, 64)
    density = phase_step_density(timeline.n_steps, timeline.duration)
    assert baseline_exposures(timeline, density, "end")[:, 1].min() == -32.0


@PROPERTY
@given(
    source=sources,
    seed=seeds,
    n=sizes,
    n_instances=st.integers(2, 4),
    perm_seed=seeds,
)
def test_instance_ids_permuted_or_renamed_change_nothing(
    source, seed, n, n_instances, perm_seed
):
    phases = any_trace(source, seed, n, n_instances=n_instances)
    phases[INST] = pd.factorize(phases[INST], sort=True)[0]
    used = phases[INST].max() + 1
    relabel = np.random.default_rng(perm_seed).permutation(used)
    renamed = phases.assign(
        **{INST: pd.Series([f"gpu-{relabel[i]}" for i in phases[INST]])}
    )
    expected = fit_all(phases, 64, columns={"instance_id": INST})
    assert_same_betas(
        fit_all(renamed, 64, columns={"instance_id": INST}), expected, 1e-12
    )
