"""Diagnostic figures of a fit: can these betas be trusted?

Four figures, each a function returning a matplotlib ``Figure``:

* :func:`plot_observed_vs_predicted`: phase durations, observed against
  predicted, one panel per phase type;
* :func:`plot_residuals`: residuals against the phase's start time;
* :func:`plot_pressures`: the reconstructed prefill and decode pressures on
  the trace grid and the step density the fitted betas imply;
* :func:`plot_beta_history`: the betas along the iterative fit.

:func:`save_fit_plots` writes all four as PNGs. :func:`plot_replay` (and
:func:`save_replay_plot`) draws the forecast a simulator would make: the
held-out replay's time to first token and decode time against the observed
ones (:func:`sklearn_beta.select_engine_config`). matplotlib is an optional
dependency (``pip install 'sklearn-beta[plot]'``), imported only here, when a
figure is drawn. Figures are built on :class:`matplotlib.figure.Figure`
directly, so no pyplot state or interactive backend is involved.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from .core._columns import columns_of
from .core._design import design_at_betas

__all__ = [
    "plot_beta_history",
    "plot_observed_vs_predicted",
    "plot_pressures",
    "plot_replay",
    "plot_residuals",
    "save_fit_plots",
    "save_replay_plot",
]

_PHASE_COLORS = {"prefill": "tab:orange", "decode": "tab:blue"}
_MAX_INSTANCES = 4


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure  # optional dependency: the plot extra
    except ImportError as exc:
        raise ImportError(
            "Plotting needs matplotlib: pip install 'sklearn-beta[plot]'."
        ) from exc
    return Figure(**kwargs)


def _r2(observed, predicted) -> float:
    ss_tot = np.sum((observed - observed.mean()) ** 2)
    if observed.size < 2 or ss_tot == 0:
        return float("nan")
    return float(1 - np.sum((observed - predicted) ** 2) / ss_tot)


def _against_identity(ax, predicted, observed, **scatter) -> None:
    """Observed against predicted on ``ax``, with the line y = x; log axes
    when the values span more than 50x."""
    if observed.size == 0:
        return
    low = min(observed.min(), predicted.min())
    high = max(observed.max(), predicted.max())
    ax.plot([low, high], [low, high], color="0.5", lw=1, ls="--", label="y = x")
    ax.scatter(predicted, observed, **scatter)
    if low > 0 and high / low > 50:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.legend(loc="upper left")


def plot_observed_vs_predicted(observed, predicted, is_prefill):
    """Observed against predicted phase durations, per phase type.

    Parameters
    ----------
    observed, predicted : array-like of shape (n_phases,)
        Phase durations in seconds.
    is_prefill : array-like of bool of shape (n_phases,)
        Phase type of each phase.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    observed = np.asarray(observed, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    is_prefill = np.asarray(is_prefill, dtype=bool)
    fig = _figure(figsize=(9, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (name, mask) in zip(
        axes, (("prefill", is_prefill), ("decode", ~is_prefill)), strict=True
    ):
        obs, pred = observed[mask] * 1e3, predicted[mask] * 1e3
        ax.set_title(f"{name}: {mask.sum()} phases, R² {_r2(obs, pred):.4f}")
        ax.set_xlabel("predicted duration (ms)")
        ax.set_ylabel("observed duration (ms)")
        _against_identity(ax, pred, obs, color=_PHASE_COLORS[name], s=14, alpha=0.7)
    fig.suptitle("Phase durations: observed vs predicted")
    return fig


def plot_residuals(
    t_start, observed, predicted, is_prefill, instance=None, instance_names=None
):
    """Residuals (observed - predicted) against the phase's start time.

    Parameters
    ----------
    t_start : array-like of shape (n_phases,)
        Phase start, seconds since its instance's first phase.
    observed, predicted : array-like of shape (n_phases,)
        Phase durations in seconds.
    is_prefill : array-like of bool of shape (n_phases,)
    instance : array-like of shape (n_phases,) or None, default=None
        Instance code of each phase; instances get different markers.
    instance_names : list or None, default=None
        Display names of the instance codes, for the legend.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    t_start = np.asarray(t_start, dtype=float)
    residual = (np.asarray(observed, float) - np.asarray(predicted, float)) * 1e3
    is_prefill = np.asarray(is_prefill, dtype=bool)
    instance = (
        np.zeros(t_start.shape, dtype=int) if instance is None else np.asarray(instance)
    )
    markers = "os^Dvp*h"
    fig = _figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0.0, color="0.5", lw=1)
    codes = np.unique(instance)
    for name, mask in (("prefill", is_prefill), ("decode", ~is_prefill)):
        for k, code in enumerate(codes):
            sel = mask & (instance == code)
            ax.scatter(
                t_start[sel],
                residual[sel],
                s=14,
                alpha=0.7,
                marker=markers[k % len(markers)],
                color=_PHASE_COLORS[name],
            )
    for name, color in _PHASE_COLORS.items():
        ax.scatter([], [], s=14, color=color, label=name)
    if codes.size > 1:
        for k, code in enumerate(codes):
            label = instance_names[code] if instance_names is not None else code
            ax.scatter(
                [],
                [],
                s=14,
                marker=markers[k % len(markers)],
                color="0.4",
                label=f"instance {label}",
            )
    ax.set_xlabel("phase start (s since the instance's first phase)")
    ax.set_ylabel("observed - predicted (ms)")
    rmse = float(np.sqrt(np.mean(residual**2))) if residual.size else float("nan")
    ax.set_title(f"Residuals over time (RMSE {rmse:.3g} ms)")
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_pressures(profile, instance_names=None, max_instances: int = _MAX_INSTANCES):
    """Prefill and decode pressures on the grid, with the inferred step density.

    One column per instance (the first ``max_instances``); rows: prefill
    pressure (full chunks and after the partial-chunk correction), decode
    pressure, and the step density ``1 / (b0 + b1 p_eff + b2 p_dec)``.

    Parameters
    ----------
    profile : DesignAtBetas
        The trace at the fitted betas, :func:`sklearn_beta.design_at_betas`.
    instance_names : list or None, default=None
        Display names of the instance codes.
    max_instances : int, default=4
        Instances drawn at most.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    codes = np.unique(profile.grid_instance)
    shown = codes[:max_instances]
    fig = _figure(figsize=(4.2 * len(shown) + 1, 7.5), layout="constrained")
    axes = fig.subplots(3, len(shown), sharex="col", squeeze=False)
    for col, code in enumerate(shown):
        points = np.flatnonzero(profile.grid_instance == code)
        first, last = points[0], points[-1]
        edges = profile.grid[first : last + 1]
        seg = slice(first, last)
        top, mid, bottom = axes[:, col]
        # baseline=None: no vertical drop to 0 at the instance's first/last time.
        top.stairs(
            profile.p_pf_full[seg],
            edges,
            color="0.6",
            label="full chunks",
            baseline=None,
        )
        top.stairs(
            profile.p_eff[seg],
            edges,
            color=_PHASE_COLORS["prefill"],
            label="effective",
            baseline=None,
        )
        mid.stairs(
            profile.p_dec[seg], edges, color=_PHASE_COLORS["decode"], baseline=None
        )
        bottom.stairs(
            profile.step_density[seg], edges, color="tab:green", baseline=None
        )
        for ax, values in (
            (top, profile.p_pf_full[seg]),
            (mid, profile.p_dec[seg]),
            (bottom, profile.step_density[seg]),
        ):
            # Headroom above the highest value keeps the legend off the data.
            ax.set_ylim(0, 1.3 * max(float(values.max(initial=0.0)), 1e-12))
        name = instance_names[code] if instance_names is not None else code
        top.set_title(f"instance {name}")
        bottom.set_xlabel("time (s since the instance's first phase)")
        if col == 0:
            top.set_ylabel("prefill tokens / step")
            mid.set_ylabel("decode tokens / step")
            bottom.set_ylabel("steps / s")
            top.legend(loc="upper right", fontsize="small", ncols=2)
    title = "Reconstructed pressures and the step density of the fitted betas"
    if codes.size > shown.size:
        title += f" (first {shown.size} of {codes.size} instances)"
    fig.suptitle(title)
    return fig


def plot_beta_history(
    history: pd.DataFrame, tol: float | None = None, stopping: str | None = None
):
    """The betas along the iterative fit (iteration 0 is the baseline start).

    Parameters
    ----------
    history : DataFrame
        Columns ``iteration, beta0, beta1, beta2, step`` (an
        ``IterativeBetaRegressor.history_`` or ``fit.history``).
    tol : float or None, default=None
        Stopping threshold, drawn on the panel of changes.
    stopping : {"absolute", "relative"} or None, default=None
        Stopping rule the changes were measured with, for the axis label.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    fig = _figure(figsize=(9, 6), layout="constrained")
    from matplotlib.ticker import MaxNLocator  # optional dependency (plot extra)

    axes = fig.subplots(2, 2, sharex=True).ravel()
    it = history["iteration"].to_numpy()
    labels = {
        "beta0": ("beta0 (ms / step)", 1e3),
        "beta1": ("beta1 (µs / prefill token)", 1e6),
        "beta2": ("beta2 (µs / decode token)", 1e6),
    }
    for ax, (column, (label, scale)) in zip(axes, labels.items(), strict=False):
        ax.plot(it, history[column].to_numpy() * scale, marker="o", ms=3)
        ax.set_ylabel(label)
        ax.ticklabel_format(axis="y", useOffset=False)
    step = history["step"].to_numpy(dtype=float)
    valid = np.isfinite(step) & (step > 0)
    if valid.any():
        axes[3].semilogy(it[valid], step[valid], marker="o", ms=3, color="tab:red")
    else:
        axes[3].text(
            0.5,
            0.5,
            "no iterations\n(baseline: one NNLS solve)",
            ha="center",
            va="center",
            transform=axes[3].transAxes,
            color="0.4",
        )
        axes[3].set_yticks([])
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[3].set_xlim(-0.5, max(it.max(initial=0), 1) + 0.5)
    if tol is not None:
        axes[3].axhline(tol, color="0.4", ls="--", lw=1, label=f"tol {tol:g}")
        axes[3].legend(loc="upper right")
    unit = {"absolute": " (||Δβ||₂, s)", "relative": " (relative)"}.get(stopping, "")
    axes[3].set_ylabel(f"change of betas{unit}")
    for ax in axes[2:]:
        ax.set_xlabel("iteration")
    fig.suptitle("Betas along the fit (iteration 0 = initialising baseline)")
    return fig


def save_fit_plots(
    model, phases: pd.DataFrame, directory: str | PathLike, *, dpi: int = 110
) -> list[Path]:
    """Write the four diagnostic figures of a fitted model as PNGs.

    Parameters
    ----------
    model : Pipeline
        A fitted ``make_pipeline(PhaseExposureTransformer(...), regressor)``
        with a :class:`~sklearn_beta.BaselineBetaRegressor` or
        :class:`~sklearn_beta.IterativeBetaRegressor`.
    phases : DataFrame
        The phase table to draw (usually the one the model was fitted on).
    directory : str or path-like
        Created when missing.
    dpi : int, default=110
        Resolution of the PNGs.

    Returns
    -------
    paths : list of Path
        ``observed_vs_predicted.png``, ``residuals.png``, ``pressures.png``
        and ``beta_history.png`` in ``directory``.
    """
    transformer, regressor = model[:-1], model[-1]
    table = transformer.transform(phases)
    observed, is_prefill = table["duration"], table["is_prefill"] == 1
    predicted = regressor.predict(table)
    instance = table["instance_id"].to_numpy(dtype=np.intp)
    column = columns_of(model[0]).instance_id
    names = None
    if column is not None and column in phases:
        names = pd.unique(phases[column].sort_values()).tolist()
    iterative = hasattr(regressor, "history_")
    figures = {
        "observed_vs_predicted.png": plot_observed_vs_predicted(
            observed, predicted, is_prefill
        ),
        "residuals.png": plot_residuals(
            table["t_start"], observed, predicted, is_prefill, instance, names
        ),
        "pressures.png": plot_pressures(
            design_at_betas(
                table,
                regressor.beta_,
                # The baseline's correction sits in its exposures; "end_inside"
                # draws the same mass where the partial step ran.
                correction_mode=getattr(regressor, "correction_mode", "end_inside"),
                objective=getattr(regressor, "objective", "duration"),
            ),
            names,
        ),
        "beta_history.png": plot_beta_history(
            regressor.history_ if iterative else _one_fit(regressor),
            regressor.tol if iterative else None,
            regressor.stopping if iterative else None,
        ),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = directory / name
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def _one_fit(regressor) -> pd.DataFrame:
    """The history of a one-shot fit: its betas as iteration 0."""
    row = dict(zip(("beta0", "beta1", "beta2"), regressor.beta_, strict=True))
    return pd.DataFrame([{"iteration": 0, **row, "step": np.nan}])


def plot_replay(held_out: pd.DataFrame):
    """Predicted against observed TTFT and decode time of a held-out replay.

    Parameters
    ----------
    held_out : DataFrame
        ``EngineConfig.held_out`` of :func:`sklearn_beta.select_engine_config`:
        ``observed_ttft``, ``predicted_ttft``, ``observed_decode``,
        ``predicted_decode`` (seconds), one row per request.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    fig = _figure(figsize=(9, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (name, color) in zip(
        axes, (("ttft", "tab:orange"), ("decode", "tab:blue")), strict=True
    ):
        obs = held_out[f"observed_{name}"].to_numpy(dtype=float) * 1e3
        pred = held_out[f"predicted_{name}"].to_numpy(dtype=float) * 1e3
        error = np.mean(np.abs(pred - obs) / obs) if obs.size else float("nan")
        title = "time to first token" if name == "ttft" else "decode time"
        ax.set_title(f"{title}: {obs.size} requests, mean |error| {error:.1%}")
        ax.set_xlabel("replayed (ms)")
        ax.set_ylabel("observed (ms)")
        _against_identity(ax, pred, obs, color=color, s=10, alpha=0.5)
    fig.suptitle("Held-out replay: each request forecast from its arrival")
    return fig


def save_replay_plot(
    held_out: pd.DataFrame, directory: str | PathLike, *, dpi: int = 110
) -> Path:
    """Write :func:`plot_replay` as ``replay.png`` in ``directory``.

    Parameters
    ----------
    held_out : DataFrame
        ``EngineConfig.held_out``.
    directory : str or path-like
        Created when missing.
    dpi : int, default=110
        Resolution of the PNG.

    Returns
    -------
    path : Path
    """
    fig = plot_replay(held_out)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "replay.png"
    fig.savefig(path, dpi=dpi)
    return path
