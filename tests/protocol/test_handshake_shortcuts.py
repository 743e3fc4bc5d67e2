"""The request's one-match shortcuts agree with the step-by-step code that defines them.

``parse_request`` checks the usual head with single C-level matches (the request line, the
key, the Upgrade/Connection/Version block) and ``build_accept`` writes the usual 101 from
fixed text; the general code, kept for everything else, is the definition. Hypothesis feeds
both the same inputs, hostile ones included, and expects the same results and errors.
"""

from __future__ import annotations

import base64

from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsflask.protocol import handshake
from wsflask.protocol.errors import HandshakeError

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# near-keys: base64 characters, padding, and a few that must never pass
_KEY_CHARS = st.sampled_from([*_B64, "=", "-", "_", " ", "\n", "é", "\x00"])


def _outcome(fn: object, *args: object) -> object:
    try:
        return ("ok", fn(*args))  # type: ignore[operator]
    except HandshakeError as exc:
        return ("error", type(exc).__name__, str(exc), exc.status)


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.binary(min_size=16, max_size=16).map(lambda raw: base64.b64encode(raw).decode()),
        st.text(_KEY_CHARS, min_size=20, max_size=26),
        st.text(_KEY_CHARS, min_size=21, max_size=21).flatmap(
            lambda head: st.sampled_from(_B64).map(lambda c: f"{head}{c}==")
        ),
    )
)
@example("dGhlIHNhbXBsZSBub25jZQ==")
@example("dGhlIHNhbXBsZSBub25jZR==")  # not canonical: the last character has stray bits
@example("dGhlIHNhbXBsZSBub25jZQ==\n")
def test_key_pattern_is_exactly_the_canonical_key(key: str) -> None:
    assert bool(handshake._KEY.fullmatch(key)) == handshake._is_canonical_key(key)


_LINE_PART = st.sampled_from(
    [b"GET", b"get", b"P@ST", b"/", b"/a?b=c", b"/#x", b"http://h/p", b"HTTP/1.1", b"HTTP/1.0",
     b"HTTP/2.0", b"HTTP/1.10", b"HTTPS/1.1", b"", b"\x00", b"\xff", b"\x7f", b"a\tb"]
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(_LINE_PART, max_size=5), st.sampled_from([b" ", b"  ", b"\t"]))
@example([b"GET", b"/", b"HTTP/1.1"], b" ")
def test_request_line_match_equals_the_split(parts: list[bytes], sep: bytes) -> None:
    line = sep.join(parts)
    assert _outcome(handshake._parse_request_line, line) == _outcome(
        handshake._split_request_line, line
    )


# an index as _collect makes it: a name is absent or has one value or more
_CONNECTIONS = [["Upgrade"], ["upgrade"], ["UPGRADE"], ["keep-alive, Upgrade"], ["close"]]
_VALUES = {
    "host": st.sampled_from([[""], ["x"], ["x", "y"]]),
    "connection": st.sampled_from([*_CONNECTIONS, ["Upgrade", "Upgrade"]]),
    "upgrade": st.sampled_from([["websocket"], ["WebSocket"], ["h2c"], ["websocket"] * 2]),
    "sec-websocket-version": st.sampled_from([["13"], ["8"], ["13", "13"]]),
    "sec-websocket-key": st.sampled_from([["k"], ["k", "k"]]),
}


@settings(max_examples=600, deadline=None)
@given(st.fixed_dictionaries({}, optional=_VALUES))
def test_plain_upgrade_check_equals_the_full_checks(index: dict[str, list[str]]) -> None:
    assert _outcome(handshake._check_upgrade, index) == _outcome(handshake._upgrade_checks, index)
    if handshake._plain_upgrade(index):  # the shortcut only ever says yes to a passing head
        assert _outcome(handshake._upgrade_checks, index) == ("ok", None)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=16).map(lambda raw: base64.b64encode(raw).decode()))
@example("dGhlIHNhbXBsZSBub25jZQ==")
def test_usual_101_equals_the_general_one(key: str) -> None:
    assert handshake.build_accept(key) == handshake._build_accept_head(key, None, "", ())
    assert handshake.build_accept(key, headers=[]) == handshake._build_accept_head(
        key, None, "", ()
    )


def test_accept_key_is_the_rfc_example() -> None:
    # RFC 6455 §1.3: the sample nonce and its accept value
    assert handshake.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
