"""HTTP API contract: the dead-letter queue extension (list, inspect, replay, purge).

design.md: when a trigger's failure policy is spent it goes to the dead-letter
queue, never silently away; the API lists, replays and purges it. Dead letters
are put in Redis here the way the worker's acknowledge script stores them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import quote

import pytest
import redis
from flask.testing import FlaskClient

from app.api.factory import create_app
from app.jobs.model import DeadLetter, Job
from app.jobs.validation import MAX_NAME_LENGTH
from app.settings import Settings
from app.store.keys import Keys, dead_member, job_id
from tests.support.redis_proc import RedisProcess
from tests.test_api_helpers import (
    api_settings,
    assert_error,
    assert_no_content,
    assert_store_consistent,
    job_url,
    post_job,
)

DL_BASES = ("/v1.0-alpha1/deadletters", "/v1.0/deadletters")
SCHED_MS = 1_700_000_000_123


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    """No receiver: these tests deliver nothing (conftest's `app`, `client`, `base` use it)."""
    return api_settings(redis_server.url)


@pytest.fixture(params=DL_BASES, ids=["alpha1", "v1"])
def dl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def put_dead_letter(redis_client: redis.Redis, settings: Settings, app_id: str, name: str,
                    dead_ms: int, data: Any = "payload") -> DeadLetter:
    """A dead letter as workers/worker.py settles it through app/lua/ack.lua."""
    keys = Keys(settings.prefix, settings.partitions)
    jid = job_id(app_id, name)
    pk = keys.for_job(jid)
    job = Job(app_id=app_id, name=name, data=data, schedule="@every 1m",
              first_ms=SCHED_MS)
    letter = DeadLetter(id=f"{jid}@{job.rev}:{SCHED_MS}:{dead_ms}", app_id=app_id, name=name,
                        sched_ms=SCHED_MS, attempts=4, error="HTTP 500 from the app",
                        dead_ms=dead_ms, record=job.encode().decode())
    redis_client.hset(pk.dead, letter.id, letter.encode())
    redis_client.zadd(pk.deadidx, {letter.id: dead_ms})
    redis_client.zadd(pk.deadlex, {dead_member(app_id, dead_ms, letter.id): 0})
    return letter


def listed(client: FlaskClient, dl: str, **query: Any) -> list[dict[str, Any]]:
    response = client.get(dl, query_string=query)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"deadLetters", "nextPageToken"}
    letters = body["deadLetters"]
    assert isinstance(letters, list)
    return letters


def test_empty(client: FlaskClient, dl: str) -> None:
    assert listed(client, dl) == []


def test_listed_oldest_first_for_this_app_only(client: FlaskClient, dl: str, settings: Settings,
                                               redis_client: redis.Redis) -> None:
    put_dead_letter(redis_client, settings, settings.app_id, "late", dead_ms=1_700_000_300_000)
    put_dead_letter(redis_client, settings, settings.app_id, "early", dead_ms=1_700_000_100_000)
    put_dead_letter(redis_client, settings, "another-app", "theirs", dead_ms=1_700_000_200_000)
    letters = listed(client, dl)
    assert [d["name"] for d in letters] == ["early", "late"]
    first = letters[0]
    assert set(first) >= {"id", "name", "attempts", "error", "scheduledTime", "deadLetteredTime"}
    assert first["attempts"] == 4
    assert first["error"] == "HTTP 500 from the app"
    assert first["scheduledTime"] == "2023-11-14T22:13:20.123Z"
    assert first["deadLetteredTime"] == "2023-11-14T22:15:00.000Z"


def test_list_paging_and_prefix(client: FlaskClient, dl: str, settings: Settings,
                                redis_client: redis.Redis) -> None:
    for i in range(5):
        put_dead_letter(redis_client, settings, settings.app_id, f"d{i}", dead_ms=1000 + i)
    put_dead_letter(redis_client, settings, settings.app_id, "other", dead_ms=999)
    assert [d["name"] for d in listed(client, dl, limit=2, offset=1)] == ["d0", "d1"]
    assert [d["name"] for d in listed(client, dl, offset=5)] == ["d4"]
    assert [d["name"] for d in listed(client, dl, prefix="d")] == [f"d{i}" for i in range(5)]
    assert [d["name"] for d in listed(client, dl, prefix="d", limit=1, offset=4)] == ["d4"]


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "x"}, {"limit": "1001"},
                                   {"offset": "-1"}, {"offset": "x"}, {"offset": "1000001"},
                                   {"pageToken": "0.0.0."}, {"pageToken": "x"},
                                   {"pageToken": "0.AAAA"}, {"pageToken": "1.bm9wZQ",
                                                             "offset": "1"},
                                   # int() takes these; a query takes ASCII digits only
                                   {"limit": "1_0"}, {"limit": "+5"}, {"limit": "\u0663"},
                                   {"offset": " 1"}, {"pageToken": "\u0663.bm9wZQ.0"},
                                   {"pageToken": "\u00b2.bm9wZQ.0"}])
def test_bad_list_query_is_400(client: FlaskClient, dl: str, query: dict[str, str]) -> None:
    body = assert_error(client.get(dl, query_string=query), 400)
    assert "int()" not in body["message"]
    assert body["message"].startswith("invalid query: ")  # not "failed deserializing HTTP body"


def test_inspect_one_letter_with_its_job(client: FlaskClient, dl: str, settings: Settings,
                                         redis_client: redis.Redis) -> None:
    letter = put_dead_letter(redis_client, settings, settings.app_id, "inspect", dead_ms=5000,
                             data={"k": [1, 2]})
    response = client.get(f"{dl}/{quote(letter.id, safe='')}")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["id"] == letter.id
    assert body["name"] == "inspect"
    assert body["job"]["data"] == {"k": [1, 2]}
    assert body["job"]["schedule"] == "@every 1m"


def test_a_dead_letter_that_cannot_be_read_is_a_clear_error_and_purging_mends_it(
        client: FlaskClient, dl: str, settings: Settings, redis_client: redis.Redis) -> None:
    """A dead letter whose job record, or whose envelope, this version cannot read: a 500
    naming it and saying that purging mends it (not "schedule it again", which mends a
    job, nor a list answered 400 "invalid query" as if the query were wrong)."""
    keys = Keys(settings.prefix, settings.partitions)
    inner = put_dead_letter(redis_client, settings, settings.app_id, "inner", dead_ms=1)
    outer = put_dead_letter(redis_client, settings, settings.app_id, "outer", dead_ms=2)
    dead = keys.for_job(job_id(settings.app_id, "inner")).dead
    redis_client.hset(dead, inner.id, dataclasses.replace(inner, record="not json").encode())
    response = client.get(f"{dl}/{quote(inner.id, safe='')}")
    assert response.status_code == 500
    assert response.get_json() == {
        "errorCode": "DAPR_SCHEDULER_JOB_UNREADABLE",
        "message": f"dead letter {inner.id!r} is stored in a form this version cannot read "
                   "(JSONDecodeError: invalid literal, expected 'null': line 1 column 1 (char 0)); "
                   "purge it (by id or prefix)"}
    assert [d["name"] for d in listed(client, dl)] == ["inner", "outer"]  # not read there
    redis_client.hset(keys.for_job(job_id(settings.app_id, "outer")).dead, outer.id, b"[]")
    response = client.get(dl)
    assert response.status_code == 500
    assert response.get_json()["message"].startswith(
        f"dead letter {outer.id!r} is stored in a form this version cannot read")
    assert client.delete(dl, query_string={"prefix": "outer"}).get_json() == {"purged": 1}
    assert client.delete(dl, query_string={"id": inner.id}).get_json() == {"purged": 1}
    assert listed(client, dl) == []
    # an envelope that reads, with a field of another type (a bare ERR_INTERNAL before)
    odd = put_dead_letter(redis_client, settings, settings.app_id, "odd", dead_ms=3)
    envelope = json.loads(odd.encode())
    for field, value in (("scheduledMs", "x"), ("deadMs", 1.5), ("error", 5)):
        redis_client.hset(keys.for_job(job_id(settings.app_id, "odd")).dead, odd.id,
                          json.dumps({**envelope, field: value}))
        for response in (client.get(f"{dl}/{quote(odd.id, safe='')}"), client.get(dl)):
            assert response.status_code == 500, (field, response.get_data(as_text=True))
            assert response.get_json()["errorCode"] == "DAPR_SCHEDULER_JOB_UNREADABLE"


def test_inspect_unknown_or_foreign_letter_is_404(client: FlaskClient, dl: str,
                                                  settings: Settings,
                                                  redis_client: redis.Redis) -> None:
    theirs = put_dead_letter(redis_client, settings, "another-app", "theirs", dead_ms=1)
    assert_error(client.get(f"{dl}/nope"), 404)
    assert_error(client.get(f"{dl}/{quote(theirs.id, safe='')}"), 404)


def test_replay_by_id(client: FlaskClient, dl: str, settings: Settings,
                      redis_client: redis.Redis) -> None:
    letter = put_dead_letter(redis_client, settings, settings.app_id, "again", dead_ms=1)
    keep = put_dead_letter(redis_client, settings, settings.app_id, "stays", dead_ms=2)
    response = client.post(f"{dl}/replay", json={"ids": [letter.id]})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"replayed": 1}
    assert [d["id"] for d in listed(client, dl)] == [keep.id]
    # The replay is pending delivery, but it is not a job of its own on the jobs API.
    ids = assert_store_consistent(redis_client, settings)
    assert len(ids) == 1
    assert_error(client.get(job_url("/v1.0-alpha1/jobs", "again")), 404)
    assert client.get("/v1.0-alpha1/jobs").get_json()["jobs"] == []
    # Replaying the same letter again replays nothing, and says which ids named none.
    assert client.post(f"{dl}/replay", json={"ids": [letter.id]}).get_json() == {
        "replayed": 0, "notFound": [letter.id]}
    answer = client.post(f"{dl}/replay", json={"ids": ["mistyped", keep.id]}).get_json()
    assert answer == {"replayed": 1, "notFound": ["mistyped"]}


def test_replay_all_and_by_prefix_stay_in_this_app(client: FlaskClient, dl: str,
                                                   settings: Settings,
                                                   redis_client: redis.Redis) -> None:
    for i in range(3):
        put_dead_letter(redis_client, settings, settings.app_id, f"a{i}", dead_ms=10 + i)
    put_dead_letter(redis_client, settings, settings.app_id, "b", dead_ms=20)
    put_dead_letter(redis_client, settings, "another-app", "a9", dead_ms=30)
    assert client.post(f"{dl}/replay", json={"prefix": "a"}).get_json() == {"replayed": 3}
    assert [d["name"] for d in listed(client, dl)] == ["b"]
    assert client.post(f"{dl}/replay", json={"all": True}).get_json() == {"replayed": 1}
    assert listed(client, dl) == []
    others = create_app(settings.with_(app_id="another-app")).test_client()
    assert [d["name"] for d in listed(others, dl)] == ["a9"]
    assert_store_consistent(redis_client, settings)


@pytest.mark.parametrize("selection", ["all", "prefix", "ids"])
def test_a_replay_skips_the_letters_it_cannot_read_and_names_them(
        client: FlaskClient, dl: str, settings: Settings, redis_client: redis.Redis,
        selection: str) -> None:
    """Before, a replay stopped at the first letter it could not read with a 500, the
    letters after it not replayed."""
    keys = Keys(settings.prefix, settings.partitions)
    letters = [put_dead_letter(redis_client, settings, settings.app_id, f"r{i}", dead_ms=i + 1)
               for i in range(5)]
    bad_record, bad_envelope = letters[1], letters[3]
    redis_client.hset(keys.for_job(job_id(settings.app_id, "r1")).dead, bad_record.id,
                      dataclasses.replace(bad_record, record="not json").encode())
    redis_client.hset(keys.for_job(job_id(settings.app_id, "r3")).dead, bad_envelope.id, b"[]")
    # one copied by hand over another: named by the id it is stored under, not its own
    copied = letters[4]
    redis_client.hset(keys.for_job(job_id(settings.app_id, "r4")).dead, copied.id,
                      dataclasses.replace(letters[0], name="r4", record="x").encode())
    body = {"all": {"all": True}, "prefix": {"prefix": "r"},
            "ids": {"ids": [d.id for d in letters]}}[selection]
    response = client.post(f"{dl}/replay", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    unreadable = sorted([bad_record.id, bad_envelope.id, copied.id])
    assert sorted(answer.pop("unreadable")) == unreadable
    assert answer == {"replayed": 2, "unreadableCount": 3}
    # The three are left as they were, for a purge; the two others were replayed.
    assert len(assert_store_consistent(redis_client, settings)) == 2  # the replays, pending
    kept = {f.decode() for pk in keys.all_partitions() for f in redis_client.hkeys(pk.dead)}
    assert sorted(kept) == unreadable
    assert client.delete(dl, query_string={"prefix": "r"}).get_json() == {"purged": 3}
    assert client.post(f"{dl}/replay", json={"all": True}).get_json() == {"replayed": 0}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{", id="invalid-json"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b"{}", id="no-selection"),
        pytest.param(b'{"ids": "x"}', id="ids-not-a-list"),
        pytest.param(b'{"ids": [1]}', id="ids-not-strings"),
        pytest.param(b'{"prefix": 5}', id="prefix-not-a-string"),
        pytest.param(b'{"all": false}', id="all-false"),
        pytest.param(b'{"ids": [], "prefix": "", "all": false}', id="openapi-example"),
        pytest.param(b'{"prefix": ""}', id="empty-prefix"),
        pytest.param(b'{"ids": []}', id="empty-ids"),
        pytest.param(b'{"all": "true"}', id="all-not-a-boolean"),
        pytest.param(b'{"prefix": "k", "all": true}', id="prefix-and-all"),
        pytest.param(b"\xff", id="invalid-utf8"),
    ],
)
def test_bad_replay_request_is_400(client: FlaskClient, dl: str, body: bytes, settings: Settings,
                                   redis_client: redis.Redis) -> None:
    letter = put_dead_letter(redis_client, settings, settings.app_id, "kept", dead_ms=1)
    assert_error(client.post(f"{dl}/replay", data=body, content_type="application/json"), 400)
    assert [d["id"] for d in listed(client, dl)] == [letter.id]


def test_purge_by_id_prefix_and_all(client: FlaskClient, dl: str, settings: Settings,
                                    redis_client: redis.Redis) -> None:
    one = put_dead_letter(redis_client, settings, settings.app_id, "x1", dead_ms=1)
    put_dead_letter(redis_client, settings, settings.app_id, "x2", dead_ms=2)
    put_dead_letter(redis_client, settings, settings.app_id, "y", dead_ms=3)
    put_dead_letter(redis_client, settings, settings.app_id, "z", dead_ms=4)
    theirs = put_dead_letter(redis_client, settings, "another-app", "x3", dead_ms=5)
    response = client.delete(dl, query_string={"id": one.id})
    assert response.status_code == 200
    assert response.get_json() == {"purged": 1}
    assert client.delete(dl, query_string={"id": theirs.id}).get_json() == {
        "purged": 0, "notFound": [theirs.id]}
    assert client.delete(dl, query_string={"prefix": "x"}).get_json() == {"purged": 1}
    assert [d["name"] for d in listed(client, dl)] == ["y", "z"]
    assert client.delete(dl, query_string={"all": "true"}).get_json() == {"purged": 2}
    assert listed(client, dl) == []
    others = create_app(settings.with_(app_id="another-app")).test_client()
    assert [d["id"] for d in listed(others, dl)] == [theirs.id]


def test_purge_needs_a_selection(client: FlaskClient, dl: str, settings: Settings,
                                 redis_client: redis.Redis) -> None:
    put_dead_letter(redis_client, settings, settings.app_id, "kept", dead_ms=1)
    assert_error(client.delete(dl), 400, "ERR_MALFORMED_REQUEST")
    assert_error(client.delete(dl, query_string={"all": "false"}), 400)
    # An empty prefix selects nothing, never everything; "all" must say true.
    assert "empty prefix" in assert_error(client.delete(dl, query_string={"prefix": ""}),
                                          400)["message"]
    assert_error(client.delete(dl, query_string={"all": "yes"}), 400)
    assert_error(client.delete(dl, query_string={"all": "true", "prefix": "k"}), 400)
    assert len(listed(client, dl)) == 1


def test_jobs_and_dead_letters_are_independent(client: FlaskClient, dl: str, settings: Settings,
                                               redis_client: redis.Redis) -> None:
    """Deleting a job keeps its dead letters (they are the record of what failed)."""
    assert_no_content(post_job(client, "/v1.0/jobs", "flaky", {"schedule": "@every 1m"}))
    put_dead_letter(redis_client, settings, settings.app_id, "flaky", dead_ms=1)
    assert_no_content(client.delete(job_url("/v1.0/jobs", "flaky")))
    assert [d["name"] for d in listed(client, dl)] == ["flaky"]


def test_pending_replay_is_not_a_job_for_delete_by_prefix(client: FlaskClient, dl: str,
                                                          settings: Settings,
                                                          redis_client: redis.Redis) -> None:
    """A replay is hidden from the jobs API (GET, list); delete-by-prefix must agree: it
    neither counts nor cancels it (deleting a job by name does not cancel it either)."""
    letter = put_dead_letter(redis_client, settings, settings.app_id, "retry-me", dead_ms=1)
    assert client.post(f"{dl}/replay", json={"ids": [letter.id]}).get_json() == {"replayed": 1}
    assert client.get("/v1.0/jobs").get_json()["jobs"] == []
    assert_no_content(client.delete(job_url("/v1.0/jobs", "retry-me")))
    assert len(assert_store_consistent(redis_client, settings)) == 1
    response = client.delete("/v1.0/jobs", query_string={"prefix": "retry"})
    assert response.get_json() == {"deleted": 0}
    assert len(assert_store_consistent(redis_client, settings)) == 1, "the replay was cancelled"


def test_every_name_prefix_is_bounded_as_a_name(client: FlaskClient, base: str,
                                                dl: str) -> None:
    """Listing jobs and dead letters, purging and replaying by prefix took a prefix of
    any length (deleting jobs by one and gRPC's refused past a name's length)."""
    longest, over = "p" * MAX_NAME_LENGTH, "p" * (MAX_NAME_LENGTH + 1)
    requests = [("GET", base + "?prefix={}", None), ("DELETE", base + "?prefix={}", None),
                ("GET", dl + "?prefix={}", None), ("DELETE", dl + "?prefix={}", None),
                ("POST", dl + "/replay", "{}")]
    for method, url, body in requests:
        for prefix, refused in ((longest, False), (over, True)):
            answer = client.open(url.format(prefix), method=method,
                                 json=None if body is None else {"prefix": prefix})
            if refused:
                assert_error(answer, 400, "ERR_MALFORMED_REQUEST")
                assert f"longer than a job name can be ({MAX_NAME_LENGTH})" in \
                    answer.get_json()["message"], (method, url)
            else:
                assert answer.status_code == 200, (method, url, answer.get_data(as_text=True))
