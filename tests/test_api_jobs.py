"""HTTP API contract: scheduling, getting and deleting jobs (the success paths).

design.md "The HTTP API": POST schedules (204, empty body), GET answers the job
as JSON (200; 404 with an error body when unknown), DELETE answers 204 (also for
a missing job), an existing name without overwrite is a 409. Every case runs on
both `/v1.0-alpha1/jobs` and `/v1.0/jobs`.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from google.protobuf import wrappers_pb2

from app.jobs.clock import now_ms
from app.settings import Settings
from tests.support.far import any_record
from tests.support.redis_proc import RedisProcess
from tests.support.seed import SEED_BODY
from tests.test_api_helpers import (
    DEFAULT_POLICY,
    EXTENSION_FIELDS,
    STRING_VALUE,
    api_settings,
    assert_error,
    assert_no_content,
    assert_store_consistent,
    job_url,
    post_job,
)


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    """No receiver: these tests deliver nothing (conftest's `app`, `client`, `base` use it)."""
    return api_settings(redis_server.url)


def schedule_and_get(client: FlaskClient, base: str, name: str, body: Any) -> dict[str, Any]:
    assert_no_content(post_job(client, base, name, body))
    response = client.get(job_url(base, name))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    job = response.get_json()
    assert isinstance(job, dict)
    return job


def ms(text: str) -> int:
    """An RFC 3339 string (as nextTriggerTime has it) as epoch ms."""
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000 + 0.5)


# --- the seed --------------------------------------------------------------------------


def test_seed_r2d2_job_schedules_and_reads_back(client: FlaskClient, base: str) -> None:
    """The seed's exact request body: 204, and GET gives the Any back with `@type`."""
    before = now_ms()
    assert_no_content(post_job(client, base, "R2-D2", SEED_BODY))
    after = now_ms()
    job = client.get(job_url(base, "R2-D2")).get_json()
    assert job["name"] == "R2-D2"
    assert job["dueTime"] == "2s"
    assert job["data"] == {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}
    assert job["failurePolicy"] == DEFAULT_POLICY
    assert before + 2000 <= ms(job["nextTriggerTime"]) <= after + 2000


# --- data -----------------------------------------------------------------------------

PLAIN_DATA = [
    pytest.param("someData", id="string"),
    pytest.param('"xyz"', id="quoted-string"),
    pytest.param("", id="empty-string"),
    pytest.param(123, id="int"),
    pytest.param(-1.5, id="float"),
    pytest.param(True, id="bool"),
    pytest.param({"expression": "val", "nested": {"a": [1, 2, {"b": None}]}}, id="object"),
    pytest.param([1, "two", 3.0], id="array"),
    pytest.param({"@type": 5, "value": "x"}, id="object-with-non-string-@type"),
    pytest.param("\u30b8\u30e7\u30d6 \u2713 \U0001f680", id="unicode"),
]


@pytest.mark.parametrize("data", PLAIN_DATA)
def test_data_is_read_back_as_given(client: FlaskClient, base: str, data: Any) -> None:
    job = schedule_and_get(client, base, "d", {"dueTime": "1h", "data": data})
    assert job["data"] == data
    assert type(job["data"]) is type(data)


def test_no_data_means_no_data_field(client: FlaskClient, base: str) -> None:
    job = schedule_and_get(client, base, "nodata", {"dueTime": "1h"})
    assert "data" not in job or job["data"] is None


def test_null_data_is_no_data(client: FlaskClient, base: str) -> None:
    job = schedule_and_get(client, base, "nulldata", {"dueTime": "1h", "data": None})
    assert "data" not in job or job["data"] is None


ANY_DATA = [
    pytest.param({"@type": STRING_VALUE, "value": "aproto"}, id="StringValue"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.Int64Value", "value": "42"},
                 id="Int64Value"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.BoolValue", "value": True},
                 id="BoolValue"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.Struct",
                  "value": {"droid": "R2-D2", "tasks": ["oil", "charge"]}}, id="Struct"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.Timestamp",
                  "value": "2024-04-24T11:42:22Z"}, id="Timestamp"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.Empty"}, id="Empty"),
]


@pytest.mark.parametrize("data", ANY_DATA)
def test_protobuf_any_data_is_read_back_with_its_type(
    client: FlaskClient, base: str, data: dict[str, Any]
) -> None:
    job = schedule_and_get(client, base, "any", {"dueTime": "1h", "data": data})
    assert job["data"] == data


def test_any_data_is_stored_packed_for_delivery(
    client: FlaskClient, base: str, settings: Settings, redis_client: Any
) -> None:
    """The seed's handler base64-decodes `value`: the stored Any is the serialized message."""
    from app.jobs.model import Job
    from app.store.keys import Keys, job_id

    data = {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}
    assert_no_content(post_job(client, base, "R2-D2", {"dueTime": "1h", "data": data}))
    keys = Keys(settings.prefix, settings.partitions)
    jid = job_id(settings.app_id, "R2-D2")
    job = Job.decode(settings.app_id, "R2-D2", any_record(redis_client, keys.for_job(jid), jid))
    assert job.any_type == STRING_VALUE
    assert job.any_value == "ChBSMi1EMjpPaWwgQ2hhbmdl"  # design.md's example
    message = wrappers_pb2.StringValue.FromString(base64.b64decode(job.any_value))
    assert message.value == "R2-D2:Oil Change"


# --- schedule, dueTime, ttl, repeats -----------------------------------------------------

SCHEDULES = [
    "*/5 * * * * *",
    "0 30 9 * * MON-FRI",
    "0 0 0 1 JAN,jul *",
    "? * * * * ?",
    "0 0 12 * * 0-6",
    "@every 1h30m",
    "@every 500ms",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    "TZ=Europe/Paris 0 0 9 * * *",
    "CRON_TZ=America/New_York 0 15 10 * * *",
    "TZ=UTC @daily",
]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_syntaxes_are_accepted_and_read_back(
    client: FlaskClient, base: str, schedule: str
) -> None:
    before = now_ms()
    job = schedule_and_get(client, base, "cron", {"schedule": schedule})
    assert job["schedule"] == schedule
    assert "dueTime" not in job and "ttl" not in job and "repeats" not in job
    # schedule only: the first trigger is the next occurrence, never in the past.
    assert ms(job["nextTriggerTime"]) > before


def test_daily_first_trigger_is_next_utc_midnight(client: FlaskClient, base: str) -> None:
    before = dt.datetime.now(dt.UTC)
    job = schedule_and_get(client, base, "daily", {"schedule": "@daily"})
    after = dt.datetime.now(dt.UTC)
    expected = {
        dt.datetime.combine(t.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
        for t in (before, after)
    }
    got = dt.datetime.fromisoformat(job["nextTriggerTime"].replace("Z", "+00:00"))
    assert got in expected


def test_every_first_trigger_is_one_interval_from_now(client: FlaskClient, base: str) -> None:
    before = now_ms()
    job = schedule_and_get(client, base, "every", {"schedule": "@every 90s"})
    after = now_ms()
    assert before + 90_000 <= ms(job["nextTriggerTime"]) <= after + 90_000


def test_tz_prefix_fires_at_wall_clock_time_of_that_zone(client: FlaskClient, base: str) -> None:
    job = schedule_and_get(client, base, "paris", {"schedule": "TZ=Europe/Paris 0 30 9 * * *"})
    nxt = dt.datetime.fromisoformat(job["nextTriggerTime"].replace("Z", "+00:00"))
    local = nxt.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute, local.second) == (9, 30, 0)


DUE_TIMES = [
    pytest.param("2s", 2_000, id="go-seconds"),
    pytest.param("500ms", 500, id="go-ms"),
    pytest.param("1h30m", 5_400_000, id="go-compound"),
    pytest.param("1.5s", 1_500, id="go-fraction"),
    pytest.param("PT2S", 2_000, id="iso-PT2S"),
    pytest.param("PT1M30S", 90_000, id="iso-minutes"),
    pytest.param("P1DT2H", 93_600_000, id="iso-days"),
    pytest.param("P1W", 604_800_000, id="iso-week"),
]


@pytest.mark.parametrize(("due_time", "offset_ms"), DUE_TIMES)
def test_due_time_durations_count_from_now(
    client: FlaskClient, base: str, due_time: str, offset_ms: int
) -> None:
    before = now_ms()
    job = schedule_and_get(client, base, "due", {"dueTime": due_time})
    after = now_ms()
    assert job["dueTime"] == due_time
    assert before + offset_ms <= ms(job["nextTriggerTime"]) <= after + offset_ms


@pytest.mark.parametrize(
    ("due_time", "expected"),
    [
        ("2030-01-02T03:04:05Z", "2030-01-02T03:04:05.000Z"),
        ("2030-01-02T03:04:05.123Z", "2030-01-02T03:04:05.123Z"),
        ("2030-01-02T05:04:05+02:00", "2030-01-02T03:04:05.000Z"),
        ("2030-01-01T22:04:05-05:00", "2030-01-02T03:04:05.000Z"),
    ],
)
def test_due_time_rfc3339(client: FlaskClient, base: str, due_time: str, expected: str) -> None:
    job = schedule_and_get(client, base, "rfc", {"dueTime": due_time})
    assert job["dueTime"] == due_time  # as given
    assert job["nextTriggerTime"] == expected


def test_past_due_time_is_accepted_and_due_at_once(client: FlaskClient, base: str) -> None:
    job = schedule_and_get(client, base, "past", {"dueTime": "2020-01-01T00:00:00Z"})
    assert job["nextTriggerTime"] == "2020-01-01T00:00:00.000Z"
    assert job["status"] == "scheduled"


def test_schedule_and_due_time_first_fire_at_due_time(client: FlaskClient, base: str) -> None:
    job = schedule_and_get(
        client, base, "both", {"schedule": "@every 1m", "dueTime": "2031-06-01T00:00:00Z"}
    )
    assert job["schedule"] == "@every 1m"
    assert job["dueTime"] == "2031-06-01T00:00:00Z"
    assert job["nextTriggerTime"] == "2031-06-01T00:00:00.000Z"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"schedule": "@daily", "repeats": 3}, id="schedule"),
        pytest.param({"dueTime": "1h", "repeats": 1}, id="due-time-once"),
        pytest.param({"schedule": "@every 1m", "repeats": 0}, id="zero"),
        pytest.param({"schedule": "@every 1m", "repeats": 4294967295}, id="uint32-max"),
    ],
)
def test_repeats_is_read_back(client: FlaskClient, base: str, body: dict[str, Any]) -> None:
    job = schedule_and_get(client, base, "rep", body)
    assert job["repeats"] == body["repeats"]


def test_repeats_as_decimal_string_and_integral_float(client: FlaskClient, base: str) -> None:
    """protojson reads a uint32 from "3" and 3.0 too."""
    job = schedule_and_get(client, base, "s", {"schedule": "@daily", "repeats": "3"})
    assert job["repeats"] == 3
    job = schedule_and_get(client, base, "f", {"schedule": "@daily", "repeats": 3.0})
    assert job["repeats"] == 3


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"schedule": "@every 1m", "ttl": "1h"}, id="go-duration"),
        pytest.param({"schedule": "@every 1m", "ttl": "PT1H"}, id="iso"),
        pytest.param({"schedule": "@every 1m", "ttl": "2040-01-01T00:00:00Z"}, id="rfc3339"),
        pytest.param({"schedule": "@daily", "dueTime": "10s", "ttl": "11s"}, id="from-due-time"),
        pytest.param({"schedule": "@daily", "dueTime": "10s", "ttl": "10s"},
                     id="equal-one-trigger"),
    ],
)
def test_ttl_is_read_back(client: FlaskClient, base: str, body: dict[str, Any]) -> None:
    job = schedule_and_get(client, base, "ttl", body)
    assert job["ttl"] == body["ttl"]


def test_all_fields_camel_case(client: FlaskClient, base: str) -> None:
    """Dapr's fields.go test body, camelCase."""
    job = schedule_and_get(
        client, base, "test",
        {"schedule": "@every 1m", "repeats": 123, "dueTime": "1000s", "ttl": "123s",
         "data": "hello world",
         "failurePolicy": {"constant": {"interval": "3s", "maxRetries": 5}}},
    )
    expected = {"name": "test", "schedule": "@every 1m", "repeats": 123, "dueTime": "1000s",
                "ttl": "123s", "data": "hello world",
                "failurePolicy": {"constant": {"interval": "3s", "maxRetries": 5}}}
    assert {k: v for k, v in job.items() if k in expected} == expected


def test_all_fields_snake_case(client: FlaskClient, base: str) -> None:
    """Dapr's fields.go test body: `due_time`, `failure_policy`, `max_retries`."""
    job = schedule_and_get(
        client, base, "test",
        {"schedule": "@every 1m", "repeats": 123, "due_time": "1000s", "ttl": "123s",
         "data": "hello world",
         "failure_policy": {"constant": {"interval": "3s", "max_retries": 5}}},
    )
    assert job["dueTime"] == "1000s"
    assert job["failurePolicy"] == {"constant": {"interval": "3s", "maxRetries": 5}}


def test_get_answers_extension_fields(client: FlaskClient, base: str) -> None:
    job = schedule_and_get(client, base, "ext", {"dueTime": "2032-03-04T05:06:07Z"})
    for field in EXTENSION_FIELDS:
        assert field in job, field
    assert job["status"] == "scheduled"
    assert job["nextTriggerTime"] == "2032-03-04T05:06:07.000Z"
    assert job["lastTriggerTime"] is None
    assert job["triggerCount"] == 0


# --- failure policy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(None, DEFAULT_POLICY, id="absent"),
        pytest.param({}, DEFAULT_POLICY, id="empty-object"),
        pytest.param({"drop": {}}, {"drop": {}}, id="drop"),
        pytest.param({"constant": {"interval": "3s", "maxRetries": 5}},
                     {"constant": {"interval": "3s", "maxRetries": 5}}, id="constant"),
        pytest.param({"constant": {"interval": "3s"}}, {"constant": {"interval": "3s"}},
                     id="constant-unlimited-retries"),
        pytest.param({"constant": {"maxRetries": 2}},
                     {"constant": {"interval": "0s", "maxRetries": 2}},
                     id="constant-zero-interval"),
        pytest.param({"constant": {}}, {"constant": {"interval": "0s"}}, id="constant-empty"),
        pytest.param({"constant": {"interval": "500ms", "maxRetries": 0}},
                     {"constant": {"interval": "500ms", "maxRetries": 0}}, id="constant-ms"),
        pytest.param({"constant": {"interval": "1m30s", "maxRetries": "7"}},
                     {"constant": {"interval": "1m30s", "maxRetries": 7}}, id="constant-minutes"),
    ],
)
def test_failure_policy_is_read_back(
    client: FlaskClient, base: str, policy: Any, expected: dict[str, Any]
) -> None:
    body: dict[str, Any] = {"dueTime": "1h"}
    if policy is not None:
        body["failurePolicy"] = policy
    job = schedule_and_get(client, base, "fp", body)
    assert job["failurePolicy"] == expected


def test_failure_policy_is_kept_in_the_store(
    client: FlaskClient, base: str, settings: Settings, redis_client: Any
) -> None:
    """Absent maxRetries is unlimited and absent interval is 0 where the workers read it."""
    from app.jobs.model import FailureKind, Job
    from app.store.keys import Keys, job_id

    keys = Keys(settings.prefix, settings.partitions)
    cases = {
        "unlimited": ({"constant": {"interval": "3s"}}, (FailureKind.CONSTANT, 3000, None)),
        "zero": ({"constant": {"maxRetries": 2}}, (FailureKind.CONSTANT, 0, 2)),
        "drop": ({"drop": {}}, (FailureKind.DROP, 0, 0)),
        "default": (None, (FailureKind.CONSTANT, 1000, 3)),
    }
    for name, (policy, expected) in cases.items():
        body: dict[str, Any] = {"dueTime": "1h"}
        if policy is not None:
            body["failurePolicy"] = policy
        assert_no_content(post_job(client, base, name, body))
        jid = job_id(settings.app_id, name)
        job = Job.decode(settings.app_id, name, any_record(redis_client, keys.for_job(jid), jid))
        fp = job.failure_policy
        got = (fp.kind, fp.interval_ms, fp.max_retries)
        if expected[0] is FailureKind.DROP:
            got = (fp.kind, 0, 0)  # a drop policy's numbers are meaningless
        assert got == expected, name


# --- request format -------------------------------------------------------------------


def test_unknown_fields_are_ignored(client: FlaskClient, base: str) -> None:
    job = schedule_and_get(
        client, base, "unk",
        {"dueTime": "1h", "metadata": {"a": "b"}, "futureField": [1, 2], "Schedule": "bogus",
         "data": {"k": "v"}},
    )
    assert job["data"] == {"k": "v"}
    assert "futureField" not in job and "metadata" not in job
    assert "schedule" not in job


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-8"],
)
def test_body_is_json_whatever_the_content_type(
    client: FlaskClient, base: str, content_type: str | None
) -> None:
    body = b'{"dueTime": "1h", "data": {"from": "curl -d"}}'
    kwargs: dict[str, Any] = {}
    if content_type is not None:
        kwargs["content_type"] = content_type
    response = client.post(job_url(base, "ct"), data=body, **kwargs)
    assert_no_content(response)
    assert client.get(job_url(base, "ct")).get_json()["data"] == {"from": "curl -d"}


def test_put_schedules_like_post(client: FlaskClient, base: str) -> None:
    assert_no_content(client.put(job_url(base, "put"), json={"dueTime": "1h", "data": 1}))
    assert client.get(job_url(base, "put")).get_json()["data"] == 1


def test_body_with_whitespace_and_empty_name_field(client: FlaskClient, base: str) -> None:
    """`"name": ""` is the proto default, the same as absent."""
    body = b'  {  "dueTime" :  "1h" , "name": "" ,"data":  {  "expression":   "val" }  }  '
    job = schedule_and_get(client, base, "ws", body)
    assert job["data"] == {"expression": "val"}
    assert job["name"] == "ws"


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a", id="one-char"),
        pytest.param("x" * 253, id="253-chars"),
        pytest.param("R2-D2", id="seed"),
        pytest.param("job with spaces", id="spaces"),
        pytest.param("Mixed.Case_name:1-2", id="punctuation"),
        pytest.param("\u30b8\u30e7\u30d6", id="unicode"),
        pytest.param("100%", id="percent"),
        pytest.param("a+b&c=d", id="query-ish"),
    ],
)
def test_valid_names_round_trip(client: FlaskClient, base: str, name: str) -> None:
    job = schedule_and_get(client, base, name, {"dueTime": "1h"})
    assert job["name"] == name
    assert_no_content(client.delete(job_url(base, name)))
    assert_error(client.get(job_url(base, name)), 404)


def test_names_are_trimmed(client: FlaskClient, base: str) -> None:
    assert_no_content(post_job(client, base, "  padded  ", {"dueTime": "1h"}))
    job = client.get(job_url(base, "padded")).get_json()
    assert job["name"] == "padded"
    assert client.get(job_url(base, " padded ")).get_json()["name"] == "padded"


# --- get, delete, overwrite -------------------------------------------------------------


def test_get_unknown_job_is_404_with_error_body(client: FlaskClient, base: str) -> None:
    body = assert_error(client.get(job_url(base, "notfound")), 404)
    assert "notfound" in body["message"]


def test_delete_answers_204_and_removes_the_job(
    client: FlaskClient, base: str, settings: Settings, redis_client: Any
) -> None:
    assert_no_content(post_job(client, base, "gone", {"schedule": "@every 1s"}))
    assert_no_content(client.delete(job_url(base, "gone")))
    assert_error(client.get(job_url(base, "gone")), 404)
    assert assert_store_consistent(redis_client, settings) == set()


def test_delete_missing_job_is_204(client: FlaskClient, base: str) -> None:
    assert_no_content(client.delete(job_url(base, "notfound")))
    assert_no_content(client.delete(job_url(base, "notfound")))


def test_delete_then_schedule_again_without_overwrite(client: FlaskClient, base: str) -> None:
    assert_no_content(post_job(client, base, "again", {"dueTime": "1h"}))
    assert_no_content(client.delete(job_url(base, "again")))
    assert_no_content(post_job(client, base, "again", {"dueTime": "2h"}))
    assert client.get(job_url(base, "again")).get_json()["dueTime"] == "2h"


@pytest.mark.parametrize("overwrite", [None, False])
def test_existing_name_without_overwrite_is_409(
    client: FlaskClient, base: str, overwrite: bool | None
) -> None:
    assert_no_content(post_job(client, base, "dup", {"schedule": "@daily", "data": "first"}))
    body: dict[str, Any] = {"schedule": "@daily", "repeats": 3, "due_time": "10s", "ttl": "11s",
                            "data": "second"}
    if overwrite is not None:
        body["overwrite"] = overwrite
    err = assert_error(post_job(client, base, "dup", body), 409, "DAPR_SCHEDULER_SCHEDULE_JOB")
    assert "dup" in err["message"]
    job = client.get(job_url(base, "dup")).get_json()
    assert job["data"] == "first"
    assert "repeats" not in job


def test_overwrite_true_replaces_the_job(client: FlaskClient, base: str) -> None:
    assert_no_content(post_job(client, base, "ow", {"schedule": "@daily", "data": "first"}))
    assert_no_content(post_job(
        client, base, "ow",
        {"schedule": "@daily", "repeats": 3, "overwrite": True, "due_time": "2033-01-01T00:00:00Z",
         "ttl": "11s", "data": "second", "failurePolicy": {"drop": {}}},
    ))
    job = client.get(job_url(base, "ow")).get_json()
    assert job["data"] == "second"
    assert job["repeats"] == 3
    assert job["dueTime"] == "2033-01-01T00:00:00Z"
    assert job["nextTriggerTime"] == "2033-01-01T00:00:00.000Z"
    assert job["failurePolicy"] == {"drop": {}}


def test_overwrite_true_on_a_new_name_schedules(client: FlaskClient, base: str) -> None:
    job = schedule_and_get(client, base, "fresh", {"dueTime": "1h", "overwrite": True})
    assert job["name"] == "fresh"


def test_both_api_versions_share_the_jobs(client: FlaskClient) -> None:
    assert_no_content(post_job(client, "/v1.0-alpha1/jobs", "shared", {"dueTime": "1h", "data": 7}))
    assert client.get(job_url("/v1.0/jobs", "shared")).get_json()["data"] == 7
    assert_error(post_job(client, "/v1.0/jobs", "shared", {"dueTime": "1h"}), 409)
    assert_no_content(client.delete(job_url("/v1.0/jobs", "shared")))
    assert_error(client.get(job_url("/v1.0-alpha1/jobs", "shared")), 404)


def test_store_is_consistent_after_a_mix_of_operations(
    client: FlaskClient, base: str, settings: Settings, redis_client: Any
) -> None:
    for i in range(10):
        assert_no_content(post_job(client, base, f"j{i}", {"schedule": "@every 1m"}))
    for i in range(0, 10, 3):
        assert_no_content(client.delete(job_url(base, f"j{i}")))
    assert_no_content(post_job(client, base, "j1", {"dueTime": "5s", "overwrite": True}))
    ids = assert_store_consistent(redis_client, settings)
    assert ids == {f"{settings.app_id}/j{i}" for i in range(10) if i % 3}


@pytest.mark.parametrize("due_time", ["1969-12-31T23:59:59Z", "1900-01-01T00:00:00Z",
                                      "0001-01-01T00:00:00Z"])
def test_due_time_before_1970_is_claimable_after_a_lease_expires(
    client: FlaskClient, base: str, settings: Settings, due_time: str
) -> None:
    """A past dueTime "fires at once"; one before the epoch must not poison the due index:
    the worker's claim script (app/lua/claim.lua, KEYS due/jobs/runs, ARGV now/batch/
    lease ms/token) must take the trigger again once its first lease has run out."""
    from app.store.store import Store

    response = post_job(client, base, "ancient", {"dueTime": due_time})
    if response.status_code == 400:
        return  # refusing such a dueTime is a fine answer too
    assert_no_content(response)
    store = Store(settings)
    try:
        pk = store.keys.partition(0)
        claim = store.script("claim")
        now = now_ms()
        first = claim(keys=[pk.due, pk.jobs, pk.runs], args=[now, 10, 1, "lease-1"])
        assert first[1:2] == [f"{settings.app_id}/ancient".encode()]
        # The lease (1 ms) runs by Redis's clock from the claim on: 10 ms past that, the
        # trigger is due again.
        seconds, micros = store.redis.time()
        later = max(now, seconds * 1000 + micros // 1000) + 10
        second = claim(keys=[pk.due, pk.jobs, pk.runs], args=[later, 10, 1, "lease-2"])
        assert second[1:2] == [f"{settings.app_id}/ancient".encode()]
    finally:
        store.close()
