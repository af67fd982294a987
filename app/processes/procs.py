"""Operating-system helpers for the CLI: ports, child processes, liveness, URLs.

POSIX only (fcntl, process groups); the parent-death signal is Linux only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.jobs.errors import JobrunnerError

# The folder that holds the `app` and `workers` packages.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class PortInUseError(JobrunnerError, RuntimeError):
    """A TCP port we were told to listen on is taken."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # Same option as gunicorn and redis-server: TIME_WAIT leftovers are not "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Raise PortInUseError, with a message, when the API could not listen there."""
    try:
        ipaddress.ip_address(host)
    except ValueError:  # granian binds only an address (a name was its traceback)
        raise PortInUseError(f"{what} host must be an IP address such as 127.0.0.1, ::1 "
                             f"or 0.0.0.0, got {host[:100]!r} (--host, JOBRUNNER_HTTP_HOST)"
                             ) from None
    try:
        free = port_is_free(host, port)
    except OSError as e:  # not an address of this machine, or not an address at all
        raise PortInUseError(f"{what} port {port} on {host!r} cannot be listened on: "
                             f"{e.strerror or e} (--host, JOBRUNNER_HTTP_HOST)") from None
    if not free:
        raise PortInUseError(f"{what} port {port} on {host} is already in use")


def connect_host(host: str) -> str:
    """Where to connect to reach a server listening on `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def http_url(host: str, port: int) -> str:
    host = connect_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --- child processes -------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        # Loaded in the parent: the forked child only makes the call.
        _libc = ctypes.CDLL(None, use_errno=True)


def _die_with(parent_pid: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    def preexec() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def die_with(parent_pid: int) -> None:
    """From now on, SIGKILL when `parent_pid` dies (Linux), for a child someone else
    started: granian's worker processes were left serving behind a `kill -9` of `api`.
    Not SIGTERM: one that came while the worker was still starting was taken by its
    shutdown handler and lost, and the worker served on (about 1 kill in 15)."""
    if _libc is not None:
        _die_with(parent_pid, signal.SIGKILL)()


def popen_kwargs(*, die_with_parent: bool) -> dict[str, Any]:
    """Popen arguments for a child that only we signal.

    Its own process group keeps a terminal's Ctrl-C away from it, so that we stop the
    children in order. `die_with_parent` (Linux) sends it SIGTERM if we are killed
    outright, so nothing is left running behind a `kill -9`.
    """
    kwargs: dict[str, Any] = {"process_group": 0}
    if die_with_parent and _libc is not None:
        kwargs["preexec_fn"] = _die_with(os.getpid())
    return kwargs


def private_folder(path: Path) -> None:
    """`path` made if missing, and its owner's alone (0700), as it holds what Redis holds
    (every app's registration and token) or its URL: one of ours that others may read
    (made before, or under a loose umask) is closed too; another user's is left alone."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(0o700)


def write_file(path: Path, data: bytes, tmp: Path | None = None, mode: int = 0o644) -> None:
    """`data` into `path` whole or not at all (written to `tmp`, then renamed), with `mode`
    (less the umask) from its first byte; an error names the file (a full disk's comes from
    the write, which named none: "[Errno 28] No space left on device" was all `up` said)."""
    tmp = tmp if tmp is not None else path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a leftover would keep its own mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(e.errno, e.strerror, str(path)) from None


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module` in a child, never from the caller's folder.

    `-P` keeps the working directory off `sys.path`: a user's own `app/` or `workers/`
    package there must not shadow ours.
    """
    return [sys.executable, "-P", "-m", module, *args]


def child_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment plus `overrides`, with this project importable by `python -m`.

    A child may run with another working directory (the user's app folder), where a
    source checkout of jobrunner is not on `sys.path` by itself.
    """
    env = dict(os.environ)
    env.update(overrides or {})
    paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")  # logs appear as they happen, also in files
    return env


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (its state first, then the
    parent, the process group...); None when they cannot be read (gone, or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    _, closed, fields = stat.rpartition(")")
    return fields.split() if closed else None


def _runs(fields: list[str]) -> bool:
    return bool(fields) and fields[0] not in ("Z", "X")  # a zombie, or dead


def process_start_time(pid: int) -> str | None:
    """When `pid` started, to tell a reused pid from the original; None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        if Path("/proc/self/stat").exists():
            return None  # Linux, and no such process
        return _ps_start_time(pid)  # no /proc (macOS, BSD)
    return fields[19] if len(fields) > 19 else None


def _ps_start_time(pid: int) -> str | None:
    try:
        out = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and not _runs(fields)


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False once it is gone (or no longer ours to signal)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_runs(pgid: int) -> bool:
    """Whether a process of the group runs: its zombies answer a signal too (a process
    that is a container's first, or a subreaper, is left orphans it may never reap)."""
    if not signal_group(pgid, 0):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:  # (no /proc: the signal's answer is all there is)
        return True
    group = str(pgid)
    return any(fields is not None and fields[2:3] == [group] and _runs(fields)
               for fields in (_stat_fields(e) for e in entries if e.isdigit()))


def process_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether `pid` runs (a zombie does not), and is the process that started at `start_time`.

    Without `start_time` this only says that some process has that pid now: never enough
    to signal a recorded pid, which may have been reused. With it, a process whose start
    time cannot be read is not taken for the recorded one.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    if _is_zombie(pid):
        return False
    return start_time is None or process_start_time(pid) == start_time


def stop_process(
    proc: subprocess.Popen[bytes], grace_s: float, sig: int = signal.SIGTERM
) -> int | None:
    """Signal `proc`, wait up to `grace_s`, then kill it. Returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    return proc.returncode


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    *,
    give_up: Callable[[], bool] = lambda: False,
    interval: float = 0.05,
) -> bool:
    """Poll `condition` until it holds (True), the deadline passes or `give_up` holds (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if give_up() or time.monotonic() > deadline:
            return False
        time.sleep(interval)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether a GET of `url` (http://host:port/path) answers 2xx within `timeout`.

    A bare HTTP/1.1 request on a socket: the CLI polls its own API with it at start-up,
    where urllib's import alone would cost it ~50 ms. A server that listens but has no
    process accepting yet (granian forks its workers after binding) keeps the request in
    its backlog: the answer then comes as soon as a worker takes it, within `timeout`.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
    except ValueError:
        return False
    if parts.scheme != "http":
        return False
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    name = f"[{host}]" if ":" in host else host
    request = f"GET {target} HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request.encode())
            head = b""
            while b"\r\n" not in head and len(head) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1][:1] == b"2"


def tail(path: Path, lines: int = 20, since: int = 0) -> str:
    """The last `lines` lines of a log file (from byte `since`), for error messages."""
    try:
        with path.open("rb") as f:
            f.seek(since)
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
