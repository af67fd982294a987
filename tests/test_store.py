"""The Redis store and its Lua scripts, against the private redis-server.

The worker's side (claim, settle, release) is driven through workers.queue.Queue
with its clock replaced by one the test sets, so lease expiry and due times are
checked exactly, without sleeping.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.jobs.model import FailureKind, FailurePolicy, TriggerStatus
from app.settings import Settings
from app.store import store as store_module
from app.store.keys import Keys, dead_member, is_replay, job_id
from app.store.store import JobExists, Store
from tests.support.far import all_due, all_job_ids, far_jobs
from tests.support.jobs import APP, QueueDriver, dead_letters, make_job
from tests.support.names_index import index_ids
from tests.support.redis_proc import RedisProcess
from workers.queue import Budgets

T0 = 1_900_000_000_000  # a fixed "now" in epoch ms for the fake clock


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    """As conftest's, without the HTTP receiver: nothing here delivers."""
    return Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                    app_url="http://127.0.0.1:9", delivery_timeout_s=2.0, lease_s=5.0)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings)
    yield s
    s.close()


@pytest.fixture
def q(settings: Settings) -> Iterator[QueueDriver]:
    d = QueueDriver(settings, start_ms=T0)
    yield d
    d.close()


def _due_index(r: redis.Redis, settings: Settings) -> dict[str, float]:
    out: dict[str, float] = {}
    for pk in Keys(settings.prefix, settings.partitions).all_partitions():
        out.update(all_due(r, pk))  # near or far (tests/support/far.py)
    return out


def _hash(r: redis.Redis, settings: Settings, which: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for pk in Keys(settings.prefix, settings.partitions).all_partitions():
        out.update({k.decode(): v for k, v in r.hgetall(getattr(pk, which)).items()})
        if which == "jobs":
            out.update(far_jobs(r, pk)[0])
    return out


# --- schedule / get / delete ---------------------------------------------------


def test_schedule_get_delete_round_trip(store: Store) -> None:
    job = make_job("clean-droid", T0 + 5000, data={"droid": "R2-D2", "task": [1, 2.5, None]},
                   schedule="@every 1s", due_time="5s", repeats=3, ttl="1h",
                   failure_policy=FailurePolicy(FailureKind.CONSTANT, 250, 7),
                   expires_ms=T0 + 3_600_000)
    store.schedule(job)

    view = store.get(APP, "clean-droid")
    assert view is not None
    assert view.job == job
    assert view.status is TriggerStatus.SCHEDULED
    assert view.next_ms == T0 + 5000
    assert (view.attempt, view.count, view.last_ms) == (0, 0, None)

    assert store.delete(APP, "clean-droid") is True
    assert store.get(APP, "clean-droid") is None
    assert store.delete(APP, "clean-droid") is False
    assert store.counts() == {"jobs": 0, "due_index": 0, "dead_letters": 0}


def test_protobuf_any_and_odd_names_round_trip(store: Store) -> None:
    names = ["with space", "ünïcødé-名前", "dots.and_under-score", "%41 percent", "*[glob]?"]
    for name in names:
        store.schedule(make_job(name, T0, any_type="type.googleapis.com/google.protobuf."
                                "StringValue", any_value="ChBSMi1EMjpPaWwgQ2hhbmdl"))
    for name in names:
        view = store.get(APP, name)
        assert view is not None, name
        assert view.job.name == name
        assert view.job.any_value == "ChBSMi1EMjpPaWwgQ2hhbmdl"
        assert view.job.data is None


def test_jobs_are_namespaced_by_app(store: Store) -> None:
    store.schedule(make_job("same", T0, app_id="app-a", data="a"))
    store.schedule(make_job("same", T0, app_id="app-b", data="b"))
    a, b = store.get("app-a", "same"), store.get("app-b", "same")
    assert a is not None and b is not None
    assert (a.job.data, b.job.data) == ("a", "b")
    store.delete("app-a", "same")
    assert store.get("app-a", "same") is None
    assert store.get("app-b", "same") is not None


def test_existing_name_without_overwrite_raises_job_exists(store: Store) -> None:
    first = make_job("j", T0 + 1000, data="first")
    store.schedule(first)
    with pytest.raises(JobExists):
        store.schedule(make_job("j", T0 + 2000, data="second"))
    view = store.get(APP, "j")
    assert view is not None and view.job.data == "first" and view.next_ms == T0 + 1000

    store.schedule(make_job("j", T0 + 2000, data="second"), overwrite=True)
    view = store.get(APP, "j")
    assert view is not None and view.job.data == "second" and view.next_ms == T0 + 2000
    assert store.counts()["due_index"] == 1


def test_schedule_reports_and_publishes_a_new_earliest_job(store: Store,
                                                           redis_client: redis.Redis) -> None:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(store.keys.wake_channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    assert store.schedule(make_job("late", T0 + 10_000)) is True  # alone: the earliest
    assert store.schedule(make_job("later", T0 + 20_000)) is False
    assert store.schedule(make_job("early", T0 + 1_000)) is True
    got = [pubsub.get_message(timeout=5) for _ in range(2)]
    assert [int(m["data"]) for m in got if m] == [T0 + 10_000, T0 + 1_000]
    pubsub.close()


def test_schedule_many_skips_existing_unless_overwrite(store: Store) -> None:
    store.schedule(make_job("j-0", T0, data="old"))
    jobs = [make_job(f"j-{i}", T0 + i, data="new") for i in range(5)]
    assert store.schedule_many(jobs, overwrite=False) == 4
    assert store.get(APP, "j-0").job.data == "old"  # type: ignore[union-attr]
    assert store.schedule_many(jobs, overwrite=True) == 5
    assert store.get(APP, "j-0").job.data == "new"  # type: ignore[union-attr]
    assert store.counts()["jobs"] == 5


# --- claim, leases, acknowledge -------------------------------------------------


def test_claim_takes_only_due_triggers_with_attempt_1_and_a_lease(store: Store,
                                                                  q: QueueDriver) -> None:
    store.schedule(make_job("past", T0 - 10, data=1))
    store.schedule(make_job("now", T0, data=2))
    store.schedule(make_job("future", T0 + 1, data=3))

    triggers, head = q.claim_with_head(at=T0)
    by_name = {t.job.name: t for t in triggers}
    assert set(by_name) == {"past", "now"}
    for t in triggers:
        assert t.attempt == 1
        assert t.count == 0
        assert t.lease
        assert t.sched_ms == t.job.first_ms
    assert by_name["past"].job.data == 1
    assert head == T0 + 1  # the earliest thing still waiting: "future"

    view = store.get(APP, "now")
    assert view is not None and view.status is TriggerStatus.IN_FLIGHT and view.attempt == 1
    view = store.get(APP, "future")
    assert view is not None and view.status is TriggerStatus.SCHEDULED

    assert q.claim(at=T0) == []  # nothing else is due
    assert [t.job.name for t in q.claim(at=T0 + 1)] == ["future"]


def test_claim_respects_the_limit(store: Store, q: QueueDriver) -> None:
    for i in range(10):
        store.schedule(make_job(f"j{i}", T0 - i))
    first = q.claim(limit=4, at=T0)
    assert len(first) == 4
    # oldest due first
    assert [t.job.name for t in first] == ["j9", "j8", "j7", "j6"]
    rest = q.claim(limit=100, at=T0)
    assert len(rest) == 6
    assert {t.job.name for t in first} .isdisjoint({t.job.name for t in rest})


def test_lease_blocks_reclaim_until_it_expires_then_attempt_2_same_sched(
        store: Store, q: QueueDriver, settings: Settings) -> None:
    lease_ms = int(settings.lease_s * 1000)
    store.schedule(make_job("j", T0))
    [first] = q.claim(at=T0)
    assert q.claim(at=T0 + lease_ms - 1) == []  # still leased

    [again] = q.claim(at=T0 + lease_ms)  # lease expired: recovered
    assert again.attempt == 2
    assert again.sched_ms == first.sched_ms == T0
    assert again.trigger_id == first.trigger_id  # same idempotency id on a redelivery
    assert again.lease != first.lease

    # the first holder's late acknowledge is stale and changes nothing
    assert q.next(first, None) == 0
    view = store.get(APP, "j")
    assert view is not None and view.status is TriggerStatus.IN_FLIGHT and view.attempt == 2
    assert q.next(again, None) == 1
    assert store.get(APP, "j") is None


def test_ack_next_with_a_time_reschedules(store: Store, q: QueueDriver) -> None:
    store.schedule(make_job("rec", T0, schedule="@every 1s"))
    [t1] = q.claim(at=T0)
    assert q.next(t1, T0 + 1000) == 1

    view = store.get(APP, "rec")
    assert view is not None
    assert view.status is TriggerStatus.SCHEDULED
    assert (view.next_ms, view.attempt, view.count, view.last_ms) == (T0 + 1000, 0, 1, T0)

    assert q.claim(at=T0 + 999) == []
    [t2] = q.claim(at=T0 + 1000)
    assert (t2.sched_ms, t2.attempt, t2.count) == (T0 + 1000, 1, 1)
    assert t2.trigger_id != t1.trigger_id


def test_ack_next_without_a_time_removes_the_job(store: Store, q: QueueDriver,
                                                 redis_client: redis.Redis,
                                                 settings: Settings) -> None:
    store.schedule(make_job("once", T0))
    [t] = q.claim(at=T0)
    assert q.next(t, None) == 1
    assert store.get(APP, "once") is None
    assert _due_index(redis_client, settings) == {}
    assert _hash(redis_client, settings, "runs") == {}
    assert q.claim(at=T0 + 10**9) == []


def test_one_ack_settles_a_batch_of_outcomes_each_once(store: Store, q: QueueDriver,
                                                       redis_client: redis.Redis,
                                                       settings: Settings) -> None:
    # ack.lua makes a batch's writes at its end: each entry still sees the others' effects
    # as if applied in turn (an entry repeated after it applied changes nothing).
    for name in ("once-a", "once-ü/b"):  # ack.lua takes an id by its length in bytes
        store.schedule(make_job(name, T0))
    store.schedule(make_job("rec", T0, schedule="@every 1s"))
    store.schedule(make_job("failing", T0))
    store.schedule(make_job("dead-ü", T0))
    by_name = {t.job.name: t for t in q.claim(at=T0)}
    settle = q._mod.Settlement
    next_, retry = q._mod.Action.NEXT, q._mod.Action.RETRY
    assert q.settle(settle(by_name["once-a"], next_, None),
                    settle(by_name["rec"], next_, T0 + 1000),
                    settle(by_name["failing"], retry, T0 + 5),
                    settle(by_name["once-ü/b"], next_, None),
                    settle(by_name["once-a"], next_, None),  # applied already: nothing
                    settle(by_name["rec"], retry, T0 + 7)) == 4
    assert store.get(APP, "once-a") is None and store.get(APP, "once-ü/b") is None
    due = _due_index(redis_client, settings)
    assert set(due) == {f"{APP}/rec", f"{APP}/failing", f"{APP}/dead-ü"}  # the last: leased
    assert (due[f"{APP}/rec"], due[f"{APP}/failing"]) == (T0 + 1000, T0 + 5)
    rec, failing = store.get(APP, "rec"), store.get(APP, "failing")
    assert rec is not None and (rec.next_ms, rec.attempt, rec.count) == (T0 + 1000, 0, 1)
    assert failing is not None and failing.status is TriggerStatus.RETRYING
    assert set(_hash(redis_client, settings, "runs")) == {f"{APP}/rec", f"{APP}/failing",
                                                          f"{APP}/dead-ü"}
    assert q.dead(by_name["dead-ü"], None) == 1
    assert [(d.id, d.name) for d in dead_letters(store)] == [
        (by_name["dead-ü"].trigger_id, "dead-ü")]
    assert store.get(APP, "dead-ü") is None


def test_ack_with_a_stale_lease_token_does_nothing(store: Store, q: QueueDriver) -> None:

    store.schedule(make_job("j", T0))
    [t] = q.claim(at=T0)
    forged = replace(t, lease=t.lease + "-not-mine")
    assert q.next(forged, None) == 0
    assert q.retry(forged, T0 + 5) == 0
    assert q.dead(forged, None) == 0
    assert q.release([forged]) == 0
    view = store.get(APP, "j")
    assert view is not None and view.status is TriggerStatus.IN_FLIGHT
    assert dead_letters(store) == []


def test_retry_keeps_the_trigger_and_counts_attempts(store: Store, q: QueueDriver) -> None:
    store.schedule(make_job("j", T0))
    [t1] = q.claim(at=T0)
    assert q.retry(t1, T0 + 500) == 1
    view = store.get(APP, "j")
    assert view is not None
    assert view.status is TriggerStatus.RETRYING and view.attempt == 1 and view.next_ms == T0

    assert q.claim(at=T0 + 499) == []
    [t2] = q.claim(at=T0 + 500)
    assert (t2.sched_ms, t2.attempt, t2.count) == (T0, 2, 0)
    assert t2.trigger_id == t1.trigger_id


@pytest.mark.parametrize("action", ["next-none", "next-later", "retry", "dead"])
def test_late_ack_does_not_resurrect_a_deleted_job(store: Store, q: QueueDriver,
                                                   redis_client: redis.Redis,
                                                   settings: Settings, action: str) -> None:
    store.schedule(make_job("gone", T0, schedule="@every 1s"))
    [t] = q.claim(at=T0)
    assert store.delete(APP, "gone") is True

    applied = {
        "next-none": lambda: q.next(t, None),
        "next-later": lambda: q.next(t, T0 + 1000),
        "retry": lambda: q.retry(t, T0 + 1000),
        "dead": lambda: q.dead(t, T0 + 1000),
    }[action]()

    assert applied == 0
    assert store.get(APP, "gone") is None
    assert _due_index(redis_client, settings) == {}
    assert _hash(redis_client, settings, "runs") == {}
    assert dead_letters(store) == []
    assert q.claim(at=T0 + 10**6) == []


def test_settle_returns_the_settlements_applied_so_only_those_are_counted(
        store: Store, q: QueueDriver) -> None:
    """The worker counts retries and dead letters (stats, /metrics) from what settle
    returns: a dead letter whose job was deleted in flight was counted, and never stored."""
    store.schedule_many([make_job("kept", T0), make_job("deleted", T0)])
    by_name = {t.job.name: t for t in q.claim(at=T0)}
    assert store.delete(APP, "deleted") is True
    settle, dead = q._mod.Settlement, q._mod.Action.DEAD
    batch = [settle(by_name[n], dead, None, f"{APP}/{n}@x:1", b'{"id": "x"}')
             for n in ("deleted", "kept")]
    settled = q._runner.run(q.queue.settle(batch))
    assert settled.applied == [batch[1]] and settled.left == []


def test_dead_letters_are_indexed_at_their_own_time_not_their_batchs(
        store: Store, q: QueueDriver) -> None:
    """The lists, oldest first, went by the settling batch's time while each letter shows
    its outcome's (deadLetteredTime): letters a few ms apart were listed out of order."""
    store.schedule_many([make_job("a-later", T0), make_job("b-earlier", T0)])
    by_name = {t.job.name: t for t in q.claim(at=T0)}
    q.clock.ms = T0 + 10  # both settled in batches after their outcomes
    # (an error text that holds the record's key: JSON escapes its quotes)
    q.dead(by_name["a-later"], None, error='x","deadMs":1,"', dead_ms=T0 + 5)
    q.dead(by_name["b-earlier"], None, dead_ms=T0 + 1)
    letters = dead_letters(store)
    assert [(d.name, d.dead_ms) for d in letters] == [("b-earlier", T0 + 1), ("a-later", T0 + 5)]
    pk = store.keys.partition(0)
    assert {k.decode(): v for k, v in store.redis.zrange(pk.deadidx, 0, -1, withscores=True)} == {
        letters[0].id: T0 + 1, letters[1].id: T0 + 5}


@pytest.mark.parametrize("action", ["next-none", "next-later", "retry", "dead"])
@pytest.mark.parametrize("new_claimed", [False, True], ids=["new-waiting", "new-in-flight"])
def test_late_ack_does_not_touch_a_job_overwritten_in_flight(
        store: Store, q: QueueDriver, action: str, new_claimed: bool) -> None:
    store.schedule(make_job("j", T0, data="old", schedule="@every 1s"))
    [old] = q.claim(at=T0)
    new_job = make_job("j", T0 + 50, data="new")
    store.schedule(new_job, overwrite=True)
    new = None
    if new_claimed:
        [new] = q.claim(at=T0 + 50)
        assert new.job.data == "new" and new.attempt == 1 and new.count == 0

    applied = {
        "next-none": lambda: q.next(old, None),
        "next-later": lambda: q.next(old, T0 + 1000),
        "retry": lambda: q.retry(old, T0 + 1),
        "dead": lambda: q.dead(old, None),
    }[action]()

    assert applied == 0
    view = store.get(APP, "j")
    assert view is not None
    assert view.job == new_job
    assert dead_letters(store) == []
    if new_claimed:
        assert view.status is TriggerStatus.IN_FLIGHT and view.next_ms == T0 + 50
        assert new is not None and q.next(new, None) == 1
        assert store.get(APP, "j") is None
    else:
        assert view.status is TriggerStatus.SCHEDULED and view.next_ms == T0 + 50
        assert q.claim(at=T0 + 49) == []
        [t] = q.claim(at=T0 + 50)
        assert t.job.data == "new" and t.attempt == 1 and t.sched_ms == T0 + 50


def test_release_gives_the_trigger_back_at_once(store: Store, q: QueueDriver) -> None:
    store.schedule(make_job("a", T0))
    store.schedule(make_job("b", T0))
    held = q.claim(at=T0)
    assert len(held) == 2
    assert q.release(held) == 2
    for name in ("a", "b"):
        view = store.get(APP, name)
        assert view is not None and view.status is TriggerStatus.SCHEDULED

    again = q.claim(at=T0)  # no waiting for the lease
    assert sorted((t.job.name, t.attempt, t.sched_ms) for t in again) == [
        ("a", 1, T0), ("b", 1, T0)]  # the released attempt is given back
    assert q.release(held) == 0  # the old claim's token no longer holds them


def test_release_of_a_retry_keeps_its_attempts(store: Store, q: QueueDriver) -> None:
    store.schedule(make_job("j", T0))
    [t1] = q.claim(at=T0)
    q.retry(t1, T0 + 1000)
    [t2] = q.claim(at=T0 + 1000)
    assert t2.attempt == 2
    assert q.release([t2]) == 1
    [t3] = q.claim(at=T0 + 1000)
    assert (t3.attempt, t3.sched_ms) == (2, T0)


def test_a_retry_claimed_ahead_and_released_is_due_at_its_retry_time(
        store: Store, q: QueueDriver) -> None:
    """A worker claims a few ms ahead and holds the trigger until its time; given back
    meanwhile (a stop), a retry was put back at its scheduled time, long past, and the
    next worker sent it at once: before its retry time."""
    store.schedule(make_job("j", T0))
    [t1] = q.claim(at=T0)
    q.retry(t1, T0 + 1000)
    [t2] = q.claim_within(10, Budgets(10, {}, 10), at=T0 + 995, ahead_ms=5).triggers
    assert t2.due_ms == T0 + 1000
    assert q.release([t2]) == 1
    assert q.claim(at=T0 + 999) == []  # not before its retry time
    [t3] = q.claim(at=T0 + 1000)
    assert (t3.attempt, t3.sched_ms) == (2, T0)


def test_claim_drops_an_index_entry_without_a_job(store: Store, q: QueueDriver,
                                                  redis_client: redis.Redis,
                                                  settings: Settings) -> None:
    pk = Keys(settings.prefix, settings.partitions).for_job(job_id(APP, "ghost"))
    redis_client.zadd(pk.due, {job_id(APP, "ghost"): T0})
    assert q.claim(at=T0) == []
    assert _due_index(redis_client, settings) == {}


# --- dead letters ----------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 4])
def test_dead_letters_land_in_the_dead_hash_and_index(settings: Settings,
                                                      redis_client: redis.Redis,
                                                      partitions: int) -> None:
    settings = settings.with_(partitions=partitions)
    store = Store(settings)
    q = QueueDriver(settings, start_ms=T0)
    try:
        store.schedule(make_job("once", T0, data="x"))
        store.schedule(make_job("rec", T0, schedule="@every 1s"))
        store.schedule(make_job("other", T0, app_id="other-app"))
        held = {t.job.name: t for t in q.claim(at=T0)}

        q.clock.ms = T0 + 10
        assert q.dead(held["once"], None, error="app answered HTTP 500") == 1
        q.clock.ms = T0 + 20
        assert q.dead(held["rec"], T0 + 1000, error="cannot connect") == 1
        q.clock.ms = T0 + 30
        assert q.dead(held["other"], None) == 1

        letters = dead_letters(store)
        assert [d.name for d in letters] == ["once", "rec", "other"]  # oldest first
        once = letters[0]
        assert once.id == held["once"].trigger_id
        assert (once.app_id, once.sched_ms, once.attempts) == (APP, T0, 1)
        assert once.error == "app answered HTTP 500"
        assert once.dead_ms == T0 + 10

        assert [d.name for d in dead_letters(store, APP)] == ["once", "rec"]
        assert [d.name for d in dead_letters(store, APP, limit=1, offset=1)] == ["rec"]

        # the raw keys: record in the dead hash, id in the index scored by dead time
        dead = _hash(redis_client, settings, "dead")
        assert set(dead) == {held[n].trigger_id for n in ("once", "rec", "other")}
        idx: dict[str, float] = {}
        for pk in store.keys.all_partitions():
            idx.update({m.decode(): s for m, s in
                        redis_client.zrange(pk.deadidx, 0, -1, withscores=True)})
        assert idx[held["once"].trigger_id] == T0 + 10

        # the one-shot job is gone, the recurring one goes on
        assert store.get(APP, "once") is None
        view = store.get(APP, "rec")
        assert view is not None and view.next_ms == T0 + 1000 and view.count == 1
        assert store.counts() == {"jobs": 1, "due_index": 1, "dead_letters": 3}
    finally:
        q.close()
        store.close()


# --- list, delete by prefix, counts -------------------------------------------------


def _all_pages(store: Store, prefix: str, limit: int, app_id: str = APP) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    for _ in range(1000):
        views, token = store.list_jobs(app_id, prefix, token, limit)
        pages.append([v.job.name for v in views])
        if not token:
            return pages
    raise AssertionError("paging did not end")


@pytest.fixture(params=[(1, 25), (3, 25), (1, 700), (3, 1600)],
                ids=["p1-listpack", "p3-listpack", "p1-hashtable", "p3-hashtable"])
def listed(request: pytest.FixtureRequest, settings: Settings) -> Iterator[tuple[Store, set[str]]]:
    """A store with jobs `a-NNN` (the wanted ones), `b-N`, and another app's `a-N`.

    Redis keeps a hash of up to 512 entries as a listpack, which HSCAN returns
    whole whatever its COUNT; bigger ones as a hashtable: both are covered."""
    partitions, n_jobs = request.param
    store = Store(settings.with_(partitions=partitions))
    wanted = {f"a-{i:04d}" for i in range(n_jobs)}
    store.schedule_many(make_job(n, T0) for n in wanted)
    store.schedule_many(make_job(f"b-{i}", T0) for i in range(10))
    store.schedule_many(make_job(f"a-{i}", T0, app_id="other") for i in range(10))
    yield store, wanted
    store.close()


def test_list_pages_cover_every_job_once(listed: tuple[Store, set[str]]) -> None:
    store, wanted = listed
    names = [n for page in _all_pages(store, "a-", limit=7) for n in page]
    assert sorted(names) == sorted(wanted)  # every one, none twice, no other app's
    everything = [n for page in _all_pages(store, "", limit=50) for n in page]
    assert sorted(everything) == sorted(wanted | {f"b-{i}" for i in range(10)})
    assert store.list_jobs(APP, "zzz", "", 10) == ([], "")


def test_list_page_never_exceeds_the_limit(listed: tuple[Store, set[str]]) -> None:
    store, _ = listed
    sizes = [len(page) for page in _all_pages(store, "a-", limit=7)]
    assert all(size <= 7 for size in sizes), f"page sizes for limit=7: {sizes}"


@pytest.mark.parametrize("n_jobs", [10, 700], ids=["listpack", "hashtable"])
def test_list_walk_keeps_jobs_that_exist_throughout_when_others_are_deleted(
        store: Store, n_jobs: int) -> None:
    """As SCAN promises: a job present for the whole walk is listed, even when jobs
    already listed are deleted between pages (a UI deleting what it has shown)."""
    names = [f"j-{i:04d}" for i in range(n_jobs)]
    store.schedule_many(make_job(n, T0) for n in names)
    seen: list[str] = []
    deleted: set[str] = set()
    token = ""
    for _ in range(10_000):
        views, token = store.list_jobs(APP, "", token, 3)
        page = [v.job.name for v in views]
        seen += page
        if page:  # delete one job this walk has already shown
            store.delete(APP, page[0])
            deleted.add(page[0])
        if not token:
            break
    missing = sorted(set(names) - deleted - set(seen))
    assert missing == [], f"{len(missing)} jobs never listed: {missing[:10]}"


def test_list_prefix_is_literal_not_a_glob(store: Store) -> None:
    for name in ["a*b-1", "a*b-2", "axb-1", "a?c", "abc", "[x]y", "xy"]:
        store.schedule(make_job(name, T0))
    names = lambda prefix: sorted(v.job.name for v in store.list_jobs(APP, prefix, "", 100)[0])  # noqa: E731
    assert names("a*b") == ["a*b-1", "a*b-2"]
    assert names("a?") == ["a?c"]
    assert names("[x]") == ["[x]y"]


def test_list_shows_where_each_trigger_stands(store: Store, q: QueueDriver) -> None:
    store.schedule(make_job("waiting", T0 + 100))
    store.schedule(make_job("flying", T0))
    views = {v.job.name: v for v in store.list_jobs(APP)[0]}
    assert views["waiting"].status is TriggerStatus.SCHEDULED
    q.claim(at=T0)
    views = {v.job.name: v for v in store.list_jobs(APP)[0]}
    assert views["flying"].status is TriggerStatus.IN_FLIGHT


def test_list_rejects_a_bad_page_token(store: Store) -> None:
    with pytest.raises(ValueError):
        store.list_jobs(APP, "", "not-a-token", 10)


@pytest.mark.parametrize("partitions", [1, 3])
def test_delete_prefix(settings: Settings, redis_client: redis.Redis, partitions: int) -> None:
    settings = settings.with_(partitions=partitions)
    store = Store(settings)
    q = QueueDriver(settings, start_ms=T0)
    try:
        store.schedule_many(make_job(f"tmp-{i}", T0) for i in range(150))
        store.schedule_many(make_job(f"keep-{i}", T0 + 10) for i in range(5))
        store.schedule_many(make_job(f"tmp-{i}", T0, app_id="other") for i in range(5))
        q.claim(limit=20, at=T0)  # some of them in flight: their run state goes too

        assert store.delete_prefix(APP, "tmp-") == 150
        assert store.delete_prefix(APP, "tmp-") == 0
        assert sorted(v.job.name for v in store.list_jobs(APP, "", "", 1000)[0]) == sorted(
            f"keep-{i}" for i in range(5))
        assert len(store.list_jobs("other", "", "", 1000)[0]) == 5
        due = _due_index(redis_client, settings)
        jobs = _hash(redis_client, settings, "jobs")
        runs = _hash(redis_client, settings, "runs")
        assert set(due) == set(jobs) and set(runs) <= set(jobs)
        assert store.counts() == {"jobs": 10, "due_index": 10, "dead_letters": 0}
    finally:
        q.close()
        store.close()


def test_counts(store: Store, q: QueueDriver) -> None:
    assert store.counts() == {"jobs": 0, "due_index": 0, "dead_letters": 0}
    for i in range(3):
        store.schedule(make_job(f"j{i}", T0))
    assert store.counts() == {"jobs": 3, "due_index": 3, "dead_letters": 0}
    held = q.claim(at=T0)
    assert store.counts() == {"jobs": 3, "due_index": 3, "dead_letters": 0}  # leased, still indexed
    q.dead(held[0], None)
    q.next(held[1], None)
    assert store.counts() == {"jobs": 1, "due_index": 1, "dead_letters": 1}


# --- invariants after random operation sequences ------------------------------------

NAMES = ["a", "b", "c", "a-x"]
_op = st.one_of(
    st.tuples(st.just("schedule"), st.sampled_from(NAMES), st.integers(0, 3000), st.booleans()),
    st.tuples(st.just("delete"), st.sampled_from(NAMES)),
    st.tuples(st.just("delete_prefix"), st.sampled_from(["a", "b", "z"])),
    st.tuples(st.just("tick"), st.integers(0, 6000)),
    st.tuples(st.just("claim"), st.integers(1, 3)),
    st.tuples(st.just("settle"), st.sampled_from(["next", "next-none", "retry", "dead",
                                                   "release", "stage"]), st.integers(0, 5),
              st.integers(0, 3000)),
    st.tuples(st.just("unstage")),
)


def _check_invariants(r: redis.Redis, settings: Settings) -> None:
    for pk in Keys(settings.prefix, settings.partitions).all_partitions():
        due = set(all_due(r, pk))  # near or far (tests/support/far.py)
        staged = {m.decode() for m in r.zrange(pk.staged(APP), 0, -1)}
        jobs = all_job_ids(r, pk)
        runs = {k.decode() for k in r.hkeys(pk.runs)}
        assert due <= jobs, f"due-index entries without a job: {due - jobs}"
        # a trigger parked for an offline app waits in `staged` instead of the due index
        assert jobs <= due | staged, f"jobs without a due-index entry: {jobs - due - staged}"
        assert not due & staged, f"both due and staged: {due & staged}"
        assert staged <= jobs, f"staged entries without a job: {staged - jobs}"
        assert runs <= jobs, f"run state without a job: {runs - jobs}"
        assert r.hlen(pk.dead) == r.zcard(pk.deadidx)
        # the per-app indexes (app/store/keys.py) hold exactly the jobs and dead letters
        names = set(index_ids(r, pk))
        assert names == {j for j in jobs if not is_replay(j)}, names ^ jobs
        deadlex = {m.decode() for m in r.zrange(pk.deadlex, 0, -1)}
        assert deadlex == {dead_member(j.decode().partition("/")[0], int(ms), j.decode())
                           for j, ms in r.zrange(pk.deadidx, 0, -1, withscores=True)}


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=30), partitions=st.sampled_from([1, 2]))
def test_invariants_hold_after_random_operations(settings: Settings, redis_client: redis.Redis,
                                                 ops: list[tuple], partitions: int) -> None:
    cfg = settings.with_(prefix=f"h{uuid.uuid4().hex[:10]}", partitions=partitions)
    store = Store(cfg)
    q = QueueDriver(cfg, start_ms=T0)
    held: list = []
    try:
        for op in ops:
            kind = op[0]
            if kind == "schedule":
                _, name, offset, overwrite = op
                with contextlib.suppress(JobExists):
                    store.schedule(make_job(name, T0 + offset), overwrite=overwrite)
            elif kind == "delete":
                store.delete(APP, op[1])
            elif kind == "delete_prefix":
                store.delete_prefix(APP, op[1])
            elif kind == "tick":
                q.clock.ms = T0 + op[1]
            elif kind == "claim":
                held.extend(q.claim(limit=op[1]))
            elif kind == "settle" and held:
                _, action, index, later = op
                t = held.pop(index % len(held))
                at = q.clock.ms + later
                if action == "next":
                    q.next(t, at)
                elif action == "next-none":
                    q.next(t, None)
                elif action == "retry":
                    q.retry(t, at)
                elif action == "dead":
                    q.dead(t, at if later % 2 else None)
                elif action == "release":
                    q.release([t])
                else:
                    q.stage([t])
            elif kind == "unstage":
                store.unstage(APP)
            _check_invariants(redis_client, cfg)
            for name in NAMES:  # every stored job can be read back
                view = store.get(APP, name)
                if view is not None:
                    assert view.job.name == name
    finally:
        q.close()
        store.close()


@pytest.mark.parametrize("args", [
    ("EVALSHA", "abc", 2, "k", b"x", "é", 3.25, 0.1, -7, 2**70),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "x"),
    ("SET", bytearray(b"a"), memoryview(b"b")),
])
def test_async_connections_pack_commands_as_redis_py_does(args: tuple[Any, ...]) -> None:
    """The asyncio client's connections pack with hiredis (app/store/redis_client.py):
    the bytes redis-py's own packer writes."""
    import redis.asyncio

    from app.store.redis_client import async_client

    client = async_client(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1"}))
    packed = client.connection_pool.connection_class()
    assert b"".join(packed.pack_command(*args)) == b"".join(
        redis.asyncio.Connection().pack_command(*args))
    with pytest.raises(redis.exceptions.DataError):
        packed.pack_command("SET", None)


def test_a_claim_ahead_gives_each_trigger_the_time_its_attempt_is_due(
        store: Store, q: QueueDriver) -> None:
    """A worker claims what is due within its CLAIM_AHEAD_MS and holds each trigger until
    its `due_ms`: a first attempt's due time, a retry's time (not the trigger's sched_ms,
    which every attempt keeps), the time a set-aside trigger was due."""
    from app.store.store import AppRegistration
    from workers.queue import Budgets

    for app_id in (APP, "other"):  # two live apps: a claim sets aside, not stops
        store.register_app(AppRegistration(app_id, "http://127.0.0.1:9"))
    room = Budgets(default=10, apps={}, set_aside=10)
    store.schedule(make_job("j", T0 + 3))
    [first] = q.claim_within(10, room, at=T0, ahead_ms=5).triggers
    assert (first.sched_ms, first.due_ms, first.attempt) == (T0 + 3, T0 + 3, 1)
    q.retry(first, T0 + 1000)
    assert q.claim_within(10, room, at=T0 + 994, ahead_ms=5).triggers == []
    [retry] = q.claim_within(10, room, at=T0 + 996, ahead_ms=5).triggers
    assert (retry.sched_ms, retry.due_ms, retry.attempt) == (T0 + 3, T0 + 1000, 2)

    # Set aside (its app had no room), then taken from `held`: still the retry's time.
    q.retry(retry, T0 + 2003)
    full = Budgets(default=10, apps={APP: 0}, set_aside=10)
    assert q.claim_within(10, full, at=T0 + 2000, ahead_ms=5).triggers == []
    [held] = q.claim_within(10, room, at=T0 + 2000, ahead_ms=5).triggers
    assert (held.sched_ms, held.due_ms, held.attempt) == (T0 + 3, T0 + 2003, 3)


def test_claims_and_settlements_go_on_the_loop_connection_and_fall_back_to_redis_py(
        settings: Settings, store: Store, q: QueueDriver) -> None:
    """workers/queue.py writes claims and settlements on its lean loop connection
    (app/store/loop_redis.py); a reply it cannot use (NOSCRIPT after Redis lost its
    scripts) or a broken connection is done again by redis-py, and nothing is lost."""
    from app.jobs.model import Trigger
    from app.store.redis_client import UNAVAILABLE

    assert q.queue._loop_redis is not None  # a single node over TCP
    direct = redis.Redis.from_url(settings.redis_url)
    try:
        store.schedule(make_job("a", T0 - 1))
        [a] = q.claim(at=T0)
        assert q.queue._loop_redis._conn is not None  # the claim went that way
        direct.script_flush()  # as after a restart: NOSCRIPT on the loop connection
        assert q.next(a, None) == 1
        store.schedule(make_job("b", T0 - 1))
        direct.client_kill_filter(_type="normal", skipme=True)  # every other connection
        claimed: list[Trigger] = []
        for _ in range(2):  # redis-py's connection was cut too: a worker backs off, claims again
            with contextlib.suppress(*UNAVAILABLE):
                claimed += q.claim(at=T0)
        [b] = claimed
        assert b.job.name == "b" and q.next(b, None) == 1
        assert store.get(APP, "a") is None and store.get(APP, "b") is None  # both settled
    finally:
        direct.close()


def test_unstage_puts_every_trigger_back_a_bounded_batch_per_script(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """An app back online gets all its parked triggers due again, oldest first, but never
    in one script: one call for 100,000 held Redis for 0.2 s, every other app with it."""
    monkeypatch.setattr(store_module, "UNSTAGE_BATCH", 7)
    names = [f"parked-{i:02d}" for i in range(20)]
    for i, name in enumerate(names):
        store.schedule(make_job(name, 1_000_000 + i))
    pk = store.keys.for_job(job_id(APP, names[0]))
    r = store.redis
    for i, name in enumerate(names):  # as stage.lua parks them
        r.zrem(pk.due, job_id(APP, name))
        r.zadd(pk.staged(APP), {job_id(APP, name): 1_000_000 + i})
    script = store._scripts["unstage"]
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        moved = script(*args, **kwargs)
        calls.append(int(moved))
        return moved

    monkeypatch.setitem(store._scripts, "unstage", counted)
    assert store.unstage(APP) == 20
    assert calls == [7, 7, 6]
    assert r.zcard(pk.staged(APP)) == 0
    assert [(m.decode(), int(s)) for m, s in r.zrange(pk.due, 0, -1, withscores=True)] == [
        (job_id(APP, name), 1_000_000 + i) for i, name in enumerate(names)]


def test_schedule_many_does_not_count_the_jobs_the_cap_refused(settings: Settings) -> None:
    store = Store(replace(settings, app_max_jobs=2))
    try:
        stored = store.schedule_many(make_job(f"j{n}", app_id="a") for n in range(5))
        assert store.app_counts("a")["jobs"] == 2
        assert stored == 2  # schedule.lua answered -1 for the other three
    finally:
        store.close()
