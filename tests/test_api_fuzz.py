"""HTTP API contract: never a 500 for bad input (design.md), checked with hypothesis.

Random JSON-ish bodies (built around the real field names and plausible
values), random bytes, random names; after every request the answer is one of
the documented ones, an accepted job reads back, and the store is consistent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import string
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, assume, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from app.api.factory import create_app
from app.settings import Settings
from tests.support.redis_proc import RedisProcess
from tests.test_api_helpers import (
    BASES,
    api_settings,
    assert_error,
    assert_store_consistent,
    job_url,
)

# Each check runs on both spellings of the jobs API (one handler): 150 examples each is
# 300 per check, the count it had when one base ran them all.
FUZZ = hsettings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
    derandomize=False,
)


@pytest.fixture
def api(redis_server: RedisProcess) -> Iterator[tuple[FlaskClient, Settings]]:
    # One app per test, not per example: small limits so 413 is reachable too.
    settings = api_settings(redis_server.url, max_data_bytes=2048)
    with create_app(settings).test_client() as client:
        yield client, settings


# --- strategies -----------------------------------------------------------------------

huge_numbers = st.sampled_from([
    2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63, 2**64, 10**30, -(2**63) - 1, 1e308, -1e308,
    5e-324, 1.5, -0.0,
])
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), huge_numbers,
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)

go_durations = st.from_regex(r"\A-?[0-9]{0,4}(\.[0-9]{0,3})?(ns|us|µs|ms|s|m|h|d|x)?"
                             r"([0-9]{1,3}(ms|s|m|h))?\Z")
iso_durations = st.from_regex(r"\A(R[0-9]?/)?P([0-9]{1,5}[YMWD]){0,3}(T([0-9]{1,6}[HMS]){0,3})?"
                              r"\Z")
rfc3339 = st.from_regex(
    r"\A[0-9]{4}-[0-1][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-5][0-9]:[0-6][0-9](\.[0-9]{1,12})?"
    r"([Zz]|[+-][0-2][0-9]:[0-5][0-9])?\Z"
)
extreme_times = st.sampled_from([
    "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59+14:00",
    "1969-12-31T23:59:59.999Z", "1970-01-01T00:00:00Z", "2262-04-11T23:47:16.854775807Z",
    "2562047h", "-2562047h", "2562048h", "P9999Y", "P7000Y", "P1000000D", "PT99999999H",
    "0", "-0", "+0s", "0s", "",
])
times = st.one_of(go_durations, iso_durations, rfc3339, extreme_times, st.text(max_size=12))
cron_field = st.one_of(
    st.sampled_from(["*", "?", "0", "59", "60", "1-5", "5-1", "*/0", "*/7", "1/2", "1,2,3",
                     "JAN", "mon-fri", "L", "7", "-1", "1-2-3", "31", "32", ""]),
    st.text(alphabet=string.digits + "*/,-?", max_size=5),
)
cron = st.lists(cron_field, min_size=4, max_size=8).map(" ".join)
schedules = st.one_of(
    cron,
    st.builds(lambda tz, c: f"TZ={tz} {c}",
              st.sampled_from(["UTC", "Europe/Paris", "Local", "", "Nowhere/City", "../etc",
                               "America/New_York", "Etc/GMT+14"]), cron),
    st.sampled_from(["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                     "@hourly", "@every", "@reboot", "@Daily", "@daily "]),
    go_durations.map(lambda d: f"@every {d}"),
    st.text(max_size=20),
)
any_types = st.sampled_from([
    "type.googleapis.com/google.protobuf.StringValue", "type.googleapis.com/google.protobuf.Value",
    "type.googleapis.com/google.protobuf.Struct", "type.googleapis.com/google.protobuf.Any",
    "type.googleapis.com/google.protobuf.Duration", "type.googleapis.com/google.protobuf.Timestamp",
    "type.googleapis.com/google.protobuf.FieldMask", "type.googleapis.com/google.protobuf.Empty",
    "type.googleapis.com/google.protobuf.BytesValue",
    "type.googleapis.com/google.protobuf.UInt64Value", "type.googleapis.com/google.protobuf.Type",
    "type.googleapis.com/foo.Bar", "", "/", "google.protobuf.StringValue",
])
any_data = st.builds(
    lambda t, v, extra: {"@type": t, "value": v, **extra},
    any_types, json_values, st.dictionaries(st.sampled_from(["value", "name", "x"]), json_values,
                                            max_size=1),
)
uints = st.one_of(st.integers(min_value=-2, max_value=2**33), huge_numbers,
                  st.from_regex(r"\A-?[0-9]{1,11}\Z"), json_values)
policies = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "drop": st.one_of(st.just({}), json_values),
        "constant": st.one_of(json_values, st.fixed_dictionaries({}, optional={
            "interval": st.one_of(go_durations, times, json_values),
            "maxRetries": uints,
            "max_retries": uints,
        })),
    }),
)
fields: dict[str, st.SearchStrategy[Any]] = {
    "data": st.one_of(json_values, any_data, st.text(min_size=1500, max_size=2500)),
    "schedule": st.one_of(schedules, json_values),
    "dueTime": st.one_of(times, json_values),
    "due_time": times,
    "ttl": st.one_of(times, json_values),
    "repeats": uints,
    "overwrite": st.one_of(st.booleans(), json_values),
    "failurePolicy": policies,
    "failure_policy": policies,
    "name": st.one_of(st.just(""), st.text(max_size=5), json_values),
    "unknownField": json_values,
}
bodies = st.fixed_dictionaries({}, optional=fields)

# Mostly valid requests, so that the accepted path (store, GET) is fuzzed too.
_tz = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=14)),
                       dt.timezone(dt.timedelta(hours=-14)), dt.timezone(dt.timedelta(hours=5,
                                                                                     minutes=30))])
plausible_times = st.one_of(
    st.from_regex(r"\A[1-9][0-9]{0,3}(ms|s|m|h)\Z"),
    st.sampled_from(["PT2S", "P1D", "P1W", "PT0S", "0s", "PT", "P1Y2M3DT4H5M6S", "PT0.5S"]),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                 timezones=_tz).map(lambda d: d.isoformat()),
    st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2100, 1, 1),
                 timezones=_tz).map(lambda d: d.isoformat(timespec="milliseconds")),
    extreme_times,
)
_sec = st.sampled_from(["*", "0", "*/5", "1-3", "0,30", "0/15", "?"])
plausible_cron = st.tuples(
    _sec, _sec, st.sampled_from(["*", "0", "*/6", "9-17"]),
    st.sampled_from(["*", "?", "1", "15", "1-7", "29", "31"]),
    st.sampled_from(["*", "1", "JAN", "6-8", "feb", "*/3"]),
    st.sampled_from(["*", "?", "MON-FRI", "0", "SUN", "6"]),
).map(" ".join)
plausible_schedules = st.one_of(
    plausible_cron,
    plausible_cron.map(lambda c: f"TZ=Europe/Paris {c}"),
    plausible_cron.map(lambda c: f"CRON_TZ=America/New_York {c}"),
    st.sampled_from(["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                     "@hourly", "@every 1s", "@every 1h30m", "@every 500ms", "@every 1ns"]),
)
plausible_policies: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.just({}), st.just({"drop": {}}),
    st.fixed_dictionaries({"constant": st.fixed_dictionaries({}, optional={
        "interval": st.from_regex(r"\A[0-9]{1,3}(ms|s|m)\Z"),
        "maxRetries": st.integers(min_value=0, max_value=2**32 - 1),
    })}),
)
plausible_bodies = st.fixed_dictionaries(
    {"overwrite": st.sampled_from([True, True, True, False])},
    optional={
        "data": st.one_of(json_values, any_data),
        "schedule": plausible_schedules,
        "dueTime": plausible_times,
        "ttl": plausible_times,
        "repeats": st.integers(min_value=0, max_value=3),
        "failurePolicy": plausible_policies,
    },
).filter(lambda body: "schedule" in body or "dueTime" in body)
names = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=6),
    st.sampled_from(["job", "job", "R2-D2", " job ", "x" * 253, "x" * 254, ".", "..", "a/b",
                     "/a", "a#b", "a?b", "%", "%2F"]),
)


def _encode(body: Any, mode: str) -> bytes:
    if mode == "compact":
        return json.dumps(body, separators=(",", ":")).encode()
    if mode == "pretty":
        return json.dumps(body, indent=2, ensure_ascii=False).encode()
    return json.dumps(body).encode()[:-1]  # "truncated"


# --- the checks -----------------------------------------------------------------------

# 404: a name with a line break does not reach the jobs routes (a bug test_api_errors
# pins down); it must still not be a 500.
OK_STATUSES = {204, 400, 404, 409, 413}


def fresh(client: FlaskClient, base: str, name: str) -> None:
    """Delete the job an earlier example may have left, so that every example gives the
    same answer when hypothesis replays it (a 409 instead of a 204 would hide a bug)."""
    response = client.delete(job_url(base, name))
    assert response.status_code < 500, response.get_data(as_text=True)


def check_answer(client: FlaskClient, base: str, name: str, response: Any) -> None:
    with contextlib.suppress(InvalidArgument):  # when called from a plain test
        event(f"status {response.status_code}")
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.status_code in OK_STATUSES, response.status_code
    if response.status_code == 204:
        assert response.get_data() == b""
        # An accepted job reads back (GET must never be a 500 either).
        got = client.get(job_url(base, name))
        assert got.status_code == 200, got.get_data(as_text=True)
        job = got.get_json()
        assert job["name"] == name.strip()
        assert "schedule" in job or "dueTime" in job
        assert isinstance(job["failurePolicy"], dict)
    else:
        assert_error(response, response.status_code)


@pytest.mark.parametrize("base", BASES)
@FUZZ
@given(name=names, body=bodies, mode=st.sampled_from(["compact", "pretty", "truncated"]),
       content_type=st.sampled_from([None, "application/json", "text/plain"]))
def test_random_json_bodies_never_500(api: tuple[FlaskClient, Settings], redis_client: redis.Redis,
                                      base: str, name: str, body: dict[str, Any], mode: str,
                                      content_type: str | None) -> None:
    client, settings = api
    assume(not name.startswith("/"))  # answered with a redirect: test_api_errors covers it
    fresh(client, base, name)
    raw = _encode(body, mode)
    kwargs = {"content_type": content_type} if content_type else {}
    response = client.post(job_url(base, name), data=raw, **kwargs)
    check_answer(client, base, name, response)
    assert_store_consistent(redis_client, settings)


@pytest.mark.parametrize("base", BASES)
@FUZZ
@given(name=st.sampled_from(["a", "b", "c", "R2-D2"]), body=plausible_bodies)
def test_plausible_bodies_never_500(api: tuple[FlaskClient, Settings], redis_client: redis.Redis,
                                    base: str, name: str, body: dict[str, Any]) -> None:
    client, settings = api
    fresh(client, base, name)
    response = client.post(job_url(base, name), json=body)
    check_answer(client, base, name, response)
    assert_store_consistent(redis_client, settings)
    if response.status_code == 204:
        job = client.get(job_url(base, name)).get_json()
        for field in ("schedule", "dueTime", "ttl"):
            if body.get(field):
                assert job[field] == body[field]  # read back as given


raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=60).map(lambda b: b'{"dueTime": "1s", "data": "' + b + b'"}'),
    st.binary(max_size=60).map(lambda b: b'{"schedule": "' + b + b'"}'),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(min_value=1, max_value=400).map(
        lambda n: b'{"dueTime":"1s","data":' + b"[" * n + b"]" * n + b"}"),
    st.sampled_from([
        b"1" * 5000,
        b'{"dueTime":"1s","data":' + b"9" * 5000 + b"}",
        b'{"dueTime":"1s","repeats":' + b"9" * 400 + b"}",
        b'{"dueTime":"1s","data":1e999}',
        b'{"dueTime":"1s","data":-1e999}',
        b'{"dueTime":"1s","data":0.' + b"0" * 5000 + b"1}",
        b"\xef\xbb\xbf{}",
        b"\x00",
        b'{"\\u0000":1}',
        b'{"dueTime":"1s","data":"\\udc00"}',
    ]),
)


@pytest.mark.parametrize("base", BASES)
@FUZZ
@given(name=st.sampled_from(["job", "R2-D2"]), raw=raw_bodies)
def test_random_bytes_never_500(api: tuple[FlaskClient, Settings], redis_client: redis.Redis,
                                base: str, name: str, raw: bytes) -> None:
    client, settings = api
    fresh(client, base, name)
    response = client.post(job_url(base, name), data=raw, content_type="application/json")
    check_answer(client, base, name, response)
    assert_store_consistent(redis_client, settings)


@pytest.mark.parametrize("base", BASES)
@FUZZ
@given(name=names, method=st.sampled_from(["get", "delete"]))
def test_random_names_never_500(api: tuple[FlaskClient, Settings], redis_client: redis.Redis,
                                base: str, name: str, method: str) -> None:
    client, settings = api
    assume(name.strip() != "")  # the empty path is its own route, tested elsewhere
    assume(not name.startswith("/"))  # answered with a redirect: test_api_errors covers it
    response = getattr(client, method)(job_url(base, name))
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.status_code in {200, 204, 400, 404}, response.status_code
    if response.status_code in (400, 404):
        assert_error(response, response.status_code)
    assert_store_consistent(redis_client, settings)


@pytest.mark.parametrize("base", BASES)
@FUZZ
@given(query=st.dictionaries(
    st.sampled_from(["prefix", "limit", "pageToken", "offset", "other"]),
    # Page tokens with a small partition number: a huge negative one makes the list
    # walk that many partitions (test_api_ops pins that down as a 400).
    st.one_of(st.text(max_size=12), st.integers().map(str),
              st.from_regex(r"\A-?[0-3]\.-?[0-9]{1,25}\Z")),
    max_size=3,
))
def test_random_list_queries_never_500(api: tuple[FlaskClient, Settings], base: str,
                                       query: dict[str, str]) -> None:
    client, _ = api
    for method in ("get", "delete"):
        response = getattr(client, method)(base, query_string=query)
        assert response.status_code < 500, (method, query, response.get_data(as_text=True))
        if response.status_code >= 400:
            assert_error(response, response.status_code)
    response = client.get("/v1.0-alpha1/deadletters", query_string=query)
    assert response.status_code < 500, (query, response.get_data(as_text=True))


# --- cases the fuzzers found, kept as plain tests ----------------------------------------


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(
    "due_time",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999Z",
    ],
)
def test_extreme_due_times_are_400_or_read_back(api: tuple[FlaskClient, Settings],
                                                redis_client: redis.Redis, base: str,
                                                due_time: str) -> None:
    client, settings = api
    response = client.post(job_url(base, "edge"), json={"dueTime": due_time})
    check_answer(client, base, "edge", response)
    assert_store_consistent(redis_client, settings)
