"""envelopes.py: the JSON event-envelope codec (no sockets: it does no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wsflask.envelopes import QUOTE_LIMIT, decode, encode, error, quote


def test_encode_is_compact_and_adds_the_id_only_when_given() -> None:
    assert encode("news", {"n": 1}) == '{"event":"news","data":{"n":1}}'
    assert encode("ack", 6, id=7) == '{"event":"ack","data":6,"id":7}'
    assert encode("ping") == '{"event":"ping","data":null}'
    assert json.loads(encode("é", "ü", id="x")) == {"event": "é", "data": "ü", "id": "x"}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('{"event":"a","data":[1],"id":3}', {"event": "a", "data": [1], "id": 3}),
        ('{"event":"a"}', {"event": "a"}),
        (b'{"event":"b"}', {"event": "b"}),
        ("{not json", None),
        ("[1, 2]", None),
        ('{"event": 5}', None),
        ('{"data": 1}', None),
        ("1" * 100_000, None),  # over the int-digit limit: ValueError, not a crash
        ("[" * 100_000 + "]" * 100_000, None),  # RecursionError, not a crash
        (b"\xff\xfe", None),
    ],
)
def test_decode_gives_the_envelope_or_none_and_never_raises(
    message: str | bytes, expected: dict[str, Any] | None
) -> None:
    assert decode(message) == expected


def test_error_replies_are_bounded_whatever_the_client_sent() -> None:
    assert json.loads(error("UnknownEvent", "unknown event 'x'", 3)) == {
        "event": "error",
        "data": {"type": "UnknownEvent", "message": "unknown event 'x'"},
        "id": 3,
    }
    assert quote("a" * QUOTE_LIMIT) == "a" * QUOTE_LIMIT
    assert quote("a" * 100_000) == "a" * QUOTE_LIMIT + "..."
    long_id = json.loads(error("T", "m", "i" * 100_000))["id"]
    assert long_id == "i" * QUOTE_LIMIT + "..."
    for dropped in (10**30, -(2**63) - 1, [1] * 1000, {"k": "v"}, None):
        assert "id" not in json.loads(error("T", "m", dropped))
    assert json.loads(error("T", "m", 2**63 - 1))["id"] == 2**63 - 1
    assert len(error("T", "m" * 100_000)) < 400
