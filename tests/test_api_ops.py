"""HTTP API contract: Redis down (503), the API token (401), app namespaces, and the
extensions (list with paging and prefix, delete by prefix, dead letters, /healthz,
/metrics, /openapi.json). design.md "The HTTP API" and "Guarantees".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app.api.factory import create_app
from app.settings import Settings
from app.store.keys import job_id
from tests.support.redis_proc import RedisProcess, free_port
from tests.test_api_helpers import (
    BASES,
    api_settings,
    assert_error,
    assert_no_content,
    assert_store_consistent,
    job_url,
    post_job,
)

REDIS_DOWN = "ERR_REDIS_UNAVAILABLE"


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    """No receiver: these tests deliver nothing (conftest's `app`, `client`, `base` use it)."""
    return api_settings(redis_server.url)


def names_in(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"jobs", "nextPageToken"}
    assert isinstance(body["nextPageToken"], str)
    return [job["name"] for job in body["jobs"]]


# --- Redis unreachable: 503 ---------------------------------------------------------------


@pytest.fixture
def down_client() -> Iterator[FlaskClient]:
    """An API whose Redis is a closed port on localhost."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="tdown",
                        app_url="http://127.0.0.1:9")
    with create_app(settings).test_client() as c:
        yield c


REDIS_ROUTES = [
    pytest.param("post", "{base}/job", {"json": {"dueTime": "1s"}}, id="schedule"),
    pytest.param("put", "{base}/job", {"json": {"schedule": "@daily"}}, id="schedule-put"),
    pytest.param("get", "{base}/job", {}, id="get"),
    pytest.param("delete", "{base}/job", {}, id="delete"),
    pytest.param("get", "{base}", {}, id="list"),
    pytest.param("delete", "{base}?prefix=j", {}, id="delete-prefix"),
]


@pytest.mark.parametrize(("method", "url", "kwargs"), REDIS_ROUTES)
def test_redis_unreachable_is_503_with_clear_error(down_client: FlaskClient, base: str,
                                                   method: str, url: str,
                                                   kwargs: dict[str, Any]) -> None:
    response = getattr(down_client, method)(url.format(base=base), **kwargs)
    err = assert_error(response, 503, REDIS_DOWN)
    assert "redis" in err["message"].lower()


def test_dead_letters_with_redis_unreachable_is_503(down_client: FlaskClient) -> None:
    assert_error(down_client.get("/v1.0-alpha1/deadletters"), 503, REDIS_DOWN)


def test_healthz_with_redis_unreachable_is_503(down_client: FlaskClient) -> None:
    assert_error(down_client.get("/healthz"), 503, REDIS_DOWN)


def test_bad_request_is_400_even_with_redis_unreachable(down_client: FlaskClient,
                                                        base: str) -> None:
    """Validation does not need Redis: the caller learns what is wrong with the request."""
    assert_error(post_job(down_client, base, "job", {}), 400, "DAPR_SCHEDULER_SCHEDULE_EMPTY")
    assert_error(post_job(down_client, base, "a/b", {"dueTime": "1s"}), 400)


def test_metrics_still_served_with_redis_unreachable(down_client: FlaskClient) -> None:
    response = down_client.get("/metrics")
    assert response.status_code == 200
    assert b"python_info" in response.get_data() or b"process_" in response.get_data()


def test_redis_restart_503_then_recovers(tmp_path: Path) -> None:
    """Redis goes away under a running API: 503, then the same API works again once it is
    back, with the job acknowledged before the outage still there (AOF)."""
    server = RedisProcess(tmp_path / "redis", aof=True)
    server.start()
    try:
        settings = api_settings(server.url)
        with create_app(settings).test_client() as client:
            assert client.get("/healthz").status_code == 200
            assert_no_content(post_job(client, BASES[0], "before", {"dueTime": "1h"}))
            server.stop()  # SIGTERM: AOF flushed
            assert_error(client.get(job_url(BASES[0], "before")), 503, REDIS_DOWN)
            assert_error(post_job(client, BASES[0], "during", {"dueTime": "1h"}), 503, REDIS_DOWN)
            assert_error(client.get("/healthz"), 503, REDIS_DOWN)
            server.start()
            assert client.get("/healthz").status_code == 200
            assert client.get(job_url(BASES[0], "before")).get_json()["dueTime"] == "1h"
            assert_error(client.get(job_url(BASES[0], "during")), 404)
            assert_no_content(post_job(client, BASES[0], "after", {"dueTime": "1h"}))
            check = redis.Redis.from_url(server.url)
            try:
                assert assert_store_consistent(check, settings) == {
                    job_id(settings.app_id, "before"), job_id(settings.app_id, "after")}
            finally:
                check.close()
    finally:
        server.stop()


def test_healthz_with_redis_up(client: FlaskClient, settings: Settings) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "appId": settings.app_id}


# --- DAPR_API_TOKEN: 401 ----------------------------------------------------------------

TOKEN = "s3cr3t-t0ken"


@pytest.fixture
def token_client(redis_server: RedisProcess) -> Iterator[tuple[FlaskClient, Settings]]:
    settings = api_settings(redis_server.url, api_token=TOKEN)
    with create_app(settings).test_client() as c:
        yield c, settings


TOKEN_ROUTES = [
    pytest.param("post", "{base}/job", {"json": {"dueTime": "1h"}}, 204, id="schedule"),
    pytest.param("get", "{base}/job", {}, 404, id="get"),
    pytest.param("delete", "{base}/job", {}, 204, id="delete"),
    pytest.param("get", "{base}", {}, 200, id="list"),
    pytest.param("delete", "{base}?prefix=", {}, 200, id="delete-prefix"),
    pytest.param("get", "/v1.0-alpha1/deadletters", {}, 200, id="dead-letters"),
]


@pytest.mark.parametrize(("method", "url", "kwargs", "ok_status"), TOKEN_ROUTES)
@pytest.mark.parametrize("given", [None, "", "wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper()],
                         ids=["missing", "empty", "wrong", "longer", "shorter", "case"])
def test_missing_or_wrong_token_is_401(token_client: tuple[FlaskClient, Settings], base: str,
                                       method: str, url: str, kwargs: dict[str, Any],
                                       ok_status: int, given: str | None,
                                       redis_client: redis.Redis) -> None:
    client, settings = token_client
    headers = {} if given is None else {"dapr-api-token": given}
    response = getattr(client, method)(url.format(base=base), headers=headers, **kwargs)
    assert_error(response, 401, "ERR_UNAUTHORIZED")
    assert assert_store_consistent(redis_client, settings) == set()


@pytest.mark.parametrize(("method", "url", "kwargs", "ok_status"), TOKEN_ROUTES)
def test_right_token_is_accepted(token_client: tuple[FlaskClient, Settings], base: str,
                                 method: str, url: str, kwargs: dict[str, Any],
                                 ok_status: int) -> None:
    client, _ = token_client
    response = getattr(client, method)(url.format(base=base),
                                       headers={"dapr-api-token": TOKEN}, **kwargs)
    assert response.status_code == ok_status, response.get_data(as_text=True)


def test_token_header_name_is_case_insensitive(token_client: tuple[FlaskClient, Settings],
                                               base: str) -> None:
    client, _ = token_client
    response = post_job(client, base, "job", {"dueTime": "1h"},
                        headers={"Dapr-Api-Token": TOKEN})
    assert_no_content(response)
    got = client.get(job_url(base, "job"), headers={"DAPR-API-TOKEN": TOKEN})
    assert got.status_code == 200


# /metrics needs the token when one is set: tests/test_hardening.py.
@pytest.mark.parametrize("path", ["/healthz", "/openapi.json"])
def test_probe_paths_need_no_token(token_client: tuple[FlaskClient, Settings], path: str) -> None:
    client, _ = token_client
    assert client.get(path).status_code == 200


def test_token_checked_before_the_body(token_client: tuple[FlaskClient, Settings],
                                       base: str) -> None:
    """An unauthenticated caller learns nothing about its request's validity."""
    client, _ = token_client
    assert_error(post_job(client, base, "a/b", b"{"), 401, "ERR_UNAUTHORIZED")
    assert_error(client.get(f"{base}/"), 401, "ERR_UNAUTHORIZED")


def test_no_token_configured_ignores_the_header(client: FlaskClient, base: str) -> None:
    assert_no_content(post_job(client, base, "job", {"dueTime": "1h"},
                               headers={"dapr-api-token": "anything"}))


# --- app namespaces -----------------------------------------------------------------------


@pytest.fixture
def two_apps(redis_server: RedisProcess) -> Iterator[tuple[FlaskClient, FlaskClient, Settings]]:
    shared = api_settings(redis_server.url)
    a = create_app(shared.with_(app_id="app-a")).test_client()
    b = create_app(shared.with_(app_id="app-b", app_url="http://127.0.0.1:10")).test_client()
    yield a, b, shared


def test_each_app_sees_only_its_own_jobs(two_apps: tuple[FlaskClient, FlaskClient, Settings],
                                         base: str, redis_client: redis.Redis) -> None:
    a, b, shared = two_apps
    assert_no_content(post_job(a, base, "x", {"dueTime": "1h", "data": "from a"}))
    assert_no_content(post_job(b, base, "x", {"dueTime": "2h", "data": "from b"}))  # no 409
    assert a.get(job_url(base, "x")).get_json()["data"] == "from a"
    assert b.get(job_url(base, "x")).get_json()["data"] == "from b"
    assert_no_content(post_job(a, base, "only-a", {"dueTime": "1h"}))
    assert_error(b.get(job_url(base, "only-a")), 404)
    assert sorted(names_in(a.get(base))) == ["only-a", "x"]
    assert names_in(b.get(base)) == ["x"]

    assert_no_content(b.delete(job_url(base, "only-a")))  # not b's: nothing happens
    assert a.get(job_url(base, "only-a")).status_code == 200
    assert_no_content(a.delete(job_url(base, "x")))
    assert_error(a.get(job_url(base, "x")), 404)
    assert b.get(job_url(base, "x")).get_json()["data"] == "from b"
    assert assert_store_consistent(redis_client, shared) == {"app-a/only-a", "app-b/x"}


def test_delete_by_prefix_stays_in_its_app(two_apps: tuple[FlaskClient, FlaskClient, Settings],
                                           base: str) -> None:
    a, b, _ = two_apps
    for client in (a, b):
        for name in ("x1", "x2", "y"):
            assert_no_content(post_job(client, base, name, {"dueTime": "1h"}))
    response = a.delete(base, query_string={"prefix": ""})
    assert response.status_code == 200
    assert response.get_json() == {"deleted": 3}
    assert names_in(a.get(base)) == []
    assert sorted(names_in(b.get(base))) == ["x1", "x2", "y"]


def test_overwrite_is_per_app(two_apps: tuple[FlaskClient, FlaskClient, Settings],
                              base: str) -> None:
    a, b, _ = two_apps
    assert_no_content(post_job(a, base, "x", {"dueTime": "1h"}))
    assert_no_content(post_job(b, base, "x", {"dueTime": "1h"}))
    # Another job for the name (the same request again is a retry: 204, test_hardening).
    assert_error(post_job(a, base, "x", {"dueTime": "2h"}), 409)
    assert_error(post_job(b, base, "x", {"dueTime": "2h"}), 409)


def test_app_id_that_cannot_namespace_is_refused() -> None:
    """An app id with '/' would let two apps' job ids collide."""
    with pytest.raises(ValueError):
        create_app(Settings(app_id="a/b", redis_url=f"redis://127.0.0.1:{free_port()}/0"))


# --- list jobs: paging and prefix ------------------------------------------------------


def page_through(client: FlaskClient, base: str, limit: int, prefix: str | None = None,
                 max_pages: int = 1000) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    for _ in range(max_pages):
        query: dict[str, Any] = {"limit": limit}
        if token:
            query["pageToken"] = token
        if prefix is not None:
            query["prefix"] = prefix
        response = client.get(base, query_string=query)
        names = names_in(response)
        pages.append(names)
        new_token = response.get_json()["nextPageToken"]
        if not new_token:
            return pages
        assert new_token != token, "the same page token twice: paging would never end"
        token = new_token
    raise AssertionError(f"more than {max_pages} pages")


def test_list_empty(client: FlaskClient, base: str) -> None:
    response = client.get(base)
    assert response.status_code == 200
    assert response.get_json() == {"jobs": [], "nextPageToken": ""}


def test_list_answers_jobs_as_get_does(client: FlaskClient, base: str) -> None:
    assert_no_content(post_job(client, base, "one", {"schedule": "@daily", "data": {"k": 1},
                                                     "failurePolicy": {"drop": {}}}))
    listed = client.get(base).get_json()["jobs"]
    assert listed == [client.get(job_url(base, "one")).get_json()]


def test_list_filters_by_name_prefix(client: FlaskClient, base: str) -> None:
    for name in ("report-daily", "report-weekly", "reports", "cleanup", "Report-x", "rep*rt",
                 "rep[1]"):
        assert_no_content(post_job(client, base, name, {"dueTime": "1h"}))
    assert sorted(names_in(client.get(base, query_string={"prefix": "report-"}))) == [
        "report-daily", "report-weekly"]
    assert sorted(names_in(client.get(base, query_string={"prefix": "report"}))) == [
        "report-daily", "report-weekly", "reports"]
    # Glob characters are literal.
    assert names_in(client.get(base, query_string={"prefix": "rep*"})) == ["rep*rt"]
    assert names_in(client.get(base, query_string={"prefix": "rep["})) == ["rep[1]"]
    assert names_in(client.get(base, query_string={"prefix": "nothing"})) == []
    assert len(names_in(client.get(base, query_string={"prefix": ""}))) == 7


@pytest.mark.parametrize(("jobs", "limit"), [(5, 2), (7, 1), (10, 10), (300, 100), (250, 7)])
def test_list_pages_hold_at_most_limit_and_cover_every_job_once(
    client: FlaskClient, base: str, jobs: int, limit: int
) -> None:
    expected = {f"job-{i:04d}" for i in range(jobs)}
    for name in expected:
        assert_no_content(post_job(client, base, name, {"dueTime": "1h"}))
    pages = page_through(client, base, limit)
    for page in pages:
        assert len(page) <= limit, f"a page of {len(page)} jobs for limit={limit}"
    seen = [name for page in pages for name in page]
    assert sorted(seen) == sorted(expected), "every job exactly once"


def test_list_paging_over_partitions(redis_server: RedisProcess, base: str) -> None:
    settings = api_settings(redis_server.url, partitions=4)
    with create_app(settings).test_client() as client:
        expected = {f"p{i}" for i in range(40)}
        for name in expected:
            assert_no_content(post_job(client, base, name, {"dueTime": "1h"}))
        pages = page_through(client, base, 7)
        assert all(len(page) <= 7 for page in pages)
        seen = [name for page in pages for name in page]
        assert sorted(seen) == sorted(expected)


def test_list_paging_with_prefix(client: FlaskClient, base: str) -> None:
    for i in range(150):
        assert_no_content(post_job(client, base, f"{'a' if i % 2 else 'b'}-{i}", {"dueTime": "1h"}))
    pages = page_through(client, base, 20, prefix="a-")
    seen = [name for page in pages for name in page]
    assert sorted(seen) == sorted(f"a-{i}" for i in range(1, 150, 2))


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "abc", "1.5", ""])
def test_list_bad_limit_is_400(client: FlaskClient, base: str, limit: str) -> None:
    assert_error(client.get(base, query_string={"limit": limit}), 400)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("x", id="word"),
        pytest.param("0.x", id="bad-cursor"),
        pytest.param("-3.0", id="negative-partition"),
        pytest.param("-100000.0", id="huge-negative-partition"),
        pytest.param("5.0", id="partition-out-of-range"),
        pytest.param("0.-5", id="negative-cursor"),
        pytest.param("0.99999999999999999999999", id="cursor-over-uint64"),
    ],
)
def test_list_bad_page_token_is_400(client: FlaskClient, base: str, token: str) -> None:
    for i in range(3):
        assert_no_content(post_job(client, base, f"j{i}", {"dueTime": "1h"}))
    assert_error(client.get(base, query_string={"pageToken": token}), 400)


# --- delete by prefix ---------------------------------------------------------------------


def test_delete_by_prefix(client: FlaskClient, base: str, settings: Settings,
                          redis_client: redis.Redis) -> None:
    for name in ("tmp-1", "tmp-2", "tmp-3", "keep", "tmpx"):
        assert_no_content(post_job(client, base, name, {"schedule": "@every 1m"}))
    response = client.delete(base, query_string={"prefix": "tmp-"})
    assert response.status_code == 200
    assert response.get_json() == {"deleted": 3}
    assert sorted(names_in(client.get(base))) == ["keep", "tmpx"]
    assert_error(client.get(job_url(base, "tmp-1")), 404)
    assert assert_store_consistent(redis_client, settings) == {
        job_id(settings.app_id, "keep"), job_id(settings.app_id, "tmpx")}
    again = client.delete(base, query_string={"prefix": "tmp-"})
    assert again.get_json() == {"deleted": 0}


def test_delete_by_prefix_many_jobs_over_partitions(redis_server: RedisProcess, base: str,
                                                    redis_client: redis.Redis) -> None:
    settings = api_settings(redis_server.url, partitions=3)
    with create_app(settings).test_client() as client:
        for i in range(600):
            assert_no_content(post_job(client, base, f"bulk-{i}", {"dueTime": "1h"}))
        assert_no_content(post_job(client, base, "other", {"dueTime": "1h"}))
        response = client.delete(base, query_string={"prefix": "bulk-"})
        assert response.get_json() == {"deleted": 600}
        assert assert_store_consistent(redis_client, settings) == {
            job_id(settings.app_id, "other")}


def test_delete_by_prefix_glob_characters_are_literal(client: FlaskClient, base: str) -> None:
    for name in ("a*b", "axb", "a[b]"):
        assert_no_content(post_job(client, base, name, {"dueTime": "1h"}))
    assert client.delete(base, query_string={"prefix": "a*"}).get_json() == {"deleted": 1}
    assert client.delete(base, query_string={"prefix": "a["}).get_json() == {"deleted": 1}
    assert names_in(client.get(base)) == ["axb"]


def test_delete_by_prefix_needs_the_prefix_parameter(client: FlaskClient, base: str) -> None:
    assert_no_content(post_job(client, base, "survivor", {"dueTime": "1h"}))
    assert_error(client.delete(base), 400, "ERR_MALFORMED_REQUEST")
    assert names_in(client.get(base)) == ["survivor"]


# --- metrics ----------------------------------------------------------------------------


def test_metrics_prometheus_text(client: FlaskClient, base: str) -> None:
    for name in ("m1", "m2"):
        assert_no_content(post_job(client, base, name, {"dueTime": "1h"}))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert re.search(r"^# TYPE jobrunner_\w+ \w+$", text, re.MULTILINE)
    assert re.search(r'^jobrunner_store_size\{what="jobs"\} 2\.0$', text, re.MULTILINE), text
    assert re.search(r'^jobrunner_store_size\{what="due_index"\} 2\.0$', text, re.MULTILINE)
    assert re.search(r'^jobrunner_store_size\{what="dead_letters"\} 0\.0$', text, re.MULTILINE)
    # Every sample line parses as Prometheus text: name{labels} value.
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEinfNa]+$')
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert sample.match(line), line


# --- the OpenAPI document -------------------------------------------------------------------


def openapi_doc(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    doc = json.loads(response.get_data())
    assert isinstance(doc, dict)
    return doc


def _flask_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_is_openapi_3(client: FlaskClient) -> None:
    doc = openapi_doc(client)
    assert re.fullmatch(r"3\.\d+\.\d+", doc["openapi"])
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["paths"]


def test_openapi_documents_every_route(app: Flask, client: FlaskClient) -> None:
    doc = openapi_doc(client)
    documented = {(path, method.upper()) for path, item in doc["paths"].items()
                  for method in item if method in {"get", "put", "post", "delete", "patch"}}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue  # Flask's own; see test_no_static_files_are_served
        if rule.endpoint.startswith("ui."):
            continue  # the dashboard's HTML pages (app/ui, tests/test_dashboard.py)
        for method in rule.methods or ():
            if method not in {"HEAD", "OPTIONS"}:
                served.add((_flask_path(rule.rule), method))
    assert served - documented == set(), "routes missing from app/openapi.json"
    assert documented - served == set(), "documented routes the app does not serve"


def test_openapi_operations_are_complete(client: FlaskClient) -> None:
    doc = openapi_doc(client)
    operation_ids = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            operation_ids.append(op["operationId"])
            assert op["responses"], (path, method)
            for status, resp in op["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]", status), (path, method, status)
                assert resp["description"]
                if int(status) >= 400:
                    schema = resp["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method)
            params = {p["name"] if "name" in p else p["$ref"] for p in op.get("parameters", [])}
            for name in re.findall(r"\{(\w+)\}", path):
                assert name in params or "#/components/parameters/JobName" in params
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


def test_openapi_documents_the_status_codes_of_the_job_routes(client: FlaskClient) -> None:
    doc = openapi_doc(client)
    for base in BASES:
        item = doc["paths"][f"{base}/{{name}}"]
        assert set(item["post"]["responses"]) >= {"204", "400", "401", "409", "413", "503"}
        assert set(item["get"]["responses"]) >= {"200", "400", "401", "404", "500", "503"}
        assert set(item["delete"]["responses"]) >= {"204", "400", "401", "503"}
        body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/JobRequest"}
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"errorCode", "message"}
    request = doc["components"]["schemas"]["JobRequest"]["properties"]
    assert set(request) >= {"data", "schedule", "dueTime", "due_time", "repeats", "ttl",
                            "overwrite", "failurePolicy", "failure_policy"}
    job = doc["components"]["schemas"]["Job"]["properties"]
    assert set(job) >= {"name", "schedule", "dueTime", "ttl", "repeats", "data", "failurePolicy",
                        "status", "nextTriggerTime", "lastTriggerTime", "triggerCount"}


def test_openapi_refs_resolve(client: FlaskClient) -> None:
    doc = openapi_doc(client)

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    refs = list(walk(doc))
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            assert part in target, ref
            target = target[part]


def test_openapi_is_valid_per_openapi_spec_validator(client: FlaskClient) -> None:
    import openapi_spec_validator

    openapi_spec_validator.validate(openapi_doc(client))


# That an installed (wheel) jobrunner carries openapi.json and the Lua scripts as package
# data, and serves them: tests/test_user_project.py.


# --- nothing served by accident ------------------------------------------------------------


def test_no_static_files_are_served(redis_server: RedisProcess, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Flask's default /static/<file> route would serve files from the working directory's
    `static/` folder: the API must not."""
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "secret.txt").write_text("secret")
    monkeypatch.chdir(tmp_path)
    app = create_app(api_settings(redis_server.url))
    with app.test_client() as client:
        response = client.get("/static/secret.txt")
        assert response.status_code == 404
        assert b"secret" not in response.get_data()


def test_openapi_job_schema_matches_get_answers(client: FlaskClient, base: str) -> None:
    doc = openapi_doc(client)
    schema = doc["components"]["schemas"]["Job"]
    assert_no_content(post_job(client, base, "full", {
        "schedule": "@every 1m", "dueTime": "1h", "ttl": "2h", "repeats": 3, "data": {"k": 1},
        "failurePolicy": {"constant": {"interval": "2s", "maxRetries": 1}}}))
    job = client.get(job_url(base, "full")).get_json()
    assert set(job) <= set(schema["properties"]), set(job) - set(schema["properties"])
    assert set(schema["required"]) <= set(job)
    assert job["status"] in schema["properties"]["status"]["enum"]
