"""Helpers to drive protocol connections without sockets."""

from __future__ import annotations

import gc
import importlib
import os
import random
import tracemalloc
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from wsflask.protocol import Connection, Limits, Side
from wsflask.protocol.events import Event

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x37\xfa\x21\x3d"


def fixed_mask(n: int) -> bytes:
    """A pinned mask source, so client frames are byte-exact."""
    return (MASK * (n // 4 + 1))[:n]


def open_pair(limits: Limits | None = None) -> tuple[Connection, Connection]:
    """A client and a server connection, handshake done, events drained."""
    client = Connection(Side.CLIENT, limits=limits, mask_source=fixed_mask)
    server = Connection(Side.SERVER, limits=limits)
    client.connect("example.com", "/chat", key=KEY)
    server.receive_data(client.data_to_send())
    (request,) = server.events_received()
    server.accept(request)  # type: ignore[arg-type]
    client.receive_data(server.data_to_send())
    client.events_received()
    server.events_received()
    return client, server


def open_side(side: Side, limits: Limits | None = None) -> tuple[Connection, Connection]:
    """(endpoint under test, its peer) for ``side``."""
    client, server = open_pair(limits)
    return (server, client) if side is Side.SERVER else (client, server)


def splits(data: bytes, mode: str, seed: int = 0) -> Iterator[bytes]:
    """Yield ``data`` whole, one byte at a time, or at random split points."""
    if mode == "whole":
        yield data
    elif mode == "bytes":
        for i in range(len(data)):
            yield data[i : i + 1]
    else:
        rng, pos = random.Random(seed), 0
        while pos < len(data):
            step = rng.randint(1, 17)
            yield data[pos : pos + step]
            pos += step


def feed(conn: Connection, data: bytes, mode: str = "whole") -> list[Event]:
    events: list[Event] = []
    for chunk in splits(data, mode):
        conn.receive_data(chunk)
        events += conn.events_received()
    return events


@pytest.fixture(params=[Side.SERVER, Side.CLIENT], ids=["server", "client"])
def side(request: pytest.FixtureRequest) -> Side:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["whole", "bytes", "random"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


HINT = (
    "wsflask.protocol._speedups is not built: run `.venv/bin/pip install -e .` (or "
    "`.venv/bin/python setup.py build_ext --inplace`) with a C compiler and Python headers"
)


def _load_compiled() -> ModuleType | None:
    try:
        return importlib.import_module("wsflask.protocol._speedups")
    except ImportError:
        return None


_COMPILED = _load_compiled()


@pytest.fixture(scope="module")
def c() -> ModuleType:
    """The compiled module, imported directly (so also under ``WSFLASK_NO_EXTENSIONS=1``);
    a missing build skips locally and fails in CI."""
    if _COMPILED is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(HINT)
        pytest.skip(HINT)
    return _COMPILED


def bytes_kept(churn: Callable[[], object]) -> int:
    """Python memory still held after a second ``churn()`` (the first warms caches):
    compiled code's reference leaks show here (ASan does not track reference counts)."""
    churn()
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        churn()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
