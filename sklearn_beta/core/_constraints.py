"""Parameter constraints stricter than scikit-learn's on two points, and the
checks of parameters that functions (not estimators) take.

``Interval(Real, ...)`` accepts ``True`` as 1 and an unbounded interval
accepts ``inf``; for a damping, a tolerance or a count neither is a value a
user means. The functional API validates through the same constraints.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval


class Number(Interval):
    """An :class:`Interval` of finite numbers that refuses booleans."""

    def is_satisfied_by(self, val):
        if isinstance(val, bool | np.bool_):
            return False
        return super().is_satisfied_by(val) and bool(np.isfinite(val))

    def __str__(self):
        text = super().__str__()
        return text if self.type is Integral else "a finite " + text[2:]


class WholeNumber(Number):
    """Integers, and floats with an integer value (``64.0``), in an interval."""

    def __init__(self, left, right, *, closed):
        super().__init__(Real, left, right, closed=closed)

    def is_satisfied_by(self, val):
        return super().is_satisfied_by(val) and float(val).is_integer()

    def __str__(self):
        return super().__str__().replace("float", "whole number")


def count(left: int = 1) -> Number:
    """Integers ``>= left``, booleans refused."""
    return Number(Integral, left, None, closed="left")


def check_chunk_size(chunk_size) -> int:
    """Return ``chunk_size`` as an int, or raise if it is not a positive integer."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral | float):
        raise TypeError(
            f"chunk_size must be a positive integer, got {chunk_size!r} "
            f"of type {type(chunk_size).__name__}."
        )
    if chunk_size < 1:
        raise ValueError(
            f"chunk_size must be positive, got {chunk_size!r}: it is the prefill "
            "chunk size in tokens, a positive integer."
        )
    if isinstance(chunk_size, float) and not chunk_size.is_integer():
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    return int(chunk_size)


def check_option(value, options: tuple[str, ...], name: str) -> str:
    """Return ``value`` if it is one of ``options``, else raise ValueError."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}.")
    return value
