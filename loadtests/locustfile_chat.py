"""Locust: the chat example. Users join rooms, chat at a steady rate, and time the fan-out.

Serve ``examples/chat.py`` (``python examples/chat.py``), then::

    locust -f loadtests/locustfile_chat.py --headless -u 50 -r 10 -t 30s \
        --host ws://127.0.0.1:8080

Each user connects to ``/chat/<room>?nick=<name>`` (``CHAT_ROOMS`` rooms, default 5, users
spread over them) and sends ``say`` every ``1 / CHAT_RATE`` seconds (default 1 per second)
with the sender's wall-clock time at the front of its text (``wsflask.locust.stamp``).
Rows in locust's table (request type ``WS``):

* ``connect``: the opening handshake;
* ``say``: the request/ack round trip, matched by the envelope's ``id``;
* ``fanout said``: for every ``said`` envelope each member receives, from the sender's
  send to this receiver's arrival (sender -> server -> every receiver, the sender included).
"""

from __future__ import annotations

import itertools
import os

from locust import constant_throughput, task

from wsflask.locust import WebSocketUser, stamp

ROOMS = int(os.environ.get("CHAT_ROOMS", "5"))
RATE = float(os.environ.get("CHAT_RATE", "1"))
_numbers = itertools.count(1)


class ChatUser(WebSocketUser):
    """One chat member: joins a room on start, then says something at a steady rate."""

    wait_time = constant_throughput(RATE)

    def url(self) -> str:
        number = next(_numbers)
        room = f"load{number % ROOMS}"
        return f"{str(self.host).rstrip('/')}/chat/{room}?nick=bot{number}"

    def on_start(self) -> None:
        self.client.track_fanout("said")  # before connecting: no broadcast goes untimed
        super().on_start()

    @task
    def say(self) -> None:
        answer = self.client.request("say", {"text": stamp("hello from locust")}, name="say")
        if answer is not None and not answer.get("ok"):
            raise AssertionError(f"say refused: {answer!r}")
