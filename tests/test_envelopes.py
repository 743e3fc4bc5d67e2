"""envelopes.py: the JSON event-envelope codec (no sockets: it does no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wsflask.envelopes import decode, encode


def test_encode_is_compact_and_adds_the_id_only_when_given() -> None:
    assert encode("news", {"n": 1}) == '{"event":"news","data":{"n":1}}'
    assert encode("ack", 6, id=7) == '{"event":"ack","data":6,"id":7}'
    assert encode("ping") == '{"event":"ping","data":null}'
    assert json.loads(encode("é", "ü", id="x")) == {"event": "é", "data": "ü", "id": "x"}


@pytest.mark.parametrize(("message", "expected"), [
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
])
def test_decode_gives_the_envelope_or_none_and_never_raises(
        message: str | bytes, expected: dict[str, Any] | None) -> None:
    assert decode(message) == expected
