"""Diagnostic figures: written, non-empty, with the expected panels."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from sklearn.pipeline import make_pipeline  # noqa: E402

from sklearn_beta import (  # noqa: E402
    BaselineBetaRegressor,
    PhaseExposureTransformer,
    design_at_betas,
    plotting,
)
from sklearn_beta.engine_config._trace_fit import fit_trace  # noqa: E402
from sklearn_beta.io import read_otel_spans  # noqa: E402

SPANS = Path(__file__).resolve().parents[1] / "data" / "otel" / "spans.jsonl"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def otel_phases():
    return read_otel_spans(SPANS)


@pytest.fixture(scope="module")
def otel_fit(otel_phases):
    return fit_trace(otel_phases, chunk_size=256, instance_col="instance_id")


def test_save_fit_plots_writes_four_pngs(otel_fit, otel_phases, tmp_path):
    paths = plotting.save_fit_plots(
        otel_fit.model, otel_phases, tmp_path / "new" / "dir", dpi=40
    )
    assert [p.name for p in paths] == [
        "observed_vs_predicted.png",
        "residuals.png",
        "pressures.png",
        "beta_history.png",
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000


def test_figures_have_one_panel_per_phase_type_instance_and_beta(otel_fit, otel_phases):
    fig = plotting.plot_observed_vs_predicted(
        otel_fit.observed, otel_fit.predicted, otel_fit.is_prefill
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("prefill: 120 phases") and "R² 1.0000" in titles[0]
    assert titles[1].startswith("decode: 120 phases")
    fig = plotting.plot_pressures(otel_fit.profile, otel_fit.instance_names)
    assert len(fig.axes) == 9  # 3 rows x 3 instances
    # The public design at the fitted betas draws the same figure.
    table = otel_fit.model[0].transform(otel_phases)
    view = design_at_betas(
        table, otel_fit.beta, correction_mode="end_inside", objective="step_count"
    )
    public = plotting.plot_pressures(view, otel_fit.instance_names)
    for ax, same in zip(fig.axes, public.axes, strict=True):
        assert ax.get_title() == same.get_title()
    assert fig.axes[0].get_title() == "instance vllm-0"
    fig = plotting.plot_pressures(otel_fit.profile, max_instances=2)
    assert len(fig.axes) == 6 and "first 2 of 3 instances" in fig.get_suptitle()
    fig = plotting.plot_beta_history(otel_fit.history, tol=1e-6)
    assert len(fig.axes) == 4
    line = fig.axes[1].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), otel_fit.history["beta1"] * 1e6)


def test_baseline_fit_plots_a_single_history_point(otel_phases, tmp_path):
    model = make_pipeline(
        PhaseExposureTransformer(256, columns={"instance_id": "instance_id"}),
        BaselineBetaRegressor(),
    ).fit(otel_phases)
    paths = plotting.save_fit_plots(model, otel_phases, tmp_path, dpi=40)
    assert all(p.stat().st_size > 0 for p in paths)


def test_missing_matplotlib_is_a_clear_import_error(monkeypatch, otel_fit):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'sklearn-beta\[plot\]'"):
        plotting.plot_beta_history(otel_fit.history)
