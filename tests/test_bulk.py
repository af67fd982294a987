"""The bulk route, `POST .../jobs` (app/api/bulk.py), and its script schedule_many.lua.

Each job of a bulk request must be answered, validated and stored exactly as the same job
sent alone to `POST .../jobs/{name}`, one after another in order: the corpus below goes
to two apps on the same Redis (their own key prefixes, the same app id), one request
per job to the first and one bulk request to the second, and every answer and every
stored record must be the same. schedule_many.lua must leave every key as schedule.lua
does (compared key by key, paused apps and jobs, restored run states and all). Times are
absolute, so that both ways store the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import uuid
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis
from flask.testing import FlaskClient

from app.api.factory import create_app
from app.jobs.model import CatchUp, FailureKind, FailurePolicy, Job, RunState
from app.settings import MAX_BULK_JOBS, Settings, SettingsError
from app.store.keys import Keys, job_id
from app.store.store import JobExists, Store
from tests.support.far import all_records, any_record
from tests.support.redis_proc import RedisProcess
from tests.test_api_helpers import BASES, api_settings, assert_error

DUE = "2099-01-01T00:00:00Z"
SEED_DATA = {"@type": "type.googleapis.com/google.protobuf.StringValue",
             "value": "R2-D2:Oil Change"}
TOKEN = "bulk-token"

# (name, the body of POST .../jobs/{name} as text). In order: retries, conflicts and
# overwrites meet the entries before them.
CORPUS: list[tuple[str, str]] = [
    ("seed", json.dumps({"dueTime": DUE, "data": SEED_DATA})),
    ("seed", json.dumps({"dueTime": DUE, "data": SEED_DATA})),  # a retry: 204
    ("seed", json.dumps({"dueTime": DUE, "data": {"x": 2}})),  # another job: 409
    ("seed", json.dumps({"dueTime": DUE, "data": {"x": 2}, "overwrite": True})),
    ("every", json.dumps({"schedule": "@every 5s", "repeats": 3, "ttl": "2100-01-01T00:00:00Z",
                          "dueTime": DUE, "failurePolicy": {"drop": {}}})),
    ("cron", json.dumps({"schedule": "TZ=Europe/Berlin 0 30 9 * * MON-FRI", "dueTime": DUE,
                         "catchUp": "skip", "deliveryTimeout": "2s"})),
    # The data's text as given (kept so with --dapr-compat).
    ("raw", '{"dueTime": "' + DUE + '", "data": {"b" :  1.50, "a": [1e2, "\\u00e9"]}}'),
    (" padded ", json.dumps({"dueTime": DUE})),
    ("café", json.dumps({"dueTime": DUE, "data": "x"})),
    ("a/b", json.dumps({"dueTime": DUE})),  # 400: '/' in a name
    ("x", json.dumps({"data": 1})),  # 400: neither schedule nor dueTime
    ("x", json.dumps({"dueTime": "soon"})),
    ("x", json.dumps({"dueTime": DUE, "repeats": -1})),
    ("x", json.dumps({"dueTime": DUE, "overwrite": "yes"})),
    ("x", json.dumps({"dueTime": DUE, "data": "z" * 200})),  # 413: over max_data_bytes
    ("x", json.dumps({"dueTime": DUE, "data": {"@type": "type.example.com/Nope"}})),
    ("x", json.dumps({"dueTime": DUE, "nextTriggerTime": "2098-01-01T00:00:00Z"})),
    ("restored", json.dumps({"schedule": "@every 1h", "nextTriggerTime": "2099-01-01T00:00:00Z",
                             "triggerCount": 2, "lastTriggerTime": "2098-12-31T23:00:00Z"})),
    ("y", "{}"),  # 400: schedule empty
]


def _item(name: str, body: str) -> str:
    """The job as a bulk request's entry: its body with its name first."""
    return body.replace("{", '{"name": ' + json.dumps(name) + ("" if body == "{}" else ", "), 1)


def _apps(redis_url: str, **changes: Any) -> tuple[Settings, Settings]:
    one = api_settings(redis_url, max_data_bytes=96, **changes)
    return one, one.with_(prefix=f"t{uuid.uuid4().hex[:10]}")


def _records(settings: Settings) -> dict[bytes, bytes]:
    """The stored jobs, their run states and due times."""
    client: Any = redis.Redis.from_url(settings.redis_url)
    try:
        jobs: dict[bytes, bytes] = {}
        for pk in Keys(settings.prefix, settings.partitions).all_partitions():
            jobs.update(all_records(client, pk))  # near or far
            jobs.update({b"runs:" + k: v for k, v in client.hgetall(pk.runs).items()})
            jobs.update({b"due:" + m: str(s).encode()
                         for m, s in client.zrange(pk.due, 0, -1, withscores=True)})
        return jobs
    finally:
        client.close()


@pytest.mark.parametrize("dapr_compat", [False, True], ids=["plain", "dapr-compat"])
def test_each_job_is_answered_and_stored_as_alone(redis_server: RedisProcess,
                                                  dapr_compat: bool) -> None:
    one, many = _apps(redis_server.url, dapr_compat=dapr_compat)
    single, bulk = create_app(one), create_app(many)
    base = BASES[dapr_compat]
    alone = []
    with single.test_client() as client:
        for name, body in CORPUS:
            response = client.post(f"{base}/{quote(name, safe='')}", data=body.encode())
            alone.append((response.status_code, response.get_json(silent=True)))
    text = '{"jobs": [' + ", ".join(_item(n, b) for n, b in CORPUS) + "]}"
    with bulk.test_client() as client:
        response = client.post(base, data=text.encode(), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert [r["name"] for r in results] == [n for n, _ in CORPUS]
    for (name, _), result, (status, error) in zip(CORPUS, results, alone, strict=True):
        assert result["status"] == status, (name, result, error)
        if status == 204:
            assert set(result) == {"name", "status"}, result
        else:
            assert error == {"errorCode": result["errorCode"], "message": result["message"]}
    assert [s for s, _ in alone].count(204) >= 8 and {409, 400, 413} <= {s for s, _ in alone}
    assert _records(many) == _records(one) != {}


def test_entries_that_are_not_jobs_each_get_a_400(client: FlaskClient, base: str) -> None:
    entries = [5, {"dueTime": DUE}, {"name": 7, "dueTime": DUE}, {"name": " ", "dueTime": DUE},
               {"name": "ok", "dueTime": DUE}, [], None]
    response = client.post(base, json={"jobs": entries})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [(r["name"], r["status"], r.get("errorCode")) for r in results] == [
        (None, 400, "ERR_MALFORMED_REQUEST"),
        (None, 400, "DAPR_SCHEDULER_JOB_NAME_EMPTY"),
        (None, 400, "ERR_MALFORMED_REQUEST"),  # only a string name is given back
        (" ", 400, "DAPR_SCHEDULER_JOB_NAME_EMPTY"),
        ("ok", 204, None),
        (None, 400, "ERR_MALFORMED_REQUEST"),
        (None, 400, "ERR_MALFORMED_REQUEST"),
    ]
    assert client.get(f"{base}/ok").status_code == 200
    assert client.post(base, json={"jobs": []}).get_json() == {"results": []}


NOT_BULK = [
    b"",
    b"{nope",
    b"[]",
    b'{"jobs": {}}',
    b'{"job": []}',
    orjson.dumps({"jobs": [{"name": f"j{n}", "dueTime": DUE} for n in range(4)]}),  # too many
]


def test_entries_nested_past_what_orjson_writes_get_the_single_routes_answers(
        client: FlaskClient, base: str) -> None:
    """Re-encoding an entry past the 254 levels orjson writes was a 500 for the whole
    request, the good entries with it."""
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    entries = [{"name": "deep-data", "dueTime": DUE, "data": deep},
               {"name": "deep-field", "dueTime": DUE, "x": deep},
               {"name": "ok", "dueTime": DUE}]
    # A name nested so deep: given back in its result, it could not be written (a 500
    # once the others were stored).
    response = client.post(base, data=json.dumps({"jobs": [*entries, {"name": deep}]}),
                           content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert [(r["name"], r["status"]) for r in results] == [
        ("deep-data", 400), ("deep-field", 204), ("ok", 204), (None, 400)]
    results = results[:3]
    for entry, result in zip(entries, results, strict=True):  # as the single route has them
        alone = client.post(f"{base}/{entry['name']}-alone", data=json.dumps(
            {k: v for k, v in entry.items() if k != "name"}), content_type="application/json")
        assert alone.status_code == result["status"]
        if alone.status_code != 204:
            assert alone.get_json() == {"errorCode": result["errorCode"],
                                        "message": result["message"]}
    assert client.get(f"{base}/ok").status_code == 200


def test_a_dapr_compat_request_nested_past_pythons_scanner_is_a_400(
        redis_server: RedisProcess) -> None:
    """Its data is kept as the text given, found by Python's JSON scanner, which stops
    near 1,000 levels where orjson reads 1,024: a RecursionError, a 500."""
    settings = api_settings(redis_server.url, dapr_compat=True)
    text = '{"dueTime": "1h", "data": 1, "x": ' + "[" * 1000 + "]" * 1000 + "}"
    with create_app(settings).test_client() as client:
        single = client.post(f"{BASES[1]}/deep", data=text.encode())
        assert_error(single, 400)
        assert "nested too deep" in single.get_json()["message"]
        bulk = client.post(BASES[1], data=('{"jobs": [' + text.replace(
            "{", '{"name": "deep", ', 1) + "]}").encode())
        assert_error(bulk, 400)
        assert client.get(f"{BASES[1]}/deep").status_code == 404


def test_a_request_that_is_not_a_bulk_request_is_a_400(redis_server: RedisProcess) -> None:
    app = create_app(api_settings(redis_server.url, bulk_max_jobs=3))
    with app.test_client() as client:
        for body in NOT_BULK:
            for base in BASES:
                assert_error(client.post(base, data=body), 400, "ERR_MALFORMED_REQUEST")
        assert client.get(BASES[1]).get_json()["jobs"] == []  # nothing stored


def test_bounds_and_token(redis_server: RedisProcess) -> None:
    settings = api_settings(redis_server.url, bulk_max_bytes=2000, api_token=TOKEN)
    app = create_app(settings)
    # The schedule shortcut stays on beside this route: tests/test_fast_schedule.py.
    small = orjson.dumps({"jobs": [{"name": "a", "dueTime": DUE}]})
    large = orjson.dumps({"jobs": [{"name": "a", "dueTime": DUE, "data": "x" * 2000}]})
    token = {"dapr-api-token": TOKEN}
    with app.test_client() as client:
        assert_error(client.post(BASES[1], data=small), 401)
        assert_error(client.post(BASES[1], data=small, headers={"dapr-api-token": "no"}), 401)
        assert_error(client.post(BASES[1], data=large, headers=token), 413,
                     "ERR_PAYLOAD_TOO_LARGE")
        # Chunked (no Content-Length): cut at the limit, still a 413.
        chunked = client.post(BASES[1], input_stream=io.BytesIO(large),
                              headers={**token, "Transfer-Encoding": "chunked"},
                              environ_overrides={"wsgi.input_terminated": True})
        assert_error(chunked, 413, "ERR_PAYLOAD_TOO_LARGE")
        assert client.get(f"{BASES[1]}/a", headers=token).status_code == 404
        answer = client.post(BASES[1], data=small, headers=token)
        assert answer.get_json() == {"results": [{"name": "a", "status": 204}]}


# --- schedule_many.lua stores what schedule.lua stores ----------------------------------


def _job(app: str, name: str, **fields: Any) -> Job:
    return Job(app_id=app, name=name, due_time=DUE, first_ms=4_070_908_800_000, **fields)


def _dump(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under `prefix`, by its name without the prefix, with its content. The far
    tier's (app/store/lua/far.lua) by what it holds, not where: one call cuts a full leaf
    in pieces a bulk call's share of it does not make."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = client.type(key)
        name = key.decode()[len(prefix):]
        kept = re.match(r"(.*:far(?:leaf|when)):", name)
        if kept:
            merged = out.setdefault(kept.group(1), {})
            merged.update(client.hgetall(key) if kind == b"hash"
                          else dict(client.zrange(key, 0, -1, withscores=True)))
        elif name.endswith((":fartree", ":farheads")):
            continue  # the leaves' bounds and earliest due times: where the jobs are
        elif kind == b"hash":
            out[name] = client.hgetall(key)
        elif kind == b"zset":
            out[name] = client.zrange(key, 0, -1, withscores=True)
        else:
            out[name] = (kind, client.dump(key))
    return out


def _given(client: redis.Redis, store: Store) -> None:
    """What was there before: a paused app, a paused job, a leftover pause, a staged
    trigger, a run state, jobs that exist."""
    keys = store.keys
    for pk in keys.all_partitions():
        client.hset(pk.pausedapps, "paused-app", "1000")
    for name in ("old", "keep", "pj", "dup"):
        store.schedule(_job("app", name, data={"old": name}))
    for name, by in (("pj", "j|1234|5678"), ("gone", "j|1|2")):
        client.hset(keys.for_job(job_id("app", name)).paused, job_id("app", name), by)
    old = keys.for_job(job_id("app", "old"))
    client.hset(old.runs, job_id("app", "old"), "1|2|3||lease")
    client.zadd(old.staged("app"), {job_id("app", "old"): 5})


Entry = tuple[Job, bool, RunState | None]
PAUSED_APP: list[Entry] = [(_job("paused-app", f"p{n}", data=n), n == 1, None) for n in range(3)]
BATCHES: list[tuple[str, list[Entry]]] = [
    ("app", [
        (_job("app", "a", data={"k": [1, 2]}), False, None),
        (_job("app", "b", any_type=SEED_DATA["@type"], any_value="ChBSMi1EMjpPaWwgQ2hhbmdl"),
         False, None),
        (_job("app", "c", schedule="@every 1h", repeats=5, ttl="48h",
              expires_ms=4_071_081_600_000, catch_up=CatchUp.ALL,
              failure_policy=FailurePolicy(FailureKind.CONSTANT, 500, 2)), False, None),
        (_job("app", "old", data=2), True, None),  # overwrites, run state and staging gone
        (_job("app", "keep", data=3), False, None),  # exists: left as it is
        (_job("app", "pj", data=4), True, None),  # stays paused, due at its new time
        (_job("app", "gone"), False, None),  # the leftover pause is removed
        (_job("app", "restored", schedule="@every 1h"), False,
         RunState(4_070_908_800_000, 0, 2, 4_070_905_200_000)),
        (_job("app", "dup", data=5), False, None),  # exists already
        (_job("app", "new-dup", data=6), False, None),
        (_job("app", "new-dup", data=7), False, None),  # meets the entry before it
        (_job("app", "new-dup", data=8), True, None),
        (_job("app", "restored", data=9), True, None),  # its run state goes
        (_job("app", "pj", data=10), True, None),  # still paused, by this call's entry
    ] + [(_job("app", f"many-{n}", data=n), False, None) for n in range(40)]),
    ("paused-app", [*PAUSED_APP, (_job("paused-app", "p0", data=9), True, None)]),
]


def test_schedule_many_lua_stores_what_schedule_lua_stores(redis_server: RedisProcess) -> None:
    client: Any = redis.Redis.from_url(redis_server.url)
    one, many = (api_settings(redis_server.url, partitions=3) for _ in range(2))
    single, bulk = Store(one), Store(many)
    try:
        for store in (single, bulk):
            _given(client, store)
        for app_id, batch in BATCHES:
            expected: list[bytes | None] = []
            for job, overwrite, run in batch:
                jid = job_id(app_id, job.name)
                before = any_record(client, single.keys.for_job(jid), jid)
                try:
                    single.schedule(job, overwrite=overwrite, run=run)
                    expected.append(None)
                except JobExists:
                    expected.append(before)
            got = bulk.schedule_batch(app_id, [
                (job.name, job.encode(), job.first_ms, overwrite,
                 "" if run is None else run.encode()) for job, overwrite, run in batch])
            assert got == expected
            assert None in got and (app_id != "app" or len(set(got)) > 2)
        stored = _dump(client, single.settings.prefix)
        assert _dump(client, bulk.settings.prefix) == stored
        assert len(stored) >= 9  # every partition's keys, paused entries...
        pk = single.keys.for_job(job_id("app", "pj"))
        assert client.hget(pk.paused, job_id("app", "pj")) == b"j|1234|4070908800000"
        restored = job_id("app", "restored")
        assert not client.hexists(single.keys.for_job(restored).runs, restored)
        assert bulk.schedule_batch("app", []) == []
    finally:
        single.close()
        bulk.close()
        client.close()


def test_bulk_max_jobs_is_bounded() -> None:
    assert Settings(bulk_max_jobs=MAX_BULK_JOBS).bulk_max_jobs == MAX_BULK_JOBS
    with pytest.raises(SettingsError, match="JOBRUNNER_BULK_MAX_JOBS"):
        Settings.from_env({"JOBRUNNER_BULK_MAX_JOBS": str(MAX_BULK_JOBS + 1)})


def test_a_batch_that_brings_the_next_due_time_forward_wakes_the_workers(
        redis_server: RedisProcess) -> None:
    """Workers sleep until the earliest due job, or a message on the wake channel."""
    store = Store(api_settings(redis_server.url))
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)

    def woken() -> Any:
        message = pubsub.get_message(timeout=5)
        return message and message["data"]

    try:
        pubsub.subscribe(store.keys.wake_channel)
        assert woken() is None  # the subscription's own message, skipped
        late = _job("app", "late")
        early = dataclasses.replace(late, name="early", first_ms=1_000)
        for job, message in ((late, b"4070908800000"), (early, b"1000"), (late, b"marker")):
            store.schedule_batch("app", [(job.name, job.encode(), job.first_ms, True, "")])
            if message == b"marker":  # not earlier: nothing is sent before the marker
                store.redis.publish(store.keys.wake_channel, message)
            assert woken() == message
    finally:
        pubsub.close()
        store.close()
