"""Locust: the echo route, each user timing request/reply round trips over one WebSocket.

Serve ``examples/echo.py`` (or ``examples/chat.py``: it has ``/echo`` too), then::

    locust -f loadtests/locustfile_echo.py --headless -u 50 -r 10 -t 30s \
        --host ws://127.0.0.1:8080

Rows in locust's table (request type ``WS``): ``connect`` (the opening handshake), ``echo``
(from the send to the reply's arrival: a real round trip, never 0 ms). Environment:
``ECHO_SIZE`` (bytes of text per message, default 32), ``ECHO_RATE`` (round trips per second
per user, default 10).
"""

from __future__ import annotations

import os

from locust import constant_throughput, task

from wsflask.locust import WebSocketUser

SIZE = int(os.environ.get("ECHO_SIZE", "32"))
RATE = float(os.environ.get("ECHO_RATE", "10"))


class EchoUser(WebSocketUser):
    """Sends a text and waits for it to come back, ``RATE`` times per second."""

    path = "/echo"
    wait_time = constant_throughput(RATE)

    @task
    def echo(self) -> None:
        payload = "x" * SIZE
        reply = self.client.round_trip(payload, name="echo")
        if reply is not None and reply != payload:
            raise AssertionError(f"echo returned {reply!r:.40}")
