"""The dependency rules of STYLE.md, checked on the source with ``ast``.

Every import counts: module level, inside functions and under ``if TYPE_CHECKING:``.
- the import graph of ``wsflask/`` has no cycle;
- outside ``protocol/``, only ``websocket.py`` drives a protocol ``Connection``
  (``receive_data``/``data_to_send``);
- ``protocol/`` is sans-I/O: standard library only, no I/O, clock or concurrency module, and
  ``os`` only for ``os.urandom``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wsflask"
PROTOCOL = PACKAGE / "protocol"
MODULES = sorted(PACKAGE.rglob("*.py"))
PROTOCOL_MODULES = sorted(PROTOCOL.glob("*.py"))
#: I/O, clocks, concurrency and process control: none belongs in the sans-I/O core.
FORBIDDEN_IN_PROTOCOL = {
    "asyncio", "gevent", "greenlet", "http", "io", "logging", "multiprocessing", "select",
    "selectors", "signal", "socket", "socketserver", "ssl", "subprocess", "threading", "time",
}  # fmt: skip
DRIVER_CALLS = {"receive_data", "data_to_send"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name an ``ImportFrom`` in module ``name`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name imported from a package that is
    itself a submodule counts as that submodule; parent packages are not edges)."""
    paths = {_module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, path.name == "__init__.py", node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    found.add(submodule if submodule in paths else source)
        graph[name] = {other for other in found if other in paths and other != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for other in sorted(graph[name]):
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            component: list[str] = []
            while not component or component[-1] != name:
                component.append(stack.pop())
            if len(component) > 1:
                components.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(components)


def test_the_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """On a planted package: TYPE_CHECKING, function-level, relative and absolute imports."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "from .a import A\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "b.py": "def f():\n    from . import a\n    return a\n",
        "c.py": "import pkg.sub.d\nfrom .sub import d\n",
        "sub/__init__.py": "",
        "sub/d.py": "from ..c import x\n",
        "e.py": "from .sub import d\n",
    }
    for name, text in sources.items():
        (pkg / name).write_text(text)
    graph = _graph(pkg)
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.b"}  # under TYPE_CHECKING
    assert graph["pkg.b"] == {"pkg.a"}  # inside a function, "from . import a"
    assert graph["pkg.c"] == {"pkg.sub.d"}
    assert graph["pkg.sub.d"] == {"pkg.c"}  # two levels up
    assert _cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub.d"]]


def test_the_graph_covers_the_package() -> None:
    graph = _graph()
    assert {"wsflask.websocket", "wsflask.protocol.connection", "wsflask.backplane"} <= set(graph)
    assert "wsflask.protocol" in graph["wsflask.websocket"]


def test_import_graph_has_no_cycle() -> None:
    assert _cycles(_graph()) == []


def _driver_calls(path: Path) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in DRIVER_CALLS
    ]


def _outside_protocol() -> list[object]:
    params: list[object] = []
    for path in MODULES:
        if PROTOCOL in path.parents or path.name == "websocket.py":
            continue
        params.append(pytest.param(path, id=str(path.relative_to(PACKAGE))))
    return params


@pytest.mark.parametrize("path", _outside_protocol())
def test_only_websocket_py_drives_the_protocol_connection(path: Path) -> None:
    lines = _driver_calls(path)
    assert not lines, f"{path.name} calls receive_data/data_to_send at lines {lines}"


def test_websocket_py_is_the_driver() -> None:
    assert len(_driver_calls(PACKAGE / "websocket.py")) >= 2


@pytest.mark.parametrize("path", PROTOCOL_MODULES, ids=lambda p: p.name)
def test_protocol_imports_only_the_standard_library_and_itself(path: Path) -> None:
    outside: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            outside.update(a.name for a in node.names if a.name.split(".")[0] != "__future__")
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            outside.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and not _resolve(
            _module_name(path), path.name == "__init__.py", node
        ).startswith("wsflask.protocol"):
            outside.add("." * node.level + (node.module or ""))
    roots = {name.split(".")[0] for name in outside} - {"__future__"}
    not_stdlib = {root for root in roots if root not in sys.stdlib_module_names}
    assert not not_stdlib, f"{path.name} imports {sorted(not_stdlib)} from outside protocol/"
    bad = roots & FORBIDDEN_IN_PROTOCOL
    assert not bad, f"{path.name} imports {sorted(bad)}: wsflask/protocol is sans-I/O"


#: ``os`` in protocol/: random masks, and one read of WSFLASK_NO_EXTENSIONS at import
#: (speedups.py) to pick the compiled or the pure-Python twin. Nothing else.
OS_ALLOWED = {"mask.py": {"urandom"}, "speedups.py": {"environ"}}


@pytest.mark.parametrize("path", PROTOCOL_MODULES, ids=lambda p: p.name)
def test_protocol_uses_os_only_for_urandom(path: Path) -> None:
    allowed = OS_ALLOWED.get(path.name, {"urandom"})
    uses = {
        node.attr
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    }
    assert uses <= allowed, f"{path.name} uses os.{sorted(uses - allowed)}"


def test_protocol_modules_found() -> None:
    names = {p.name for p in PROTOCOL_MODULES}
    assert {"connection.py", "frames.py", "handshake.py", "mask.py", "utf8.py"} <= names


def test_nothing_imports_locust_or_monkey_patches() -> None:
    for path in MODULES:
        text = path.read_text()
        if path.name != "locust.py":
            assert not any(n.split(".")[0] == "locust" for n in _all_imports(path)), path
        assert "patch_all(" not in text or path.name == "cli.py", f"{path} monkey-patches"


def _all_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names
