"""``wsflask inspect URL``: list a live server's connections from its ``/debug`` page.

Fetches the JSON that ``debug_page.enable_debug_page`` serves (token from ``--token`` or
``WSFLASK_DEBUG_TOKEN``) and prints the server's stats and one line per connection: id,
peer, state, rooms, buffered bytes, RTT and message counts. Read-only; no WebSocket opened.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, TextIO

from .cli_client import CLIError

__all__ = ["add_parser", "cmd_inspect", "render"]

_COLUMNS = ("id", "peer", "state", "rooms", "buffered", "rtt", "messages_in", "messages_out")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``wsflask inspect`` on the CLI's sub-command parsers."""
    inspect = commands.add_parser("inspect", help="list a server's live connections (/debug)")
    inspect.add_argument("url", help="the debug page, e.g. http://127.0.0.1:8080/debug")
    inspect.add_argument("--token", help="the page's token (default: $WSFLASK_DEBUG_TOKEN)")
    inspect.add_argument("--json", action="store_true", help="print the raw JSON")
    inspect.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Fetch and print the debug page; a refusal or a network error is a ``CLIError``."""
    token = args.token or os.environ.get("WSFLASK_DEBUG_TOKEN", "")
    if not args.url.startswith(("http://", "https://")):
        raise CLIError(f"{args.url!r} is not an http:// or https:// URL")
    request = urllib.request.Request(args.url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise CLIError(f"{args.url} answered {exc.code} (wrong token, or no debug page)") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CLIError(f"cannot read {args.url}: {exc}") from None
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        render(body, sys.stdout)
    return 0


def render(body: dict[str, Any], out: TextIO) -> None:
    """Print the stats line and a table of connections."""
    stats = body.get("stats") or {}
    states = stats.get("connections", {})
    print(
        "connections: " + ", ".join(f"{k} {v}" for k, v in states.items())
        + f"; buffered {stats.get('buffered_bytes', 0)} B; mean RTT {stats.get('mean_rtt')}",
        file=out,
    )  # fmt: skip
    rows = [[_cell(row.get(c)) for c in _COLUMNS] for row in body.get("connections", [])]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(_COLUMNS)]
    for line in [list(_COLUMNS), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)), file=out)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, float):
        return f"{value * 1000:.2f}ms"
    return "-" if value is None else str(value)
