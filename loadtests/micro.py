"""Micro-benchmarks of the protocol core (issue 2): run ``make micro`` or this file.

Measures, single-threaded on whatever core it is pinned to (``taskset -c 1 ...``):
unmasking 20 B, 16 KiB and 64 KiB with each masking method (the compiled one too, when
built), UTF-8 validation (ASCII and mixed), decoding streams of masked frames through
``Connection`` (frames/s including unmasking, validation and event creation) and encoding
frames. The first line says which path the protocol core uses: compare a run with
``WSFLASK_NO_EXTENSIONS=1`` (pure Python) against one without. The machine is shared: run
it three times and take the best. Benchmarks are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import timeit
from collections.abc import Callable

from wsflask.protocol import Connection, DeflateSettings, Side, encode_frame, speedups
from wsflask.protocol.frames import FrameDecoder, encode_frame_python
from wsflask.protocol.mask import apply_mask_int, apply_mask_reference, apply_mask_translate
from wsflask.protocol.utf8 import decode_text

Row = tuple[str, float, str]


def best(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Seconds per call, best of ``repeat`` runs."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def bench_mask() -> list[Row]:
    rows = []
    key = os.urandom(4)
    for size, number in ((20, 200_000), (16384, 10_000), (65536, 2_000)):
        data = os.urandom(size)
        methods: list[tuple[str, Callable[[bytes, bytes], bytes]]] = [
            ("int", apply_mask_int),
            ("translate", apply_mask_translate),
        ]
        if size == 20:
            methods.append(("reference", apply_mask_reference))
        if speedups.compiled is not None:
            methods.append(("compiled", speedups.compiled.apply_mask))
        for name, fn in methods:
            t = best(lambda fn=fn, data=data: fn(data, key), number)
            rows.append((f"unmask {size} B ({name})", t * 1e6, f"{size / t / 1e9:.3f} GB/s"))
    return rows


def bench_utf8() -> list[Row]:
    ascii_data = b"a" * 65536
    mixed = ("héllo wörld €𝄞 " * 4000).encode()[:65536].decode("utf-8", "ignore").encode()
    rows = []
    for name, data in (("ascii", ascii_data), ("mixed", mixed)):
        t = best(lambda data=data: decode_text(data), 2_000)
        rows.append((f"utf-8 validate 64 KiB {name}", t * 1e6, f"{len(data) / t / 1e9:.2f} GB/s"))
    return rows


def _server() -> Connection:
    conn = Connection(Side.SERVER)
    conn.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    (request,) = conn.events_received()
    conn.accept(request)  # type: ignore[arg-type]
    conn.data_to_send()
    conn.events_received()
    return conn


def bench_decode() -> list[Row]:
    key = os.urandom(4)
    rows = []
    for size, count, number in ((20, 1000, 200), (20, 1, 200_000), (16384, 4, 5_000)):
        batch = encode_frame(0x1, b"x" * size, mask=key) * count  # what one recv holds
        conn = _server()

        def run(conn: Connection = conn, batch: bytes = batch) -> None:
            conn.receive_data(batch)
            conn.events_received()

        t = best(run, number) / count
        name = f"decode {size} B masked text, {count}/recv"
        rows.append((name, t * 1e6, f"{1 / t:,.0f} frames/s"))
        decoders = [("python", "feed_python")]
        if speedups.compiled is not None:
            decoders.append(("compiled", "feed_compiled"))
        for path, method in decoders:
            decoder = FrameDecoder(expect_mask=True, max_payload=1 << 20)
            feed = getattr(decoder, method)
            t = best(lambda feed=feed, batch=batch: list(feed(batch)), number) / count
            rows.append(
                (f"FrameDecoder {size} B, {count}/recv ({path})", t * 1e6, f"{1 / t:,.0f} frames/s")
            )
    return rows


def bench_encode() -> list[Row]:
    rows = []
    key = os.urandom(4)
    encoders = [("python", encode_frame_python)]
    if speedups.compiled is not None:
        encoders.append(("compiled", speedups.compiled.encode_frame))
    for size, number in ((20, 500_000), (16384, 20_000)):
        payload = b"x" * size
        for name, fn in encoders:
            t = best(lambda fn=fn, payload=payload: fn(0x1, payload), number)
            rows.append((f"encode_frame {size} B ({name})", t * 1e6, f"{1 / t:,.0f} frames/s"))
            t = best(lambda fn=fn, payload=payload: fn(0x1, payload, mask=key), number)
            rows.append(
                (f"encode_frame {size} B masked ({name})", t * 1e6, f"{1 / t:,.0f} frames/s")
            )
    conn = _server()

    def send() -> None:
        conn.send_text("x" * 20)
        conn.data_to_send()

    t2 = best(send, 200_000)
    rows.append(("Connection.send_text 20 B + data_to_send", t2 * 1e6, f"{1 / t2:,.0f} frames/s"))
    return rows


#: what Chromium sends (its header set and order), with a permessage-deflate offer
BROWSER_HEAD = (
    b"GET /chat?room=a HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: Upgrade\r\n"
    b"Pragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux "
    b"x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\nOrigin: http://127.0.0.1:8080\r\nSec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


def bench_handshake() -> list[Row]:
    """One server handshake in the core: parse a browser's head, accept, encode the 101."""
    rows = []
    for name, head, deflate in (
        ("handshake, minimal head", _server_head(), False),
        ("handshake, browser head + deflate offer", BROWSER_HEAD, True),
    ):

        def once(head: bytes = head, deflate: bool = deflate) -> None:
            conn = Connection(Side.SERVER, deflate=DeflateSettings() if deflate else None)
            conn.receive_data(head)
            (request,) = conn.events_received()
            conn.accept(request)  # type: ignore[arg-type]
            conn.data_to_send()

        t = best(once, 5_000)
        rows.append((name, t * 1e6, f"{1 / t:,.0f} handshakes/s"))
    return rows


def _server_head() -> bytes:
    return (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    path = "compiled speedups" if speedups.speedups_active() else "pure Python"
    print(f"protocol core path: {path}")
    print(f"{'benchmark':46} {'us/op':>10}  rate")
    for group in (bench_mask, bench_utf8, bench_decode, bench_encode, bench_handshake):
        for name, micros, rate in group():
            print(f"{name:46} {micros:10.3f}  {rate}")


if __name__ == "__main__":
    main()
