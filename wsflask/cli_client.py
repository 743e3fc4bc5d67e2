"""``wsflask client URL``: an interactive WebSocket client for the terminal and for pipes.

Sends stdin lines as messages and prints received messages on stdout (status lines on
stderr). On EOF or Ctrl-C it lingers, closes with 1000 and exits 0; a close by the server
with a code other than 1000/1001 (or a lost connection) exits 1, printing code and reason.
Not done: no reconnection, no line editing (use ``rlwrap``), no monkey-patching.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from .config import Config
from .protocol import CloseCode

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["CLIError", "cmd_client"]

#: Server close codes that end a session normally (exit 0); any other exits 1.
NORMAL_CLOSES = (CloseCode.NORMAL, CloseCode.GOING_AWAY)


class CLIError(Exception):
    """A failure to report in one line on stderr (exit code 1), without a traceback."""


def cmd_client(args: argparse.Namespace) -> int:
    """``wsflask client URL``: stdin lines out, received messages to stdout."""
    from .client import connect
    from .errors import HandshakeRejected, InvalidHandshakeResponse

    headers = [_split_header(text) for text in args.header]
    config = Config()
    try:
        ws = connect(
            args.url,
            subprotocols=args.subprotocol,
            headers=headers,
            timeout=args.timeout,
            config=config,
        )
    except HandshakeRejected as exc:
        body = exc.body.decode("utf-8", "replace").strip()
        raise CLIError(f"{args.url}: refused with HTTP {exc.status} {body}".rstrip()) from None
    except (OSError, TimeoutError, ValueError, InvalidHandshakeResponse) as exc:
        raise CLIError(f"{args.url}: {exc}") from None
    chosen = f" (subprotocol {ws.subprotocol})" if ws.subprotocol else ""
    _status(f"connected to {args.url}{chosen}; type messages, Ctrl-D to close")
    return interact(ws, binary=args.binary, linger=args.linger, close_timeout=config.close_timeout)


def interact(
    ws: WebSocket, *, binary: bool = False, linger: float = 1.0, close_timeout: float = 5.0
) -> int:
    """Run the stdin writer and the printer until EOF, Ctrl-C or the server's close.

    Returns:
        the exit code: 0 after our close or a close by the server with ``NORMAL_CLOSES``,
        else 1 (another code, no status, or the connection lost).
    """
    import signal

    import gevent
    from gevent.fileobject import FileObjectPosix

    fd = sys.stdin.fileno()
    was_blocking = os.get_blocking(fd)
    printed = [0]
    printer = gevent.spawn(_print_messages, ws, printed)
    writer = gevent.spawn(_send_lines, ws, FileObjectPosix(fd, "rb", close=False), binary)
    gevent.signal_handler(signal.SIGINT, writer.kill, block=False)
    try:
        gevent.wait([printer, writer], count=1)
        writer.kill()
        seen = -1  # EOF or Ctrl-C: let answers arrive while the server keeps talking
        while printed[0] != seen and not printer.ready():
            seen = printed[0]
            printer.join(timeout=linger)
        if not printer.ready():  # the server is quiet: we close, and await its echo
            ws.close(CloseCode.NORMAL)
            printer.join(timeout=close_timeout + 1.0)
            _status(f"closed: {ws.close_code}")
            return 0
    finally:
        os.set_blocking(fd, was_blocking)
    code = ws.close_code
    _status(f"closed by the server: {code} {ws.close_reason}".rstrip())
    return 0 if code in NORMAL_CLOSES else 1


def _send_lines(ws: WebSocket, stdin: Any, binary: bool) -> None:
    from .errors import ConnectionClosed

    for line in stdin:
        payload = line.rstrip(b"\r\n")
        try:
            ws.send(payload if binary else payload.decode("utf-8", "replace"))
        except ConnectionClosed:
            return


def _print_messages(ws: WebSocket, printed: list[int]) -> None:
    for message in ws:
        if isinstance(message, bytes):
            try:
                shown = message.decode("utf-8")
            except UnicodeDecodeError:
                shown = message.hex()
            message = f"[binary {len(message)} bytes] {shown}"
        print(message, flush=True)
        printed[0] += 1


def _split_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise CLIError(f"--header {text!r} is invalid: expected 'Name: value'")
    return name.strip(), value.strip()


def _status(text: str) -> None:
    print(f"* {text}", file=sys.stderr, flush=True)
