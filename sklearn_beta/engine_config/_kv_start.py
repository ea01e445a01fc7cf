"""The start of a schedule fit under a binding KV cache (docs/schedule.md).

Under a KV bound the schedule fit's basin is a few percent wide in the
betas: a replay whose timing is off admits and preempts other requests, and
the schedule never resynchronises. Neither phase-exposure start reaches it
on a saturated client-side trace (measured on a vLLM-sized trace: beta1
+340 to +600 %). Before the queue first forms, nothing has waited, so no KV
limit (nor ``max_num_seqs``) has bound: the requests done by then ran as on
an engine without a KV bound, and a fit of them with the bound switched off
does not depend on the cache's size. Its start is read from the decode
windows (:func:`decode_window_starts`), which need neither the schedule nor
the offsets.
"""

from __future__ import annotations

import numpy as np

from ..core._nnls import nnls_fit

__all__ = ["decode_window_starts", "unbound_head"]

#: The queue that marks a binding limit: more sent requests without a first
#: token than this share of the most running at once (at least
#: HEAD_MIN_QUEUE); fewer are requests in prefill or waiting for a step
#: boundary.
HEAD_QUEUE_SHARE = 0.1
HEAD_MIN_QUEUE = 2
#: Fewer requests done before the queue forms identify no three betas.
HEAD_MIN_REQUESTS = 50
#: The shares of the decode windows' ``beta0`` the head's fits start from
#: (:func:`decode_window_starts`), in this order.
HEAD_BETA0_SHARES = (1.0, 0.85, 0.7, 0.55)


def decode_window_starts(first, last, steps, prompt, rows=None) -> list:
    """Betas ``(beta0, beta1, beta2)`` from each request's decode window,
    with ``beta0`` at the shares :data:`HEAD_BETA0_SHARES` of its fit.

    Between a request's first and last token the engine ran exactly its
    ``steps`` decode steps; they prefilled the prompts of the requests whose
    first token fell in the window (a prompt's tokens are done by its first
    token) and decoded one token per running request per step, each
    request's tokens spread evenly over its own window. The window's length
    is then linear in the betas with known counts, and both reporting
    offsets cancel but for their gap. Non-negative least squares, each
    column scaled to its largest value. With every request decoding as many
    steps, ``beta0`` is the intercept, extrapolated to an empty batch: it
    came out 18-36 % high on vLLM-sized traces, where the fit from +20 %
    ran off and from +10 % did not, so the lower shares are fitted too,
    the other two betas refitted to the windows.

    Parameters
    ----------
    first, last : ndarray of shape (n_requests,)
        First and last token times.
    steps : ndarray of shape (n_requests,)
        Decode steps between them.
    prompt : ndarray of shape (n_requests,)
        Prompt tokens.
    rows : ndarray of bool of shape (n_requests,) or None, default=None
        The windows fitted (None: all); every request counts in them.

    Returns
    -------
    starts : list of ndarray of shape (3,)
        One per share, the fit's own first.
    """
    design, span = _decode_window_design(first, last, steps, prompt)
    if rows is not None:
        design, span = design[rows], span[rows]
    scale = np.maximum(design.max(axis=0), np.finfo(float).tiny)
    unit = np.ones(span.size)
    beta = nnls_fit(design / scale, span, unit) / scale
    starts = []
    for share in HEAD_BETA0_SHARES:  # a loop over a few shares, not requests
        beta0 = share * beta[0]
        rest = nnls_fit(design[:, 1:] / scale[1:], span - beta0 * design[:, 0], unit)
        starts.append(np.r_[beta0, rest / scale[1:]])
    return starts


def _decode_window_design(first, last, steps, prompt) -> tuple:
    """Each decode window's steps, prefilled and decoded tokens, and its
    length (:func:`decode_window_starts`)."""
    steps = np.asarray(steps, dtype=float)
    order = np.argsort(first, kind="stable")
    done = np.r_[0.0, np.cumsum(np.asarray(prompt, dtype=float)[order])]
    at = first[order]
    prefill = done[np.searchsorted(at, last, "right")]
    prefill = prefill - done[np.searchsorted(at, first, "right")]
    # the decoded tokens by time t: piecewise linear, its slope each
    # running request's token rate
    rate = steps / np.maximum(last - first, np.finfo(float).tiny)
    times, slope = np.r_[first, last], np.r_[rate, -rate]
    by_time = np.argsort(times, kind="stable")
    times, slope = times[by_time], np.cumsum(slope[by_time])
    tokens = np.r_[0.0, np.cumsum(slope[:-1] * np.diff(times))]
    decoded = np.interp(last, times, tokens) - np.interp(first, times, tokens)
    return np.column_stack([steps, prefill, decoded]), last - first


def unbound_head(arrival, first, last) -> np.ndarray | None:
    """The requests done before the queue first forms, or None when fewer
    than :data:`HEAD_MIN_REQUESTS`.

    A request queues from its arrival to its first token (its prefill
    included); the queue forms when more than :data:`HEAD_QUEUE_SHARE` of
    the most running at once (at least :data:`HEAD_MIN_QUEUE`) are in it.
    The cut reads the counts only at the arrivals, where the queue grows.

    Parameters
    ----------
    arrival, first, last : ndarray of shape (n_requests,)
        Arrival (send), first and last token times, one engine.

    Returns
    -------
    head : ndarray of bool of shape (n_requests,) or None
    """
    at = np.sort(arrival)
    firsts, lasts = np.sort(first), np.sort(last)
    sent = np.arange(1, at.size + 1)
    queued = sent - np.searchsorted(firsts, at, "right")
    running = np.searchsorted(firsts, firsts, "right")
    running = running - np.searchsorted(lasts, firsts, "right")
    limit = max(HEAD_MIN_QUEUE, HEAD_QUEUE_SHARE * running.max(initial=0))
    forms = queued > limit
    cut = at[np.argmax(forms)] if forms.any() else np.inf
    head = last < cut
    return head if np.count_nonzero(head) >= HEAD_MIN_REQUESTS else None
