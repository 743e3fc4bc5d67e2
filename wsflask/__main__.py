"""``python -m wsflask``: the same command as the ``wsflask`` console script.

It only calls ``cli.main`` and exits with its code; see ``wsflask --help``.
"""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
