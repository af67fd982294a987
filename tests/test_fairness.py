"""Fairness between apps (issue 10, part 2): one app's slow receiver or flood of triggers
does not delay another app's deliveries.

The claim (claim.lua through workers.queue.Queue.claim_within) on a fake clock: an app out
of budget has its due triggers set aside, so another app's triggers behind them are
reached; set-aside triggers come back oldest first, keep their attempts, and stale ones
(deleted, overwritten) are dropped. A worker's slots (workers/slots.py): each app within
its cap, a few more waiting for the app's own slots, given back when waiting too long.

End to end, one real worker process (as `jobrunner worker` runs) delivers for two apps,
each with its own receiver process (tests/chaos/support/receiver_server.py: asyncio, keep-alive,
it records the scheduled time and the arrival of each request). App B's lateness is
measured alone first, then beside app A's trouble, in the same test.

The bound: B's median lateness beside A's trouble is at most max(2 x B alone,
B alone + 50 ms). B alone is a millisecond or two on loopback, and twice that is
within the noise of a 2-core machine that runs Redis, a worker and two receivers
(a GC pause, another process's time slice): the floor keeps the test about
starvation, not about noise. Starvation is far above it: B's triggers waiting for
A's slots wait for A's delivery timeout (5 s here), or for A's backlog to drain.

Beside a flood of A's triggers the worker's CPU is busy with A's deliveries, so B's
lateness there is that busy event loop (tens of ms on a loaded 2-core machine), not a
queue: the floor is 150 ms. A B that waits behind A's due backlog waits far longer (423 ms
for the 1,000 jobs here before claims were fair, and it grows with the backlog).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.jobs.clock import now_ms
from app.jobs.model import HELD_LEASE, RunState, Trigger, TriggerStatus
from app.settings import Settings
from app.store.keys import Keys
from app.store.store import AppRegistration, Store
from tests.chaos.support.procs import Procs
from tests.chaos.support.receiver import Receiver
from tests.support.far import all_due
from tests.support.jobs import QueueDriver, make_job
from tests.support.redis_proc import RedisProcess
from tests.support.waiting import wait_for, wait_for_async
from tests.support.workers import WorkerFleet
from workers.delivery import Outcome
from workers.queue import Budgets, Standing
from workers.slots import SLOW_WAIT_S, Slots
from workers.worker import Worker

A, B = "app-a", "app-b"
T0 = 1_900_000_000_000  # the fake clock's "now", epoch ms
B_JOBS = 20
B_SPACING_MS = 50
TIMEOUT_S = 5.0  # A's hanging deliveries give up after this
FLOOD_FLOOR_MS = 150.0  # see the module docstring


def within_bound(with_trouble: float, alone: float, floor_ms: float = 50.0) -> bool:
    """The module docstring's bound."""
    return with_trouble <= max(2 * alone, alone + floor_ms)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.kill_all()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[WorkerFleet]:
    f = WorkerFleet(tmp_path)
    yield f
    f.cleanup()


# --- the claim ------------------------------------------------------------------------


@pytest.fixture
def claim_settings(redis_server: RedisProcess) -> Settings:
    return Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                    app_url="http://127.0.0.1:9", lease_s=5.0)


@pytest.fixture
def store(claim_settings: Settings) -> Iterator[Store]:
    """Both apps live (registered), as claims go by the live apps a worker knows of."""
    s = Store(claim_settings)
    for app_id in (A, B):
        s.register_app(AppRegistration(app_id, "http://127.0.0.1:9"))
    yield s
    s.close()


@pytest.fixture
def q(claim_settings: Settings) -> Iterator[QueueDriver]:
    d = QueueDriver(claim_settings, start_ms=T0)
    yield d
    d.close()


def _names(triggers: list[Trigger]) -> list[str]:
    return [t.job.name for t in triggers]


def test_an_app_out_of_budget_is_set_aside_and_the_next_app_is_reached(
        store: Store, q: QueueDriver) -> None:
    # 600 of A's triggers are due before B's one: more than one claim looks at.
    store.schedule_many(make_job(f"a{i:03d}", T0 - 1000 + i, app_id=A) for i in range(600))
    store.schedule(make_job("b", T0 - 10, app_id=B))
    a_full = Budgets(default=32, apps={A: 0}, set_aside=100)

    claims = [q.claim_within(10, a_full, at=T0)]
    while claims[-1].more and len(claims) < 10:
        claims.append(q.claim_within(10, a_full))

    taken = [t for c in claims for t in c.triggers]
    assert _names(taken) == ["b"]  # found behind all of A's, none of A's taken
    assert len(claims) == 6  # each set 100 of them aside, at most
    assert all(c.blocked == {A} for c in claims)
    view = store.get(A, "a000")
    assert view is not None and view.status is TriggerStatus.SCHEDULED  # set aside, as due
    assert view.next_ms == T0 - 1000

    # Room for 5 of A: the oldest 5, in their order.
    room = q.claim_within(10, Budgets(default=32, apps={A: 5}, set_aside=100))
    assert _names(room.triggers) == ["a000", "a001", "a002", "a003", "a004"]
    assert [t.sched_ms for t in room.triggers] == [T0 - 1000 + i for i in range(5)]
    assert all(t.attempt == 1 for t in room.triggers)
    assert room.blocked == {A}  # 595 more of A's wait for room
    # Without a budget for A, nothing of A's is taken, and nothing more of A's is due.
    assert q.claim_within(10, a_full).triggers == []
    everything = q.claim_within(1000, Budgets(default=1000, apps={}, set_aside=0))
    assert len(everything.triggers) == 595 and not everything.blocked


def test_with_one_live_app_its_backlog_is_left_in_place(claim_settings: Settings,
                                                        q: QueueDriver) -> None:
    # Nobody can be behind it: setting it aside would only cost Redis work.
    store = Store(claim_settings)
    store.register_app(AppRegistration(A, "http://127.0.0.1:9"))
    store.schedule_many(make_job(f"a{i:03d}", T0 - 1000 + i, app_id=A) for i in range(600))

    claim = q.claim_within(100, Budgets(default=32, apps={A: 5}, set_aside=100), at=T0)

    assert _names(claim.triggers) == ["a000", "a001", "a002", "a003", "a004"]
    assert claim.blocked == {A} and not claim.more
    assert claim.earliest is None  # what is due is A's: A's freed slots wake the worker
    keys = Keys(claim_settings.prefix).partition(0)
    assert store.redis.zcard(keys.held) == 0 and len(all_due(store.redis, keys)) == 600


def test_a_claim_takes_each_app_within_its_budget(store: Store, q: QueueDriver) -> None:
    store.schedule_many(make_job(f"a{i}", T0 - 100 + i, app_id=A) for i in range(50))
    store.schedule_many(make_job(f"b{i}", T0 - 50 + i, app_id=B) for i in range(50))

    claim = q.claim_within(100, Budgets(default=8, apps={A: 3}, set_aside=100), at=T0)

    apps = [t.job.app_id for t in claim.triggers]
    assert apps.count(A) == 3 and apps.count(B) == 8
    assert claim.blocked == {A, B}


def test_set_aside_triggers_keep_their_attempts_and_stale_ones_are_dropped(
        store: Store, q: QueueDriver, claim_settings: Settings) -> None:
    for name in ("retrying", "deleted", "overwritten", "kept"):
        store.schedule(make_job(name, T0 - 10, app_id=A))
    first = q.claim_within(10, Budgets(default=10, apps={}, set_aside=0), at=T0)
    retrying = next(t for t in first.triggers if t.job.name == "retrying")
    q.release([t for t in first.triggers if t is not retrying])
    q.retry(retrying, T0 + 5)

    held = q.claim_within(10, Budgets(default=10, apps={A: 0}, set_aside=10), at=T0 + 10)
    assert held.triggers == [] and held.blocked == {A}
    keys = Keys(claim_settings.prefix).partition(0)
    state = store.redis.hget(keys.runs, f"{A}/retrying")
    assert RunState.decode(state).lease == HELD_LEASE
    store.delete(A, "deleted")
    store.schedule(make_job("overwritten", T0 + 20, app_id=A), overwrite=True)

    later = q.claim_within(10, Budgets(default=10, apps={}, set_aside=0), at=T0 + 30)
    by_name = {t.job.name: t for t in later.triggers}
    assert sorted(by_name) == ["kept", "overwritten", "retrying"]
    assert by_name["retrying"].attempt == 2  # its failed attempt still counts
    assert by_name["overwritten"].sched_ms == T0 + 20  # the new job, from the due index
    assert store.redis.zcard(keys.held) == 0 and store.redis.zcard(keys.heldapps) == 0


def test_set_aside_triggers_come_back_oldest_first_past_stale_entries(
        store: Store, q: QueueDriver) -> None:
    """Stale entries (deleted jobs) counted against the app's room: a claim with room for
    5 took its newer due trigger, and the older set-aside ones came a claim later."""
    store.schedule_many(make_job(f"a{i}", T0 - 100 + i, app_id=A) for i in range(10))
    held = q.claim_within(10, Budgets(default=10, apps={A: 0}, set_aside=100), at=T0)
    assert held.triggers == [] and held.blocked == {A}
    for i in range(5):
        store.delete(A, f"a{i}")
    store.schedule(make_job("a-new", T0 + 5, app_id=A))

    room = q.claim_within(10, Budgets(default=10, apps={A: 5}, set_aside=100), at=T0 + 10)
    assert _names(room.triggers) == ["a5", "a6", "a7", "a8", "a9"]


def test_a_claim_drops_a_bounded_number_of_stale_set_aside_entries(
        claim_settings: Settings, q: QueueDriver) -> None:
    """The bound on stale entries read was per app: 8 apps' 100 each were all read by one
    call (64 apps: over 17,000, Redis blocked meanwhile)."""
    store = Store(claim_settings)
    apps = [f"s{i}" for i in range(8)]
    for app in apps:
        store.register_app(AppRegistration(app, "http://127.0.0.1:9"))
        store.schedule_many(make_job(f"j{k:03d}", T0 - 1000 + k, app_id=app) for k in range(100))
    assert q.claim_within(100, Budgets(default=0, apps={}, set_aside=1000), at=T0).triggers == []
    for app in apps:
        for k in range(100):
            store.delete(app, f"j{k:03d}")
    held = Keys(claim_settings.prefix).partition(0).held
    assert store.redis.zcard(held) == 800

    claim = q.claim_within(100, Budgets(default=10, apps={}, set_aside=50), at=T0 + 10)
    assert claim.triggers == [] and claim.more
    # Its bound (the claim's size and what it may set aside), and one read past it.
    assert 800 - store.redis.zcard(held) <= 100 + 50 + 10
    store.close()


def test_set_aside_triggers_of_an_app_behind_64_full_apps_come_back(
        claim_settings: Settings, q: QueueDriver) -> None:
    """The claim read the first 64 apps with set-aside triggers: 64 apps this worker has no
    room for filled that window, and another app's never came back (its newer ones went)."""
    store = Store(claim_settings)
    busy = [f"busy{i:02d}" for i in range(64)]
    for app in (*busy, "quiet"):
        store.register_app(AppRegistration(app, "http://127.0.0.1:9"))
    for k, app in enumerate(busy):
        store.schedule(make_job("j", T0 - 1000 + k, app_id=app))
    store.schedule_many(make_job(f"c{i}", T0 - 500 + i, app_id="quiet") for i in range(3))
    assert q.claim_within(100, Budgets(default=0, apps={}, set_aside=1000), at=T0).triggers == []
    store.schedule(make_job("c-new", T0 + 5, app_id="quiet"))

    room = Budgets(default=10, apps=dict.fromkeys(busy, 0), set_aside=1000)
    claim = q.claim_within(100, room, at=T0 + 10)
    assert _names(claim.triggers) == ["c0", "c1", "c2", "c-new"]
    store.close()


# --- a worker's slots -------------------------------------------------------------------


def test_slots_cap_each_app_and_queue_a_few_more_that_hold_no_slot() -> None:
    slots = Slots(concurrency=10, per_app=2, claim_batch=8)  # and 8 waiting: room 10 per app
    a = [_trigger(A, f"a{i}") for i in range(4)]
    now = time.monotonic()
    assert [slots.admit(t, now) for t in a] == [True, True, False, False]
    assert slots.admit(_trigger(B, "b0"), now)  # B does not wait behind A's
    assert slots.free == 7 and slots.inflight[A] == 2
    assert slots.budgets().apps == {A: 6, B: 9} and slots.budgets().default == 10

    nxt, claim = slots.give_back(A)  # a slot of A's frees: its oldest waiting one takes it
    assert nxt is not None and nxt[0] is a[2]
    assert not claim  # no claim left A's triggers for want of room
    assert slots.inflight[A] == 2 and slots.free == 7
    slots.blocked({A})  # the last claim did
    nxt, claim = slots.give_back(A)
    assert nxt is not None and nxt[0] is a[3]
    assert claim  # room for a batch (per_app) of A's again: time to claim

    # One that waited past SLOW_WAIT_S: A is slow, and its queue only as long as its slots
    # (what waits must not outwait its lease).
    assert not slots.admit(_trigger(A, "a4"), now - SLOW_WAIT_S - 1)
    assert slots.budgets().apps[A] == 10 - 3
    nxt, _ = slots.give_back(A)
    assert nxt is not None and nxt[0].job.name == "a4"
    assert slots.budgets().apps[A] == 4 - 2 and slots.budgets().apps[B] == 9

    assert not slots.admit(_trigger(A, "a5"), now)
    nxt, _ = slots.give_back(A, start_next=False)  # stopping: nothing more starts
    assert nxt is None
    assert [t.job.name for t in slots.drain()] == ["a5"] and slots.waiting == {}


def test_a_trigger_that_waited_past_its_lease_margin_is_given_back(
        claim_settings: Settings) -> None:
    worker = Worker(claim_settings.with_(lease_s=5.0, delivery_timeout_s=2.0))
    released = _leased_as_made(worker)
    # Due now: a trigger claimed ahead waits for its due time before its delivery starts.
    late, fresh = _trigger(A, "late", now_ms()), _trigger(A, "fresh", now_ms())
    for trigger in (late, fresh):
        assert worker.slots.admit(trigger, 0.0)

    async def deliver() -> None:
        # Waited 2.5 s: with its 2 s timeout and 1 s of margin, past the 5 s lease.
        await worker._deliver(late, waited_since=time.monotonic() - 2.5)
        # Waited 1.5 s: delivered (to no registered address here: a failed attempt).
        await worker._deliver(fresh, waited_since=time.monotonic() - 1.5)
        await worker.queue.close()

    asyncio.run(deliver())
    assert released == [late]
    assert [s.trigger.job.name for s in worker.settled] == ["fresh"]
    assert worker.slots.free == worker.slots.concurrency


def test_a_trigger_whose_lease_check_took_long_is_given_back_not_sent(
        claim_settings: Settings) -> None:
    """Its lease looked long enough before the check that it still holds it (a round trip
    to Redis), not after: a check that took 2.2 s (a stalled master) let it go out 3.7 s
    into a 5 s lease with a 2 s timeout, to run past it."""
    worker = Worker(claim_settings.with_(lease_s=5.0, delivery_timeout_s=2.0))
    released = _leased_as_made(worker, check_s=2.2)
    late = _trigger(A, "late", now_ms())
    assert worker.slots.admit(late, 0.0)

    async def deliver() -> None:
        await worker._deliver(late, waited_since=time.monotonic() - 1.5)
        await worker.queue.close()

    asyncio.run(deliver())
    assert released == [late] and worker.settled == []


def test_a_trigger_that_waited_for_its_slot_waits_for_a_connection_only_what_its_lease_leaves(
        claim_settings: Settings, store: Store) -> None:
    # One connection to A, held by a delivery its receiver never answers. A trigger that
    # waited 1.5 s for its slot may wait for that connection 0.5 s at most (5 s lease, 2 s
    # timeout, 1 s margin): waiting the 2 s the others may, then sent, it would have run
    # 1.5 + 2 + 2 s, past its lease, and gone out twice.
    worker = Worker(claim_settings.with_(lease_s=5.0, delivery_timeout_s=2.0,
                                         connections_per_app=1))
    holder, late = _trigger(A, "holder", now_ms()), _trigger(A, "late", now_ms())
    _leased_as_made(worker)
    errors: dict[str, str | None] = {}
    conclude = worker._conclude

    def concluded(trigger: Trigger, outcome: Outcome, started: int, clock: float) -> None:
        errors[trigger.job.name] = outcome.error
        conclude(trigger, outcome, started, clock)

    worker._conclude = concluded  # type: ignore[method-assign]

    async def deliver() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        store.register_app(AppRegistration(A, f"http://127.0.0.1:{port}"))
        await worker.queue.load_apps({A}, max_age_s=0)
        for trigger in (holder, late):
            assert worker.slots.admit(trigger, 0.0)
        holding = asyncio.create_task(worker._deliver(holder))
        await wait_for_async(lambda: accepted, what="the holder's connection")
        await worker._deliver(late, waited_since=time.monotonic() - 1.5)
        await holding
        server.close()
        for writer in accepted:
            writer.close()
        await worker.queue.close()

    asyncio.run(deliver())
    # 0.5 s less what passed between its wait's start (1.5 s ago) and the pool's wait (a
    # few ms on a loaded machine: 0.497 s).
    waited = re.fullmatch(r"no free connection to the app within ([0-9.]+)s", errors["late"] or "")
    assert waited is not None and 0.4 < float(waited.group(1)) <= 0.5, errors
    assert errors["holder"] == "no answer within 2s"
    assert worker.slots.free == worker.slots.concurrency


def _leased_as_made(worker: Worker, check_s: float = 0.0) -> list[Trigger]:
    """The worker's queue for triggers made up here, in no store: each still holds its
    lease (a check that takes `check_s`), and those given back are listed, returned."""
    released: list[Trigger] = []

    async def release(triggers: list[Trigger]) -> int:
        released.extend(triggers)
        return len(triggers)

    async def still_current(trigger: Trigger, lease: bool) -> Standing:
        await asyncio.sleep(check_s)
        return Standing(True, True, False)

    worker.queue.release = release  # type: ignore[method-assign]
    worker.queue.still_current = still_current  # type: ignore[method-assign]
    return released


def _trigger(app_id: str, name: str, sched_ms: int = T0) -> Trigger:
    return Trigger(make_job(name, sched_ms, app_id=app_id), f"{app_id}/{name}", 0, sched_ms, 1,
                   0, "l")


def _receiver(procs: Procs, path: Path, mode: str = "healthy") -> Receiver:
    path.mkdir()
    return Receiver(procs, path, mode).start()


def _b_lateness(store: Store, b: Receiver, tag: str) -> list[float]:
    """Schedule B_JOBS of B's jobs, one every B_SPACING_MS, and return the lateness (ms)
    of each at its arrival at B's receiver."""
    start = now_ms() + 300
    store.schedule_many(make_job(f"{tag}-{i}", start + i * B_SPACING_MS, app_id=B)
                        for i in range(B_JOBS))

    def arrived() -> list[float]:
        mine = [r for r in b.records() if r.name.startswith(f"{tag}-")]
        return [r.arrival_ms - r.sched_ms for r in mine] if len(mine) >= B_JOBS else []

    lateness = wait_for(arrived, 30, interval=0.05, what=f"{B_JOBS} deliveries of {tag}")
    assert min(lateness) >= 0  # never early
    return lateness


def _setup(settings: Settings, a: Receiver, b: Receiver) -> Store:
    store = Store(settings)
    store.register_app(AppRegistration(A, a.url))
    store.register_app(AppRegistration(B, b.url))
    return store


def _settings(settings: Settings) -> Settings:
    # The adversarial run's worker: one process, 256 in flight, 64 connections per app.
    return settings.with_(concurrency=256, connections_per_app=64, delivery_timeout_s=TIMEOUT_S,
                          lease_s=30.0, idle_poll_s=1.0)


@pytest.mark.parametrize(("slots", "cap", "a_jobs"), [
    (256, 64, 500),
    # The README's advice followed (more slots than the caps of the apps that may hang):
    # the worker claimed only with a quarter of its slots free (4), and as each of A's
    # hanging deliveries timed out its next trigger took the slot: 3 stayed free, and B's
    # triggers were not claimed until A's backlog was gone (29 s).
    (16, 13, 80),
], ids=["default-slots", "fewer-free-than-a-batch"])
def test_a_hanging_receiver_does_not_delay_another_app(settings: Settings, procs: Procs,
                                                       fleet: WorkerFleet, tmp_path: Path,
                                                       slots: int, cap: int,
                                                       a_jobs: int) -> None:
    settings = _settings(settings).with_(concurrency=slots, app_concurrency=cap,
                                         connections_per_app=cap)
    a = _receiver(procs, tmp_path / "a", mode="slow")  # accepts, reads, answers never
    a.set_mode("slow", delay=3600)
    b = _receiver(procs, tmp_path / "b")
    store = _setup(settings, a, b)
    fleet.start(settings)

    alone = _b_lateness(store, b, "alone")

    store.schedule_many(make_job(f"a-{i}", now_ms(), app_id=A) for i in range(a_jobs))
    # A's slots in the worker are all taken by deliveries that hang.
    wait_for(lambda: a.count() >= settings.app_concurrency, 10, interval=0.05,
             what="app A's receiver to hold the worker's deliveries")
    beside = _b_lateness(store, b, "beside")

    assert a.count() == settings.app_concurrency  # A never got more than its slots
    p50_alone, p50_beside = statistics.median(alone), statistics.median(beside)
    assert within_bound(p50_beside, p50_alone), (
        f"B's median lateness {p50_beside:.1f} ms beside A's hanging receiver, "
        f"{p50_alone:.1f} ms alone; max {max(beside):.1f} / {max(alone):.1f} ms")
    # Not one of B's triggers waited for one of A's to time out.
    assert max(beside) < TIMEOUT_S * 1000


def test_a_flood_of_every_1ms_jobs_does_not_starve_another_app(settings: Settings,
                                                                procs: Procs,
                                                                fleet: WorkerFleet,
                                                                tmp_path: Path) -> None:
    settings = _settings(settings)
    a = _receiver(procs, tmp_path / "a")
    b = _receiver(procs, tmp_path / "b")
    store = _setup(settings, a, b)
    fleet.start(settings)

    alone = _b_lateness(store, b, "alone")

    store.schedule_many(make_job(f"a-{i}", now_ms(), app_id=A, schedule="@every 1ms")
                        for i in range(1000))
    flooding = a.count() + 2000
    wait_for(lambda: a.count() >= flooding, 20, interval=0.05, what="A's flood to be under way")
    beside = _b_lateness(store, b, "beside")
    assert a.count() > flooding  # the flood went on all along

    p50_alone, p50_beside = statistics.median(alone), statistics.median(beside)
    assert within_bound(p50_beside, p50_alone, FLOOD_FLOOR_MS), (
        f"B's median lateness {p50_beside:.1f} ms beside A's flood, {p50_alone:.1f} ms alone; "
        f"max {max(beside):.1f} / {max(alone):.1f} ms")
