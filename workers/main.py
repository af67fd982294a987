"""Run one worker process until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import start_http_server

from app.logs import setup as setup_logging
from app.settings import Settings, redact_url
from app.store.persistence import warn_at_start
from workers.queue import RELEASE_WITHIN_S
from workers.worker import Worker

log = logging.getLogger("jobrunner.worker")
# Info: a line per delivery, visible by default; `warning` at high rates (README: Logs).
DEFAULT_LOG_LEVEL = "info"


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(settings)
    # What start-up made lives as long as the process: out of the collector's sight, a
    # full collection scans only what came since (tens of ms before: a late trigger).
    gc.freeze()
    log.info("worker %d started: redis %s, concurrency %d", os.getpid(),
             redact_url(settings.redis_url), settings.concurrency)
    # Blocking, once, before the first claim: a Redis without AOF or RDB loses every job.
    warn_at_start(settings, log)
    try:
        await worker.run(stop)
    finally:
        await worker.queue.close(worker.stop_time_left(RELEASE_WITHIN_S))
    log.info("worker %d stopped", os.getpid())


def run_worker(settings: Settings) -> int:
    setup_logging(settings.log_format, settings.log_level or DEFAULT_LOG_LEVEL)
    if settings.worker_metrics_port:
        try:
            start_http_server(settings.worker_metrics_port, addr="127.0.0.1")
        except OSError as e:  # named: the CLI shows only the message
            raise OSError(e.errno, f"{e.strerror}: 127.0.0.1:{settings.worker_metrics_port} "
                                   "(JOBRUNNER_WORKER_METRICS_PORT)") from None
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    with contextlib.suppress(ImportError):  # uvloop is optional off Linux/macOS
        import uvloop

        run = uvloop.run
    try:
        run(_main(settings))
    except Exception:
        # Not a hang: what was delivered is settled, the rest released or left to its
        # lease, and the exit code tells whoever runs the worker to start another.
        log.exception("worker %d failed", os.getpid())
        return 1
    return 0
