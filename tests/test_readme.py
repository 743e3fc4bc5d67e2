"""The README works as written: its commands run, its Python type-checks, its links resolve.

Every line of a ```sh block is a command, matched against ``COMMANDS``: quick ones run and
must exit 0 (with their output checked); servers start, must answer HTTP on their port, and
stop on SIGTERM; the install lines are checked against pyproject's extras and ``make test``
against the Makefile (it is this suite). A command no rule matches fails the test, so a new
README command needs a rule here. Python blocks are checked with ``mypy --strict`` (the
package from this source tree, through ``MYPYPATH``; tests/test_typing.py checks the built
wheel), and a planted mistake must fail. Relative links of the three READMEs must resolve.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from conftest import RedisServer
from helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, ROOT / "tests" / "autobahn" / "README.md", ROOT / "loadtests" / "README.md"]
BIN = Path(sys.executable).parent
STARTUP = 90.0  # seconds for a server to answer (make checks its stamp first)


def blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks of ``lang`` (top-level or indented in a list)."""
    found = re.findall(rf"^( *)```{lang}\n(.*?)^\1```$", text, flags=re.M | re.S)
    return [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in found]


def commands(text: str) -> list[str]:
    """Each command of the ```sh blocks: continuation lines joined, comments removed."""
    out = []
    for body in blocks(text, "sh"):
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s+)#\s.*$", "", line).strip()
            if line:
                out.append(line)
    return out


# -- running commands ---------------------------------------------------------------------------


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSFLASK_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # python, wsflask, gunicorn: ours
    env.pop("PYTHONPATH", None)
    return env


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def http_get(url: str) -> tuple[int, str] | None:
    """The status and body of ``url``, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError):
        return None


def run_quick(command: str, cwd: Path) -> str:
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


def run_server(command: str, cwd: Path, port: int, path: str, marker: str, log: Path) -> None:
    """Start ``command``; it must answer ``path`` on ``port`` (body holding ``marker``),
    then stop on SIGTERM to its process group and free the port."""
    import time

    assert port_free(port), f"port {port} is busy: stop what listens there to run {command!r}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP
        answer = None  # a 503 while a backplane connects: ask again
        while (answer := http_get(f"http://127.0.0.1:{port}{path}")) is None or answer[0] != 200:
            assert proc.poll() is None, f"{command!r} exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{command!r}: {answer}\n{log.read_text()}"
            time.sleep(0.1)
        assert marker in answer[1], (command, answer[1][:200])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise
    deadline = time.monotonic() + 10
    while not port_free(port):
        assert time.monotonic() < deadline, f"{command!r} left port {port} open"
        time.sleep(0.05)


@dataclass
class Workspace:
    """Where the commands run: a temp dir holding the README's app.py and ``examples``."""

    path: Path
    tmp: Path


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    for body in blocks(README.read_text(), "python"):
        first = body.splitlines()[0]
        if re.fullmatch(r"# \w+\.py", first):
            (work / first[2:]).write_text(body)
    return Workspace(work, tmp_path)


def extras() -> set[str]:
    return set(metadata.metadata("wsflask").get_all("Provides-Extra") or ())


Check = Callable[[str, Workspace], None]


def quick(expect: str | None = None) -> Check:
    def check(command: str, work: Workspace) -> None:
        out = run_quick(command, work.path)
        if expect is not None:
            assert re.search(expect, out), f"{command!r} printed {out[:300]!r}"

    return check


def after(first: str, expect: str) -> Check:
    """Run the README's previous command ``first`` (its file), then this one."""

    def check(command: str, work: Workspace) -> None:
        run_quick(first, work.path)
        quick(expect)(command, work)

    return check


def server(port: int, path: str, marker: str, *, root: bool = False) -> Check:
    def check(command: str, work: Workspace) -> None:
        cwd = ROOT if root else work.path
        run_server(command, cwd, port, path, marker, work.tmp / f"server-{port}.log")

    return check


def install(command: str, work: Workspace) -> None:
    """Not run (it would reinstall this venv): what it names must exist."""
    extra = re.search(r"\[(\w+)\]", command)
    assert extra is None or extra[1] in extras(), command
    assert (ROOT / "pyproject.toml").is_file()


def the_suite(command: str, work: Workspace) -> None:
    """``make test`` is what runs this file: check the target, do not recurse."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: lint typecheck pytest$", makefile, flags=re.M)


def with_redis(check: Check) -> Check:
    def wrapped(command: str, work: Workspace) -> None:
        require_tool("redis-server", "apt-get install -y redis-server")
        redis = RedisServer(work.tmp, port=6379)
        if port_free(6379):
            redis.start()
        else:
            assert redis.ping(), "port 6379 is taken by something that is not Redis"
        try:
            check(command, work)
        finally:
            redis.stop()

    return wrapped


CHAT = "<title>wsflask chat</title>"
#: (pattern of the whole command, how it is checked): every README command needs one
COMMANDS: list[tuple[str, Check]] = [
    (r"pip install -e \.", install),
    (r"pip install -e '\.\[\w+\]'", install),
    (r"make run", server(8080, "/", CHAT, root=True)),
    (r"make test", the_suite),
    (
        r'python -c "import wsflask.protocol as p; print\(p.speedups_active\(\)\)"',
        quick("True|False"),
    ),
    (
        r'WSFLASK_NO_EXTENSIONS=1 python -c "import wsflask.protocol as p; '
        r'print\(p.speedups_active\(\)\)"',
        quick(r"^False$"),
    ),
    (r"python app.py", server(8080, "/", "/wsflask.js")),
    (r"wsflask run app:app", server(8080, "/", "/wsflask.js")),
    (r"wsflask --help", quick(r"frames +decode captured frame bytes")),
    (r"wsflask frames 810548656c6c6f", quick(r"TEXT .*length=5\n.*'Hello'")),
    (r"wsflask config default > wsflask\.toml", quick()),
    (r"wsflask config check wsflask\.toml", after("wsflask config default > wsflask.toml", "OK")),
    (
        r"WSFLASK_PING_INTERVAL=15 wsflask run examples\.chat:app --port 8081",
        server(8081, "/", CHAT),
    ),
    (
        r"WSFLASK_BACKPLANE=redis://127\.0\.0\.1:6379/0 wsflask run examples\.chat:app --workers 2",
        with_redis(server(8080, "/readyz", "ready")),
    ),
    (
        r"gunicorn -k wsflask\.gunicorn\.GeventWorker -b 127\.0\.0\.1:8080 "
        r"examples\.flask_app:flask_app",
        server(8080, "/", "", root=True),
    ),
]


def rule(command: str) -> Check:
    matches = [check for pattern, check in COMMANDS if re.fullmatch(pattern, command)]
    assert len(matches) == 1, f"no rule in tests/test_readme.py for README command {command!r}"
    return matches[0]


def readme_commands() -> Iterator[str]:
    yield from commands(README.read_text())


@pytest.mark.parametrize("command", list(readme_commands()))
def test_every_readme_command_runs_as_written(command: str, workspace: Workspace) -> None:
    rule(command)(command, workspace)


def test_the_set_up_commands_are_shown() -> None:
    shown = commands(README.read_text())
    assert "make run" in shown and "make test" in shown
    first = README.read_text().split("\n## ")[1]
    assert first.startswith("Install"), "the README starts with what users need: install"


def test_every_rule_is_used() -> None:
    shown = commands(README.read_text())
    for pattern, _ in COMMANDS:
        assert any(re.fullmatch(pattern, c) for c in shown), f"stale rule {pattern!r}"


# -- python snippets ----------------------------------------------------------------------------

PLANTED = "from wsflask import WebSocket\n\n\ndef planted(ws: WebSocket) -> None:\n    ws.send(1)\n"


#: what the README tells users to configure: strict, and gevent (which ships no stubs) untyped
MYPY_INI = "[mypy]\nstrict = True\n\n[mypy-gevent.*]\nignore_missing_imports = True\n"


@pytest.mark.timeout(600)
def test_python_snippets_pass_mypy_strict(tmp_path: Path) -> None:
    snippets = blocks(README.read_text(), "python")
    assert len(snippets) >= 8
    files = []
    for number, body in enumerate(snippets):
        first = body.splitlines()[0]
        name = first[2:] if re.fullmatch(r"# \w+\.py", first) else f"snippet_{number:02}.py"
        (tmp_path / name).write_text(body)
        files.append(name)
    (tmp_path / "planted.py").write_text(PLANTED)  # proves the check can fail
    (tmp_path / "mypy.ini").write_text(MYPY_INI)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MYPYPATH"] = str(ROOT)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--cache-dir",
            str(tmp_path / ".cache"),
            *files,
            "planted.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith("planted.py:5: error:"), done.stdout


# -- links and wording --------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    text = doc.read_text()
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links or doc != README
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto: not checked here
        path, _, anchor = link.partition("#")
        if path:
            assert (doc.parent / path).exists(), f"{doc.name}: dead link {link}"
        elif anchor:
            assert anchor in anchors, f"{doc.name}: no heading for #{anchor}"


def test_user_facing_text_has_no_test_battery_ids() -> None:
    assert not re.findall(r"\b(?:[A-Z]{2})-\d{2}\b", README.read_text())


def test_the_settings_reference_lists_every_config_field() -> None:
    """One row per ``Config`` field, with its own variable: a new setting needs its row."""
    import dataclasses

    from wsflask.config import Config

    rows = re.findall(r"^\| `(\w+)` \| `WSFLASK_(\w+)` \|", README.read_text(), flags=re.M)
    assert [env for _, env in rows] == [name.upper() for name, _ in rows]
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a setting has two rows"
    assert set(names) == {f.name for f in dataclasses.fields(Config)}
