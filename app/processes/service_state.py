"""The shared service of `jobrunner run`: Redis and workers, found again by every `run`.

Everything lives in $JOBRUNNER_HOME (default ~/.jobrunner):

    service.json   who runs the service: kind ("background" or "up"), its pid and
                   start time, the Redis URL, key prefix, partitions, the children's
                   pids, log files. Written atomically once the service is ready;
                   removed by the service when it stops.
    service.lock   flock'ed while a command checks, starts or stops the service,
                   so two `jobrunner run` at once start one service, not two.
    logs/          service.log, redis.log, worker-N.log of the background service, and
                   api-<app id>.log of each `jobrunner run`'s API (app/processes/service_logs.py).
    data/          the background service's embedded Redis (AOF, port).

A state whose pid is gone (or reused by another process) is stale: it is cleaned
up and replaced. So is one without a start time: a pid alone does not prove which
process it is, and a process is only ever signalled once its start time matches the
recorded one. A file that is not a state of the right shape (not JSON, a field of the
wrong type or out of range) is corrupt: read as no state, and replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from app.jobs.errors import JobrunnerError
from app.processes.procs import (
    child_env,
    private_folder,
    process_alive,
    process_start_time,
    python_module,
    tail,
    wait_until,
    write_file,
)
from app.settings import MAX_PARTITIONS, Settings, redact_url

STATE_FILE = "service.json"
LOCK_FILE = "service.lock"
# Past this, service.json is not one jobrunner wrote (a state is a few hundred bytes).
MAX_STATE_BYTES = 1024 * 1024
LOG_DIR = "logs"
DATA_DIR = "data"
START_TIMEOUT_S = 60.0
# Workers get their grace period, then Redis its own: the whole stop can take this long.
STOP_TIMEOUT_S = 90.0
# Linux's pid_max is at most 2**22 (PID_MAX_LIMIT); other systems stay below it.
MAX_PID = 2**22
KINDS = ("background", "up")
GiveUp = Callable[[], bool]  # polled while waiting: True stops the wait


class ServiceError(JobrunnerError, RuntimeError):
    """The shared service cannot be started, found or stopped as asked."""


def jobrunner_home(raw: str | None = None) -> Path:
    raw = raw or Settings.from_env().home
    return Path(raw).expanduser().resolve()


@dataclass
class ProcInfo:
    name: str
    pid: int
    start: str | None = None

    @classmethod
    def of(cls, name: str, pid: int) -> ProcInfo:
        return cls(name, pid, process_start_time(pid))

    def alive(self) -> bool:
        return _alive(self.pid, self.start)


@dataclass
class ServiceState:
    kind: str  # "background" (started by `jobrunner run`) or "up" (a foreground `jobrunner up`)
    pid: int
    start: str | None
    redis_url: str
    redis_embedded: bool
    prefix: str
    partitions: int
    data_dir: str | None = None
    children: list[ProcInfo] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def alive(self) -> bool:
        return _alive(self.pid, self.start)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ServiceState:
        """The state in `text`; ValueError unless it has exactly the shape `to_json` writes."""
        raw = _fields(json.loads(text), _STATE_FIELDS, "service state")
        children = raw.get("children", [])
        raw["children"] = [ProcInfo(**_fields(c, _CHILD_FIELDS, "child")) for c in children]
        return cls(**raw)


def _alive(pid: int, start: str | None) -> bool:
    """Whether the recorded process still runs: only provable with its start time."""
    return start is not None and process_alive(pid, start)


# --- the shape of service.json: each field, whether it is required, what it may hold -------


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_pid(value: object) -> bool:
    return _is_int(value) and 0 < value <= MAX_PID


def _is_start(value: object) -> bool:
    return value is None or (isinstance(value, str) and value != "")


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_url(value: object) -> bool:
    if not _is_text(value):
        return False
    try:
        urlsplit(str(value)).port  # noqa: B018 (raises ValueError if unparsable)
    except ValueError:
        return False
    return True


def _is_time(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and 0 <= value <= 2**53
    except OverflowError:  # an int too large for a float
        return False


def _is_children(value: object) -> bool:
    return isinstance(value, list)  # each entry is checked as a child


def _is_logs(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


_Check = tuple[bool, Callable[[Any], bool]]  # (required, check of the value)
_STATE_FIELDS: dict[str, _Check] = {
    "kind": (True, lambda v: v in KINDS),
    "pid": (True, _is_pid),
    "start": (True, _is_start),
    "redis_url": (True, _is_url),
    "redis_embedded": (True, lambda v: isinstance(v, bool)),
    "prefix": (True, _is_text),
    "partitions": (True, lambda v: _is_int(v) and 1 <= v <= MAX_PARTITIONS),
    "data_dir": (False, lambda v: v is None or isinstance(v, str)),
    "children": (False, _is_children),
    "logs": (False, _is_logs),
    "started_at": (False, _is_time),
}
_CHILD_FIELDS: dict[str, _Check] = {
    "name": (True, _is_text),
    "pid": (True, _is_pid),
    "start": (False, _is_start),
}


def _fields(raw: object, fields: dict[str, _Check], what: str) -> dict[str, Any]:
    """`raw` as keyword arguments, if it is an object with exactly these valid fields."""
    if not isinstance(raw, dict):
        raise ValueError(f"a {what} must be a JSON object, not {type(raw).__name__}")
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"a {what} has unknown fields: {sorted(unknown)}")
    for name, (required, check) in fields.items():
        if name not in raw:
            if required:
                raise ValueError(f"a {what} lacks its {name!r}")
        elif not check(raw[name]):
            raise ValueError(f"a {what} has an invalid {name!r}: {raw[name]!r:.80}")
    return dict(raw)


class LockBusy(ServiceError):
    """Another jobrunner command held service.lock past the wait (a `stop` or a `run`
    starting the service can hold it for a minute)."""


class Interrupted(ServiceError):
    """A stop was asked while the processes a dead service left were being stopped: they
    and its state stay for the next command to clean up."""


class ServiceLock:
    """An exclusive flock on service.lock (released by the kernel if we die)."""

    def __init__(self, home: Path, timeout: float = START_TIMEOUT_S + 30.0) -> None:
        self.path = home / LOCK_FILE
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> ServiceLock:
        private_folder(self.path.parent)  # (the home: see write_state)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LockBusy(
                        f"another jobrunner command holds {self.path} for too long; try again"
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_state(home: Path) -> ServiceState | None:
    try:
        return ServiceState.from_json(_state_text(home / STATE_FILE))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None  # unreadable or of the wrong shape: treated like no state, and replaced


def _state_text(path: Path) -> str:
    """The state file's text; ValueError when it is not a regular file of at most
    MAX_STATE_BYTES (a FIFO blocked every command, /dev/zero filled the memory)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_STATE_BYTES:
            raise ValueError(f"{path} is not a state file")
        return file.read(MAX_STATE_BYTES).decode()


def write_state(home: Path, state: ServiceState) -> None:
    private_folder(home)
    # Readers see the old file or the new one, never half. Its owner's alone: it holds the
    # Redis URL, with its password when REDIS_URL has one (and Redis access is full trust).
    write_file(home / STATE_FILE, state.to_json().encode(), mode=0o600)


def remove_state(home: Path, pid: int) -> None:
    """Remove the state if it is still the one of `pid`."""
    state = read_state(home)
    if state is not None and state.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            (home / STATE_FILE).unlink()


def _signal(proc: ProcInfo | ServiceState, sig: int) -> bool:
    """Send `sig` to the recorded process, if it is still that one; whether it was sent.

    Its start time is checked right before: a pid alone may name any process by now.
    Where the kernel has pidfds, the signal goes to the process whose start time was
    checked, even if it dies and its pid is reused in between. PermissionError is raised.
    """
    if proc.start is None:
        return False
    pidfd_open = getattr(os, "pidfd_open", None)
    fd: int | None = None
    if pidfd_open is not None:
        try:
            fd = pidfd_open(proc.pid)
        except ProcessLookupError:
            return False
        except OSError:
            fd = None  # no pidfds here: the check and the kill below, as close as can be
    try:
        if not proc.alive():
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(proc.pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def _terminate(procs: list[ProcInfo], grace_s: float, give_up: GiveUp = lambda: False) -> None:
    # Only processes we can tell apart from a later one that got the same pid.
    alive = [p for p in procs if p.alive()]
    for p in alive:
        with contextlib.suppress(PermissionError):
            _signal(p, signal.SIGTERM)
    if not wait_until(lambda: not any(p.alive() for p in alive), grace_s, give_up=give_up):
        if give_up():
            raise Interrupted("stopped before the last service's processes had stopped")
        for p in alive:
            with contextlib.suppress(PermissionError):
                _signal(p, signal.SIGKILL)


def live_state(home: Path, give_up: GiveUp = lambda: False) -> ServiceState | None:
    """The running service's state; a stale one is cleaned up (call under the lock).
    Interrupted, with the stale state left, when `give_up` holds while that waits."""
    path = home / STATE_FILE
    state = read_state(home)
    if state is not None and state.alive():
        return state
    if state is not None:
        # Its supervisor is gone; stop whatever it left behind (workers before Redis).
        _terminate([c for c in state.children if c.name != "redis"], 15.0, give_up)
        _terminate([c for c in state.children if c.name == "redis"], 30.0, give_up)
    if path.is_dir() and not path.is_symlink():
        raise ServiceError(f"{path} is a folder, not jobrunner's state: remove it")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return None


def check_compatible(state: ServiceState, redis_url: str | None, settings: Settings) -> None:
    """An app's API must use the service's Redis and key layout, or its jobs never run."""
    where = f"The jobrunner service (pid {state.pid})"
    hint = "Run `jobrunner stop` first, or set JOBRUNNER_HOME to keep another service apart."
    if redis_url is not None and redis_url != state.redis_url:
        raise ServiceError(
            f"{where} uses Redis at {redact_url(state.redis_url)}, "
            f"not REDIS_URL={redact_url(redis_url)}. {hint}"
        )
    if (settings.prefix, settings.partitions) != (state.prefix, state.partitions):
        raise ServiceError(
            f"{where} uses key prefix {state.prefix!r} with {state.partitions} partition(s), "
            f"not {settings.prefix!r} with {settings.partitions}. {hint}"
        )


def _start_background(
    home: Path, overrides: dict[str, str], workers: int, timeout: float
) -> ServiceState:
    log_path = home / LOG_DIR / "service.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    since = log_path.stat().st_size if log_path.exists() else 0
    argv = python_module("app.cli", "service", "--home", str(home))
    argv += ["--workers", str(workers)]
    with log_path.open("ab") as log:
        # Its own session: it outlives this command and no terminal signal reaches it.
        proc = subprocess.Popen(
            argv,
            env=child_env(overrides),
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready() -> bool:
        state = read_state(home)
        return state is not None and state.pid == proc.pid

    # A read of a small file every 10 ms: cheap, and `run` starts its API as soon as it can.
    if wait_until(ready, timeout, give_up=lambda: proc.poll() is not None, interval=0.01):
        state = read_state(home)
        assert state is not None
        return state
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
        problem = f"did not come up within {timeout:.0f}s"
    else:
        problem = f"exited with code {proc.returncode}"
    detail = tail(log_path, 15, since=since)
    if not detail.strip():  # it could not write even that: a full disk, most often
        free = shutil.disk_usage(log_path.parent).free
        detail = f"(its log is empty; {free:,} bytes free on the disk of {log_path.parent})"
    raise ServiceError(f"the jobrunner service {problem} (log: {log_path}):\n{detail}".rstrip())


def ensure_service(
    home: Path,
    settings: Settings,
    *,
    redis_url: str | None,
    workers: int,
    timeout: float = START_TIMEOUT_S,
) -> tuple[ServiceState, bool]:
    """The running shared service, started in the background if none runs.

    `redis_url` is the one the user gave (REDIS_URL or --redis-url); None means an
    embedded Redis. Returns the state and whether this call started the service.
    """
    with ServiceLock(home):
        state = live_state(home)
        started = state is None
        if state is None:
            overrides = {"REDIS_URL": redis_url} if redis_url is not None else {}
            state = _start_background(home, overrides, workers, timeout)
        check_compatible(state, redis_url, settings)
        return state, started


def register_foreground(home: Path, state: ServiceState, timeout: float = 10.0,
                        give_up: GiveUp = lambda: False) -> bool:
    """Offer a foreground `jobrunner up` as the shared service, if none runs yet: whether
    it now is. LockBusy past `timeout`; Interrupted when `give_up` holds meanwhile."""
    with ServiceLock(home, timeout=timeout):
        if live_state(home, give_up) is not None:
            return False
        write_state(home, state)
        return True


def stop_service(home: Path, timeout: float = STOP_TIMEOUT_S) -> ServiceState | None:
    """Stop the shared service and wait for it to be gone; None if none was running."""
    if not os.path.lexists(home / STATE_FILE):
        return None  # nothing to lock for (the home may be read-only, or not a folder)
    with ServiceLock(home):
        state = live_state(home)
        if state is None:
            return None
        # live_state proved it is the service (its start time); _signal checks again.
        _signal(state, signal.SIGTERM)
        if not wait_until(lambda: not state.alive(), timeout, interval=0.05):
            _signal(state, signal.SIGKILL)
            wait_until(lambda: not state.alive(), 5.0)
        # Normally already stopped by the service itself, in order.
        _terminate([c for c in state.children if c.name != "redis"], 10.0)
        _terminate([c for c in state.children if c.name == "redis"], 30.0)
        remove_state(home, state.pid)
        return state
