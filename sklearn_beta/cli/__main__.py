"""``python -m sklearn_beta.cli``: the ``sklearn-beta`` command."""

import sys

from ._main import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
