"""The access log: one ``wsflask.access`` line when a connection opens and one when it closes,
naming the same connection (defect 15: with a backplane the two ids differed)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from wsflask import App, WebSocket
from wsflask.ids import is_connection_id, node_of


@pytest.mark.parametrize("backplane", [None, "memory://access-log"])
def test_defect15_open_and_close_lines_carry_the_same_id(
    backplane: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(backplane=backplane, close_timeout=1.0, shutdown_grace=1.0)

    @app.route("/chat/<room>")
    def chat(ws: WebSocket, room: str) -> None:
        app.rooms.join(room, ws)
        ws.send(ws.id)
        for message in ws:
            ws.send(message)

    with caplog.at_level(logging.INFO, logger="wsflask.access"), app.test_client() as client:
        ws = client.connect("/chat/lobby")
        seen = client.receive(ws)
        ws.close()
        assert client.server is not None and client.server.wait_drained(5)
    records: list[Any] = [r for r in caplog.records if r.name == "wsflask.access"]
    lines = [(r.getMessage(), getattr(r, "id", None)) for r in records]
    assert lines == [("connection open", seen), ("connection close", seen)]
    assert isinstance(seen, str) and is_connection_id(seen)
    if backplane is not None:
        assert app.cluster is not None and node_of(seen) == app.cluster.node


def test_pywsgi_upgrades_get_the_apps_node_prefixed_ids() -> None:
    """Under pywsgi too, ids come from the App: ``to=ws.id`` must reach across nodes."""
    from gevent import pywsgi

    from wsflask.client import connect

    app = App(backplane="memory://pywsgi-ids", close_timeout=1.0)

    @app.route("/id")
    def who(ws: WebSocket) -> None:
        ws.send(ws.id)

    assert app.cluster is not None
    app.cluster.start()
    server = pywsgi.WSGIServer(("127.0.0.1", 0), lambda e, s: [], handler_class=app.handler_class)
    server.start()
    try:
        ws = connect(f"ws://127.0.0.1:{server.server_port}/id", timeout=5)
        seen = ws.receive(timeout=5)
        ws.close()
    finally:
        server.stop(timeout=2)
        app.notify_stopped()
        app.heartbeat.stop()
        app.cluster.stop()
    assert isinstance(seen, str) and node_of(seen) == app.cluster.node
