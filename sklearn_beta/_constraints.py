"""Parameter constraints stricter than scikit-learn's on two points.

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
