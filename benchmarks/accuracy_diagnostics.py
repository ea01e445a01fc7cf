"""Why the reference iterative estimator fails: the numbers behind the README.

On one simulated scenario of ``benchmarks/accuracy.py`` this measures, at the
TRUE betas (so that only the method, not the starting point, is on trial):

1. the error of the per-phase features that the reference's lagged update
   (``lam`` from the previous pass's ``p_eff``) rebuilds, pass after pass,
   against the exact per-phase token sums; and the same with the step density
   and ``p_eff`` solved together (``solved_step_counts``);
2. how many segments make that lagged update unstable: on a segment the
   update maps ``lam`` to ``1 / (b0 + b1 (P - c / lam) + b2 p_dec)``, whose
   slope at the fixed point is ``-b1 c``; below -1 it oscillates with
   period 2 and diverges;
3. the reference's outer iteration started at the true betas;
4. why exact features alone would not rescue the duration objective: with
   the per-phase token sums as design (exact at the truth), any beta with
   ``b0 = 0`` fits the durations exactly, ``l_i = X_i beta + b0 (N_i -
   Lambda_i)``;
5. the correlation of the step count with the decode exposure (beta0 against
   beta2) and the step-count objective's Jacobian conditioning.

With ``--window-probe`` and a window scenario (``w_*_arr`` / ``w_*_com``) it
measures where a window's incomplete edges leak in instead (docs/windows.md):
the load the window shows against the engine's near its edges; the fit with
``sample_weight`` 0 outside the phases whose full-trace context the window
holds (``complete_context_mask``), on the window and on the full trace, side
by side (same objective, same start, same time scale?); and the default's
edge treatment.

Usage::

    python benchmarks/accuracy_diagnostics.py [--scenario heavy_c512]
    python benchmarks/accuracy_diagnostics.py --window-probe \\
        --scenario w_heavy_arr --n-requests 20000
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import SCENARIOS, exact_step_sums, simulate  # noqa: E402

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer  # noqa: E402
from sklearn_beta.core._corrections import fixed_correction_mass  # noqa: E402
from sklearn_beta.core._fixed_point import (  # noqa: E402
    IterationSettings,
    correction_rate,
    iterate_betas,
    reweighted_design,
)
from sklearn_beta.core._nnls import nnls_fit  # noqa: E402
from sklearn_beta.core._step_count import (  # noqa: E402
    count_state,
    solved_step_counts,
    step_count_weights,
)
from sklearn_beta.core._validation import PhaseColumns, check_phases  # noqa: E402
from sklearn_beta.estimators._exposure import timeline_from_arrays  # noqa: E402
from sklearn_beta.metrics import coefficient_errors, what_if_error  # noqa: E402
from sklearn_beta.model_selection import complete_context_mask  # noqa: E402


def feature_error(design: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """Relative error of the prefill and decode token sums, summed over phases."""
    err = np.abs(design[:, 1:3] - exact[:, 1:3]).sum(axis=0)
    return tuple(err / np.abs(exact[:, 1:3]).sum(axis=0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="heavy_c512", choices=list(SCENARIOS))
    parser.add_argument("--n-requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window-probe", action="store_true")
    args = parser.parse_args(argv)
    if args.window_probe:
        return window_probe(args.scenario, args.n_requests, args.seed)

    scenario = SCENARIOS[args.scenario]
    trace = simulate(scenario, args.n_requests, args.seed)
    beta = np.asarray(scenario.beta)
    columns = PhaseColumns(instance_id=trace.instance_col)
    timeline = timeline_from_arrays(
        check_phases(trace.phases, columns), scenario.chunk_size, scenario.token_budget
    )
    exact = exact_step_sums(trace)
    n_steps = exact[:, :1]
    print(f"# {scenario.name}: {scenario.description}; beta={tuple(beta)}")
    print(
        f"  beta1*C/beta0 = {scenario.chunk_to_overhead:.2f}; "
        f"{timeline.n_phases} phases, {timeline.trace_grid.n_segments} segments"
    )

    # 1. Features at the true betas: lagged passes against the solved density.
    # The reference's design is [N, N pbar_pf, N pbar_dec]; with an exact
    # density N_i = Lambda_i and it equals the exact token sums.
    print("\n1. Per-phase token sums rebuilt at the TRUE betas, relative L1 error")
    p_eff = timeline.p_pf_full
    for k in range(1, 13):
        design, p_eff = reweighted_design(timeline, beta, p_eff, "beta_informed", None)
        if k in (1, 2, 3, 4, 5, 10, 11, 12):
            pf, dec = feature_error(design, exact)
            print(f"   lagged pass {k:2d}: prefill {pf:.2e}  decode {dec:.2e}")
    mass = fixed_correction_mass(
        "end_inside", timeline.trace_grid, timeline.is_prefill, timeline.mu
    )
    state = count_state(
        timeline, beta, "end_inside", mass, step_count_weights(timeline)
    )
    pf, dec = feature_error(state.design, exact)
    print(f"   solved density:  prefill {pf:.2e}  decode {dec:.2e}")
    n, _, _ = solved_step_counts(timeline, beta, mass)
    print(
        "   solved steps per phase vs true: max |Lambda_i - N_i| = "
        f"{np.max(np.abs(state.residual)):.2e}; "
        f"true N_i == ceil(P/C), D: {np.mean(n_steps[:, 0] == timeline.n_steps):.4f}"
    )

    # 2. Stability of the lagged inner update, slope -b1 c per segment.
    rate = correction_rate(mass, timeline.trace_grid.seg_len)
    slope = beta[1] * rate
    busy = timeline.trace_grid.seg_len > 0
    print(
        "\n2. Lagged update slope -b1*c on segments with a correction: "
        f"{np.mean(slope[busy & (rate > 0)] > 1):.1%} have |slope| > 1 "
        f"(unstable), median {np.median(slope[busy & (rate > 0)]):.2f}, "
        f"max {slope[busy].max():.1f}"
    )

    # 3. The reference's outer iteration started at the truth.
    print("\n3. Reference iteration started at the TRUE betas (beta_informed)")
    reference = IterationSettings("beta_informed", 12, 1e-6, 1.0, "absolute")
    _, _, _, _, history = iterate_betas(timeline, beta, reference)
    for rec in history[1:]:
        b = np.array([rec["beta0"], rec["beta1"], rec["beta2"]])
        rel = (b - beta) / beta
        print(
            f"   it {rec['iteration']:2d}: b0 {rel[0]:+8.1%} b1 {rel[1]:+8.1%} "
            f"b2 {rel[2]:+8.1%}"
        )

    # 3b. Linear stability of the duration objective's map at the truth, with
    # the density solved (no lag): beta -> least squares of l on X(beta).
    print(
        "\n3b. Duration-objective map beta -> lstsq(X(beta), l) at the truth, "
        "density solved: Jacobian eigenvalues"
    )

    def duration_map(b):
        st = count_state(timeline, b, "end_inside", mass, np.ones(timeline.n_phases))
        raw = st.design
        scale = np.linalg.norm(raw, axis=0)
        return np.linalg.lstsq(raw / scale, timeline.duration, rcond=None)[0] / scale

    base = duration_map(beta)
    jac_map = np.column_stack(
        [
            (duration_map(beta + h * np.eye(3)[k] * beta[k]) - base) / (h * beta[k])
            for k in range(3)
            for h in [1e-5]
        ]
    )
    eig = np.linalg.eigvals(jac_map)
    print(
        f"   eigenvalues {np.array2string(np.sort_complex(eig), precision=3)}; "
        f"spectral radius {np.abs(eig).max():.2f} "
        f"({'repelling' if np.abs(eig).max() > 1 else 'attracting'})"
    )
    for eta in (0.5, 0.25):
        damped = 1 - eta * (1 - eig)
        print(f"   damped eta={eta}: spectral radius {np.abs(damped).max():.3f}")

    # 4. Degenerate fixed points of the duration objective.
    print("\n4. Token-sum design (solved density) at betas with b0 = 0")
    for b1_scale, b2_scale in [(1.0, 1.0), (0.5, 2.0), (2.0, 0.5)]:
        trial = np.array([0.0, beta[1] * b1_scale, beta[2] * b2_scale])
        st = count_state(
            timeline, trial, "end_inside", mass, np.ones(timeline.n_phases)
        )
        # The raw token-sum design (Lambda_i, not N_i, steps): l_i = X beta.
        raw = st.design.copy()
        steps = st.residual + timeline.n_steps
        raw[:, 1:] *= (steps / np.maximum(timeline.n_steps, 1))[:, None]
        raw[:, 0] = timeline.n_steps
        refit = nnls_fit(raw, timeline.duration)
        resid = np.abs(raw @ trial - timeline.duration).max()
        print(
            f"   beta=(0, {trial[1]:.2e}, {trial[2]:.2e}): max |X beta - l| = "
            f"{resid:.1e} s, NNLS refit = ({refit[0]:.1e}, {refit[1]:.2e}, "
            f"{refit[2]:.2e})"
        )

    # 5. Identifiability.
    corr = np.corrcoef(exact[:, 0], exact[:, 2])[0, 1]
    decode = ~timeline.is_prefill
    corr_dec = np.corrcoef(exact[decode, 0], exact[decode, 2])[0, 1]
    jac = state.jac * np.sqrt(step_count_weights(timeline))[:, None]
    jac = jac / np.linalg.norm(jac, axis=0)
    sv = np.linalg.svd(jac, compute_uv=False)
    print(
        f"\n5. corr(N_i, decode tokens_i) = {corr:.4f} (decode phases {corr_dec:.4f});"
        f" p_dec on segments: mean {timeline.p_dec[busy].mean():.0f}, "
        f"sd {timeline.p_dec[busy].std():.0f}"
    )
    print(
        "   step-count Jacobian (unit columns) singular values "
        f"{np.array2string(sv, precision=3)}, condition {sv[0] / sv[-1]:.0f}"
    )
    return 0


def _fit_window(phases, scenario, sample_weight=None, **regressor):
    transformer = PhaseExposureTransformer(
        chunk_size=scenario.chunk_size, token_budget=scenario.token_budget
    )
    table = transformer.fit_transform(phases)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return IterativeBetaRegressor(**regressor).fit(
            table, sample_weight=sample_weight
        )


def _line(label, reg, beta):
    err = coefficient_errors(beta, reg.beta_)
    return (
        f"   {label:<44} b0 {err[0]:+8.2%} b1 {err[1]:+8.2%} b2 {err[2]:+8.2%}"
        f"  what-if {what_if_error(reg.beta_, beta):7.2%}  time unit "
        f"{reg.time_scale_:g}, {reg.n_iter_} iterations"
    )


def window_probe(name: str, n_requests: int, seed: int) -> int:
    """Where a window's incomplete edges leak into the fit (docs/windows.md)."""
    scenario = SCENARIOS[name]
    if scenario.window is None:
        raise SystemExit(f"--window-probe needs a window scenario, got {name!r}")
    trace = simulate(scenario, n_requests, seed)
    full = simulate(
        SCENARIOS[name.rsplit("_", 1)[0]], n_requests, seed
    ).phases  # the same seed: the continuous trace the window was cut from
    window, beta = trace.phases, np.asarray(scenario.beta)
    print(f"# {name}: {scenario.description}; {len(window)} of {len(full)} phases")

    # The load the window shows against the engine's, per step of the window.
    steps = trace.window_steps
    mid = 0.5 * (steps["t_start"] + steps["t_end"]).to_numpy()
    starts, ends = np.sort(window["t_start"]), np.sort(window["t_end"])
    shown = np.searchsorted(starts, mid) - np.searchsorted(ends, mid)
    running = steps["n_running"].to_numpy()
    span = mid.max() - mid.min()
    for label, part in [
        ("first 10% of the window", mid < mid.min() + 0.1 * span),
        ("middle 50%", np.abs(mid - mid.mean()) < 0.25 * span),
        ("last 10%", mid > mid.max() - 0.1 * span),
    ]:
        print(
            f"   {label:<24} engine runs {running[part].mean():6.1f} requests "
            f"per step, the window shows {shown[part].mean():6.1f} phases"
        )

    print("\nFits (errors against the true betas):")
    print(
        _line(
            "window, every phase (edges='fit')",
            _fit_window(window, scenario, edges="fit"),
            beta,
        )
    )
    pos = full.index.get_indexer(window.index)
    complete = complete_context_mask(full, pos).astype(float)
    print(f"   complete-context phases: {complete.mean():.1%} of the window")
    on_window = _fit_window(window, scenario, complete, edges="fit")
    on_full = _fit_window(
        full,
        scenario,
        np.bincount(pos, complete, minlength=len(full)),
        edges="fit",
    )
    print(_line("window, weight 0 outside complete context", on_window, beta))
    print(_line("full trace, the same weights", on_full, beta))
    same = (
        np.allclose(
            on_window.history_[["beta0", "beta1", "beta2"]].to_numpy(),
            on_full.history_[["beta0", "beta1", "beta2"]].to_numpy(),
            rtol=1e-9,
            atol=0,
        )
        if len(on_window.history_) == len(on_full.history_)
        else False
    )
    print(f"   same iterates on window and full trace: {same}")
    auto = _fit_window(window, scenario)
    edges = auto.diagnostics_["edges"]
    print(_line("window, default (edges='auto')", auto, beta))
    print(
        f"   context phases {edges['n_context']}; start / end edge bias "
        f"{np.round(edges['start_bias'], 4)} / {np.round(edges['end_bias'], 4)}"
        f" (limit {edges['limit']:.4f})"
    )
    print(_line("full trace, default", _fit_window(full, scenario), beta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
