"""``host_allowed`` remembers its answers (a pure function of its three arguments): the
remembered answer is the decided one, an unhashable ``allowed`` still works, and the memory
stays bounded however many Host values clients invent."""

from __future__ import annotations

import itertools

from wsflask import hosts

CASES = [
    ("localhost:8080", (), "127.0.0.1"),
    ("evil.example", (), "127.0.0.1"),
    ("evil.example", (), "0.0.0.0"),
    (None, (), "127.0.0.1"),
    ("api.example.com", (".example.com",), "0.0.0.0"),
    ("evilexample.com", (".example.com",), "0.0.0.0"),
    ("localhost", ("app.example",), "127.0.0.1"),
]


def test_remembered_answers_are_the_decided_ones() -> None:
    hosts._remembered.cache_clear()
    expected = [hosts._decide(*case) for case in CASES]
    assert True in expected and False in expected
    for _ in range(3):  # the first round decides, the next ones remember
        assert [hosts.host_allowed(*case) for case in CASES] == expected
    assert hosts._remembered.cache_info().hits >= 2 * len(CASES)


def test_an_allowed_list_is_decided_without_memory() -> None:
    allowed: list[str] = [".example.com"]
    assert hosts.host_allowed("a.example.com", allowed, "0.0.0.0") is True  # type: ignore[arg-type]
    assert hosts.host_allowed("a.evil.com", allowed, "0.0.0.0") is False  # type: ignore[arg-type]


def test_memory_is_bounded_by_invented_hosts() -> None:
    for n in itertools.islice(itertools.count(), 2000):
        assert hosts.host_allowed(f"h{n}.example", (), "127.0.0.1") is False
    assert hosts._remembered.cache_info().currsize <= 256
