from __future__ import annotations

import argparse
import errno
import gc
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from metrics_service import stats
from metrics_service.ingest.policy import Policy
from metrics_service.settings import Config, ConfigError
from metrics_service.store.sink import Sink

PROG = "metrics-service"

# CLI flag -> Config field; flags win over METRICS_* variables.
SERVE_FLAGS = {
    "--host": "host",
    "--port": "port",
    "--jsonl": "jsonl",
    "--capacity": "ring_capacity",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A small, fast behavior-analytics collector."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the collector")
    serve.add_argument("--host", help="bind address (METRICS_HOST)")
    serve.add_argument("--port", help="port (METRICS_PORT)")
    serve.add_argument("--jsonl", help="append-only sink file (METRICS_JSONL)")
    serve.add_argument(
        "--capacity", help="events kept in memory (METRICS_RING_CAPACITY)"
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
    return parser


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def serve_config(args: argparse.Namespace) -> Config:
    """The settings with flags applied, checked the way start-up would check them."""
    env = dict(os.environ)
    for flag, field in SERVE_FLAGS.items():
        value = getattr(args, flag[2:])
        if value is not None:
            env[f"METRICS_{field.upper()}"] = value
    try:
        config = Config.from_env(env)
        Policy.from_config(config)  # a broken taxonomy file stops start-up here
    except ConfigError as exc:
        raise ConfigError(_flag_name(exc.name, args), exc.message) from None
    try:
        sink = Sink(config.jsonl)
        sink.open()
        sink.close()
    except OSError as exc:
        raise ConfigError(
            _flag_name("METRICS_JSONL", args),
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
            _flag_name("METRICS_HOST", args),
            f"cannot resolve {config.host!r}: {exc.strerror}",
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As uvicorn does, so a port left in TIME_WAIT by a restart is not refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            name = "METRICS_PORT" if exc.errno == errno.EADDRINUSE else "METRICS_HOST"
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
    for flag, field in SERVE_FLAGS.items():
        if var == f"METRICS_{field.upper()}" and getattr(args, flag[2:]) is not None:
            return flag
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
    try:
        config = serve_config(args)
    except ConfigError as exc:
        return fail(str(exc))
    warning = bind_warning(config)
    if warning:
        logging.getLogger("metrics_service").warning("%s", warning)
    import uvicorn

    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "factory": True,
        "reload": args.reload,
        "access_log": args.access_log,
        "log_level": args.log_level,
        "timeout_graceful_shutdown": 10,
    }
    logging.getLogger("metrics_service").setLevel(args.log_level.upper())
    # A request leaves a few hundred short-lived objects: at the default gen-0
    # threshold a collection would run every few requests.
    gc.set_threshold(10_000, 10, 10)
    uvicorn.run("metrics_service.app:create_app", **options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "stats":
        return stats.run(args)
    parser.error(f"unknown command {args.command!r}")
    return 2
