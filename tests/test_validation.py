"""Parsing schedule requests into Jobs, and Jobs into GET answers (no Redis)."""

from __future__ import annotations

import base64
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.jobs import errors, validation
from app.jobs.anydata import MAX_DATA_DEPTH, delivery_body
from app.jobs.errors import ApiError
from app.jobs.model import DEFAULT_FAILURE_POLICY, FailureKind, FailurePolicy, Job
from app.jobs.validation import (
    job_to_api,
    parse_job_request,
    validate_app_id,
    validate_name,
)
from tests.support.seed import SEED_BODY

NOW = 1_700_000_000_000  # ms
LIMIT = 1024
WKT = "type.googleapis.com/google.protobuf."
SEED_ENVELOPE = (
    b'{"type_url":"type.googleapis.com/google.protobuf.StringValue",'
    b'"value":"ChBSMi1EMjpPaWwgQ2hhbmdl"}'
)


def parse(
    body: Any,
    name: str = "job",
    content_type: str | None = "application/json",
    limit: int = LIMIT,
) -> tuple[Job, bool]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_job_request(name, raw, content_type, "job-service", NOW, limit)


def parse_error(body: Any, name: str = "job", limit: int = LIMIT) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(body, name=name, limit=limit)
    return info.value


# --- the seed ---------------------------------------------------------------------


def test_seed_body() -> None:
    job, overwrite = parse(SEED_BODY, name="R2-D2")
    assert overwrite is False
    assert (job.app_id, job.name) == ("job-service", "R2-D2")
    assert job.any_type == WKT + "StringValue"
    assert job.any_value == "ChBSMi1EMjpPaWwgQ2hhbmdl"
    assert job.data is None
    assert job.due_time == "2s"
    assert (job.schedule, job.ttl, job.repeats) == (None, None, None)
    assert job.failure_policy == DEFAULT_FAILURE_POLICY
    assert job.first_ms == NOW + 2000
    assert job.expires_ms is None


def test_seed_body_is_delivered_as_the_seed_envelope() -> None:
    job, _ = parse(SEED_BODY, name="R2-D2")
    assert delivery_body(job, "auto") == SEED_ENVELOPE
    # The stored record round-trips without touching the envelope.
    again = Job.decode(job.app_id, job.name, job.encode())
    assert delivery_body(again, "auto") == SEED_ENVELOPE


def test_seed_get_answer() -> None:
    job, _ = parse(SEED_BODY, name="R2-D2")
    answer = job_to_api(job)
    assert answer == {
        "name": "R2-D2",
        "dueTime": "2s",
        "data": {"@type": WKT + "StringValue", "value": "R2-D2:Oil Change"},
        "failurePolicy": {"constant": {"interval": "1s", "maxRetries": 3}},
    }
    assert list(answer) == ["name", "dueTime", "data", "failurePolicy"]


# --- field names and values -----------------------------------------------------------


def test_camel_case_names() -> None:
    job, overwrite = parse(
        {
            "schedule": "@every 1m",
            "dueTime": "10s",
            "ttl": "1h",
            "repeats": 3,
            "overwrite": True,
            "data": {"droid": "R2-D2"},
            "failurePolicy": {"constant": {"interval": "3s", "maxRetries": 5}},
        }
    )
    assert overwrite is True
    assert (job.schedule, job.due_time, job.ttl, job.repeats) == ("@every 1m", "10s", "1h", 3)
    assert job.data == {"droid": "R2-D2"}
    assert job.any_type is None
    assert job.failure_policy == FailurePolicy(FailureKind.CONSTANT, 3000, 5)
    assert job.first_ms == NOW + 10_000


def test_snake_case_names() -> None:
    # The body of Dapr's own integration test (tests/.../jobs/http/fields.go).
    job, _ = parse(b"""{
        "schedule": "@every 1m", "repeats": 123, "due_time": "1000s", "ttl": "123s",
        "data": "hello world",
        "failure_policy": {"constant": {"interval": "3s", "max_retries": 5}}
    }""")
    assert (job.schedule, job.due_time, job.ttl, job.repeats) == ("@every 1m", "1000s", "123s", 123)
    assert job.data == "hello world"
    assert job.failure_policy == FailurePolicy(FailureKind.CONSTANT, 3000, 5)


@pytest.mark.parametrize(
    "body",
    [
        {"dueTime": "1s", "due_time": "1s"},
        {"dueTime": "1s", "failurePolicy": {}, "failure_policy": {}},
        {"dueTime": "1s", "failurePolicy": {"constant": {"maxRetries": 1, "max_retries": 1}}},
    ],
)
def test_both_spellings_of_a_field_is_a_400(body: Any) -> None:
    err = parse_error(body)
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)
    assert "both" in err.message


@pytest.mark.parametrize(
    "data",
    ["someData", 123, 1.5, True, False, [1, "a"], {"a": {"b": None}}, "", 0, {}],
)
def test_plain_data_is_kept_as_given(data: Any) -> None:
    job, _ = parse({"dueTime": "1s", "data": data})
    assert job.data == data
    assert job.any_type is None
    assert job_to_api(job)["data"] == data


def test_null_data_is_no_data() -> None:
    job, _ = parse({"dueTime": "1s", "data": None})
    assert (job.data, job.any_type) == (None, None)
    assert "data" not in job_to_api(job)
    assert delivery_body(job, "auto") == b""


def test_a_string_that_looks_like_an_any_stays_a_string() -> None:
    text = '{"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "x"}'
    job, _ = parse({"dueTime": "1s", "data": text})
    assert job.data == text


@pytest.mark.parametrize(
    "data",
    [
        {"@type": WKT + "Int64Value", "value": "42"},
        {"@type": WKT + "Struct", "value": {"droid": "C-3PO"}},
        {"@type": WKT + "Timestamp", "value": "2030-01-01T00:00:00Z"},
    ],
)
def test_any_data_is_packed_and_given_back(data: dict[str, Any]) -> None:
    job, _ = parse({"dueTime": "1s", "data": data})
    assert job.any_type == data["@type"]
    assert job.data is None
    assert job_to_api(job)["data"] == data


def test_any_data_of_unknown_type_is_a_400() -> None:
    err = parse_error({"dueTime": "1s", "data": {"@type": "type.googleapis.com/x.Droid"}})
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST_DATA)
    assert "x.Droid" in err.message


def test_unknown_fields_are_ignored() -> None:
    job, _ = parse({"dueTime": "1s", "priority": 5, "metadata": {"a": 1}, "Schedule": 3})
    assert job.due_time == "1s"


@pytest.mark.parametrize(
    "field",
    [
        "schedule",
        "dueTime",
        "ttl",
        "repeats",
        "overwrite",
        "failurePolicy",
        "failure_policy",
        "name",
        "data",
    ],
)
def test_null_is_absent(field: str) -> None:
    job, overwrite = parse({"schedule": "@daily", "dueTime": "1s", field: None})
    assert overwrite is False
    assert job.failure_policy == DEFAULT_FAILURE_POLICY
    assert job.name == "job"
    answer = job_to_api(job)
    if field in ("schedule", "dueTime", "ttl", "repeats", "data"):
        assert field not in answer


def test_empty_strings_are_absent() -> None:
    job, _ = parse({"schedule": "", "dueTime": "5s", "ttl": ""})
    assert (job.schedule, job.due_time, job.ttl) == (None, "5s", None)
    assert "schedule" not in job_to_api(job)


def test_empty_name_in_body_is_allowed() -> None:
    job, _ = parse({"name": "", "dueTime": "1s"}, name="real")
    assert job.name == "real"


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
    ],
)
def test_content_type_is_ignored(content_type: str | None) -> None:
    job, _ = parse(SEED_BODY, content_type=content_type)
    assert job.any_value == "ChBSMi1EMjpPaWwgQ2hhbmdl"


def test_name_is_trimmed() -> None:
    job, _ = parse({"dueTime": "1s"}, name="  R2-D2 \u00a0")
    assert job.name == "R2-D2"


# --- repeats, overwrite ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (1, 1),
        (3, 3),
        (3.0, 3),
        (1e2, 100),
        ("7", 7),
        (4294967295, 4294967295),
    ],
)
def test_repeats_as_protojson_reads_uint32(given: Any, expected: int) -> None:
    job, _ = parse({"schedule": "@daily", "repeats": given})
    assert job.repeats == expected
    assert job_to_api(job)["repeats"] == expected


@pytest.mark.parametrize(
    "repeats", [-1, -5, "-1", 1.5, True, False, "three", "1.0", [1], {"n": 1}, 4294967296, 2**63]
)
def test_bad_repeats_is_a_400(repeats: Any) -> None:
    err = parse_error({"schedule": "@daily", "repeats": repeats})
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)
    assert "repeats" in err.message


def test_huge_repeats_is_a_400() -> None:
    err = parse_error(b'{"schedule": "@daily", "repeats": 1180591620717411303424}')
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)


@pytest.mark.parametrize("overwrite", ["true", 1, 0, "yes", [], {}])
def test_overwrite_must_be_a_bool(overwrite: Any) -> None:
    err = parse_error({"dueTime": "1s", "overwrite": overwrite})
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)
    assert "overwrite" in err.message


@pytest.mark.parametrize("field", ["schedule", "dueTime", "due_time", "ttl"])
@pytest.mark.parametrize("value", [5, True, ["@daily"], {"every": "1s"}])
def test_time_fields_must_be_strings(field: str, value: Any) -> None:
    body = {"schedule": "@daily", field: value}
    err = parse_error(body)
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)
    assert "string" in err.message


# --- failure policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"drop": {}}, FailurePolicy(FailureKind.DROP, 0, 0)),
        (
            {"constant": {"interval": "3s", "maxRetries": 5}},
            FailurePolicy(FailureKind.CONSTANT, 3000, 5),
        ),
        ({"constant": {"interval": "1m30s"}}, FailurePolicy(FailureKind.CONSTANT, 90_000, None)),
        ({"constant": {"maxRetries": 0}}, FailurePolicy(FailureKind.CONSTANT, 0, 0)),
        ({"constant": {}}, FailurePolicy(FailureKind.CONSTANT, 0, None)),
        (
            {"constant": {"interval": "1.5s", "max_retries": "2"}},
            FailurePolicy(FailureKind.CONSTANT, 1500, 2),
        ),
        (
            {"constant": {"interval": "250ms", "maxRetries": None}},
            FailurePolicy(FailureKind.CONSTANT, 250, None),
        ),
        # Kept in whole ms, rounded up: a retry never comes sooner than asked.
        ({"constant": {"interval": "999us"}}, FailurePolicy(FailureKind.CONSTANT, 1, None)),
        ({}, DEFAULT_FAILURE_POLICY),
        ({"drop": None, "constant": None}, DEFAULT_FAILURE_POLICY),
        ({"drop": {}, "constant": None}, FailurePolicy(FailureKind.DROP, 0, 0)),
        ({"drop": {"extra": 1}, "retry": "x"}, FailurePolicy(FailureKind.DROP, 0, 0)),
    ],
)
def test_failure_policy(policy: Any, expected: FailurePolicy) -> None:
    job, _ = parse({"dueTime": "1s", "failurePolicy": policy})
    assert job.failure_policy == expected


def test_failure_policy_in_get_answer() -> None:
    job, _ = parse({"dueTime": "1s", "failurePolicy": {"drop": {}}})
    assert job_to_api(job)["failurePolicy"] == {"drop": {}}
    job, _ = parse({"dueTime": "1s", "failurePolicy": {"constant": {"interval": "3s"}}})
    assert job_to_api(job)["failurePolicy"] == {"constant": {"interval": "3s"}}
    job, _ = parse(
        {"dueTime": "1s", "failurePolicy": {"constant": {"interval": "3s", "maxRetries": 5}}}
    )
    assert job_to_api(job)["failurePolicy"] == {"constant": {"interval": "3s", "maxRetries": 5}}


@pytest.mark.parametrize(
    "policy",
    [
        "drop",
        5,
        [],
        {"drop": {}, "constant": {}},
        {"drop": True},
        {"constant": "3s"},
        {"constant": {"interval": "-3s"}},
        {"constant": {"interval": "3"}},
        {"constant": {"interval": "3 s"}},
        {"constant": {"interval": 3}},
        {"constant": {"interval": "fast"}},
        {"constant": {"maxRetries": -1}},
        {"constant": {"maxRetries": 1.5}},
        {"constant": {"maxRetries": True}},
        {"constant": {"interval": "3000000h"}},
        # A kind misspelt, or not one: not the default policy in silence.
        {"bogus": {}},
        {"exponentail": {"maxRetries": 3}},
        {"drop": None, "Constant": {"interval": "3s"}},
    ],
)
def test_bad_failure_policy_is_a_400(policy: Any) -> None:
    err = parse_error({"dueTime": "1s", "failurePolicy": policy})
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)
    assert "failurePolicy" in err.message


# --- body errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"not json",
        b"{'dueTime': '1s'}",
        b'{"dueTime": "1s",}',
        b"   ",
        b'{"dueTime": NaN}',
        b'{"a": 1e400}',
        b"\xef\xbb\xbf{}",
    ],
)
def test_invalid_json_is_a_400(body: bytes) -> None:
    err = parse_error(body)
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)
    assert err.message.startswith("failed deserializing HTTP body")


@pytest.mark.parametrize("body", [b"[{}]", b"[]", b'"dueTime"', b"1", b"null", b"true"])
def test_body_that_is_not_an_object_is_a_400(body: bytes) -> None:
    err = parse_error(body)
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)
    assert "object" in err.message


def test_invalid_utf8_is_a_400() -> None:
    err = parse_error(b'{"dueTime": "1s", "data": "\xff\xfe"}')
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)
    assert "UTF-8" in err.message


def test_lone_surrogate_escape_is_a_400() -> None:
    err = parse_error(b'{"dueTime": "1s", "data": "\\ud800"}')
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST)


@pytest.mark.parametrize("body", [b"", b"{}", b'{"data": "x", "repeats": 1, "ttl": "1h"}'])
def test_no_schedule_and_no_due_time_is_schedule_empty(body: bytes) -> None:
    err = parse_error(body)
    assert err.to_body() == {
        "errorCode": "DAPR_SCHEDULER_SCHEDULE_EMPTY",
        "message": "Schedule is empty",
    }
    assert err.status == 400


@pytest.mark.parametrize("name", ["test1", 5, True, {"a": 1}])
def test_name_in_body_is_a_400(name: Any) -> None:
    err = parse_error({"name": name, "schedule": "@daily"})
    assert err.status == 400
    assert err.to_body() == {
        "errorCode": "DAPR_SCHEDULER_JOB_NAME",
        "message": "Set the job name in the url only",
    }


def test_dapr_bad_json_cases_are_all_400() -> None:
    # The bodies of Dapr's tests/integration/suite/daprd/jobs/http/basic.go "bad json".
    for body in [b"", b"{}", b"[{}]", b'{"name": "test"}', b'{"schedule": "test", "repeats": -1}']:
        assert parse_error(body).status == 400


# --- schedule maths (app/schedule.py) ---------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"schedule": "every tuesday"},
        {"schedule": "* * * * *"},  # 5 fields: Dapr's cron has seconds first
        {"schedule": "@every banana"},
        {"dueTime": "soon"},
        {"dueTime": "2s", "repeats": 3},  # repeats > 1 without a schedule
        {"dueTime": "2s", "ttl": "10s"},  # ttl without a schedule
        # ttl before dueTime
        {"schedule": "@daily", "dueTime": "2030-01-01T00:00:00Z", "ttl": "2029-01-01T00:00:00Z"},
        {"schedule": "@daily", "ttl": "not a ttl"},
    ],
)
def test_schedule_errors_are_400(body: Any) -> None:
    err = parse_error(body)
    # Dapr's code for its scheduler's validation errors (a 500 there).
    assert (err.status, err.code) == (400, errors.SCHEDULE_JOB)
    assert err.message


def test_repeats_zero_is_accepted() -> None:
    job, _ = parse({"schedule": "@daily", "repeats": 0})
    assert job.repeats == 0
    assert job_to_api(job)["repeats"] == 0


def test_due_time_in_the_past_is_accepted() -> None:
    job, _ = parse({"dueTime": "2000-01-01T00:00:00Z"})
    assert job.first_ms <= NOW


def test_rfc3339_due_time() -> None:
    job, _ = parse({"dueTime": "2030-01-01T00:00:00Z"})
    assert job.first_ms == 1_893_456_000_000


# --- data size and depth ---------------------------------------------------------------


def test_data_at_the_limit_is_accepted() -> None:
    data = "x" * (LIMIT - 2)  # plus its two quotes
    job, _ = parse({"dueTime": "1s", "data": data})
    assert job.data == data


def test_data_over_the_limit_is_a_413() -> None:
    err = parse_error({"dueTime": "1s", "data": "x" * (LIMIT - 1)})
    assert (err.status, err.code) == (413, errors.PAYLOAD_TOO_LARGE)
    assert str(LIMIT) in err.message


def test_data_size_is_measured_compact() -> None:
    # Whitespace in the body does not count; the data's compact JSON does.
    body = b'{"dueTime": "1s", "data": [' + b" 1 ," * 200 + b" 1 ]}"
    job, _ = parse(body, limit=410)
    assert len(job.data) == 201


def test_any_data_over_the_limit_is_a_413() -> None:
    # The JSON fits; the base64 that is stored and delivered (4/3 of the bytes) does not.
    text = "y" * 900
    body = {"dueTime": "1s", "data": {"@type": WKT + "StringValue", "value": text}}
    assert len(orjson.dumps(body["data"])) < LIMIT
    err = parse_error(body)
    assert (err.status, err.code) == (413, errors.PAYLOAD_TOO_LARGE)


def nested(depth: int) -> Any:
    data: Any = 1
    for _ in range(depth):
        data = [data]
    return data


def test_data_as_deep_as_allowed_is_accepted() -> None:
    job, _ = parse({"dueTime": "1s", "data": nested(MAX_DATA_DEPTH)})
    assert job.data == nested(MAX_DATA_DEPTH)
    base64.b64decode(orjson.loads(delivery_body(job, "envelope"))["value"])


@pytest.mark.parametrize("depth", [MAX_DATA_DEPTH + 1, 200, 300, 1000])
def test_data_nested_too_deep_is_a_400(depth: int) -> None:
    # Built as text: orjson cannot write more than 254 levels.
    body = b'{"dueTime": "1s", "data": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
    err = parse_error(body, limit=10_000)
    assert (err.status, err.code) == (400, errors.MALFORMED_REQUEST_DATA)


def test_many_shallow_containers_are_fine() -> None:
    data = [{"a": [1]} for _ in range(100)]
    job, _ = parse({"dueTime": "1s", "data": data}, limit=10_000)
    assert job.data == data


# --- names and app ids -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["R2-D2", "job", "a.b_c-d:e f", "Ünïcödé", "x" * 253, "1", "a%20b"]
)
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


def test_name_is_trimmed_by_validate_name() -> None:
    assert validate_name("  R2-D2 ") == "R2-D2"


@pytest.mark.parametrize("name", ["R2-D2\n", "\tR2-D2", "R2-D2\x1f", "\x1cR2-D2", "R2-D2\x85",
                                  " R2-D2\r\n"])
def test_a_control_character_at_either_end_is_refused_not_trimmed(name: str) -> None:
    """Trimmed, each would name the job R2-D2: a request for another job than it says."""
    with pytest.raises(ApiError) as info:
        validate_name(name)
    assert info.value.code == "DAPR_SCHEDULER_JOB_NAME_INVALID"
    assert "must not contain" in info.value.message


@pytest.mark.parametrize("name", ["", "   ", "\t\n"])
def test_blank_name_is_a_400(name: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_name(name)
    assert info.value.status == 400
    assert info.value.to_body() == {
        "errorCode": "DAPR_SCHEDULER_JOB_NAME_EMPTY",
        "message": "Name is empty",
    }


@pytest.mark.parametrize(
    "name",
    [
        "a/b",
        "a\\b",
        "a#b",
        "a?b",
        "/",
        "a\x00b",
        "a\x01b",
        "a\x1fb",
        "a\x7fb",
        "a\x85b",
        "a\nb",
        "x" * 254,
        ".",
        "..",
    ],
)
def test_bad_name_is_a_400(name: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_name(name)
    assert (info.value.status, info.value.code) == (400, errors.JOB_NAME_INVALID)


def test_bad_name_in_a_request_is_a_400() -> None:
    err = parse_error({"dueTime": "1s"}, name="a/b")
    assert (err.status, err.code) == (400, errors.JOB_NAME_INVALID)
    err = parse_error({"dueTime": "1s"}, name=" ")
    assert (err.status, err.code) == (400, errors.JOB_NAME_EMPTY)


def test_long_bad_name_message_is_short() -> None:
    with pytest.raises(ApiError) as info:
        validate_name("x" * 200 + "?")
    assert len(info.value.message) < 200


_LONG = "x" * 5000


@pytest.mark.parametrize("body", [
    pytest.param({"dueTime": "1h", "data": {"@type": _LONG}}, id="unknown-type"),
    pytest.param({"dueTime": "1h", "data": {"@type": f"type.googleapis.com/{_LONG}"}},
                 id="unknown-type-url"),
    pytest.param({"dueTime": "1h", "data": {
        "@type": "type.googleapis.com/google.protobuf.StringValue", _LONG: 1}}, id="extra-field"),
    pytest.param({"dueTime": "1h", "data": {
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        **{f"{i}{_LONG}": 1 for i in range(20)}}}, id="many-extra-fields"),
    pytest.param({"dueTime": "1h", "data": {
        "@type": f"type.googleapis.com/google.protobuf.{_LONG}"}}, id="unknown-well-known"),
    pytest.param({"schedule": "@every 1h", "repeats": 1e300}, id="repeats-huge-float"),
    pytest.param({"schedule": "0 0 0 30 2 *" + " " * 1000}, id="schedule-never-fires"),
    # Within their length limit (256), and quoted whole, twice over for a policy's.
    pytest.param({"dueTime": "1" + "h" * 250}, id="due-time"),
    pytest.param({"dueTime": "1h", "ttl": "1" + "h" * 250}, id="ttl"),
    pytest.param({"dueTime": "1h", "deliveryTimeout": "1" + "h" * 250}, id="delivery-timeout"),
    pytest.param({"dueTime": "1h", "failurePolicy": {
        "exponential": {"initialInterval": "1" + "h" * 250}}}, id="policy-interval"),
    pytest.param({"schedule": "0 0 0 1 1 " + "x" * 1000}, id="cron-field"),
])
def test_a_message_never_repeats_a_long_input_whole(body: dict[str, Any]) -> None:
    """As the README promises; 1e300 was shown as the 301-digit integer it is not."""
    err = parse_error(body, limit=1_000_000)
    assert err.status == 400 and len(err.message) < 400, err.message
    assert "0000000000" not in err.message and "h" * 100 not in err.message


def test_an_any_far_over_the_limit_is_refused_before_it_is_packed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An Any is measured as kept (its packed bytes), but its JSON may pass the limit by its
    envelope only: 4 MB of ListValue was packed into 60 MB, in seconds, before the 413."""
    def no_packing(data: Any) -> tuple[str, str]:
        raise AssertionError("packed")

    monkeypatch.setattr(validation, "pack_any", no_packing)
    data = {"@type": "type.googleapis.com/google.protobuf.ListValue", "value": [0] * 2000}
    err = parse_error({"dueTime": "1h", "data": data}, limit=1024)
    assert (err.status, err.code) == (413, errors.PAYLOAD_TOO_LARGE)


@pytest.mark.parametrize("app_id", ["job-service", "a", "A.b_c-1", "x" * 63])
def test_good_app_ids(app_id: str) -> None:
    assert validate_app_id(app_id) == app_id


@pytest.mark.parametrize(
    "app_id",
    [
        "",
        " ",
        "a/b",
        "a b",
        "x" * 64,
        "a:b",
        "ünï",
        "a\nb",
        ".",
        "..",
        "{a}",
    ],
)
def test_bad_app_ids(app_id: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_app_id(app_id)
    assert (info.value.status, info.value.code) == (400, errors.APP_ID_INVALID)


# --- GET answer --------------------------------------------------------------------------------


def test_get_answer_has_every_field_in_dapr_order() -> None:
    job, _ = parse(
        {
            "data": "hello world",
            "ttl": "123s",
            "dueTime": "1000s",
            "repeats": 123,
            "schedule": "@every 1m",
            "failure_policy": {"constant": {"interval": "3s", "max_retries": 5}},
        },
        name="test",
    )
    answer = job_to_api(job)
    assert answer == {
        "name": "test",
        "schedule": "@every 1m",
        "repeats": 123,
        "dueTime": "1000s",
        "ttl": "123s",
        "data": "hello world",
        "failurePolicy": {"constant": {"interval": "3s", "maxRetries": 5}},
    }
    assert list(answer) == [
        "name",
        "schedule",
        "repeats",
        "dueTime",
        "ttl",
        "data",
        "failurePolicy",
    ]


def test_get_answer_of_a_stored_job() -> None:
    job, _ = parse({"schedule": "@daily", "data": {"@type": WKT + "BoolValue", "value": True}})
    stored = Job.decode(job.app_id, job.name, job.encode())
    assert job_to_api(stored) == {
        "name": "job",
        "schedule": "@daily",
        "data": {"@type": WKT + "BoolValue", "value": True},
        "failurePolicy": {"constant": {"interval": "1s", "maxRetries": 3}},
    }


# --- properties --------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
TIMES = st.one_of(
    st.sampled_from(
        [
            "2s",
            "1h30m",
            "PT2S",
            "P1D",
            "2030-01-01T00:00:00Z",
            "@daily",
            "@every 1s",
            "0 */5 * * * *",
            "TZ=Europe/Paris 0 0 9 * * mon-fri",
            "-1s",
            "0s",
            "",
            "99999999999h",
            "2000-01-01T00:00:00+01:00",
        ]
    ),
    st.text(max_size=20),
    JSON,
)
FIELDS = {
    "schedule": TIMES,
    "dueTime": TIMES,
    "due_time": TIMES,
    "ttl": TIMES,
    "repeats": st.one_of(st.integers(min_value=-3, max_value=2**33), JSON),
    "overwrite": st.one_of(st.booleans(), JSON),
    "failurePolicy": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "drop": st.one_of(st.just({}), JSON),
                "constant": st.one_of(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "interval": st.one_of(st.sampled_from(["3s", "-1s", "1m", "x"]), JSON),
                            "maxRetries": st.one_of(st.integers(-2, 10), JSON),
                        },
                    ),
                    JSON,
                ),
            },
        ),
        JSON,
    ),
    "data": st.one_of(
        JSON,
        st.fixed_dictionaries(
            {
                "@type": st.sampled_from(
                    [
                        WKT + "StringValue",
                        WKT + "Struct",
                        WKT + "Int64Value",
                        WKT + "Timestamp",
                        WKT + "Duration",
                        "nope",
                        "",
                    ]
                ),
                "value": JSON,
            }
        ),
    ),
    "name": st.one_of(st.just(""), JSON),
    "other": JSON,
}


@settings(max_examples=250, deadline=None)
@given(
    body=st.fixed_dictionaries({}, optional=FIELDS),
    name=st.one_of(st.just("job"), st.text(max_size=10)),
)
def test_random_bodies_raise_only_api_errors(body: dict[str, Any], name: str) -> None:
    try:
        job, overwrite = parse(body, name=name, limit=2000)
    except ApiError as exc:
        assert 400 <= exc.status < 500
        assert exc.to_body()["errorCode"]
        return
    assert isinstance(overwrite, bool)
    assert isinstance(job.first_ms, int)
    job_to_api(job)
    for fmt in ("auto", "envelope", "raw"):
        delivery_body(job, fmt)


@settings(max_examples=150, deadline=None)
@given(body=st.one_of(st.binary(max_size=60), JSON.map(orjson.dumps)))
def test_random_bytes_raise_only_api_errors(body: bytes) -> None:
    try:
        parse(body)
    except ApiError as exc:
        assert exc.status in (400, 413)


# --- Dapr's contract points (issue 9): @every 0s, a zone on @every ---------------------------


def test_every_0s_with_repeats_is_accepted_and_due_at_once() -> None:
    """Dapr's own test body: three triggers back to back (app/jobs/schedule.py)."""
    job, _ = parse(b'{"dueTime":"0s","data":"test","repeats":3,"schedule":"@every 0s"}')
    assert (job.schedule, job.repeats, job.first_ms) == ("@every 0s", 3, NOW)
    job, _ = parse({"schedule": "@every 0s", "repeats": 1})
    assert job.first_ms == NOW


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"schedule": "@every 0s"}, "give repeats"),
        ({"schedule": "@every 0s", "repeats": 0}, "give repeats"),  # 0: unlimited
        ({"schedule": "@every 0s", "dueTime": "1s", "ttl": "1h"}, "give repeats"),
        ({"schedule": "CRON_TZ=Europe/Rome @every 1h"}, "timezone is not supported for @every"),
        ({"schedule": "TZ=UTC @every 0s", "repeats": 3}, "timezone is not supported for @every"),
    ],
)
def test_every_0s_without_repeats_and_a_zone_on_every_are_400(body: Any, fragment: str) -> None:
    err = parse_error(body)
    assert (err.status, err.code) == (400, errors.SCHEDULE_JOB)
    assert fragment in err.message


# --- Dapr compatibility (dapr_compat): the data's text as given ---------------------------


def _compat(body: bytes, limit: int = LIMIT) -> Job:
    job, _ = parse_job_request("job", body, None, "job-service", NOW, limit, dapr_compat=True)
    return job


SPACING = st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")])


@settings(max_examples=300, deadline=None)
@given(data=JSON, spacing=SPACING, indent=st.sampled_from([None, 2]),
       ensure_ascii=st.booleans(), before=st.sampled_from(["", "\n  "]))
def test_compat_delivers_the_data_text_exactly(data: Any, spacing: tuple[str, str],
                                               indent: int | None, ensure_ascii: bool,
                                               before: str) -> None:
    """Whatever JSON text the caller wrote for `data`, it arrives as written, byte for
    byte, also after the record's round trip through Redis; GET has the same value."""
    import json

    text = json.dumps(data, separators=spacing, indent=indent, ensure_ascii=ensure_ascii)
    body = ('{"data":' + before + text + before + ', "dueTime": "1s"}').encode()
    try:
        job = _compat(body, limit=1 << 16)
    except ApiError as exc:  # only what orjson refuses to read at all
        assert exc.code == errors.MALFORMED_REQUEST, exc.message
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)
        return
    again = Job.decode(job.app_id, job.name, job.encode())
    assert delivery_body(job, "dapr") == text.encode()
    assert delivery_body(again, "dapr") == text.encode()
    assert job_to_api(again, dapr_compat=True)["data"] == {"@type": WKT + "Value",
                                                           "value": orjson.loads(text)}


def test_compat_keeps_the_last_of_repeated_data_keys_as_orjson_does() -> None:
    job = _compat(b'{"data": 1, "dueTime": "1s", "data" : [ 2 ] }')
    assert (job.data, delivery_body(job, "dapr")) == ([2], b"[ 2 ]")


@pytest.mark.parametrize("body", [
    b'{"dueTime": "2030-01-01T00:00:00Z", "data": {"a": [1, 2.5, "x"], "b": null}}',
    b'{"schedule": "@every 1s", "repeats": 3, "ttl": "1h", "data": "text"}',
    b'{"dueTime": "10s", "data": {"@type": "type.googleapis.com/google.protobuf.StringValue",'
    b' "value": "hi"}}',
    b'{"schedule": "*/5 * * * * *", "failurePolicy": {"constant": {"interval": "2s",'
    b' "maxRetries": 4}}, "deliveryTimeout": "3s", "catchUp": "all"}',
    b'{"dueTime": "1s", "data": {"big": 123456789012345678901234567890, "e": 1e300}}',
])
def test_a_stored_records_rev_is_the_rev_of_its_job(body: bytes) -> None:
    """A worker takes a job's rev (in every trigger id) from the stored bytes
    (Job.decode); the API from the job it stores: the two must agree."""
    job, _ = parse_job_request("j", body, None, "app", 1_700_000_000_000, 1 << 20)
    stored = job.encode()
    assert Job.decode("app", "j", stored).rev == job.rev == f"{zlib.crc32(stored):08x}"
