"""Can the trace separate beta0, beta1 and beta2? (docs/method.md section 8)

The regression ``l_i ~ beta0 N_i + beta1 A_pf_i + beta2 A_dec_i`` only
determines a coefficient if its column of the design varies independently of
the others. Three trace shapes break this in ways worth naming:

* one phase type only: the other token column is zero;
* no two phases overlap in time: each phase is exposed only to its own
  tokens, so a decode's design row is ``[D, 0, D]`` (only ``beta0 + beta2``
  shows) and a prefill's is ``[ceil(P/C), P, 0]`` (``beta0`` and ``beta1``
  differ only through the partial last chunk);
* the decode pressure is the same wherever the engine is busy: then
  ``A_dec_i = k N_i`` for every phase and ``beta2 k`` is indistinguishable
  from ``beta0``.

Anything else that makes the design (nearly) rank-deficient is caught by
its condition number. NNLS then still returns an answer, usually with a
coefficient at zero; the warning says that zero is not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core._grid import Timeline, count_active
from ..core._nnls import BLOCK_ROWS, single_threaded_blas, weighted_rows
from ..core._warnings import warn
from ..exceptions import IdentifiabilityWarning

BETA_NAMES = ("beta0", "beta1", "beta2")
#: Condition number of the column-normalised design above which the fit is
#: reported as not identified. Healthy traces sit around 10-1e3; exact
#: collinearity gives 1e13 and more.
CONDITION_LIMIT = 1e6
#: A coefficient whose share of the predicted durations is below this is
#: reported at the zero bound (damped iterations only approach zero).
ZERO_BOUND_SHARE = 1e-6


def condition_number(
    design: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """2-norm condition number of the weighted design with unit-norm columns.

    Column scaling removes the units (steps vs tokens), so what is left
    measures collinearity only; a zero column gives ``inf``.
    """
    if design.shape[0] < design.shape[1]:
        return float("inf")
    return _condition_of_r(design_r(design, sample_weight))


def _condition_of_r(r: np.ndarray) -> float:
    norms = np.sqrt(np.einsum("ij,ij->j", r, r))
    if np.any(norms == 0):
        return float("inf")
    singular = np.linalg.svd(r / norms, compute_uv=False)
    if singular[-1] <= 0:
        return float("inf")
    return float(singular[0] / singular[-1])


def collinear_coefficients(
    design: np.ndarray, sample_weight: np.ndarray | None = None
) -> tuple[str, ...]:
    """Coefficients taking part in the design's weakest direction."""
    return _collinear_of_r(design_r(design, sample_weight))


def _collinear_of_r(r: np.ndarray, names=BETA_NAMES) -> tuple[str, ...]:
    norms = np.sqrt(np.einsum("ij,ij->j", r, r))
    scaled = r / np.where(norms > 0, norms, 1.0)
    weakest = np.linalg.svd(scaled)[2][-1]
    return tuple(n for n, v in zip(names, weakest, strict=True) if abs(v) > 0.1)


def design_r(design: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """The R factor of ``sqrt(w) * design``, shape (k, k): ``X' W X = R' R``.

    Singular values, right singular vectors and column norms of the design
    are those of R, so the diagnostics read R instead of the tall design.
    Householder QR of the running R stacked on each block of rows (the R of
    stacked R factors is that of the stacked blocks): one pass, stable for
    any condition number, and no temporary the size of the design.
    """
    design = np.asarray(design, dtype=np.float64)
    n, k = design.shape
    root_w = None
    if sample_weight is not None:
        root_w = np.sqrt(np.asarray(sample_weight, dtype=np.float64))
    stacked = np.zeros((min(n, BLOCK_ROWS) + k, k))
    r = np.zeros((0, k))
    with single_threaded_blas():
        for start in range(0, n, BLOCK_ROWS):
            m = weighted_rows(design, root_w, start, stacked[k:], None).shape[0]
            stacked[k - r.shape[0] : k] = r
            r = np.linalg.qr(stacked[k - r.shape[0] : k + m], mode="r")
    if r.shape[0] < k:  # fewer rows than columns
        r = np.vstack([r, np.zeros((k - r.shape[0], k))])
    return r


@dataclass(frozen=True)
class TraceShape:
    """The few counts :func:`trace_findings` judges a trace by.

    Each is a sum, maximum or minimum over phases or busy segments, so the
    shapes of disjoint sets of instances combine (:meth:`combine`) into the
    shape of their union: a partitioned trace is judged like the whole.
    """

    n_prefill: int
    n_decode: int
    n_busy: int
    max_active: float
    min_p_dec: float
    max_p_dec: float

    def combine(self, other: TraceShape) -> TraceShape:
        return TraceShape(
            self.n_prefill + other.n_prefill,
            self.n_decode + other.n_decode,
            self.n_busy + other.n_busy,
            max(self.max_active, other.max_active),
            min(self.min_p_dec, other.min_p_dec),
            max(self.max_p_dec, other.max_p_dec),
        )


def trace_shape(timeline: Timeline) -> TraceShape:
    """Phase counts and the busy segments' extreme pressures of ``timeline``."""
    n_prefill = int(np.count_nonzero(timeline.is_prefill))
    tg = timeline.trace_grid
    if timeline.budget_excess is None:  # p_pf_full is C times the prefills
        active = timeline.p_pf_full / timeline.chunk_size
        active += timeline.p_dec
    else:
        active = count_active(tg)
    busy = (tg.seg_len > 0) & (active > 0)
    if not busy.any():
        return TraceShape(
            n_prefill, timeline.n_phases - n_prefill, 0, 0.0, np.inf, -np.inf
        )
    p_dec = timeline.p_dec[busy]
    return TraceShape(
        n_prefill,
        timeline.n_phases - n_prefill,
        int(np.count_nonzero(busy)),
        float(active[busy].max()),
        float(p_dec.min()),
        float(p_dec.max()),
    )


def trace_findings(
    timeline: Timeline | TraceShape,
) -> list[tuple[tuple[str, ...], str]]:
    """The named degenerate trace shapes present in ``timeline``.

    Returns ``(coefficients, reason)`` pairs.
    """
    shape = timeline if isinstance(timeline, TraceShape) else trace_shape(timeline)
    findings = []
    if shape.n_prefill == 0:
        findings.append(
            (
                ("beta1",),
                "the trace has no prefill phase, so nothing is exposed to the "
                "per-prefill-token cost",
            )
        )
    if shape.n_decode == 0:
        findings.append(
            (
                ("beta2",),
                "the trace has no decode phase, so nothing is exposed to the "
                "per-decode-token cost",
            )
        )
    if shape.n_busy == 0:
        return findings
    if shape.max_active <= 1:
        findings.append(
            (
                BETA_NAMES,
                "no two phases overlap in time, so every phase is exposed only "
                "to its own tokens: decodes show only beta0 + beta2, and "
                "prefills separate beta0 from beta1 only through their partial "
                "last chunk",
            )
        )
    elif shape.n_decode and shape.min_p_dec == shape.max_p_dec:
        findings.append(
            (
                ("beta0", "beta2"),
                "the decode pressure is the same "
                f"({shape.min_p_dec:g} running decodes) wherever the "
                "engine is busy, so beta2 times that pressure cannot be told "
                "apart from beta0",
            )
        )
    return findings


def identifiability_diagnostics(
    design: np.ndarray,
    duration: np.ndarray,
    beta: np.ndarray,
    timeline: Timeline | None = None,
    sample_weight: np.ndarray | None = None,
    *,
    estimator: str = "the estimator",
    extra_findings: list | tuple = (),
    names=BETA_NAMES,
) -> dict:
    """Warn about coefficients the trace cannot identify; return diagnostics.

    Parameters
    ----------
    design : ndarray of shape (n_phases, 3)
        The fitted design. Only its Gram matrix enters, so the R factor of
        its QR decomposition gives the same diagnostics.
    duration : ndarray of shape (n_phases,)
        Observed durations; only their norm enters.
    beta : ndarray of shape (3,)
        Fitted coefficients.
    timeline : Timeline, TraceShape or None
        The trace (or its :class:`TraceShape`), for the named checks; without
        it only the design is used.
    sample_weight : ndarray or None
        Weights of the fit.
    estimator : str
        Name used in the warning.
    extra_findings : list of (coefficients, reason)
        Further findings of the caller, warned about like the trace's own
        (e.g. :func:`sklearn_beta._what_if.noise_limited_findings`).
    names : sequence of str, default=BETA_NAMES
        Names of the design's coefficients: a step model's features. The
        trace's named checks speak of the published three, so they run only
        under the default names; other models are judged by their design.

    Returns
    -------
    diagnostics : dict
        ``condition_number`` (float), ``not_identified`` and ``at_zero_bound``
        (lists of coefficient names).

    Warns
    -----
    IdentifiabilityWarning
        Once per reason a coefficient is not identified.
    """
    names = tuple(names)
    published = names == BETA_NAMES
    findings = trace_findings(timeline) if timeline is not None and published else []
    # The caller's findings about coefficients the trace's shape already
    # names would only say the same again.
    shape_named = {c for coefs, _ in findings for c in coefs}
    findings += [f for f in extra_findings if not set(f[0]) <= shape_named]
    named = {c for coefs, _ in findings for c in coefs}
    r = design_r(design, sample_weight)
    zero = np.einsum("ij,ij->j", r, r) == 0
    for name in np.asarray(names)[zero]:
        if name not in named:
            findings.append(
                ((str(name),), "its design column is zero: no phase is exposed to it")
            )
    cond = float("inf") if design.shape[0] < design.shape[1] else _condition_of_r(r)
    if not findings and cond > CONDITION_LIMIT:
        findings.append(
            (
                _collinear_of_r(r, names),
                "their columns of the design are nearly collinear (condition "
                f"number {cond:.3g} > {CONDITION_LIMIT:g})",
            )
        )
    for coefs, reason in findings:
        warn(
            f"{estimator}: {_join(coefs)} "
            f"{'is' if len(coefs) == 1 else 'are'} not identified by this trace: "
            f"{reason}. The fitted value is one of many that fit equally well; "
            "use a trace with concurrent prefills and decodes under varying load.",
            IdentifiabilityWarning,
        )
    not_identified = [n for n in names if any(n in c for c, _ in findings)]
    return {
        "condition_number": cond,
        "not_identified": not_identified,
        "at_zero_bound": at_zero_bound(
            design, duration, beta, r if sample_weight is None else None, names
        ),
    }


def at_zero_bound(
    design: np.ndarray,
    duration: np.ndarray,
    beta: np.ndarray,
    r: np.ndarray | None = None,
    names=BETA_NAMES,
) -> list:
    """Coefficients at zero, or contributing a negligible share of the fit.

    ``r``, the R factor of the (unweighted) design when known, gives its
    column norms.
    """
    columns = design if r is None else r
    contribution = np.abs(beta) * np.sqrt(np.einsum("ij,ij->j", columns, columns))
    total = float(np.sqrt(np.einsum("i,i->", duration, duration)))
    scale = max(total, np.finfo(float).tiny)
    return [
        n
        for n, b, c in zip(names, beta, contribution, strict=True)
        if b <= 0 or c <= ZERO_BOUND_SHARE * scale
    ]


def _join(names) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
