"""Config: the defaults of ARCHITECTURE.md §4, validation messages, environment loading."""

from __future__ import annotations

import dataclasses
import re
import resource

import pytest

from wsflask.config import FD_RESERVE, Config, _parse
from wsflask.errors import ConfigError
from wsflask.protocol import Limits


def test_defaults_follow_the_architecture_decisions() -> None:
    config = Config()
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.handshake_timeout == 5.0
    assert (config.max_header_bytes, config.max_headers) == (16384, 100)
    assert config.max_message_size == 1 << 20 and config.fragment_overhead == 256
    assert (config.ping_interval, config.pong_timeout) == (30.0, 10.0)
    assert (config.close_timeout, config.shutdown_grace) == (5.0, 10.0)
    assert config.max_backpressure == 1 << 20 and config.backpressure_policy == "close"
    assert config.allowed_origins == () and config.max_connections_per_ip == 0
    assert config.max_connections is None and config.read_size == 65536


def test_every_field_is_documented_with_its_default() -> None:
    doc = Config.__doc__ or ""
    for spec in dataclasses.fields(Config):
        assert f"    {spec.name}: " in doc, f"{spec.name} is not documented"
    # user-facing text (``wsflask config default`` prints it): no internal test-battery ids
    assert re.findall(r"\b[A-Z]{2}-\d{2}\b", doc) == []


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"port": 70000}, ["port=70000", "0 to 65535"]),
        ({"max_message_size": 0}, ["max_message_size=0", "1 to"]),
        ({"handshake_timeout": -1.0}, ["handshake_timeout=-1.0", "range"]),
        ({"backpressure_policy": "block"}, ["backpressure_policy='block'", "'close' or 'drop'"]),
        ({"max_connections": 0}, ["max_connections=0"]),
        ({"read_size": 10}, ["read_size=10", "1024"]),
        ({"port": "80"}, ["port='80'", "integer"]),
        ({"close_timeout": True}, ["close_timeout=True", "number"]),
        ({"allowed_origins": "https://a.example"}, ["allowed_origins", "tuple"]),
        ({"keyfile": "k.pem"}, ["keyfile='k.pem'", "certfile"]),
        ({"host": ""}, ["host=''"]),
    ],
)
def test_invalid_values_name_key_value_and_range(
    changes: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**changes)  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, ValueError)


def test_frozen_and_replace_validates() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    assert config.replace(port=9000).port == 9000 and config.port == 8080
    with pytest.raises(ConfigError, match="port=-1"):
        config.replace(port=-1)
    with pytest.raises(ConfigError, match="unknown setting"):
        config.replace(prot=1)


def test_from_env_parses_each_kind_and_overrides_win() -> None:
    environ = {
        "WSFLASK_PORT": "9001",
        "WSFLASK_CLOSE_TIMEOUT": "1.5",
        "WSFLASK_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "WSFLASK_MAX_CONNECTIONS": "none",
        "WSFLASK_CERTFILE": "",
        "WSFLASK_BACKPRESSURE_POLICY": "drop",
        "OTHER_PORT": "1",
    }
    config = Config.from_env("WSFLASK", environ, host="0.0.0.0", port=9002)
    assert config.port == 9002 and config.host == "0.0.0.0"
    assert config.close_timeout == 1.5 and config.backpressure_policy == "drop"
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.max_connections is None and config.certfile is None


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"APP_PORT": "eighty"}, ["APP_PORT='eighty'", "int"]),
        ({"APP_PORT": "99999"}, ["port=99999", "65535"]),
        ({"APP_PONG_TIMEOUT": "soon"}, ["APP_PONG_TIMEOUT", "float"]),
    ],
)
def test_from_env_errors_name_the_variable(environ: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env("APP", environ)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("yes", True), ("On", True), ("0", False), ("false", False), ("off", False)],
)
def test_booleans_parse(raw: str, value: bool) -> None:
    assert _parse("X_FLAG", "bool", raw) is value


def test_boolean_garbage_is_an_error() -> None:
    with pytest.raises(ConfigError, match="X_FLAG='maybe'"):
        _parse("X_FLAG", "bool", "maybe")


def test_limits_and_connection_limit() -> None:
    config = Config(
        max_message_size=4096, fragment_overhead=8, max_header_bytes=2048, max_headers=10
    )
    assert config.limits() == Limits(
        max_message_size=4096, fragment_overhead=8, max_header_bytes=2048, max_headers=10
    )
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        assert Config().connection_limit() == max(1, soft - FD_RESERVE)
    assert Config(max_connections=7).connection_limit() == 7
