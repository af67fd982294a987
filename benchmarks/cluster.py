"""A private Redis Cluster of K masters (no replicas) on free loopback ports, for the
capacity scenario: each node a child in Procs (`redis-cluster-N`), the 16,384 slots split
evenly in K ranges with CLUSTER ADDSLOTS, the nodes joined with CLUSTER MEET. One master
works too (redis-cli --cluster create wants three). Non-persisting, like RedisServer."""

from __future__ import annotations

import functools
import socket
import subprocess
from pathlib import Path
from typing import Any

import redis

from benchmarks.procs import (
    LOOPBACK,
    BenchError,
    Procs,
    RedisCounters,
    free_port,
    redis_counters,
    redis_server_binary,
    wait_until,
)

SLOTS = 16384


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535 or port == 6379:
            continue
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        return port


# Ports a node is tried on before the cluster's start gives up.
_NODE_ATTEMPTS = 5


class BenchCluster:
    def __init__(self, procs: Procs, workdir: Path, masters: int) -> None:
        self.procs = procs
        self.workdir = workdir
        self.masters = masters
        self.ports: list[int] = []

    @property
    def url(self) -> str:
        """One master's URL: a cluster client finds the others from it."""
        return f"redis://{LOOPBACK}:{self.ports[0]}/0"

    def client(self, port: int) -> Any:  # redis.Redis: execute_command is untyped
        return redis.Redis(host=LOOPBACK, port=port, socket_timeout=10.0)

    def start(self, timeout: float = 30.0) -> BenchCluster:
        binary = redis_server_binary()
        for i in range(self.masters):
            self.ports.append(self._start_node(binary, f"redis-cluster-{i}", timeout))
        per = SLOTS // self.masters
        for i, port in enumerate(self.ports):
            first, last = i * per, (SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1)
            c = self.client(port)
            try:
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                c.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
                if i:
                    c.execute_command("CLUSTER", "MEET", LOOPBACK, self.ports[0])
            finally:
                c.close()
        wait_until(self._ok, timeout, f"a {self.masters}-master cluster to be ok", 0.05)
        return self

    def _start_node(self, binary: str, name: str, timeout: float) -> int:
        """Start a node on a free port; its port. Another process may take the port, or its
        bus port, between the check and the start (other tests take loopback ports all
        the while): the node exits at once, and starts again on another port."""
        for _ in range(_NODE_ATTEMPTS):
            port = _cluster_port()
            folder = self.workdir / str(port)
            folder.mkdir(parents=True)
            proc = self.procs.start(name, [
                binary, "--port", str(port), "--bind", LOOPBACK, "--dir", str(folder),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--save", "", "--appendonly", "no", "--protected-mode", "yes",
            ])
            wait_until(functools.partial(self._up_or_gone, proc, port), timeout,
                       f"cluster node {port}")
            if proc.poll() is None:
                return port
            self.procs.stop(proc)
        raise BenchError(f"no cluster node started in {_NODE_ATTEMPTS} attempts")

    def _up_or_gone(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        return proc.poll() is not None or self._ping(port)

    def _ping(self, port: int) -> bool:
        c = self.client(port)
        try:
            return bool(c.ping())
        except redis.RedisError:
            return False
        finally:
            c.close()

    def _ok(self) -> bool:
        for port in self.ports:
            c = self.client(port)
            try:
                info = c.execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            finally:
                c.close()
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or \
                    f"cluster_known_nodes:{self.masters}" not in text:
                return False
        return True

    def flush(self) -> None:
        for port in self.ports:
            c = self.client(port)
            try:
                c.flushall()
            finally:
                c.close()

    def counters(self) -> dict[str, RedisCounters]:
        out = {}
        for i, port in enumerate(self.ports):
            c = self.client(port)
            try:
                out[f"master-{i}"] = redis_counters(c)
            finally:
                c.close()
        return out

    @property
    def node_urls(self) -> list[str]:
        return [f"redis://{LOOPBACK}:{port}/0" for port in self.ports]

    def stop(self) -> None:
        self.procs.stop_many([p for n, p in self.procs.named()
                              if n.startswith("redis-cluster-")])
