"""The dependency rules of STYLE.md, checked on the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wsflask"
FORBIDDEN_IN_PROTOCOL = {"gevent", "socket", "select", "selectors", "time", "threading", "asyncio"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


PROTOCOL_MODULES = sorted((PACKAGE / "protocol").glob("*.py"))


@pytest.mark.parametrize("path", PROTOCOL_MODULES, ids=lambda p: p.name)
def test_protocol_does_no_io(path: Path) -> None:
    bad = _imported_roots(path) & FORBIDDEN_IN_PROTOCOL
    assert not bad, f"{path.name} imports {sorted(bad)}: wsflask/protocol is sans-I/O"


def test_protocol_modules_found() -> None:
    names = {p.name for p in PROTOCOL_MODULES}
    assert {"connection.py", "frames.py", "handshake.py", "mask.py", "utf8.py"} <= names


def test_nothing_imports_locust_or_monkey_patches() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path.name != "locust.py":
            assert "locust" not in _imported_roots(path), path
        assert "patch_all(" not in text or path.name == "cli.py", f"{path} monkey-patches"
