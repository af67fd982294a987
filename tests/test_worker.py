"""Worker processes: exactly once with two workers, SIGKILL lease recovery, SIGTERM.

Real `python -m workers` processes (tests/support/workers.py) deliver to the
`receiver` HTTP server on localhost, over the private redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import redis

from app.jobs import clock as clock_module
from app.jobs.clock import now_ms
from app.jobs.model import FailureKind, FailurePolicy, Trigger, TriggerStatus
from app.settings import Settings
from app.store.history import History
from app.store.keys import Keys, job_id
from app.store.store import AppRegistration, Store
from tests.support.jobs import APP, dead_letters, make_job, register
from tests.support.receiver import DROP, Delivery, Receiver
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.slow_link import SlowLink
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker, WorkerFleet
from workers import http_client as http_module
from workers import queue as queue_module
from workers import worker as worker_module
from workers.queue import Settled, Settlement
from workers.worker import Worker

pytestmark = pytest.mark.usefixtures("reap_workers")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[WorkerFleet]:
    f = WorkerFleet(tmp_path)
    yield f
    f.cleanup()


def _name(d: Delivery) -> str:
    return unquote(d.path[len("/job/"):])


def _by_name(ds: list[Delivery]) -> dict[str, list[Delivery]]:
    out: dict[str, list[Delivery]] = defaultdict(list)
    for d in ds:
        out[_name(d)].append(d)
    return out


def _delivered_count(metrics_port: int) -> int:
    """Deliveries a worker process made, from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(sum(float(m) for m in re.findall(
        r'^jobrunner_deliveries_total\{[^}]*\} ([0-9.e+]+)$', text, re.M)))


# --- exactly once with two workers ------------------------------------------------------


def test_two_workers_deliver_each_trigger_exactly_once(settings: Settings, receiver: Receiver,
                                                       fleet: WorkerFleet) -> None:
    # a generous lease: this is about normal operation, not about lease recovery
    settings = settings.with_(lease_s=30.0, delivery_timeout_s=10.0, concurrency=64,
                              claim_batch=64)
    store = register(settings, receiver.url)
    ports = [free_port(), free_port()]
    workers = [fleet.start(settings, JOBRUNNER_WORKER_METRICS_PORT=str(p)) for p in ports]

    due = now_ms() + 1000  # all due together, after both workers are up
    n_once, n_every, repeats = 3000, 30, 3
    store.schedule_many(make_job(f"once-{i}", due, data=i) for i in range(n_once))
    store.schedule_many(make_job(f"every-{i}", due, schedule="@every 1s", repeats=repeats)
                        for i in range(n_every))
    expected = n_once + n_every * repeats

    # positive signal that nothing more will come: every job is over and removed
    wait_for(lambda: store.counts()["jobs"] == 0, 60,
             what=f"all jobs done ({len(receiver.received())}/{expected} delivered)")
    wait_for(lambda: sum(_delivered_count(p) for p in ports) >= expected, 10,
             what="the workers' delivery counters")
    ds = receiver.received()
    assert all(w.proc is not None and w.proc.poll() is None for w in workers), fleet.logs()

    ids = Counter(d.headers["jobrunner-trigger-id"] for d in ds)
    dups = {i: c for i, c in ids.items() if c > 1}
    detail = [(d.headers["jobrunner-trigger-id"], d.headers["jobrunner-attempt"],
               round(d.received_at - due / 1000, 3)) for d in ds
              if d.headers["jobrunner-trigger-id"] in dups]
    assert dups == {}, (f"{len(dups)} triggers delivered more than once: {detail[:12]}\n"
                        f"{fleet.logs()[-3000:]}")
    assert len(ids) == expected, f"{expected - len(ids)} triggers lost"
    by_name = _by_name(ds)
    wrong = {n: len(by_name[n]) for n in [f"once-{i}" for i in range(n_once)]
             + [f"every-{i}" for i in range(n_every)]
             if len(by_name[n]) != (repeats if n.startswith("every-") else 1)}
    assert wrong == {}, f"deliveries per job, where wrong: {dict(list(wrong.items())[:10])}"
    retried = [(_name(d), d.headers["jobrunner-attempt"]) for d in ds
               if d.headers["jobrunner-attempt"] != "1"]
    assert retried == [], f"{len(retried)} needed a retry: {retried[:5]}\n{fleet.logs()[-3000:]}"
    assert all(d.received_at * 1000 >= int(d.headers["jobrunner-scheduled-ms"]) for d in ds)

    per_worker = [_delivered_count(p) for p in ports]
    assert sum(per_worker) == len(ds)
    assert all(c > 0 for c in per_worker), f"one worker did all the work: {per_worker}"
    assert store.counts() == {"jobs": 0, "due_index": 0, "dead_letters": 0}


# --- SIGKILL: leases recover the triggers of a dead worker ---------------------------------


def test_sigkill_loses_nothing_and_duplicates_only_what_was_in_flight(
        settings: Settings, receiver: Receiver, fleet: WorkerFleet) -> None:
    settings = settings.with_(lease_s=3.0, delivery_timeout_s=2.0)
    store = register(settings, receiver.url)
    gate = threading.Event()
    first_attempt_seen: set[str] = set()
    lock = threading.Lock()

    def responder(d: Delivery) -> int:
        # the first delivery of each "slow-" trigger hangs until the test lets it go
        if _name(d).startswith("slow-"):
            with lock:
                first = _name(d) not in first_attempt_seen
                first_attempt_seen.add(_name(d))
            if first:
                gate.wait(30)
        return 200

    receiver.responder = responder
    try:
        a = fleet.start(settings)
        # finished and acknowledged before the kill
        store.schedule_many(make_job(f"fast-{i}", data=i) for i in range(20))
        wait_for(lambda: all(store.get(APP, f"fast-{i}") is None for i in range(20)),
                 what="the fast jobs acknowledged")
        # in flight at the kill: A holds their leases, the receiver holds the requests
        n_slow = 15
        store.schedule_many(make_job(f"slow-{i}", data=i) for i in range(n_slow))
        wait_for(lambda: len(first_attempt_seen) == n_slow, what="all slow deliveries in flight")
        # due soon, not yet claimed at the kill
        store.schedule_many(make_job(f"later-{i}", now_ms() + 300) for i in range(20))
        a.kill()
        killed_at = time.time()
        views = [store.get(APP, f"slow-{i}") for i in range(n_slow)]
        assert all(v is not None and v.status is TriggerStatus.IN_FLIGHT for v in views)

        fleet.start(settings)
        store.schedule_many(make_job(f"after-{i}", data=i) for i in range(20))
        # 0 lost: every job delivered and acknowledged (then removed)
        wait_for(lambda: store.counts()["jobs"] == 0, 30,
                 what=f"all jobs done; workers said:\n{fleet.logs()}")
    finally:
        gate.set()

    by_name = _by_name(receiver.received())
    groups = {"fast": 20, "slow": n_slow, "later": 20, "after": 20}
    for group, n in groups.items():
        for i in range(n):
            assert by_name.get(f"{group}-{i}"), f"{group}-{i} was lost"
    # duplicates only for the triggers in flight at the kill
    for name, ds in by_name.items():
        if name.startswith("slow-"):
            assert [d.headers["jobrunner-attempt"] for d in ds] == ["1", "2"], name
            assert len({d.headers["jobrunner-trigger-id"] for d in ds}) == 1
            assert ds[1].received_at > killed_at
        else:
            assert len(ds) == 1, f"{name} delivered {len(ds)} times"
    assert dead_letters(store) == []


# --- SIGTERM: stop claiming, finish or release, exit 0 -------------------------------------


@pytest.mark.parametrize("warm", [False, True], ids=["new-connections", "kept-alive"])
def test_sigterm_counts_what_it_sent_and_gives_back_what_it_did_not(
        settings: Settings, receiver: Receiver, fleet: WorkerFleet, warm: bool) -> None:
    """Past the grace, a delivery sent and not answered is a failed attempt, as a timeout
    is: its policy's retry goes to another worker as the next attempt (given back
    uncounted, it went again at once as the same attempt, past the policy: a job of
    `maxRetries: 0` reached the app twice). One not sent yet, waiting for its app's slot,
    is given back at once, uncounted. `kept-alive`: the app's connections are open and
    idle when the held triggers come, so these go out at once (Worker._send_now), not each
    in a task of its own."""
    # a lease far longer than the test may take: a redelivery within it can only come
    # from the settlement or the release, not from lease expiry
    n, slots = 10, 4
    settings = settings.with_(lease_s=60.0, delivery_timeout_s=30.0, shutdown_grace_s=0.5,
                              app_concurrency=slots)
    store = register(settings, receiver.url)
    gate = threading.Event()
    seen: set[str] = set()
    lock = threading.Lock()

    def responder(d: Delivery) -> int:
        with lock:
            first = _name(d) not in seen
            seen.add(_name(d))
        if first and _name(d).startswith(("held-", "once-")):
            gate.wait(60)  # outlasts the shutdown grace
        return 200

    receiver.responder = responder
    try:
        a = fleet.start(settings)
        if warm:
            store.schedule_many(make_job(f"warm-{i}", data=i) for i in range(slots))
            wait_for(lambda: store.counts()["jobs"] == 0, what="the warm-up deliveries")
        once = FailurePolicy(FailureKind.CONSTANT, interval_ms=0, max_retries=0)
        store.schedule_many(
            [make_job(f"held-{i}", data=i) for i in range(slots - 1)]
            + [make_job("once-0", failure_policy=once)]
            + [make_job(f"wait-{i}", data=i) for i in range(n - slots)])
        wait_for(lambda: len(seen) == slots + (slots if warm else 0),
                 what="the app's slots full at worker A")
        sigterm_at = time.time()
        assert a.terminate(timeout=20) == 0, a.log()
        assert f"released {n - slots} unfinished triggers" in a.log(), a.log()
        for i in range(slots - 1):  # sent: attempt 1 failed, its retry waits
            view = store.get(APP, f"held-{i}")
            assert view is not None and view.status is TriggerStatus.RETRYING, view
            assert view.attempt == 1
        for i in range(n - slots):  # not sent: handed back, uncounted
            view = store.get(APP, f"wait-{i}")
            assert view is not None and view.status is TriggerStatus.SCHEDULED, view
            assert view.attempt == 0
        [letter] = dead_letters(store)  # no retry left: the stop's cut is its last attempt
        assert letter.name == "once-0" and letter.attempts == 1
        assert letter.error == worker_module.CUT_SHORT
        history = History(store).read(APP, "once-0")
        assert history is not None
        [entry] = history.entries  # when it was sent, and for as long as it was out
        assert entry.sent_ms < sigterm_at * 1000 and entry.duration_us >= 400_000, entry

        fleet.start(settings)
        wait_for(lambda: store.counts()["jobs"] == 0, 20,
                 what="worker B to deliver the retries and the released triggers")
    finally:
        gate.set()
    assert time.time() - sigterm_at < settings.lease_s / 2  # not by lease expiry
    got = _by_name(receiver.received())
    assert len(got["once-0"]) == 1
    for i in range(slots - 1):
        ds = got[f"held-{i}"]
        assert len({d.headers["jobrunner-trigger-id"] for d in ds}) == 1
        assert [d.headers["jobrunner-attempt"] for d in ds] == ["1", "2"]
    for i in range(n - slots):
        assert [d.headers["jobrunner-attempt"] for d in got[f"wait-{i}"]] == ["1"]


def test_a_kept_alive_connection_the_app_closed_is_not_a_failed_attempt(
        settings: Settings, receiver: Receiver) -> None:
    """The app closes an idle kept-alive connection as the next delivery is written on it
    (the request crosses its FIN): no answer came, so the delivery is sent again on a new
    connection at once, the same attempt, not a failure that waits for its retry."""
    settings = settings.with_(lease_s=60.0)
    store = register(settings, receiver.url)
    dropped: list[str] = []

    def responder(d: Delivery) -> int:
        if _name(d) == "again" and not dropped:
            dropped.append(d.headers["jobrunner-trigger-id"])
            return DROP
        return 200

    receiver.responder = responder
    with ThreadWorker(settings):
        store.schedule(make_job("warm"))  # opens the connection, kept alive after
        wait_for(lambda: store.counts()["jobs"] == 0, what="the first delivery")
        store.schedule(make_job("again"))
        wait_for(lambda: store.counts()["jobs"] == 0, what="the second job's delivery")
    again = receiver.received("/job/again")
    assert [d.headers["jobrunner-attempt"] for d in again] == ["1", "1"]
    assert {d.headers["jobrunner-trigger-id"] for d in again} == set(dropped)
    assert dead_letters(store) == []


def test_sigterm_lets_in_flight_deliveries_finish_within_the_grace(
        settings: Settings, receiver: Receiver, fleet: WorkerFleet) -> None:
    settings = settings.with_(lease_s=60.0, delivery_timeout_s=30.0, shutdown_grace_s=20.0)
    store = register(settings, receiver.url)
    gate = threading.Event()
    receiver.responder = lambda d: (gate.wait(30), 200)[1]
    n = 5
    try:
        a = fleet.start(settings)
        store.schedule_many(make_job(f"inflight-{i}", data=i) for i in range(n))
        wait_for(lambda: len(receiver.received()) == n, what="deliveries in flight")
        assert a.proc is not None
        a.proc.send_signal(signal.SIGTERM)  # the deliveries are still waiting on the app
        # the worker must not exit while it holds unfinished deliveries within the grace
        gate.set()
        assert a.terminate(timeout=20) == 0, a.log()
    finally:
        gate.set()
    assert "released" not in a.log()
    # finished and acknowledged before the exit: nothing left to redeliver
    assert store.counts()["jobs"] == 0
    assert len(receiver.received()) == n


def test_sigterm_on_an_idle_worker_exits_0(settings: Settings, fleet: WorkerFleet) -> None:
    a = fleet.start(settings)
    assert a.terminate(timeout=15) == 0, a.log()
    assert f"worker {a.pid} stopped" in a.log()


# --- the worker loop ------------------------------------------------------------------------


def test_idle_worker_polls_instead_of_spinning(settings: Settings, receiver: Receiver) -> None:
    """Regression: a finished delivery left an event set that made the idle loop spin,
    claiming thousands of times a second."""
    store = register(settings, receiver.url)
    with ThreadWorker(settings) as w:
        store.schedule(make_job("one"))
        wait_for(lambda: store.get(APP, "one") is None, what="the job acknowledged")
        claims = 0
        real_claim = w.worker.queue.claim

        async def counting_claim(limit: int):  # type: ignore[no-untyped-def]
            nonlocal claims
            claims += 1
            return await real_claim(limit)

        w.worker.queue.claim = counting_claim
        observation_window_s = 1.0
        time.sleep(observation_window_s)  # a bounded observation window, by design
        w.worker.queue.claim = real_claim
    # idle_poll_s is 0.2: about 5 polls in the window; a spinning loop makes thousands
    assert claims <= 5 * observation_window_s / settings.idle_poll_s, claims


def test_a_retry_due_before_the_next_idle_poll_is_not_held_back(settings: Settings,
                                                                receiver: Receiver) -> None:
    """After settling a retry due soon, the worker must look again at that time, not
    only at its next idle poll (60 s here, so the difference is unambiguous)."""
    settings = settings.with_(idle_poll_s=60.0, lease_s=60.0)
    store = register(settings, receiver.url)
    receiver.responder = lambda d: 500 if d.headers["jobrunner-attempt"] == "1" else 200
    with ThreadWorker(settings):
        store.schedule(make_job("retry-soon",
                                failure_policy=FailurePolicy(FailureKind.CONSTANT, 100, 3)))
        wait_for(lambda: len(receiver.received()) >= 2, 10,
                 what="the retry 100 ms after the failure")
    assert [d.headers["jobrunner-attempt"] for d in receiver.received()] == ["1", "2"]


def test_a_recurring_occurrence_before_the_next_idle_poll_is_not_held_back(
        settings: Settings, receiver: Receiver) -> None:
    settings = settings.with_(idle_poll_s=60.0, lease_s=60.0)
    store = register(settings, receiver.url)
    with ThreadWorker(settings):
        store.schedule(make_job("every-300ms", schedule="@every 300ms", repeats=3))
        wait_for(lambda: store.get(APP, "every-300ms") is None, 10,
                 what="3 occurrences 300 ms apart")
    assert len(receiver.received()) == 3


def test_registrations_are_refreshed_ahead_only_where_that_spares_the_due_claim(
        settings: Settings) -> None:
    """Worker._sleep_until refreshes before a sleep when the claim after it would refresh
    first (a round trip on the due path), not when the cache would be stale by then anyway."""
    from workers.queue import APPS_MAX_AGE_S, Queue

    queue = Queue(settings)  # no command sent: no connection made
    queue._apps_loaded = time.monotonic() - APPS_MAX_AGE_S * 0.9
    assert queue.apps_stale_within(APPS_MAX_AGE_S * 0.2)
    assert not queue.apps_stale_within(APPS_MAX_AGE_S * 0.05)  # still fresh at wake-up
    assert not queue.apps_stale_within(APPS_MAX_AGE_S * 1.5)  # stale at wake-up anyway


def test_while_a_partitions_outcomes_wait_the_others_are_written_and_sent_once(
        settings: Settings, receiver: Receiver) -> None:
    """Partition 0's outcome cannot be written: the first try fails at once, each next one
    hangs 3 s first (a master away, a socket timeout). A job on partition 1 is delivered
    meanwhile: its outcome is written, not claimed again once its 2 s lease has run out
    while its outcome waited behind partition 0's (it went out four times), and it is
    delivered once."""
    settings = settings.with_(partitions=4, lease_s=2.0, delivery_timeout_s=1.0,
                              idle_poll_s=0.1)
    store = register(settings, receiver.url)
    keys = Keys(settings.prefix, settings.partitions)
    a, b = (next(f"{p}-{i}" for i in range(1000)
                 if keys.partition_of(job_id(APP, f"{p}-{i}")) == part)
            for p, part in (("a", 0), ("b", 1)))
    down = threading.Event()
    tries: list[float] = []
    with ThreadWorker(settings) as w:
        script = w.worker.queue._script

        async def away(name: str, keys: list[str], args: list[Any]) -> Any:
            if down.is_set() and name == "ack" and ":{0}:" in keys[0]:
                if tries:
                    await asyncio.sleep(3.0)
                tries.append(time.monotonic())
                raise redis.ConnectionError("partition 0's master is away (test)")
            return await script(name, keys, args)

        w.worker.queue._script = away  # type: ignore[method-assign]
        down.set()
        store.schedule(make_job(a, now_ms()))
        wait_for(lambda: tries, 10, what="partition 0's outcome not written")
        store.schedule(make_job(b, now_ms()))
        wait_for(lambda: store.get(APP, b) is None, 10, what="partition 1's outcome written")
        wait_for(lambda: len(tries) >= 3, 20, what="two more tries at partition 0, 3 s each")
        down.clear()
        wait_for(lambda: store.get(APP, a) is None, 20, what="partition 0's outcome written")
    assert sorted(_name(d) for d in receiver.received()) == [a, b]


def _on_partition(settings: Settings, part: int, count: int, prefix: str) -> list[str]:
    keys = Keys(settings.prefix, settings.partitions)
    return [n for n in (f"{prefix}-{i}" for i in range(10_000))
            if keys.partition_of(job_id(APP, n)) == part][:count]


def _refuse_acks_of_partition_0(w: ThreadWorker, refusal: Exception,
                                slow_partition_1_s: float = 0.0) -> threading.Event:
    """Partition 0's outcomes refused while the returned event is set."""
    script = w.worker.queue._script
    refusing = threading.Event()
    refusing.set()

    async def refused(name: str, keys: list[str], args: list[Any]) -> Any:
        if name == "ack" and ":{0}:" in keys[0] and refusing.is_set():
            raise refusal
        if name == "ack" and ":{1}:" in keys[0]:
            await asyncio.sleep(slow_partition_1_s)
        return await script(name, keys, args)

    w.worker.queue._script = refused  # type: ignore[method-assign]
    return refusing


def test_while_a_partitions_outcomes_wait_the_others_go_out_on_time(
        settings: Settings, receiver: Receiver) -> None:
    """Partition 0's outcomes are refused: jobs scheduled ahead on partition 1, due every
    40 ms and answered in 0-60 ms, go out on time. (A claim skips a partition whose
    outcomes are not written yet while any wait; a written batch did not wake the claim
    loop, which slept up to idle_poll_s: 412 ms late at the median, 1 s at most.)"""
    settings = settings.with_(partitions=4, lease_s=30.0, idle_poll_s=1.0)
    store = register(settings, receiver.url)
    [a] = _on_partition(settings, 0, 1, "a")
    bs = _on_partition(settings, 1, 60, "b")
    answer_in = {b: (i % 7) * 0.01 for i, b in enumerate(bs)}

    def responder(d: Delivery) -> int:
        time.sleep(answer_in.get(_name(d), 0))
        return 200

    receiver.responder = responder
    with ThreadWorker(settings) as w:
        refusing = _refuse_acks_of_partition_0(w, redis.ConnectionError("away (test)"))
        store.schedule(make_job(a, now_ms()))
        wait_for(lambda: 0 in w.worker._unsettled, 10, what="partition 0's outcome refused")
        start = now_ms() + 1500
        due = {b: start + 40 * i for i, b in enumerate(bs)}
        for b, at in due.items():
            store.schedule(make_job(b, at))
        wait_for(lambda: all(store.get(APP, b) is None for b in bs), 20,
                 what="partition 1's jobs delivered and settled")
        late = {_name(d): d.received_at * 1000 - due[_name(d)]
                for d in receiver.received() if _name(d) in due}
        refusing.clear()
        wait_for(lambda: store.get(APP, a) is None, 20, what="partition 0's outcome written")
    assert sorted(_name(d) for d in receiver.received()) == sorted([a, *bs])
    assert max(late.values()) < 500, late  # (1-2 ms on an idle machine)


def test_a_partition_refusing_its_outcomes_holds_up_no_other(
        settings: Settings, receiver: Receiver) -> None:
    """Partition 0's master refuses its outcomes with an error other than "unavailable"
    (out of memory): its retries, which take partition 1's outcomes along, leave those
    written. (The whole batch was left: partition 1 was held up, its next job not claimed,
    until partition 0 took writes again.)"""
    # (answers take up to 2 s: the fixture's 2 s delivery timeout made one a retry, and a
    # second delivery, on a loaded machine)
    settings = settings.with_(partitions=4, lease_s=30.0, idle_poll_s=1.0,
                              delivery_timeout_s=10.0)
    store = register(settings, receiver.url)
    [a] = _on_partition(settings, 0, 1, "a")
    *bs, c = _on_partition(settings, 1, 41, "b")
    answer_in = {b: 2.0 * i / 40 for i, b in enumerate(bs)}  # outcomes come in over 2 s

    def responder(d: Delivery) -> int:
        time.sleep(answer_in.get(_name(d), 0))
        return 200

    receiver.responder = responder
    with ThreadWorker(settings) as w:
        refusing = _refuse_acks_of_partition_0(
            w, redis.ResponseError("OOM command not allowed (test)"), slow_partition_1_s=0.1)
        store.schedule(make_job(a, now_ms()))
        wait_for(lambda: 0 in w.worker._unsettled, 10, what="partition 0's outcome refused")
        start = now_ms() + 500
        store.schedule_many([*(make_job(b, start) for b in bs), make_job(c, start + 3000)])
        wait_for(lambda: store.get(APP, c) is None, 15,
                 what="partition 1's last job delivered while partition 0 refuses")
        assert w.worker._unsettled == {0}
        refusing.clear()
        wait_for(lambda: store.get(APP, a) is None, 20, what="partition 0's outcome written")
    assert sorted(_name(d) for d in receiver.received()) == sorted([a, *bs, c])


def test_the_triggers_of_a_claim_that_took_longer_than_their_lease_are_sent_once(
        settings: Settings, receiver: Receiver) -> None:
    """A claim's reply comes back after the lease it gave its triggers (a claim during a
    failover took 3.5 s, its calls retried, with 3 s leases): they are given back, not sent
    with a lease run out (the next claim took them again: each went out twice)."""
    settings = settings.with_(lease_s=2.0, delivery_timeout_s=0.5, idle_poll_s=0.1)
    store = register(settings, receiver.url)
    names = [f"slow-claim-{i}" for i in range(5)]
    slowed: list[int] = []
    with ThreadWorker(settings) as w:
        script = w.worker.queue._script

        async def slow_reply(name: str, keys: list[str], args: list[Any]) -> Any:
            reply = await script(name, keys, args)
            if name == "claim" and len(reply) > 3 and not slowed:
                slowed.append(len(reply))
                await asyncio.sleep(2.5)  # the leases run out meanwhile
            return reply

        w.worker.queue._script = slow_reply  # type: ignore[method-assign]
        store.schedule_many(make_job(n, now_ms()) for n in names)
        wait_for(lambda: all(store.get(APP, n) is None for n in names), 20,
                 what="every job delivered and settled")
    assert slowed
    assert sorted(_name(d) for d in receiver.received()) == names


def test_registrations_redis_does_not_answer_for_come_from_the_cache_meanwhile(
        settings: Settings, receiver: Receiver) -> None:
    """Redis does not answer for the app registrations (on Redis Cluster, their master
    failing over): claims go on with the registrations loaded before, and Redis is not
    asked for them again until a rest is over. (The claim failed, and the worker backed
    off; each try cost redis-py's retries, 0.3-0.4 s, on the claim loop.)"""
    from workers.queue import APPS_MAX_AGE_S, Budgets, Queue

    store = register(settings, receiver.url)
    store.schedule(make_job("due", now_ms() - 10))

    async def scenario() -> None:
        queue = Queue(settings)
        asked: list[str] = []

        async def away(*args: object) -> None:
            asked.append("hgetall")
            raise redis.ConnectionError("away (test)")

        try:
            await queue.load_apps(None)
            queue.redis.hgetall = away  # type: ignore[method-assign]
            queue._apps_loaded -= APPS_MAX_AGE_S + 1  # stale: the claim refreshes them first
            claim = await queue.claim_within(10, Budgets(10, {}, 10))
            assert [t.job.name for t in claim.triggers] == ["due"] and asked == ["hgetall"]
            assert queue.is_live(APP)  # as loaded before
            assert (await queue.claim_within(10, Budgets(10, {}, 10))).triggers == []
            with pytest.raises(redis.ConnectionError):
                await queue.load_apps({APP}, max_age_s=0.0)
            assert asked == ["hgetall"]  # not asked again within the rest
        finally:
            await queue.close()

    asyncio.run(scenario())


# --- errors of the Redis client that are not Redis's "unavailable" -------------------------
# redis-py can fail a call with a transport's AttributeError or TypeError when a connection
# is closed under it (redis-py issue 4287). Seen in tests/cluster/test_failover.py: the
# worker dead-lettered a trigger whose release failed so, and a settle loop that died so
# left the worker delivering without settling (11,537 duplicates in one run).

CLOSED_UNDER_IT = AttributeError("'NoneType' object has no attribute 'writelines'")


def test_an_unexpected_error_while_settling_is_retried_not_fatal(settings: Settings,
                                                                 receiver: Receiver) -> None:
    settings = settings.with_(lease_s=60.0)  # a trigger left unsettled would not come back
    store = register(settings, receiver.url)
    with ThreadWorker(settings) as w:
        real_settle = w.worker.queue.settle
        failed: list[int] = []

        async def settle_failing_once(batch):  # type: ignore[no-untyped-def]
            if not failed:
                failed.append(len(batch))
                raise CLOSED_UNDER_IT
            return await real_settle(batch)

        w.worker.queue.settle = settle_failing_once
        store.schedule(make_job("one"))
        wait_for(lambda: store.get(APP, "one") is None, 10,
                 what="the delivery settled on the second try")
        store.schedule(make_job("two"))  # the loop still settles what comes after
        wait_for(lambda: store.get(APP, "two") is None, 10, what="the next one settled")
    assert failed == [1]
    assert [_name(d) for d in receiver.received()] == ["one", "two"]
    assert dead_letters(store) == []


def test_an_unexpected_error_in_the_claim_loop_ends_the_worker_instead_of_hanging_it(
        settings: Settings) -> None:
    """The loop's helpers (settling, metrics) waited for a stop that never came: the worker
    printed the error and ran on, delivering nothing (a Redis answering garbage did it).
    Now the error comes out of Worker.run, and the process exits 1 (workers/main.py)."""

    async def main() -> None:
        worker = Worker(settings)

        async def claim_failing(*args: object, **kwargs: object) -> None:
            raise RuntimeError("not what a claim answers")

        worker.queue.claim_within = claim_failing  # type: ignore[assignment,method-assign]
        try:
            with pytest.raises(RuntimeError, match="not what a claim answers"):
                await asyncio.wait_for(worker.run(asyncio.Event()), timeout=30)
        finally:
            await worker.queue.close()

    asyncio.run(main())


def test_a_trigger_whose_release_fails_comes_back_and_is_not_dead_lettered(
        settings: Settings, receiver: Receiver) -> None:
    """A trigger that waited for its app's slot so long that its lease could run out
    mid-delivery is released, not delivered; if the release fails, whatever the error,
    the lease runs out and the trigger comes back (it was never the trigger's fault)."""
    settings = settings.with_(app_concurrency=1, delivery_timeout_s=2.0, lease_s=3.0)
    store = register(settings, receiver.url)

    def slow_app(d: Delivery) -> int:
        time.sleep(0.3)  # the app's own time to answer: the second trigger waits for it
        return 200

    receiver.responder = slow_app
    with ThreadWorker(settings) as w:
        real_release = w.worker.queue.release
        failed: list[str] = []

        async def release_failing_once(triggers):  # type: ignore[no-untyped-def]
            if not failed:
                failed.extend(t.job.name for t in triggers)
                raise CLOSED_UNDER_IT
            return await real_release(triggers)

        w.worker.queue.release = release_failing_once
        due = now_ms() + 200
        store.schedule(make_job("first", due))
        store.schedule(make_job("second", due))
        wait_for(lambda: len(receiver.received()) >= 2, 15,
                 what="both delivered, the released one after its lease")
    assert len(failed) == 1
    assert sorted(_name(d) for d in receiver.received()) == ["first", "second"]
    assert dead_letters(store) == []


def _kept_alive(settings: Settings, receiver: Receiver) -> tuple[Store, ThreadWorker]:
    """A worker started with a connection to the receiver open and idle: a first
    delivery done."""
    store = register(settings, receiver.url)
    worker = ThreadWorker(settings).start()
    store.schedule(make_job("warm"))  # opens the connection, kept alive after
    wait_for(lambda: store.counts()["jobs"] == 0, what="the first delivery")
    return store, worker


def test_a_request_that_cannot_be_framed_is_dead_lettered_not_fatal(
        settings: Settings, receiver: Receiver) -> None:
    """An app whose token latin-1 cannot carry, on an origin with an idle kept-alive
    connection (another app's): its trigger is dead-lettered, saying why, and the worker
    and the connection go on. (Sent at once, the error escaped into the claim loop: the
    worker died, and the connection was lost to the pool.)"""
    settings = settings.with_(lease_s=60.0)
    store = register(settings, receiver.url)
    store.register_app(AppRegistration("other", receiver.url, "tok\u20ac", "auto"))
    with ThreadWorker(settings) as w:
        store.schedule(make_job("warm"))  # opens the connection, kept alive after
        wait_for(lambda: store.counts()["jobs"] == 0, what="the first delivery")
        store.schedule(make_job("bad-token", app_id="other"))
        wait_for(lambda: store.counts()["jobs"] == 0 or not w.alive, what="the second job")
        assert w.alive, f"the worker died: {w.error!r}"
        [letter] = dead_letters(store, "other")
        assert letter.name == "bad-token" and "UnicodeEncodeError" in letter.error
        store.schedule(make_job("after"))
        wait_for(lambda: store.counts()["jobs"] == 0, what="a delivery after it")
    assert [d.path for d in receiver.received()] == ["/job/warm", "/job/after"]


def _run_state(redis_client: redis.Redis, store: Store, jid: str) -> tuple[int, str] | None:
    """(attempt, lease) of the job's current trigger; None before its first claim."""
    raw = redis_client.hget(store.keys.for_job(jid).runs, jid)
    if raw is None:
        return None
    _, attempt, _, _, lease = raw.decode().split("|", 4)
    return int(attempt), lease


def _given_back_twice(redis_client: redis.Redis, store: Store, jid: str) -> Callable[[], bool]:
    """A condition: the job's trigger has been put back in the due index twice since the
    first call (each time at a new time, with no lease)."""
    due_key = store.keys.for_job(jid).due
    seen: set[float] = set()

    def check() -> bool:
        score = redis_client.zscore(due_key, jid)
        state = _run_state(redis_client, store, jid)
        if score is not None and state is not None and not state[1]:
            seen.add(score)
        return len(seen) >= 3

    return check


@pytest.mark.parametrize("record", [
    b"not json", b'{"s": "@every 1s"}', b'{"f1": 1, "cu": "never"}', b'{"f1": 1, "ti": ["x"]}',
    b'{"f1": 1, "dt": "5s"}', b'{"f1": "1", "u": "2020-01-01T00:00:00Z"}',
    b'{"f1": 1, "fp": ["exponential", 1000, 3, 5000, "nan", 0]}',
], ids=["not-json", "no-first-time", "unknown-catch-up", "trigger-id-not-text",
        "timeout-not-a-number", "first-time-not-a-number", "multiplier-nan"])
def test_a_stored_job_that_cannot_be_read_is_left_as_is_and_the_worker_goes_on(
        settings: Settings, receiver: Receiver, redis_client: redis.Redis,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        record: bytes) -> None:
    """A job record no version of this code wrote (edited by hand, or another version's):
    its trigger is not delivered, and goes back with its attempt given back, again and
    again, logged once; the record stays as it is until the job is scheduled again. Before,
    decoding it raised out of the claim: the worker died with the rest of its claim
    undelivered, and so did each worker that took it."""
    monkeypatch.setattr(queue_module, "UNREADABLE_RETRY_S", 0.3)
    store = register(settings, receiver.url)
    due = now_ms() + 300
    store.schedule(make_job("unreadable", due))
    store.schedule(make_job("readable", due))
    jid = f"{APP}/unreadable"
    jobs_key = store.keys.for_job(jid).jobs
    redis_client.hset(jobs_key, jid, record)
    caplog.set_level(logging.ERROR, logger="jobrunner.worker")
    with ThreadWorker(settings) as w:
        wait_for(_given_back_twice(redis_client, store, jid), 15,
                 what="the unreadable job claimed and given back again")
        assert w.alive, f"the worker died: {w.error!r}"
        assert _run_state(redis_client, store, jid) == (0, "")  # no attempt spent
        assert [d.path for d in receiver.received()] == ["/job/readable"]
        assert redis_client.hget(jobs_key, jid) == record
        assert dead_letters(store) == []
        logged = [r for r in caplog.records if "cannot read stored job" in r.getMessage()]
        assert len(logged) == 1 and jid in logged[0].getMessage()
        # scheduled again: a record it can read
        store.schedule(make_job("unreadable"), overwrite=True)
        wait_for(lambda: len(receiver.received()) == 2, what="the job scheduled again")
    assert [d.path for d in receiver.received()] == ["/job/readable", "/job/unreadable"]


def test_a_trigger_now_of_a_deleted_job_that_cannot_be_read_is_dropped(
        settings: Settings, receiver: Receiver, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A "trigger now" one-shot is dropped undelivered once its job is deleted; one whose
    record cannot be read was given back every UNREADABLE_RETRY_S for ever instead, and no
    API could delete it (it is in no app's list)."""
    from app.store.pauses import Pauses

    monkeypatch.setattr(queue_module, "UNREADABLE_RETRY_S", 0.3)
    store = register(settings, receiver.url)
    store.schedule(make_job("parent", now_ms() + 3_600_000))
    assert Pauses(store).trigger(APP, "parent") is not None
    jobs_key = store.keys.for_job(f"{APP}/parent").jobs
    [once] = [j for j in redis_client.hkeys(jobs_key) if b"now-" in j]
    redis_client.hset(jobs_key, once, b"not json")
    assert store.delete(APP, "parent")
    with ThreadWorker(settings) as w:
        wait_for(lambda: not redis_client.hexists(jobs_key, once), 15,
                 what="the unreadable one-shot of the deleted job dropped")
        assert w.alive, f"the worker died: {w.error!r}"
    due_key = store.keys.for_job(f"{APP}/parent").due
    assert redis_client.zscore(due_key, once) is None and receiver.received() == []
    assert dead_letters(store) == []


def test_a_job_mended_after_it_could_not_be_read_gets_its_whole_failure_policy(
        settings: Settings, receiver: Receiver, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The claims of a job no worker could read spent none of its attempts: once its record
    is readable again (a rolling upgrade's new workers, or a mended record), it gets every
    retry of its policy. (Left to its lease, each such claim spent one.)"""
    monkeypatch.setattr(queue_module, "UNREADABLE_RETRY_S", 0.3)
    store = register(settings, receiver.url)
    receiver.status = 500
    store.schedule(make_job("mended", now_ms() + 300,
                            failure_policy=FailurePolicy(FailureKind.CONSTANT, 100, 3)))
    jid = f"{APP}/mended"
    jobs_key = store.keys.for_job(jid).jobs
    readable = redis_client.hget(jobs_key, jid)
    assert readable is not None
    redis_client.hset(jobs_key, jid, b"not json")
    with ThreadWorker(settings) as w:
        wait_for(_given_back_twice(redis_client, store, jid), 15,
                 what="the unreadable job claimed and given back again")
        redis_client.hset(jobs_key, jid, readable)
        wait_for(lambda: dead_letters(store) != [], 15, what="its policy spent")
        assert w.alive, f"the worker died: {w.error!r}"
    [letter] = dead_letters(store)
    assert letter.attempts == 4
    assert [d.path for d in receiver.received()] == ["/job/mended"] * 4


def test_unreadable_jobs_are_logged_one_by_one_up_to_a_bound_then_counted(
        settings: Settings, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each comes back every UNREADABLE_RETRY_S: logged once per version of its record, and
    past a bound only counted, at most once a minute (a rolling upgrade can make millions;
    a memory that was emptied when full logged every one of them again every time)."""
    monkeypatch.setattr(queue_module, "_UNREADABLE_LOGGED", 3)
    caplog.set_level(logging.ERROR, logger="jobrunner.worker")
    queue = queue_module.Queue(settings)
    error = ValueError("not a record")
    for _ in range(3):  # three rounds of claims
        for i in range(10):
            queue._unreadable(f"{APP}/job-{i}".encode(), b"not json", error)
    queue._unreadable(f"{APP}/job-0".encode(), b"edited again", error)  # counted: full
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert all(f"job-{i}" in line for i, line in enumerate(lines[:3]))
    assert lines[3].startswith("claims of jobs this worker cannot read, not logged one by one")
    assert "(3 are): 1 since the last count" in lines[3]
    asyncio.run(queue.close())


def test_an_apps_readable_triggers_do_not_wait_behind_those_it_cannot_read(
        settings: Settings, receiver: Receiver, redis_client: redis.Redis) -> None:
    """Triggers a worker cannot read take their app's claim budget in claim.lua but no slot:
    the worker claims again at once instead of waiting for a slot of the app to free (none
    would: it slept its idle poll, taking a budget's worth of them a second, ahead of every
    readable trigger of the app due with them)."""
    settings = settings.with_(app_concurrency=4)
    store = register(settings, receiver.url)
    due = now_ms() + 500
    store.schedule_many(make_job(f"unreadable-{i:03}", due) for i in range(400))
    store.schedule(make_job("zz-readable", due))  # claimed after them: ids in order
    for i in range(400):
        jid = f"{APP}/unreadable-{i:03}"
        redis_client.hset(store.keys.for_job(jid).jobs, jid, b"not json")
    with ThreadWorker(settings) as w:
        wait_for(lambda: receiver.received() or not w.alive, 30, what="the readable job")
        assert w.alive, f"the worker died: {w.error!r}"
    # a generous bound (it comes in tens of ms): behind them it came 4 s late, idle polls
    assert receiver.received()[0].received_at * 1000 - due < 2000


def test_a_late_trigger_whose_catch_up_cannot_be_worked_out_is_dead_lettered_not_fatal(
        settings: Settings, receiver: Receiver, redis_client: redis.Redis) -> None:
    """A record that reads but whose schedule this version does not know (another version's),
    taken late: its catch-up policy cannot be applied, so the trigger is dead-lettered,
    saying why, and the worker goes on. (That error came out of the claim loop: the worker
    died with its claim, as with a record it cannot read at all.)"""
    store = register(settings, receiver.url)
    late = now_ms() - 60_000  # past JOBRUNNER_CATCH_UP_GRACE: the policy is consulted
    store.schedule(make_job("odd", late))
    store.schedule(make_job("readable", late))
    jid = f"{APP}/odd"
    redis_client.hset(store.keys.for_job(jid).jobs, jid,
                      b'{"f1": 1, "s": "@fortnightly", "cu": "skip"}')
    with ThreadWorker(settings) as w:
        wait_for(lambda: dead_letters(store) != [] or not w.alive, 15, what="a dead letter")
        assert w.alive, f"the worker died: {w.error!r}"
        [letter] = dead_letters(store)
        assert letter.name == "odd" and "ScheduleError" in letter.error
        wait_for(lambda: len(receiver.received()) == 1, what="the other job's delivery")
    assert [d.path for d in receiver.received()] == ["/job/readable"]


def test_a_delivery_sent_again_while_stopping_gets_the_grace(
        settings: Settings, receiver: Receiver) -> None:
    """The worker is told to stop while a delivery is out on a kept-alive connection that
    the app then closes (stale): the delivery sent again on a new connection is waited for
    within the grace like any other, delivered and settled, not given back."""
    arrived = threading.Event()
    seen: list[str] = []

    def responder(d: Delivery) -> int:
        if _name(d) == "again":
            seen.append(d.headers["jobrunner-trigger-id"])
            if len(seen) == 1:
                arrived.set()
                time.sleep(0.3)  # the worker is told to stop meanwhile
                return DROP  # closed within STALE_CLOSE_S, no bytes: stale
        return 200

    receiver.responder = responder
    store, w = _kept_alive(settings.with_(lease_s=60.0, delivery_timeout_s=10.0,
                                          shutdown_grace_s=10.0), receiver)
    store.schedule(make_job("again"))
    assert arrived.wait(10)
    w.stop(30)
    assert store.counts()["jobs"] == 0  # delivered and settled before the worker ended
    assert len(seen) == 2 and len(set(seen)) == 1


@pytest.mark.parametrize("settle_delay_s", [0.0, 0.05])
def test_an_answer_in_the_last_turn_of_the_grace_is_settled_not_also_given_back(
        settings: Settings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        settle_delay_s: float) -> None:
    """The answer of a delivery sent at once arrives in the loop turn in which the grace
    ends (a busy loop: both ready after one select). Its future is done, its callback
    still to run: it is settled by that callback and not given back as well (given back
    first, with a slow settlement, it went out again)."""
    answer_now = threading.Event()
    arrived = threading.Event()
    answered = threading.Event()
    calls: list[str] = []

    def responder(d: Delivery) -> int:
        if _name(d) == "held":
            calls.append("held")
            arrived.set()
            answer_now.wait(30)
        return 200

    given_back: list[str] = []
    shutdown = worker_module.Worker._shutdown

    async def shutdown_with_a_busy_end(self: Worker,
                                       helpers: list[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()

        grace_ends = loop.time() + self.settings.shutdown_grace_s

        def busy() -> None:  # the loop busy across the grace's end; the answer comes meanwhile
            answer_now.set()
            answered.wait(10)  # on the worker's socket: ready at the loop's next select
            time.sleep(max(grace_ends - loop.time(), 0) + 0.01)

        # (0.1 s ahead: a loaded machine's loop, late to this, let the grace end first; the
        # loop is blocked until past the end whatever the lead)
        loop.call_at(grace_ends - 0.1, busy)
        release, settle = self.queue.release, self.queue.settle

        async def recorded_release(triggers: list[Trigger]) -> int:
            given_back.extend(t.job.name for t in triggers)
            return await release(triggers)

        async def slow_settle(settlements: list[Settlement]) -> Settled:
            await asyncio.sleep(settle_delay_s)  # a slow Redis round trip
            return await settle(settlements)

        self.queue.release = recorded_release  # type: ignore[method-assign]
        self.queue.settle = slow_settle  # type: ignore[method-assign]
        await shutdown(self, helpers)

    monkeypatch.setattr(worker_module.Worker, "_shutdown", shutdown_with_a_busy_end)
    receiver.responder = responder
    receiver.on_answered = lambda d: answered.set() if _name(d) == "held" else None
    store, w = _kept_alive(settings.with_(lease_s=60.0, delivery_timeout_s=30.0,
                                          shutdown_grace_s=0.5), receiver)
    store.schedule(make_job("held", schedule="@every 1h"))  # goes on after its delivery
    assert arrived.wait(10)
    w.stop(30)
    assert given_back == []
    view = store.get(APP, "held")
    assert view is not None and view.count == 1  # delivered and settled: the next is 1h on
    assert calls == ["held"]


# (loop, the callback that keeps the loop busy across the grace's end): each pair puts the
# stale answer's re-send either just before the grace's end (a task made and cancelled
# before its first step: it never ran its `finally`, and the stop hung) or just after the
# last look at what is in flight (the re-send went out after the grace, unbounded by it).
_GRACE_END_RACES = [("asyncio", "connection_lost"), ("asyncio", "eof_received"),
                    ("uvloop", "_answer_came"), ("uvloop", "connection_lost")]


@pytest.mark.parametrize(("loop", "busy_in"), _GRACE_END_RACES)
def test_a_stale_answer_as_the_grace_ends_is_not_sent_again(
        settings: Settings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        loop: str, busy_in: str) -> None:
    """The app closes the kept-alive connection of a delivery in flight (stale) as the
    worker stops, and the loop is busy across the grace's end: the trigger is given back,
    not sent again, and the worker stops within the grace, its slots free."""
    if loop == "uvloop":  # what `python -m workers` runs: its turns order callbacks apart
        import uvloop
        monkeypatch.setattr(asyncio, "new_event_loop", uvloop.new_event_loop)
    stopping = threading.Event()
    grace_ends: list[float] = []
    seen: list[str] = []

    def responder(d: Delivery) -> int:
        if _name(d) == "again":
            seen.append(d.headers["jobrunner-trigger-id"])
            if len(seen) == 1:
                stopping.wait(10)
                return DROP  # closed at once, no answer: stale
        return 200

    receiver.responder = responder
    grace = 0.2
    store, w = _kept_alive(settings.with_(lease_s=60.0, delivery_timeout_s=10.0,
                                          shutdown_grace_s=grace), receiver)
    shutdown = worker_module.Worker._shutdown

    async def marked_shutdown(self: Worker, helpers: list[asyncio.Task[None]]) -> None:
        grace_ends.append(asyncio.get_running_loop().time() + grace)
        stopping.set()
        await shutdown(self, helpers)

    owner = http_module.HttpClient if busy_in == "_answer_came" else http_module._Connection
    callback = getattr(owner, busy_in, None)

    def busy(*args: object) -> None:
        if callback is not None:
            callback(*args)
        if len(grace_ends) == 1:  # once: the loop busy across the grace's end
            grace_ends.append(0.0)
            time.sleep(max(grace_ends[0] - asyncio.get_running_loop().time(), 0) + 0.01)

    monkeypatch.setattr(worker_module.Worker, "_shutdown", marked_shutdown)
    monkeypatch.setattr(owner, busy_in, busy, raising=False)
    store.schedule(make_job("again"))
    wait_for(lambda: len(seen) == 1, what="the delivery out")
    started = time.monotonic()
    try:
        w.stop(10)
    finally:
        stopping.set()
    assert time.monotonic() - started < grace + 2.0
    assert len(seen) == 1  # not sent again after the grace
    view = store.get(APP, "again")  # sent once: a failed attempt, as one cut short
    assert view is not None and view.status is TriggerStatus.RETRYING and view.attempt == 1
    assert not w.worker.inflight and w.worker.slots.total == 0


def test_an_app_that_closes_without_answering_gets_an_attempt_twice_at_most(
        settings: Settings, receiver: Receiver) -> None:
    """The app reads each request and closes the connection without an answer, and the
    worker has two idle kept-alive connections to it: one attempt reaches it twice at most,
    as post()'s one retry of a stale connection allows (sent at once, then post() again
    with a retry of its own, it reached the app three times)."""
    warm = threading.Barrier(2, timeout=10)

    def responder(d: Delivery) -> int:
        if _name(d).startswith("warm-"):
            warm.wait()  # both at once: two connections
        return DROP if _name(d) == "bad" else 200

    receiver.responder = responder
    store = register(settings.with_(lease_s=60.0), receiver.url)
    with ThreadWorker(settings.with_(lease_s=60.0)):
        store.schedule_many(make_job(f"warm-{i}") for i in range(2))
        wait_for(lambda: store.counts()["jobs"] == 0, what="the first deliveries")
        store.schedule(make_job("bad", failure_policy=FailurePolicy(FailureKind.DROP)))
        wait_for(lambda: store.counts()["jobs"] == 0, what="the attempt to end")
    assert len(receiver.received("/job/bad")) == 2


class _SkippedCluster:
    """Just enough of redis-py's asyncio RedisCluster for a Queue whose every partition is
    skipped: no script may be called."""

    def register_script(self, source: str) -> Any:
        async def call(keys: Any = None, args: Any = None) -> Any:
            raise AssertionError("no script may be called: every partition is skipped")

        call.sha = "0" * 40  # type: ignore[attr-defined]
        return call

    def get_node_from_key(self, key: str) -> Any:
        part = int(key.split("{")[1].split("}")[0])
        return type("Node", (), {"name": f"node-{part % 3}"})()  # 3 masters

    async def aclose(self) -> None:
        pass


def test_a_claim_loop_with_every_partition_skipped_yields_to_the_event_loop(
        settings: Settings) -> None:
    """Redis Cluster failing over: a parked claim on each master, and a partition whose
    rest has just ended but whose master is one of them. The claim loop went round at once
    for ever, never yielding: the parked calls' answers, and a stop, never came (a CI run's
    worker lost 369 jobs and did not stop)."""
    from workers.queue import Budgets, Queue, _Parked, _Rest
    from workers.worker import CLAIM_AHEAD_MS

    async def main() -> tuple[int, int]:
        cluster = settings.with_(redis_cluster=True, partitions=12, idle_poll_s=0.2)
        queue = Queue(cluster, client=_SkippedCluster())
        worker = Worker(cluster, queue=queue)
        queue._apps_loaded = time.monotonic() + 3600  # registrations fresh: no refresh
        call = asyncio.ensure_future(asyncio.get_running_loop().create_future())
        for part in range(3):
            queue._parked_claims[part] = _Parked(call, time.monotonic(), f"t{part}",
                                                 node=f"node-{part}")
        queue._rests[9] = _Rest(time.monotonic() - 0.001, 0.1)  # ended; node-0 is stalled
        turns = 0

        def turn() -> None:
            nonlocal turns
            turns += 1

        asyncio.get_running_loop().call_soon(turn)
        stop = asyncio.Event()
        rounds, started = 0, time.monotonic()
        while time.monotonic() - started < 1.0:  # Worker.run's loop, bounded here
            limit = await worker._room_to_claim(stop)
            claim = await queue.claim_within(limit, Budgets(limit, {}, limit), CLAIM_AHEAD_MS)
            if not claim.more:
                await worker._sleep_until(claim.earliest, stop)
            rounds += 1
        call.cancel()
        return turns, rounds

    turns, rounds = asyncio.run(main())
    assert turns == 1, "the event loop never ran another callback"
    assert rounds < 100, f"{rounds} claims in a second: the loop polls instead of waiting"


@pytest.mark.parametrize("stalled_before_s", [0.0, 2.0])
def test_a_stop_while_redis_does_not_answer_takes_the_grace_and_its_margin_in_all(
        settings: Settings, receiver: Receiver, tmp_path: Path, stalled_before_s: float) -> None:
    """Redis stalls with a delivery in flight past the grace period: giving it back, the
    last counts and closing each waited their own bound (the grace and 5 s each), where
    the stop as a whole has one deadline, the grace and STOP_MARGIN_S, as the supervisor's,
    from the stop asked (a claim stuck on Redis when it came, `stalled_before_s`, pushed
    it back)."""
    from tests.support.redis_proc import RedisProcess

    own = RedisProcess(tmp_path / "redis")
    own.start()
    settings = settings.with_(redis_url=own.url, shutdown_grace_s=1.0, lease_s=60.0,
                              delivery_timeout_s=30.0)
    gate = receiver.hold("/job/held", timeout=30)
    store = register(settings, receiver.url)
    worker = ThreadWorker(settings).start()
    assert own.proc is not None
    try:
        store.schedule(make_job("done", now_ms()))
        store.schedule(make_job("held", now_ms()))
        wait_for(lambda: receiver.received("/job/held"), 10, what="the held delivery")
        own.proc.send_signal(signal.SIGSTOP)
        time.sleep(stalled_before_s)  # (a claim, or the idle poll's, now waits on Redis)
        started = time.monotonic()
        worker.stop(timeout=60)
        took = time.monotonic() - started
    finally:
        gate.set()
        own.proc.send_signal(signal.SIGCONT)
        store.close()
        own.stop()
    assert took < settings.shutdown_grace_s + worker_module.STOP_MARGIN_S + 2.0, took


def test_staging_the_triggers_of_an_offline_app_is_bounded(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim loop waits for it: a master that stopped answering held every partition's
    claims for as long as redis-py tried again."""
    from app.jobs.model import Trigger

    monkeypatch.setattr(worker_module, "STAGE_WITHIN_S", 0.2)

    async def main() -> list[Trigger]:
        worker = Worker(settings)
        never = asyncio.get_running_loop().create_future()

        async def unanswered(*args: Any, **kwargs: Any) -> Any:
            return await never

        worker.queue.stage = unanswered  # type: ignore[method-assign]
        worker.queue.load_apps = unanswered  # type: ignore[method-assign]
        trigger = Trigger(make_job("parked", now_ms()), f"{APP}/parked", 0, now_ms(), 1, 0, "l")
        try:
            return await asyncio.wait_for(worker._stage_offline([trigger]), 30)
        finally:
            await worker.queue.close()

    assert asyncio.run(main()) == []  # not delivered: its lease runs out, as when unavailable


def test_triggers_claimed_as_the_stop_comes_are_given_back_not_sent(
        settings: Settings, receiver: Receiver) -> None:
    """A claim that answered once the stop was asked: its deliveries had the stop's last
    moments, were cut short, and went again (at least once, but needlessly twice)."""
    from tests.support.jobs import QueueDriver

    settings = settings.with_(lease_s=600.0)  # back at once only if given back
    store = register(settings, receiver.url)
    store.schedule(make_job("late", now_ms()))

    async def main() -> None:
        worker = Worker(settings)
        stop = asyncio.Event()
        claim_within = worker.queue.claim_within

        async def claimed_as_the_stop_comes(*args: Any, **kwargs: Any) -> Any:
            claim = await claim_within(*args, **kwargs)
            if claim.triggers:
                stop.set()
            return claim

        worker.queue.claim_within = claimed_as_the_stop_comes  # type: ignore[method-assign]
        try:
            await asyncio.wait_for(worker.run(stop), 60)
        finally:
            await worker.queue.close()

    asyncio.run(main())
    store.close()
    assert receiver.received() == []
    driver = QueueDriver(settings, now_ms() + 1000)
    try:
        assert [t.job.name for t in driver.claim(10)] == ["late"]  # released, due again
    finally:
        driver.close()


@pytest.mark.parametrize("skew_s", [2.0, -2.0], ids=["ahead", "behind"])
def test_a_worker_goes_by_redis_clock_whatever_its_machine_says(
        settings: Settings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, skew_s: float) -> None:
    """A worker on a machine whose clock ran 2 s ahead sent every trigger 2 s early (and
    took other workers' leases 2 s before they ended); one 2 s behind, 2 s late. It now
    measures its clock against Redis's and goes by Redis's, and says it is off."""
    real_ns = time.time_ns
    skewed = type("SkewedTime", (), {"time_ns": staticmethod(
        lambda: real_ns() + int(skew_s * 1e9))})
    monkeypatch.setattr(clock_module, "time", skewed)
    monkeypatch.setattr(clock_module, "_lead_ns", 0)  # the worker's lead, undone after
    store = register(settings, receiver.url)
    due = real_ns() // 1_000_000 + 300  # by this machine's real clock, Redis's too
    store.schedule_many(make_job(f"j-{i}", due_ms=due + 20 * i) for i in range(10))
    with caplog.at_level(logging.WARNING, logger="jobrunner.worker"), ThreadWorker(settings):
        wait_for(lambda: store.counts()["jobs"] == 0, 15, what="the deliveries")
    late = [d.received_at * 1000 - int(d.headers["jobrunner-scheduled-ms"])
            for d in receiver.received()]
    assert len(late) == 10 and min(late) >= 0, late
    assert max(late) < 1000, late  # not by the skew (2 s) late either
    side = "ahead of" if skew_s > 0 else "behind"
    said = re.search(rf"this machine's clock is (\d+) ms {side} Redis's", caplog.text)
    assert said is not None and 1990 <= int(said[1]) <= 2010, caplog.text  # (a round trip)


def test_a_worker_started_while_redis_stalls_claims_once_it_has_read_redis_clock(
        tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis stalled (SIGSTOP) as a worker whose machine's clock runs 2 s ahead starts:
    its first reading failed, and it claimed by its own clock for the next 10 s, every
    trigger 2 s early. It claims nothing until it has read Redis's clock."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
    assert server.proc is not None
    real_ns = time.time_ns
    skewed = type("SkewedTime", (), {"time_ns": staticmethod(lambda: real_ns() + 2_000_000_000)})
    monkeypatch.setattr(clock_module, "time", skewed)
    monkeypatch.setattr(clock_module, "_lead_ns", 0)
    settings = Settings(redis_url=server.url, app_url=receiver.url, delivery_timeout_s=2.0,
                        lease_s=5.0, idle_poll_s=0.2)
    try:
        store = register(settings, receiver.url)
        due = real_ns() // 1_000_000 + 3000
        store.schedule_many(make_job(f"j-{i}", due_ms=due + 20 * i) for i in range(10))
        os.kill(server.proc.pid, signal.SIGSTOP)
        with caplog.at_level(logging.WARNING, logger="jobrunner.worker"), \
                ThreadWorker(settings):
            wait_for(lambda: "cannot read Redis's clock yet" in caplog.text, 10,
                     what="the worker to try Redis's clock")
            os.kill(server.proc.pid, signal.SIGCONT)
            wait_for(lambda: store.counts()["jobs"] == 0, 15, what="the deliveries")
        late = [d.received_at * 1000 - int(d.headers["jobrunner-scheduled-ms"])
                for d in receiver.received()]
        assert len(late) == 10 and min(late) >= 0, late
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_a_worker_whose_redis_is_milliseconds_away_goes_by_its_clock_too(
        tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    """Every reading of Redis's clock takes its round trip (6 ms here, over the 2 ms a
    reading on a busy loop may take before it is passed over): the worker still reads it
    at its start and claims, never early, and later readings as slow as that are taken."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
    try:
        with SlowLink(server.port, 0.003) as link:
            settings = Settings(redis_url=f"redis://127.0.0.1:{link.port}/0",
                                app_url=receiver.url, idle_poll_s=0.2)
            store = register(settings, receiver.url)
            due = now_ms() + 500
            store.schedule_many(make_job(f"j-{i}", due_ms=due + 20 * i) for i in range(5))
            with caplog.at_level(logging.WARNING, logger="jobrunner.worker"), \
                    ThreadWorker(settings) as w:
                wait_for(lambda: store.counts()["jobs"] == 0, 15, what="the deliveries")
                assert w.worker.clock.quickest_ns >= 6_000_000
        late = [d.received_at * 1000 - int(d.headers["jobrunner-scheduled-ms"])
                for d in receiver.received()]
        assert len(late) == 5 and min(late) >= 0, late
        assert "cannot read Redis's clock" not in caplog.text
    finally:
        server.stop()
