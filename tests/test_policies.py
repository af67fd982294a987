"""Delivery policies beyond Dapr (issue 10, part 4): failurePolicy.exponential, Retry-After
on 429 and 503, a per-job deliveryTimeout, and a per-app rate limit.

Validation and the policy's arithmetic are unit tests. Each policy is then run end to
end: scheduled through the HTTP API or the store, delivered by in-process workers to a
real HTTP receiver, with the attempts' arrival times checked against bounds computed
from the policy. A retry is never early (its lower bound is exact: the delay counts from
the failed attempt's answer, which comes after its arrival); its upper bound adds the
jitter and a generous allowance for a busy 2-core machine (LATE_MS).
"""

from __future__ import annotations

import email.utils
import itertools
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.api.factory import create_app
from app.jobs.errors import ApiError
from app.jobs.model import FailureKind, FailurePolicy, Job, Trigger
from app.jobs.validation import job_to_api, parse_job_request
from app.settings import Settings, SettingsError
from app.store.store import AppRegistration, Store
from tests.support.jobs import APP, QueueDriver, dead_letters, make_job
from tests.support.receiver import Delivery, Receiver
from tests.support.redis_proc import RedisProcess
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from workers.delivery import retry_after_ms
from workers.worker import Worker

pytestmark = pytest.mark.usefixtures("reap_workers")

T0 = 1_900_000_000_000
LATE_MS = 400  # how late past its bound an attempt may come on a busy machine


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """conftest's, with Retry-After capped at 2.5 s (test_retry_after_is_honoured_...)."""
    return settings.with_(max_retry_after_s=2.5)


def _parse(body: dict[str, Any], max_delivery_timeout_ms: int = 25_000) -> Job:
    import orjson

    job, _ = parse_job_request("j", orjson.dumps({"dueTime": "1s", **body}), None, APP, T0,
                               1 << 20, max_delivery_timeout_ms=max_delivery_timeout_ms)
    return job


def _refused(body: dict[str, Any], *words: str) -> None:
    with pytest.raises(ApiError) as err:
        _parse(body)
    assert err.value.status == 400
    for word in words:
        assert word in err.value.message


# --- failurePolicy.exponential: validation and arithmetic ------------------------------


def test_exponential_defaults_and_round_trip() -> None:
    job = _parse({"failurePolicy": {"exponential": {}}})
    assert job.failure_policy == FailurePolicy(FailureKind.EXPONENTIAL, 1000, None,
                                               max_interval_ms=3_600_000, multiplier=2.0,
                                               jitter=0.15)
    assert job_to_api(job)["failurePolicy"] == {"exponential": {
        "initialInterval": "1s", "maxInterval": "1h0m0s", "multiplier": 2, "jitter": 0.15}}
    given = {"initial_interval": "250ms", "maxInterval": "1m", "multiplier": 1.5,
             "jitter": 0, "max_retries": "7"}
    job = _parse({"failurePolicy": {"exponential": given}})
    assert job_to_api(job)["failurePolicy"] == {"exponential": {
        "initialInterval": "250ms", "maxInterval": "1m0s", "multiplier": 1.5, "jitter": 0,
        "maxRetries": 7}}
    assert Job.decode(APP, "j", job.encode()).failure_policy == job.failure_policy
    # An initialInterval past the default maxInterval raises the cap with it.
    job = _parse({"failurePolicy": {"exponential": {"initialInterval": "2h"}}})
    assert job.failure_policy.max_interval_ms == 7_200_000


@pytest.mark.parametrize(("interval", "exponential"), [
    ("1h0m0.001s", True), ("20m34.567s", True), ("1.5s", True), ("999ms", True),
    ("719h59m59.999s", True), ("0s", False), ("720h0m0.007s", False),  # past 720h: constant
    ("2562047h47m16.854s", False)])
def test_an_interval_reads_back_exactly_as_go_writes_it(interval: str, exponential: bool) -> None:
    """Not rounded to six digits: the answer sent back means the same policy."""
    policies: list[dict[str, Any]] = [{"constant": {"interval": interval}}]
    if exponential:
        policies.append({"exponential": {"initialInterval": interval, "maxInterval": interval}})
    for policy in policies:
        job = _parse({"failurePolicy": policy})
        answer = job_to_api(job)["failurePolicy"]
        assert interval in answer[next(iter(policy))].values(), answer
        assert _parse({"failurePolicy": answer}).failure_policy == job.failure_policy


def test_a_jitter_of_minus_zero_is_zero() -> None:
    """GET shows 0 either way, and the answer sent back must be the same job (it was
    not: a 409, and `jobs import` of its export refused)."""
    policy = {"exponential": {"jitter": -0.0}}
    job = _parse({"failurePolicy": policy})
    assert math.copysign(1.0, job.failure_policy.jitter) == 1.0
    assert _parse({"failurePolicy": job_to_api(job)["failurePolicy"]}).encode() == job.encode()


@pytest.mark.parametrize("policy", [
    {"constant": {"interval": "1500us"}},
    {"exponential": {"initialInterval": "1.001ms", "maxInterval": "1500000ns"}}])
def test_an_interval_finer_than_a_millisecond_is_kept_rounded_up(policy: dict[str, Any]) -> None:
    """Intervals are kept in milliseconds: a finer one is rounded up, never down (a retry
    never comes sooner than asked; 1.9ms was kept as 1ms)."""
    kept = _parse({"failurePolicy": policy}).failure_policy
    assert kept.interval_ms == 2
    if kept.kind is FailureKind.EXPONENTIAL:
        assert kept.max_interval_ms == 2


@pytest.mark.parametrize(("policy", "words"), [
    ({"constant": {}, "exponential": {}}, ("one of", "constant and exponential")),
    ({"drop": {}, "exponential": {}}, ("drop and exponential",)),
    ({"exponential": []}, ("exponential must be an object",)),
    ({"exponential": {"initialInterval": "0s"}}, ("at least 1ms",)),
    ({"exponential": {"initialInterval": "-1s"}}, ("must not be negative",)),
    ({"exponential": {"initialInterval": 3}}, ("duration string",)),
    ({"exponential": {"initialInterval": "soon"}}, ("initialInterval",)),
    ({"exponential": {"initialInterval": "721h"}}, ("at most 720h",)),
    ({"exponential": {"initialInterval": "1m", "maxInterval": "1s"}}, ("not be shorter",)),
    # Compared as given, not once kept in milliseconds (both were 1ms: taken, shown as 1ms).
    ({"exponential": {"initialInterval": "1.9ms", "maxInterval": "1.5ms"}}, ("not be shorter",)),
    ({"exponential": {"initialInterval": "999us"}}, ("at least 1ms",)),
    ({"exponential": {"multiplier": 0.5}}, ("multiplier must be from 1 to 100",)),
    ({"exponential": {"multiplier": 101}}, ("multiplier",)),
    ({"exponential": {"multiplier": "2"}}, ("multiplier must be a number",)),
    ({"exponential": {"multiplier": True}}, ("multiplier must be a number",)),
    ({"exponential": {"jitter": 1.5}}, ("jitter must be from 0 to 1",)),
    ({"exponential": {"jitter": -0.1}}, ("jitter",)),
    ({"exponential": {"maxRetries": -1}}, ("maxRetries",)),
    ({"exponential": {"maxRetries": 2**32}}, ("maxRetries",)),
])
def test_exponential_bad_input_is_a_400(policy: dict[str, Any], words: tuple[str, ...]) -> None:
    _refused({"failurePolicy": policy}, *words)


def test_exponential_delays_double_up_to_the_cap_with_jitter_added() -> None:
    policy = FailurePolicy(FailureKind.EXPONENTIAL, 100, 6, max_interval_ms=1000,
                           multiplier=2.0, jitter=0.5)
    assert [policy.retry_delay_ms(a) for a in range(1, 8)] == [
        100, 200, 400, 800, 1000, 1000, None]
    assert policy.retry_delay_ms(3, rand=0.999) == 600  # at most +jitter of the interval
    forever = FailurePolicy(FailureKind.EXPONENTIAL, 100, None, max_interval_ms=1000,
                            multiplier=100.0, jitter=0.0)
    assert forever.retry_delay_ms(10**6) == 1000  # no float overflow, however many attempts


# --- deliveryTimeout and Retry-After: parsing ------------------------------------------


def test_delivery_timeout_is_a_bounded_go_duration() -> None:
    job = _parse({"deliveryTimeout": "1.5s"})
    assert job.delivery_timeout_ms == 1500
    assert job_to_api(job)["deliveryTimeout"] == "1.5s"
    assert Job.decode(APP, "j", job.encode()).delivery_timeout_ms == 1500
    assert "deliveryTimeout" not in job_to_api(_parse({}))
    assert _parse({"delivery_timeout": "2s"}).delivery_timeout_ms == 2000
    _refused({"deliveryTimeout": "0s"}, "at least 1ms")
    _refused({"deliveryTimeout": 5}, "duration string")
    _refused({"deliveryTimeout": "26s"}, "at most 25s", "below the lease")
    _refused({"deliveryTimeout": "x" * 300}, "longer than")


def test_settings_of_the_policies() -> None:
    s = Settings.from_env({"JOBRUNNER_APP_RATE_LIMIT": "12.5", "JOBRUNNER_APP_CONCURRENCY": "8",
                           "JOBRUNNER_MAX_RETRY_AFTER": "60",
                           "JOBRUNNER_MAX_DELIVERY_TIMEOUT": "20"})
    assert (s.app_rate_limit, s.app_concurrency, s.max_retry_after_s) == (12.5, 8, 60.0)
    assert s.max_job_delivery_timeout_s == 20.0
    assert Settings.from_env(s.to_env()) == s
    assert Settings.from_env({"JOBRUNNER_LEASE": "12"}).max_job_delivery_timeout_s == 10.0
    with pytest.raises(SettingsError, match="shorter than JOBRUNNER_LEASE"):
        Settings.from_env({"JOBRUNNER_MAX_DELIVERY_TIMEOUT": "30"})
    with pytest.raises(SettingsError, match="JOBRUNNER_APP_RATE_LIMIT"):
        Settings.from_env({"JOBRUNNER_APP_RATE_LIMIT": "-1"})
    with pytest.raises(SettingsError, match="JOBRUNNER_APP_RATE_LIMIT"):
        Settings.from_env({"JOBRUNNER_APP_RATE_LIMIT": "1e9"})


def test_retry_after_is_seconds_or_an_http_date_within_the_bound() -> None:
    now = 1_700_000_000.0
    assert retry_after_ms("3", now, 60_000) == 3000
    assert retry_after_ms(" 0 ", now, 60_000) == 0
    assert retry_after_ms("9" * 40, now, 60_000) == 60_000
    assert retry_after_ms("0" * 20 + "5", now, 60_000) == 5000  # read as 0 before
    assert retry_after_ms("0" * 5000 + "9" * 5000, now, 60_000) == 60_000
    assert retry_after_ms(email.utils.formatdate(now + 5, usegmt=True), now, 60_000) == 5000
    assert retry_after_ms(email.utils.formatdate(now - 5, usegmt=True), now, 60_000) == 0
    # 1,999.5 ms to the date: 2,000, not 1,999 (the retry would go out before the date)
    assert retry_after_ms(email.utils.formatdate(now + 2, usegmt=True), now + 0.0005,
                          60_000) == 2000
    for bad in ("", "-1", "1.5", "soon", "Mon, 99 Foo 2020 99:99:99 GMT",
                "\u00b2", "\u0663", "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"):
        assert retry_after_ms(bad, now, 60_000) is None


def test_a_malformed_retry_after_is_ignored_not_the_end_of_the_job(
        settings: Settings, receiver: Receiver, worker: ThreadWorker) -> None:
    """A 503 whose Retry-After is neither seconds nor a date (`²`: isdigit() but not a
    number; a year past the calendar) is a failure like any other: the policy retries,
    and a recurring job goes on. It was a worker error: a dead letter at once, and the
    recurring job deleted."""
    store = Store(settings)
    store.register_app(AppRegistration(APP, receiver.url))
    odd = {"super": "\u00b2", "year": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"}

    def answer(d: Delivery) -> int | tuple[int, dict[str, str]]:
        if d.headers["jobrunner-attempt"] == "1":
            return 503, {"Retry-After": odd[d.path.removeprefix("/job/").split("-")[0]]}
        return 200

    receiver.responder = answer
    policy = FailurePolicy(FailureKind.CONSTANT, interval_ms=10, max_retries=3)
    store.schedule_many([make_job("super-once", failure_policy=policy),
                         make_job("year-every", failure_policy=policy, schedule="@every 1h")])
    for name in ("super-once", "year-every"):
        wait_for(lambda n=name: len(_by_job(receiver, n)) >= 2,  # type: ignore[misc]
                 what=f"{name} retried")
    wait_for(lambda: store.get(APP, "super-once") is None, what="super-once done")
    assert dead_letters(store) == []
    assert store.get(APP, "year-every") is not None  # on to its next occurrence


def test_a_worker_never_waits_longer_than_its_own_bound(settings: Settings) -> None:
    worker = Worker(settings.with_(lease_s=6.0, delivery_timeout_s=2.0))
    own = make_job("j", T0, delivery_timeout_ms=300)
    long = make_job("j", T0, delivery_timeout_ms=60_000)  # scheduled past a longer lease
    assert worker._timeout_s(_trigger(own)) == 0.3
    assert worker._timeout_s(_trigger(make_job("j", T0))) == 2.0
    assert worker._timeout_s(_trigger(long)) == 5.0  # below this worker's lease


def _trigger(job: Job) -> Trigger:
    return Trigger(job, f"{APP}/j", 0, T0, 1, 0, "lease")


# --- end to end --------------------------------------------------------------------------


def _gaps_ms(deliveries: list[Delivery]) -> list[float]:
    times = [d.received_at for d in deliveries]
    return [(b - a) * 1000 for a, b in itertools.pairwise(times)]


def _by_job(receiver: Receiver, name: str) -> list[Delivery]:
    return receiver.received(f"/job/{name}")


def test_exponential_retries_come_at_the_policys_times(settings: Settings, receiver: Receiver,
                                                       store: Store, api: FlaskClient,
                                                       worker: ThreadWorker) -> None:
    receiver.status = 500
    policy = {"exponential": {"initialInterval": "100ms", "maxInterval": "400ms",
                              "multiplier": 2, "jitter": 0.5, "maxRetries": 4}}
    response = api.post("/v1.0-alpha1/jobs/exp", json={"dueTime": "0s", "failurePolicy": policy})
    assert response.status_code == 204, response.data
    assert api.get("/v1.0-alpha1/jobs/exp").get_json()["failurePolicy"] == {"exponential": {
        "initialInterval": "100ms", "maxInterval": "400ms", "multiplier": 2, "jitter": 0.5,
        "maxRetries": 4}}

    wait_for(lambda: dead_letters(store), 20, what="the dead letter after 5 attempts")
    attempts = _by_job(receiver, "exp")
    assert [d.headers["jobrunner-attempt"] for d in attempts] == ["1", "2", "3", "4", "5"]
    for gap, interval in zip(_gaps_ms(attempts), [100, 200, 400, 400], strict=True):
        assert interval <= gap <= interval * 1.5 + LATE_MS, (gap, interval, _gaps_ms(attempts))


def test_retry_after_is_honoured_on_429_and_503_only(settings: Settings, receiver: Receiver,
                                                     worker: ThreadWorker) -> None:
    store = Store(settings)
    store.register_app(AppRegistration(APP, receiver.url))
    dated: dict[str, float] = {}

    def answer(d: Delivery) -> int | tuple[int, dict[str, str]]:
        name = d.path.removeprefix("/job/")
        if d.headers["jobrunner-attempt"] != "1":
            return 200
        if name == "seconds":
            return 503, {"Retry-After": "1"}
        if name == "date":
            text = email.utils.formatdate(time.time() + 2, usegmt=True)
            dated[name] = email.utils.parsedate_to_datetime(text).timestamp()
            return 429, {"Retry-After": text}
        if name == "capped":
            return 503, {"Retry-After": "3600"}
        return 500, {"Retry-After": "5"}  # not a 429 or 503: the policy alone decides

    receiver.responder = answer
    policy = FailurePolicy(FailureKind.CONSTANT, interval_ms=10, max_retries=3)
    store.schedule_many(make_job(n, failure_policy=policy)
                        for n in ("seconds", "date", "capped", "ignored"))
    names = ("seconds", "date", "capped", "ignored")
    wait_for(lambda: all(len(_by_job(receiver, n)) == 2 for n in names), 10, what="the retries")

    def gap(name: str) -> float:
        return _gaps_ms(_by_job(receiver, name))[0]

    assert 1000 <= gap("seconds") <= 1000 + LATE_MS
    retried_at = _by_job(receiver, "date")[1].received_at
    assert dated["date"] <= retried_at <= dated["date"] + LATE_MS / 1000
    assert 2500 <= gap("capped") <= 2500 + LATE_MS  # settings.max_retry_after_s
    assert gap("ignored") <= 10 + LATE_MS


def test_a_jobs_delivery_timeout_replaces_the_workers(settings: Settings, receiver: Receiver,
                                                      store: Store,
                                                      worker: ThreadWorker) -> None:
    def slow(d: Delivery) -> int:
        time.sleep(0.6)
        return 200

    receiver.responder = slow
    once = FailurePolicy(FailureKind.CONSTANT, interval_ms=0, max_retries=0)
    store.schedule(make_job("own", failure_policy=once, delivery_timeout_ms=200))
    store.schedule(make_job("default", failure_policy=once))  # the worker's 2 s

    letters = wait_for(lambda: dead_letters(store), 10, what="own's dead letter")
    wait_for(lambda: store.get(APP, "default") is None, 10, what="default delivered")
    assert [(d.name, d.error) for d in letters] == [("own", "no answer within 0.2s")]


# --- rate limit -------------------------------------------------------------------------


@pytest.fixture
def q_settings(redis_server: RedisProcess) -> Settings:
    return Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                    app_url="http://127.0.0.1:9", lease_s=5.0)


@pytest.fixture
def rated(q_settings: Settings) -> Iterator[tuple[Store, QueueDriver]]:
    store = Store(q_settings)
    store.register_app(AppRegistration(APP, "http://127.0.0.1:9", rate=10.0))
    q = QueueDriver(q_settings, start_ms=T0)
    yield store, q
    q.close()
    store.close()


def test_the_rate_limit_is_a_token_bucket_of_one_seconds_worth(
        rated: tuple[Store, QueueDriver]) -> None:
    store, q = rated
    store.schedule_many(make_job(f"j{i}", T0 - 1000 + i) for i in range(100))

    first, earliest = q.claim_with_head(100, at=T0)
    assert len(first) == 10  # the full bucket: one second's worth
    assert [t.job.name for t in first] == [f"j{i}" for i in range(10)]  # oldest first
    again, earliest = q.claim_with_head(100, at=T0)
    assert again == [] and earliest == T0 + 100  # the next token, in 1/10 s
    assert len(q.claim(100, at=T0 + 100)) == 1
    assert len(q.claim(100, at=T0 + 1000)) == 9  # 0.9 s of tokens
    assert len(q.claim(100, at=T0 + 60_000)) == 10  # never more than the bucket
    # Another app is not limited by this one's bucket.
    store.schedule_many(make_job(f"o{i}", T0, app_id="other") for i in range(30))
    assert len(q.claim(100, at=T0 + 60_000)) == 30


def test_the_rate_limit_holds_across_workers(settings: Settings, receiver: Receiver) -> None:
    rate, jobs = 20.0, 60
    store = Store(settings)
    store.register_app(AppRegistration(APP, receiver.url, rate=rate))
    with ThreadWorker(settings), ThreadWorker(settings):
        store.schedule_many(make_job(f"r{i}") for i in range(jobs))
        wait_for(lambda: len(receiver.received()) >= jobs, 20, what="every delivery")

    times = sorted(d.received_at for d in receiver.received())
    # A full bucket (rate deliveries) at once, then `rate` a second.
    least_s = (jobs - rate) / rate
    assert times[-1] - times[0] >= least_s * 0.9, times[-1] - times[0]
    most_in_a_second = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert most_in_a_second <= 2 * rate + 5, most_in_a_second


def test_triggers_held_for_a_token_go_out_soon_after_the_limit_is_lifted(
        settings: Settings, receiver: Receiver) -> None:
    """Set aside under a limit of one delivery in 50 s, two due triggers waited out the
    old limit's next token (scored so in `heldapps`) after the limit was removed; each
    worker now makes them due again when it sees the rate change (within a second)."""
    store = Store(settings)
    store.register_app(AppRegistration(APP, receiver.url, rate=0.02))
    store.schedule_many(make_job(f"held-{i}", data=i) for i in range(3))
    with ThreadWorker(settings):
        wait_for(lambda: len(receiver.received()) == 1, what="the one token's delivery")
        store.register_app(AppRegistration(APP, receiver.url))  # the limit lifted
        # A generous deadline, well short of the 50 s the old rate would take.
        wait_for(lambda: len(receiver.received()) == 3, 20,
                 what="the held triggers, at the new rate")
    assert sorted(d.path for d in receiver.received()) == [f"/job/held-{i}" for i in range(3)]


def test_the_apis_rate_limit_travels_in_the_registration(settings: Settings,
                                                         receiver: Receiver) -> None:
    create_app(settings.with_(app_rate_limit=7.5))
    store = Store(settings)
    wait_for(lambda: (app := store.app(APP)) is not None and app.rate == 7.5, 10,
             what="the registration with its rate")
