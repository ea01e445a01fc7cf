"""Simulator exports: fitted betas (and request overheads) as simulator input.

BLIS reads two different exports, depending on its build: builds before PR
#1136 (2026-04-23) read the three-coefficient *blackbox* model written here;
later builds read the *trained-physics* model of
:mod:`sklearn_beta.io._export_trained_physics`.

* :func:`to_blis_coefficients`: betas as BLIS's ``beta_coeffs`` (microseconds).
* :func:`blis_model_entry` and :func:`format_blis_models`: one entry of the
  ``models:`` list that BLIS's blackbox latency model reads, as YAML (BLIS
  builds before PR #1136).
* :func:`llm_d_latencies` and :func:`format_llm_d_config`: the per-token
  latency options of llm-d's inference simulator, as its YAML config file.
* :func:`request_overheads`: the request-level overheads ``alpha`` of a
  client-side trace, for the blackbox model's ``alpha_coeffs``.

Which simulator releases read which export is in ``docs/simulators.md``.

A step lasts ``beta0 + beta1 * prefill_tokens + beta2 * decode_tokens``
seconds. BLIS adds per request ``alpha0 + alpha1 * input_tokens`` before the
first step and ``alpha2`` per output token after it (all in microseconds).
llm-d's simulator does not batch: its prefill lasts ``prefill-overhead +
uncached_tokens * prefill-time-per-token`` and each later token
``inter-token-latency``, which :func:`llm_d_latencies` derives from the betas
of a request alone on the engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls

__all__ = [
    "BLIS_MODEL_KEYS",
    "BLIS_OPTIONAL_KEYS",
    "BLIS_PLACEHOLDERS",
    "BLIS_UNITS",
    "LLM_D_OPTIONS",
    "blis_model_entry",
    "format_blis_models",
    "format_llm_d_config",
    "llm_d_latencies",
    "request_overheads",
    "to_blis_coefficients",
]

#: Unit of each entry of :func:`to_blis_coefficients`.
BLIS_UNITS = ("us/step", "us/prefill_token", "us/decode_token")
#: Keys of a BLIS blackbox ``models:`` entry, in BLIS's order; all required.
BLIS_MODEL_KEYS = (
    "id",
    "GPU",
    "tensor_parallelism",
    "vllm_version",
    "alpha_coeffs",
    "beta_coeffs",
    "total_kv_blocks",
)
#: Keys BLIS accepts but does not require.
BLIS_OPTIONAL_KEYS = ("best_loss",)
#: Values written for the descriptive keys that were not given.
BLIS_PLACEHOLDERS = {
    "id": "unknown-model",
    "GPU": "unknown-gpu",
    "tensor_parallelism": 1,
    "vllm_version": "unknown",
    "total_kv_blocks": 0,
}
#: llm-d inference simulator options written by :func:`format_llm_d_config`.
LLM_D_OPTIONS = ("prefill-overhead", "prefill-time-per-token", "inter-token-latency")


def _check_beta(beta) -> np.ndarray:
    beta = np.asarray(beta, dtype=np.float64)
    if beta.shape != (3,) or not np.all(np.isfinite(beta)) or np.any(beta < 0):
        raise ValueError(
            "beta must hold three finite, non-negative numbers [beta0, beta1, "
            f"beta2], got {beta.tolist()!r}."
        )
    return beta


def to_blis_coefficients(beta, *, time_unit: float = 1.0) -> list[float]:
    """Betas (or alphas) in microseconds, as BLIS's blackbox ``beta_coeffs``.

    The three-coefficient blackbox model, read by BLIS builds before PR
    #1136 (2026-04-23); later builds read
    :func:`sklearn_beta.export.blis_trained_physics_coeffs`.

    Parameters
    ----------
    beta : array-like of shape (3,)
        ``[beta0, beta1, beta2]`` as fitted: time per step, per prefill token
        and per decode token, in the trace's time unit.
    time_unit : float, default=1.0
        Seconds per unit of the trace's times (1.0 for seconds, 1e-3 for
        milliseconds).

    Returns
    -------
    beta_coeffs : list of float
        ``[per step, per prefill token, per decode token]`` in microseconds
        (units :data:`BLIS_UNITS`).

    Raises
    ------
    ValueError
        If ``beta`` does not hold three finite, non-negative numbers.

    Examples
    --------
    >>> from sklearn_beta.export import to_blis_coefficients
    >>> to_blis_coefficients([0.004, 3e-5, 2e-4])
    [4000.0, 30.0, 200.0]
    """
    beta = _check_beta(beta)
    if not np.isfinite(time_unit) or time_unit <= 0:
        raise ValueError(f"time_unit must be a positive number, got {time_unit!r}.")
    # Rounded to 1e-9 us so that 0.004 s gives 4000.0, not 4000.0000000000005.
    return np.round(beta * time_unit * 1e6, 9).tolist()


def request_overheads(
    prefill_residual: np.ndarray,
    input_tokens: np.ndarray,
    decode_residual: np.ndarray,
    output_tokens: np.ndarray,
) -> np.ndarray:
    """Request-level overheads ``[alpha0, alpha1, alpha2]`` from fit residuals.

    In the legacy blackbox meaning (BLIS builds before PR #1136,
    2026-04-23); :func:`sklearn_beta.export.blis_alphas` gives the
    trained-physics meaning.

    The residual of a phase is its observed minus its predicted duration
    (the steps the fitted betas place inside it). On a client-side trace the
    prefill residual holds what the client sees before the engine's first
    step (network, tokenisation, queueing); a non-negative least-squares line
    ``alpha0 + alpha1 * input_tokens`` through it gives ``alpha0, alpha1``.
    The decode residual per decode token gives ``alpha2`` (detokenisation and
    streaming of each token), clipped at 0.

    Parameters
    ----------
    prefill_residual, input_tokens : ndarray of shape (n_prefill,)
        Seconds, and the request's prompt tokens.
    decode_residual, output_tokens : ndarray of shape (n_decode,)
        Seconds, and the decode phase's tokens.

    Returns
    -------
    alpha : ndarray of shape (3,)
        Seconds, seconds per input token, seconds per output token.
    """
    prefill_residual = np.asarray(prefill_residual, dtype=np.float64)
    design = np.column_stack([np.ones_like(prefill_residual), input_tokens])
    alpha = np.zeros(3)
    if prefill_residual.size:
        # Scale the token column so that NNLS works on comparable columns.
        scale = max(float(np.max(design[:, 1])), 1.0)
        coef, _ = nnls(design / [1.0, scale], prefill_residual)
        alpha[:2] = coef / [1.0, scale]
    tokens = float(np.sum(output_tokens))
    if tokens > 0:
        alpha[2] = max(float(np.sum(decode_residual)) / tokens, 0.0)
    return alpha


def blis_model_entry(
    beta,
    *,
    alpha=(0.0, 0.0, 0.0),
    model_id: str | None = None,
    gpu: str | None = None,
    tensor_parallelism: int | None = None,
    vllm_version: str | None = None,
    total_kv_blocks: int | None = None,
    best_loss: float | None = None,
) -> dict:
    """One entry of the ``models:`` list of BLIS's blackbox latency model.

    Read by BLIS builds before PR #1136 (2026-04-23), which removed the
    blackbox model; later builds read
    :func:`sklearn_beta.export.blis_trained_physics_coeffs`.

    Parameters
    ----------
    beta : array-like of shape (3,)
        Fitted betas in seconds (per step, per prefill token, per decode token).
    alpha : array-like of shape (3,), default=(0, 0, 0)
        Request overheads in seconds: per request, per input token, per
        output token (:func:`request_overheads`).
    model_id, gpu, tensor_parallelism, vllm_version, total_kv_blocks : optional
        The entry's descriptive keys; None writes :data:`BLIS_PLACEHOLDERS`.
    best_loss : float or None, default=None
        Written as ``best_loss`` when given.

    Returns
    -------
    entry : dict
        Exactly the keys :data:`BLIS_MODEL_KEYS` (plus ``best_loss`` when
        given); coefficients in microseconds.
    """
    given = {
        "id": model_id,
        "GPU": gpu,
        "tensor_parallelism": tensor_parallelism,
        "vllm_version": vllm_version,
        "total_kv_blocks": total_kv_blocks,
    }
    entry = {k: BLIS_PLACEHOLDERS[k] if v is None else v for k, v in given.items()}
    entry["alpha_coeffs"] = to_blis_coefficients(alpha)
    entry["beta_coeffs"] = to_blis_coefficients(beta)
    if best_loss is not None:
        entry["best_loss"] = float(best_loss)
    return {
        key: entry[key]
        for key in (*BLIS_MODEL_KEYS, *BLIS_OPTIONAL_KEYS)
        if key in entry
    }


def _yaml_scalar(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a YAML double-quoted scalar
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


def _comment_lines(comments: Sequence[str]) -> list[str]:
    return [f"# {line}" for text in comments for line in str(text).splitlines()]


def format_blis_models(entry: dict, comments: Sequence[str] = ()) -> str:
    """One YAML document ``models: [entry]``, comments first.

    Written by hand (no YAML library needed): strings are double-quoted,
    lists are flow sequences.
    """
    lines = _comment_lines(comments) + ["models:"]
    for i, (key, value) in enumerate(entry.items()):
        lead = "  - " if i == 0 else "    "
        lines.append(f"{lead}{key}: {_yaml_scalar(value)}")
    return "\n".join(lines)


def llm_d_latencies(beta, *, chunk_size: int, alpha=(0.0, 0.0, 0.0)) -> dict:
    """llm-d simulator latencies (seconds) of a request alone on the engine.

    A lone request with ``P`` uncached prompt tokens prefills in
    ``ceil(P / C)`` steps lasting ``beta0 + beta1 * chunk``: ``beta1 * P +
    beta0 * ceil(P / C)``. llm-d's line ``prefill-overhead + P *
    prefill-time-per-token`` matches it on average over ``P`` (``ceil(P/C) ~
    P/C + 1/2``) with ``prefill-overhead = alpha0 + beta0 / 2`` and
    ``prefill-time-per-token = alpha1 + beta1 + beta0 / C``, off by at most
    ``beta0 / 2``. Each later token takes one decode step of a batch of one,
    ``inter-token-latency = alpha2 + beta0 + beta2``. Load is llm-d's
    ``time-factor-under-load``, which the betas do not set.

    Returns
    -------
    latencies : dict
        ``{option name: seconds}`` for :data:`LLM_D_OPTIONS`.
    """
    b0, b1, b2 = _check_beta(beta)
    a0, a1, a2 = _check_beta(alpha)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    return {
        "prefill-overhead": float(a0 + b0 / 2),
        "prefill-time-per-token": float(a1 + b1 + b0 / int(chunk_size)),
        "inter-token-latency": float(a2 + b0 + b2),
    }


def _go_duration(seconds: float) -> str:
    # Go's time.ParseDuration takes decimals with a unit; "us" is ASCII-safe.
    # Nanoseconds are its resolution, hence three decimals of microseconds.
    text = f"{seconds * 1e6:.3f}".rstrip("0").rstrip(".")
    return f"{text or '0'}us"


def format_llm_d_config(latencies: dict, comments: Sequence[str] = ()) -> str:
    """The llm-d inference simulator's YAML config (``--config FILE``) lines.

    Flat top-level keys with Go duration strings, and ``latency-calculator:
    per-token`` so that the prefill scales with the prompt.
    """
    lines = _comment_lines(comments) + ["latency-calculator: per-token"]
    lines += [f"{name}: {_go_duration(latencies[name])}" for name in LLM_D_OPTIONS]
    return "\n".join(lines)
