"""Serve the API under gunicorn, in this process (`jobrunner api`).

gunicorn's arbiter forks `processes` workers of the `gthread` class; each one
builds its own Flask app (and so its own Redis pool and app-registration
heartbeat, which would not survive a fork if built before it).

With a gRPC port (DAPR_GRPC_PORT, not 0), each worker also serves Dapr's gRPC API
(app/grpc) on its own grpc.Server, started in the worker after the fork (gRPC does not
survive a fork either) and sharing the worker's store. The workers bind the same port
with SO_REUSEPORT, so the kernel spreads gRPC connections over them as the arbiter's
shared socket spreads HTTP ones; the app registration of the worker's Flask app covers
both APIs. Measured on 2 cores (`jobrunner bench grpc-schedule`): see the README.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as _GunicornBaseLogger

from app.logs import setup as setup_logging
from app.processes.procs import connect_host, http_url
from app.settings import Settings

log = logging.getLogger("jobrunner.api")
# The API's level when JOBRUNNER_LOG_LEVEL is not set: its info lines are few.
DEFAULT_LOG_LEVEL = "info"

DEFAULT_PROCESSES = 2
DEFAULT_THREADS = 4  # measured: 2 x 4 beats 2 x 8 on 2 cores (jobrunner bench schedule)
GRACEFUL_TIMEOUT_S = 10


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


# This worker's gRPC server (one per gunicorn worker process), None when gRPC is off.
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


def gunicorn_logger(log_format: str, level: str) -> type[Any]:
    """A gunicorn logger class: gunicorn's own loggers (gunicorn.error, gunicorn.access) in
    jobrunner's log format, and jobrunner's loggers set up in the arbiter, so that its
    forked workers inherit them."""

    class GunicornLogger(_GunicornBaseLogger):  # type: ignore[misc]  # no type hints
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            ours = setup_logging(log_format, level)
            for logger in (self.error_log, self.access_log):
                for handler in logger.handlers:
                    handler.setFormatter(ours.formatter)

    return GunicornLogger


class _Gunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, settings: Settings, options: ServeOptions) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        settings, opts = self.settings, self.options
        listening = (
            f"app {settings.app_id!r} listening on "
            f"{http_url(opts.host, settings.http_port)} "
            f"({_count(opts.processes, 'process', 'processes')} x "
            f"{_count(opts.threads, 'thread', 'threads')}); "
            f"{grpc_listening(opts.host, settings.grpc_port)}"
            f"jobs are delivered to {settings.app_url}"
        )

        def when_ready(server: Any) -> None:
            log.info(listening)

        config: dict[str, Any] = {
            "bind": [_bind(opts.host, settings.http_port)],
            "workers": opts.processes,
            "threads": opts.threads,
            "worker_class": "gthread",
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "proc_name": f"jobrunner-api-{settings.app_id}",
            "loglevel": opts.log_level,
            "logger_class": gunicorn_logger(opts.log_format, opts.log_level),
            "errorlog": "-",
            "accesslog": "-" if opts.access_log else None,
            "when_ready": when_ready,
            # In the worker, as it exits (also on SIGINT's quick stop).
            "worker_exit": lambda server, worker: stop_grpc(),
            # gunicorn >= 25 opens a control socket at one path per user: two API
            # processes (two `jobrunner run`) would fight over it.
            "control_socket_disable": True,
        }
        for key, value in config.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        # Called in each worker, after the fork.
        from app.api.factory import create_app
        from app.store.store import Store

        store = Store(self.settings)
        app = create_app(self.settings, store)
        if self.settings.grpc_port:
            start_grpc(self.settings, store, self.options.threads)
        return app


def serve(settings: Settings, options: ServeOptions) -> int:
    """Run gunicorn until SIGTERM (graceful) or SIGINT (quick); returns its exit code."""
    # Imported once here, before gunicorn forks: each worker then only builds the app.
    import app.api.factory  # noqa: F401

    try:
        _Gunicorn(settings, options).run()
    except SystemExit as done:  # gunicorn ends by sys.exit
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
