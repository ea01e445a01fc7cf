"""The ``sklearn-beta`` command: from a trace file to step-time coefficients.

The entry point is :func:`main` (``[project.scripts]`` in pyproject.toml and
``python -m sklearn_beta.cli``); the code is in :mod:`sklearn_beta.cli._main`
and the ``cli._*`` modules it imports.
"""

from ._main import main

__all__ = ["main"]
