"""The server ``tests/test_debug_checkpoint.py`` runs as its own process (``wsflask run``).

Not a test module. Before the app is built it lowers its own open-file soft limit to
``CHECKPOINT_NOFILE`` (so a thousand connections come near it without touching the test
runner's limit); ``/echo`` echoes. Settings come from ``WSFLASK_*``, applied by the CLI.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from wsflask import App

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(os.environ["CHECKPOINT_NOFILE"]), _hard))

app = App()


@app.route("/echo")
def echo(ws: Any) -> None:
    for message in ws:
        ws.send(message)
