"""A peer that half-closes TCP (a bare FIN, no Close frame): the decision and its test.

RFC 6455 §7.1.5: a connection whose TCP closed without a Close frame was closed abnormally,
code 1006. wsflask ends such a connection at once: the handler's loop ends, ``close_code``
is 1006, the server closes its side and sends no Close frame (the peer said it will read
nothing more worth answering; §7.1.1 lets the server close TCP first). Messages queued for
it are not delivered.
"""

from __future__ import annotations

import socket
from typing import Any

from gevent.event import AsyncResult

from wsflask.protocol import CloseCode


def test_a_bare_fin_is_an_abnormal_closure_1006(serve: Any, raw_peer: Any) -> None:
    ended: AsyncResult = AsyncResult()

    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)
        ended.set((ws.close_code, ws.state.name))

    server = serve(echo)
    peer = raw_peer(server.server_port)
    assert peer.request("/").startswith(b"HTTP/1.1 101")
    peer.send_frame(0x1, b"before the FIN")
    assert peer.read_frame() == (0x1, b"before the FIN")  # served normally until then
    peer.sock.shutdown(socket.SHUT_WR)
    assert ended.get(timeout=5) == (CloseCode.ABNORMAL, "CLOSED")
    assert peer.read_until_eof() == b""  # no Close frame: TCP closed after our FIN
