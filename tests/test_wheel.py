"""The wheel carries the compiled speedups and serves from a clean environment.

Builds a wheel from a copy of the sources (``pip wheel --no-deps``), asserts the compiled
``wsflask/protocol/_speedups``, ``wsflask/_iterator`` and ``wsflask/_framestacks`` modules and
their stubs are inside, installs it with ``--no-deps`` into a scratch venv whose only other
packages are the current venv's (gevent, greenlet, found through a ``.pth`` line; the
editable wsflask is not), and serves one echo over a real socket on 127.0.0.1 from that
venv, with the compiled path (the protocol speedups, the message iterator and the
frame-stack cache) active.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsflask.protocol import Opcode, encode_frame
from wsflask.protocol.frames import FrameDecoder

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md"]
SERVER = """
from gevent import monkey; monkey.patch_all()
import sys
import wsflask
from wsflask import App
from wsflask.protocol import speedups_active
from wsflask.websocket import Messages
from wsflask.framestacks import stats
app = App()

@app.route("/echo")
def echo(ws):
    for message in ws:
        ws.send(message)

server = app.make_server("127.0.0.1", 0)
server.start()
print("READY", server.server_port, speedups_active(), Messages.__module__, stats().installed,
      wsflask.__file__, flush=True)
server.serve_forever()
"""


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{args[:4]} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module", params=["compiler", "no-compiler"])
def wheel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the sources (no in-place build products); with
    ``CC=false`` the optional extension fails to build and the wheel is pure Python."""
    work = tmp_path_factory.mktemp(f"wheel-{request.param}-")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "wsflask",
        src / "wsflask",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
    )
    # With build isolation, as a user's pip does: [build-system] decides the setuptools.
    env = dict(os.environ, CC="false") if request.param == "no-compiler" else None
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        work / "dist",
        src,
        cwd=work,
        env=env,
    )
    (built,) = (work / "dist").glob("wsflask-*.whl")
    return built


def compiled(wheel: Path) -> bool:
    return "no-compiler" not in wheel.parent.parent.name


def test_wheel_contains_the_compiled_module(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert (f"wsflask/protocol/_speedups{suffix}" in names) is compiled(wheel)
    assert (f"wsflask/_iterator{suffix}" in names) is compiled(wheel)
    assert (f"wsflask/_framestacks{suffix}" in names) is compiled(wheel)
    assert "wsflask/protocol/_speedups.pyi" in names
    assert "wsflask/_iterator.pyi" in names
    assert "wsflask/_framestacks.pyi" in names
    assert "wsflask/protocol/speedups.py" in names
    assert "wsflask/protocol/_speedups.c" not in names  # the sdist's, not the wheel's
    assert "wsflask/_iterator.c" not in names
    assert "wsflask/_framestacks.c" not in names


@pytest.fixture
def scratch(wheel: Path, tmp_path: Path) -> Path:
    """A venv holding only the wheel; gevent and greenlet come from the running venv."""
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        wheel,
        cwd=tmp_path,
    )
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    # Only directories are added, so the running venv's editable-install hook is not run.
    Path(site, "_wheel_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


@pytest.fixture
def server(scratch: Path, tmp_path: Path) -> Iterator[tuple[int, str, str, str, str]]:
    """(port, speedups_active, the message iterator's module, whether the frame-stack cache is
    in place, wsflask.__file__) of an echo server run by the scratch venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WSFLASK_NO_EXTENSIONS")}
    log = tmp_path / "server.log"
    with log.open("w") as errors:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [scratch, "-c", SERVER],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=30)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("READY "), f"no server ({proc.poll()}): {log.read_text()}"
        _, port, active, iterator, stacks, path = line.split(maxsplit=5)
        yield int(port), active, iterator, stacks, path.strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_installed_wheel_serves_an_echo(
    wheel: Path, server: tuple[int, str, str, str, str], tmp_path: Path
) -> None:
    port, active, iterator, stacks, path = server
    assert active == str(compiled(wheel))  # the compiled path exactly when it was built
    assert iterator == ("wsflask._iterator" if compiled(wheel) else "wsflask.websocket")
    assert stacks == str(compiled(wheel))  # Server.start() put the frame-stack cache in place
    assert path.startswith(str(tmp_path / "venv")), path
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        message = "héllo " * 30  # 186 bytes: a 16-bit length, both ways
        head, _, rest = read_until(sock, b"\r\n\r\n").partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        sock.sendall(encode_frame(Opcode.TEXT, message.encode(), mask=b"\x01\x02\x03\x04"))
        decoder = FrameDecoder(expect_mask=False, max_payload=1 << 16)
        frames = list(decoder.feed(rest))
        while not frames:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the echo"
            frames = list(decoder.feed(chunk))
        assert frames == [(True, Opcode.TEXT, 0, message.encode())]


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before {marker!r}: {data!r}"
        data += chunk
    return data
