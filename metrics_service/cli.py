from __future__ import annotations

import argparse
import errno
import gc
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from metrics_service import export, settings, stats
from metrics_service.declaration import Setting
from metrics_service.ingest.policy import Policy
from metrics_service.settings import Config, ConfigError
from metrics_service.store.quarantine import quarantine_for
from metrics_service.store.sink import Sink

PROG = "metrics-service"

# The settings `serve` has a flag for; a flag wins over its METRICS_* variable.
FLAGGED: tuple[Setting, ...] = tuple(s for s in settings.SETTINGS if s.flag)
# CLI flag -> Config field.
SERVE_FLAGS = {s.flag: s.name for s in FLAGGED}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A small, fast behavior-analytics collector."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the collector",
        description=textwrap.fill(
            "Run the collector. Every setting is a METRICS_* environment variable; "
            "a flag wins over its variable.",
            width=_help_width(),
        ),
        epilog=serve_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for each in FLAGGED:
        assert each.flag is not None
        # A string, parsed with the variable's parser, so that a bad flag and a bad
        # variable get the same message; None when not given, so the variable holds.
        serve.add_argument(
            each.flag,
            dest=each.dest,
            help=_percent(
                f"{each.description()} [{each.var}; default: {each.shown_default()}]"
            ),
        )
    serve.add_argument("--reload", action="store_true", help="restart on code changes")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )
    stats.add_parser(commands)
    export.add_parser(commands)
    return parser


def serve_epilog(width: int | None = None) -> str:
    """The settings without a flag, and the other variables, with their defaults."""
    if width is None:
        width = _help_width()
    others = [s for s in settings.SETTINGS if not s.flag]
    column = max(len(s.var) for s in others) + 4
    lines = ["settings without a flag (environment variables only):"]
    for each in others:
        default = each.shown_default().replace(" ", _KEEP)
        text = f"{each.description()} [default:{_KEEP}{default}]"
        lines += _entry(each.var, text, column, width)
    lines += ["", "also read:"]
    for name, text in settings.OTHER_VARIABLES.items():
        if not settings.is_pattern(name):
            lines += _entry(name, text, column, width)
    return "\n".join(lines)


_KEEP = "\0"  # a space that wrapping must not break at


def _entry(name: str, text: str, column: int, width: int) -> list[str]:
    lines = textwrap.wrap(
        text,
        width=max(width, column + 20),
        initial_indent=f"  {name}".ljust(column),
        subsequent_indent=" " * column,
        break_on_hyphens=False,
        break_long_words=False,
    )
    return [line.replace(_KEEP, " ") for line in lines]


def _help_width() -> int:
    # As argparse wraps the rest of the help.
    return max(shutil.get_terminal_size().columns - 2, 40)


def _percent(text: str) -> str:
    return text.replace("%", "%%")  # argparse %-formats help texts


def warn_unknown_variables(env: Mapping[str, str]) -> None:
    log = logging.getLogger("metrics_service")
    for warning in settings.unknown_variables(env):
        log.warning("%s", warning)


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def serve_config(args: argparse.Namespace) -> Config:
    """The settings with flags applied, checked the way start-up would check them."""
    env = dict(os.environ)
    for each in FLAGGED:
        value = getattr(args, each.dest)
        if value is not None:
            env[each.var] = value
    try:
        config = Config.from_env(env)
        Policy.from_config(config)  # a broken taxonomy file stops start-up here
        quarantine_for(config)  # so does a rejected file that would mix with the sink
    except ConfigError as exc:
        raise ConfigError(_flag_name(exc.name, args), exc.message) from None
    try:
        sink = Sink(config.jsonl)
        sink.open()
        sink.close()
    except OSError as exc:
        raise ConfigError(
            _flag_name(settings.BY_NAME["jsonl"].var, args),
            f"cannot open {config.jsonl} for appending: {_open_reason(config, exc)}",
        ) from None
    check_listen(config, args)
    # The app factory reads the same variables, also after --reload restarts it.
    os.environ.update({k: v for k, v in env.items() if k.startswith("METRICS_")})
    return config


def check_listen(config: Config, args: argparse.Namespace) -> None:
    """Fail with one line, before uvicorn starts, when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(
            _flag_name(settings.BY_NAME["host"].var, args),
            f"cannot resolve {config.host!r}: {exc.strerror}",
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As uvicorn does, so a port left in TIME_WAIT by a restart is not refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            culprit = "port" if exc.errno == errno.EADDRINUSE else "host"
            name = settings.BY_NAME[culprit].var
            raise ConfigError(
                _flag_name(name, args),
                f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
            ) from None


def _open_reason(config: Config, exc: OSError) -> str:
    # mkdir says "File exists" when a parent is a file; name that file instead.
    for parent in config.jsonl.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    return exc.strerror or str(exc)


def _flag_name(var: str, args: argparse.Namespace) -> str:
    """The flag when it gave the value, else the variable."""
    each = settings.BY_VAR.get(var)
    if each is not None and each.flag and getattr(args, each.dest) is not None:
        return each.flag
    return var


def bind_warning(config: Config) -> str | None:
    """What to warn about when the service is reachable from other machines."""
    if is_loopback(config.host) or config.read_token:
        return None
    exposed = "read and reset"
    if not config.ingest_token:
        exposed = "write, read and reset"
    return (
        f"listening on {config.host}, which other machines can reach, without "
        f"METRICS_READ_TOKEN{'' if config.ingest_token else ' or METRICS_INGEST_TOKEN'}"
        f": anyone who can connect can {exposed} the events"
    )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    # First: a misspelt variable is often why a setting seems to have no effect.
    warn_unknown_variables(os.environ)
    try:
        config = serve_config(args)
    except ConfigError as exc:
        return fail(str(exc))
    warning = bind_warning(config)
    if warning:
        logging.getLogger("metrics_service").warning("%s", warning)
    import uvicorn

    from metrics_service.http.connections import GuardedHttp

    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "factory": True,
        "reload": args.reload,
        "access_log": args.access_log,
        "log_level": args.log_level,
        "timeout_graceful_shutdown": 10,
        # A deadline for request headers and a cap on open connections, which
        # uvicorn lacks (http/connections.py).
        "http": GuardedHttp,
    }
    logging.getLogger("metrics_service").setLevel(args.log_level.upper())
    # A request leaves a few hundred short-lived objects: at the default gen-0
    # threshold a collection would run every few requests.
    gc.set_threshold(10_000, 10, 10)
    # Ctrl-C (SIGINT) and SIGTERM stop the server gracefully; uvicorn then raises the
    # signal again, which this handler absorbs, so a stop exits 0 with no traceback
    # (and `make run` prints no error).
    signal.signal(signal.SIGTERM, _stopped)
    try:
        if args.reload:
            announce(config.host, config.port)
            uvicorn.run("metrics_service.app:create_app", **options)
            started = True
        else:
            started = _run(uvicorn.Config("metrics_service.app:create_app", **options))
    except KeyboardInterrupt:  # Ctrl-C before uvicorn took over the signal
        started = True
    if not started:
        return 3  # as uvicorn.run: the app did not start (its log says why)
    if args.log_level in VERBOSE:
        print(f"{PROG}: stopped", flush=True)
    return 0


# Log levels at which start-up prints the URLs and a stop says so.
VERBOSE = ("info", "debug", "trace")


def _stopped(signum: int, frame: object) -> None:
    """SIGTERM once uvicorn has shut down: nothing left to do."""


def _run(uvicorn_config: Any) -> bool:
    """uvicorn.run without reload: the URLs are printed once the socket listens, with
    its real port (METRICS_PORT=0 picks a free one). True when the app started."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit and self.servers:
                port = self.servers[0].sockets[0].getsockname()[1]
                if uvicorn_config.log_level in (None, *VERBOSE):
                    announce(uvicorn_config.host, port)

    server = Server(uvicorn_config)
    server.run()
    return bool(server.started)


def urls(host: str, port: int) -> dict[str, str]:
    """Where to point a browser and a client, for a server bound to host:port."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    base = f"http://{host}:{port}"
    return {
        "dashboard": f"{base}/",
        "ingest": f"{base}/api/metrics/event",
        "snapshot": f"{base}/api/metrics/behavior",
        "openapi": f"{base}/openapi.json",
    }


def announce(host: str, port: int) -> None:
    where = urls(host, port)
    print(
        f"{PROG}: serving on {where['dashboard']} (Ctrl-C to stop)\n"
        f"  dashboard  {where['dashboard']}\n"
        f"  send       POST {where['ingest']} (batches: POST .../events)\n"
        f"  snapshot   GET {where['snapshot']}\n"
        f"  API        {where['openapi']} (OpenAPI 3.1: every endpoint and answer)",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "stats":
        return stats.run(args)
    if args.command == "export":
        return export.run(args)
    parser.error(f"unknown command {args.command!r}")
    return 2
