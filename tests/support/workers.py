"""Run jobrunner workers from tests: in this process (a thread with its own event
loop) or as real `python -m workers` processes (for SIGKILL / SIGTERM tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from app.settings import Settings
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


class ThreadWorker:
    """`Worker(settings).run(stop)` on a background thread with its own event loop.

    A worker's wake-up listener waits up to a second for a message before it sees a
    stop, so stopping also publishes one on its wake channel. `stop_soon()` asks it to
    stop and lets it finish in the background: it works on its own test's key prefix,
    so it cannot touch a later test. Any crash is raised by `reap()` (call it at the end
    of a module), naming that prefix.
    """

    _stopping: list[ThreadWorker] = []

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker: Any = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._waking: asyncio.Task[None] | None = None  # see _stop_now
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="test-worker", daemon=True)

    @classmethod
    def reap(cls, timeout: float = 30.0) -> None:
        """Join the workers stopping in the background; raise if one of them crashed."""
        stopping, cls._stopping = cls._stopping, []
        for w in stopping:
            w.stop(timeout)

    def start(self) -> ThreadWorker:
        self._thread.start()
        if not self._started.wait(10):
            raise AssertionError("in-process worker did not start within 10s")
        if self.error is not None:
            raise AssertionError(f"in-process worker failed to start: {self.error!r}")
        return self

    def _main(self) -> None:
        from workers.queue import RELEASE_WITHIN_S
        from workers.worker import Worker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            self.worker = Worker(self.settings)
            self._started.set()
            try:
                await self.worker.run(self._stop)
            finally:
                if self._waking is not None:  # done with the client before it is closed
                    await asyncio.wait([self._waking])
                await self.worker.queue.close(self.worker.stop_time_left(RELEASE_WITHIN_S))

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._started.set()
        finally:
            loop.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _ask_to_stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                self._loop.call_soon_threadsafe(self._stop_now)

    def _stop_now(self) -> None:
        """Set `stop` (in the worker's loop), then end the wake-up listener's wait: it looks
        at `stop` only between messages or after 1 s without one, so a stop would take up
        to that second. A wake-up is harmless: a claim takes only what is due."""
        assert self._stop is not None
        if self._stop.is_set():
            return
        self._stop.set()
        self._waking = asyncio.get_running_loop().create_task(self._wake_listener())

    async def _wake_listener(self) -> None:
        queue = self.worker.queue
        with contextlib.suppress(Exception):  # Redis may be away: the listener sees it too
            await asyncio.wait_for(queue.redis.publish(queue.keys.wake_channel, "0"), 0.5)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop and wait for the worker to finish."""
        self._ask_to_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"in-process worker ({self.settings.prefix}) did not stop "
                                 f"within {timeout}s")
        if self.error is not None:
            raise AssertionError(f"in-process worker ({self.settings.prefix}) crashed: "
                                 f"{self.error!r}") from self.error

    def stop_soon(self) -> None:
        """Ask the worker to stop; it finishes in the background (see the class doc)."""
        self._ask_to_stop()
        ThreadWorker._stopping.append(self)

    def __enter__(self) -> ThreadWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop_soon()


class WorkerProcess:
    """A real `python -m workers` process configured by `settings.to_env()`."""

    def __init__(self, settings: Settings, log_path: Path, **extra_env: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.env = {**os.environ, **settings.to_env(), "JOBRUNNER_LOG_LEVEL": "INFO",
                    "PYTHONUNBUFFERED": "1", **extra_env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> WorkerProcess:
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers"], cwd=REPO, env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the worker logged that it started (it claims right after)."""

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode} before it was ready:\n{self.log()}")
            return f"worker {self.pid} started" in self.log()

        wait_for(ready, timeout, interval=0.02, what=f"worker {self.pid} to start")

    def kill(self) -> None:
        """SIGKILL: no chance to release or settle anything."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} did not exit within {timeout}s of SIGTERM:\n{self.log()}"
            ) from None

    def cleanup(self) -> None:
        """Kill the process if it still runs (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class WorkerFleet:
    """Starts worker processes for one test and kills any left at teardown."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[WorkerProcess] = []

    def start(self, settings: Settings, wait_ready: bool = True, **extra_env: str) -> WorkerProcess:
        path = self.logdir / f"worker-{len(self.procs)}-{time.monotonic_ns()}.log"
        proc = WorkerProcess(settings, path, **extra_env)
        self.procs.append(proc)
        return proc.start(wait_ready=wait_ready)

    def cleanup(self) -> None:
        for p in self.procs:
            p.cleanup()

    def logs(self) -> str:
        return "\n".join(f"--- worker {p.proc.pid if p.proc else '?'}\n{p.log()}"
                         for p in self.procs)
