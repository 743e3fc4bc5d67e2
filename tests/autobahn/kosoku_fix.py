"""The kosoku 0.1.0 normalisation of ARCHITECTURE.md §5, applied to the installed package.

kosoku 0.1.0 hands some messages of the compression cases (12.*, 13.*) to the case code as
``str`` instead of bytes, so the case's SHA-1 check raises "Strings must be encoded before
hashing". ``normalise()`` patches ``onMessage`` in the installed ``kosoku/cases/case12_x_x.py``:
text ``str`` -> UTF-8 bytes, binary ``str`` -> latin-1 bytes, before hashing (a no-op when
kosoku passes bytes). It is idempotent (a marker line), writes atomically, and does nothing for
other kosoku versions or when ``onMessage`` has another shape; it returns a line saying which.

``tests/autobahn/run.py`` calls it before every run.
By hand: ``.venv/bin/python tests/autobahn/kosoku_fix.py``.
What it does not do: it touches no other file, and it never imports kosoku.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

__all__ = ["case_file", "normalise"]

AFFECTED_VERSIONS = ("0.1.0",)
MARKER = "# wsflask: kosoku 0.1.0 normalisation (ARCHITECTURE.md section 5)"
BUGGY = "def onMessage(self, msg, binary):\n   m = hashlib.sha1()\n   m.update(msg)\n"
FIXED = (
    "def onMessage(self, msg, binary):\n"
    f"   {MARKER}: hash bytes, never str\n"
    "   if isinstance(msg, str):\n"
    "      msg = msg.encode('latin-1' if binary else 'utf-8')\n"
    "   m = hashlib.sha1()\n"
    "   m.update(msg)\n"
)


def case_file() -> Path:
    """The installed ``kosoku/cases/case12_x_x.py`` (found without importing kosoku)."""
    spec = importlib.util.find_spec("kosoku")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("kosoku is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "cases" / "case12_x_x.py"


def normalise(path: Path, version: str) -> str:
    """Apply the §5 normalisation to ``path`` once; return what was done, for the output.

    No-op (and says why) when it is already there, when kosoku is not an affected version,
    or when ``onMessage`` no longer has the shape it patches.
    """
    text = path.read_text(encoding="utf-8")
    if MARKER in text:
        return f"kosoku {version}: compression case normalisation already applied ({path})"
    if version not in AFFECTED_VERSIONS:
        return f"kosoku {version}: no normalisation needed (only {AFFECTED_VERSIONS} hash str)"
    if text.count(BUGGY) != 1:
        return (
            f"kosoku {version}: onMessage in {path} has changed shape; normalisation "
            "NOT applied (12.*/13.* may fail with 'Strings must be encoded')"
        )
    tmp = path.with_suffix(".py.wsflask-tmp")
    tmp.write_text(text.replace(BUGGY, FIXED), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a concurrent kosoku sees the old or the new file
    return (
        f"kosoku {version}: normalised {path}: onMessage encodes text str as UTF-8 and "
        "binary str as latin-1 before hashing (ARCHITECTURE.md section 5)"
    )


if __name__ == "__main__":
    print(normalise(case_file(), importlib.metadata.version("kosoku")))
