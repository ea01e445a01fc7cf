"""Windows cut from continuous serving: cut_window, the edge treatment of the
default pipeline, what_if_error and the saturated-engine warning."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.datasets import cut_window, simulate_trace
from sklearn_beta.exceptions import IdentifiabilityWarning, UncertaintyWarning
from sklearn_beta.metrics import coefficient_errors, what_if_error
from sklearn_beta.model_selection import TraceBlockSplit, TraceContextRegressor
from sklearn_beta.trust._edges import edge_zones

BETA = (6e-3, 2e-5, 1e-4)
CHUNK = 256


# --- cut_window ----------------------------------------------------------------


@pytest.fixture
def three_requests() -> pd.DataFrame:
    # request 1: 0-2-5, request 2: 1-3-9, request 3: 4-6-7
    return pd.DataFrame(
        {
            "request_id": [1, 1, 2, 2, 3, 3],
            "phase_type": ["prefill", "decode"] * 3,
            "t_start": [0.0, 2.0, 1.0, 3.0, 4.0, 6.0],
            "t_end": [2.0, 5.0, 3.0, 9.0, 6.0, 7.0],
            "prefill_tokens": [10, 0, 10, 0, 10, 0],
            "decode_tokens": [0, 3, 0, 6, 0, 1],
        },
        index=[10, 11, 12, 13, 14, 15],
    )


def test_cut_window_by_arrival_keeps_requests_that_started_inside(three_requests):
    window = cut_window(three_requests, 1.0, 4.0, how="arrival")
    assert window["request_id"].tolist() == [2, 2, 3, 3]
    # whole requests, as logged, with their index
    assert window.index.tolist() == [12, 13, 14, 15]
    assert window["t_end"].max() == 9.0


def test_cut_window_by_completion_keeps_requests_that_ended_inside(three_requests):
    window = cut_window(three_requests, 5.0, 7.0, how="completion")
    assert window["request_id"].tolist() == [1, 1, 3, 3]
    assert window["t_start"].min() == 0.0


def test_cut_window_bounds_are_closed(three_requests):
    assert cut_window(three_requests, 0.0, 0.0 + 1e-9)[
        "request_id"
    ].unique().tolist() == [1]
    assert cut_window(three_requests, 9.0, 10.0, how="completion")[
        "request_id"
    ].unique().tolist() == [2]


def test_cut_window_takes_column_names(three_requests):
    renamed = three_requests.rename(columns={"t_start": "begin", "request_id": "rid"})
    window = cut_window(
        renamed, 1.0, 4.0, columns={"t_start": "begin", "request_id": "rid"}
    )
    assert window["rid"].tolist() == [2, 2, 3, 3]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(t0=4.0, t1=4.0), ValueError, "t0 < t1"),
        (dict(t0=5.0, t1=1.0), ValueError, "t0 < t1"),
        (dict(t0=np.nan, t1=1.0), ValueError, "t0 must be finite"),
        (dict(t0="0", t1=1.0), TypeError, "t0 must be a real number"),
        (dict(t0=0.0, t1=1.0, how="start"), ValueError, "how must be one of"),
        (dict(t0=20.0, t1=30.0), ValueError, "selects no request"),
        (dict(t0=0.0, t1=1.0, columns={"t_begin": "x"}), ValueError, "Unknown key"),
        (dict(t0=0.0, t1=1.0, columns=["t_start"]), TypeError, "columns must be"),
    ],
)
def test_cut_window_rejects_bad_input(three_requests, kwargs, error, match):
    with pytest.raises(error, match=match):
        cut_window(three_requests, **kwargs)


def test_cut_window_names_bad_rows(three_requests):
    bad = three_requests.astype({"t_end": object})
    bad.loc[13, "t_end"] = "late"
    with pytest.raises(TypeError, match="'t_end'.*row 13"):
        cut_window(bad, 0.0, 10.0, how="completion")
    with pytest.raises(ValueError, match="missing column"):
        cut_window(three_requests.drop(columns="t_end"), 0.0, 10.0)
    with pytest.raises(TypeError, match="DataFrame"):
        cut_window(three_requests.to_numpy(), 0.0, 10.0)


# --- The edge treatment ----------------------------------------------------------


def busy_trace(n_requests=3000, seed=0, **options):
    """A busy engine (~35 running of 64) whose load varies."""
    params = dict(
        beta=BETA,
        chunk_size=CHUNK,
        max_num_seqs=64,
        arrival_rate=24.0,
        prompt_tokens=(300, 0.6),
        output_tokens=(100, 0.8),
        random_state=seed,
    )
    params.update(options)
    return simulate_trace(n_requests, **params)


def middle_window(phases, how, share=0.4):
    times = phases.groupby("request_id")["t_start" if how == "arrival" else "t_end"]
    per_request = times.min() if how == "arrival" else times.max()
    t0, t1 = per_request.quantile([0.5 - share / 2, 0.5 + share / 2])
    return cut_window(phases, t0, t1, how=how)


def fit(phases, **regressor):
    # simulate_trace writes instance_id, which the transformer reads by default.
    model = make_pipeline(
        PhaseExposureTransformer(chunk_size=CHUNK),
        IterativeBetaRegressor(**regressor),
    )
    return model.fit(phases)[-1]


@pytest.mark.parametrize("how", ["arrival", "completion"])
def test_default_pipeline_is_exact_on_windows(how):
    window = middle_window(busy_trace(), how)
    auto = fit(window)
    np.testing.assert_allclose(auto.beta_, BETA, rtol=1e-6)
    assert auto.diagnostics_["edges"]["n_context"] > 0
    # Without the treatment the edges' missing load biases every coefficient.
    plain = fit(window, edges="fit")
    assert np.max(np.abs(coefficient_errors(BETA, plain.beta_))) > 0.2
    assert "edges" not in plain.diagnostics_


def test_complete_trace_keeps_every_phase():
    phases = busy_trace(1500)
    auto, plain = fit(phases), fit(phases, edges="fit")
    edges = auto.diagnostics_["edges"]
    assert edges["n_context"] == 0
    assert max(abs(edges["start_bias"][0]), abs(edges["end_bias"][0])) < 1e-6
    np.testing.assert_allclose(auto.beta_, BETA, rtol=1e-7)
    np.testing.assert_allclose(auto.beta_, plain.beta_, rtol=1e-7)


def test_fleet_windows_have_edges_per_instance():
    phases = busy_trace(4000, n_instances=2, arrival_rate=48.0)
    window = middle_window(phases, "arrival")
    auto = fit(window)
    np.testing.assert_allclose(auto.beta_, BETA, rtol=1e-6)
    edges = auto.diagnostics_["edges"]
    assert len(edges["start_bias"]) == 2
    assert min(edges["start_bias"]) > edges["limit"]


def test_edge_zones_by_hand():
    # instance 0: prefills 0-1 and 2-4, decodes 1-6 and 4-5: A=0, Z=6, first
    # decode end a=5, last prefill start z=2, longest request L=2+5=7
    # -> interior [max(5, 7), min(2, -1)): empty, every phase is edge.
    # instance 1: a long trace whose middle request is interior.
    t_start = np.array([0, 1, 2, 4, 0, 1, 10, 11, 20, 21], dtype=float)
    t_end = np.array([1, 6, 4, 5, 1, 2, 11, 12, 21, 22], dtype=float)
    is_prefill = np.array([1, 0, 1, 0] * 1 + [1, 0] * 3, dtype=bool)
    instance = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    zones = edge_zones(t_start, t_end, is_prefill, instance)
    np.testing.assert_array_equal(zones.lifetime, [7.0, 2.0])
    # instance 1: A=0, Z=22, a=2, z=20, L=2 -> interior [2, 20]
    np.testing.assert_array_equal(zones.interior_start, [7.0, 2.0])
    np.testing.assert_array_equal(zones.interior_end, [-1.0, 20.0])
    np.testing.assert_array_equal(
        zones.interior, [False] * 4 + [False, False, True, True, False, False]
    )
    np.testing.assert_array_equal(
        zones.start[4:], [True, True, False, False, False, False]
    )
    np.testing.assert_array_equal(
        zones.end[4:], [False, False, False, False, True, True]
    )


def test_edges_parameter_is_validated():
    with pytest.raises(InvalidParameterError, match="edges"):
        fit(busy_trace(200), edges="drop")


def test_short_trace_is_fitted_whole():
    # Shorter than two request lifetimes: nothing to test the edges against.
    phases = busy_trace(12, arrival_rate=50.0)
    with pytest.warns(UserWarning, match="too few to test the edges"):
        reg = fit(phases)
    assert reg.diagnostics_["edges"]["n_context"] == 0
    assert np.isnan(reg.diagnostics_["edges"]["limit"])
    np.testing.assert_allclose(reg.beta_, fit(phases, edges="fit").beta_)


def test_short_trace_warning_gives_the_longest_request_in_seconds():
    # The edge zones live in the fit's time unit (a power of two near the mean
    # step: 2**-7 s here); the warning used to print 766.6 for this 5.989 s
    # request. The first request is stretched by 1 s at each end so that it
    # holds both the longest prefill and the longest decode: the zones' bound
    # on a request's life (longest prefill + longest decode) is then its span.
    phases = busy_trace(12, arrival_rate=50.0)
    first = phases.request_id == phases.request_id.iloc[0]
    prefill = first & (phases.phase_type == "prefill")
    decode = first & (phases.phase_type == "decode")
    phases.loc[prefill, "t_start"] -= 1.0
    phases.loc[decode, "t_end"] += 1.0
    span = phases.loc[decode, "t_end"].item() - phases.loc[prefill, "t_start"].item()
    assert span == pytest.approx(5.98884, rel=1e-6)
    with pytest.warns(UncertaintyWarning) as record:
        reg = fit(phases)
    assert reg.time_scale_ == 2.0**-7
    (message,) = [str(w.message) for w in record if "test the edges" in str(w.message)]
    reported = re.search(r"the longest request lasts up to (\S+) s,", message)
    assert float(reported.group(1)) == pytest.approx(span, rel=1e-3)


def test_complete_trace_whose_longest_request_spans_it_is_fitted_whole():
    # One long request makes the edge zones cover nearly the whole trace: the
    # few interior phases fit loose betas against which the complete edges
    # looked incomplete (beta0 at 0). Too small an interior is not a test.
    phases = busy_trace(600, noise=0.05)
    last = phases.request_id.iloc[-1]
    long_decode = (phases.request_id == last) & (phases.phase_type == "decode")
    phases.loc[long_decode, "t_end"] += phases.t_end.max() * 4
    with pytest.warns(UserWarning, match="too few to test the edges"):
        reg = fit(phases)
    assert reg.diagnostics_["edges"]["n_context"] == 0


# --- Held-out blocks are windows too ---------------------------------------------


def _context_model(trace, **regressor):
    return TraceContextRegressor(
        make_pipeline(
            PhaseExposureTransformer(chunk_size=CHUNK),
            IterativeBetaRegressor(**regressor),
        ),
        trace=trace,
    )


def test_trace_context_folds_are_not_treated_as_windows():
    # The training rows of a fold sit in the full trace's context: their
    # block edges are complete and must not be taken out a second time.
    trace = busy_trace(1500).reset_index(drop=True)
    for train, _ in TraceBlockSplit(4).split(trace):
        model = _context_model(trace).fit(trace.iloc[train])
        assert model.estimator_[-1].diagnostics_["edges"]["n_context"] == 0
        np.testing.assert_allclose(model.beta_, BETA, rtol=1e-6)
    scores = cross_validate(_context_model(trace), trace, cv=TraceBlockSplit(4))
    assert np.all(scores["test_score"] > 0.999)


def test_test_phases_do_not_leak_into_the_edge_test():
    # A window's edges are tested on the training rows only: the test
    # phases' step counts (their decode tokens; times and pressures stay)
    # must not change the fit.
    window = middle_window(busy_trace(), "arrival").reset_index(drop=True)
    train, test = next(iter(TraceBlockSplit(3).split(window)))
    fitted = _context_model(window).fit(window.iloc[train])
    altered = window.copy()
    decode_test = test[altered.loc[test, "phase_type"].eq("decode").to_numpy()]
    altered.loc[decode_test, "decode_tokens"] *= 3
    refitted = _context_model(altered).fit(altered.iloc[train])
    np.testing.assert_array_equal(fitted.beta_, refitted.beta_)
    assert fitted.estimator_[-1].diagnostics_["edges"]["n_context"] > 0
    np.testing.assert_allclose(fitted.beta_, BETA, rtol=1e-6)


# --- what_if_error ---------------------------------------------------------------


def test_what_if_error_by_hand():
    est, true = (5e-3, 2e-5, 1.1e-4), (6e-3, 2e-5, 1e-4)
    # (0, 256): 0.0316 true, 0.03316 est; (2048, 0): 0.04696 vs 0.04596;
    # (512, 128): 0.02904 vs 0.02932.
    assert what_if_error(est, true) == pytest.approx(0.00156 / 0.0316, rel=1e-12)
    assert what_if_error(est, true, probes=[(2048, 0)]) == pytest.approx(
        0.001 / 0.04696, rel=1e-12
    )
    assert what_if_error(est, true, probes=[(512, 128)]) == pytest.approx(
        0.00028 / 0.02904, rel=1e-12
    )
    assert what_if_error(true, true) == 0.0


@pytest.mark.parametrize(
    "probes, match",
    [
        ([(1, 2, 3)], "pairs"),
        ([], "pairs"),
        ([(-1, 2)], "non-negative.*positions \\[0\\]"),
        ([(0, 1), (np.inf, 1)], "positions \\[1\\]"),
    ],
)
def test_what_if_error_rejects_bad_probes(probes, match):
    with pytest.raises(ValueError, match=match):
        what_if_error(BETA, BETA, probes=probes)


def test_what_if_error_rejects_bad_betas():
    with pytest.raises(ValueError, match="non-positive step times on probes"):
        what_if_error(BETA, (0.0, 1e-5, 1e-4), probes=[(0, 0)])
    with pytest.raises(ValueError, match="beta_est"):
        what_if_error((1.0, 2.0), BETA)


# --- The saturated engine ----------------------------------------------------------


def saturated(noise, n_requests=6000):
    # Arrivals beyond what 128 slots serve: the batch stays near 123 decodes
    # (plus the prefilling requests).
    return busy_trace(
        n_requests, max_num_seqs=128, arrival_rate=60.0, noise=noise, random_state=3
    )


def test_saturated_noisy_window_warns_beta0_beta2():
    # Inside a window of a saturated engine the batch never ramps.
    phases = middle_window(saturated(0.05), "completion")
    with pytest.warns(IdentifiabilityWarning, match="beta0 and beta2.*decode batch"):
        reg = fit(phases)
    assert reg.diagnostics_["not_identified"] == ["beta0", "beta2"]


def test_varying_noisy_engine_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifiabilityWarning)
        reg = fit(busy_trace(noise=0.05))
    assert reg.diagnostics_["not_identified"] == []
    assert what_if_error(reg.beta_, BETA) < 0.02


def test_saturated_engine_without_noise_is_exact_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifiabilityWarning)
        reg = fit(middle_window(saturated(0.0), "completion"))
    np.testing.assert_allclose(reg.beta_, BETA, rtol=1e-6)
    assert clone(reg).get_params()["edges"] == "auto"


def test_cv_fold_with_an_untestable_edge_keeps_every_phase():
    # A fold that weights the trace's start 0 leaves that edge untestable
    # (NaN bias); unweighted phases must not decide against the joint fit.
    phases = simulate_trace(
        600,
        beta=BETA,
        chunk_size=256,
        max_num_seqs=64,
        arrival_rate=25.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(150, 0.6),
        noise=0.05,
        random_state=0,
    )
    table = PhaseExposureTransformer(chunk_size=256).fit_transform(phases)
    for train, _ in TraceBlockSplit(3).split(phases):
        weight = np.zeros(len(phases))
        weight[train] = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auto = IterativeBetaRegressor().fit(table, sample_weight=weight)
            whole = IterativeBetaRegressor(edges="fit").fit(table, sample_weight=weight)
        assert auto.diagnostics_["edges"]["n_context"] == 0
        np.testing.assert_allclose(auto.beta_, whole.beta_, rtol=1e-9)
