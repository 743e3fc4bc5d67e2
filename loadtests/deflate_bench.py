"""permessage-deflate cost: CPU per compressed 1 KiB JSON message and memory per idle connection.

Run: ``.venv/bin/python loadtests/deflate_bench.py [--messages 20000] [--connections 500]``.

What it measures, in one run:

1. CPU: one 1 KiB JSON-like message (a new one each time, so context takeover finds history
   but not the same bytes) compressed by a server and inflated by a client, sans-I/O, in
   this process: wsflask's ``Connection`` (defaults 12/12/memLevel 5, and 15/15/8),
   python-websockets' ``Protocol`` with its ``PerMessageDeflate`` (its server defaults,
   12/12/memLevel 5) and aiohttp's ``WebSocketWriter``/``WebSocketReader`` (compress=15,
   its only window). Best of 3 rounds, microseconds per message, with the ratio.
2. Memory per idle compressed connection: ``PerMessageDeflate.memory_estimate()`` (zlib's
   formula) for the defaults, with and without context takeover; then an RSS probe: a wsflask
   server in a child process, ``--connections`` clients that each exchange one 1 KiB JSON
   message with compression and stay idle, server RSS growth per connection with compression
   on minus with it off.

What it does not do: no assertion, no pass/fail (speed belongs here, not in tests); not run
by ``make test``. Numbers vary with machine load: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsflask.config import Config  # noqa: E402
from wsflask.protocol import Connection, DeflateSettings, Side  # noqa: E402


def json_messages(count: int, size: int = 1024) -> list[str]:
    """``count`` distinct JSON-like messages of about ``size`` bytes (chat/ticker shaped)."""
    rng = random.Random(7)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    out = []
    for i in range(count):
        items = []
        while len(json.dumps(items)) < size - 120:
            items.append(
                {
                    "id": rng.randrange(10**6),
                    "user": rng.choice(words),
                    "price": round(rng.uniform(1, 500), 2),
                    "tags": rng.sample(words, 2),
                }
            )
        body = json.dumps({"type": "update", "seq": i, "room": "lobby", "items": items})
        out.append(body[:size] if len(body) > size else body.ljust(size))
    return out


# -- 1. CPU -----------------------------------------------------------------------------------


def wsflask_pair(settings: DeflateSettings) -> Callable[[str], int]:
    server = Connection(Side.SERVER, deflate=settings)
    client = Connection(Side.CLIENT, deflate=settings)
    client.connect("bench", "/")
    server.receive_data(client.data_to_send())
    server.accept(server.events_received()[0])  # type: ignore[arg-type]
    client.receive_data(server.data_to_send())
    client.events_received()
    assert server.deflate is not None

    def one(message: str) -> int:
        server.send_text(message)
        wire = server.data_to_send()
        client.receive_data(wire)
        assert client.events_received()[0].data == message  # type: ignore[attr-defined]
        return len(wire)

    return one


def websockets_pair() -> Callable[[str], int]:
    from websockets.extensions.permessage_deflate import PerMessageDeflate
    from websockets.protocol import Protocol
    from websockets.protocol import Side as WSide

    server, client = Protocol(WSide.SERVER), Protocol(WSide.CLIENT)
    # its server defaults (enable_server_permessage_deflate): 12/12 bits, memLevel 5
    server.extensions = [PerMessageDeflate(False, False, 12, 12, {"memLevel": 5})]
    client.extensions = [PerMessageDeflate(False, False, 12, 12)]

    def one(message: str) -> int:
        server.send_text(message.encode())
        wire = b"".join(server.data_to_send())
        client.receive_data(wire)
        assert client.events_received()[0].data.decode() == message  # type: ignore[attr-defined]
        return len(wire)

    return one


def aiohttp_pair() -> tuple[Callable[[str], int], asyncio.AbstractEventLoop]:
    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
    from aiohttp._websocket.writer import WebSocketWriter

    class Transport:
        def __init__(self) -> None:
            self.out: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.out.append(bytes(data))

        def is_closing(self) -> bool:
            return False

    protocol = type(
        "P", (), {"_paused": False, "_reading_paused": False, "pause_reading": lambda self: None}
    )()
    transport, loop = Transport(), asyncio.new_event_loop()
    queue = WebSocketDataQueue(protocol, 1 << 30, loop=loop)  # type: ignore[arg-type]
    writer = WebSocketWriter(protocol, transport, compress=15)  # type: ignore[arg-type]
    reader = WebSocketReader(queue, 1 << 20, compress=True, decode_text=True)

    async def send(message: str) -> None:
        await writer.send_frame(message.encode(), 0x1)

    def one(message: str) -> int:
        loop.run_until_complete(send(message))
        wire = b"".join(transport.out)
        transport.out.clear()
        reader.feed_data(wire)
        got = queue._buffer.popleft()[0]
        assert got[1] == message, got
        return len(wire)

    return one, loop


def time_it(one: Callable[[str], int], messages: list[str]) -> tuple[float, float]:
    """Best of 3 rounds: (microseconds per message, wire bytes / raw bytes)."""
    best, ratio = float("inf"), 0.0
    for _ in range(3):
        started = time.perf_counter()
        wire = sum(one(m) for m in messages)
        best = min(best, (time.perf_counter() - started) / len(messages) * 1e6)
        ratio = wire / sum(len(m) for m in messages)
    return best, ratio


def cpu(count: int) -> dict[str, Any]:
    messages = json_messages(count)
    results: dict[str, Any] = {}
    defaults = Config().deflate_settings()
    assert defaults is not None
    results["wsflask 12/12/mem5 (default)"] = time_it(wsflask_pair(defaults), messages)
    results["wsflask 15/15/mem8"] = time_it(wsflask_pair(DeflateSettings()), messages)
    results["wsflask 12/12/mem5, no context takeover"] = time_it(
        wsflask_pair(
            Config(deflate_no_context_takeover=True).deflate_settings()  # type: ignore[arg-type]
        ),
        messages,
    )
    results["python-websockets 12/12/mem5 (default)"] = time_it(websockets_pair(), messages)
    one, loop = aiohttp_pair()
    try:
        results["aiohttp 15/mem8 (default)"] = time_it(one, messages)
    finally:
        loop.close()
    return results


# -- 2. memory --------------------------------------------------------------------------------


def estimates() -> dict[str, int]:
    out = {}
    for label, config in (
        ("12/12/mem5, takeover (default)", Config()),
        ("15/15/mem8, takeover", Config(deflate_window_bits=15, deflate_mem_level=8)),
        ("12/12/mem5, no takeover", Config(deflate_no_context_takeover=True)),
    ):
        settings = config.deflate_settings()
        assert settings is not None
        one = wsflask_pair(settings)
        one(json_messages(1)[0])
        server = Connection(Side.SERVER, deflate=settings)  # a fresh one, for the codec
        client = Connection(Side.CLIENT, deflate=settings)
        client.connect("bench", "/")
        server.receive_data(client.data_to_send())
        server.accept(server.events_received()[0])  # type: ignore[arg-type]
        assert server.deflate is not None
        out[label] = server.deflate.memory_estimate()
    return out


SERVE = """
import sys
from wsflask import App
from wsflask.config import Config
app = App(Config(compression=sys.argv[1] == "on", ping_interval=3600, pong_timeout=3600))
@app.route("/echo")
def echo(ws):
    for message in ws:
        ws.send(message)
server = app.make_server("127.0.0.1", 0)
server.start()
print(server.server_port, flush=True)
server.serve_forever()
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_probe(compression: bool, connections: int) -> float:
    """Server RSS growth in KiB per idle connection after one compressed exchange each."""
    import gevent

    from wsflask.client import connect

    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "on" if compression else "off"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        message = json_messages(1)[0]
        config = Config(deflate_window_bits=15, ping_interval=3600)  # offers the usual way
        warm = [
            connect(f"ws://127.0.0.1:{port}/echo", compression=True, config=config)
            for _ in range(20)
        ]
        for ws in warm:
            ws.send(message)
            ws.receive(timeout=30)
        gevent.sleep(0.5)
        before = rss_kib(proc.pid)
        clients = []
        for _ in range(connections):
            ws = connect(f"ws://127.0.0.1:{port}/echo", compression=True, config=config)
            ws.send(message)
            assert ws.receive(timeout=30) == message
            assert bool(ws.extensions) == compression
            clients.append(ws)
        gevent.sleep(0.5)
        grown = rss_kib(proc.pid) - before
        for ws in clients + warm:
            ws.close()
        return grown / connections
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=500)
    args = parser.parse_args()
    print(f"CPU per 1 KiB JSON message, compress + inflate ({args.messages} messages, best of 3)")
    for label, (micros, ratio) in cpu(args.messages).items():
        print(f"  {label:45s} {micros:6.1f} us   wire/raw {ratio:.3f}")
    print("zlib memory per idle compressed connection, server side (memory_estimate)")
    for label, size in estimates().items():
        print(f"  {label:45s} {size / 1024:6.1f} KiB")
    on = rss_probe(True, args.connections)
    off = rss_probe(False, args.connections)
    print(f"RSS per idle connection, {args.connections} connections, wsflask defaults:")
    print(f"  compression on {on:.1f} KiB, off {off:.1f} KiB, deflate's share {on - off:.1f} KiB")


if __name__ == "__main__":
    main()
