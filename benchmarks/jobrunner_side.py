"""jobrunner as a system under test: its workers (`python -m workers`), its API
(`python -m app.cli api ...`, or gunicorn as the Procfile runs it), and bulk loading
through `app.store.Store.schedule_many`.

Imports of the engine are local to the functions, so the harness (and the RQ
baselines) run even when the engine does not import.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import orjson
import redis

from benchmarks.procs import LOOPBACK, BenchError, Procs, child_env, python_cmd, wait_until
from benchmarks.systems import BenchJob, rfc3339_ms

APP_ID = "bench"
PREFIX = "jrbench"


def settings(redis_url: str, receiver_url: str, prefix: str = PREFIX,
             cluster_partitions: int = 0, partitions: int = 0) -> Any:
    """`cluster_partitions`: on a Redis Cluster, with that many partitions (0: one Redis);
    `partitions`: that many on one Redis (0: the default)."""
    from app.settings import Settings

    extra: dict[str, Any] = {"partitions": partitions} if partitions else {}
    if cluster_partitions:
        extra = {"redis_cluster": True, "partitions": cluster_partitions}
    return Settings(redis_url=redis_url, prefix=prefix, app_id=APP_ID, app_url=receiver_url,
                    **extra)


def worker_env(redis_url: str, receiver_url: str, prefix: str = PREFIX,
               protocol: str = "http", cluster_partitions: int = 0,
               partitions: int = 0) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "JOBRUNNER_PREFIX": prefix,
        "APP_ID": APP_ID,
        "APP_URL": receiver_url,
        "APP_PROTOCOL": protocol,
        "JOBRUNNER_LOG_LEVEL": "WARNING",
    }
    if partitions:
        env["JOBRUNNER_PARTITIONS"] = str(partitions)
    if cluster_partitions:
        env.update(REDIS_CLUSTER="1", JOBRUNNER_PARTITIONS=str(cluster_partitions))
    return child_env(env)


_packed: dict[bytes, tuple[str, str]] = {}


def make_job(name: str, due_ms: int, data: Any) -> Any:
    """The job as the API would store it (protobuf Any data packed as the API packs it)."""
    from app.jobs.anydata import is_any_json, pack_any
    from app.jobs.model import Job

    any_type = any_value = None
    if is_any_json(data):
        key = orjson.dumps(data)
        packed = _packed.get(key)
        if packed is None:
            packed = _packed[key] = pack_any(data)
        any_type, any_value = packed
        data = None
    return Job(app_id=APP_ID, name=name, data=data, any_type=any_type, any_value=any_value,
               due_time=rfc3339_ms(due_ms), first_ms=due_ms)


class Jobrunner:
    name = "jobrunner"
    load_cost_s = 40e-6

    def __init__(self, redis_url: str, receiver_url: str, with_api: bool = True,
                 protocol: str = "http", cluster_partitions: int = 0,
                 node_urls: Sequence[str] = (), partitions: int = 0) -> None:
        self.cluster_partitions = cluster_partitions
        self.partitions = partitions
        self.node_urls = list(node_urls) or [redis_url]  # where the workers may subscribe
        if cluster_partitions:
            # Bulk loading into a cluster goes a node at a time: about 1,300 jobs/s here.
            self.load_cost_s = 1e-3
        self.redis_url = redis_url
        self.receiver_url = receiver_url
        self.with_api = with_api
        self.protocol = protocol  # how the workers deliver: http, or grpc (OnJobEvent)
        if protocol != "http":
            self.name = f"jobrunner-{protocol}"
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, procs: Procs, workers: int) -> None:
        from app.store.keys import Keys
        from app.store.store import AppRegistration, Store

        cfg = settings(self.redis_url, self.receiver_url,
                       cluster_partitions=self.cluster_partitions,
                       partitions=self.partitions)
        store = Store(cfg)
        try:
            store.register_app(AppRegistration(APP_ID, self.receiver_url,
                                               protocol=self.protocol))
        finally:
            store.close()
        env = worker_env(self.redis_url, self.receiver_url, protocol=self.protocol,
                         cluster_partitions=self.cluster_partitions,
                         partitions=self.partitions)
        if self.with_api:
            self._procs.append(start_api(procs, env))
        for i in range(workers):
            cmd = python_cmd("-m", "workers")
            self._procs.append(procs.start(f"jobrunner-worker-{i}", cmd, env=env))
        wake = Keys(cfg.prefix, cfg.partitions).wake_channel
        # On a cluster each worker subscribes on one node: PUBSUB NUMSUB of every node.
        conns = [redis.Redis.from_url(url) for url in self.node_urls]
        try:
            # Each worker subscribes to the wake channel once its loop runs.
            def ready() -> bool:
                procs.check_alive()
                subs = sum(int(dict(c.pubsub_numsub(wake))[wake.encode()]) for c in conns)
                return subs >= workers

            wait_until(ready, 30.0, f"{workers} jobrunner workers")
        finally:
            for conn in conns:
                conn.close()

    def load(self, jobs: Sequence[BenchJob]) -> None:
        from app.store.store import Store

        store = Store(settings(self.redis_url, self.receiver_url,
                               cluster_partitions=self.cluster_partitions,
                               partitions=self.partitions))
        try:
            store.schedule_many(
                (make_job(j.name, j.due_ms, {"dueMs": j.due_ms}) for j in jobs), chunk=1000
            )
        finally:
            store.close()

    def stop(self, procs: Procs) -> None:
        procs.stop_many(self._procs)
        self._procs = []


def start_api(
    procs: Procs, env: dict[str, str], port: int | None = None
) -> subprocess.Popen[bytes]:
    """`python -m app.cli api` on a free port (the API heartbeats the app registration)."""
    from benchmarks.procs import free_port

    port = port or free_port()
    cmd = python_cmd("-m", "app.cli", "api", "--app-id", APP_ID, "--app-url", env["APP_URL"],
                     "--http-port", str(port), "--grpc-port", "off")
    proc = procs.start("jobrunner-api", cmd, env=env)
    wait_http_ok(procs, port, "/healthz", 30.0, "the jobrunner API")
    return proc


def wait_http_ok(procs: Procs, port: int, path: str, timeout: float, what: str) -> None:
    import http.client

    def ok() -> bool:
        procs.check_alive()
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2.0)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    try:
        wait_until(ok, timeout, what, interval=0.1)
    except BenchError:
        raise
