"""The far tier (app/store/lua/far.lua): jobs first due more than Settings.far_after_s ahead
when they are scheduled, kept in compact leaf keys of a B-tree by job id until a claim
brings them near.

Every tier check reads the raw keys (`_far` reads each leaf and checks the tier's
bookkeeping: the job count, each leaf's earliest due time in `farheads`, each id between
its leaf's bound and the next), and every read through the public API (Store.get,
list_jobs, the counts, the HTTP API) must see a far job exactly as a near one. Deliveries
go through a real worker to a real HTTP receiver on 127.0.0.1; claims whose time matters
are driven with the worker's clock under the test's control (tests/support/jobs.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from flask.testing import FlaskClient

from app.api.factory import create_app
from app.jobs.clock import now_ms
from app.jobs.errors import ApiError
from app.jobs.model import RunState, TriggerStatus
from app.settings import Settings
from app.store.keys import PartitionKeys, as_text, is_replay, job_id
from app.store.pauses import Pauses
from app.store.store import JobExists, JobView, Store
from tests.support.far import FAR_LEAF_MIN, FAR_PIECE, LEAF_MAX, NO_FAR_S, FarTier, far_tier
from tests.support.jobs import APP, QueueDriver, make_job, register
from tests.support.receiver import Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker

pytestmark = pytest.mark.usefixtures("reap_workers")

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
COMPACT = (b"listpack", b"ziplist")  # ziplist: Redis 6.2
NEAR = frozenset({"jobs", "due"})
FAR = frozenset({"farleaf", "farwhen"})
V1 = "/v1.0/jobs"


# --- reading the far tier, key by key ---------------------------------------------------------


Far = FarTier


def _far(store: Store, pk: PartitionKeys) -> Far:
    return far_tier(store.redis, pk)


def _fars(store: Store) -> list[Far]:
    return [_far(store, pk) for pk in store.keys.all_partitions()]


def _where(store: Store, name: str, app_id: str = APP) -> frozenset[str]:
    """The keys of the job's partition that hold it: "jobs" and "due" (the near tier),
    "farleaf" and "farwhen" (its far leaf's), "paused"."""
    jid = job_id(app_id, name)
    pk = store.keys.for_job(jid)
    far = _far(store, pk)
    where = set()
    if store.redis.hexists(pk.jobs, jid):
        where.add("jobs")
    if store.redis.zscore(pk.due, jid) is not None:
        where.add("due")
    if jid in far.records:
        where.add("farleaf")
    if jid in far.due:
        where.add("farwhen")
    if store.redis.hexists(pk.paused, jid):
        where.add("paused")
    return frozenset(where)


def _due_score(store: Store, name: str) -> float | None:
    """The job's due ms in whichever tier holds it (raw keys)."""
    jid = job_id(APP, name)
    pk = store.keys.for_job(jid)
    score = store.redis.zscore(pk.due, jid)
    return score if score is not None else _far(store, pk).due.get(jid)


def _far_count(store: Store) -> int:
    return sum(f.count for f in _fars(store))


def _view(store: Store, name: str) -> JobView:
    view = store.get(APP, name)
    assert view is not None, f"{name}: no job"
    return view


def _one_shots(store: Store) -> list[str]:
    """The "trigger now" one-shots and replays stored (due, retrying or in flight)."""
    return [as_text(m) for pk in store.keys.all_partitions()
            for m in store.redis.hkeys(pk.jobs) if is_replay(as_text(m))]


def _all_names(store: Store, limit: int) -> list[str]:
    names: list[str] = []
    token = ""
    for _ in range(10_000):
        views, token = store.list_jobs(APP, "", token, limit)
        names += [v.job.name for v in views]
        if not token:
            return names
    raise AssertionError("paging did not end")


@pytest.fixture
def stores(settings: Settings, receiver: Receiver) -> Iterator[Callable[..., Store]]:
    """Stores on this test's Redis, with settings changed as asked (the receiver registered
    as the app); closed at the end."""
    made: list[Store] = []

    def make(**changes: Any) -> Store:
        store = register(settings.with_(**changes), receiver.url)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


# --- the setting ------------------------------------------------------------------------------


def test_far_after_s_defaults_to_300_and_is_read_from_the_environment() -> None:
    assert Settings().far_after_s == 300.0
    assert Settings.from_env({}).far_after_s == 300.0
    read = Settings.from_env({"JOBRUNNER_FAR_AFTER_S": "2.5"})
    assert read.far_after_s == 2.5
    assert Settings.from_env(read.to_env()).far_after_s == 2.5


# --- 1. which tier, and the same view either way ----------------------------------------------


@pytest.mark.parametrize("partitions", [1, 3])
def test_a_job_due_past_far_after_goes_far_and_one_due_sooner_stays_near(
        stores: Callable[..., Store], partitions: int) -> None:
    store = stores(partitions=partitions)
    now = now_ms()
    due = now + 2 * HOUR_MS
    job = make_job("far-droid", due, data={"droid": "R2-D2", "task": [1, 2.5, None]},
                   schedule="@every 1h", repeats=3, ttl="10h", expires_ms=now + 10 * HOUR_MS)
    near = make_job("near-droid", now + MINUTE_MS, data="soon")
    store.schedule(job)
    store.schedule(near)

    assert _where(store, "far-droid") == FAR
    assert _where(store, "near-droid") == NEAR
    pk = store.keys.for_job(job_id(APP, "far-droid"))
    far = _far(store, pk)
    assert far.due == {job_id(APP, "far-droid"): due}
    assert far.records == {job_id(APP, "far-droid"): job.encode()}
    assert _far_count(store) == 1

    view = _view(store, "far-droid")
    assert view.job == job
    assert (view.status, view.next_ms, view.attempt, view.count, view.last_ms) == (
        TriggerStatus.SCHEDULED, due, 0, 0, None)
    assert (view.paused, view.app_paused, view.paused_ms) == (False, False, None)
    near_view = _view(store, "near-droid")
    assert (near_view.job, near_view.status, near_view.next_ms) == (
        near, TriggerStatus.SCHEDULED, now + MINUTE_MS)

    # The same job, due at the same time, on a store that keeps it near: the same view, and
    # the same answer from the HTTP API.
    kept_near = stores(partitions=partitions, prefix=f"t{uuid.uuid4().hex[:10]}",
                       far_after_s=30 * 24 * 3600.0)
    kept_near.schedule(job)
    assert _where(kept_near, "far-droid") == NEAR
    assert _view(kept_near, "far-droid") == view
    answers = []
    for s in (store, kept_near):
        client = create_app(s.settings).test_client()
        for path in (f"{V1}/far-droid", f"{V1}/far-droid/history"):
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.get_data(as_text=True))
            answers.append(answer.get_json())
    assert answers[:2] == answers[2:]
    assert answers[0]["status"] == "scheduled"
    assert answers[1]["history"] == []


def test_with_far_after_0_every_job_ahead_goes_far_and_a_due_one_stays_near(
        stores: Callable[..., Store]) -> None:
    store = stores(far_after_s=0.0)
    now = now_ms()
    store.schedule(make_job("ahead", now + 10 * SECOND_MS))
    store.schedule(make_job("past", now - 10 * SECOND_MS))
    assert _where(store, "ahead") == FAR
    assert _where(store, "past") == NEAR
    assert _view(store, "ahead").next_ms == now + 10 * SECOND_MS
    assert _view(store, "past").next_ms == now - 10 * SECOND_MS


def test_a_job_with_a_run_state_or_of_a_paused_app_stays_near(store: Store) -> None:
    now = now_ms()
    due = now + 2 * HOUR_MS
    restored = make_job("restored", due, schedule="@every 1h")
    store.schedule(restored, run=RunState(due, 0, 2, due - HOUR_MS))
    assert _where(store, "restored") == NEAR
    view = _view(store, "restored")
    assert (view.next_ms, view.count, view.last_ms) == (due, 2, due - HOUR_MS)

    pauses = Pauses(store)
    pauses.pause_app(APP)
    store.schedule(make_job("while-paused", due))
    assert _where(store, "while-paused") == {"jobs", "paused"}
    view = _view(store, "while-paused")
    assert (view.status, view.next_ms, view.app_paused) == (TriggerStatus.PAUSED, due, True)
    assert _far_count(store) == 0


# --- 2. lists and counts ----------------------------------------------------------------------


def _far_and_near(store: Store) -> dict[str, int]:
    """Three far jobs and two near ones, their names interleaved; name -> due ms."""
    now = now_ms()
    dues = {"a-far": now + 3 * HOUR_MS, "b-near": now + MINUTE_MS, "c-far": now + HOUR_MS,
            "d-near": now + 2 * MINUTE_MS, "e-far": now + 2 * HOUR_MS}
    for name, due in dues.items():
        store.schedule(make_job(name, due, data={"name": name}))
    assert {n: _where(store, n) for n in dues} == {
        n: FAR if n.endswith("far") else NEAR for n in dues}
    return dues


def test_list_jobs_lists_far_jobs_as_near_ones(store: Store) -> None:
    dues = _far_and_near(store)
    views, token = store.list_jobs(APP)
    assert token == ""
    assert [v.job.name for v in views] == sorted(dues)
    for v in views:
        assert v == _view(store, v.job.name)
        assert (v.status, v.next_ms, v.job.data) == (
            TriggerStatus.SCHEDULED, dues[v.job.name], {"name": v.job.name})
    assert _all_names(store, limit=2) == sorted(dues)  # page by page: each once
    assert [v.job.name for v in store.list_jobs(APP, "c-")[0]] == ["c-far"]
    # Over HTTP too.
    answer = create_app(store.settings).test_client().get(V1)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert sorted(j["name"] for j in answer.get_json()["jobs"]) == sorted(dues)


def test_the_job_counts_include_far_jobs(store: Store, api: FlaskClient) -> None:
    _far_and_near(store)
    assert store.app_counts(APP) == {"jobs": 5, "dead_letters": 0}
    stats = api.get("/v1.0/stats")
    assert stats.status_code == 200, stats.get_data(as_text=True)
    [mine] = stats.get_json()["apps"]
    assert (mine["appId"], mine["jobs"], mine["dueNow"]) == (APP, 5, 0)
    assert store.counts()["jobs"] == 5  # /metrics: jobrunner_store_size{what="jobs"}


# --- 3. delete ----------------------------------------------------------------------------------


def test_deleting_a_far_job_leaves_nothing_of_it(store: Store) -> None:
    now = now_ms()
    store.schedule(make_job("first", now + HOUR_MS))
    store.schedule(make_job("second", now + 2 * HOUR_MS))
    assert _far_count(store) == 2

    assert store.delete(APP, "first") is True
    assert store.get(APP, "first") is None
    assert _where(store, "first") == set()
    [far] = _fars(store)
    assert far.count == 1 and set(far.due) == {job_id(APP, "second")}
    assert _where(store, "second") == FAR and _view(store, "second").next_ms == now + 2 * HOUR_MS

    assert store.delete(APP, "second") is True
    assert store.delete(APP, "second") is False
    pk = store.keys.partition(0)
    [far] = _fars(store)
    assert (far.count, far.due, far.records) == (0, {}, {})
    assert store.redis.exists(pk.far_tree, pk.far_heads) == 0
    assert store.redis.hget(pk.far_meta, "count") in (None, b"0")
    assert store.app_counts(APP)["jobs"] == 0
    assert store.list_jobs(APP) == ([], "")
    assert store.counts()["jobs"] == 0


def test_deleting_by_prefix_takes_far_jobs_too(store: Store) -> None:
    now = now_ms()
    store.schedule_many(make_job(f"x-{i:03d}", now + HOUR_MS + i * SECOND_MS)
                        for i in range(150))  # past a split
    store.schedule(make_job("x-near", now + MINUTE_MS))
    store.schedule(make_job("y-far", now + HOUR_MS))
    assert _far_count(store) == 151
    assert store.delete_prefix(APP, "x-") == 151
    assert [f.count for f in _fars(store)] == [1]
    assert _where(store, "y-far") == FAR
    assert [v.job.name for v in store.list_jobs(APP)[0]] == ["y-far"]
    assert store.app_counts(APP)["jobs"] == 1


# --- 4. overwrite -------------------------------------------------------------------------------


def test_an_overwrite_moves_a_job_to_the_right_tier_with_one_copy(store: Store) -> None:
    now = now_ms()
    store.schedule(make_job("to-near", now + 2 * HOUR_MS, data=1))
    store.schedule(make_job("to-far", now + MINUTE_MS, data=1))
    store.schedule(make_job("far-far", now + 2 * HOUR_MS, data=1))
    assert [_where(store, n) for n in ("to-near", "to-far", "far-far")] == [FAR, NEAR, FAR]

    store.schedule(make_job("to-near", now + MINUTE_MS, data=2), overwrite=True)
    store.schedule(make_job("to-far", now + 3 * HOUR_MS, data=2), overwrite=True)
    assert _where(store, "to-near") == NEAR
    assert _where(store, "to-far") == FAR
    assert _due_score(store, "to-near") == now + MINUTE_MS
    assert _due_score(store, "to-far") == now + 3 * HOUR_MS
    # Far to far: later, then earlier; its leaf's head follows (checked by _far).
    store.schedule(make_job("far-far", now + 5 * HOUR_MS, data=2), overwrite=True)
    assert (_where(store, "far-far"), _due_score(store, "far-far")) == (FAR, now + 5 * HOUR_MS)
    store.schedule(make_job("far-far", now + 4 * HOUR_MS, data=3), overwrite=True)
    assert (_where(store, "far-far"), _due_score(store, "far-far")) == (FAR, now + 4 * HOUR_MS)

    for name, due, data in (("to-near", now + MINUTE_MS, 2), ("to-far", now + 3 * HOUR_MS, 2),
                            ("far-far", now + 4 * HOUR_MS, 3)):
        view = _view(store, name)
        assert (view.status, view.next_ms, view.job.data) == (TriggerStatus.SCHEDULED, due, data)
    assert _far_count(store) == 2
    assert store.app_counts(APP)["jobs"] == 3
    assert _all_names(store, limit=100) == ["far-far", "to-far", "to-near"]


def test_scheduling_a_far_job_again_without_overwrite_is_refused(store: Store) -> None:
    now = now_ms()
    first = make_job("kept", now + 2 * HOUR_MS, data="first")
    store.schedule(first)
    with pytest.raises(JobExists):
        store.schedule(make_job("kept", now + MINUTE_MS, data="second"))
    with pytest.raises(JobExists):
        store.schedule(make_job("kept", now + 3 * HOUR_MS, data="second"))
    assert _where(store, "kept") == FAR
    assert _view(store, "kept").job == first
    # The bulk way answers with the stored record, and changes nothing either.
    other = make_job("kept", now + 3 * HOUR_MS, data="third")
    assert store.schedule_batch(APP, [("kept", other.encode(), other.first_ms, False, "")]) == [
        first.encode()]
    assert _view(store, "kept").job == first
    assert (_where(store, "kept"), _far_count(store), store.app_counts(APP)["jobs"]) == (
        FAR, 1, 1)


def test_a_bulk_schedule_meets_its_own_far_entries(store: Store) -> None:
    now = now_ms()
    far1, far2 = make_job("d", now + 2 * HOUR_MS, data=1), make_job("e", now + 2 * HOUR_MS, data=2)
    near1, near2 = make_job("d", now + MINUTE_MS, data=2), make_job("e", now + MINUTE_MS, data=1)
    far3 = make_job("f", now + 2 * HOUR_MS, data=1)
    answers = store.schedule_batch(APP, [
        ("d", far1.encode(), far1.first_ms, False, ""),  # far, then overwritten near
        ("d", near1.encode(), near1.first_ms, True, ""),
        ("e", near2.encode(), near2.first_ms, False, ""),  # near, then overwritten far
        ("e", far2.encode(), far2.first_ms, True, ""),
        ("f", far3.encode(), far3.first_ms, False, ""),  # far, then refused
        ("f", near1.encode(), near1.first_ms, False, ""),
    ])
    assert answers == [None, None, None, None, None, far3.encode()]
    assert (_where(store, "d"), _view(store, "d").job) == (NEAR, near1)
    assert (_where(store, "e"), _view(store, "e").job) == (FAR, far2)
    assert (_where(store, "f"), _view(store, "f").job) == (FAR, far3)
    assert _far_count(store) == 2
    assert store.app_counts(APP)["jobs"] == 3


def test_a_bulk_schedule_replaces_far_jobs_in_place_and_their_leaf_heads_follow(
        store: Store) -> None:
    now = now_ms()
    first = [make_job(f"r{i}", now + HOUR_MS + i) for i in range(60)]
    store.schedule_batch(APP, [(j.name, j.encode(), j.first_ms, False, "") for j in first])
    later = [make_job(f"r{i}", now + 3 * HOUR_MS + i, data=i) for i in range(60)]
    answers = store.schedule_batch(APP, [(j.name, j.encode(), j.first_ms, True, "")
                                         for j in later])
    assert answers == [None] * 60
    [far] = _fars(store)  # farheads is each leaf's earliest: checked there
    assert far.count == 60 and min(far.due.values()) == now + 3 * HOUR_MS
    assert [_view(store, j.name).job for j in later] == later


# --- 5. pause and resume ------------------------------------------------------------------------


def test_pausing_a_far_job_brings_it_near_and_resume_puts_its_trigger_back(
        store: Store, settings: Settings) -> None:
    now = now_ms()
    due = now + 2 * HOUR_MS
    store.schedule(make_job("report", due, schedule="@every 1h"))
    assert _where(store, "report") == FAR
    pauses = Pauses(store)

    assert pauses.pause_job(APP, "report") is True
    assert _where(store, "report") == {"jobs", "paused"}
    assert _far_count(store) == 0
    view = _view(store, "report")
    assert (view.status, view.next_ms, view.paused) == (TriggerStatus.PAUSED, due, True)
    driver = QueueDriver(settings, due + MINUTE_MS)
    try:
        assert driver.claim(10) == []  # paused: nothing of it is due, whatever the time

        assert pauses.resume_job(APP, "report") is True
        view = _view(store, "report")
        assert (view.status, view.next_ms, view.paused, view.count) == (
            TriggerStatus.SCHEDULED, due, False, 0)
        assert _where(store, "report") in (NEAR, FAR)  # one copy, in one tier
        assert _due_score(store, "report") == due
        # Its trigger is back at its due time: not claimable a moment before, then it is.
        assert driver.claim(10, at=due - 1) == []
        [trigger] = driver.claim(10, at=due)
        assert (trigger.job.name, trigger.sched_ms) == ("report", due)
    finally:
        driver.close()


def test_pausing_the_app_pauses_its_far_jobs(store: Store) -> None:
    now = now_ms()
    dues = {f"far-{i}": now + (i + 1) * HOUR_MS for i in range(3)}
    dues["near"] = now + MINUTE_MS
    for name, due in dues.items():
        store.schedule(make_job(name, due))
    pauses = Pauses(store)
    assert pauses.pause_app(APP) == 4
    assert _far_count(store) == 0
    for name, due in dues.items():
        assert _where(store, name) == {"jobs", "paused"}, name
        view = _view(store, name)
        assert (view.status, view.next_ms, view.app_paused) == (TriggerStatus.PAUSED, due, True)
    assert pauses.resume_app(APP) == 4
    for name, due in dues.items():
        view = _view(store, name)
        assert (view.status, view.next_ms, view.app_paused) == (
            TriggerStatus.SCHEDULED, due, False), name
        assert _where(store, name) in (NEAR, FAR), name
        assert _due_score(store, name) == due, name


# --- 6. trigger now -----------------------------------------------------------------------------


def test_trigger_now_of_a_far_job_delivers_a_one_shot_and_the_job_stays_scheduled(
        store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    due = now_ms() + 2 * HOUR_MS
    store.schedule(make_job("report", due, schedule="@every 1h", data={"n": 1}))
    assert _where(store, "report") == FAR
    before = _view(store, "report")

    fired = Pauses(store).trigger(APP, "report")
    assert fired is not None, "trigger now found no job"
    [delivery] = wait_for(lambda: receiver.received("/job/report"), what="the trigger now")
    assert delivery.body == b'{"n":1}'
    assert unquote(delivery.headers["jobrunner-trigger-id"]) == fired.trigger_id
    assert int(delivery.headers["jobrunner-scheduled-ms"]) == fired.due_ms
    # Settled and gone; the job is as it was, due at its time, in one tier.
    wait_for(lambda: not _one_shots(store), what="the one-shot to be settled")
    assert _view(store, "report") == before
    assert _where(store, "report") in (NEAR, FAR)
    assert _due_score(store, "report") == due
    assert len(receiver.received("/job/report")) == 1


# --- 7. delivery by a real worker ---------------------------------------------------------------


def test_a_far_job_is_delivered_once_and_not_before_its_due_time(
        stores: Callable[..., Store], receiver: Receiver) -> None:
    store = stores(far_after_s=1.0)
    with ThreadWorker(store.settings):
        start = now_ms()
        dues = {f"soon-{i}": start + 2500 + 200 * i for i in range(3)}
        for name, due in dues.items():
            store.schedule(make_job(name, due, data=name))
        # Checked at once: the worker brings them near only once they are due.
        assert {n: _where(store, n) for n in dues} == dict.fromkeys(dues, FAR)
        assert now_ms() < min(dues.values()), "too slow to check the tier before the due time"
        wait_for(lambda: all(store.get(APP, n) is None for n in dues), 20,
                 what="the three far jobs delivered and acknowledged")
    assert _far_count(store) == 0
    for name, due in dues.items():
        [delivery] = receiver.received(f"/job/{name}")
        assert int(delivery.headers["jobrunner-scheduled-ms"]) == due
        assert delivery.received_at * 1000 >= due, (name, delivery.received_at * 1000 - due)
    assert len(receiver.received()) == 3


def test_an_idle_worker_wakes_for_a_far_jobs_due_time(stores: Callable[..., Store],
                                                      receiver: Receiver) -> None:
    """Idle poll 60 s: the worker must look again at the far job's due time (its claim's
    `earliest` counts the far tier), not at its next poll."""
    store = stores(far_after_s=1.0, idle_poll_s=60.0, lease_s=60.0)
    with ThreadWorker(store.settings):
        due = now_ms() + 2000
        store.schedule(make_job("wake-me", due))
        assert _where(store, "wake-me") == FAR
        [delivery] = wait_for(lambda: receiver.received("/job/wake-me"), 20,
                              what="the far job delivered (the idle poll is 60 s)")
    assert delivery.received_at * 1000 >= due


def test_a_claim_brings_near_only_the_far_jobs_due_by_its_time(store: Store,
                                                               settings: Settings) -> None:
    first = now_ms() + HOUR_MS
    dues = {"j0": first, "j1": first + SECOND_MS, "j2": first + 2 * SECOND_MS}
    for name, due in dues.items():
        store.schedule(make_job(name, due))
    driver = QueueDriver(settings)
    try:
        triggers, earliest = driver.claim_with_head(10, at=first - 1)
        assert (triggers, earliest) == ([], first)  # the far tier's head counts
        assert _far_count(store) == 3
        [trigger] = driver.claim(10, at=first)
        assert (trigger.job.name, trigger.sched_ms) == ("j0", first)
        assert (_where(store, "j1"), _where(store, "j2")) == (FAR, FAR)
        assert _view(store, "j0").status is TriggerStatus.IN_FLIGHT
        assert _far_count(store) == 2
        triggers = driver.claim(10, at=first + 2 * SECOND_MS)
        assert sorted((t.job.name, t.sched_ms) for t in triggers) == [
            ("j1", first + SECOND_MS), ("j2", first + 2 * SECOND_MS)]
        assert _far_count(store) == 0
    finally:
        driver.close()


# --- 8. splits ----------------------------------------------------------------------------------

SPLIT_JOBS = 3000


def _schedule_far_jobs(store: Store, count: int) -> dict[str, int]:
    """`count` far jobs, the first half through schedule_batch (schedule_many.lua), the rest
    through schedule_many (schedule.lua); name -> due ms. Small records, short ids: each
    fits a listpack entry."""
    base = now_ms() + HOUR_MS
    dues = {f"far-{i:05d}": base + 7 * i for i in range(count)}
    names = list(dues)
    half = count // 2
    for start in range(0, half, 500):
        chunk = names[start:min(start + 500, half)]
        jobs = [make_job(n, dues[n]) for n in chunk]
        assert store.schedule_batch(APP, [(j.name, j.encode(), j.first_ms, False, "")
                                          for j in jobs]) == [None] * len(jobs)
    assert store.schedule_many(make_job(n, dues[n]) for n in names[half:]) == count - half
    return dues


def _check_all_readable(store: Store, dues: dict[str, int]) -> None:
    for name, due in dues.items():
        view = store.get(APP, name)
        assert view is not None, f"{name}: no job"
        assert (view.job, view.status, view.next_ms) == (
            make_job(name, due), TriggerStatus.SCHEDULED, due), name


def test_far_leaves_split_by_id_range_and_every_job_stays_readable(store: Store) -> None:
    dues = _schedule_far_jobs(store, SPLIT_JOBS)
    [far] = _fars(store)  # the bookkeeping, each id within its leaf's range (see _far)
    # Cut leaves are at most FAR_PIECE, and one cut at 128 makes two of 64.
    assert -(-SPLIT_JOBS // FAR_PIECE) <= len(far.bounds) <= SPLIT_JOBS // 64, len(far.bounds)
    assert far.count == SPLIT_JOBS
    assert far.due == {job_id(APP, n): due for n, due in dues.items()}
    assert store.redis.hlen(store.keys.partition(0).jobs) == 0
    assert store.redis.zcard(store.keys.partition(0).due) == 0
    _check_all_readable(store, dues)
    assert store.app_counts(APP)["jobs"] == SPLIT_JOBS

    gone = list(dues)[::2]
    for name in gone:
        assert store.delete(APP, name) is True, name
    left = {n: d for n, d in dues.items() if n not in set(gone)}
    [far] = _fars(store)
    assert far.count == len(left)
    assert far.due == {job_id(APP, n): due for n, due in left.items()}
    _check_all_readable(store, left)
    assert all(store.get(APP, n) is None for n in gone)
    assert store.app_counts(APP)["jobs"] == len(left)


def _compact(store: Store, far: Far) -> list[str]:
    """The far leaves of partition 0 that are not compact: LEAF_MAX entries or more, or not
    a listpack (a key that ever went over stays a skiplist or hashtable)."""
    pk = store.keys.partition(0)
    wrong = []
    for low, size in far.sizes.items():
        if size >= LEAF_MAX:
            wrong.append(f"leaf {low!r} holds {size} jobs")
        for key in (pk.far_leaf(low), pk.far_when(low)):
            encoding = store.redis.object("encoding", key)
            if encoding is not None and encoding not in COMPACT:
                wrong.append(f"{key} is a {as_text(encoding)} ({size} entries now)")
    return wrong


def test_far_leaves_stay_compact_through_splits_and_deletes_and_small_ones_join(
        store: Store) -> None:
    dues = _schedule_far_jobs(store, SPLIT_JOBS)
    [far] = _fars(store)
    leaves = len(far.bounds)
    wrong = _compact(store, far)
    assert not wrong, (f"{len(wrong)} far leaf keys not compact after {SPLIT_JOBS} jobs in "
                       f"{leaves} leaves: {wrong}")
    names = list(dues)
    for name in [n for i, n in enumerate(names) if i % 8]:  # 7 in 8 go
        assert store.delete(APP, name)
    [far] = _fars(store)
    wrong = _compact(store, far)
    assert not wrong, f"far leaf keys not compact after deletes: {wrong}"
    # Leaves that fell under FAR_LEAF_MIN joined the one before while both fit in FAR_PIECE.
    assert far.count == len(names[::8])
    assert len(far.bounds) <= -(-far.count // (FAR_PIECE - FAR_LEAF_MIN)) + 1, (
        f"{len(far.bounds)} leaves (of {leaves}) for {far.count} jobs")
    _check_all_readable(store, {n: dues[n] for n in names[::8]})
    for name in names[::8]:
        assert store.delete(APP, name)
    [far] = _fars(store)
    assert (far.count, far.bounds) == (0, [])
    pk = store.keys.partition(0)
    left = {k.decode() for k in store.redis.scan_iter(match=f"{pk.base}:far*", count=1000)}
    assert left == {pk.far_meta}, left  # no tree, no head, no leaf: only the count, 0


# --- 9. the job limit ---------------------------------------------------------------------------


def test_the_app_job_limit_counts_far_jobs(stores: Callable[..., Store]) -> None:
    store = stores(app_max_jobs=4)
    now = now_ms()
    for i in range(3):
        store.schedule(make_job(f"far-{i}", now + (i + 1) * HOUR_MS))
    store.schedule(make_job("near", now + MINUTE_MS))
    assert _far_count(store) == 3
    for extra in (make_job("one-more-far", now + HOUR_MS),
                  make_job("one-more-near", now + MINUTE_MS)):
        with pytest.raises(ApiError) as refused:
            store.schedule(extra)
        assert refused.value.status == 429, extra.name
        [answer] = store.schedule_batch(APP, [(extra.name, extra.encode(), extra.first_ms,
                                               False, "")])
        assert isinstance(answer, ApiError) and answer.status == 429, (extra.name, answer)
        assert store.get(APP, extra.name) is None
    # An overwrite is no new job; a deleted far job makes room.
    store.schedule(make_job("far-0", now + 5 * HOUR_MS, data="again"), overwrite=True)
    assert _view(store, "far-0").job.data == "again"
    assert store.delete(APP, "far-1")
    store.schedule(make_job("one-more-far", now + HOUR_MS))
    assert _where(store, "one-more-far") == FAR
    assert store.app_counts(APP)["jobs"] == 4
    assert _far_count(store) == 3



# --- 10. large calls, and the bucket hash's secret --------------------------------------------


def test_a_bulk_call_and_a_read_of_thousands_of_ids_pass_luas_unpack_bound(store: Store) -> None:
    """Lua's unpack takes about 8,000 values: a bulk schedule meeting a far tier of one
    bucket, and a read of 9,000 ids, take their ids in chunks."""
    due = now_ms() + HOUR_MS
    store.schedule(make_job("first", due))  # a far tier of one bucket
    jobs = [make_job(f"bulk-{i:05d}", due + i) for i in range(9000)]
    answers = store.schedule_batch(APP, [(j.name, j.encode(), j.first_ms, False, "")
                                         for j in jobs])
    assert answers == [None] * len(jobs)
    [far] = _fars(store)
    assert far.count == 9001 and not _compact(store, far)
    pk = store.keys.partition(0)
    pipe = store.redis.pipeline(transaction=False)
    store.read_jobs(pipe, pk, "d", [job_id(APP, j.name) for j in jobs])
    [dues] = pipe.execute()
    assert [int(float(d)) for d in dues] == [j.first_ms for j in jobs]


@pytest.mark.parametrize("route", ["single", "bulk"])
def test_job_names_chosen_to_crowd_one_leaf_cannot_overfill_it(store: Store, route: str) -> None:
    """Leaves split by size whatever the ids: names that all fall between two neighbours,
    in descending order, or alike but for their end, still leave every leaf compact."""
    due = now_ms() + HOUR_MS
    store.schedule_many(make_job(f"m-{i:03d}", due) for i in range(0, 1000, 100))
    names = [f"m-000{'z' * (i % 40)}{i:04d}" for i in range(600, 0, -1)]  # between m-000, m-100
    if route == "single":
        assert store.schedule_many(make_job(n, due + i) for i, n in enumerate(names)) == 600
    else:
        for start in range(0, 600, 150):
            answers = store.schedule_batch(APP, [
                (n, make_job(n, due + i).encode(), due + i, False, "")
                for i, n in enumerate(names[start:start + 150], start)])
            assert answers == [None] * 150
    [far] = _fars(store)
    assert far.count == 610 and not _compact(store, far)
    _check_all_readable(store, {n: due + i for i, n in enumerate(names)})


def _first_version_layout(store: Store, names: list[str]) -> dict[str, tuple[bytes, float]]:
    """Moves the (near) jobs `names` to where the far tier's first version (653c6f6) kept
    them: buckets by a hash of the id (`farjobs:{b}`, `fardue:{b}`), `fartop`, farmeta's
    "n", "count" and "key". Name -> (record, due ms)."""
    pk = store.keys.partition(0)
    moved = {}
    pipe = store.redis.pipeline()
    for i, name in enumerate(names):
        b, jid = i % 3, job_id(APP, name)
        record, due = store.redis.hget(pk.jobs, jid), store.redis.zscore(pk.due, jid)
        assert record is not None and due is not None, name
        moved[name] = (record, due)
        pipe.hdel(pk.jobs, jid).zrem(pk.due, jid)
        pipe.hset(f"{pk.base}:farjobs:{b}", jid, record)
        pipe.zadd(f"{pk.base}:fardue:{b}", {jid: due})
        pipe.zadd(f"{pk.base}:fartop", {str(b): due}, lt=True)
    pipe.hset(pk.far_meta, mapping={"n": 3, "count": len(names), "key": "ab" * 16})
    pipe.execute()
    return moved


FIRST_CALLS = ["a read", "another job", "the same name again", "an overwrite", "a delete",
               "a bulk overwrite", "a pause"]


@pytest.mark.parametrize("first_call", FIRST_CALLS)
def test_the_first_versions_far_jobs_are_moved_near_before_the_first_script_reads(
        stores: Callable[..., Store], first_call: str) -> None:
    """Whatever the first script to meet them is, it sees the first version's jobs as they
    were: moved near before it reads anything."""
    due = now_ms() + HOUR_MS
    names = [f"old-{i}" for i in range(7)]
    store_near = stores(far_after_s=NO_FAR_S)
    store_near.schedule_many(make_job(n, due + i) for i, n in enumerate(names))
    jobs = _first_version_layout(store_near, names)
    store = stores()
    pk = store.keys.partition(0)
    changed: dict[str, frozenset[str]] = {}  # name -> its keys after; the rest stay near
    if first_call == "a read":
        assert _view(store, "old-0").next_ms == jobs["old-0"][1]
    elif first_call == "another job":
        store.schedule(make_job("new", due + 99))
        changed = {"new": FAR}
    elif first_call == "the same name again":
        with pytest.raises(JobExists):
            store.schedule(make_job("old-0", due + 99, data="again"))
    elif first_call == "an overwrite":
        store.schedule(make_job("old-0", due + 99, data="again"), overwrite=True)
        changed = {"old-0": FAR}
    elif first_call == "a delete":
        assert store.delete(APP, "old-0") is True
        changed = {"old-0": frozenset()}
    elif first_call == "a bulk overwrite":
        again = make_job("old-0", due + 99, data="again")
        assert store.schedule_batch(APP, [("old-0", again.encode(), due + 99, True, "")]) \
            == [None]
        changed = {"old-0": FAR}
    else:
        assert Pauses(store).pause_job(APP, "old-0") is True
        changed = {"old-0": frozenset({"jobs", "paused"})}
    for name, (record, at) in jobs.items():
        if name in changed:
            assert _where(store, name) == changed[name], name
            continue
        assert _where(store, name) == NEAR, name
        assert store.redis.hget(pk.jobs, job_id(APP, name)) == record
        assert _view(store, name).next_ms == at
    if first_call in ("an overwrite", "a bulk overwrite"):
        assert _view(store, "old-0").job.data == "again"
    assert store.app_counts(APP)["jobs"] == 7 + (first_call == "another job") - (
        first_call == "a delete")
    assert _far_count(store) == sum(w == FAR for w in changed.values())  # _far: no key of
    # the first version is left
