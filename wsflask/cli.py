"""The ``wsflask`` command: ``run`` an app, ``client`` to a server, ``config`` and ``frames``.

``run`` patches, imports the app, layers settings (TOML file < ``WSFLASK_*`` < flags) and
serves in this process or, with ``--workers N``, in pre-forked workers (``workers.py``) until
SIGTERM/SIGINT drains. Exit codes: 0 success, 1 failure, 2 usage error (``SYNOPSIS``).
Not done: no reloader, no daemonising (run it under systemd or a container runtime).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import logging
import os
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import frames_tool, inspect_tool, logs, reload
from .cli_client import CLIError, cmd_client
from .config import Config, load_toml
from .errors import ConfigError
from .protocol import speedups_active

if TYPE_CHECKING:
    from .app import App

__all__ = ["Settings", "collect_settings", "load_app", "main", "render_default_toml", "serve"]

ENV_PREFIX = "WSFLASK"
SYNOPSIS = """\
synopsis:
  wsflask run module:app [--host H] [--port P] [--workers N] [--config FILE]
                         [--log-format text|json] [--log-level LEVEL]
  wsflask client URL [--binary] [--subprotocol P]... [--header "Name: value"]... [--linger S]
  wsflask config check FILE
  wsflask config default
  wsflask frames [--from client|server] [--deflate] HEX [HEX ...]    (or - for stdin)

run serves until SIGTERM/SIGINT, then drains (1001 to every client). --workers N pre-forks N
processes on one port (N > 1 needs a backplane, e.g. WSFLASK_BACKPLANE=redis://...).
client sends stdin lines and prints what it receives; it exits 1 when the server closes with
a code other than 1000/1001. frames decodes captured frame bytes and names the first
RFC 6455 violation with the close code it gets. Exit codes: 0 success, 1 failure, 2 usage.
"""
logger = logging.getLogger("wsflask.cli")


# -- settings: TOML file < WSFLASK_* environment < flags -----------------------------------------


@dataclass
class Settings:
    """What ``run`` applies: ``Config`` overrides plus the logging choice.

    Attributes:
        overrides: ``Config`` fields to replace on the application's own config.
        log_format: "text" or "json".
        log_level: a ``logging`` level name.
    """

    overrides: dict[str, Any] = field(default_factory=dict)
    log_format: str = "text"
    log_level: str = "INFO"

    def apply(self, base: Config) -> Config:
        """``base`` with the overrides (``ConfigError`` names the key, value and range)."""
        return base.replace(**self.overrides)


def collect_settings(
    path: str | None, environ: Mapping[str, str], flags: Mapping[str, Any]
) -> Settings:
    """Merge a TOML file, ``WSFLASK_*`` variables and flags (non-None values), in that order.

    The file's ``[log]`` table and ``WSFLASK_LOG_FORMAT``/``WSFLASK_LOG_LEVEL`` set logging;
    the flags ``log_format``/``log_level`` win over both.

    Raises:
        ConfigError: the file is unreadable or has a bad key or value; a variable is invalid.
    """
    data = load_toml(path) if path else {}
    log_table = data.pop("log", {})
    problems = check_log_table(log_table)
    if problems:
        raise ConfigError(f"{path}: {problems[0]}")
    try:
        from_file = Config.from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    settings = Settings(overrides={key: getattr(from_file, key) for key in data})
    settings.overrides.update(Config.env_overrides(ENV_PREFIX, environ))
    settings.log_format = log_table.get("format", settings.log_format)
    settings.log_level = log_table.get("level", settings.log_level)
    settings.log_format = environ.get(f"{ENV_PREFIX}_LOG_FORMAT", settings.log_format)
    settings.log_level = environ.get(f"{ENV_PREFIX}_LOG_LEVEL", settings.log_level)
    for key, value in flags.items():
        if value is None:
            continue
        if key in ("log_format", "log_level"):
            setattr(settings, key, value)
        else:
            settings.overrides[key] = value
    return settings


def check_log_table(table: Any) -> list[str]:
    """Problems of a settings file's ``[log]`` table (``format``, ``level``)."""
    if not isinstance(table, dict):
        return [f"log={table!r} is invalid: expected a [log] table"]
    allowed = {"format": logs.FORMATS, "level": logs.LEVELS}
    problems = []
    for key, value in table.items():
        if key not in allowed:
            problems.append(f"unknown setting 'log.{key}': allowed format, level")
        elif not isinstance(value, str) or value.upper() not in {a.upper() for a in allowed[key]}:
            choices = " or ".join(repr(a) for a in allowed[key])
            problems.append(f"log.{key}={value!r} is invalid: allowed {choices}")
    return problems


# -- run ------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """``wsflask run module:app``: patch, load, configure, serve."""
    # Patch BEFORE the application module is imported: the app and the libraries it imports
    # (requests, redis, database drivers) must bind to gevent's cooperative socket, ssl,
    # threading and time. Patching later leaves references to the blocking originals behind,
    # and one blocking call freezes every connection of the process. wsflask itself never
    # patches and needs no patching (it uses gevent's sockets directly).
    from gevent import monkey

    monkey.patch_all()
    flags = {
        "host": args.host,
        "port": args.port,
        "log_format": args.log_format,
        "log_level": args.log_level,
    }
    settings = collect_settings(args.config, os.environ, flags)
    try:
        queue_size = int(settings.overrides.get("log_queue", logs.QUEUE_SIZE))
        logs.setup(settings.log_format, settings.log_level, queue_size=queue_size)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    app = load_app(args.app)
    base = app.config
    app.configure(settings.apply(base))
    logger.info("protocol speedups: %s", "compiled" if speedups_active() else "pure Python")

    def load() -> Config:
        return _reloaded_settings(args.config, flags, base)

    if args.workers != 1:  # pre-forked workers on one socket (wsflask/workers.py)
        from .workers import run_workers

        try:
            return run_workers(app, args.workers, reload_settings=load)
        except OSError as exc:
            raise CLIError(
                f"cannot listen on {app.config.host}:{app.config.port}: {exc.strerror or exc}"
            ) from None
    reload.install(app, load)
    return serve(app)


def _reloaded_settings(path: str | None, flags: Mapping[str, Any], base: Config) -> Config:
    """SIGHUP: file, environment and flags read again over the app's own settings; the log
    level applies at once (``ConfigError``/``ValueError``: nothing changes)."""
    settings = collect_settings(path, os.environ, flags)
    config = settings.apply(base)
    level = settings.log_level.upper()
    if level not in logs.LEVELS:
        raise ValueError(f"log level {settings.log_level!r} is invalid")
    logging.getLogger().setLevel(level)
    return config


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (``attribute`` defaults to ``app``) from the working dir.

    Raises:
        CLIError: the module or attribute does not exist, or it is not a wsflask ``App``.
    """
    from .app import App

    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if os.getcwd() not in sys.path:  # `wsflask run examples.chat:app` from the project root
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):  # the module itself, not its imports
            raise CLIError(
                f"cannot import {module_name!r}: no such module (run from the "
                "directory that contains it, or pass a dotted path)"
            ) from None
        raise
    app: Any = module
    for part in attribute.split("."):
        app = getattr(app, part, None)
    if not isinstance(app, App):
        raise CLIError(f"{module_name}:{attribute} is {type(app).__name__}, not a wsflask App")
    return app


def serve(app: App) -> int:
    """Serve ``app`` in this process until SIGTERM/SIGINT, then drain; return the exit code.

    Only for one process: ``--workers N`` goes to ``workers.run_workers`` instead, whose
    children each serve through ``workers._worker``.
    """
    server = app.make_server()
    try:
        server.start()
    except OSError as exc:
        raise CLIError(
            f"cannot listen on {app.config.host}:{app.config.port}: {exc.strerror or exc}"
        ) from None
    server.install_signal_handlers()
    logger.info(
        "serving on http://%s:%s/ (Ctrl-C or SIGTERM to stop)",
        server.server_host,
        server.server_port,
    )
    server.serve_forever()
    logger.info("stopped")
    return 0


# -- config ---------------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    """``wsflask config check FILE``: every problem, one per line; exit 1 if any."""
    data = load_toml(args.file)
    problems = check_log_table(data.pop("log", {})) + Config.check_mapping(data)
    for problem in problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.file}: OK ({len(data)} settings)")
    return 0


def cmd_config_default(args: argparse.Namespace) -> int:
    """``wsflask config default``: print every setting with its default, as TOML."""
    sys.stdout.write(render_default_toml())
    return 0


#: example values for the settings whose default is "unset"
_UNSET_EXAMPLES = {
    "max_connections": 10000,
    "certfile": "/etc/wsflask/cert.pem",
    "keyfile": "/etc/wsflask/key.pem",
    "backplane": "redis://127.0.0.1:6379/0",
}


def render_default_toml() -> str:
    """Every ``Config`` field with its default and its documentation, as a TOML file."""
    docs, defaults = field_docs(), Config()
    out = [
        "# wsflask settings (wsflask config default). Precedence: this file < WSFLASK_*",
        "# environment variables < command-line flags. Check with: wsflask config check FILE",
        "",
    ]
    for spec in dataclasses.fields(Config):
        out += [f"# {line}" for line in textwrap.wrap(docs.get(spec.name, ""), 96)]
        if "range" in spec.metadata:
            out.append("# allowed: {} to {}".format(*spec.metadata["range"]))
        value = getattr(defaults, spec.name)
        if value is None:
            example = _toml_value(_UNSET_EXAMPLES.get(spec.name, ""))
            out.append(f"# {spec.name} = {example}    (unset by default)")
        else:
            out.append(f"{spec.name} = {_toml_value(value)}")
        out.append("")
    out += [
        "[log]",
        "# how `wsflask run` logs: text (readable) or json (one object per line)",
        'format = "text"',
        f"# level: {', '.join(logs.LEVELS)}",
        'level = "INFO"',
        "",
    ]
    return "\n".join(out)


def field_docs() -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of ``Config``'s docstring."""
    section = inspect.cleandoc(Config.__doc__ or "").partition("Attributes:")[2]
    docs: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        entry = re.match(r"^ {4}(\w+): (.*)$", line)
        if entry:
            name = entry[1]
            docs[name] = entry[2]
        elif name and line.startswith(" " * 8):
            docs[name] += " " + line.strip()
    return {key: text.replace("``", "`") for key, text in docs.items()}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are valid TOML


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``wsflask`` argument parser (each sub-command sets ``func``)."""
    parser = argparse.ArgumentParser(
        prog="wsflask",
        description="wsflask command line",
        epilog=SYNOPSIS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wsflask {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="serve module:app until SIGTERM/SIGINT")
    run.add_argument("app", help="module:attribute, e.g. examples.chat:app")
    run.add_argument("--host", help="bind address (default: the app's, 127.0.0.1)")
    run.add_argument("--port", type=int, help="TCP port (default: the app's, 8080)")
    run.add_argument("--config", metavar="FILE", help="TOML settings file")
    run.add_argument("--log-format", choices=logs.FORMATS, help="text (default) or json")
    run.add_argument("--log-level", type=str.upper, choices=logs.LEVELS, help="default INFO")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="pre-forked worker processes on one port (N > 1 needs a backplane)",
    )
    run.set_defaults(func=cmd_run)

    client = commands.add_parser("client", help="interactive WebSocket client")
    client.add_argument("url", help="ws://host:port/path or wss://...")
    client.add_argument("--binary", action="store_true", help="send lines as binary messages")
    client.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        metavar="NAME",
        help="offer a subprotocol (repeatable, in order of preference)",
    )
    client.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable)",
    )
    client.add_argument("--timeout", type=float, default=10.0, help="handshake timeout, s")
    client.add_argument(
        "--linger",
        type=float,
        default=1.0,
        help="after stdin ends, keep printing until the server is quiet this long (s)",
    )
    client.set_defaults(func=cmd_client)

    config = commands.add_parser("config", help="check or print settings files")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a TOML settings file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)
    default = actions.add_parser("default", help="print every setting and its default")
    default.set_defaults(func=cmd_config_default)
    frames_tool.add_parser(commands)
    inspect_tool.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wsflask`` command; returns the exit code (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CLIError, ConfigError) as exc:
        print(f"wsflask: error: {exc}", file=sys.stderr)
        return 1


def _version() -> str:
    from . import __version__

    return __version__
