"""``logs.attach`` and ``App.run()``'s default handler: records cross the bounded queue to the
writer thread (never formatted or written in the hub), with their fields and tracebacks."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

from wsflask import logs


def test_attach_writes_one_logger_through_the_queue_with_its_fields() -> None:
    stream = io.StringIO()
    owner = logging.getLogger("wsflask.test_attach")
    owner.propagate = False
    owner.setLevel(logging.INFO)
    handler = logs.attach(owner, stream=stream)
    try:
        assert isinstance(handler, logs.BoundedQueueHandler)
        owner.info("connection %s", "open", extra={"id": "1f", "route": "/a b", "q": 'x"y'})
        try:
            raise ValueError("boom")
        except ValueError:
            owner.exception("it failed")
        logs.shutdown()  # drains the queue and removes the handler from ``owner``
    finally:
        owner.propagate = True
    assert handler not in owner.handlers
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith('connection open id=1f route="/a b" q="x\\"y"')
    assert lines[1].endswith("it failed") and "ValueError: boom" in stream.getvalue()


def test_a_queued_copy_keeps_the_record_and_leaves_the_original_alone() -> None:
    record = logging.LogRecord("wsflask.x", logging.INFO, __file__, 1, "a %s", ("b",), None)
    record.peer = "127.0.0.1:1"
    handler = logs.BoundedQueueHandler([], size=1)
    try:
        copy = handler._prepare(record)
    finally:
        handler.close()
    assert (copy.getMessage(), copy.args, vars(copy)["peer"]) == ("a b", None, "127.0.0.1:1")
    assert (copy.created, copy.name, copy.levelno) == (record.created, "wsflask.x", 20)
    assert (record.msg, record.args) == ("a %s", ("b",))


def test_app_run_default_handler_is_the_bounded_queue() -> None:
    """In a fresh process (pytest's own capture handler would make logging "configured")."""
    code = (
        "import logging; from wsflask import app, logs\n"
        "app._default_log_handler()\n"
        "(h,) = logging.getLogger('wsflask').handlers\n"
        "assert isinstance(h, logs.BoundedQueueHandler), h\n"
        "logging.getLogger('wsflask.access').info('connection open', extra={'id': 'z'})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.rstrip().endswith("INFO wsflask.access: connection open id=z")
