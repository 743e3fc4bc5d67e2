"""One ``/metrics`` for pre-forked workers: each worker's text on a private Unix socket, merged.

Worker i answers every connection to ``<directory>/<i>.sock`` (a 0700 directory the
supervisor creates and removes) with its own ``Metrics.render()``. The worker asked for
``/metrics`` reads its siblings' (``SCRAPE_TIMEOUT``) and merges: each series summed over
the workers that answered, then again per worker with ``worker="i"``; ``wsflask_worker_up``
marks who answered. No HTTP on the sockets, no state shared between workers.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable

import gevent
import gevent.socket
from gevent.server import StreamServer

__all__ = ["WorkerMetrics", "merge"]

#: Seconds the answering worker waits for each sibling's text.
SCRAPE_TIMEOUT = 1.0
#: Bytes of metrics text read from a sibling at most.
MAX_TEXT = 4 << 20
#: Families whose sum over workers means nothing (a ratio): only the per-worker series.
_NOT_SUMMED_SUFFIX = "_ratio"


class WorkerMetrics:
    """Worker ``index`` of ``count``: serves ``render()`` on its socket, merges on request.

    Use ``start()`` before serving, ``stop()`` after; ``render_all`` is the page's renderer
    (``app.pages.render_metrics``).
    """

    def __init__(
        self, directory: str, count: int, *, index: int, render: Callable[[], str]
    ) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self.render = render
        self._server: StreamServer | None = None

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"{index}.sock")

    def start(self) -> None:
        """Listen on this worker's socket (replacing a dead predecessor's file)."""
        path = self.path(self.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        self._server = StreamServer(listener, self._answer)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=SCRAPE_TIMEOUT)
            self._server = None
        with contextlib.suppress(OSError):
            os.unlink(self.path(self.index))

    def _answer(self, sock: gevent.socket.socket, address: object) -> None:
        with gevent.Timeout(SCRAPE_TIMEOUT, False), contextlib.suppress(OSError):
            sock.sendall(self.render().encode())
        sock.close()

    def render_all(self) -> str:
        """Every worker's metrics merged (this worker's rendered here, the others fetched)."""
        jobs = {i: gevent.spawn(_fetch, self.path(i)) for i in range(self.count) if i != self.index}
        gevent.joinall(list(jobs.values()), timeout=SCRAPE_TIMEOUT + 0.5)
        texts: list[str | None] = []
        for i in range(self.count):
            if i == self.index:
                texts.append(self.render())
                continue
            job = jobs[i]
            job.kill(block=False)
            texts.append(job.value if job.successful() else None)
        return merge(texts)


def _fetch(path: str) -> str | None:
    """A sibling's text, or None when it does not answer in time (or at all)."""
    sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    data = b""
    try:
        with gevent.Timeout(SCRAPE_TIMEOUT):
            sock.connect(path)
            while len(data) <= MAX_TEXT and (chunk := sock.recv(65536)):
                data += chunk
    except (OSError, gevent.Timeout):
        return None
    finally:
        sock.close()
    return data.decode("utf-8", "replace") if len(data) <= MAX_TEXT else None


def merge(texts: list[str | None]) -> str:
    """Merge the Prometheus texts of workers ``0..n-1`` (None: did not answer).

    Per family: its ``# HELP``/``# TYPE``, each series summed over the workers that
    answered (not for ``*_ratio`` gauges), then each worker's series with ``worker="i"``;
    last ``wsflask_worker_up{worker="i"}`` (1 answered, 0 not: its series are missing).
    """
    families: dict[str, _Family] = {}
    for worker, text in enumerate(texts):
        if text is not None:
            _parse(text, str(worker), families)
    out: list[str] = []
    for name, family in families.items():
        out += [line for line in (family.help, family.type) if line is not None]
        if not name.endswith(_NOT_SUMMED_SUFFIX):
            out += [f"{series} {_fmt(value)}" for series, value in family.sums.items()]
        out += family.per_worker
    out += [
        "# HELP wsflask_worker_up 1 when the worker answered this scrape, 0 when it did not "
        "(its series are missing from the sums).",
        "# TYPE wsflask_worker_up gauge",
    ]
    out += [
        f'wsflask_worker_up{{worker="{i}"}} {0 if text is None else 1}'
        for i, text in enumerate(texts)
    ]
    return "\n".join(out) + "\n"


class _Family:
    __slots__ = ("help", "per_worker", "sums", "type")

    def __init__(self) -> None:
        #: the first ``# HELP`` and ``# TYPE`` lines seen
        self.help: str | None = None
        self.type: str | None = None
        self.sums: dict[str, float] = {}
        self.per_worker: list[str] = []


def _parse(text: str, worker: str, families: dict[str, _Family]) -> None:
    """Add one worker's samples to ``families`` (keyed by the name of their ``# TYPE``)."""
    family = families.setdefault("", _Family())
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = families.setdefault(parts[2], _Family())
                if parts[1] == "HELP" and family.help is None:
                    family.help = line
                elif parts[1] == "TYPE" and family.type is None:
                    family.type = line
            continue
        series, _, raw = line.rpartition(" ")
        if not series:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        family.sums[series] = family.sums.get(series, 0.0) + value
        family.per_worker.append(f"{_with_worker(series, worker)} {raw}")


def _with_worker(series: str, worker: str) -> str:
    """``name{a="b"}`` -> ``name{worker="w",a="b"}``; ``name`` -> ``name{worker="w"}``."""
    name, _, labels = series.partition("{")
    labels = labels.rstrip("}")
    return f'{name}{{worker="{worker}",{labels}}}' if labels else f'{name}{{worker="{worker}"}}'


def _fmt(value: float) -> str:
    """A sample value as Prometheus expects it (integers without ``.0``)."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
