"""Export to BLIS's trained-physics latency model (BLIS builds after PR #1136).

BLIS builds after PR #1136 (2026-04-23) read ``--latency-model
trained-physics`` with ``--alpha-coeffs a0,a1,a2 --beta-coeffs b0,...,b9``
(microseconds, BLIS's order); builds before it read the three-coefficient
blackbox model that :func:`sklearn_beta.export.blis_model_entry` writes.

* :func:`blis_alphas`: request overheads in trained-physics meaning from a
  client-side fit's residuals.
* :func:`blis_alphas_of_offsets`: the same from the schedule-consistent
  fit's offsets (``ScheduleBetaRegressor.alpha_``).
* :func:`blis_trained_physics_coeffs`: ``{"alpha_coeffs": [3],
  "beta_coeffs": [10]}`` from a fit of the identifiable trained-physics
  features (:func:`sklearn_beta.core._trained_physics.identifiable_map`).
* :func:`format_blis_trained_physics`: those values and the ``blis replay``
  command line that uses them.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls

from ..core._model_config import ModelDescription
from ..core._trained_physics import to_blis_betas

__all__ = [
    "BLIS_TRAINED_PHYSICS_KEYS",
    "blis_alphas",
    "blis_alphas_of_offsets",
    "blis_trained_physics_coeffs",
    "format_blis_trained_physics",
]

#: The keys of :func:`blis_trained_physics_coeffs`, with their lengths.
BLIS_TRAINED_PHYSICS_KEYS = {"alpha_coeffs": 3, "beta_coeffs": 10}


def _vector(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}.")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name} is not finite in {bad.size} row(s); first offending rows: "
            + ", ".join(f"{i}: {array[i].item()!r}" for i in bad[:5].tolist())
        )
    return array


def blis_alphas(prefill_overhead, decode_residual, decode_tokens) -> np.ndarray:
    """Request overheads ``[a0, a1, a2]`` in BLIS's trained-physics meaning.

    BLIS (after PR #1136) delays each request by ``a0`` before its waiting
    queue, adds ``a2`` to the reported first-token time and to every
    inter-token gap (an offset that does not delay the engine), and ``a1``
    once to the end-to-end latency. On a client-side trace whose prefill
    phase runs from send to first token and whose decode phase from first
    token to completion, the per-request overhead of the prefill is ``a0 +
    a2`` and the decode residual (observed minus the steps) of ``D`` decode
    tokens is ``a1 + a2 * D``. So ``a1, a2`` are a non-negative least-squares
    line through the decode residuals against ``D``, and ``a0`` is the mean
    prefill overhead minus ``a2``, clipped at 0. When every decode phase has
    the same ``D`` the line's intercept and slope cannot be told apart: all
    of it goes to ``a2`` (``a1 = 0``; to ``a1`` when that ``D`` is 0). On a
    trace whose decode phase ends at the last token, not at completion,
    ``a1`` estimates 0.

    These are not the legacy alphas of
    :func:`sklearn_beta.export.request_overheads` (``a0 + a1 *
    input_tokens`` before the first step, ``a2`` per output token), which
    BLIS builds before PR #1136 read.

    Parameters
    ----------
    prefill_overhead : array-like of shape (n_prefill,)
        Per request, what the client saw before the first token beyond the
        engine's steps (e.g. each request's observed minus replayed first
        token, :func:`sklearn_beta.engine_config._trace_fit.replayed_overheads`),
        in the trace's time unit.
    decode_residual : array-like of shape (n_decode,)
        Observed minus predicted decode-phase durations, same unit.
    decode_tokens : array-like of shape (n_decode,)
        The decode phases' tokens ``D`` (output tokens - 1).

    Returns
    -------
    alpha : ndarray of shape (3,)
        ``[a0, a1, a2]`` in the trace's time unit, all non-negative.
    """
    overhead = _vector("prefill_overhead", prefill_overhead)
    residual = _vector("decode_residual", decode_residual)
    tokens = _vector("decode_tokens", decode_tokens)
    if tokens.shape != residual.shape:
        raise ValueError(
            f"decode_tokens has {tokens.shape[0]} rows, decode_residual "
            f"{residual.shape[0]}: one per decode phase."
        )
    negative = np.flatnonzero(tokens < 0)
    if negative.size:
        raise ValueError(
            "decode_tokens is negative; first offending rows: "
            + ", ".join(f"{i}: {tokens[i].item()!r}" for i in negative[:5].tolist())
        )
    alpha = np.zeros(3)
    if residual.size and np.ptp(tokens) > 0:
        # Scale the token column so that NNLS works on comparable columns.
        scale = float(np.max(tokens))
        design = np.column_stack([np.ones_like(tokens), tokens / scale])
        coef, _ = nnls(design, residual)
        alpha[1:] = coef / [1.0, scale]
    elif residual.size and tokens[0] > 0:
        alpha[2] = max(float(np.mean(residual)) / tokens[0], 0.0)
    elif residual.size:  # no decode tokens at all: only a1 is seen
        alpha[1] = max(float(np.mean(residual)), 0.0)
    if overhead.size:
        alpha[0] = max(float(np.mean(overhead)) - alpha[2], 0.0)
    return alpha


def blis_alphas_of_offsets(queue, first_token, last_token) -> np.ndarray:
    """Request overheads ``[a0, a1, a2]`` in BLIS's trained-physics meaning
    from the schedule-consistent fit's offsets.

    ``ScheduleBetaRegressor.alpha_`` holds the delay from the send to the
    engine's queue (``queue``) and the constant offsets from the engine's
    first and last token to the client seeing them. BLIS delays a request by
    ``a0`` before its queue, adds ``a2`` to the first token and to every
    inter-token gap and ``a1`` once at completion (:func:`blis_alphas`). A
    constant per-token offset is not in the fit's model, so ``a2 = 0``;
    ``a0 = queue + first_token`` (delaying every arrival by the same
    reporting offset moves every step alike, so the replayed first token is
    seen where the fit put it) and ``a1 = last_token - first_token``, both
    clipped at 0 (BLIS takes no negative overhead).

    Parameters
    ----------
    queue, first_token, last_token : float
        The offsets, in the trace's time unit.

    Returns
    -------
    alpha : ndarray of shape (3,)
        ``[a0, a1, a2]`` in the trace's time unit, all non-negative.
    """
    offsets = _vector("offsets", [queue, first_token, last_token])
    a0 = offsets[0] + offsets[1]
    return np.maximum([a0, offsets[2] - offsets[1], 0.0], 0.0)


def blis_trained_physics_coeffs(
    coef,
    model: ModelDescription,
    *,
    alpha=(0.0, 0.0, 0.0),
    time_unit: float = 1.0,
    constant_split: str = "per_step",
) -> dict[str, list[float]]:
    """The coefficients BLIS's trained-physics model reads, in microseconds.

    For BLIS builds after PR #1136 (2026-04-23): ``--latency-model
    trained-physics --alpha-coeffs ... --beta-coeffs ...``. Builds before
    it read the blackbox entry of :func:`sklearn_beta.export.blis_model_entry`.

    Parameters
    ----------
    coef : array-like of shape (6,)
        Fitted non-negative coefficients of the identifiable trained-physics
        features (see :func:`sklearn_beta.core._trained_physics.to_blis_betas`).
    model : ModelDescription
        The deployment (model config, GPU, tp) the features were built for.
    alpha : array-like of shape (3,), default=(0, 0, 0)
        ``[a0, a1, a2]`` in trained-physics meaning (:func:`blis_alphas`),
        in the trace's time unit.
    time_unit : float, default=1.0
        Seconds per unit of the trace's times.
    constant_split : {"per_step", "bundled"}, default="per_step"
        How the per-step constant is spread over ``b[2], b[4], b[6]``
        (:func:`sklearn_beta.core._trained_physics.to_blis_betas`).

    Returns
    -------
    coeffs : dict
        Exactly ``{"alpha_coeffs": [3 floats], "beta_coeffs": [10 floats]}``,
        microseconds (the roofline betas dimensionless), BLIS's order, all
        finite and non-negative.

    Raises
    ------
    ValueError
        If ``coef`` or ``alpha`` is not finite and non-negative of the right
        length, or ``time_unit`` or ``constant_split`` is invalid.
    """
    betas = to_blis_betas(
        coef, model, time_unit=time_unit, constant_split=constant_split
    )
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape != (3,) or not np.all(np.isfinite(alpha)) or np.any(alpha < 0):
        raise ValueError(
            "alpha must hold three finite, non-negative numbers [a0, a1, a2], "
            f"got {np.asarray(alpha).tolist()!r}."
        )
    alpha_us = [float(f"{v:.12g}") for v in (alpha * time_unit * 1e6).tolist()]
    return {"alpha_coeffs": alpha_us, "beta_coeffs": list(betas.beta_coeffs)}


def _check_coeffs(coeffs: dict) -> None:
    if not isinstance(coeffs, dict) or set(coeffs) != set(BLIS_TRAINED_PHYSICS_KEYS):
        raise ValueError(
            "coeffs must be a dict with exactly the keys "
            f"{list(BLIS_TRAINED_PHYSICS_KEYS)}."
        )
    for key, length in BLIS_TRAINED_PHYSICS_KEYS.items():
        values = np.asarray(coeffs[key], dtype=np.float64)
        if values.shape != (length,) or not np.all(np.isfinite(values)):
            raise ValueError(f"coeffs[{key!r}] must hold {length} finite numbers.")


def _flag_list(values: Sequence[float]) -> str:
    # repr is the shortest text that reads back as the same float.
    return ",".join(repr(float(v)) for v in values)


def format_blis_trained_physics(
    coeffs: dict,
    model: ModelDescription,
    *,
    model_id: str | None = None,
    trace_header: str = "trace_header.yaml",
    trace_data: str = "trace_data.csv",
    results_path: str = "results.json",
    model_config_folder: str | None = None,
    comments: Sequence[str] = (),
) -> str:
    """The trained-physics coefficients and the ``blis replay`` line using them.

    Parameters
    ----------
    coeffs : dict
        :func:`blis_trained_physics_coeffs`.
    model : ModelDescription
        Gives ``--hardware`` and ``--tp``, and the model name.
    model_id : str or None, default=None
        BLIS's ``--model``; None: the config's name in lower case (BLIS's
        ``model_configs/`` folders are lower case, e.g. ``qwen/qwen3-14b``).
    trace_header, trace_data, results_path : str
        The replay's ``--trace-header``, ``--trace-data`` and
        ``--results-path`` (the user's files; the defaults are names to
        replace).
    model_config_folder : str or None, default=None
        Adds ``--model-config-folder`` when BLIS should read ``config.json``
        from there rather than its bundled ``model_configs/``.
    comments : sequence of str, default=()
        Lines written first, each as a ``#`` comment.

    Returns
    -------
    text : str
        Comment lines, ``alpha_coeffs: [...]``, ``beta_coeffs: [...]`` and
        the command line (for BLIS builds after PR #1136, 2026-04-23).
    """
    _check_coeffs(coeffs)
    alpha, beta = coeffs["alpha_coeffs"], coeffs["beta_coeffs"]
    args = [
        "blis",
        "replay",
        "--trace-header",
        trace_header,
        "--trace-data",
        trace_data,
        "--model",
        model.name.lower() if model_id is None else model_id,
        "--latency-model",
        "trained-physics",
        "--hardware",
        model.gpu,
        "--tp",
        str(model.tp),
        "--alpha-coeffs",
        _flag_list(alpha),
        "--beta-coeffs",
        _flag_list(beta),
        "--results-path",
        results_path,
    ]
    if model_config_folder is not None:
        args += ["--model-config-folder", model_config_folder]
    lines = [f"# {line}" for text in comments for line in str(text).splitlines()]
    lines += [
        "# BLIS trained-physics latency model (BLIS builds after PR #1136, "
        "2026-04-23); microseconds, BLIS's order",
        f"alpha_coeffs: [{', '.join(repr(float(v)) for v in alpha)}]",
        f"beta_coeffs: [{', '.join(repr(float(v)) for v in beta)}]",
        shlex.join(args),
    ]
    return "\n".join(lines)
