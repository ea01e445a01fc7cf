"""Warnings that point at the user's line, whatever the call depth.

A warning raised deep inside a fit should name the line of the user's code
that called ``fit`` (or ``cross_val_score``, or a pipeline), not a line of
this package or of scikit-learn. Counting frames by hand (``stacklevel=6``)
breaks whenever a call path gains a level; :func:`warn` walks the stack
instead and points at the first frame outside the packages below.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import joblib
import sklearn

#: Frames in these folders are skipped: this package, scikit-learn (its
#: pipelines and model selection call our fits) and joblib (which runs a
#: cross-validation's fits for it), and the standard library's contextlib
#: (context managers around a fit).
_INTERNAL = (
    str(Path(__file__).resolve().parents[1]),
    str(Path(sklearn.__file__).resolve().parent),
    str(Path(joblib.__file__).resolve().parent),
    str(Path(warnings.__file__).resolve().parent / "contextlib.py"),
)


def _internal(filename: str) -> bool:
    return os.path.realpath(filename).startswith(_INTERNAL)


def caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside the package.

    Counted for a :func:`warnings.warn` made by the function that calls this
    one: level 1 is that function, level 2 its caller, and so on.
    """
    frame = sys._getframe(2)
    level = 2
    while frame is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` attributed to the user's code that led here."""
    warnings.warn(message, category, stacklevel=caller_stacklevel())
