"""A master that stops answering (a stalled process, a network that drops its packets)
rather than refusing connections: the worker's calls to its partitions wait for a reply
up to the socket timeout, and until its replica takes over (failover), a few seconds.
Those calls go on in the background past PARTITION_ANSWER_S (workers/queue.py), while
the other partitions are claimed and settled; before, each held up the whole worker
(the failover harness with a SIGSTOPped master: the other partitions' p99 lateness
was 4.2-4.9 s, and 0.4-0.7 s after).

The cluster here has no replicas and a node timeout longer than any test, so a
SIGSTOPped master is never failed over: its calls answer once it is resumed."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from app.jobs.clock import now_ms
from app.settings import Settings
from app.store.keys import Keys, job_id
from app.store.redis_client import async_client, sync_client
from tests.cluster.conftest import cluster_settings
from tests.support.cluster import ClusterNode, RedisCluster
from tests.support.jobs import APP, make_job, register
from tests.support.receiver import Delivery, Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from workers.queue import Action, Budgets, Queue, Settlement

pytestmark = pytest.mark.usefixtures("reap_workers")

# Far below the socket timeout (5 s), which a stalled master's calls wait out before the
# change; far above the fraction of a second the others take after it.
OTHERS_WITHIN_S = 3.0


@pytest.fixture(scope="module")
def steady_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """3 masters, no replicas, and no failover within a test."""
    c = RedisCluster(tmp_path_factory.mktemp("steady-cluster"), replicas=0,
                     node_timeout_ms=120_000).start()
    yield c
    c.stop()


@pytest.fixture
def cluster_resumed(steady_cluster: RedisCluster) -> Iterator[RedisCluster]:
    yield steady_cluster
    for node in steady_cluster.nodes:  # whatever a failed test left stopped
        if node.port in steady_cluster.paused:
            steady_cluster.resume(node)


def _layout(cluster: RedisCluster, receiver: Receiver,
            **overrides: Any) -> tuple[Settings, ClusterNode, list[int], list[int]]:
    """Settings whose app registrations are on a master that also holds partitions: that
    master, its partitions and the others'."""
    while True:
        settings = cluster_settings(cluster, receiver, **overrides)
        keys = Keys(settings.prefix, settings.partitions)
        victim = cluster.master_of_slot(key_slot(keys.apps.encode()))
        on = [p for p in range(settings.partitions)
              if cluster.master_of_slot(key_slot(keys.partition(p).due.encode())) == victim]
        off = [p for p in range(settings.partitions) if p not in on]
        if on and off:
            return settings, victim, on, off


def _name_on(settings: Settings, partition: int, stem: str) -> str:
    keys = Keys(settings.prefix, settings.partitions)
    return next(n for n in (f"{stem}-{i}" for i in range(100_000))
                if keys.partition_of(job_id(APP, n)) == partition)


def _name(d: Delivery) -> str:
    return d.path.rsplit("/", 1)[-1]


class _Held:
    """Holds `queue`'s script calls to the given partitions while `gate` is shut (Redis runs
    them once it opens); `held`: the names of the calls held; `ended` is set when a call
    that went on in the background ends."""

    def __init__(self, queue: Queue, partitions: list[int]) -> None:
        self.gate = asyncio.Event()
        self.ended = asyncio.Event()
        self.held: list[str] = []
        queue.on_parked_done = self.ended.set
        script, markers = queue._script, [f":{{{p}}}:" for p in partitions]

        async def answer_late(name: str, keys: list[str], args: list[Any]) -> Any:
            if any(m in keys[0] for m in markers) and not self.gate.is_set():
                self.held.append(name)
                await self.gate.wait()
            return await script(name, keys, args)

        queue._script = answer_late  # type: ignore[method-assign]

    async def open(self) -> None:
        """Let the calls through, and wait for the one in the background to end."""
        self.gate.set()
        await asyncio.wait_for(self.ended.wait(), 10)
        self.ended.clear()


def test_while_a_master_does_not_answer_the_other_partitions_are_claimed_and_settled(
        cluster_resumed: RedisCluster, receiver: Receiver) -> None:
    """A master stops answering while a delivery of one of its partitions is out: its
    outcome, the claims of its partitions and the refresh of the app registrations (kept
    on it) all wait, but the other partitions' jobs, due meanwhile, are delivered and
    settled. Once it answers again, its partitions' jobs go out, the waiting outcome
    goes in, and every job was delivered once."""
    settings, victim, on, off = _layout(cluster_resumed, receiver, lease_s=30.0)
    store = register(settings, receiver.url)
    out_name = _name_on(settings, on[0], "out")
    stopped = threading.Event()

    def responder(d: Delivery) -> int:
        if _name(d) == out_name:
            stopped.wait(30)  # answered once its master no longer answers
        return 200

    receiver.responder = responder
    with ThreadWorker(settings):
        store.schedule(make_job(out_name, now_ms()))
        wait_for(lambda: receiver.received(), 10, what="the delivery that is out")
        due = now_ms() + 500
        others = [_name_on(settings, p, "other") for p in off]
        theirs = [_name_on(settings, p, "theirs") for p in on]
        for name in others + theirs:
            store.schedule(make_job(name, due))
        cluster_resumed.pause(victim)
        stopped.set()
        wait_for(lambda: {_name(d) for d in receiver.received()} >= set(others),
                 OTHERS_WITHIN_S + (due - now_ms()) / 1000,
                 what="the other partitions' jobs delivered while a master is stalled")
        # Their outcomes went in (their jobs are over) while the master is still stalled.
        for name in others:
            wait_for(lambda name=name: store.get(APP, name) is None, OTHERS_WITHIN_S,
                     what=f"{name}'s outcome settled")
        assert not {_name(d) for d in receiver.received()} & set(theirs)
        cluster_resumed.resume(victim)
        wait_for(lambda: {_name(d) for d in receiver.received()} >= set(theirs), 15,
                 what="the stalled master's jobs delivered once it answers")
        for name in [out_name, *theirs]:
            wait_for(lambda name=name: store.get(APP, name) is None, 15,
                     what=f"{name}'s outcome settled")
    counts = Counter(_name(d) for d in receiver.received())
    assert counts == Counter([out_name, *others, *theirs])  # each once


def test_a_partition_whose_calls_answer_late_is_not_waited_for_nor_asked_again_meanwhile(
        cluster_resumed: RedisCluster, receiver: Receiver) -> None:
    """A claim, then a settlement, of one partition answer only when the test lets them:
    claim_within returns the other partitions' triggers without waiting, does not ask
    that partition again while its call is on, and takes its triggers once the call has
    answered (as leased when it started: `Claim.parked`); settle applies the others'
    outcomes, leaves that partition's without sending them again while their call is on,
    and counts them applied once it has answered. Redis runs every call: the test only
    holds them."""
    settings, _, on, off = _layout(cluster_resumed, receiver)
    slow = on[0]
    store = register(settings, receiver.url)
    late_name = _name_on(settings, slow, "late")
    others = [_name_on(settings, p, "other") for p in off]
    store.schedule_many(make_job(n, now_ms() - 1000) for n in [late_name, *others])
    budgets = Budgets(100, {}, 100)

    async def scenario() -> None:
        queue = Queue(settings)
        calls = _Held(queue, [slow])
        held = calls.held  # the slow partition's calls, held
        try:
            await queue.load_apps(None)
            started = time.monotonic()
            first = await queue.claim_within(100, budgets)
            assert sorted(t.job.name for t in first.triggers) == sorted(others)
            assert held == ["claim"]
            again = await queue.claim_within(100, budgets)
            assert again.triggers == [] and held == ["claim"]
            await calls.open()
            late = await queue.claim_within(100, budgets)
            assert [t.job.name for t in late.triggers] == [late_name]
            [token] = {t.lease for t in late.triggers}
            assert late.parked == {token: late.parked[token]}
            assert started <= late.parked[token] <= time.monotonic()
            assert first.parked == {}

            calls.gate.clear()
            outcomes = [Settlement(t, Action.NEXT, None) for t in first.triggers + late.triggers]
            settled = await queue.settle(outcomes)
            assert sorted(s.trigger.job.name for s in settled.applied) == sorted(others)
            assert [s.trigger.job.name for s in settled.left] == [late_name]
            assert settled.error is None and held == ["claim", "ack"]
            meanwhile = await queue.settle(settled.left)
            assert meanwhile.applied == [] and meanwhile.left == settled.left
            assert held == ["claim", "ack"]  # not sent again meanwhile
            await calls.open()
            after = await queue.settle(settled.left)
            assert after.applied == settled.left and after.left == []
        finally:
            await queue.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    for name in [late_name, *others]:
        assert store.get(APP, name) is None  # each settled: its job is over


@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["async-replication", "wait"])
@pytest.mark.parametrize("side", ["sync", "async"])
def test_a_script_a_master_does_not_have_yet_is_loaded_on_that_master_only(
        cluster: RedisCluster, receiver: Receiver, side: str, wait_replicas: int) -> None:
    """A script call meets NOSCRIPT (its master was promoted since the script last ran,
    or restarted): the script is sent with the call to that master (EVAL), not loaded on
    every master, which is what redis-py does and which waits for a master that does not
    answer (every call of the script, on any master, waited for a stalled one)."""
    settings = cluster_settings(cluster, receiver)
    source = f"-- {uuid.uuid4()}\nreturn redis.call('EXISTS', KEYS[1])"
    sha = hashlib.sha1(source.encode()).hexdigest()
    key = f"{settings.prefix}:{{7}}:probe"
    if side == "sync":
        client: Any = sync_client(settings, wait_replicas=wait_replicas)
        assert client.register_script(source)(keys=[key]) == 0
        assert client.register_script(source)(keys=[key]) == 0  # and by its digest since
        client.close()
    else:
        async def call() -> None:
            client = async_client(settings, wait_replicas=wait_replicas)
            try:
                assert await client.register_script(source)(keys=[key]) == 0
                assert await client.register_script(source)(keys=[key]) == 0
            finally:
                await client.aclose()

        asyncio.run(call())
    owner = cluster.master_of_slot(key_slot(key.encode()))
    have = {m.port: m.command("SCRIPT", "EXISTS", sha)[0] for m in cluster.live_masters()}
    assert have == {m.port: int(m.port == owner.port) for m in cluster.live_masters()}


def test_the_triggers_of_a_claim_answered_after_their_lease_are_sent_once(
        steady_cluster: RedisCluster, receiver: Receiver) -> None:
    """A partition's claim is answered after its triggers' lease ran out (Redis leased them
    as the call came in; the reply took longer): those triggers are not sent under that
    lease (they are taken again under a new one), and the other partitions' triggers,
    claimed meanwhile, go out as usual. Each job is delivered once."""
    settings, _, on, off = _layout(steady_cluster, receiver, lease_s=2.0,
                                   delivery_timeout_s=0.5)
    slow = on[0]
    store = register(settings, receiver.url)
    late_name = _name_on(settings, slow, "late")
    others = [_name_on(settings, p, "other") for p in off]
    marker = f":{{{slow}}}:"
    delayed: list[float] = []

    with ThreadWorker(settings) as tw:
        queue = tw.worker.queue
        script = queue._script

        async def reply_late(name: str, keys: list[str], args: list[Any]) -> Any:
            reply = await script(name, keys, args)
            if name == "claim" and marker in keys[0] and reply[3:] and not delayed:
                delayed.append(time.monotonic())
                await asyncio.sleep(settings.lease_s + 0.5)  # the reply on its way
            return reply

        queue._script = reply_late  # type: ignore[method-assign]
        store.schedule_many(make_job(n, now_ms()) for n in [late_name, *others])
        wait_for(lambda: {_name(d) for d in receiver.received()} >= {late_name, *others}, 15,
                 what="every job delivered")
        wait_for(lambda: store.get(APP, late_name) is None, 10, what="the late one settled")
    assert delayed
    counts = Counter(_name(d) for d in receiver.received())
    assert counts == Counter([late_name, *others])  # each once


def test_a_master_whose_call_answers_late_is_not_asked_for_its_other_partitions_meanwhile(
        cluster_resumed: RedisCluster, receiver: Receiver) -> None:
    """Every call to one master is held (many partitions on it): a claim waits for one of
    them only, not for each (0.2 s each: with 48 partitions, a claim took 3.4 s); the next
    claims ask that master nothing until the call has answered; then its partitions are
    claimed."""
    settings, _, on, off = _layout(cluster_resumed, receiver, partitions=48)
    assert len(on) > 1
    store = register(settings, receiver.url)
    theirs = [_name_on(settings, p, "theirs") for p in on]
    others = [_name_on(settings, p, "other") for p in off]
    store.schedule_many(make_job(n, now_ms() - 1000) for n in [*theirs, *others])
    budgets = Budgets(1000, {}, 1000)

    async def scenario() -> None:
        queue = Queue(settings)
        calls = _Held(queue, on)
        try:
            await queue.load_apps(None)
            first = await queue.claim_within(1000, budgets)
            assert sorted(t.job.name for t in first.triggers) == sorted(others)
            assert calls.held == ["claim"]
            again = await queue.claim_within(1000, budgets)
            assert again.triggers == [] and calls.held == ["claim"]
            await calls.open()
            late = await queue.claim_within(1000, budgets)
            assert sorted(t.job.name for t in late.triggers) == sorted(theirs)
        finally:
            await queue.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_closing_the_queue_gives_back_the_triggers_of_a_call_that_answered_late(
        cluster_resumed: RedisCluster, receiver: Receiver) -> None:
    """A claim call went on in the background and has answered, but no claim took its
    triggers before the queue closed (the worker stopping): they are given back, due at
    once for the next worker, rather than waiting out their lease."""
    settings, _, on, _ = _layout(cluster_resumed, receiver, lease_s=60.0)
    store = register(settings, receiver.url)
    name = _name_on(settings, on[0], "late")
    store.schedule(make_job(name, now_ms() - 1000))
    budgets = Budgets(100, {}, 100)

    async def scenario() -> None:
        queue = Queue(settings)
        calls = _Held(queue, on[:1])
        await queue.load_apps(None)
        assert (await queue.claim_within(100, budgets)).triggers == []
        await calls.open()
        await queue.close()
        after = Queue(settings)
        try:
            await after.load_apps(None)
            again = await after.claim_within(100, budgets)
            assert [t.job.name for t in again.triggers] == [name]
        finally:
            await after.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_worker_stops_within_a_bound_while_a_master_does_not_answer(
        cluster_resumed: RedisCluster, receiver: Receiver) -> None:
    """The master that holds the worker's counters stops answering: the worker still stops
    within a bound (its last counts are not written: they are given up after
    LAST_FLUSH_WITHIN_S). It took 60-140 s: its counters' flush, then its last one, each
    waited while redis-py tried the call again and again, each try waiting out the 5 s
    socket timeout. The whole stop has one deadline, the grace period and 5 s (with a 1 s
    grace, 6 s and a tenth of a second for each step past it), within the test's 30."""
    settings = cluster_settings(cluster_resumed, receiver, shutdown_grace_s=1.0)
    keys = Keys(settings.prefix, settings.partitions)
    victim = cluster_resumed.master_of_slot(key_slot(keys.stats_total(APP).encode()))
    part = next(p for p in range(settings.partitions)
                if cluster_resumed.master_of_slot(key_slot(keys.partition(p).due.encode()))
                != victim)
    name = _name_on(settings, part, "counted")
    store = register(settings, receiver.url)
    worker = ThreadWorker(settings).start()
    try:
        store.schedule(make_job(name, now_ms()))
        wait_for(lambda: store.get(APP, name) is None, 10, what="the job delivered, settled")
        cluster_resumed.pause(victim)
    finally:
        worker.stop(timeout=30)


def test_closing_the_queue_is_bounded_when_the_master_of_an_answered_call_stalls(
        cluster_resumed: RedisCluster, receiver: Receiver) -> None:
    """As test_closing_the_queue_gives_back_the_triggers_of_a_call_that_answered_late, but
    that master stops answering before the queue closes: the triggers are
    left to their lease, and closing does not wait for it (it waited 55 s, while redis-py
    tried the release again and again)."""
    settings, victim, on, _ = _layout(cluster_resumed, receiver, lease_s=60.0)
    store = register(settings, receiver.url)
    store.schedule(make_job(_name_on(settings, on[0], "late"), now_ms() - 1000))

    async def scenario() -> None:
        queue = Queue(settings)
        calls = _Held(queue, on[:1])
        await queue.load_apps(None)
        assert (await queue.claim_within(100, Budgets(100, {}, 100))).triggers == []
        await calls.open()
        cluster_resumed.pause(victim)
        await asyncio.wait_for(queue.close(), 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))
