"""permessage-deflate byte counters in ``/metrics``: added as they happen, never summed per render.

Each codec adds its counts to ``Metrics.deflate_totals`` as it compresses and inflates (and
rooms' shared frames count on every member), so a render is O(1) in compressed connections
(``loadtests/metrics_bench.py``). These tests hold the values to what the codecs themselves
counted, over real sockets with open and closed connections, and at the unit level.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import gevent
import gevent.event
import pytest
from helpers import wait_until

from wsflask import App
from wsflask.client import connect
from wsflask.config import Config
from wsflask.metrics import Metrics
from wsflask.protocol import PerMessageDeflate
from wsflask.websocket import WebSocket

pytestmark = pytest.mark.usefixtures("test_deadline")


def payload(i: int, size: int = 2048) -> str:
    return json.dumps({"seq": i, "items": ["alpha", "bravo"] * (size // 16)})[:size]


def counts(codec: PerMessageDeflate) -> tuple[int, int, int, int]:
    return codec.compressed_in, codec.inflated_in, codec.raw_out, codec.compressed_out


def test_totals_equal_what_every_codec_counted_open_and_closed(
    app_factory: Callable[..., App],
) -> None:
    app = app_factory(config=Config(port=0, close_timeout=1.0, shutdown_grace=1.0))
    codecs: list[PerMessageDeflate] = []
    joined = gevent.event.Event()

    @app.route("/room")
    def room(ws: WebSocket) -> None:
        assert ws.deflate is not None
        codecs.append(ws.deflate)
        app.rooms.join("r", ws)
        if len(codecs) == 3:
            joined.set()
        for message in ws:
            ws.send(message)  # an echo: inflated in, compressed out

    with app.test_client(timeout=30) as client:
        nct = Config(deflate_no_context_takeover=True)  # shared broadcast frames for these
        clients = [
            connect(client.url("/room"), compression=True, timeout=30),
            connect(client.url("/room"), compression=True, config=nct, timeout=30),
            connect(client.url("/room"), compression=True, config=nct, timeout=30),
        ]
        assert joined.wait(30)
        assert codecs[0].share_key is None and codecs[1].share_key is not None  # both paths
        for i, ws in enumerate(clients):
            ws.send(payload(i))
            assert ws.receive(timeout=30) == payload(i)
        assert app.rooms.broadcast("r", payload(9)).sent == 3
        assert all(ws.receive(timeout=30) == payload(9) for ws in clients)
        clients[0].close()  # its bytes stay counted, and nothing after the close is
        wait_until(lambda: app.metrics.connections_current == 2, timeout=30)
        for i, ws in enumerate(clients[1:], 1):
            ws.send(payload(10 + i))
            assert ws.receive(timeout=30) == payload(10 + i)
        expected = tuple(map(sum, zip(*(counts(codec) for codec in codecs), strict=True)))
        assert app.metrics.deflate_bytes() == expected
        assert all(value > 0 for value in expected)
        zin, raw_in, raw_out, zout = expected
        text = app.metrics.render()
        assert f'websocket_deflate_bytes_total{{direction="in",form="compressed"}} {zin}' in text
        assert (
            f'websocket_deflate_bytes_total{{direction="in",form="uncompressed"}} {raw_in}' in text
        )
        assert (
            f'websocket_deflate_bytes_total{{direction="out",form="uncompressed"}} {raw_out}'
            in text
        )
        assert f'websocket_deflate_bytes_total{{direction="out",form="compressed"}} {zout}' in text
        for ws in clients[1:]:
            ws.close()


def test_a_codec_counts_from_before_its_open_until_its_close_once() -> None:
    metrics = Metrics()
    server, peer = PerMessageDeflate(), PerMessageDeflate(is_server=False)
    server.encode(b"a" * 500)  # before connection_opened: added when it opens
    metrics.connection_opened(server)
    metrics.connection_opened(server)  # a second call must not count it twice
    server.encode(b"b" * 700)
    inflated = server.decompress(peer.encode(b"c" * 900), 10_000, final=True)
    assert b"".join(inflated) == b"c" * 900
    assert metrics.deflate_bytes() == counts(server)
    assert metrics.deflate_bytes()[1:3] == (900, 1200)
    metrics.connection_closed(1000, 1.0, server)
    at_close = metrics.deflate_bytes()
    server.encode(b"d" * 300)  # after the close: not this server's traffic any more
    metrics.connection_closed(1000, 1.0, server)
    assert metrics.deflate_bytes() == at_close
    assert PerMessageDeflate().totals is None  # a codec nobody counts (a client's)
