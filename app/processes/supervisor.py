"""Start child processes, watch them, and stop them in order.

Used by `jobrunner up` (Redis, workers, API in the foreground) and by the shared
background service of `jobrunner run` (Redis and workers). Children are stopped
in the reverse order of their tiers: the API first (no new jobs), then the
workers (they finish or release what they hold), then Redis (it flushes the AOF).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from app.processes.procs import child_env, http_ok, popen_kwargs, python_module
from app.settings import Settings, SettingsError

TIER_REDIS, TIER_WORKERS, TIER_API = 0, 1, 2

# How long each kind of child gets to exit after SIGTERM before it is killed.
API_GRACE_S = 15.0  # the API server's graceful timeout (10 s, serve.py) and a margin
REDIS_GRACE_S = 30.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    tier: int
    grace_s: float
    # Copies the child's output to its log file and to our stderr (Supervisor.spawn's tee).
    pump: threading.Thread | None = None
    started: float = field(default_factory=time.monotonic)
    # Called just before the child is asked to stop (Redis: to say what the stop may lose).
    before_stop: Callable[[], None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP ask to stop; a second signal asks to hurry (kill)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0
        self.last: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.last = signum
        self.event.set()

    def install(self) -> StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    @property
    def hurry(self) -> bool:
        return self.count > 1


log = logging.getLogger("jobrunner")


def say(message: str, level: int = logging.INFO) -> None:
    """A line of the CLI or of the background service, in the log format of every part."""
    log.log(level, message)


def warn(message: str) -> None:
    say(message, logging.WARNING)


class Supervisor:
    def __init__(self, signals: StopSignals, report: Callable[[str], None] = warn) -> None:
        self.signals = signals
        self.report = report
        self.children: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        tier: int,
        grace_s: float,
        output: IO[bytes] | None = None,
        tee: Path | None = None,
    ) -> Child:
        """Start a child; `output` (a log file) takes its stdout and stderr, else ours.
        With `tee`, its output goes both to our stderr and to the end of that file."""
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if tee is not None else output,
            stderr=subprocess.STDOUT if output is not None or tee is not None else None,
            **popen_kwargs(die_with_parent=True),
        )
        child = self.adopt(name, proc, tier, grace_s)
        if tee is not None:
            assert proc.stdout is not None
            child.pump = threading.Thread(target=_tee, args=(proc.stdout, open_log(tee)),
                                          name=f"{name}-output", daemon=True)
            child.pump.start()
        return child

    def adopt(self, name: str, proc: subprocess.Popen[bytes], tier: int, grace_s: float,
              before_stop: Callable[[], None] | None = None) -> Child:
        child = Child(name, proc, tier, grace_s, before_stop=before_stop)
        self.children.append(child)
        # Listed tier by tier (Redis, workers, API) whatever the order they were started in.
        self.children.sort(key=lambda c: c.tier)
        return child

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def watch(self, poll_s: float = 0.2) -> Child | None:
        """Block until a stop signal (None) or until a child exits (that child)."""
        while not self.signals.requested:
            dead = self.first_dead()
            if dead is not None:
                return dead
            self.signals.event.wait(poll_s)
        return None

    def wait_http(self, url: str, child: Child, timeout: float) -> bool:
        """Wait for `url` to answer 2xx while `child` runs and no stop is asked."""
        deadline = time.monotonic() + timeout
        # Once the server listens, a request waits in its backlog until a server process
        # takes it, so a refused connection is all there is to poll for: often, since the
        # time between two tries is start-up time lost, and a refused connect costs ~0.1 ms.
        while not http_ok(url, timeout=1.0):
            if child.proc.poll() is not None or self.signals.requested:
                return False
            if time.monotonic() > deadline:
                return False
            self.signals.event.wait(0.01)
        return True

    def stop_all(self) -> None:
        """Stop every child, tier by tier from the last started; kill those that linger."""
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            group = [c for c in self.children if c.tier == tier]
            self._stop_group(group)
        self.children.clear()

    def _stop_group(self, group: list[Child]) -> None:
        for child in group:
            if child.proc.poll() is None:
                if child.before_stop is not None:
                    child.before_stop()
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + max(c.grace_s for c in group)
        while any(c.proc.poll() is None for c in group):
            if self.signals.hurry or time.monotonic() > deadline:
                for child in group:
                    if child.proc.poll() is None:
                        self.report(f"{child.name} (pid {child.pid}) did not stop; killing it")
                        with contextlib.suppress(ProcessLookupError):
                            child.proc.kill()
                for child in group:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.proc.wait(5)
                break
            time.sleep(0.02)
        for child in group:
            if child.pump is not None:
                child.pump.join(2.0)  # its last lines; a grandchild may hold the pipe open
            code = child.proc.returncode
            if code not in (0, None, -signal.SIGTERM, -signal.SIGKILL):
                self.report(f"{child.name} (pid {child.pid}) exited with code {code}")


def describe_exit(child: Child) -> str:
    code = child.proc.returncode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"{child.name} (pid {child.pid}) {how} unexpectedly"


def open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _tee(src: IO[bytes], log_file: IO[bytes]) -> None:
    """Each line of `src` to the log file and to our stderr, until `src` ends. Whatever
    becomes of either, `src` is read to its end: a pipe no longer read would block the
    child at its next log line (a full disk hung the API)."""
    console: IO[bytes] | None = sys.stderr.buffer if sys.stderr is not None else None
    file: IO[bytes] | None = log_file
    try:
        for line in iter(src.readline, b""):
            if file is not None:
                try:
                    file.write(line)
                    file.flush()
                except (OSError, ValueError) as exc:  # a full disk, say: the console only
                    file = None
                    _say(console, f"jobrunner: cannot write {log_file.name!r} any more "
                                  f"({exc}); its lines go to the console only\n".encode())
            if console is not None:
                try:
                    console.write(line)
                    console.flush()
                except (OSError, ValueError):  # our stderr is gone: the file still gets it
                    console = None
    finally:
        with contextlib.suppress(OSError, ValueError):  # what it buffered cannot be written
            log_file.close()
        src.close()


def _say(console: IO[bytes] | None, text: bytes) -> None:
    if console is not None:
        with contextlib.suppress(OSError, ValueError):
            console.write(text)
            console.flush()


# --- the parts of a deployment ----------------------------------------------------------------


def start_workers(
    sup: Supervisor, settings: Settings, count: int, log_dir: Path | None = None
) -> list[Child]:
    """`count` worker processes (`python -m workers`), logging to the console or to files.
    With JOBRUNNER_WORKER_METRICS_PORT set, worker N serves its metrics on that port + N-1
    (one port cannot serve them all: the second worker exited at once)."""
    if settings.worker_metrics_port and settings.worker_metrics_port + count - 1 > 65535:
        raise SettingsError(f"JOBRUNNER_WORKER_METRICS_PORT {settings.worker_metrics_port} "
                            f"leaves no port for each of {count} workers (port + N-1)")
    return [start_worker(sup, settings, i, log_dir) for i in range(1, count + 1)]


def start_worker(sup: Supervisor, settings: Settings, number: int,
                 log_dir: Path | None = None) -> Child:
    """Worker `number` (worker-N), as start_workers starts it."""
    name = f"worker-{number}"
    own = (settings.with_(worker_metrics_port=settings.worker_metrics_port + number - 1)
           if settings.worker_metrics_port else settings)
    output = open_log(log_dir / f"{name}.log") if log_dir else None
    try:
        return sup.spawn(name, python_module("workers"), env=child_env(own.to_env()),
                         tier=TIER_WORKERS, grace_s=settings.shutdown_grace_s + 5.0,
                         output=output)
    finally:
        if output is not None:
            output.close()  # the child has its own copy


def api_argv(host: str, processes: int, threads: int) -> list[str]:
    return python_module(
        "app.cli", "api", "--host", host, "--processes", str(processes), "--threads", str(threads)
    )


def start_api(
    sup: Supervisor,
    settings: Settings,
    host: str,
    processes: int,
    threads: int,
    log_file: Path | None = None,
) -> Child:
    """The API process (`jobrunner api`); its settings travel in its environment. Its
    output goes to our stderr, and also to the end of `log_file` when one is given."""
    return sup.spawn(
        "api",
        api_argv(host, processes, threads),
        env=child_env(settings.to_env()),
        tier=TIER_API,
        grace_s=API_GRACE_S,
        tee=log_file,
    )
