"""jobrunner end to end on a Redis Cluster (3 masters, 3 replicas, 12 partitions).

The API is the Flask app (`create_app(settings).test_client()`), the worker runs
in this process on its own event loop (or as `python -m workers`), deliveries go
to a real HTTP receiver on localhost. Settings name one master; the cluster
clients discover the other nodes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio.connection
from flask.testing import FlaskClient
from redis.crc import key_slot

from app.api.factory import create_app
from app.jobs.clock import now_ms
from app.settings import Settings
from app.store.keys import Keys, job_id
from app.store.redis_client import (
    UNAVAILABLE,
    ClusterUnreachable,
    NotReplicated,
    async_client,
    sync_client,
)
from app.store.store import AppRegistration, Store
from tests.cluster.conftest import PARTITIONS, WaitSettings, cluster_settings
from tests.support.cluster import RedisCluster
from tests.support.far import all_due, any_record
from tests.support.jobs import APP, make_job
from tests.support.receiver import Delivery, Receiver
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker, WorkerFleet
from workers.queue import Queue

STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
JOBS = "/v1.0-alpha1/jobs"


@pytest.fixture
def api(csettings: Settings) -> FlaskClient:
    """The Flask API on the cluster; it registers the receiver as the app's address."""
    return create_app(csettings).test_client()


@pytest.fixture
def worker(csettings: Settings) -> Iterator[ThreadWorker]:
    with ThreadWorker(csettings) as w:
        yield w


def _deliveries(receiver: Receiver, name: str, n: int = 1,
                timeout: float = 10.0) -> list[Delivery]:
    path = "/job/" + quote(name, safe="")

    def arrived() -> list[Delivery]:
        got = receiver.received(path)
        return got if len(got) >= n else []

    return wait_for(arrived, timeout, what=f"{n} deliveries of {name!r}")


def _assert_once_and_never_early(receiver: Receiver) -> Counter[str]:
    """Every trigger arrived once, none before its scheduled time; counts per job name."""
    per_trigger = Counter(d.headers["jobrunner-trigger-id"] for d in receiver.received())
    dups = {t for t, n in per_trigger.items() if n > 1}
    assert not dups, "duplicates: " + "; ".join(
        f"{d.headers['jobrunner-trigger-id']} attempt={d.headers['jobrunner-attempt']} "
        f"at={d.received_at:.3f}" for d in receiver.received()
        if d.headers["jobrunner-trigger-id"] in sorted(dups)[:3])
    for d in receiver.received():
        due = int(d.headers["jobrunner-scheduled-ms"])
        assert d.received_at * 1000 >= due, f"{d.path} {due - d.received_at * 1000:.1f} ms early"
    return Counter(d.path.removeprefix("/job/") for d in receiver.received())


def _master_of_partition(cluster: RedisCluster, settings: Settings, part: int) -> int:
    pk = Keys(settings.prefix, settings.partitions).partition(part)
    slots = {key_slot(k.encode()) for k in pk.all()}
    assert len(slots) == 1, f"partition {part} spans slots {slots}"
    return cluster.master_of_slot(slots.pop()).port


# --- the cluster and the key layout ----------------------------------------------------


def test_cluster_has_three_masters_each_with_a_replica(cluster: RedisCluster) -> None:
    assert cluster.healthy()
    masters = cluster.live_masters()
    assert len(masters) == 3
    assert sorted(cluster.slot_owners().values()) == [5461, 5461, 5462]
    replicas = {cluster.replica_of(m).port for m in masters}
    assert len(replicas) == 3 and not replicas & {m.port for m in masters}
    assert 6379 not in {n.port for n in cluster.nodes}


def test_partitions_spread_over_all_three_masters(cluster: RedisCluster,
                                                  csettings: Settings) -> None:
    owners = {p: _master_of_partition(cluster, csettings, p) for p in range(PARTITIONS)}
    assert set(owners.values()) == {m.port for m in cluster.live_masters()}, owners

    # And the data really lands there: bulk-load (a cluster pipeline of scripts) and
    # count each master's share of the due index directly on the master.
    store = Store(csettings)
    due = now_ms() + 3_600_000
    assert store.schedule_many(make_job(f"spread-{i}", due) for i in range(600)) == 600
    keys = Keys(csettings.prefix, csettings.partitions)
    per_master: Counter[int] = Counter()
    for p in range(PARTITIONS):
        client = cluster.node(owners[p]).client()
        try:
            per_master[owners[p]] += len(all_due(client, keys.partition(p)))  # near or far
        finally:
            client.close()
    assert sum(per_master.values()) == 600
    assert len(per_master) == 3 and min(per_master.values()) > 50, per_master
    assert store.counts()["jobs"] == 600
    assert store.delete_prefix(APP, "spread-") == 600
    assert store.counts() == {"jobs": 0, "due_index": 0, "dead_letters": 0}
    store.close()


# --- the API and a worker, end to end ------------------------------------------------------


def test_seed_flow_and_plain_data_end_to_end(api: FlaskClient, receiver: Receiver,
                                             worker: ThreadWorker) -> None:
    seed_body = """{
        "data": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                 "value": "R2-D2:Oil Change"},
        "dueTime": "1s"
    }"""
    before = now_ms()
    resp = api.post(f"{JOBS}/R2-D2", data=seed_body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 204, resp.get_data(as_text=True)
    for name, data in (("plain-str", "someData"), ("plain-int", 123)):
        assert api.post(f"{JOBS}/{name}", json={"data": data, "dueTime": "0s"}).status_code == 204
    assert api.post(f"{JOBS}/no-data", json={"dueTime": "200ms"}).status_code == 204

    [d] = _deliveries(receiver, "R2-D2")
    assert json.loads(d.body) == {"type_url": STRING_VALUE, "value": "ChBSMi1EMjpPaWwgQ2hhbmdl"}
    assert int(d.headers["jobrunner-scheduled-ms"]) >= before + 1000
    assert _deliveries(receiver, "plain-str")[0].body == b'"someData"'
    assert _deliveries(receiver, "plain-int")[0].body == b"123"
    assert _deliveries(receiver, "no-data")[0].body == b""
    time.sleep(0.3)
    counts = _assert_once_and_never_early(receiver)
    assert counts == Counter({"R2-D2": 1, "plain-str": 1, "plain-int": 1, "no-data": 1})


def test_recurring_job_get_list_delete(api: FlaskClient, receiver: Receiver,
                                       worker: ThreadWorker) -> None:
    resp = api.post(f"{JOBS}/every", json={"data": {"n": 1}, "schedule": "@every 1s",
                                           "repeats": 3, "dueTime": "100ms"})
    assert resp.status_code == 204, resp.get_data(as_text=True)
    # a few more, so list pages cross partitions (and masters)
    for i in range(30):
        assert api.post(f"{JOBS}/later-{i}", json={"dueTime": "1h", "data": i}).status_code == 204
    assert api.post(f"{JOBS}/doomed", json={"dueTime": "2s"}).status_code == 204
    assert api.post(f"{JOBS}/doomed", json={"dueTime": "3s"}).status_code == 409

    got = api.get(f"{JOBS}/every")
    assert got.status_code == 200
    assert got.get_json()["schedule"] == "@every 1s" and got.get_json()["repeats"] == 3
    assert api.get(f"{JOBS}/nope").status_code == 404

    names: list[str] = []
    token = ""
    while True:
        page = api.get(f"{JOBS}?limit=7&pageToken={token}").get_json()
        names += [j["name"] for j in page["jobs"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert sorted(names) == sorted(["every", "doomed", *(f"later-{i}" for i in range(30))])
    assert api.get(f"{JOBS}?prefix=later-1&limit=100").get_json()["jobs"].__len__() == 11

    assert api.delete(f"{JOBS}/doomed").status_code == 204
    assert api.delete(f"{JOBS}/doomed").status_code == 204
    assert api.get(f"{JOBS}/doomed").status_code == 404
    assert api.delete(f"{JOBS}?prefix=later-").get_json() == {"deleted": 30}

    deliveries = _deliveries(receiver, "every", 3, timeout=10)
    # A fourth would come a second after the third; but with its repeats spent the job is
    # gone once the third is acknowledged, and then no fourth can come.
    wait_for(lambda: api.get(f"{JOBS}/every").status_code == 404, 5,
             what="the job over after its third trigger")
    counts = _assert_once_and_never_early(receiver)
    assert counts == Counter({"every": 3})
    sched = sorted(int(d.headers["jobrunner-scheduled-ms"]) for d in deliveries)
    assert [b - a for a, b in itertools.pairwise(sched)] == [1000, 1000]
    assert api.get(f"{JOBS}/every").status_code == 404  # repeats spent: the job is over


def test_failed_delivery_is_dead_lettered_on_the_cluster(csettings: Settings, receiver: Receiver,
                                                         worker: ThreadWorker) -> None:
    receiver.status = 500
    api = create_app(csettings).test_client()
    body = {"dueTime": "0s", "data": "x",
            "failurePolicy": {"constant": {"interval": "0s", "maxRetries": 1}}}
    assert api.post(f"{JOBS}/fails", json=body).status_code == 204
    _deliveries(receiver, "fails", 2)

    def letters() -> list[dict[str, object]]:
        resp = api.get("/v1.0-alpha1/deadletters")
        assert resp.status_code == 200, resp.get_data(as_text=True)
        found: list[dict[str, object]] = resp.get_json()["deadLetters"]
        return found

    [letter] = wait_for(letters, 10, what="the dead letter")
    assert letter["name"] == "fails" and letter["attempts"] == 2


def test_bulk_delivery_by_a_worker_process(csettings: Settings, receiver: Receiver,
                                           tmp_path: Path) -> None:
    """`python -m workers` configured by REDIS_CLUSTER=1 & co: 600 jobs over 12 partitions,
    each delivered exactly once, none early."""
    store = Store(csettings)
    store.register_app(AppRegistration(APP, receiver.url))
    start = now_ms() + 1500
    jobs = [make_job(f"bulk-{i}", start + (i % 100) * 10) for i in range(600)]
    assert store.schedule_many(jobs) == 600
    fleet = WorkerFleet(tmp_path)
    try:
        fleet.start(csettings)
        wait_for(lambda: len(receiver.received()) >= 600, 20, interval=0.05,
                 what=f"600 deliveries (log: {fleet.logs()[-2000:]})")
        wait_for(lambda: store.counts()["jobs"] == 0, 5, what="jobs removed after delivery")
        # Counted once the worker has exited (SIGTERM lets deliveries in flight finish):
        # no duplicate can still be on its way.
        assert fleet.procs[0].terminate() == 0
        counts = _assert_once_and_never_early(receiver)
        assert len(counts) == 600
    finally:
        fleet.cleanup()
        store.close()


def test_app_registration_api_side_and_worker_side(csettings: Settings) -> None:
    store = Store(csettings)
    store.register_app(AppRegistration("other-app", "http://127.0.0.1:1/x", "tok", "raw"),
                       ttl_s=5)
    assert store.app("other-app") == AppRegistration("other-app", "http://127.0.0.1:1/x",
                                                     "tok", "raw")

    async def worker_side() -> AppRegistration | None:
        queue = Queue(csettings)
        try:
            await queue.load_apps({"other-app"}, max_age_s=0)
            return queue.app("other-app")
        finally:
            await queue.close()

    assert asyncio.run(worker_side()) == store.app("other-app")
    store.close()


def test_new_job_wakes_an_idle_worker_through_pubsub(cluster: RedisCluster,
                                                     receiver: Receiver) -> None:
    """With polling every 5 s, only the pub/sub wake-up can get a job out on time."""
    settings = cluster_settings(cluster, receiver, idle_poll_s=5.0)
    api = create_app(settings).test_client()
    with ThreadWorker(settings):
        time.sleep(1.0)  # claimed nothing: asleep for up to 5 s
        assert api.post(f"{JOBS}/wake", json={"dueTime": "300ms"}).status_code == 204
        [d] = _deliveries(receiver, "wake", timeout=6)
    late_ms = d.received_at * 1000 - int(d.headers["jobrunner-scheduled-ms"])
    assert 0 <= late_ms < 2000, f"{late_ms:.0f} ms late: the worker was not woken"


# --- WAIT-based acknowledgement ------------------------------------------------------


def _replica_has(cluster: RedisCluster, settings: Settings, name: str) -> bool:
    jid = job_id(APP, name)
    pk = Keys(settings.prefix, settings.partitions).for_job(jid)
    replica = cluster.replica_of(cluster.master_of_slot(key_slot(pk.jobs.encode())))
    client: Any = replica.client()
    try:
        client.execute_command("READONLY")
        return any_record(client, pk, jid) is not None  # near or far
    finally:
        client.close()


def test_wait_replicas_acknowledges_every_script_write(cluster: RedisCluster,
                                                       receiver: Receiver) -> None:
    settings = cluster_settings(cluster, receiver, wait_replicas=1)
    api = create_app(settings).test_client()
    names = [f"acked-{i}" for i in range(24)]
    for name in names:
        assert api.post(f"{JOBS}/{name}", json={"dueTime": "1h"}).status_code == 204
        # WAIT returned: the replica has it the moment the API answered
        assert _replica_has(cluster, settings, name)
    store = Store(settings)
    assert store.schedule_many(make_job(f"bulk-acked-{i}", now_ms() + 3_600_000)
                               for i in range(100)) == 100
    assert all(_replica_has(cluster, settings, f"bulk-acked-{i}") for i in range(100))
    assert store.delete_prefix(APP, "") == 124
    # the worker's scripts (claim, ack) under WAIT too
    assert api.post(f"{JOBS}/go", json={"dueTime": "0s", "data": 1}).status_code == 204
    with ThreadWorker(settings):
        _deliveries(receiver, "go")
        wait_for(lambda: not _replica_has(cluster, settings, "go"), 5,
                 what="the acknowledgement on the replica")
    assert _assert_once_and_never_early(receiver) == Counter({"go": 1})
    store.close()


def test_wait_for_more_replicas_than_there_are_is_a_503(cluster: RedisCluster,
                                                        receiver: Receiver) -> None:
    settings = cluster_settings(cluster, receiver, wait_replicas=2, wait_timeout_ms=100)
    resp = create_app(settings).test_client().post(f"{JOBS}/x", json={"dueTime": "1h"})
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert "replicas" in resp.get_json()["message"]
    client = sync_client(settings)
    with pytest.raises(NotReplicated):
        Store(settings, client).schedule(make_job("y", now_ms() + 3_600_000))
    client.close()


def test_wait_replicas_on_a_single_node_without_replicas_refuses(redis_server: RedisProcess,
                                                                  receiver: Receiver) -> None:
    """The option is not cluster-only: on a lone redis-server, WAIT 1 can never be met."""
    settings = WaitSettings(redis_url=redis_server.url, prefix=f"w{uuid.uuid4().hex[:8]}",
                            app_url=receiver.url, wait_replicas=1, wait_timeout_ms=50)
    store = Store(settings)
    with pytest.raises(NotReplicated):
        store.schedule(make_job("lonely", now_ms() + 3_600_000))
    with pytest.raises(NotReplicated):
        store.schedule_many([make_job("lonely-2", now_ms() + 3_600_000)])
    assert Store(settings.with_(wait_replicas=0)).schedule(make_job("fine", now_ms()))
    store.close()

    async def worker_side() -> None:
        queue = Queue(settings)
        try:
            with pytest.raises(NotReplicated):  # the claim of "fine" is refused...
                await queue.claim(10)
        finally:
            await queue.close()

    asyncio.run(worker_side())
    # ... and so the trigger stays claimed (leased) but undelivered: it comes back
    # when its lease runs out, never lost.


def test_wait_replicas_without_replicas_still_answers_reads(redis_server: RedisProcess,
                                                           receiver: Receiver) -> None:
    """Lists and counts read what Redis holds: the one-off indexing of what older versions
    stored is a write, and while no replica confirms it the reads go on without it
    (they answered 503, naming a write the caller never made)."""
    settings = WaitSettings(redis_url=redis_server.url, prefix=f"w{uuid.uuid4().hex[:8]}",
                            app_url=receiver.url, wait_replicas=1, wait_timeout_ms=50)
    Store(settings.with_(wait_replicas=0)).schedule(make_job("kept", now_ms() + 3_600_000))
    store = Store(settings)
    try:
        views, _ = store.list_jobs(APP)
        assert [view.job.name for view in views] == ["kept"]
        assert store.app_counts(APP)["jobs"] == 1
    finally:
        store.close()


def test_forgetting_a_masters_client_leaves_calls_in_flight_their_connections(
        cluster: RedisCluster, receiver: Receiver) -> None:
    """A waited script call that fails makes the client forget that master's client; the
    other calls on it at that moment keep their connections. Closing them under those calls
    made redis-py fail them with AttributeError, not ConnectionError (redis-py issue 4287):
    a worker took it for a bad record and dead-lettered a trigger (test_failover.py)."""
    settings = cluster_settings(cluster, receiver, wait_replicas=1)

    async def scenario() -> None:
        client = async_client(settings)
        try:
            await client.initialize()
            node = client.get_default_node()
            failed = client._node_client(node.name, node.host, int(node.port))
            pool = failed.connection_pool
            busy = await pool.get_connection()  # a call in flight holds it
            idle = await pool.get_connection()
            await pool.release(idle)
            await client._forget(node.name, failed)
            assert busy.is_connected and not idle.is_connected
            # A call that failed on the old client does not make the client forget the
            # node client made since (its calls keep their connections too).
            made_since = client._node_client(node.name, node.host, int(node.port))
            assert made_since is not failed
            await client._forget(node.name, failed)
            assert client._node_client(node.name, node.host, int(node.port)) is made_since
            await busy.send_command("PING")
            assert await busy.read_response() in (b"PONG", "PONG", True)
            await pool.release(busy)
        finally:
            await client.aclose()
        assert not busy.is_connected  # closed with the client, at last

    asyncio.run(scenario())


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_call_whose_connection_was_closed_meanwhile_is_retried(
        cluster: RedisCluster, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        pipelined: bool) -> None:
    """redis-py can close every connection of the nodes under the calls using them (a
    failed relearning of the layout does: NodesManager.aclose). A call that was awaiting
    (here its health check; in CI its connect's handshake) then wrote to no writer:
    AttributeError, which killed a worker's claim loop while the cluster failed over. Now
    the write fails as a ConnectionError, which redis-py retries (a worker waits it out)."""
    settings = cluster_settings(cluster, receiver)
    check_health = redis.asyncio.connection.Connection.check_health

    async def scenario() -> None:
        client = async_client(settings)
        closed: list[bool] = []

        async def closed_meanwhile(conn: redis.asyncio.connection.Connection) -> None:
            await check_health(conn)
            if not closed:
                closed.append(True)
                await client.nodes_manager.aclose()

        try:
            await client.set("{a}x", "a")
            monkeypatch.setattr(redis.asyncio.connection.Connection, "check_health",
                                closed_meanwhile)
            if pipelined:
                pipe = client.pipeline()
                pipe.get("{a}x")
                pipe.get("{b}x")
                assert await pipe.execute() == [b"a", None]
            else:
                assert await client.get("{a}x") == b"a"
            assert closed == [True]
        finally:
            monkeypatch.undo()
            await client.aclose()

    asyncio.run(scenario())


def test_closing_the_client_leaves_calls_in_flight_their_connections(
        cluster: RedisCluster, receiver: Receiver) -> None:
    """redis-py closes the client to relearn the layout when a pipeline meets a dead
    master, under the calls other tasks have in flight to healthy masters: their replies
    were lost and the calls sent again (a claim's triggers then waited out their lease, and
    a failover of one master held up every partition). Now a busy connection is closed
    when its call is over, an idle one at once, and the client learns the layout again."""
    settings = cluster_settings(cluster, receiver)

    async def scenario() -> None:
        client = async_client(settings)
        try:
            await client.initialize()
            node = client.get_node_from_key("{a}x")
            busy = node.acquire_connection()  # a call in flight holds it
            idle = node.acquire_connection()
            await busy.connect()
            await idle.connect()
            node.release(idle)
            await client.aclose()
            assert busy.is_connected and not idle.is_connected
            await busy.send_command("SET", "{a}x", "a")
            assert await busy.read_response() in (b"OK", "OK", True)
            node.release(busy)  # its call over: closed
            await asyncio.sleep(0)  # (redis-py closes it in a task of its own)
            wait_until = asyncio.get_running_loop().time() + 10
            while busy.is_connected and asyncio.get_running_loop().time() < wait_until:
                await asyncio.sleep(0.01)
            assert not busy.is_connected
            assert await client.get("{a}x") == b"a"  # the layout learnt again
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_an_unreachable_cluster_is_unavailable_not_an_error() -> None:
    """redis-py reports "no node answered" as RedisClusterException; jobrunner must see it
    as Redis being away (API 503, worker backs off), like a ConnectionError."""
    settings = Settings(redis_cluster=True, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert issubclass(ClusterUnreachable, UNAVAILABLE)
    with pytest.raises(ClusterUnreachable):
        sync_client(settings)

    async def worker_side() -> None:
        queue = Queue(settings)
        try:
            with pytest.raises(ClusterUnreachable):
                await queue.claim(10)
            with pytest.raises(ClusterUnreachable):
                await queue.load_apps({APP}, max_age_s=0)
            pubsub = queue.pubsub()
            with pytest.raises(ClusterUnreachable):
                await pubsub.subscribe(queue.keys.wake_channel)
            await pubsub.aclose()
        finally:
            await queue.close()

    asyncio.run(worker_side())


def test_plain_cluster_client_discovers_all_nodes(cluster: RedisCluster,
                                                  csettings: Settings) -> None:
    client = sync_client(csettings)
    try:
        nodes = {n.port for n in client.get_nodes()}
        # from one master's URL: every master (replicas too, once CLUSTER SLOTS lists them)
        assert {n.port for n in cluster.live_masters()} <= nodes
    finally:
        client.close()
    with pytest.raises(redis.exceptions.RedisClusterException):
        sync_client(csettings.with_(redis_url=csettings.redis_url.replace("/0", "/1")))
