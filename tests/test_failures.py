"""Failure policies: retries, drop, dead letters, refused connections and timeouts.

Deliveries go from a real in-process worker to the `receiver` HTTP server on
localhost; the responder decides each answer.
"""

from __future__ import annotations

import threading
from itertools import pairwise

import pytest
from flask.testing import FlaskClient

from app.jobs.clock import now_ms
from app.jobs.model import FailureKind, FailurePolicy
from app.settings import Settings
from app.store.store import Store
from tests.support.jobs import APP, dead_letters, make_job, register
from tests.support.receiver import Delivery, Receiver
from tests.support.redis_proc import free_port
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker

pytestmark = pytest.mark.usefixtures("reap_workers")


def _attempts(ds: list[Delivery]) -> list[int]:
    return [int(d.headers["jobrunner-attempt"]) for d in ds]


def _dead_letter(store: Store, name: str, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    return wait_for(lambda: next((d for d in dead_letters(store) if d.name == name), None),
                    timeout, what=f"a dead letter for {name!r}")


def test_http_500_default_policy_4_attempts_1s_apart_then_dead_letter(
        api: FlaskClient, store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    receiver.status = 500
    resp = api.post("/v1.0-alpha1/jobs/failing", json={"dueTime": "0s", "data": "x"})
    assert resp.status_code == 204
    # no failurePolicy given: the default one (constant 1s, 3 retries)
    assert api.get("/v1.0-alpha1/jobs/failing").get_json()["failurePolicy"] == {
        "constant": {"interval": "1s", "maxRetries": 3}}

    letter = _dead_letter(store, "failing", timeout=15)
    ds = receiver.received("/job/failing")
    assert _attempts(ds) == [1, 2, 3, 4]
    assert len({d.headers["jobrunner-trigger-id"] for d in ds}) == 1
    assert len({d.headers["jobrunner-scheduled-ms"] for d in ds}) == 1
    for prev, nxt in pairwise(ds):
        # a retry is due `interval` after the failed attempt ended (the clock is floored
        # to whole ms, hence the ms floor of the earlier arrival)
        assert nxt.received_at * 1000 >= int(prev.received_at * 1000) + 1000, (
            f"retry {nxt.headers['jobrunner-attempt']} came "
            f"{(nxt.received_at - prev.received_at) * 1000:.1f} ms after the previous attempt")

    assert letter.attempts == 4
    assert "HTTP 500" in letter.error
    assert letter.id == ds[0].headers["jobrunner-trigger-id"]
    assert letter.sched_ms == int(ds[0].headers["jobrunner-scheduled-ms"])
    assert letter.app_id == APP
    assert letter.job.data == "x"
    # a one-shot job is over once dead-lettered
    assert store.get(APP, "failing") is None
    assert api.get("/v1.0-alpha1/jobs/failing").status_code == 404
    listed = api.get("/v1.0-alpha1/deadletters").get_json()["deadLetters"]
    assert [(d["name"], d["attempts"]) for d in listed] == [("failing", 4)]
    assert len(receiver.received("/job/failing")) == 4


def test_constant_interval_0_max_retries_2_gives_3_attempts(
        api: FlaskClient, store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    receiver.status = 503
    resp = api.post("/v1.0-alpha1/jobs/three", json={
        "dueTime": "0s", "failurePolicy": {"constant": {"interval": "0s", "maxRetries": 2}}})
    assert resp.status_code == 204
    letter = _dead_letter(store, "three")
    assert _attempts(receiver.received("/job/three")) == [1, 2, 3]
    assert letter.attempts == 3 and "HTTP 503" in letter.error
    assert store.get(APP, "three") is None


def test_max_retries_0_gives_a_single_attempt_then_dead_letter(
        store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    receiver.status = 500
    store.schedule(make_job("once", failure_policy=FailurePolicy(FailureKind.CONSTANT, 0, 0)))
    letter = _dead_letter(store, "once")
    assert _attempts(receiver.received("/job/once")) == [1]
    assert letter.attempts == 1


def test_drop_policy_one_attempt_and_no_dead_letter(
        api: FlaskClient, store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    receiver.status = 500
    assert api.post("/v1.0-alpha1/jobs/dropped",
                    json={"dueTime": "0s", "failurePolicy": {"drop": {}}}).status_code == 204
    # the positive signal that the trigger is settled: the one-shot job is removed
    wait_for(lambda: store.get(APP, "dropped") is None, what="the dropped job to end")
    assert _attempts(receiver.received("/job/dropped")) == [1]
    assert dead_letters(store) == []
    assert store.counts() == {"jobs": 0, "due_index": 0, "dead_letters": 0}


@pytest.mark.parametrize("status", [200, 201, 204, 299, 404])
def test_2xx_and_404_are_done_after_one_attempt(store: Store, receiver: Receiver,
                                                worker: ThreadWorker, status: int) -> None:
    receiver.status = status
    store.schedule(make_job("done", failure_policy=FailurePolicy(FailureKind.CONSTANT, 0, 5)))
    wait_for(lambda: store.get(APP, "done") is None, what="the job to be acknowledged")
    assert _attempts(receiver.received("/job/done")) == [1]
    assert dead_letters(store) == []


@pytest.mark.parametrize("status", [400, 401, 403, 409, 429, 500, 502])
def test_other_statuses_are_failures(store: Store, receiver: Receiver, worker: ThreadWorker,
                                     status: int) -> None:
    receiver.status = status
    store.schedule(make_job("bad", failure_policy=FailurePolicy(FailureKind.CONSTANT, 0, 1)))
    letter = _dead_letter(store, "bad")
    assert _attempts(receiver.received("/job/bad")) == [1, 2]
    assert f"HTTP {status}" in letter.error


def test_connection_refused_retries_then_dead_letter(settings: Settings,
                                                     receiver: Receiver) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = register(settings, closed)
    with ThreadWorker(settings):
        store.schedule(make_job("nowhere", failure_policy=FailurePolicy(FailureKind.CONSTANT,
                                                                        50, 2)))
        letter = _dead_letter(store, "nowhere")
    assert letter.attempts == 3
    assert "connect" in letter.error.lower(), letter.error
    assert store.get(APP, "nowhere") is None
    assert receiver.received() == []


def test_an_app_without_a_live_api_process_waits_instead_of_failing(
        settings: Settings, receiver: Receiver) -> None:
    """Triggers of an app nobody registered are parked (staged), spending no attempt and
    making no dead letter, and go out once the app registers."""
    store = Store(settings)  # no app registration at all
    jid = f"{APP}/offline"
    staged_key = store.keys.for_job(jid).staged(APP)
    with ThreadWorker(settings):
        store.schedule(make_job("offline", data=1,
                                failure_policy=FailurePolicy(FailureKind.CONSTANT, 0, 0)))
        wait_for(lambda: store.redis.zscore(staged_key, jid) is not None,
                 what="the trigger to be staged")
        view = store.get(APP, "offline")
        assert view is not None and view.attempt == 0
        assert receiver.received() == [] and dead_letters(store) == []

        register(settings, receiver.url)
        [d] = wait_for(lambda: receiver.received("/job/offline"), what="delivery after registering")
        wait_for(lambda: store.get(APP, "offline") is None, what="the job acknowledged")
    assert d.headers["jobrunner-attempt"] == "1"
    assert dead_letters(store) == []


def test_timeout_counts_as_a_failure(settings: Settings, receiver: Receiver) -> None:
    settings = settings.with_(delivery_timeout_s=0.3)
    release = threading.Event()

    def slow_first(d: Delivery) -> int:
        if d.headers["jobrunner-attempt"] == "1":
            release.wait(10)  # far beyond the delivery timeout
        return 200

    receiver.responder = slow_first
    store = register(settings, receiver.url)
    try:
        with ThreadWorker(settings):
            store.schedule(make_job("slow", failure_policy=FailurePolicy(FailureKind.CONSTANT,
                                                                         0, 3)))
            # the second attempt is the proof the first one was counted as failed
            ds = wait_for(lambda: len(d := receiver.received("/job/slow")) >= 2 and d,
                          what="a retry after the timeout")
            assert _attempts(ds) == [1, 2]
            wait_for(lambda: store.get(APP, "slow") is None, what="the retry acknowledged")
    finally:
        release.set()
    assert dead_letters(store) == []


def test_timeout_every_time_dead_letters_with_the_timeout_error(settings: Settings,
                                                               receiver: Receiver) -> None:
    settings = settings.with_(delivery_timeout_s=0.2)
    release = threading.Event()
    receiver.responder = lambda d: (release.wait(10), 200)[1]
    store = register(settings, receiver.url)
    try:
        with ThreadWorker(settings):
            store.schedule(make_job("never", failure_policy=FailurePolicy(FailureKind.CONSTANT,
                                                                          0, 1)))
            letter = _dead_letter(store, "never")
    finally:
        release.set()
    assert letter.attempts == 2
    assert "0.2s" in letter.error, letter.error


def test_recurring_job_goes_on_after_a_dead_letter(api: FlaskClient, store: Store,
                                                   receiver: Receiver,
                                                   worker: ThreadWorker) -> None:
    first_sched: list[str] = []

    def fail_first_trigger(d: Delivery) -> int:
        if not first_sched:
            first_sched.append(d.headers["jobrunner-scheduled-ms"])
        return 500 if d.headers["jobrunner-scheduled-ms"] == first_sched[0] else 200

    receiver.responder = fail_first_trigger
    resp = api.post("/v1.0-alpha1/jobs/rec", json={
        "schedule": "@every 1s", "dueTime": "0s",
        "failurePolicy": {"constant": {"interval": "0s", "maxRetries": 1}}})
    assert resp.status_code == 204

    letter = _dead_letter(store, "rec")
    ds = wait_for(lambda: len(d := receiver.received("/job/rec")) >= 3 and d,
                  what="the next occurrence after the dead letter")
    assert _attempts(ds[:3]) == [1, 2, 1]
    assert ds[0].headers["jobrunner-trigger-id"] == ds[1].headers["jobrunner-trigger-id"]
    assert ds[2].headers["jobrunner-trigger-id"] != ds[0].headers["jobrunner-trigger-id"]
    assert int(ds[2].headers["jobrunner-scheduled-ms"]) == int(first_sched[0]) + 1000
    assert letter.attempts == 2 and letter.sched_ms == int(first_sched[0])
    view = wait_for(lambda: (v := store.get(APP, "rec")) and v.count >= 2 and v,
                    what="the second trigger acknowledged")
    assert view.job.schedule == "@every 1s"
    assert len(dead_letters(store)) == 1
    store.delete(APP, "rec")


def test_unlimited_retries_keep_going_until_the_job_is_deleted(
        api: FlaskClient, store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    receiver.responder = lambda d: 500 if d.path == "/job/forever" else 200
    resp = api.post("/v1.0-alpha1/jobs/forever", json={
        "dueTime": "0s", "failurePolicy": {"constant": {"interval": "50ms"}}})
    assert resp.status_code == 204
    assert api.get("/v1.0-alpha1/jobs/forever").get_json()["failurePolicy"] == {
        "constant": {"interval": "50ms"}}  # maxRetries absent: unlimited

    # well past the default policy's 4 attempts, still retrying, never dead-lettered
    wait_for(lambda: len(receiver.received("/job/forever")) >= 8, what="8 attempts")
    assert dead_letters(store) == []
    view = store.get(APP, "forever")
    assert view is not None and view.attempt >= 8

    assert api.delete("/v1.0-alpha1/jobs/forever").status_code == 204
    at_delete = len(receiver.received("/job/forever"))
    # positive signal: a later job, due after several retry intervals, is delivered
    store.schedule(make_job("sentinel", now_ms() + 500))
    wait_for(lambda: receiver.received("/job/sentinel"), what="the sentinel job")
    after = receiver.received("/job/forever")
    assert len(after) <= at_delete + 1  # at most the attempt in flight at the delete
    assert _attempts(after) == list(range(1, len(after) + 1))
    assert store.get(APP, "forever") is None
    assert dead_letters(store) == []
    assert store.counts()["due_index"] == 0


def test_a_trigger_the_worker_cannot_process_is_not_redelivered_forever(
        settings: Settings, receiver: Receiver) -> None:
    """A stored record the worker chokes on (here an unparsable schedule, as a record
    from another version or a tzdata change could hold) must end settled -- done or
    dead-lettered -- not come back to the app at every lease expiry for ever."""
    settings = settings.with_(lease_s=1.0, delivery_timeout_s=0.5)
    store = register(settings, receiver.url)
    worker = ThreadWorker(settings).start()
    try:
        store.schedule(make_job("poison", data=1, schedule="@every nonsense"))
        settled = lambda: store.get(APP, "poison") is None or dead_letters(store)  # noqa: E731
        wait_for(settled, 8, what="the trigger settled (8 lease periods)")
    finally:
        attempts = _attempts(receiver.received("/job/poison"))
        worker.stop()  # now: left running, it would redeliver at every lease expiry
    assert len(attempts) <= 1, f"delivered {len(attempts)} times: attempts {attempts}"
