"""Serve the API under granian, in this process (`jobrunner api`).

granian forks `processes` worker processes. Each reads requests on its own event loop: the
head in Rust (granian, HTTP/1.1), within JOBRUNNER_HTTP_HEADER_TIMEOUT, which also closes a
connection that sends nothing, at first or after an answer (the keep-alive timeout); the
body within JOBRUNNER_HTTP_BODY_TIMEOUT (app/processes/wsgi_bridge.py). Only a complete
request takes one of the process's `threads` threads, which run the Flask app; a plain
schedule request takes none, answered on the loop (app/api/fast_schedule.py, `on_loop`,
through a Redis connection of the process's own, built here after the fork). So clients
that trickle a head or a body, or hold connections open, cost a connection each (at most
JOBRUNNER_HTTP_MAX_CONNECTIONS per process), never a thread, and are closed in bounded
time. Measured against gunicorn (gthread, gevent): see the README's Performance section.

Each worker builds its own Flask app after the fork (and so its own Redis pool and
app-registration heartbeat, which would not survive a fork if built before it).

With a gRPC port (DAPR_GRPC_PORT, not 0), each worker also serves Dapr's gRPC API
(app/grpc) on its own grpc.aio server (a thread of its own), started in the worker
after the fork (gRPC does not survive a fork either) and sharing the worker's store; it
stops after the worker's last HTTP answer. The workers bind the same port with
SO_REUSEPORT, so the kernel spreads gRPC connections over them as it spreads HTTP ones;
the app registration of the worker's Flask app covers both APIs. Measured on 2 cores
(`jobrunner bench grpc-schedule`): see the README.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from functools import partial
from typing import Any

from app.logs import setup as setup_logging
from app.processes.procs import PortInUseError, connect_host, die_with, http_url
from app.settings import Settings

log = logging.getLogger("jobrunner.api")
# The API's level when JOBRUNNER_LOG_LEVEL is not set: its info lines are few.
DEFAULT_LOG_LEVEL = "info"

DEFAULT_PROCESSES = 2
# A request's thread waits on Redis: while Redis is away each waits up to the client's 5 s
# read timeout, so 4 a process let requests queue past the 8 s the chaos suite allows
# (tests/chaos/test_redis_unreachable.py); idle threads cost next to nothing.
DEFAULT_THREADS = 8
# A stopping worker answers the requests it has; one that has not stopped after this is
# killed.
GRACEFUL_TIMEOUT_S = 10
# Connections waiting to be accepted (the listen backlog).
BACKLOG = 1024
GRANIAN_LOGGER = "_granian"  # granian's own logger (its Rust part logs there too)


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    processes: int = DEFAULT_PROCESSES
    threads: int = DEFAULT_THREADS
    log_level: str = DEFAULT_LOG_LEVEL
    log_format: str = "plain"
    access_log: bool = False


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# This worker's gRPC server (one per worker process), None when gRPC is off.
_grpc_server: Any = None
GRPC_GRACE_S = 5.0  # calls in flight get this long when the worker stops


def start_grpc(settings: Settings, store: Any, threads: int) -> None:
    """Serve Dapr's gRPC API from this (forked) process until stop_grpc."""
    from app.grpc.server import create_server

    global _grpc_server
    server = create_server(settings, store, threads)
    server.start()
    _grpc_server = server


def stop_grpc() -> None:
    global _grpc_server
    server, _grpc_server = _grpc_server, None
    if server is not None:
        server.stop(GRPC_GRACE_S).wait(GRPC_GRACE_S + 1)


def grpc_listening(host: str, port: int) -> str:
    """The gRPC part of the API's "listening" line."""
    return f"gRPC on {_bind(connect_host(host), port)}; " if port else "gRPC off; "


class _GranianName(logging.Filter):
    """granian logs as `_granian` (its Rust part's module name): shown as `granian`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(GRANIAN_LOGGER):
            record.name = record.name[1:]
        return True


def _granian_logging(level: str) -> dict[str, Any]:
    """granian's logging configuration (applied by granian in every process it starts):
    its loggers hand their records to the root logger, so that they come out in
    jobrunner's format (app/logs.py, set up before the workers are forked)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            GRANIAN_LOGGER: {"handlers": [], "propagate": True, "level": level.upper()},
            "granian.access": {"handlers": [], "propagate": True, "level": "INFO"},
        },
    }


class HeldStop:
    """A stop signal that reaches a worker while it builds its app, given again once it
    serves. granian installs a worker's own handlers only after this loader returns; one
    that came before went to the handler inherited from granian's main process, which
    does nothing in a worker, so the worker served on until granian killed it
    GRACEFUL_TIMEOUT_S later (a Ctrl-C in `jobrunner up`'s first second took 10 s)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        # One that came between the fork and this loader: the inherited handler (granian's
        # main-process server's) marked that server's copy here, if granian still does.
        inherited = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
        stopped = getattr(inherited, "interrupt_signal", False) is True
        self.signum: int | None = signal.SIGTERM if stopped else None
        for signum in self.SIGNALS:
            signal.signal(signum, self._hold)

    def _hold(self, signum: int, frame: object) -> None:
        self.signum = signum

    def give_again(self) -> None:
        """Called once granian's handlers are in place (the app's start hook)."""
        if self.signum is not None:
            os.kill(os.getpid(), self.signum)


def _on_start(settings: Settings, store: Any, threads: int, held: HeldStop) -> None:
    if settings.grpc_port:
        start_grpc(settings, store, threads)
    held.give_again()


def _worker_app(settings: Settings, options: ServeOptions, main_pid: int) -> Any:
    """The RSGI app of one worker process: called by granian in the worker, after the fork."""
    held = HeldStop()  # first: building the app below is most of a worker's start
    die_with(main_pid)  # granian's main process (its main thread starts every worker)
    from app.api.bulk import PATHS as BULK_PATHS
    from app.api.factory import create_app
    from app.api.fast_schedule import EXTENSION as SHORTCUT
    from app.processes.wsgi_bridge import WsgiOnRsgi
    from app.store.store import Store

    store = Store(settings)
    flask_app = create_app(settings, store)
    # The schedule shortcut on the event loop, when it is on and Redis is a single node.
    shortcut = flask_app.extensions.get(SHORTCUT)
    fast = shortcut.on_loop if shortcut is not None and shortcut.use_loop() else None
    on_start = partial(_on_start, settings, store, options.threads, held)
    return WsgiOnRsgi(
        flask_app, threads=options.threads, body_timeout_s=settings.http_body_timeout_s,
        max_body_bytes=int(flask_app.config["MAX_CONTENT_LENGTH"]),
        # The bulk route (app/api/bulk.py) takes larger bodies, and only it.
        larger_bodies={("POST", path): settings.bulk_max_bytes for path in BULK_PATHS},
        multiprocess=options.processes > 1, on_start=on_start, on_stop=stop_grpc, fast=fast,
    )


def _refuse_if_claimed(settings: Settings) -> None:
    """AppClaimed (the CLI's one-line error) before granian starts: refused in the worker
    processes, each would print a traceback and granian would respawn it once (create_app
    checks again, for two processes started in the same moment)."""
    from app.api.factory import refuse_if_claimed
    from app.store.store import Store, app_binding

    store = Store(settings)
    try:
        refuse_if_claimed(settings, store, app_binding(settings.app_id, settings.api_token,
                                                       settings.app_api_token))
    finally:
        store.close()


def serve(settings: Settings, options: ServeOptions) -> int:
    """Run granian until SIGTERM or SIGINT (both graceful); returns its exit code."""
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    # Imported once here, before granian forks: each worker then only builds the app.
    import app.api.factory

    if settings.grpc_port:  # likewise (no gRPC object exists before the fork: only modules)
        import app.grpc.server  # noqa: F401

    handler = setup_logging(options.log_format, options.log_level)
    handler.addFilter(_GranianName())
    _refuse_if_claimed(settings)
    listening = (
        f"app {settings.app_id!r} listening on {http_url(options.host, settings.http_port)} "
        f"({_count(options.processes, 'process', 'processes')} x "
        f"{_count(options.threads, 'thread', 'threads')}); "
        f"{grpc_listening(options.host, settings.grpc_port)}"
        f"jobs are delivered to {settings.app_url}"
    )
    server = Server(
        "app.api:create_app",  # named in granian's messages only: _worker_app builds the app
        address=options.host,
        port=settings.http_port,
        interface=Interfaces.RSGI,
        workers=options.processes,
        http=HTTPModes.http1,  # HTTP/1.1 only: its header timeout then covers idle connections
        websockets=False,
        backlog=BACKLOG,
        backpressure=settings.http_max_connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(settings.http_header_timeout_s * 1000)),
            keep_alive=True,
        ),
        log_level=LogLevels(options.log_level),
        log_dictconfig=_granian_logging(options.log_level),
        log_access=options.access_log,
        respawn_failed_workers=True,
        workers_kill_timeout=GRACEFUL_TIMEOUT_S,
    )
    server.on_startup(lambda: log.info(listening))
    code = 0
    try:
        server.serve(target_loader=partial(_worker_app, settings, options, os.getpid()),
                     wrap_loader=False)
    except SystemExit as done:  # granian ends a failed run by sys.exit
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except RuntimeError as exc:  # granian's bind (Rust), as "Address already in use (os
        # error 98)" and, with RUST_BACKTRACE set, a backtrace: the port was taken since
        # the CLI looked (ensure_port_free), by another process or a connection's own port
        reason = str(exc).split("\n", 1)[0]
        if "(os error" not in reason:
            raise
        raise PortInUseError(f"the API cannot listen on {_bind(options.host, settings.http_port)}"
                             f": {reason}") from None
    log.info("app %r: the API has stopped%s", settings.app_id,
             f" (exit code {code})" if code else "")
    return code
