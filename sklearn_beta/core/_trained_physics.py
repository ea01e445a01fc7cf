"""BLIS's trained-physics step model: basis, step time, and the fit's parameters.

BLIS (after PR #1136, 2026-04-23) times a step as ``sum_k b[k] * f_k`` over
ten roofline basis functions ``f_k`` of the batch (``shared/blis/
trained-physics.md``). For one deployment (:class:`ModelDescription`: model,
GPU, tp) every ``f_k`` is linear in the step features :data:`STEP_FEATURES`
``(1, T_p, A_p, T_d, C_d, B)`` that the phase exposures are built from; the
maps are :func:`basis_map` (all ten) and :func:`identifiable_map` (the six
combinations a trace can tell apart, :data:`IDENTIFIABLE_FEATURES`).

Each prefill basis is a homogeneous function of ``(T_p, A_p)`` and each
decode basis of ``(T_d, C_d)``, so BLIS's rule "0 when ``T_p = 0`` (``T_d =
0``)" needs no separate pieces: a step without prefill has ``T_p = A_p = 0``.

Why six: ``b[2] * T_weight + b[4] * L + b[6]`` is one constant per step (the
weights' load time and ``L`` do not change between steps); the TP all-reduce
basis is ``0`` at ``tp = 1`` and at ``tp > 1`` proportional to ``T_p + T_d``,
which the prefill KV column (``T_p``) and the decode pair (``T_d`` and
``C_d`` in two independent mixtures) already span; ``n_moe = 0`` for dense
models. The other six coefficients are each identifiable (given variation of
``A_p / T_p`` and ``C_d / T_d`` across phases): ``A_p`` enters only the
prefill compute, so it separates compute from the KV write, and ``C_d``
enters compute and KV traffic with different weights relative to ``T_d``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._model_config import ModelDescription
from ._step_features import STEP_FEATURES

__all__ = [
    "BLIS_BETA_NAMES",
    "BLIS_BUNDLED_BETAS",
    "CONSTANT_SPLITS",
    "IDENTIFIABLE_FEATURES",
    "STEP_FEATURES",
    "TrainedPhysicsBetas",
    "basis_constants",
    "basis_map",
    "blis_step_time",
    "fixed_coefficients",
    "identifiable_map_of",
    "identifiable_map",
    "to_blis_betas",
    "trained_physics_basis",
    "trained_physics_design",
]

#: BLIS's ten beta coefficients, in its order. ``b[0..3], b[8], b[9]`` are
#: dimensionless (they scale a roofline time); ``b[4]`` is microseconds per
#: layer, ``b[5]`` per request in the batch, ``b[6]`` per step, ``b[7]`` per
#: MoE layer.
BLIS_BETA_NAMES = (
    "prefill_compute",
    "decode_compute",
    "weights",
    "tp_allreduce",
    "per_layer",
    "per_request",
    "per_step",
    "per_moe_layer",
    "prefill_kv",
    "decode_kv",
)
#: The basis is linear in the per-step batch aggregates of
#: :data:`~sklearn_beta.core._step_features.STEP_FEATURES` (1 per step, ``T_p``,
#: ``A_p``, ``T_d``, ``C_d``, ``B``).
#: The combinations of BLIS coefficients one deployment's trace identifies:
#: ``b[0], b[1]``, the per-step constant ``b[2]*T_weight + b[4]*L + b[6]``
#: (microseconds), ``b[5], b[8], b[9]``.
IDENTIFIABLE_FEATURES = (
    "prefill_compute",
    "decode_compute",
    "per_step",
    "per_request",
    "prefill_kv",
    "decode_kv",
)
# Where each identifiable coefficient lands in BLIS's vector (per_step: b[6]
# before the constant is split).
_IDENTIFIABLE_INDEX = (0, 1, 6, 5, 8, 9)
#: BLIS's bundled global betas (fitted once across many models on H100).
BLIS_BUNDLED_BETAS = (
    0.152128,
    0.0,
    1.36252915,
    0.752037,
    32.09546717,
    4.41684444,
    126.024825,
    481.8613888,
    0.0,
    1.94710771,
)
#: How :func:`to_blis_betas` spreads the per-step constant over b[2], b[4], b[6].
CONSTANT_SPLITS = ("per_step", "bundled")


def _aggregate(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}.")
    return array


def _raise_rows(
    name: str, what: str, mask: np.ndarray, values: np.ndarray, row: str = "step"
) -> None:
    rows = np.flatnonzero(mask)
    if rows.size:
        first = rows[:5]
        shown = ", ".join(
            f"{row} {i}: {v!r}"
            for i, v in zip(first.tolist(), values[first].tolist(), strict=True)
        )
        raise ValueError(
            f"{name} {what} in {rows.size} {row}(s); first offending rows: {shown}."
        )


def _check_aggregates(T_p, A_p, T_d, C_d, B) -> tuple[np.ndarray, ...]:
    names = ("T_p", "A_p", "T_d", "C_d", "B")
    arrays = tuple(
        _aggregate(n, v) for n, v in zip(names, (T_p, A_p, T_d, C_d, B), strict=True)
    )
    n = arrays[0].shape[0]
    for name, array in zip(names, arrays, strict=True):
        if array.shape[0] != n:
            raise ValueError(
                f"The aggregates must have one value per step: T_p has {n}, "
                f"{name} has {array.shape[0]}."
            )
        _raise_rows(name, "is negative or not finite", ~(array >= 0), array)
        _raise_rows(name, "is infinite", np.isinf(array), array)
    T_p, A_p, T_d, C_d, B = arrays
    _raise_rows("A_p", "is positive where T_p = 0", (T_p == 0) & (A_p > 0), A_p)
    _raise_rows("C_d", "is positive where T_d = 0", (T_d == 0) & (C_d > 0), C_d)
    # A step runs at least one request; every decode token is a request, and a
    # prefill needs one more.
    least = np.maximum(T_d + (T_p > 0), 1.0)
    _raise_rows("B", "is below the decode requests (+1 with a prefill)", B < least, B)
    return arrays


def _per_token_constants(model: ModelDescription) -> dict[str, float]:
    L, d, tp = model.n_layers, model.hidden_size, model.tp
    d_kv, d_ff, bpp = model.kv_dim, model.intermediate_size, model.bytes_per_param
    F, W = model.flops_per_us, model.bytes_per_us
    return {
        # compute per (prefill or decode) token: QKV/O projections and the MLP
        "token": (L * 2 * d * (2 * d + 2 * d_kv) / tp + L * 6 * d * d_ff / tp) / F,
        # compute per attended (token, context) pair
        "attention": L * 4 * (model.n_heads / tp) * model.head_dim / F,
        # KV bytes written or read per token of context
        "kv": L * 2 * (d_kv / tp) * 2 / W,
        "tp": 2 * L * d * bpp * 2 * (tp - 1) / tp / W,
        "weights": (L * d * (2 * d + 2 * d_kv) * bpp / tp + L * 3 * d * d_ff * bpp / tp)
        / W,
    }


def trained_physics_basis(model: ModelDescription, T_p, A_p, T_d, C_d, B) -> np.ndarray:
    """BLIS's ten trained-physics basis values of each step, in microseconds.

    Parameters
    ----------
    model : ModelDescription
        Model, GPU and tp
        (:func:`sklearn_beta.core._model_config.read_model_description`).
    T_p, A_p, T_d, C_d, B : array-like of shape (n_steps,)
        Per-step aggregates over the step's requests: prefill tokens ``sum
        t_i``, prefill attention ``sum t_i * (s_i + t_i / 2)`` (``s_i`` the
        whole prompt), decode requests, decode context ``sum c_i`` and batch
        size.

    Returns
    -------
    basis : ndarray of shape (n_steps, 10)
        Columns in BLIS's coefficient order (:data:`BLIS_BETA_NAMES`): prefill
        compute, decode compute, weights, TP all-reduce, ``L``, ``B``, 1,
        ``n_moe`` (0), prefill KV write, decode KV; the step time is ``basis
        @ b`` (:func:`blis_step_time`).

    Raises
    ------
    ValueError
        If an aggregate is negative, not finite or of another length, ``A_p
        > 0`` with ``T_p = 0``, ``C_d > 0`` with ``T_d = 0``, or ``B`` is
        below the requests the tokens imply.
    """
    T_p, A_p, T_d, C_d, B = _check_aggregates(T_p, A_p, T_d, C_d, B)
    L, d, tp = model.n_layers, model.hidden_size, model.tp
    H, d_h, d_kv = model.n_heads, model.head_dim, model.kv_dim
    d_ff, bpp = model.intermediate_size, model.bytes_per_param
    F, W = model.flops_per_us, model.bytes_per_us
    # Straight from the formulas of shared/blis/trained-physics.md, term by
    # term; basis_map holds the same model as per-feature constants.
    pf_compute = (
        L * 2 * T_p * d * (2 * d + 2 * d_kv) / tp
        + L * 4 * (H / tp) * A_p * d_h
        + L * T_p * 6 * d * d_ff / tp
    ) / F
    dc_compute = (
        L * 2 * T_d * d * (2 * d + 2 * d_kv) / tp
        + L * 4 * (H / tp) * C_d * d_h
        + L * T_d * 6 * d * d_ff / tp
    ) / F
    pf_kv = L * 2 * (d_kv / tp) * T_p * 2 / W
    dc_kv = L * 2 * (d_kv / tp) * 2 * (C_d + T_d) / W
    weights = (L * d * (2 * d + 2 * d_kv) * bpp / tp + L * 3 * d * d_ff * bpp / tp) / W
    tp_comm = 2 * L * (T_p + T_d) * d * bpp * 2 * (tp - 1) / tp / W
    has_prefill, has_decode = T_p > 0, T_d > 0
    basis = np.zeros((T_p.shape[0], 10))
    basis[:, 0] = np.where(has_prefill, pf_compute, 0.0)
    basis[:, 1] = np.where(has_decode, dc_compute, 0.0)
    basis[:, 2] = weights
    basis[:, 3] = tp_comm
    basis[:, 4] = L
    basis[:, 5] = B
    basis[:, 6] = 1.0
    basis[:, 8] = np.where(has_prefill, pf_kv, 0.0)
    basis[:, 9] = np.where(has_decode, dc_kv, 0.0)
    return basis


def _check_beta10(beta) -> np.ndarray:
    beta = np.asarray(beta, dtype=np.float64)
    if beta.shape != (10,) or not np.all(np.isfinite(beta)):
        raise ValueError(
            "beta must hold BLIS's ten finite trained-physics coefficients "
            f"{BLIS_BETA_NAMES}, got {np.asarray(beta).tolist()!r}."
        )
    return beta


def blis_step_time(basis, beta, *, truncate: bool = False) -> np.ndarray:
    """Step times ``basis @ beta`` in microseconds.

    Parameters
    ----------
    basis : array-like of shape (n_steps, 10)
        :func:`trained_physics_basis`.
    beta : array-like of shape (10,)
        BLIS's ``beta_coeffs`` in its order (:data:`BLIS_BETA_NAMES`). Ten
        values only: with fewer BLIS collapses each compute/KV pair into a
        maximum, which this basis does not model.
    truncate : bool, default=False
        Truncate each step to whole microseconds, at least 1, as BLIS does.

    Returns
    -------
    step_time : ndarray of shape (n_steps,)
        Microseconds.
    """
    basis = np.asarray(basis, dtype=np.float64)
    if basis.ndim != 2 or basis.shape[1] != 10:
        raise ValueError(f"basis must have shape (n_steps, 10), got {basis.shape}.")
    step_time = basis @ _check_beta10(beta)
    if truncate:
        step_time = np.maximum(np.floor(step_time), 1.0)
    return step_time


def basis_map(model: ModelDescription) -> np.ndarray:
    """The basis as a linear map of the step features, for one deployment.

    Parameters
    ----------
    model : ModelDescription

    Returns
    -------
    M : ndarray of shape (10, 6)
        ``basis = features @ M.T`` for per-step features in the order
        :data:`STEP_FEATURES` ``(1, T_p, A_p, T_d, C_d, B)``. Being linear,
        it also maps a phase's exposures (sums of the features over the
        steps the phase spans) to its exposure to each basis function.
    """
    k = _per_token_constants(model)
    M = np.zeros((10, 6))
    M[0, 1:3] = k["token"], k["attention"]  # prefill compute: T_p, A_p
    M[1, 3:5] = k["token"], k["attention"]  # decode compute: T_d, C_d
    M[2, 0] = k["weights"]
    M[3, [1, 3]] = k["tp"]  # all-reduce of T_p + T_d tokens
    M[4, 0] = model.n_layers
    M[5, 5] = 1.0
    M[6, 0] = 1.0
    M[8, 1] = k["kv"]  # KV write of T_p tokens
    M[9, 3:5] = k["kv"]  # KV read of C_d + T_d tokens
    return M


def basis_constants(model: ModelDescription) -> tuple[float, float, float]:
    """What the identifiable map depends on: microseconds of roofline time per
    token, per attended (token, context) pair and per KV token
    (:func:`identifiable_map_of`)."""
    k = _per_token_constants(model)
    return float(k["token"]), float(k["attention"]), float(k["kv"])


def identifiable_map_of(token: float, attention: float, kv: float) -> np.ndarray:
    """:func:`identifiable_map` from the three :func:`basis_constants`.

    An exposure table carries these three numbers (not the model), so that a
    regressor can rebuild the trained-physics design from the step features.
    """
    constants = np.array([token, attention, kv], dtype=np.float64)
    if constants.shape != (3,) or not np.all(np.isfinite(constants) & (constants > 0)):
        raise ValueError(
            "The trained-physics constants (token, attention, kv) must be "
            f"positive and finite, got {constants.tolist()!r}."
        )
    K = np.zeros((len(IDENTIFIABLE_FEATURES), len(STEP_FEATURES)))
    K[0, 1:3] = token, attention  # prefill compute: T_p, A_p
    K[1, 3:5] = token, attention  # decode compute: T_d, C_d
    K[2, 0] = 1.0  # the per-step constant
    K[3, 5] = 1.0  # per request in the batch
    K[4, 1] = kv  # KV write of T_p tokens
    K[5, 3:5] = kv  # KV read of C_d + T_d tokens
    return K


def identifiable_map(model: ModelDescription) -> np.ndarray:
    """The identifiable trained-physics features as a map of the step features.

    Parameters
    ----------
    model : ModelDescription

    Returns
    -------
    K : ndarray of shape (6, 6)
        Rows :data:`IDENTIFIABLE_FEATURES`, columns :data:`STEP_FEATURES`:
        the trained-physics design of a set of phases is ``exposures @
        K.T`` where ``exposures`` holds each phase's sums of the step
        features. The roofline columns are in microseconds, ``per_step`` and
        ``per_request`` are counts; a fit on them gives the coefficients
        :func:`to_blis_betas` takes. ``K`` is invertible (its determinant is
        a product of positive constants), so the six span the same space as
        the step features.
    """
    return basis_map(model)[list(_IDENTIFIABLE_INDEX)]


def trained_physics_design(exposures, model: ModelDescription) -> np.ndarray:
    """The identifiable trained-physics design of a set of phases.

    Parameters
    ----------
    exposures : array-like of shape (n_phases, 6)
        Each phase's exposure to the step features, columns
        :data:`STEP_FEATURES`: its steps and the sums over them of ``T_p,
        A_p, T_d, C_d, B`` (``A_p`` with ``s`` the whole prompt, as BLIS
        defines it).
    model : ModelDescription

    Returns
    -------
    design : ndarray of shape (n_phases, 6)
        Columns :data:`IDENTIFIABLE_FEATURES`: ``exposures @
        identifiable_map(model).T``; a non-negative fit of durations on it
        gives the ``coef`` of :func:`to_blis_betas`.

    Raises
    ------
    ValueError
        If ``exposures`` is not a finite, non-negative (n, 6) array.
    """
    exposures = np.asarray(exposures, dtype=np.float64)
    if exposures.ndim != 2 or exposures.shape[1] != len(STEP_FEATURES):
        raise ValueError(
            f"exposures must have shape (n_phases, 6), columns {STEP_FEATURES}; "
            f"got {exposures.shape}."
        )
    for j, name in enumerate(STEP_FEATURES):
        column = exposures[:, j]
        _raise_rows(name, "is negative or not finite", ~(column >= 0), column, "phase")
        _raise_rows(name, "is infinite", np.isinf(column), column, "phase")
    return exposures @ identifiable_map(model).T


@dataclass(frozen=True)
class TrainedPhysicsBetas:
    """BLIS's ten betas made from a trained-physics fit.

    Attributes
    ----------
    beta_coeffs : tuple of float
        Ten values in BLIS's order (:data:`BLIS_BETA_NAMES`), microseconds
        (dimensionless for the roofline terms).
    per_step_us : float
        The fitted per-step constant ``b[2]*T_weight + b[4]*L + b[6]``.
    constant_split : str
        How the constant was spread (:data:`CONSTANT_SPLITS`).
    fixed : dict of str to str
        Each coefficient the fit does not determine (by name), with the value
        it got and why.
    """

    beta_coeffs: tuple[float, ...]
    per_step_us: float
    constant_split: str
    fixed: dict[str, str] = field(default_factory=dict)


def _significant(values: np.ndarray) -> tuple[float, ...]:
    # 12 significant digits: exact enough, and 0.004 s prints as 4000.0.
    return tuple(float(f"{v:.12g}") for v in values.tolist())


def fixed_coefficients(constant_split: str = "per_step") -> dict[str, str]:
    """The BLIS coefficients a trace-only fit does not determine, by name, with
    the value :func:`to_blis_betas` gives them and why.

    Parameters
    ----------
    constant_split : {"per_step", "bundled"}, default="per_step"
        How the per-step constant is spread (:func:`to_blis_betas`).

    Returns
    -------
    fixed : dict of str to str
    """
    if constant_split not in CONSTANT_SPLITS:
        raise ValueError(
            f"constant_split must be one of {CONSTANT_SPLITS}, got {constant_split!r}."
        )
    fixed = {
        "tp_allreduce": "0: its basis is 0 at tp = 1 and proportional to "
        "T_p + T_d at tp > 1, which prefill_kv and the decode pair span",
        "per_moe_layer": "0: n_moe = 0 for dense models",
    }
    if constant_split == "per_step":
        fixed["weights"] = fixed["per_layer"] = (
            "0: only b[2]*T_weight + b[4]*L + b[6] is identifiable; all of it on "
            "b[6] (per_step)"
        )
    else:
        fixed["weights"] = fixed["per_layer"] = fixed["per_step"] = (
            "only b[2]*T_weight + b[4]*L + b[6] is identifiable; split in the "
            "proportions of BLIS's bundled global set"
        )
    return fixed


def to_blis_betas(
    coef,
    model: ModelDescription,
    *,
    time_unit: float = 1.0,
    constant_split: str = "per_step",
) -> TrainedPhysicsBetas:
    """Ten BLIS betas from fitted coefficients of the identifiable features.

    Parameters
    ----------
    coef : array-like of shape (6,)
        Non-negative coefficients of :data:`IDENTIFIABLE_FEATURES` (design
        :func:`identifiable_map`) fitted to durations in the trace's time
        unit: per microsecond of roofline time for the four roofline
        features, per step and per request in the batch for the others.
    model : ModelDescription
        The deployment the design was built for.
    time_unit : float, default=1.0
        Seconds per unit of the trace's times.
    constant_split : {"per_step", "bundled"}, default="per_step"
        Where the per-step constant ``c = b[2]*T_weight + b[4]*L + b[6]``
        goes; one trace identifies only ``c``. ``"per_step"``: all on
        ``b[6]``, ``b[2] = b[4] = 0`` (claims nothing the trace did not show;
        exact for this deployment). ``"bundled"``: ``b[2], b[4], b[6]`` in the
        proportions of BLIS's bundled global set for this deployment
        (:data:`BLIS_BUNDLED_BETAS`: ``g2*T_weight : g4*L : g6``), so that the
        weights term keeps a physical share. Both give BLIS the same step
        times for this model, GPU and tp.

    Returns
    -------
    betas : TrainedPhysicsBetas
        The ten values and what was fixed: ``b[3]`` (TP all-reduce) is 0,
        because its basis is 0 at ``tp = 1`` and at ``tp > 1`` is
        ``T_p + T_d`` times a constant, which ``b[8]`` and the ``b[1], b[9]``
        pair already carry; ``b[7]`` (per MoE layer) is 0 because
        ``n_moe = 0`` for dense models; ``b[2], b[4]`` as ``constant_split``
        says.

    Raises
    ------
    ValueError
        If ``coef`` is not six finite non-negative numbers, ``time_unit`` is
        not positive, or ``constant_split`` is unknown.
    """
    coef = np.asarray(coef, dtype=np.float64)
    if coef.shape != (6,) or not np.all(np.isfinite(coef)) or np.any(coef < 0):
        raise ValueError(
            "coef must hold six finite, non-negative coefficients of "
            f"{IDENTIFIABLE_FEATURES}, got {np.asarray(coef).tolist()!r}."
        )
    if not np.isfinite(time_unit) or time_unit <= 0:
        raise ValueError(f"time_unit must be a positive number, got {time_unit!r}.")
    if constant_split not in CONSTANT_SPLITS:
        raise ValueError(
            f"constant_split must be one of {CONSTANT_SPLITS}, got {constant_split!r}."
        )
    # Every feature is in microseconds or a count: one factor takes durations
    # in the trace's unit to microseconds.
    coef_us = coef * (time_unit * 1e6)
    beta = np.zeros(10)
    beta[list(_IDENTIFIABLE_INDEX)] = coef_us
    per_step = float(coef_us[2])
    fixed = fixed_coefficients(constant_split)
    if constant_split == "bundled":
        g = np.asarray(BLIS_BUNDLED_BETAS)
        weights_us = float(basis_map(model)[2, 0])
        shares = np.array([g[2] * weights_us, g[4] * model.n_layers, g[6]])
        beta[[2, 4, 6]] = (
            per_step * shares / shares.sum() / [weights_us, model.n_layers, 1]
        )
    return TrainedPhysicsBetas(
        beta_coeffs=_significant(beta),
        per_step_us=per_step,
        constant_split=constant_split,
        fixed=fixed,
    )
