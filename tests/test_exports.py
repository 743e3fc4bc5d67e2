"""The public surface: ``wsflask.__init__`` re-exports exactly ``__all__``, one per line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import wsflask

INIT = Path(wsflask.__file__)


def reexported_names() -> list[str]:
    tree = ast.parse(INIT.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            assert len(node.names) == 1, f"one re-export per line (line {node.lineno})"
            alias = node.names[0]
            assert alias.asname == alias.name, f"use `import X as X` (line {node.lineno})"
            names.append(alias.name)
    return names


def test_all_matches_the_reexports() -> None:
    names = reexported_names()
    assert sorted(names) == sorted(wsflask.__all__)
    assert len(set(wsflask.__all__)) == len(wsflask.__all__)
    assert list(wsflask.__all__) == sorted(wsflask.__all__)


def test_every_exported_name_exists() -> None:
    for name in wsflask.__all__:
        assert getattr(wsflask, name) is not None


def test_the_user_facing_api_is_exported() -> None:
    for name in (
        "App",
        "Route",
        "WebSocket",
        "Config",
        "Reject",
        "SetupError",
        "ConnectionClosed",
        "Rooms",
        "BroadcastResult",
        "TestClient",
        "connect",
        "Request",
        "HandshakeError",
    ):
        assert name in wsflask.__all__


def test_internals_users_reach_through_the_app_are_not_exported() -> None:
    # app.metrics and app.heartbeat are built by App; users never construct them
    for name in ("Heartbeat", "Metrics"):
        assert name not in wsflask.__all__
        assert not hasattr(wsflask, name)


def test_examples_import_only_the_public_surface() -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    for path in examples.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wsflask."):
                assert node.module in ("wsflask.logs", "wsflask.wsgi"), (
                    f"{path.name}:{node.lineno} imports from {node.module}: use `from wsflask`"
                )


def test_import_has_no_side_effects() -> None:
    code = (
        "import sys, socket\n"
        "original = socket.socket\n"
        "import wsflask\n"
        "assert socket.socket is original, 'monkey-patched'\n"
        "from gevent import monkey\n"
        "assert not monkey.is_module_patched('socket')\n"
        "for name in ('locust', 'redis', 'wsflask.locust', 'wsflask.backplane.redis'):\n"
        "    assert name not in sys.modules, name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
