"""The frame-stack cache (``wsflask.framestacks``, ``wsflask/_framestacks.c``).

Each count is taken in a fresh interpreter (a subprocess), where nothing else has started or
ended a greenlet: ended greenlets hand their 16 KiB frame stacks to new ones, the cache holds
at most its capacity and gives the surplus back when lowered, larger chunks and threads pass
through untouched, and with ``WSFLASK_NO_EXTENSIONS`` nothing is kept and everything still
works. In this process: the argument checks, and ``Server.start()``, ``apply_config()`` and
``App.notify_started()`` setting the capacity from the config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import in_ci

from wsflask import App, framestacks
from wsflask.config import Config

pytestmark = pytest.mark.usefixtures("test_deadline")

PRELUDE = """
import json, sys, threading
import greenlet
from wsflask import framestacks

def work():
    def inner(n):
        return n + 1
    return inner(1)

def deep(n):
    return 0 if n == 0 else 1 + deep(n - 1)

def parked():
    greenlet.getcurrent().parent.switch()
    return work()

def counts():
    s = framestacks.stats()
    return {"installed": s.installed, "capacity": s.capacity, "held": s.held,
            "reused": s.reused, "mapped": s.mapped, "unmapped": s.unmapped}

out = {}
"""


def run_script(body: str, *, no_extensions: bool = False) -> dict[str, Any]:
    """Run PRELUDE + ``body`` in a fresh interpreter; ``body`` fills ``out``, printed as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "WSFLASK_NO_EXTENSIONS"}
    if no_extensions:
        env["WSFLASK_NO_EXTENSIONS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + body + "\nprint(json.dumps(out))"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def compiled() -> None:
    """The compiled cache; without it a skip, except under CI (``CI=true``), which builds it."""
    if framestacks.compiled is None:
        if in_ci():
            pytest.fail("wsflask._framestacks was not built (CI installs with a compiler)")
        pytest.skip("wsflask._framestacks is not built (no compiler at install)")


@pytest.fixture
def restore_capacity() -> Iterator[None]:
    """Put this process's cache back to the default capacity after the test."""
    yield
    framestacks.keep(Config().frame_stack_cache)


@pytest.mark.usefixtures("compiled")
def test_ended_greenlets_hand_their_frame_stacks_to_new_ones() -> None:
    out = run_script(
        """
out["before"] = counts()
out["kept"] = framestacks.keep(64)
results = [greenlet.greenlet(work).switch() for _ in range(1000)]
out["results_ok"] = results == [2] * 1000
out["after"] = counts()
"""
    )
    assert out["before"]["installed"] is False  # nothing is wrapped until keep()
    assert out["kept"] is True
    assert out["results_ok"]
    after = out["after"]
    # one chunk mapped for the first greenlet, then the same chunk over and over
    assert after["mapped"] <= 2, after
    assert after["reused"] >= 998, after
    assert after["unmapped"] == 0
    assert after["held"] == after["mapped"]  # every chunk is back in the cache
    assert after["capacity"] == 64


@pytest.mark.usefixtures("compiled")
def test_the_cache_holds_at_most_its_capacity_and_shrinks_when_asked() -> None:
    out = run_script(
        """
framestacks.keep(8)
gs = [greenlet.greenlet(parked) for _ in range(20)]
for g in gs:
    g.switch()
out["alive"] = counts()
out["results_ok"] = [g.switch() for g in gs] == [2] * 20
out["ended"] = counts()
framestacks.keep(3)
out["lowered"] = counts()
framestacks.keep(0)
for _ in range(5):
    greenlet.greenlet(work).switch()
out["off"] = counts()
"""
    )
    assert out["results_ok"]
    alive, ended = out["alive"], out["ended"]
    assert alive["held"] == 0 and alive["mapped"] >= 20  # twenty live greenlets, a stack each
    assert ended["held"] == 8  # full: the other twelve went back to the kernel
    assert ended["unmapped"] - alive["unmapped"] >= 12
    lowered = out["lowered"]
    assert (lowered["capacity"], lowered["held"]) == (3, 3)
    assert lowered["unmapped"] - ended["unmapped"] == 5  # the surplus, given back at once
    off = out["off"]
    assert (off["capacity"], off["held"]) == (0, 0)
    assert off["reused"] == lowered["reused"]  # 0 gave the last three back: none reused
    assert off["mapped"] - lowered["mapped"] == 5  # each greenlet maps its own ...
    assert off["unmapped"] - lowered["unmapped"] == 3 + 5  # ... and unmaps it at its end


@pytest.mark.usefixtures("compiled")
def test_larger_frame_stacks_and_threads_pass_through() -> None:
    """A deep recursion needs chunks beyond the first; threads get frame stacks too. The
    results are right, and what the cache counts is only ever 16 KiB chunks."""
    out = run_script(
        """
framestacks.keep(4)
sys.setrecursionlimit(20000)
out["deep"] = [greenlet.greenlet(deep).switch(5000) for _ in range(3)]
done = []
threads = [threading.Thread(target=lambda: done.append(work())) for _ in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["threads"] = done
out["counts"] = counts()
"""
    )
    assert out["deep"] == [5000] * 3
    assert out["threads"] == [2] * 16
    counts = out["counts"]
    assert counts["held"] <= 4
    assert counts["reused"] > 0  # the later greenlets and threads took the kept chunks
    assert counts["mapped"] + counts["reused"] >= 3 + 16


def test_the_pure_python_path_keeps_nothing() -> None:
    out = run_script(
        """
out["kept"] = framestacks.keep(64)
out["results_ok"] = [greenlet.greenlet(work).switch() for _ in range(50)] == [2] * 50
out["counts"] = counts()
out["compiled"] = framestacks.compiled is not None
""",
        no_extensions=True,
    )
    assert out["kept"] is False
    assert out["compiled"] is False
    assert out["results_ok"]
    assert out["counts"] == {
        "installed": False,
        "capacity": 0,
        "held": 0,
        "reused": 0,
        "mapped": 0,
        "unmapped": 0,
    }


@pytest.mark.parametrize("capacity", [-1, framestacks.MAX_CAPACITY + 1])
def test_a_capacity_out_of_range_is_refused(capacity: int) -> None:
    with pytest.raises(ValueError, match=r"capacity must be 0\.\.1024"):
        framestacks.keep(capacity)
    assert framestacks.stats().capacity != capacity


@pytest.mark.usefixtures("compiled", "restore_capacity")
def test_the_compiled_module_checks_its_argument_itself() -> None:
    module = framestacks.compiled
    assert module is not None
    with pytest.raises(ValueError, match=r"capacity must be 0\.\.1024"):
        module.keep(framestacks.MAX_CAPACITY + 1)
    with pytest.raises(TypeError):
        module.keep("64")


@pytest.mark.usefixtures("compiled", "restore_capacity")
def test_the_server_sets_the_capacity_at_start_and_on_reload(
    serve: Callable[..., Any],
) -> None:
    config = Config(port=0, close_timeout=1.0, handshake_timeout=2.0, frame_stack_cache=5)
    server = serve(None, config=config)
    assert framestacks.stats().installed
    assert framestacks.stats().capacity == 5
    server.apply_config(Config(port=0, close_timeout=1.0, handshake_timeout=2.0))
    assert framestacks.stats().capacity == Config().frame_stack_cache


@pytest.mark.usefixtures("compiled", "restore_capacity")
def test_an_app_under_another_server_sets_the_capacity() -> None:
    app = App(Config(frame_stack_cache=7))
    app.notify_started(("127.0.0.1", 1))
    try:
        assert framestacks.stats().capacity == 7
        framestacks.keep(3)
        app.notify_started(("127.0.0.1", 1))  # pywsgi calls it on every upgrade: only once
        assert framestacks.stats().capacity == 3
    finally:
        app.notify_stopped()


def test_the_setting_is_bounded_like_the_cache() -> None:
    from wsflask.errors import ConfigError

    with pytest.raises(ConfigError, match="frame_stack_cache"):
        Config(frame_stack_cache=framestacks.MAX_CAPACITY + 1)
    assert Config(frame_stack_cache=0).frame_stack_cache == 0
