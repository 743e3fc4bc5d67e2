"""The app the backplane and worker tests run as separate processes (``wsflask run``).

Not a test module. ``/r/<room>`` joins the room, greets with ``{"hello": id, "pid": pid}``,
then broadcasts every message it receives to the room (the sender included);
``GET /count/<room>`` answers the cluster-wide member count. The backplane comes from the
environment (``WSFLASK_BACKPLANE``), applied by the CLI.
"""

from __future__ import annotations

import json
import os
from typing import Any

from wsflask import App

app = App()


@app.route("/r/<room>")
def chat(ws: Any, room: str) -> None:
    app.rooms.join(room, ws)
    ws.send(json.dumps({"hello": ws.id, "pid": os.getpid()}))
    for message in ws:
        app.send(message, to=room)


@app.get("/count/<room>")
def count(request: Any, room: str) -> str:
    return str(app.rooms.count(room, cluster=True))
