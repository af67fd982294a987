"""Hardening (issue 10): bounded input, inputs that used to give 500, the trust boundary
between apps on one Redis, and the smaller points of the adversarial run.

- Limits: schedule, dueTime, ttl, interval and prefix lengths; the parse caches bounded
  in bytes (README, "Limits").
- Inputs that gave 500 or were read wrongly: 4,301-digit repeats/maxRetries, a time zone
  of hundreds of path parts, a chunked body over the limit, a BytesValue that is not
  base64; over HTTP and over gRPC.
- Trust boundary: a registration bound to the app's tokens; registrations of apps gone for
  good are forgotten; /metrics behind the token.
- A 405 keeps Allow, a redirect names no host, a retried schedule request is answered as
  stored, a Redis without persistence is warned about.
"""

from __future__ import annotations

import http.client
import logging
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import redis
from dapr.proto.runtime.v1 import jobs_pb2
from flask.testing import FlaskClient
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.serving import BaseWSGIServer, make_server

from app.api.factory import create_app
from app.jobs import anydata, errors, schedule
from app.jobs.clock import now_ms
from app.jobs.cron import MAX_ZONE_NAME_LENGTH
from app.jobs.durations import MAX_DURATION_LENGTH
from app.jobs.schedule import MAX_SCHEDULE_LENGTH, next_fire_ms, parse_schedule
from app.jobs.sizedcache import SizedCache
from app.processes.procs import PROJECT_ROOT, PortInUseError, ensure_port_free
from app.settings import Settings, SettingsError
from app.store.persistence import persistence_problem, warn_at_start
from app.store.store import UNBOUND, AppClaimed, AppRegistration, Store, app_binding
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for
from tests.test_api_helpers import (
    STRING_VALUE,
    api_settings,
    assert_error,
    assert_no_content,
    job_url,
    post_job,
)
from tests.test_grpc_api import Api, failure

BYTES_VALUE = "type.googleapis.com/google.protobuf.BytesValue"
SCHEDULE_JOB = errors.SCHEDULE_JOB
MALFORMED = errors.MALFORMED_REQUEST
DAY_S = 86400.0


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    """API settings without an app (nothing is delivered)."""
    return api_settings(redis_server.url)


def stored_ids(client: redis.Redis, settings: Settings) -> list[bytes]:
    return sorted(client.hkeys(f"{settings.prefix}:{{0}}:jobs"))


# --- limits: lengths --------------------------------------------------------------------


def test_a_schedule_at_the_limit_is_accepted_one_longer_is_refused(client: FlaskClient,
                                                                   base: str) -> None:
    at_limit = "0 0 0 * * *".ljust(MAX_SCHEDULE_LENGTH)
    assert_no_content(post_job(client, base, "long-ok", {"schedule": at_limit}))
    body = assert_error(post_job(client, base, "too-long", {"schedule": at_limit + " "}), 400,
                        SCHEDULE_JOB)
    assert f"longer than {MAX_SCHEDULE_LENGTH} characters" in body["message"]
    assert_error(client.get(job_url(base, "too-long")), 404)


def test_a_4mb_schedule_is_refused_quickly_with_a_short_message(
        client: FlaskClient, base: str, settings: Settings, redis_client: redis.Redis) -> None:
    """The adversarial run's 4 MB schedule: accepted before (2-4 s of CPU, 4.4 MB stored)."""
    huge = "0 0 0 * * *" + " " * (4 * 1024 * 1024)
    body = assert_error(post_job(client, base, "huge", {"schedule": huge}), 400, SCHEDULE_JOB)
    assert len(body["message"]) < 200, body["message"][:300]
    assert stored_ids(redis_client, settings) == []


@pytest.mark.parametrize("schedule", [
    "x" * 1000, "@" + "x" * 1000, "@every " + "9" * 300 + "x", "TZ=UTC @every " + "1" * 900,
    "1 2 3 " + "x" * 900, "* * * * * " + "7" * 900])
def test_a_bad_schedule_within_the_limit_is_not_repeated_whole(client: FlaskClient, base: str,
                                                               schedule: str) -> None:
    """The cron parser's own words (Go's) repeated the schedule whole after the message's
    short quote of it: 1,234 characters for one of 1,000."""
    body = assert_error(post_job(client, base, "bad", {"schedule": schedule}), 400, SCHEDULE_JOB)
    assert len(body["message"]) < 400, body["message"]


@pytest.mark.parametrize("field", ["dueTime", "due_time", "ttl"])
def test_due_time_and_ttl_longer_than_the_limit_are_refused(client: FlaskClient, base: str,
                                                            field: str) -> None:
    body: dict[str, Any] = {"schedule": "@every 1h"}
    if field == "ttl":
        body["dueTime"] = "1h"
    body[field] = "1" * (MAX_DURATION_LENGTH - 1) + "s"  # at the limit: parsed (out of range)
    err = assert_error(post_job(client, base, "t", body), 400, SCHEDULE_JOB)
    assert "longer than" not in err["message"]
    body[field] = "P" + "0" * MAX_DURATION_LENGTH + "D"
    err = assert_error(post_job(client, base, "t", body), 400, SCHEDULE_JOB)
    assert err["message"].endswith(f"is longer than {MAX_DURATION_LENGTH} characters "
                                   f"({MAX_DURATION_LENGTH + 2})"), err["message"]


def test_a_failure_policy_interval_longer_than_the_limit_is_refused_without_echoing_it(
        client: FlaskClient, base: str) -> None:
    interval = "1" * (10 * MAX_DURATION_LENGTH) + "s"
    err = assert_error(post_job(client, base, "p", {"dueTime": "1h", "failurePolicy": {
        "constant": {"interval": interval}}}), 400, MALFORMED)
    assert f"longer than {MAX_DURATION_LENGTH} characters" in err["message"]
    assert len(err["message"]) < 200


def test_delete_by_a_prefix_longer_than_any_name_is_refused(client: FlaskClient,
                                                            base: str) -> None:
    assert_no_content(post_job(client, base, "keep", {"dueTime": "1h"}))
    assert_error(client.delete(f"{base}?prefix={'k' * 254}"), 400, MALFORMED)
    assert client.get(job_url(base, "keep")).status_code == 200


def test_names_of_invalid_utf8_are_refused_not_merged(client: FlaskClient, base: str) -> None:
    """`a%FFb` and `a%FEb` both decoded to `a\ufffdb`: one job under two names, the one
    deleting the other's."""
    for path in ("a%FFb", "a%FEb", "%ED%A0%80", "a%EF%BF%BDb"):  # the last: U+FFFD itself
        assert_error(client.post(f"{base}/{path}", json={"dueTime": "1h"}), 400,
                     errors.JOB_NAME_INVALID)
    assert client.get(base).get_json()["jobs"] == []


# --- limits: the parse caches, in bytes -------------------------------------------------


def test_sized_cache_evicts_the_least_recently_used_and_skips_big_items() -> None:
    cache: SizedCache[str, int] = SizedCache(max_bytes=100, max_item_bytes=40)
    cache.put("a", 1, 40)
    cache.put("b", 2, 40)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3, 40)  # 120 > 100: b goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert cache.bytes == 80
    cache.put("big", 4, 41)
    assert cache.get("big") is None and cache.bytes == 80
    cache.put("a", 5, 10)  # replacing an entry charges its new size only
    assert cache.get("a") == 5 and cache.bytes == 50


def _retained_bytes(work: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        work()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def test_schedule_cache_holds_at_most_its_budget_of_long_schedules() -> None:
    """4,000 distinct schedules of 1,000 characters (4 MB of text): the cache keeps at most
    its budget, entries of any size (an entry-count bound kept all of them)."""
    schedule._cache.clear()
    texts = [f"{i % 60} {i // 60 % 60} {i // 3600} * * *".ljust(1000) for i in range(4000)]

    def parse_all() -> None:
        for text in texts:
            assert parse_schedule(text).expr == text

    retained = _retained_bytes(parse_all)
    assert schedule._cache.bytes <= schedule.SCHEDULE_CACHE_BYTES
    assert 0 < len(schedule._cache) < len(texts)
    assert retained <= schedule.SCHEDULE_CACHE_BYTES * 1.25, retained
    # The worker's next occurrences go through the same cache.
    before = len(schedule._cache)
    next_fire_ms("1 2 3 * * *".ljust(900), 0, 1, None, None, 1_700_000_000_000)
    assert schedule._cache.bytes <= schedule.SCHEDULE_CACHE_BYTES
    assert len(schedule._cache) <= before + 1
    schedule._cache.clear()


def test_any_packing_cache_holds_at_most_its_budget() -> None:
    anydata._packed.clear()
    values = [f"{i:06d}".ljust(1000, "x") for i in range(4000)]

    def pack_all() -> None:
        for value in values:
            anydata.pack_any({"@type": STRING_VALUE, "value": value})
        # A value past the item bound is packed every time, never kept.
        anydata.pack_any({"@type": STRING_VALUE, "value": "y" * 100_000})

    retained = _retained_bytes(pack_all)
    assert anydata._packed.bytes <= anydata.PACK_CACHE_BYTES
    assert retained <= anydata.PACK_CACHE_BYTES * 1.25, retained
    assert anydata._packed.get((STRING_VALUE, "str", "y" * 100_000)) is None
    anydata._packed.clear()


# --- problem 4: inputs that gave 500 ----------------------------------------------------


@pytest.mark.parametrize(("text", "says"), [
    ("1" * 4301, "must be at most 4294967295"),
    ("9" * 100_000, "must be at most 4294967295"),
    ("-" + "1" * 5000, "must not be negative"),
])
def test_repeats_and_max_retries_of_thousands_of_digits_are_400(
        client: FlaskClient, base: str, text: str, says: str) -> None:
    err = assert_error(post_job(client, base, "r", {"schedule": "@every 1h", "repeats": text}),
                       400, MALFORMED)
    assert says in err["message"] and len(err["message"]) < 200
    err = assert_error(post_job(client, base, "m", {"dueTime": "1h", "failurePolicy": {
        "constant": {"maxRetries": text}}}), 400, MALFORMED)
    assert says in err["message"] and len(err["message"]) < 200


def test_leading_zeros_do_not_count_as_digits(client: FlaskClient, base: str) -> None:
    assert_no_content(post_job(client, base, "z", {"schedule": "@every 1h",
                                                   "repeats": "0" * 5000 + "3"}))
    assert client.get(job_url(base, "z")).get_json()["repeats"] == 3


@pytest.mark.parametrize("zone", [
    "a/" * 300 + "b",  # RecursionError in zoneinfo before
    "x" * (MAX_ZONE_NAME_LENGTH + 1),
    "a/b/c/d/e/f",
])
def test_time_zones_of_many_parts_or_long_names_are_400(client: FlaskClient, base: str,
                                                        zone: str) -> None:
    err = assert_error(post_job(client, base, "tz", {"schedule": f"TZ={zone} 0 0 0 * * *"}),
                       400, SCHEDULE_JOB)
    assert "unknown time zone" in err["message"]


def test_the_longest_real_zone_names_still_work(client: FlaskClient, base: str) -> None:
    zone = "America/Argentina/ComodRivadavia"  # 32 characters, 3 parts
    assert_no_content(post_job(client, base, "real", {"schedule": f"TZ={zone} 0 0 0 * * *"}))


@pytest.mark.parametrize("value", ["!!!", "AQID!", "A", "AQ=D", "a-+b"])
def test_a_bytes_value_that_is_not_base64_is_refused(client: FlaskClient, base: str,
                                                     value: str) -> None:
    data = {"@type": BYTES_VALUE, "value": value}
    err = assert_error(post_job(client, base, "b", {"dueTime": "1h", "data": data}), 400,
                       errors.MALFORMED_REQUEST_DATA)
    assert "not base64" in err["message"]
    # Also inside an Any inside an Any.
    nested = {"@type": "type.googleapis.com/google.protobuf.Any", "value": data}
    assert_error(post_job(client, base, "b", {"dueTime": "1h", "data": nested}), 400,
                 errors.MALFORMED_REQUEST_DATA)
    assert_error(client.get(job_url(base, "b")), 404)


@pytest.mark.parametrize(("value", "raw"), [
    ("AQID", b"\x01\x02\x03"), ("AQI", b"\x01\x02"), ("AQI=", b"\x01\x02"), ("-_8", b"\xfb\xff"),
    ("", b""),
])
def test_a_bytes_value_in_any_base64_protojson_reads_is_kept(client: FlaskClient, base: str,
                                                             value: str, raw: bytes) -> None:
    data = {"@type": BYTES_VALUE, "value": value}
    assert_no_content(post_job(client, base, "ok", {"dueTime": "1h", "data": data}))
    got = client.get(job_url(base, "ok")).get_json()["data"]
    assert got["@type"] == BYTES_VALUE
    assert anydata.base64.b64decode(got.get("value", "")) == raw


def test_bytes_value_shaped_json_inside_a_struct_is_just_json(client: FlaskClient,
                                                              base: str) -> None:
    data = {"@type": "type.googleapis.com/google.protobuf.Struct",
            "value": {"@type": BYTES_VALUE, "value": "!!!"}}
    assert_no_content(post_job(client, base, "s", {"dueTime": "1h", "data": data}))


class _Server:
    """The API behind werkzeug's threaded server: a real socket, so a real chunked body."""

    def __init__(self, settings: Settings) -> None:
        self.httpd: BaseWSGIServer = make_server("127.0.0.1", 0, create_app(settings),
                                                 threaded=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def post_chunked(self, path: str, chunks: list[bytes]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.httpd.server_port, timeout=30)
        try:
            conn.request("POST", path, body=iter(chunks), encode_chunked=True,
                         headers={"Transfer-Encoding": "chunked",
                                  "Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def chunked_server(settings: Settings) -> Iterator[_Server]:
    server = _Server(settings.with_(max_data_bytes=1024))  # a body limit of 68 KiB
    yield server
    server.close()


def test_a_chunked_body_over_the_limit_is_413_not_invalid_json(chunked_server: _Server) -> None:
    big = orjson.dumps({"dueTime": "1h", "data": "x" * 200_000})
    status, body = chunked_server.post_chunked(
        "/v1.0/jobs/chunked", [big[i:i + 8192] for i in range(0, len(big), 8192)])
    assert status == 413, body
    assert orjson.loads(body)["errorCode"] == errors.PAYLOAD_TOO_LARGE


def test_a_chunked_body_under_the_limit_is_read_whole(chunked_server: _Server) -> None:
    body = orjson.dumps({"dueTime": "1h", "data": "x" * 900, "unknown": "y" * 60_000})
    status, answer = chunked_server.post_chunked(
        "/v1.0/jobs/chunked", [body[i:i + 1000] for i in range(0, len(body), 1000)])
    assert status == 204, answer


# --- problem 4 over gRPC: INVALID_ARGUMENT / RESOURCE_EXHAUSTED, never INTERNAL ---------


@pytest.fixture
def grpc_api(redis_server: RedisProcess) -> Iterator[Api]:
    api = Api(api_settings(redis_server.url, grpc_port=free_port()))
    yield api
    api.close()


@pytest.mark.parametrize("job", [
    jobs_pb2.Job(name="g", schedule="0 0 0 * * *" + " " * (1024 * 1024)),
    jobs_pb2.Job(name="g", schedule="TZ=" + "a/" * 300 + "b 0 0 0 * * *"),
    jobs_pb2.Job(name="g", due_time="1" * 100_000 + "s"),
    jobs_pb2.Job(name="g", schedule="@every 1h", ttl="P" + "1" * 100_000 + "D"),
    jobs_pb2.Job(name="n" * 254, due_time="1h"),
], ids=["schedule-1mb", "tz-300-parts", "due-time-100k", "ttl-100k", "name-254"])
def test_bad_input_over_grpc_is_invalid_argument(grpc_api: Api, job: jobs_pb2.Job) -> None:
    code, message, _ = failure(lambda: grpc_api.call(
        "ScheduleJob", jobs_pb2.ScheduleJobRequest(job=job)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, message[:200])
    assert len(message) < 400  # bounded: the input is never echoed whole


def test_a_long_prefix_over_grpc_is_invalid_argument(grpc_api: Api) -> None:
    code, _, _ = failure(lambda: grpc_api.call(
        "DeleteJobsByPrefix", jobs_pb2.DeleteJobsByPrefixRequest(name_prefix="p" * 254)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_retried_grpc_schedule_is_answered_as_stored(grpc_api: Api) -> None:
    job = jobs_pb2.Job(name="retry", due_time="1h", schedule="@every 1h")
    grpc_api.call("ScheduleJob", jobs_pb2.ScheduleJobRequest(job=job))
    grpc_api.call("ScheduleJob", jobs_pb2.ScheduleJobRequest(job=job))  # the same: OK
    other = jobs_pb2.Job(name="retry", due_time="2h", schedule="@every 1h")
    code, _, _ = failure(lambda: grpc_api.call("ScheduleJob",
                                               jobs_pb2.ScheduleJobRequest(job=other)))
    assert code == grpc.StatusCode.ALREADY_EXISTS


# --- problem 7: a retried request is safe -----------------------------------------------


def test_a_retry_of_the_same_request_is_204_and_keeps_the_stored_job(
        client: FlaskClient, base: str) -> None:
    """A 503 may have stored the job (Redis stalled after the write): the client's retry
    with overwrite false finds it and is answered 204, and the job keeps its first due
    time. A different request for the name is still a 409."""
    body = {"dueTime": "2s", "schedule": "@every 1m", "repeats": 3, "ttl": "1h",
            "data": {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"},
            "failurePolicy": {"constant": {"interval": "3s", "maxRetries": 5}}}
    assert_no_content(post_job(client, base, "r", body))
    first = client.get(job_url(base, "r")).get_json()
    stored_at = now_ms()
    wait_for(lambda: now_ms() > stored_at + 1, what="the clock to move on")  # later instants
    assert_no_content(post_job(client, base, "r", body))
    assert client.get(job_url(base, "r")).get_json() == first
    for change in ({"dueTime": "3s"}, {"repeats": 4}, {"ttl": "2h"}, {"data": "other"},
                   {"failurePolicy": {"drop": {}}}, {"schedule": "@every 2m"}):
        assert_error(post_job(client, base, "r", {**body, **change}), 409, errors.JOB_EXISTS)
    assert client.get(job_url(base, "r")).get_json() == first


# --- problem 7: the trust boundary ------------------------------------------------------


def test_binding_is_a_digest_of_the_tokens_never_the_tokens() -> None:
    assert app_binding("a", "", "") == UNBOUND
    bound = app_binding("a", "api-secret", "app-secret")
    assert "secret" not in bound and bound.startswith("sha256:")
    assert bound != app_binding("a", "api-secret", "") != app_binding("b", "api-secret", "")
    assert app_binding("a", "x", "") != app_binding("a", "", "x")


def test_a_second_api_with_other_tokens_is_refused_while_the_first_lives(
        settings: Settings, redis_client: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    first = settings.with_(api_token="token-one")
    store = Store(first)
    store.register_app(AppRegistration(first.app_id, "http://127.0.0.1:7001"), ttl_s=30,
                       binding=app_binding(first.app_id, "token-one", ""))
    with caplog.at_level(logging.ERROR, "jobrunner.api"), pytest.raises(AppClaimed) as refused:
        create_app(settings.with_(api_token="token-two", app_url="http://127.0.0.1:7002"))
    assert "served by a live API process with other tokens" in str(refused.value)
    assert "other tokens" in caplog.text
    for token in ("", "token-two"):  # no token is another binding too
        with pytest.raises(AppClaimed):
            create_app(settings.with_(api_token=token))
    with pytest.raises(AppClaimed):  # nor may it register itself another way
        store.register_app(AppRegistration(first.app_id, "http://127.0.0.1:7002"), ttl_s=30,
                           binding=app_binding(first.app_id, "", "app-token"))
    assert store.app(first.app_id) == AppRegistration(first.app_id, "http://127.0.0.1:7001")
    # The same tokens: a second process of the same app, as gunicorn starts.
    create_app(first)
    alive = redis_client.get(f"{settings.prefix}:alive:{settings.app_id}")
    assert alive is not None and b"token" not in alive
    # Once the first is gone (its mark expired), another binding may take the app.
    redis_client.pexpire(f"{settings.prefix}:alive:{settings.app_id}", 1)
    wait_for(lambda: not redis_client.exists(f"{settings.prefix}:alive:{settings.app_id}"),
             what="the first registration to expire")
    create_app(settings.with_(api_token="token-two"))
    store.close()


def test_a_running_api_whose_app_was_taken_stops_renewing_and_says_so(
        settings: Settings, redis_client: redis.Redis) -> None:
    store = Store(settings)
    registration = AppRegistration(settings.app_id, "http://127.0.0.1:7001")
    mine = app_binding(settings.app_id, "mine", "")
    store.register_app(registration, ttl_s=30, binding=mine)
    # Its mark expired during an outage, and a process with other tokens registered:
    redis_client.set(f"{settings.prefix}:alive:{settings.app_id}", "sha256:other", px=30_000)
    with pytest.raises(AppClaimed):
        store.register_app(registration, ttl_s=30, binding=mine)
    assert redis_client.get(f"{settings.prefix}:alive:{settings.app_id}") == b"sha256:other"
    store.close()


def test_registrations_of_apps_gone_for_good_are_forgotten_their_jobs_kept(
        settings: Settings, redis_client: redis.Redis) -> None:
    store = Store(settings)
    apps = f"{settings.prefix}:apps"
    now = 1_800_000_000_000
    week_ago = now - int(7 * DAY_S * 1000) - 1
    gone = AppRegistration("gone", "http://127.0.0.1:7001")
    live_old = AppRegistration("live-old", "http://127.0.0.1:7002")
    recent = AppRegistration("recent", "http://127.0.0.1:7003")
    redis_client.hset(apps, "gone", gone.encode(seen_ms=week_ago))
    redis_client.hset(apps, "live-old", live_old.encode(seen_ms=week_ago))
    redis_client.set(f"{settings.prefix}:alive:live-old", UNBOUND)
    redis_client.hset(apps, "recent", recent.encode(seen_ms=now - 1000))
    legacy = b'{"url":"http://127.0.0.1:7004","token":"","format":"auto","protocol":"http"}'
    redis_client.hset(apps, "legacy", legacy)
    # A job of the gone app stays, waiting for it (staged when due).
    client = create_app(settings.with_(app_id="gone", app_forget_after_s=0)).test_client()
    assert_no_content(post_job(client, "/v1.0/jobs", "waiting", {"dueTime": "1h"}))

    # Counted by the workers (stats:apps and its totals): read by every /metrics scrape.
    redis_client.sadd(f"{settings.prefix}:stats:apps", "gone", "recent")
    redis_client.hset(f"{settings.prefix}:stats:total:gone", "delivered", 3)
    assert store.forget_gone_apps(7 * DAY_S, now_ms=now) == ["gone"]
    assert sorted(k.decode() for k in redis_client.hkeys(apps)) == ["legacy", "live-old",
                                                                    "recent"]
    assert redis_client.smembers(f"{settings.prefix}:stats:apps") == {b"recent"}
    assert not redis_client.exists(f"{settings.prefix}:stats:total:gone")
    assert store.get("gone", "waiting") is not None
    # The registration from before renewals were stamped is stamped now, so it goes a
    # week later if nothing renews it.
    stamped = orjson.loads(redis_client.hget(apps, "legacy") or b"{}")
    assert stamped["seen"] == now and stamped["url"] == "http://127.0.0.1:7004"
    assert sorted(store.forget_gone_apps(7 * DAY_S, now_ms=now + int(7 * DAY_S * 1000) + 1)) == [
        "legacy", "recent"]
    store.close()


def test_an_api_process_forgets_gone_apps_when_it_starts(settings: Settings,
                                                         redis_client: redis.Redis) -> None:
    apps = f"{settings.prefix}:apps"
    stale = int(time.time() * 1000) - int(8 * DAY_S * 1000)
    redis_client.hset(apps, "long-gone", AppRegistration("long-gone", "http://x:1").encode(stale))
    create_app(settings)
    wait_for(lambda: not redis_client.hexists(apps, "long-gone"), what="the app forgotten")


# --- problem 7: /metrics, 405, redirects ------------------------------------------------


def test_metrics_need_the_token_when_one_is_set(settings: Settings) -> None:
    client = create_app(settings.with_(api_token="s3cret")).test_client()
    assert_error(client.get("/metrics"), 401, errors.UNAUTHORIZED)
    assert_error(client.get("/metrics", headers={"dapr-api-token": "wrong"}), 401)
    assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
    assert client.get("/metrics", headers={"dapr-api-token": "s3cret"}).status_code == 200
    # Prometheus' `authorization: {credentials: s3cret}`.
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    # Bearer is for the scraper only: the jobs API takes Dapr's header.
    assert_error(client.get("/v1.0/jobs/x", headers={"Authorization": "Bearer s3cret"}), 401)
    # Probes stay open.
    assert client.get("/healthz").status_code == 200


def test_metrics_are_open_without_a_token(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 200


def test_a_405_keeps_the_allow_header(client: FlaskClient, base: str) -> None:
    response = client.patch(job_url(base, "x"), json={"dueTime": "1s"})
    assert_error(response, 405, errors.METHOD_NOT_ALLOWED)
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST", "PUT", "DELETE"}


@pytest.mark.parametrize("action", ["pause", "resume", "trigger"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "PATCH", "DELETE"])
def test_a_control_route_answers_other_methods_405_allow_post(
    client: FlaskClient, base: str, action: str, method: str
) -> None:
    client.post(job_url(base, "x"), json={"dueTime": "1h"})
    response = client.open(f"{job_url(base, 'x')}/{action}", method=method)
    assert response.status_code == 405
    if method != "HEAD":
        assert_error(response, 405, errors.METHOD_NOT_ALLOWED)
    # PATCH no route takes: the router's 405 names every method of the job routes too
    allowed = response.headers["Allow"].split(", ")
    assert allowed == ["POST"] if method != "PATCH" else "POST" in allowed
    assert client.get(job_url(base, "x")).status_code == 200  # not deleted, not paused
    assert client.get(job_url(base, "x")).get_json().get("paused", False) is False


def test_a_redirect_names_no_host(client: FlaskClient) -> None:
    # (a name the API does not know is refused first: tests/test_callers.py)
    response = client.put("/v1.0/jobs", json={"dueTime": "1s"},
                          headers={"Host": "10.6.6.6:666"})
    assert response.status_code == 308
    assert response.headers["Location"] == "/v1.0/jobs/"


# --- problem 7: a Redis without persistence ---------------------------------------------


def test_a_redis_without_aof_or_rdb_is_warned_about(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """The suite's Redis runs with neither (`--appendonly no --save ""`)."""
    with caplog.at_level(logging.WARNING):
        create_app(settings)
        warn_at_start(settings, logging.getLogger("jobrunner.worker"))
    warned = [r for r in caplog.records if "keeps no data across a restart" in r.getMessage()]
    assert {r.name for r in warned} == {"jobrunner.api", "jobrunner.worker"}
    assert all(r.levelno == logging.WARNING for r in warned)


def test_aof_or_rdb_is_enough(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "aof", aof=True)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert persistence_problem(client) is None
        client.config_set("appendonly", "no")
        assert persistence_problem(client) is not None
        client.config_set("save", "3600 1")
        assert persistence_problem(client) is None
        # A user that may not run CONFIG: said once, clearly.
        client.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"],
                           channels=["*"], commands=["+@all", "-config"])
        limited = redis.Redis(port=server.port, username="limited", password="pw")
        problem = persistence_problem(limited)
        assert problem is not None and "CONFIG GET is not allowed" in problem
        limited.close()
        client.close()
    finally:
        server.stop()


def test_an_unreachable_redis_is_not_a_persistence_warning() -> None:
    # No retries: redis-py 8 retries a refused connection 10 times with backoff (~4 s), which
    # only delays the same ConnectionError.
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    assert persistence_problem(client) is None


@pytest.mark.parametrize(("name", "raw", "says"), [
    ("JOBRUNNER_DELIVERY_TIMEOUT", "nan", "must be a number"),
    ("JOBRUNNER_HISTORY_TTL", "inf", "must be at most"),
    ("JOBRUNNER_LEASE", "-inf", "must be at least"),
    ("JOBRUNNER_IDLE_POLL", "1e400", "must be at most"),
    ("JOBRUNNER_HTTP_BODY_TIMEOUT", "NaN", "must be a number"),
    ("JOBRUNNER_PARTITIONS", "100000000", "must be at most 16384"),
    ("JOBRUNNER_HTTP_MAX_CONNECTIONS", "99999999999999999999", "must be at most"),
    ("JOBRUNNER_CLAIM_BATCH", "9" * 5000, "must be at most"),
    ("DAPR_HTTP_PORT", "70000", "must be at most 65535"),
    ("APP_PORT", "65536", "must be at most 65535"),
    # a header holds ASCII only: no request could carry it (every one was a 401)
    ("DAPR_API_TOKEN", "s\u20accret", "must be printable ASCII"),
    ("DAPR_API_TOKEN", "a\nb", "must be printable ASCII"),
    # Bytes that are not UTF-8, as Python keeps them from the environment
    ("JOBRUNNER_PREFIX", "x\udcff", "is not UTF-8 text"),
    ("APP_HOST", "\udcff", "is not UTF-8 text"),
])
def test_settings_past_any_sane_bound_are_refused_by_name(name: str, raw: str,
                                                          says: str) -> None:
    """NaN passed every `<` check and failed far away (a trigger dead-lettered, a worker
    that would not stop); a huge partition count built a list per partition for ever."""
    with pytest.raises(SettingsError, match=f"{name} {says}") as refused:
        Settings.from_env({name: raw})
    assert len(str(refused.value)) < 200  # a 5,000-digit value is not echoed whole


def test_a_host_name_is_refused_only_where_the_api_binds() -> None:
    """granian binds an address (`api --host localhost` was its traceback: tests/test_cli.py);
    the workers and the jobs CLI only connect, and take a name."""
    assert Settings.from_env({"JOBRUNNER_HTTP_HOST": "localhost"}).http_host == "localhost"
    with pytest.raises(PortInUseError, match=r"must be an IP address.*--host"):
        ensure_port_free("localhost", free_port(), "the API's (--http-port)")


@pytest.mark.parametrize("host, url", [
    ("::1", "http://[::1]:6200"), ("[::1]", "http://[::1]:6200"),
    ("10.0.0.7", "http://10.0.0.7:6200"), ("app-1.svc_x", "http://app-1.svc_x:6200"),
    ("jobs.default.svc.cluster.local.", "http://jobs.default.svc.cluster.local.:6200"),
    ("", "http://127.0.0.1:6200")])
def test_app_host_makes_a_url(host: str, url: str) -> None:
    """`::1` made `http://::1:6200` (a traceback at start)."""
    assert Settings.from_env({"APP_HOST": host}).app_url == url


@pytest.mark.parametrize("host", ["x/y?z", "a\x01b", "a b", "a:1", "h\u00e9te", "[x]", "a..", "."])
def test_app_host_that_is_no_host_is_refused_by_name(host: str) -> None:
    """`x/y?z` made APP_PORT part of the URL's query; a control character was taken and
    its app's triggers waited for ever."""
    with pytest.raises(SettingsError, match="APP_HOST must be a host name or an IP address"):
        Settings.from_env({"APP_HOST": host})


def test_a_file_written_on_a_full_disk_is_named(tmp_path: Path) -> None:
    """The write's ENOSPC names no file: "[Errno 28] No space left on device" was all.
    (A write past RLIMIT_FSIZE fails as one on a full disk does, with EFBIG: in a child.)"""
    target = tmp_path / "redis.port"
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from app.processes.procs import write_file\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2, 2))\n"
        "try:\n"
        "    write_file(Path(sys.argv[1]), b'6379\\n')\n"
        "except OSError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True,
                          text=True, timeout=60, cwd=PROJECT_ROOT)
    assert done.stdout.strip() == f"[Errno 27] File too large: '{target}'", done
    assert list(tmp_path.iterdir()) == []
