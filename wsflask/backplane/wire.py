"""The bus wire format and channel names: what one node publishes for another, never pickle.

An ``Envelope`` is ``b"WSF1"``, a 4-byte header length, a compact JSON header and the raw
message body; ``decode()`` checks it strictly. With a shared key (``backplane_secret``) it is
wrapped as ``b"WSS1"`` + HMAC-SHA256 of the envelope + the envelope, and nothing else is
accepted. ``Router`` names the channels (one per room,
per node, and "everyone") and routes a broadcast target to them. No I/O, no delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import ids

__all__ = [
    "PREFIX", "BadEnvelope", "BadSignature", "Envelope", "Router", "decode", "encode", "node_of",
    "verify",
]  # fmt: skip

#: Channel name prefix shared by nodes and emitters.
PREFIX = "wsflask"
MAGIC = b"WSF1"
#: A signed envelope: this, a 32-byte HMAC-SHA256 of the envelope, then the envelope.
SIGNED = b"WSS1"
_MAC = 32
KINDS = ("t", "b", "g", "p", "q", "a")
_HEAD = struct.Struct(">I")
#: A header larger than this is refused (a header holds names and ids, not messages).
MAX_HEADER = 1 << 20


class BadEnvelope(ValueError):
    """Bytes on the bus that are not a well-formed wsflask envelope."""


class BadSignature(BadEnvelope):
    """An envelope without a valid HMAC where a shared key is configured (forged or from
    a sender without the key)."""


@dataclass(slots=True)
class Envelope:
    """One message on the bus.

    Header keys on the wire: ``o`` origin (a node or an emitter), ``k`` kind (``t`` text,
    ``b`` binary, ``g`` gap notice, ``p`` probe, ``q``/``a`` a group call's request and
    answers, JSON bodies: ``backplane/group.py``), ``s`` the origin's sequence number (one per
    envelope, however many channels carry it, so a node handles it once), ``r`` the target
    rooms (``null``: everyone), ``x`` connection ids to leave out.
    """

    origin: str
    kind: str
    body: bytes = b""
    seq: int = 0
    rooms: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def message(
        cls,
        origin: str,
        seq: int,
        data: str | bytes,
        rooms: list[str] | None,
        exclude: Iterable[str] = (),
    ) -> Envelope:
        """A text (``str``) or binary message from ``origin`` for ``rooms``."""
        if isinstance(data, str):
            return cls(origin, "t", data.encode("utf-8"), seq, rooms, list(exclude))
        return cls(origin, "b", bytes(data), seq, rooms, list(exclude))


def encode(envelope: Envelope, key: bytes | None = None) -> bytes:
    """Serialize ``envelope`` (JSON header + raw body), signed with ``key`` when given.
    Next: ``Backplane.publish``."""
    header = json.dumps(
        {
            "o": envelope.origin,
            "k": envelope.kind,
            "s": envelope.seq,
            "r": envelope.rooms,
            "x": envelope.exclude,
        },
        separators=(",", ":"),
    ).encode()
    raw = b"".join((MAGIC, _HEAD.pack(len(header)), header, envelope.body))
    if key is None:
        return raw
    return b"".join((SIGNED, hmac.new(key, raw, hashlib.sha256).digest(), raw))


def verify(payload: bytes, key: bytes | None) -> bytes:
    """The envelope inside a signed ``payload``; raises ``BadSignature`` unless its HMAC
    under ``key`` is valid (compared in constant time). Without a key, a signature is
    skipped unchecked (a node not yet given the key, during a rollout)."""
    signed = payload[:4] == SIGNED
    if key is None:
        return payload[4 + _MAC :] if signed else payload
    if not signed or len(payload) < 4 + _MAC:
        raise BadSignature("unsigned envelope")
    raw = payload[4 + _MAC :]
    if not hmac.compare_digest(payload[4 : 4 + _MAC], hmac.new(key, raw, hashlib.sha256).digest()):
        raise BadSignature("bad signature")
    return raw


def decode(payload: bytes, key: bytes | None = None) -> Envelope:
    """Parse bytes from the bus; raises ``BadEnvelope`` for anything malformed, and
    ``BadSignature`` when ``key`` is given and the envelope is not signed with it."""
    payload = verify(payload, key)
    if payload[:4] != MAGIC or len(payload) < 8:
        raise BadEnvelope("not a wsflask envelope")
    (size,) = _HEAD.unpack_from(payload, 4)
    if size > MAX_HEADER or len(payload) < 8 + size:
        raise BadEnvelope("truncated header")
    try:
        head = json.loads(payload[8 : 8 + size])
    except ValueError as exc:
        raise BadEnvelope("header is not JSON") from exc
    if not isinstance(head, dict):
        raise BadEnvelope("header is not an object")
    origin, kind, seq = head.get("o"), head.get("k"), head.get("s", 0)
    rooms, exclude = head.get("r"), head.get("x", [])
    if not isinstance(origin, str) or kind not in KINDS:
        raise BadEnvelope("bad origin or kind")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise BadEnvelope("bad sequence number")
    if not _strings(exclude) or not (rooms is None or _strings(rooms)):
        raise BadEnvelope("bad room or exclude list")
    body = bytes(payload[8 + size :])
    if kind == "t":
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadEnvelope("text body is not UTF-8") from exc
    return Envelope(origin, kind, body, seq, rooms, exclude)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def node_of(connection_id: str) -> str | None:
    """The node id inside a node-prefixed connection id, else None (a plain room name)."""
    return ids.node_of(connection_id)


class Router:
    """Channel names for one prefix, and the channels a broadcast target goes to.

    Args:
        prefix: the channel prefix (nodes and emitters must agree).
    """

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        #: the channel every node always subscribes to (``to=None``: everyone)
        self.everyone = f"{prefix}:all"

    def room(self, name: str) -> str:
        """The channel of room ``name``."""
        return f"{self.prefix}:room:{name}"

    def room_of(self, channel: str) -> str | None:
        """The room name of a room channel, else None."""
        head = f"{self.prefix}:room:"
        return channel[len(head) :] if channel.startswith(head) else None

    def node(self, node_id: str) -> str:
        """The channel of node ``node_id`` (its connections' personal rooms, its probes)."""
        return f"{self.prefix}:node:{node_id}"

    def presence_key(self, node_id: str) -> str:
        """The expiring Redis hash with node ``node_id``'s room memberships."""
        return f"{self.prefix}:presence:{node_id}"

    def alive_key(self, node_id: str) -> str:
        """The Redis key whose TTL is node ``node_id``'s heartbeat (``liveness.py``)."""
        return f"{self.prefix}:alive:{node_id}"

    def gone_key(self, node_id: str) -> str:
        """Where a lapsed node's memberships move (same TTL) for the survivors' notices."""
        return f"{self.prefix}:gone:{node_id}"

    @property
    def nodes_key(self) -> str:
        """The Redis set of node ids that wrote presence."""
        return f"{self.prefix}:nodes"

    def route(
        self, rooms: str | Iterable[str] | None, local_node: str | None = None
    ) -> tuple[list[str], list[str] | None]:
        """``(channels, room names)`` for a broadcast to ``rooms`` (``None``: everyone).

        A connection id is a personal room, reserved (``Rooms.join`` refuses it), so it goes
        to its node's channel only, and needs none when it is one of ``local_node``'s.
        """
        if rooms is None:
            return [self.everyone], None
        names = [rooms] if isinstance(rooms, str) else list(dict.fromkeys(rooms))
        channels: list[str] = []
        for name in names:
            node = ids.node_of(name)
            if node is None:
                channels.append(self.room(name))
            if node is not None and node != local_node:
                channels.append(self.node(node))
        return list(dict.fromkeys(channels)), names
