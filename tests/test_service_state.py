"""service.json as found on disk: only a process whose identity is proven is ever signalled,
and a document of the wrong shape is a corrupt state, never a traceback.

Each test has its own JOBRUNNER_HOME under tmp_path and starts its own `sleep` as the
"unrelated process" a stale or hand-edited state may name. No Redis is used: the URLs
written point at a port nothing listens on.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.processes.procs import PROJECT_ROOT, process_alive, process_start_time
from app.processes.service_state import (
    MAX_STATE_BYTES,
    STATE_FILE,
    ServiceLock,
    ServiceState,
    live_state,
    read_state,
    register_foreground,
    stop_service,
    write_state,
)
from tests.support.redis_proc import free_port
from tests.test_cli import CLI

# Nothing listens there: a port of this process's own slice (tests/support/redis_proc.py),
# handed out again only after the whole slice; never the shared 6379.
NOWHERE = f"redis://127.0.0.1:{free_port()}/0"
NO_SERVICE = "No jobrunner service is running."
_INHERITED = (
    "REDIS_URL",
    "REDIS_PORT",
    "APP_ID",
    "APP_PORT",
    "APP_URL",
    "DAPR_HTTP_PORT",
    "DAPR_GRPC_PORT",
)

Doc = dict[str, Any]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that has nothing to do with jobrunner."""
    proc = subprocess.Popen(["sleep", "1000"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "jrhome"
    path.mkdir()
    return path


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _INHERITED and not k.startswith("JOBRUNNER_")
    }
    env.update(PYTHONPATH=str(PROJECT_ROOT), JOBRUNNER_HOME=str(home))
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT
    )


def state_doc(pid: int, start: str | None, **changes: Any) -> Doc:
    doc: Doc = {
        "kind": "background",
        "pid": pid,
        "start": start,
        "redis_url": NOWHERE,
        "redis_embedded": False,
        "prefix": "jr",
        "partitions": 1,
        "data_dir": None,
        "children": [],
        "logs": {},
        "started_at": time.time(),
    }
    doc.update(changes)
    return doc


def write(home: Path, doc: object) -> None:
    (home / STATE_FILE).write_text(json.dumps(doc))


def start_of(proc: subprocess.Popen[bytes]) -> str:
    start = process_start_time(proc.pid)
    assert start is not None
    return start


def gone_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait(10)
    return proc.pid


# --- D1: a pid whose identity is not proven is never signalled ---------------------------

# How the state names the sleeper: by its own record, or as a child of a supervisor that is
# gone (which stop cleans up after). The start time: null, missing, another one, or a number.
Naming = Callable[[subprocess.Popen[bytes]], Doc]


def _own(start: object) -> Naming:
    def doc(proc: subprocess.Popen[bytes]) -> Doc:
        d = state_doc(proc.pid, None)
        if start is _MISSING:
            del d["start"]
        else:
            d["start"] = start
        return d

    return doc


def _child(start: object) -> Naming:
    def doc(proc: subprocess.Popen[bytes]) -> Doc:
        child: Doc = {"name": "worker-1", "pid": proc.pid, "start": start}
        if start is _MISSING:
            del child["start"]
        return state_doc(gone_pid(), "1", children=[child, {**child, "name": "redis"}])

    return doc


_MISSING = object()
UNPROVEN: dict[str, Naming] = {
    "start-null": _own(None),
    "start-missing": _own(_MISSING),
    "start-wrong": _own("1"),
    "start-empty": _own(""),
    "start-number": _own(12345),
    "child-start-null": _child(None),
    "child-start-missing": _child(_MISSING),
    "child-start-wrong": _child("1"),
}


@pytest.mark.parametrize("naming", UNPROVEN.values(), ids=UNPROVEN.keys())
def test_stop_service_never_signals_an_unproven_process(
    home: Path, sleeper: subprocess.Popen[bytes], naming: Naming
) -> None:
    write(home, naming(sleeper))
    state = read_state(home)
    assert state is None or not state.alive()
    assert stop_service(home, timeout=5) is None
    assert sleeper.poll() is None, "stop signalled a process it cannot prove is the service"
    assert not (home / STATE_FILE).exists()  # stale: cleaned up, as before


@pytest.mark.parametrize("naming", UNPROVEN.values(), ids=UNPROVEN.keys())
def test_cli_stop_and_status_leave_an_unproven_process_alone(
    home: Path, sleeper: subprocess.Popen[bytes], naming: Naming
) -> None:
    write(home, naming(sleeper))
    shown = cli(home, "status")
    assert "Traceback" not in shown.stderr, shown.stderr
    assert (shown.returncode, shown.stdout.strip()) == (1, NO_SERVICE), shown.stdout
    stopped = cli(home, "stop", "--home", str(home))
    assert "Traceback" not in stopped.stderr, stopped.stderr
    assert (stopped.returncode, stopped.stdout.strip()) == (0, NO_SERVICE), stopped.stdout
    assert sleeper.poll() is None, "`jobrunner stop` killed an unrelated process"


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no-pidfd"])
def test_a_well_formed_state_of_a_live_process_is_still_stopped(
    home: Path, sleeper: subprocess.Popen[bytes], pidfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proven case keeps working: its own start time, so it is the service."""
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    write(home, state_doc(sleeper.pid, start_of(sleeper)))
    state = read_state(home)
    assert state is not None and state.alive()
    assert ServiceState.from_json(state.to_json()) == state
    stopped = stop_service(home, timeout=10)
    assert stopped is not None and stopped.pid == sleeper.pid
    assert sleeper.wait(10) != 0
    assert not (home / STATE_FILE).exists()


def test_a_service_that_ignores_sigterm_is_killed_once_its_identity_is_checked_again(
    home: Path,
) -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time\n"
         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
         "time.sleep(1000)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        start = process_start_time(stubborn.pid)
        write(home, state_doc(stubborn.pid, start))
        stopped = stop_service(home, timeout=0.5)
        assert stopped is not None and stopped.pid == stubborn.pid
        assert stubborn.wait(10) == -9
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
        stubborn.wait(10)
        if stubborn.stdout is not None:
            stubborn.stdout.close()


def test_process_alive_needs_the_recorded_start_time_to_match(
    sleeper: subprocess.Popen[bytes],
) -> None:
    assert process_alive(sleeper.pid, start_of(sleeper))
    assert not process_alive(sleeper.pid, "1")
    assert not process_alive(2**70, "1")  # no OverflowError
    assert not process_alive(-1)


# --- D2: a document of the wrong shape is a corrupt state --------------------------------

# Each: the sleeper's well-formed, live state, changed in one way (or replaced outright).
Mangle = Callable[[Doc], object]


def _set(**changes: Any) -> Mangle:
    return lambda doc: {**doc, **changes}


def _child_with(**changes: Any) -> Mangle:
    def mangle(doc: Doc) -> Doc:
        child = {"name": "worker-1", "pid": doc["pid"], "start": doc["start"], **changes}
        return {**doc, "children": [child]}

    return mangle


MALFORMED: dict[str, Mangle] = {
    "pid-str": _set(pid="abc"),
    "pid-float": _set(pid=1.5),
    "pid-huge": _set(pid=99999999999999999999),
    "pid-too-big": _set(pid=2**31 - 1),
    "pid-zero": _set(pid=0),
    "pid-negative": _set(pid=-1),
    "pid-bool": _set(pid=True),
    "pid-null": _set(pid=None),
    "start-int": _set(start=12345),
    "child-pid-str": _child_with(pid="x"),
    "child-pid-huge": _child_with(pid=2**70),
    "child-name-int": _child_with(name=7),
    "child-start-int": _child_with(start=5),
    "child-not-object": _set(children=[5]),
    "children-not-list": _set(children="x"),
    "started-at-str": _set(started_at="x"),
    "started-at-nan": _set(started_at=float("nan")),
    "redis-url-int": _set(redis_url=5),
    "redis-url-bad": _set(redis_url="redis://[::1/0"),
    "redis-url-port": _set(redis_url="redis://127.0.0.1:99999/0"),
    "redis-url-empty": _set(redis_url=""),
    "kind-int": _set(kind=5),
    "kind-unknown": _set(kind="sideways"),
    "prefix-int": _set(prefix=5),
    "partitions-str": _set(partitions="1"),
    "partitions-zero": _set(partitions=0),
    "redis-embedded-str": _set(redis_embedded="yes"),
    "data-dir-int": _set(data_dir=5),
    "logs-list": _set(logs=[1]),
    "logs-values-int": _set(logs={"service": 1}),
    "top-list": lambda doc: [1, 2],
    "top-null": lambda doc: None,
    "top-str": lambda doc: "service",
    "top-int": lambda doc: 5,
}


@pytest.mark.parametrize("mangle", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_state_reads_as_corrupt(
    home: Path, sleeper: subprocess.Popen[bytes], mangle: Mangle
) -> None:
    write(home, mangle(state_doc(sleeper.pid, start_of(sleeper))))
    assert read_state(home) is None
    assert live_state(home) is None  # corrupt: removed, like a file that is not JSON
    assert not (home / STATE_FILE).exists()
    assert sleeper.poll() is None


@pytest.mark.parametrize("mangle", MALFORMED.values(), ids=MALFORMED.keys())
def test_up_replaces_a_malformed_state(
    home: Path, sleeper: subprocess.Popen[bytes], mangle: Mangle
) -> None:
    write(home, mangle(state_doc(sleeper.pid, start_of(sleeper))))
    ours = ServiceState(**state_doc(os.getpid(), process_start_time(os.getpid()), kind="up"))
    assert register_foreground(home, ours)
    assert read_state(home) == ours
    assert sleeper.poll() is None


# Through the CLI (three commands each, a process a command): the shapes that gave its
# tracebacks; the reader's side of every shape is tested above.
BY_THE_CLI = {name: MALFORMED[name] for name in (
    "pid-str", "pid-huge", "child-pid-str", "started-at-str", "redis-url-int", "top-list",
    "top-null")}


@pytest.mark.parametrize("mangle", BY_THE_CLI.values(), ids=BY_THE_CLI.keys())
def test_cli_status_stop_and_dlq_say_no_service_for_a_malformed_state(
    home: Path, sleeper: subprocess.Popen[bytes], mangle: Mangle
) -> None:
    doc = mangle(state_doc(sleeper.pid, start_of(sleeper)))
    write(home, doc)
    shown = cli(home, "status")
    assert "Traceback" not in shown.stderr, shown.stderr
    assert (shown.returncode, shown.stdout.strip()) == (1, NO_SERVICE), shown.stdout
    letters = cli(home, "dlq", "list")
    assert "Traceback" not in letters.stderr, letters.stderr
    assert letters.returncode == 1 and "no Redis to read" in letters.stderr, letters.stderr
    stopped = cli(home, "stop")
    assert "Traceback" not in stopped.stderr, stopped.stderr
    assert (stopped.returncode, stopped.stdout.strip()) == (0, NO_SERVICE), stopped.stdout
    assert sleeper.poll() is None
    assert not (home / STATE_FILE).exists()


@pytest.mark.parametrize("kind", ["fifo", "endless", "oversized"])
def test_a_state_file_that_is_no_regular_file_reads_as_none_at_once(home: Path,
                                                                    kind: str) -> None:
    """A FIFO blocked every command on its open (status, stop, run holding the lock); a
    symlink to /dev/zero read until memory ran out."""
    path = home / STATE_FILE
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "endless":
        path.symlink_to("/dev/zero")
    else:
        path.write_bytes(b" " * (MAX_STATE_BYTES + 1))
    assert read_state(home) is None
    shown = cli(home, "status")  # its own timeout (60 s): the FIFO waited for ever
    assert (shown.returncode, shown.stdout.strip()) == (1, NO_SERVICE), shown.stderr
    stopped = cli(home, "stop")
    assert (stopped.returncode, stopped.stdout.strip()) == (0, NO_SERVICE), stopped.stderr
    assert not path.exists() and not path.is_symlink()  # replaced: removed


def test_a_state_path_that_is_a_folder_is_one_clear_line(home: Path) -> None:
    (home / STATE_FILE).mkdir()
    stopped = cli(home, "stop")
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr
    assert f"{home / STATE_FILE} is a folder, not jobrunner's state: remove it" in stopped.stderr


def test_stop_with_no_service_in_a_home_it_cannot_write_says_so(tmp_path: Path) -> None:
    """It made its lock file first: `Read-only file system`, or `File exists` for a home
    that is a file, though there was nothing to stop."""
    not_a_folder = tmp_path / "home-file"
    not_a_folder.write_text("")
    stopped = cli(not_a_folder, "stop")
    assert (stopped.returncode, stopped.stdout.strip()) == (0, NO_SERVICE), stopped.stderr



def test_the_state_file_is_its_owners_alone(tmp_path: Path) -> None:
    """It holds the Redis URL, with REDIS_URL's password (and Redis access is full trust):
    it was written 0644 in a 0755 folder, for any user of the machine to read."""
    home = tmp_path / "new-home"  # (not "home": the conftest would stop the "service": us)
    state = ServiceState(**state_doc(os.getpid(), process_start_time(os.getpid()), kind="up"))
    old = os.umask(0o022)
    try:
        write_state(home, state)
        write_state(home, state)  # replaced: the new file is born 0600 too
    finally:
        os.umask(old)
    assert stat.S_IMODE((home / STATE_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert read_state(home) == state
    (home / STATE_FILE).unlink()
    # The lock, taken first by every command, made the home 0755 before write_state could
    # make it 0700; and a home made so before is closed too.
    for made_before in (tmp_path / "locked-home", tmp_path / "old-home"):
        if made_before.name == "old-home":
            made_before.mkdir(mode=0o755)
            made_before.chmod(0o755)
        with ServiceLock(made_before):
            pass
        assert stat.S_IMODE(made_before.stat().st_mode) == 0o700, made_before
