"""Real processes for the chaos tests: redis-server, the receiver, workers, the API.

Each child runs in a process group of its own (a new session), so that a
SIGKILL reaches everything it started (gunicorn's forked workers too). Every
child is registered in a `Procs` and killed at teardown, pass or fail.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from app.settings import Settings
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[3]


def stable_port() -> int:
    """A free port OUTSIDE the kernel's ephemeral range, for a listener that a test closes
    and opens again (the app going down, Redis restarting): while it is closed, a port in
    the ephemeral range can be taken by any outgoing connection on the machine (even a
    worker connecting to it from the same port, TCP's self-connect), and the listener
    could not come back."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    candidates = [p for p in range(20000, 32000) if not lo <= p <= hi]
    if not candidates:
        candidates = [p for p in range(1024, 65536) if not lo <= p <= hi]
    rng = random.Random()
    for _ in range(500):
        port = rng.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port outside the ephemeral range")


class Proc:
    """One child process in its own process group, output to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the whole group, and reap."""
        if self.popen is None:
            return
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class Procs:
    """Every process a test started; `kill_all` at teardown."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: list[Proc] = []
        self.redises: list[ChaosRedis] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, env, self.logdir / f"{name}.log")
        self.children.append(proc)
        return proc.start()

    def kill_all(self) -> None:
        for proc in reversed(self.children):
            proc.kill()
        for redis_proc in self.redises:
            redis_proc.cleanup()


class ChaosRedis(RedisProcess):
    """A private redis-server (never 127.0.0.1:6379) that can be paused, crashed, restarted."""

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a black hole)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def crash(self) -> None:
        """SIGKILL: no shutdown, no final fsync; AOF keeps what was fsynced (everysec)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self, timeout: float = 30.0) -> None:
        """Start again on the same port and directory (so from the same AOF)."""
        self.start(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


def start_redis(procs: Procs, workdir: Path, aof: bool = False) -> ChaosRedis:
    server = ChaosRedis(workdir, port=stable_port(), aof=aof)
    assert server.port != 6379
    procs.redises.append(server)
    server.start()
    return server


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", **extra}


class Workers:
    """`python -m workers` processes of one test."""

    def __init__(self, procs: Procs, settings: Settings, **extra_env: str) -> None:
        self.procs = procs
        self.settings = settings
        self.extra_env = {"JOBRUNNER_LOG_LEVEL": "INFO", **extra_env}
        self.all: list[Proc] = []

    def start(self, n: int = 1, wait_ready: bool = True, timeout: float = 30.0) -> list[Proc]:
        started = []
        for _ in range(n):
            name = f"worker-{len(self.all)}"
            proc = self.procs.spawn(name, [sys.executable, "-m", "workers"],
                                    child_env(self.settings, **self.extra_env))
            self.all.append(proc)
            started.append(proc)
        if wait_ready:
            for proc in started:
                self.wait_ready(proc, timeout)
        return started

    @staticmethod
    def wait_ready(proc: Proc, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited before it was ready:\n{proc.tail()}")
            return f"worker {proc.pid} started" in proc.log()

        wait_for(ready, timeout, what=f"{proc.name} to start")

    @property
    def alive(self) -> list[Proc]:
        return [p for p in self.all if p.alive]

    def dead(self) -> list[Proc]:
        return [p for p in self.all if not p.alive]

    def kill(self, proc: Proc) -> None:
        assert proc.popen is not None
        proc.signal_group(signal.SIGKILL)
        proc.popen.wait(10)


class ApiProcess:
    """`jobrunner api` (gunicorn) for one app, on a free port."""

    def __init__(self, procs: Procs, settings: Settings) -> None:
        self.port = free_port()
        # No gRPC API: not under test here, and its default port (50001) is shared.
        self.settings = settings.with_(http_port=self.port, grpc_port=0)
        self.procs = procs
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ApiProcess:
        exe = Path(sys.executable).with_name("jobrunner")
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]
        argv += ["api", "--app-id", self.settings.app_id, "--app-url", self.settings.app_url,
                 "--http-port", str(self.port)]
        self.proc = self.procs.spawn("api", argv, child_env(self.settings))

        def healthy() -> bool:
            if self.proc is not None and not self.proc.alive:
                raise AssertionError(f"the API exited:\n{self.proc.tail()}")
            status, _, _ = http_request("GET", self.url + "/healthz", timeout=2.0)
            return status == 200

        wait_for(healthy, timeout, interval=0.1, what="the API to answer /healthz")
        return self


def http_request(method: str, url: str, body: Any = None,
                 timeout: float = 10.0) -> tuple[int | None, Any, float]:
    """(status or None when no answer came, decoded JSON body or text, seconds taken)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        raw = err.read()
        status = err.code
    except (OSError, http.client.HTTPException):
        return None, None, time.monotonic() - started
    took = time.monotonic() - started
    try:
        decoded: Any = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode("utf-8", "replace")
    return status, decoded, took


class RedisProxy:
    """tcp_proxy.py in front of a redis-server: `set_mode("refused")` makes Redis
    unreachable (connections reset, then refused) while it keeps its data."""

    def __init__(self, procs: Procs, workdir: Path, upstream: ChaosRedis) -> None:
        self.procs = procs
        self.ready_file = workdir / "redis-proxy.json"
        self.upstream = upstream
        self.port = 0
        self.control_port = 0

    def start(self, timeout: float = 20.0) -> RedisProxy:
        proc = self.procs.spawn(
            "redis-proxy",
            [sys.executable, "-m", "tests.chaos.support.tcp_proxy",
             "--upstream-port", str(self.upstream.port), "--ready-file", str(self.ready_file),
             "--port", str(stable_port())],
            {**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def ready() -> bool:
            if not proc.alive:
                raise AssertionError(f"the Redis proxy exited:\n{proc.tail()}")
            return self.ready_file.exists()

        wait_for(ready, timeout, what="the Redis proxy to listen")
        ports = json.loads(self.ready_file.read_text())
        self.port, self.control_port = ports["port"], ports["control_port"]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def set_mode(self, mode: str) -> None:
        status, body, _ = http_request("POST", f"http://127.0.0.1:{self.control_port}/mode",
                                       {"mode": mode}, timeout=30)
        assert status == 200 and body == {"mode": mode}, (status, body)
