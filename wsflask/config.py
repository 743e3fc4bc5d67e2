"""Server settings: one frozen dataclass, each field with its default, unit and what it bounds.

``Config`` validates every value when made (``ConfigError`` names key, value and range),
reads ``WSFLASK_*`` variables (``from_env``) and TOML files (``load_toml``, ``from_mapping``,
``check_mapping``), and derives the protocol core's ``Limits``. No I/O beyond the environment,
the file it is asked to read and the open-file limit; precedence is the CLI's business.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .framestacks import MAX_CAPACITY as _MAX_FRAME_STACKS
from .protocol import DeflateSettings, Limits

__all__ = ["Backpressure", "Config", "load_toml"]

#: Descriptors kept free when ``max_connections`` is derived from the open-file limit
#: (listener, log files, the backplane, DNS, the 503/429 shedding path).
FD_RESERVE = 64

_KIB = 1024
_MIB = 1024 * 1024
_GIB = 1024 * _MIB


class Backpressure(str, enum.Enum):
    """What a connection does when its outbox passes ``max_backpressure`` (a slow reader)."""

    #: close it with 1013 "try again later" (the default); counted
    CLOSE = "close"
    #: drop the message for that connection and keep it open; counted
    DROP = "drop"


def _rng(lo: float, hi: float) -> dict[str, Any]:
    return {"range": (lo, hi)}


@dataclass(frozen=True, slots=True)
class Config:
    """wsflask settings. Each attribute: default, unit, and the threat it bounds.

    Attributes:
        host: ``"127.0.0.1"``. Bind address; loopback unless exposed on purpose.
        port: ``8080``. TCP port; ``0`` picks a free one (tests).
        max_connections: ``None`` = open-file soft limit minus 64. Connections served at once
            (handshaking or open); over -> ``503``. Bounds descriptor exhaustion and memory.
        max_connections_per_ip: ``0`` = off. Connections per client IP; over -> ``429``.
            Bounds one host starving the others.
        handshake_timeout: ``5.0`` s. Absolute deadline for TLS plus the whole HTTP request;
            then the socket is closed (``408`` when a partial request came). Bounds slowloris.
        max_header_bytes: ``16384`` bytes. Size of the request head; over -> ``431``.
        max_headers: ``100`` header lines; over -> ``431``. Bounds header-count floods.
        max_message_size: ``1048576`` bytes (1 MiB). Largest frame and message; over -> close
            ``1009``. Bounds inbound memory per connection.
        fragment_overhead: ``256`` bytes charged per continuation frame against
            ``max_message_size``. Bounds floods of tiny fragments.
        ping_interval: ``30.0`` s between heartbeat pings; ``0`` sends none. Detects dead peers.
        pong_timeout: ``10.0`` s without any frame after a ping -> close ``1011``. Bounds
            half-open connections.
        close_timeout: ``5.0`` s to wait for the peer's Close (and for its FIN afterwards);
            then TCP is dropped. Bounds peers that never finish closing.
        shutdown_grace: ``10.0`` s that ``Server.stop()`` waits after sending ``1001`` before
            killing what is left. Bounds shutdown time.
        max_backpressure: ``1048576`` bytes queued per connection when the kernel refuses
            more; over -> ``backpressure_policy``. Bounds memory per slow reader.
        backpressure_policy: ``"close"`` (close ``1013`` "try again later") or ``"drop"``
            (discard the message); both are counted in metrics. What a slow reader costs.
        allowed_origins: ``()`` = same-origin or absent ``Origin`` only; ``("*",)`` = any; else
            exactly the listed origins (``"https://app.example"``; the list replaces the
            same-origin default). Bounds cross-site WebSocket hijacking.
        certfile: ``None``. PEM certificate chain; with it the server speaks TLS 1.2+ only.
        keyfile: ``None``. PEM private key for ``certfile`` (``None``: the key is in certfile).
        read_size: ``65536`` bytes read per wake-up. Bounds the inbound bytes taken per
            ``recv`` (and so per-connection memory of unread messages).
        backplane: ``None`` = rooms live in this process only. ``"redis://host:6379/0"``
            spans processes and machines (``pip install wsflask[redis]``); ``"memory://name"``
            joins Apps of one process (tests). Env: ``WSFLASK_BACKPLANE``.
        backplane_interval: ``5.0`` s between bus probes, presence refreshes and heartbeats;
            no probe echo for 2 intervals -> not ready; a node without a heartbeat for one
            interval + ``0.1 s + interval/4`` is lost (its members leave, with ``_left``).
        backplane_backoff_max: ``5.0`` s, the longest wait between reconnect attempts
            (exponential from 0.1 s, with jitter). Trades recovery time after an outage
            (under 5 s once Redis is back) against reconnect storms.
        backplane_queue: ``10000`` envelopes waiting to be published; over -> dropped and
            counted. Bounds memory while the bus is slow.
        compression: ``True``. Accept permessage-deflate (RFC 7692) when the client offers
            it (browsers always do); ``False`` serves every client uncompressed. Costs CPU
            and zlib memory per connection (below); saves bandwidth on text and JSON.
        compress_threshold: ``128`` bytes. Messages shorter than this go uncompressed
            (DEFLATE saves little on them and costs CPU); ``ws.send(data, compress=True)``
            forces it, ``compress=False`` opts a message out (RFC 7692 §8, CRIME).
        deflate_window_bits: ``12`` (log2 bytes: a 4 KiB LZ77 window), 9-15. Both the
            server's and the clients' max window bits. Bounds zlib memory per connection with
            context takeover: about 49 KiB at 12 (with ``deflate_mem_level=5``) against
            about 301 KiB at 15/memLevel 8 (2.4 GiB less for 10,000 connections). Smaller
            windows find fewer matches (a few % worse ratio on JSON). Below 15, a client whose
            offer lacks ``client_max_window_bits`` cannot be held to the window and is served
            uncompressed (browsers, Node ``ws`` and python-websockets all offer it).
        deflate_mem_level: ``5``, 1-9. zlib memLevel of the server's compressor: hash tables
            of ``1 << (level + 9)`` bytes. Lower: less memory and CPU, slightly worse ratio.
        deflate_no_context_takeover: ``False``. ``True`` asks for
            ``server_no_context_takeover`` and ``client_no_context_takeover``: no zlib state
            kept between messages (about 0-3 KiB per connection), room broadcasts compressed
            once for all members, no history shared across messages (RFC 7692 §8); worse ratio.
        max_pending_calls: ``128`` calls per connection waiting for the peer's ack
            (``ws.call``); over -> ``TooManyPendingCalls``, counted as the drop
            ``pending_calls``. Bounds memory per connection.
        call_timeout: ``10.0`` s that ``ws.call`` waits for the ack by default; then
            ``TimeoutError``. Bounds how long a silent peer holds a caller.
        max_json_depth: ``64`` levels of nested arrays/objects in a JSON route's envelope;
            deeper -> an error reply ``BadEnvelope``, the connection stays. Bounds parser work.
        max_event_name: ``128`` characters of an event name; longer -> an error reply
            ``BadEnvelope`` quoting a short prefix. Bounds what a name can cost.
        allowed_hosts: ``()`` = on a loopback bind (``127.0.0.1``, ``::1``, ``localhost``)
            only loopback ``Host`` names, any name on other binds; ``("*",)`` = any; else
            the listed names (any port; ``".example.com"`` adds its subdomains). Others
            get 400. Bounds DNS rebinding.
        fragment_timeout: ``30.0`` s a fragmented message may stay unfinished; over -> close
            ``1008`` (checked every second at most); ``0`` disables. Bounds held budgets.
        write_timeout: ``10.0`` s a blocking ``send()`` may wait for a reader that stopped;
            over -> TCP dropped, ``ConnectionClosed`` (1013), counted as a slow consumer.
            ``0`` disables.
        tcp_keepalive: ``True``. SO_KEEPALIVE on accepted sockets (idle 60 s), so dead peers
            are found even with the heartbeat off.
        connection_rate_per_ip: ``0`` (off). Handshakes per IP per ``connection_rate_window``
            (token bucket); over -> 429 with ``Retry-After``. Bounds reconnect storms.
        connection_rate_window: ``60.0`` s, the window of ``connection_rate_per_ip``.
        new_connection_delay: ``0.0`` s (off). Above 80 % of the connection cap each new
            handshake first waits this long (until occupancy is below 70 % again).
        resource_threshold: ``0.95``. Memory (RSS of the machine's RAM) or descriptor use
            (of RLIMIT_NOFILE) at or over this fraction -> new handshakes get 503; ``0``
            disables. Sampled at most once a second.
        reserved_connections: ``0``. Slots of ``max_connections`` kept for connections a
            ``before_upgrade`` hook marks ``{"priority": True}``.
        max_messages_per_second: ``0`` (off). Messages a connection may send per second on
            average (token bucket); over -> close ``1008``. Bounds floods.
        message_burst: ``0`` (= 2 s worth of ``max_messages_per_second``). The bucket size.
        circuit_breaker_failures: ``0`` (off). After this many consecutive resolver or
            ``before_upgrade`` failures (exceptions, 5xx) handshakes get 503 at once ...
        circuit_breaker_reset: ``5.0`` s ... until one trial request is let through.
        pressure_threshold: ``0`` (off). Memory or descriptor ratio at which the server
            degrades (warning: ping interval doubled, handshakes slowed; over 1.1 times it,
            critical: handshakes get 503 and idle connections without
            ``session["priority"]`` are shed with 1013 until pressure is back below it).
        backplane_secret: ``None``. A key shared by every node: envelopes on the bus are
            signed (HMAC-SHA256) and unsigned or forged ones are dropped and counted
            (``backplane_unsigned``). Env: ``WSFLASK_BACKPLANE_SECRET``.
        ca_file: ``None``. PEM CA bundle client certificates are verified against (with
            ``certfile``); a client certificate is then optional unless ...
        require_client_cert: ``False``. ``True`` (with ``ca_file``): mutual TLS, a client
            without a valid certificate fails the TLS handshake.
        idle_timeout: ``0.0`` = off; else s without a message from the peer (pings and pongs
            do not count) -> close ``1001`` "idle timeout". Bounds idle connections.
        max_missed_pongs: ``1`` consecutive heartbeat pings left unanswered for
            ``pong_timeout`` each -> close ``1011`` "ping timeout". Tolerance of lossy links.
        handshake_error_header: ``False``. ``True`` adds ``X-WebSocket-Error: <reason>`` to
            refusals the resolver or server decides (a debugging aid; it tells clients why).
        key_replay_ttl: ``0.0`` = off; else s a ``Sec-WebSocket-Key`` is remembered: the same
            key again -> ``400``. Bounds replayed handshakes (memory: 100,000 keys at most).
        log_queue: ``10000`` log records waiting for the CLI's log writer thread; over ->
            dropped and counted (``websocket_log_records_dropped_total``). Bounds log memory.
        frame_stack_cache: ``64`` freed 16 KiB interpreter frame stacks of ended connection
            greenlets kept for new ones (``wsflask.framestacks``), which saves a ``mmap``, a
            page fault and a ``munmap`` per connection; ``0`` keeps none. Bounds the memory
            kept (1 MiB at 64). Compiled path on Python 3.11+ only; one cache per process.
        heap_trim_drop: ``100``: once the open connections fell this many (and a quarter)
            below their peak since the last trim, the server gives the C heap's free memory
            back to the OS a second later (glibc ``malloc_trim``, ``wsflask.heap``; counted
            in ``websocket_heap_trims_total``); ``0`` never. Bounds what a drained server
            keeps: 1,000 closed deflate connections leave 34 MB resident instead of 83.
    """

    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=_rng(0, 65535))
    max_connections: int | None = field(default=None, metadata=_rng(1, 10_000_000))
    max_connections_per_ip: int = field(default=0, metadata=_rng(0, 10_000_000))
    handshake_timeout: float = field(default=5.0, metadata=_rng(0.001, 3600))
    max_header_bytes: int = field(default=16384, metadata=_rng(1 * _KIB, 1 * _MIB))
    max_headers: int = field(default=100, metadata=_rng(1, 10_000))
    max_message_size: int = field(default=1 << 20, metadata=_rng(1, 2 * _GIB))
    fragment_overhead: int = field(default=256, metadata=_rng(0, 64 * _KIB))
    ping_interval: float = field(default=30.0, metadata=_rng(0, 86400))
    pong_timeout: float = field(default=10.0, metadata=_rng(0.01, 86400))
    close_timeout: float = field(default=5.0, metadata=_rng(0.001, 3600))
    shutdown_grace: float = field(default=10.0, metadata=_rng(0, 3600))
    max_backpressure: int = field(default=1 << 20, metadata=_rng(1 * _KIB, 2 * _GIB))
    backpressure_policy: str = field(default="close", metadata={"choices": ("close", "drop")})
    allowed_origins: tuple[str, ...] = ()
    certfile: str | None = None
    keyfile: str | None = None
    read_size: int = field(default=65536, metadata=_rng(1 * _KIB, 16 * _MIB))
    backplane: str | None = None
    backplane_interval: float = field(default=5.0, metadata=_rng(0.05, 3600))
    backplane_backoff_max: float = field(default=5.0, metadata=_rng(0.1, 60))
    backplane_queue: int = field(default=10_000, metadata=_rng(1, 10_000_000))
    compression: bool = True
    compress_threshold: int = field(default=128, metadata=_rng(0, 2 * _GIB))
    deflate_window_bits: int = field(default=12, metadata=_rng(9, 15))
    deflate_mem_level: int = field(default=5, metadata=_rng(1, 9))
    deflate_no_context_takeover: bool = False
    # -- events and the app API (issue 15): add fields below this line --
    max_pending_calls: int = field(default=128, metadata=_rng(1, 1_000_000))
    call_timeout: float = field(default=10.0, metadata=_rng(0.001, 3600))
    max_json_depth: int = field(default=64, metadata=_rng(1, 512))
    max_event_name: int = field(default=128, metadata=_rng(1, 65536))
    # -- operability (issue 16): add fields below this line --
    idle_timeout: float = field(default=0.0, metadata=_rng(0, 86400 * 7))
    max_missed_pongs: int = field(default=1, metadata=_rng(1, 100))
    handshake_error_header: bool = False
    key_replay_ttl: float = field(default=0.0, metadata=_rng(0, 86400))
    log_queue: int = field(default=10_000, metadata=_rng(1, 10_000_000))
    # -- bounds and admission (issue 18): add fields below this line --
    allowed_hosts: tuple[str, ...] = ()
    fragment_timeout: float = field(default=30.0, metadata=_rng(0, 86400))
    write_timeout: float = field(default=10.0, metadata=_rng(0, 86400))
    tcp_keepalive: bool = True
    connection_rate_per_ip: int = field(default=0, metadata=_rng(0, 10_000_000))
    connection_rate_window: float = field(default=60.0, metadata=_rng(0.001, 86400))
    new_connection_delay: float = field(default=0.0, metadata=_rng(0, 60))
    resource_threshold: float = field(default=0.95, metadata=_rng(0, 1))
    reserved_connections: int = field(default=0, metadata=_rng(0, 10_000_000))
    max_messages_per_second: float = field(default=0.0, metadata=_rng(0, 10_000_000))
    message_burst: int = field(default=0, metadata=_rng(0, 10_000_000))
    circuit_breaker_failures: int = field(default=0, metadata=_rng(0, 1_000_000))
    circuit_breaker_reset: float = field(default=5.0, metadata=_rng(0.001, 3600))
    pressure_threshold: float = field(default=0.0, metadata=_rng(0, 1))
    backplane_secret: str | None = None
    ca_file: str | None = None
    require_client_cert: bool = False
    frame_stack_cache: int = field(default=64, metadata=_rng(0, _MAX_FRAME_STACKS))
    heap_trim_drop: int = field(default=100, metadata=_rng(0, 10_000_000))

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            _check(spec, getattr(self, spec.name))
        if not self.host:
            raise ConfigError("host='' is invalid: expected a host name or address")
        if isinstance(self.allowed_origins, str) or not all(
            isinstance(o, str) and o for o in self.allowed_origins
        ):
            raise ConfigError(
                f"allowed_origins={self.allowed_origins!r} is invalid: expected "
                "a tuple of non-empty origin strings, e.g. ('https://app.example',)"
            )
        if isinstance(self.allowed_hosts, str) or not all(
            isinstance(h, str) and h for h in self.allowed_hosts
        ):
            raise ConfigError(
                f"allowed_hosts={self.allowed_hosts!r} is invalid: expected a tuple of "
                "non-empty host names, e.g. ('app.example', '.example.com')"
            )
        if self.backplane is not None and not self.backplane.startswith(
            ("memory://", "redis://", "unix://")
        ):
            raise ConfigError(
                f"backplane={self.backplane!r} is invalid: expected a URL like "
                "'redis://127.0.0.1:6379/0' or 'memory://name'"
            )
        if self.keyfile and not self.certfile:
            raise ConfigError(f"keyfile={self.keyfile!r} is set without certfile: set both")

    @classmethod
    def from_env(
        cls, prefix: str = "WSFLASK", environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Config:
        """Build a Config from ``{prefix}_{FIELD}`` variables, then apply ``overrides``.

        Ints and floats are parsed as such, booleans from ``1/0/true/false/yes/no/on/off``,
        tuples from comma-separated lists, and ``none``/empty for optional fields.

        Raises:
            ConfigError: a variable does not parse or a value is out of range; the message
                names the variable.
        """
        values = cls.env_overrides(prefix, environ)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def env_overrides(
        cls, prefix: str = "WSFLASK", environ: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The settings that ``{prefix}_{FIELD}`` variables set, parsed (only those present).

        Raises:
            ConfigError: a variable does not parse; the message names the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            raw = env.get(f"{prefix}_{spec.name.upper()}")
            if raw is not None:
                values[spec.name] = _parse(f"{prefix}_{spec.name.upper()}", str(spec.type), raw)
        return values

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, base: Config | None = None) -> Config:
        """Apply ``mapping`` (a parsed TOML file: lists allowed for tuples) on ``base``.

        Raises:
            ConfigError: the first problem ``check_mapping()`` finds (unknown key, bad value).
        """
        problems = cls.check_mapping(mapping, base=base)
        if problems:
            raise ConfigError(problems[0])
        return (base or cls()).replace(**_from_toml_values(mapping))

    @classmethod
    def check_mapping(cls, mapping: Mapping[str, Any], *, base: Config | None = None) -> list[str]:
        """Every problem of ``mapping`` as a message naming key, value and allowed range."""
        names = {spec.name: spec for spec in dataclasses.fields(cls)}
        problems = []
        for key, value in mapping.items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown setting {key!r}{hint}")
                continue
            try:
                _check(names[key], _from_toml_values({key: value})[key])
            except ConfigError as exc:
                problems.append(str(exc))
        if not problems:
            try:
                (base or cls()).replace(**_from_toml_values(mapping))
            except ConfigError as exc:
                problems.append(str(exc))
        return problems

    def replace(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied and validated (``ConfigError`` if invalid)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def limits(self) -> Limits:
        """The protocol core's ``Limits`` for these settings (``Connection(limits=...)``)."""
        return Limits(
            max_message_size=self.max_message_size,
            fragment_overhead=self.fragment_overhead,
            max_header_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
        )

    def deflate_settings(self) -> DeflateSettings | None:
        """permessage-deflate settings (``Connection(deflate=...)``); None when disabled."""
        if not self.compression:
            return None
        nct = self.deflate_no_context_takeover
        return DeflateSettings(
            server_max_window_bits=self.deflate_window_bits,
            client_max_window_bits=self.deflate_window_bits,
            server_no_context_takeover=nct,
            client_no_context_takeover=nct,
            mem_level=self.deflate_mem_level,
            compress_threshold=self.compress_threshold,
        )

    def connection_limit(self) -> int:
        """``max_connections``, or the open-file soft limit minus a reserve when it is None."""
        if self.max_connections is not None:
            return self.max_connections
        try:
            import resource

            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft == resource.RLIM_INFINITY or soft <= 0:
                soft = 1 << 20
        except (ImportError, OSError, ValueError):  # no resource module (Windows)
            soft = 1024
        return max(1, soft - FD_RESERVE)


def _check(spec: dataclasses.Field[Any], value: Any) -> None:
    """Validate one field against its type and its ``range``/``choices`` metadata."""
    name, kind = spec.name, str(spec.type)
    if value is None and "None" in kind:
        return
    if kind.startswith("int") and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{name}={value!r} is invalid: expected an integer")
    if kind.startswith("float") and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise ConfigError(f"{name}={value!r} is invalid: expected a number of seconds")
    if kind.startswith("bool") and not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is invalid: expected true or false")
    if kind.startswith("str") and not isinstance(value, str):
        raise ConfigError(f"{name}={value!r} is invalid: expected a string")
    if "range" in spec.metadata:
        lo, hi = spec.metadata["range"]
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={value!r} is out of range: allowed {lo} to {hi}")
    if "choices" in spec.metadata and value not in spec.metadata["choices"]:
        allowed = " or ".join(repr(c) for c in spec.metadata["choices"])
        raise ConfigError(f"{name}={value!r} is invalid: allowed {allowed}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(key: str, kind: str, raw: str) -> Any:
    """Parse the environment string ``raw`` of variable ``key`` as the annotation ``kind``."""
    text = raw.strip()
    if "None" in kind and text.lower() in ("", "none"):
        return None
    try:
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("bool"):
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if kind.startswith("tuple"):
            return tuple(item.strip() for item in text.split(",") if item.strip())
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is invalid: expected {kind}") from None
    return text


def _from_toml_values(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """TOML has arrays, not tuples: ``allowed_origins = ["https://a"]`` becomes a tuple."""
    return {
        key: tuple(value) if isinstance(value, list) else value for key, value in mapping.items()
    }


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the TOML file at ``path`` into a dict; next: ``Config.from_mapping(data)``.

    Uses ``tomllib`` (Python 3.11+), else the ``tomli`` package if it is installed.

    Raises:
        ConfigError: the file cannot be read, is not valid TOML, or no TOML parser exists.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 only
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(
                f"cannot read {path}: TOML needs Python 3.11+ or the 'tomli' "
                "package on Python 3.10 (pip install tomli)"
            ) from None
    try:
        with open(path, "rb") as file:
            return dict(tomllib.load(file))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
