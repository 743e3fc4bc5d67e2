"""``python -m wsflask``: the same command as the ``wsflask`` console script (``cli.main``)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
