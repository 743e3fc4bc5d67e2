"""Calibration: the thinnest gevent WebSocket echo, the floor under any gevent framework.

A greenlet per connection, raw ``recv``/``sendall``, the handshake and frames parsed inline,
payloads unmasked by one integer XOR. No checks at all (no limits, no UTF-8, no RSV, no
Origin): never a server to deploy, only the yardstick ``rivals.py`` runs next to wsflask.
``/room`` sends every message to every member from the sender's greenlet, blocking on a slow one.
"""

from __future__ import annotations

import socket
import sys
from base64 import b64encode
from hashlib import sha1
from typing import Any

from gevent.server import StreamServer

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
)
members: set[Any] = set()


def header(b0: int, n: int) -> bytes:
    """An unmasked server frame header (RFC 6455 section 5.2) for ``n`` payload bytes."""
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big")
    return bytes((b0, 127)) + n.to_bytes(8, "big")


def upgrade(sock: Any) -> tuple[bytes, bytearray] | None:
    """Read the request head, answer 101; return the path and the bytes after the head."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    head = bytes(buf[:end])
    start = head.lower().index(b"sec-websocket-key:") + 18
    key = head[start:].split(b"\r\n", 1)[0].strip()
    sock.sendall(RESPONSE % b64encode(sha1(key + GUID).digest()))
    return head.split(b" ", 2)[1], buf[end + 4 :]


def handle(sock: Any, address: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as every server here
        opened = upgrade(sock)
        if opened is not None:
            path, buf = opened
            serve(sock, buf, path == b"/room")
    except OSError:
        pass
    finally:
        members.discard(sock)
        sock.close()


def serve(sock: Any, buf: bytearray, room: bool) -> None:
    """Echo (or broadcast) each data frame as it came, answer pings, echo the Close."""
    if room:
        members.add(sock)
    recv, sendall, from_bytes = sock.recv, sock.sendall, int.from_bytes
    while True:
        out = []
        pos = 0
        while len(buf) - pos >= 2:
            b0, n = buf[pos], buf[pos + 1] & 127
            at = pos + 2
            if n == 126:
                n, at = from_bytes(buf[at : at + 2], "big"), at + 2
            elif n == 127:
                n, at = from_bytes(buf[at : at + 8], "big"), at + 8
            if len(buf) < at + 4 + n:
                break
            mask = bytes(buf[at : at + 4]) * ((n >> 2) + 1)
            at += 4
            data = (
                from_bytes(buf[at : at + n], "little") ^ from_bytes(mask[:n], "little")
            ).to_bytes(n, "little")
            pos = at + n
            opcode = b0 & 15
            if opcode == 8:
                sendall(b"".join(out) + header(0x88, min(n, 2)) + data[:2])
                return
            if opcode == 9:
                out.append(header(0x8A, n) + data)
            elif opcode != 10:
                frame = header(b0 & 0x8F, n) + data
                if room:
                    for member in list(members):
                        try:
                            member.sendall(frame)
                        except OSError:
                            members.discard(member)
                else:
                    out.append(frame)
        del buf[:pos]
        if out:
            sendall(b"".join(out))
        data = recv(65536)
        if not data:
            return
        buf += data


if __name__ == "__main__":
    server = StreamServer(("127.0.0.1", int(sys.argv[1])), handle)
    server.start()
    print("calibration", server.server_port, flush=True)  # port 0: the one the kernel chose
    server.serve_forever()
