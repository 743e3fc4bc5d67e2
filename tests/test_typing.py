"""The wheel ships ``py.typed``, and a user's app type-checks against the installed package.

The wheel is built from a copy of the sources, installed into a fresh venv (no system site
packages) with the same gevent and greenlet as this one, and ``mypy --strict`` checks
``tests/type_check/`` from a temporary directory, so only the INSTALLED package can be found.
A planted mistake (``ws.send(1)``) must then fail, naming its line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPE_CHECK = ROOT / "tests" / "type_check"
MISTAKE = "    ws.send(1)  # planted: send takes str | bytes\n"


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _build_isolation_flag() -> list[str]:
    """Build with this venv's setuptools when it can (offline, fast), else in isolation.

    The SPDX ``license = "MIT"`` needs setuptools>=77, which also builds wheels by itself.
    """
    try:
        major = int(metadata.version("setuptools").split(".")[0])
    except metadata.PackageNotFoundError:
        return []
    return ["--no-build-isolation"] if major >= 77 else []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wsflask wheel, built from a copy of the tree (the work tree gets no build/)."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(
        ROOT / "wsflask", source / "wsflask", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            *_build_isolation_flag(),
            str(source),
            "-w",
            str(out),
        ],
        source,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("wsflask-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv holding the wheel and this venv's gevent/greenlet; returns its python."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False, system_site_packages=False)
    python = env_dir / "bin" / "python"
    pins = [f"{name}=={metadata.version(name)}" for name in ("gevent", "greenlet")]
    done = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(wheel), *pins],
        env_dir,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def _mypy(python: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``workdir``'s copy of type_check/, seeing only ``python``'s
    site-packages (no config file, so the repo's settings cannot leak in)."""
    return _run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            os.devnull,
            "--python-executable",
            str(python),
            "--cache-dir",
            str(workdir / ".cache"),
            "type_check",
        ],
        workdir,
    )


def test_wheel_ships_py_typed(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "wsflask/py.typed" in names
    assert "wsflask/protocol/__init__.py" in names  # a subpackage too: the wheel is whole


def test_user_app_passes_mypy_strict_against_the_installed_wheel(
    installed: Path, tmp_path: Path
) -> None:
    shutil.copytree(TYPE_CHECK, tmp_path / "type_check")
    done = _mypy(installed, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def test_a_planted_mistake_fails_mypy_naming_its_line(installed: Path, tmp_path: Path) -> None:
    shutil.copytree(TYPE_CHECK, tmp_path / "type_check")
    app = tmp_path / "type_check" / "app_typing.py"
    lines = app.read_text().splitlines(keepends=True)
    anchor = lines.index("def echo(ws: WebSocket) -> None:\n")
    lines.insert(anchor + 1, MISTAKE)
    app.write_text("".join(lines))
    done = _mypy(installed, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, done.stdout
    assert errors[0].startswith(
        f"type_check/app_typing.py:{anchor + 2}: error: Argument 1 to "
        '"send" of "WebSocket" has incompatible type "int"'
    ), errors[0]
