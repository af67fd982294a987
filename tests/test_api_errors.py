"""HTTP API contract: every rejected schedule request.

design.md: errors are JSON `{"errorCode", "message"}`; bad input is a 400 (never
a 500); data over the limit is a 413; and a rejected request stores nothing.
Every case runs on both `/v1.0-alpha1/jobs` and `/v1.0/jobs`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from app.api.factory import create_app
from app.jobs.anydata import MAX_DATA_DEPTH
from app.settings import Settings
from tests.support.redis_proc import RedisProcess
from tests.test_api_helpers import (
    STRING_VALUE,
    api_settings,
    assert_error,
    assert_no_content,
    assert_store_consistent,
    job_url,
    post_job,
)

MALFORMED = "ERR_MALFORMED_REQUEST"
MALFORMED_DATA = "ERR_MALFORMED_REQUEST_DATA"
NAME_EMPTY = "DAPR_SCHEDULER_JOB_NAME_EMPTY"
NAME_INVALID = "DAPR_SCHEDULER_JOB_NAME_INVALID"
NAME_IN_BODY = "DAPR_SCHEDULER_JOB_NAME"
SCHEDULE_EMPTY = "DAPR_SCHEDULER_SCHEDULE_EMPTY"
TOO_LARGE = "ERR_PAYLOAD_TOO_LARGE"


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    """No receiver: these tests deliver nothing (conftest's `app`, `client`, `base` use it)."""
    return api_settings(redis_server.url)


def assert_nothing_stored(client: FlaskClient, base: str, redis_client: Any,
                          settings: Settings, name: str = "job") -> None:
    assert_error(client.get(job_url(base, name)), 404)
    assert assert_store_consistent(redis_client, settings) == set()


def rejected(client: FlaskClient, base: str, body: Any, status: int = 400,
             code: str | None = None, name: str = "job") -> dict[str, Any]:
    return assert_error(post_job(client, base, name, body), status, code)


# --- the body -------------------------------------------------------------------------

INVALID_JSON = [
    pytest.param(b"{", id="unclosed"),
    pytest.param(b'{"dueTime": }', id="missing-value"),
    pytest.param(b"not json", id="text"),
    pytest.param(b'{"dueTime": "1s"} trailing', id="trailing-garbage"),
    pytest.param(b"{'dueTime': '1s'}", id="single-quotes"),
    pytest.param(b'{"dueTime": "1s",}', id="trailing-comma"),
    pytest.param(b'{"dueTime": "1s", "data": NaN}', id="nan"),
    pytest.param(b'{"dueTime": "1s", "data": 1e400}', id="infinite-number"),
    pytest.param(b'{"dueTime": "1s", "data": "\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b'{"dueTime": "1s", "data": "\\ud800"}', id="lone-surrogate"),
    pytest.param(b"\xef\xbb\xbf\x00\x00", id="bom-and-nuls"),
    pytest.param(b"[" * 5000 + b"]" * 5000, id="deep-nesting"),
    pytest.param(b'{"data":' * 3000 + b"1" + b"}" * 3000, id="deep-objects"),
]


@pytest.mark.parametrize("body", INVALID_JSON)
def test_invalid_json_is_400(client: FlaskClient, base: str, body: bytes, redis_client: Any,
                             settings: Settings) -> None:
    rejected(client, base, body, 400, MALFORMED)
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize(
    "body",
    [pytest.param(b, id=b.decode()) for b in (b"[]", b"[{}]", b'"x"', b"1", b"null", b"true")],
)
def test_body_that_is_not_an_object_is_400(client: FlaskClient, base: str, body: bytes,
                                            redis_client: Any, settings: Settings) -> None:
    rejected(client, base, body, 400, MALFORMED)
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize("name_in_body", ["test1", "job", 5, ["x"]])
def test_name_in_the_body_is_400(client: FlaskClient, base: str, name_in_body: Any,
                                 redis_client: Any, settings: Settings) -> None:
    """Dapr: "Set the job name in the url only", even when it is the same name."""
    body = {"name": name_in_body, "schedule": "@daily", "repeats": 1}
    err = rejected(client, base, body, 400, NAME_IN_BODY)
    assert err["message"] == "Set the job name in the url only"
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty-body"),
        pytest.param({}, id="empty-object"),
        pytest.param({"data": "x", "repeats": 1, "failurePolicy": {"drop": {}}}, id="no-timing"),
        pytest.param({"schedule": None, "dueTime": None}, id="nulls"),
        pytest.param({"schedule": "", "dueTime": ""}, id="empty-strings"),
        pytest.param({"ttl": "1h"}, id="ttl-only"),
    ],
)
def test_neither_schedule_nor_due_time_is_400(client: FlaskClient, base: str, body: Any,
                                              redis_client: Any, settings: Settings) -> None:
    err = rejected(client, base, body, 400, SCHEDULE_EMPTY)
    assert err["message"] == "Schedule is empty"
    assert_nothing_stored(client, base, redis_client, settings)


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["post", "put", "get", "delete"])
def test_empty_name_path_is_400(client: FlaskClient, base: str, method: str) -> None:
    """`/jobs/` with nothing after it: the name is empty (a 400, not a 404 or 405)."""
    kwargs = {"json": {"schedule": "@daily"}} if method in ("post", "put") else {}
    err = assert_error(getattr(client, method)(f"{base}/", **kwargs), 400, NAME_EMPTY)
    assert err["message"] == "Name is empty"


@pytest.mark.parametrize("name", [" ", "   ", "\u3000", " \u00a0 "], ids=["space", "spaces",
                                                                         "ideographic", "nbsp"])
@pytest.mark.parametrize("method", ["post", "get", "delete"])
def test_blank_name_after_trimming_is_400(client: FlaskClient, base: str, name: str,
                                          method: str, redis_client: Any,
                                          settings: Settings) -> None:
    url = job_url(base, name)
    kwargs = {"json": {"schedule": "@daily"}} if method == "post" else {}
    assert_error(getattr(client, method)(url, **kwargs), 400, NAME_EMPTY)
    assert assert_store_consistent(redis_client, settings) == set()


BAD_NAMES = [
    pytest.param("a/b", id="slash"),
    pytest.param("/lead", id="leading-slash"),
    pytest.param("a//b", id="double-slash"),
    pytest.param("trail/", id="trailing-slash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a#b", id="hash"),
    pytest.param("a?b", id="question-mark"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\rb", id="carriage-return"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x1bb", id="escape"),
    pytest.param("a\x7fb", id="del"),
    pytest.param("a\x85b", id="c1-next-line"),
    pytest.param("x" * 254, id="254-chars"),
    pytest.param("\u30b8" * 254, id="254-unicode-chars"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("method", ["post", "get", "delete"])
def test_invalid_name_is_400(client: FlaskClient, base: str, name: str, method: str,
                             redis_client: Any, settings: Settings) -> None:
    kwargs = {"json": {"dueTime": "1s"}} if method == "post" else {}
    assert_error(getattr(client, method)(job_url(base, name), **kwargs), 400, NAME_INVALID)
    assert assert_store_consistent(redis_client, settings) == set()


@pytest.mark.parametrize("encoded", ["%2E", "%2E%2E", "..%2F..%2Fetc"], ids=["dot", "dotdot",
                                                                           "traversal"])
def test_dot_names_are_400(client: FlaskClient, base: str, encoded: str, redis_client: Any,
                           settings: Settings) -> None:
    response = client.post(f"{base}/{encoded}", json={"dueTime": "1s"})
    assert_error(response, 400, NAME_INVALID)
    assert assert_store_consistent(redis_client, settings) == set()


# --- schedule ---------------------------------------------------------------------------

BAD_SCHEDULES = [
    pytest.param("* * * * *", id="5-fields"),
    pytest.param("0 * * * * * *", id="7-fields"),
    pytest.param("0 0 0 1 1 * 2030", id="7-fields-year"),
    pytest.param("60 * * * * *", id="second-60"),
    pytest.param("* 60 * * * *", id="minute-60"),
    pytest.param("* * 24 * * *", id="hour-24"),
    pytest.param("* * * 0 * *", id="dom-0"),
    pytest.param("* * * 32 * *", id="dom-32"),
    pytest.param("* * * * 0 *", id="month-0"),
    pytest.param("* * * * 13 *", id="month-13"),
    pytest.param("* * * * * 7", id="dow-7"),
    pytest.param("* * * * FOO *", id="bad-month-name"),
    pytest.param("* * * * * FUNDAY", id="bad-day-name"),
    pytest.param("*/0 * * * * *", id="step-0"),
    pytest.param("5-1 * * * * *", id="reversed-range"),
    pytest.param("1-2-3 * * * * *", id="two-hyphens"),
    pytest.param("1/2/3 * * * * *", id="two-slashes"),
    pytest.param("-1 * * * * *", id="negative"),
    pytest.param("a * * * * *", id="letter"),
    pytest.param("0 0 0 L * *", id="L"),
    pytest.param("0 0 0 * * 1#2", id="hash"),
    pytest.param("garbage", id="garbage"),
    pytest.param("@fortnightly", id="unknown-word"),
    pytest.param("@DAILY", id="upper-case-word"),
    pytest.param("@every", id="every-no-duration"),
    pytest.param("@every 0s", id="every-zero"),
    pytest.param("@every -1s", id="every-negative"),
    pytest.param("@every 1x", id="every-bad-unit"),
    pytest.param("@every 1d", id="every-days"),
    pytest.param("@every PT1S", id="every-iso"),
    pytest.param("TZ=Mars/Olympus_Mons 0 0 0 * * *", id="unknown-tz"),
    pytest.param("TZ=../../etc/passwd 0 0 0 * * *", id="tz-path"),
    pytest.param("TZ=Europe/Paris", id="tz-without-schedule"),
    pytest.param("CRON_TZ=Nowhere @daily", id="unknown-cron-tz"),
    pytest.param("0 0 0 30 2 *", id="never-fires"),
]


@pytest.mark.parametrize("schedule", BAD_SCHEDULES)
def test_unknown_schedule_syntax_is_400(client: FlaskClient, base: str, schedule: str,
                                        redis_client: Any, settings: Settings) -> None:
    rejected(client, base, {"schedule": schedule}, 400)
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize("schedule", [5, True, ["@daily"], {"cron": "@daily"}])
def test_schedule_that_is_not_a_string_is_400(client: FlaskClient, base: str, schedule: Any,
                                              redis_client: Any, settings: Settings) -> None:
    rejected(client, base, {"schedule": schedule}, 400)
    assert_nothing_stored(client, base, redis_client, settings)


# --- dueTime, ttl, repeats --------------------------------------------------------------

BAD_DUE_TIMES = [
    pytest.param("tomorrow", id="word"),
    pytest.param("2", id="no-unit"),
    pytest.param("2s2", id="trailing-number"),
    pytest.param("1d", id="go-has-no-days"),
    pytest.param("-", id="sign-only"),
    pytest.param("2024-13-01T00:00:00Z", id="month-13"),
    pytest.param("2024-02-30T00:00:00Z", id="feb-30"),
    pytest.param("2024-01-01T25:00:00Z", id="hour-25"),
    pytest.param("2024-01-01 00:00:00", id="no-T-no-zone"),
    pytest.param("2024-01-01T00:00:00", id="no-zone"),
    pytest.param("R5/PT1S", id="iso-repeating"),
    pytest.param("P", id="iso-empty"),
    pytest.param("P1S", id="iso-seconds-without-T"),
    pytest.param("9" * 300 + "h", id="huge"),
    pytest.param("9999999999h", id="go-out-of-range"),
    pytest.param("P99999Y", id="iso-out-of-range"),
]


@pytest.mark.parametrize("due_time", BAD_DUE_TIMES)
def test_bad_due_time_is_400(client: FlaskClient, base: str, due_time: str, redis_client: Any,
                             settings: Settings) -> None:
    rejected(client, base, {"dueTime": due_time}, 400)
    rejected(client, base, {"schedule": "@daily", "dueTime": due_time}, 400)
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize("due_time", [5, 1.5, True, {"s": 1}, ["1s"]])
def test_due_time_that_is_not_a_string_is_400(client: FlaskClient, base: str, due_time: Any,
                                              redis_client: Any, settings: Settings) -> None:
    rejected(client, base, {"dueTime": due_time}, 400)
    assert_nothing_stored(client, base, redis_client, settings)


def test_due_time_in_both_spellings_is_400(client: FlaskClient, base: str, redis_client: Any,
                                           settings: Settings) -> None:
    rejected(client, base, {"dueTime": "1s", "due_time": "2s"}, 400, MALFORMED)
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"dueTime": "1s", "ttl": "1h"}, id="due-time-only"),
        pytest.param({"dueTime": "2030-01-01T00:00:00Z", "ttl": "2031-01-01T00:00:00Z"},
                     id="rfc3339"),
    ],
)
def test_ttl_without_schedule_is_400(client: FlaskClient, base: str, body: dict[str, Any],
                                     redis_client: Any, settings: Settings) -> None:
    rejected(client, base, body, 400)
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"schedule": "@daily", "dueTime": "2030-01-01T00:00:00Z",
                      "ttl": "2029-12-31T23:59:59Z"}, id="rfc3339-before"),
        pytest.param({"schedule": "@daily", "dueTime": "10s", "ttl": "2020-01-01T00:00:00Z"},
                     id="ttl-in-the-past"),
        pytest.param({"schedule": "@daily", "dueTime": "10s", "ttl": "-1s"}, id="negative-ttl"),
        pytest.param({"schedule": "@daily", "ttl": "1s"}, id="ends-before-first-fire"),
    ],
)
def test_ttl_before_due_time_is_400(client: FlaskClient, base: str, body: dict[str, Any],
                                    redis_client: Any, settings: Settings) -> None:
    rejected(client, base, body, 400)
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize("ttl", ["forever", "1d", "R/PT1S", 60])
def test_bad_ttl_is_400(client: FlaskClient, base: str, ttl: Any, redis_client: Any,
                        settings: Settings) -> None:
    rejected(client, base, {"schedule": "@daily", "ttl": ttl}, 400)
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize(
    "repeats",
    [
        pytest.param(-1, id="negative"),
        pytest.param("-1", id="negative-string"),
        pytest.param(1.5, id="fraction"),
        pytest.param("1.5", id="fraction-string"),
        pytest.param("abc", id="word"),
        pytest.param("", id="empty-string"),
        pytest.param(True, id="bool"),
        pytest.param([1], id="array"),
        pytest.param({}, id="object"),
        pytest.param(2**32, id="over-uint32"),
        pytest.param(1e300, id="huge-float"),
        pytest.param(10**30, id="huge-int"),
    ],
)
def test_invalid_repeats_is_400(client: FlaskClient, base: str, repeats: Any,
                                redis_client: Any, settings: Settings) -> None:
    rejected(client, base, {"schedule": "@daily", "repeats": repeats}, 400)
    assert_nothing_stored(client, base, redis_client, settings)


def test_repeats_over_one_without_schedule_is_400(client: FlaskClient, base: str,
                                                  redis_client: Any, settings: Settings) -> None:
    rejected(client, base, {"dueTime": "1s", "repeats": 2}, 400)
    assert_nothing_stored(client, base, redis_client, settings)


@pytest.mark.parametrize("overwrite", ["true", 1, "yes", {}, []])
def test_overwrite_that_is_not_a_boolean_is_400(client: FlaskClient, base: str, overwrite: Any,
                                                redis_client: Any, settings: Settings) -> None:
    rejected(client, base, {"dueTime": "1s", "overwrite": overwrite}, 400, MALFORMED)
    assert_nothing_stored(client, base, redis_client, settings)


# --- failure policy ---------------------------------------------------------------------

BAD_POLICIES = [
    pytest.param("drop", id="string"),
    pytest.param(1, id="number"),
    pytest.param([], id="array"),
    pytest.param({"drop": 1}, id="drop-number"),
    pytest.param({"drop": []}, id="drop-array"),
    pytest.param({"drop": {}, "constant": {"interval": "1s"}}, id="both"),
    pytest.param({"constant": 1}, id="constant-number"),
    pytest.param({"constant": "1s"}, id="constant-string"),
    pytest.param({"constant": {"interval": 3}}, id="interval-number"),
    pytest.param({"constant": {"interval": "3"}}, id="interval-no-unit"),
    pytest.param({"constant": {"interval": "abc"}}, id="interval-word"),
    pytest.param({"constant": {"interval": ""}}, id="interval-empty"),
    pytest.param({"constant": {"interval": "-1s"}}, id="interval-negative"),
    pytest.param({"constant": {"interval": "1d"}}, id="interval-days"),
    pytest.param({"constant": {"interval": "99999999999h"}}, id="interval-overflow"),
    pytest.param({"constant": {"maxRetries": -1}}, id="retries-negative"),
    pytest.param({"constant": {"maxRetries": 1.5}}, id="retries-fraction"),
    pytest.param({"constant": {"maxRetries": "x"}}, id="retries-word"),
    pytest.param({"constant": {"maxRetries": True}}, id="retries-bool"),
    pytest.param({"constant": {"maxRetries": 2**32}}, id="retries-over-uint32"),
    pytest.param({"constant": {"maxRetries": 1, "max_retries": 2}}, id="retries-both-spellings"),
]


@pytest.mark.parametrize("policy", BAD_POLICIES)
def test_invalid_failure_policy_is_400(client: FlaskClient, base: str, policy: Any,
                                       redis_client: Any, settings: Settings) -> None:
    rejected(client, base, {"dueTime": "1s", "failurePolicy": policy}, 400, MALFORMED)
    assert_nothing_stored(client, base, redis_client, settings)


def test_failure_policy_in_both_spellings_is_400(client: FlaskClient, base: str,
                                                 redis_client: Any, settings: Settings) -> None:
    body = {"dueTime": "1s", "failurePolicy": {"drop": {}}, "failure_policy": {"drop": {}}}
    rejected(client, base, body, 400, MALFORMED)
    assert_nothing_stored(client, base, redis_client, settings)


# --- data -----------------------------------------------------------------------------

BAD_ANY = [
    pytest.param({"@type": "type.googleapis.com/foo.Bar", "value": "x"}, id="unknown-type"),
    pytest.param({"@type": "type.googleapis.com/dapr.proto.runtime.v1.Job"}, id="dapr-type"),
    pytest.param({"@type": "", "value": "x"}, id="empty-type"),
    pytest.param({"@type": "type.googleapis.com/", "value": "x"}, id="empty-type-name"),
    pytest.param({"@type": STRING_VALUE, "value": 5}, id="wrong-value-type"),
    pytest.param({"@type": STRING_VALUE, "value": "x", "extra": 1}, id="unknown-field"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.Int32Value", "value": "abc"},
                 id="int32-word"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.UInt32Value", "value": -1},
                 id="uint32-negative"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.Timestamp", "value": "soon"},
                 id="bad-timestamp"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.Duration", "value": 5},
                 id="bad-duration"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.FieldMask", "value": "a_b"},
                 id="bad-field-mask"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.Any"}, id="any-without-value"),
    pytest.param({"@type": "type.googleapis.com/google.protobuf.Any",
                  "value": {"@type": "type.googleapis.com/foo.Bar"}}, id="nested-unknown-type"),
]


@pytest.mark.parametrize("data", BAD_ANY)
def test_unusable_protobuf_any_is_400(client: FlaskClient, base: str, data: Any,
                                      redis_client: Any, settings: Settings) -> None:
    rejected(client, base, {"dueTime": "1s", "data": data}, 400, MALFORMED_DATA)
    assert_nothing_stored(client, base, redis_client, settings)


def test_data_nested_too_deeply_is_400(client: FlaskClient, base: str, redis_client: Any,
                                       settings: Settings) -> None:
    data: Any = "leaf"
    for _ in range(MAX_DATA_DEPTH + 1):
        data = {"k": [data]} if isinstance(data, str) else [data]
    rejected(client, base, {"dueTime": "1s", "data": data}, 400, MALFORMED_DATA)
    assert_nothing_stored(client, base, redis_client, settings)


def test_data_nested_to_the_limit_is_accepted(client: FlaskClient, base: str) -> None:
    data: Any = 1
    for _ in range(MAX_DATA_DEPTH):
        data = [data]
    assert_no_content(post_job(client, base, "deep", {"dueTime": "1s", "data": data}))
    assert client.get(job_url(base, "deep")).get_json()["data"] == data


# --- sizes: 413 -------------------------------------------------------------------------


@pytest.fixture
def small_client(redis_server: RedisProcess) -> Iterator[tuple[FlaskClient, Settings]]:
    settings = api_settings(redis_server.url, max_data_bytes=64)
    with create_app(settings).test_client() as c:
        yield c, settings


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("x" * 100, id="string"),
        pytest.param({"k": "v" * 80}, id="object"),
        pytest.param(list(range(40)), id="array"),
        pytest.param({"@type": STRING_VALUE, "value": "x" * 100}, id="protobuf-any"),
    ],
)
def test_data_over_the_limit_is_413(small_client: tuple[FlaskClient, Settings], base: str,
                                    data: Any, redis_client: Any) -> None:
    client, settings = small_client
    err = rejected(client, base, {"dueTime": "1s", "data": data}, 413, TOO_LARGE)
    assert "64" in err["message"]
    assert_nothing_stored(client, base, redis_client, settings)


def test_data_at_the_limit_is_accepted(small_client: tuple[FlaskClient, Settings],
                                       base: str) -> None:
    client, _ = small_client
    data = "x" * 62  # 64 bytes as JSON, quotes included
    assert len(json.dumps(data, separators=(",", ":"))) == 64
    assert_no_content(post_job(client, base, "fits", {"dueTime": "1s", "data": data}))
    assert client.get(job_url(base, "fits")).get_json()["data"] == data
    rejected(client, base, {"dueTime": "1s", "data": data + "x"}, 413, TOO_LARGE, name="over")


def test_whole_body_over_the_server_limit_is_413(small_client: tuple[FlaskClient, Settings],
                                                 base: str, redis_client: Any) -> None:
    """A body far over any data limit (here in an ignored field) is refused as a whole."""
    client, settings = small_client
    body = {"dueTime": "1s", "padding": "p" * 200_000}
    rejected(client, base, body, 413, TOO_LARGE)
    assert_nothing_stored(client, base, redis_client, settings)


# --- the order of checks, and a name with an invalid body ------------------------------


def test_first_problem_reported_for_a_bad_name_and_bad_body(client: FlaskClient, base: str) -> None:
    """Both are 400 whatever is checked first; nothing breaks into a 500."""
    response = client.post(job_url(base, "a/b"), data=b"{")
    assert_error(response, 400)


def test_method_not_allowed_has_an_error_body(client: FlaskClient, base: str) -> None:
    response = client.patch(job_url(base, "x"), json={"dueTime": "1s"})
    assert_error(response, 405)


def test_unknown_route_has_an_error_body(client: FlaskClient) -> None:
    assert_error(client.get("/v1.0-alpha1/nothing-here"), 404)


def test_percent_encoded_name_characters_are_decoded_once(
    client: FlaskClient, base: str
) -> None:
    """`%2541` is the name "%41", not "A"."""
    assert_no_content(client.post(f"{base}/{quote('%41', safe='')}", json={"dueTime": "1h"}))
    assert client.get(f"{base}/%2541").get_json()["name"] == "%41"
    assert_error(client.get(f"{base}/A"), 404)
