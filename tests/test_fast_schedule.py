"""The schedule shortcut (app/api/fast_schedule.py) answers as Flask does.

`POST`/`PUT .../jobs/{name}` skips Flask's per-request machinery; it must not change a
byte of what the API answers, stores or counts. Each request below goes to two apps on
the same Redis, one with the shortcut on and one with it off (their own key prefixes, the
same app id), and the two answers (status, headers, body), the requests counted in
/metrics and the stored jobs must be the same; the shortcut must have served the plain
requests itself. A third test keeps it on in the API as built: a hook or a route added
around that path turns it off (app/api/fast_schedule.py, `arm`), and this test says so.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import threading
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from flask import Flask
from google.protobuf import struct_pb2
from prometheus_client import REGISTRY

from app.api.factory import create_app
from app.api.fast_schedule import ScheduleShortcut
from app.settings import Settings
from app.store.keys import Keys
from tests.support.far import all_records
from tests.support.redis_proc import RedisProcess, free_port

TOKEN = "s3cret-token"
DUE = "2099-01-01T00:00:00Z"
JSON = {"Content-Type": "application/json"}


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# (method, path, body, headers, whether the shortcut may serve it). Times are absolute,
# so that the two apps store the same bytes.
CORPUS: list[tuple[str, str, bytes | None, dict[str, str], bool]] = [
    ("POST", "/v1.0-alpha1/jobs/a", _body(dueTime=DUE, data={"x": 1}), JSON, True),
    ("POST", "/v1.0-alpha1/jobs/a", _body(dueTime=DUE, data={"x": 1}), JSON, True),  # retry
    ("POST", "/v1.0-alpha1/jobs/a", _body(dueTime=DUE, data={"x": 2}), JSON, True),  # 409
    ("PUT", "/v1.0/jobs/a", _body(dueTime=DUE, data={"x": 2}, overwrite=True), JSON, True),
    ("POST", "/v1.0/jobs/seed", _body(dueTime=DUE, data={
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": "R2-D2:Oil Change"}), {}, True),  # no Content-Type: JSON, as Dapr reads it
    ("POST", "/v1.0/jobs/every", _body(schedule="@every 5s", repeats=3, ttl="1h",
                                                  dueTime=DUE), JSON, True),
    ("POST", "/v1.0/jobs/cron", _body(schedule="TZ=Europe/Berlin 0 30 9 * * MON-FRI", dueTime=DUE),
     {"Content-Type": "text/plain"}, True),
    ("POST", "/v1.0/jobs/%20padded%20", _body(dueTime=DUE), JSON, True),
    ("POST", "/v1.0/jobs/caf%C3%A9", _body(dueTime=DUE), JSON, True),
    ("POST", "/v1.0/jobs/bad%E9", _body(dueTime=DUE), JSON, True),
    ("POST", "/v1.0/jobs/x", b"{not json", JSON, True),
    ("POST", "/v1.0/jobs/x", b"", JSON, True),
    ("POST", "/v1.0/jobs/x", _body(data=1), JSON, True),  # neither schedule nor dueTime
    ("POST", "/v1.0/jobs/x", _body(dueTime="soon"), JSON, True),
    ("POST", "/v1.0/jobs/x", _body(dueTime=DUE, name="x"), JSON, True),
    ("POST", "/v1.0/jobs/x", _body(dueTime=DUE, data="d" * 2_000_000), JSON, True),  # 413
    ("POST", "/v1.0/jobs/" + "n" * 300, _body(dueTime=DUE), JSON, False),
    ("POST", "/v1.0/jobs/%20", _body(dueTime=DUE), JSON, False),
    ("POST", "/v1.0/jobs/a%2Fb", _body(dueTime=DUE), JSON, False),
    ("POST", "/v1.0/jobs/a/history", b"", JSON, False),
    ("POST", "/v1.0/jobs/", _body(dueTime=DUE), JSON, False),
    ("POST", "/v1.0/jobs", _body(dueTime=DUE), JSON, False),
    ("PATCH", "/v1.0/jobs/a", _body(dueTime=DUE), JSON, False),
    ("POST", "/v1.0/jobs/c", _body(dueTime=DUE), {**JSON, "Cookie": "session=x"}, False),
    # without a token: another site's page, by a rebound name or its Origin (a 403)
    ("POST", "/v1.0/jobs/r", _body(dueTime=DUE), {**JSON, "Host": "attacker.example"}, False),
    ("POST", "/v1.0/jobs/o", _body(dueTime=DUE), {**JSON, "Origin": "https://a.example"}, False),
    ("GET", "/v1.0/jobs/a", None, {}, False),
    ("DELETE", "/v1.0/jobs/cron", None, {}, False),
]


def _app(redis_url: str, token: str) -> tuple[Flask, ScheduleShortcut, Settings]:
    settings = Settings(redis_url=redis_url, prefix=f"t{uuid.uuid4().hex[:10]}",
                        app_id="fast", app_url="http://127.0.0.1:9", api_token=token)
    app = create_app(settings)
    return app, _shortcut(app), settings


def _shortcut(app: Flask) -> ScheduleShortcut:
    counter: Any = app.wsgi_app  # the metrics' counter, around the shortcut
    shortcut = counter.wsgi_app
    assert isinstance(shortcut, ScheduleShortcut)
    return shortcut


def _counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The API's request counters as /metrics has them (the latency histograms' counts)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in REGISTRY.collect() if family.name.startswith("jobrunner_http_")
            for s in family.samples if s.name.endswith(("_total", "_count"))}


def _delta(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def _jobs(app: Flask, settings: Settings) -> dict[bytes, bytes]:
    store = app.view_functions["jobs.get_0"]  # keep the app alive meanwhile
    assert store is not None
    from app.store.store import Store

    client = Store(settings)
    try:
        jobs: dict[bytes, bytes] = {}
        for pk in Keys(settings.prefix, settings.partitions).all_partitions():
            jobs.update(all_records(client.redis, pk))  # near or far
        return jobs
    finally:
        client.close()


def _counting(shortcut: ScheduleShortcut) -> list[str]:
    """Record the paths the shortcut hands to Flask."""
    handed: list[str] = []
    flask: Callable[..., Any] = shortcut.flask_wsgi

    def to_flask(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        handed.append(environ["PATH_INFO"])
        return flask(environ, start_response)

    shortcut.flask_wsgi = to_flask
    return handed


def test_the_shortcut_is_on_in_the_api_as_built(redis_server: RedisProcess) -> None:
    """Off means a hook or a route around POST .../jobs/{name} that app/api/
    fast_schedule.py does not know: teach it (and the corpus above), or drop it."""
    _, shortcut, _ = _app(redis_server.url, "")
    assert shortcut.armed


@pytest.mark.parametrize("token", ["", TOKEN])
def test_answers_counts_and_stored_jobs_are_flasks(redis_server: RedisProcess,
                                                   token: str) -> None:
    fast_app, fast, fast_settings = _app(redis_server.url, token)
    slow_app, slow, slow_settings = _app(redis_server.url, token)
    slow.disarm()
    assert fast.armed and not slow.armed
    handed = _counting(fast)
    tokens = [{}, {"dapr-api-token": "wrong"}, {"dapr-api-token": TOKEN}] if token else [{}]
    served = 0
    fast_client, slow_client = fast_app.test_client(), slow_app.test_client()
    for given in tokens:
        for method, path, body, headers, plain in CORPUS:
            answers = []
            handed.clear()
            for client in (fast_client, slow_client):
                before = _counted()
                response = client.open(path, method=method, data=body,
                                       headers={**headers, **given})
                answers.append((response.status, sorted(response.headers.items()),
                                response.get_data(), _delta(before, _counted())))
            assert answers[0] == answers[1], (method, path, given)
            if plain and given.get("dapr-api-token", "") == token and \
                    answers[0][0] == "204 NO CONTENT":
                assert not handed, path  # answered by the shortcut alone
                served += 1
    assert served >= 5
    stored = _jobs(fast_app, fast_settings)
    assert stored and stored == _jobs(slow_app, slow_settings)


def test_an_error_from_redis_is_flasks_503(redis_server: RedisProcess) -> None:
    """Redis gone after the app was built: the shortcut hands the error to Flask, which
    answers 503, once (the write is not tried again)."""
    answers = []
    for armed in (True, False):
        settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                            prefix=f"t{uuid.uuid4().hex[:10]}", app_id="fast",
                            app_url="http://127.0.0.1:9")
        app = create_app(settings)
        shortcut = _shortcut(app)
        if not armed:
            shortcut.disarm()
        assert shortcut.armed is armed
        before = _counted()
        response = app.test_client().post("/v1.0/jobs/down", data=_body(dueTime=DUE),
                                          headers=JSON)
        answers.append((response.status, sorted(response.headers.items()),
                        response.get_json()["errorCode"], _delta(before, _counted())))
    assert answers[0] == answers[1]
    assert answers[0][0] == "503 SERVICE UNAVAILABLE" and answers[0][2] == "ERR_REDIS_UNAVAILABLE"


# -- the event-loop path (on_loop, behind the RSGI bridge) --------------------------------


class _Scope:
    """What granian's RSGI scope gives the bridge (app/processes/wsgi_bridge.py)."""

    proto, http_version, scheme = "http", "1.1", "http"
    server, client, query_string = "127.0.0.1:3500", "127.0.0.1:50000", ""

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method, self.path, self.headers = method, path, headers


class _Proto:
    """granian's protocol object: the body, and the one answer."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.answer: tuple[int, list[tuple[str, str]], bytes] | None = None

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answer = (status, headers, body)


def _served_on_loop(app: Flask) -> tuple[Any, list[str]]:
    """The app behind the bridge with the shortcut's event-loop path, as `jobrunner api`
    serves it; the paths that reached the WSGI app (the pool) are recorded."""
    from app.processes.wsgi_bridge import WsgiOnRsgi

    shortcut = _shortcut(app)
    assert shortcut.use_loop()
    pooled: list[str] = []

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        pooled.append(environ["PATH_INFO"])
        return app(environ, start_response)

    bridge = WsgiOnRsgi(wsgi, threads=2, body_timeout_s=5.0,
                        max_body_bytes=int(app.config["MAX_CONTENT_LENGTH"]),
                        multiprocess=False, fast=shortcut.on_loop)
    return bridge, pooled


def _over_bridge(bridge: Any, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    async def one() -> tuple[int, list[tuple[str, str]], bytes]:
        given = {k.lower(): v for k, v in headers.items()}
        if body is not None:
            given["content-length"] = str(len(body))
        from urllib.parse import unquote

        proto = _Proto(body or b"")
        await bridge.__rsgi__(_Scope(method, unquote(path), given), proto)
        assert proto.answer is not None
        return proto.answer

    return asyncio.run_coroutine_threadsafe(one(), bridge.test_loop).result(30)


@pytest.fixture
def loop_thread() -> Any:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.mark.parametrize("token", ["", TOKEN])
def test_the_event_loop_path_answers_counts_and_stores_as_flask(
        redis_server: RedisProcess, loop_thread: Any, token: str) -> None:
    """Behind the RSGI bridge, the shortcut's on_loop answers the plain requests itself,
    with no thread, and leaves the rest to the WSGI path: every answer, count and stored
    job as Flask's alone. Redis forgetting its scripts (a restart) costs one request the
    WSGI path, not an error."""
    import redis as redis_lib

    fast_app, _, fast_settings = _app(redis_server.url, token)
    slow_app, slow, slow_settings = _app(redis_server.url, token)
    slow.disarm()
    bridge, pooled = _served_on_loop(fast_app)
    bridge.test_loop = loop_thread
    bridge.__rsgi_init__(loop_thread)
    slow_client = slow_app.test_client()
    on_loop = 0
    try:
        given = {"dapr-api-token": TOKEN} if token else {}
        for n, (method, path, body, headers, plain) in enumerate(CORPUS):
            if n == 4:
                redis_lib.Redis.from_url(redis_server.url).script_flush()
            pooled.clear()
            before = _counted()
            status, head, payload = _over_bridge(bridge, method, path, body,
                                                 {**headers, **given})
            fast = (status, sorted((k.lower(), v) for k, v in head), payload,
                    _delta(before, _counted()))
            before = _counted()
            response = slow_client.open(path, method=method, data=body, headers={**headers,
                                                                                 **given})
            slow_answer = (response.status_code,
                           sorted((k.lower(), v) for k, v in response.headers.items()),
                           response.get_data(), _delta(before, _counted()))
            assert fast == slow_answer, (method, path)
            # Not on the loop: a job that exists (the retry, n 1), the script forgotten (4).
            if plain and status == 204 and n not in (1, 4):
                assert not pooled, path  # answered on the loop
                on_loop += 1
            elif n in (1, 4):
                assert pooled == [path.replace("%20", " ")]
    finally:
        bridge.__rsgi_del__(loop_thread)
    assert on_loop >= 5
    stored = _jobs(fast_app, fast_settings)
    assert stored and stored == _jobs(slow_app, slow_settings)


def test_a_value_to_render_is_checked_on_the_wsgi_path_not_the_loop(
        redis_server: RedisProcess, loop_thread: Any) -> None:
    """Checking that a google.protobuf.Value renders as the body of a `raw` app took the
    loop up to 0.1 s a request (every request of the process waited)."""
    settings = Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                        app_id="fast-raw", app_url="http://127.0.0.1:9", delivery_format="raw")
    bridge, pooled = _served_on_loop(create_app(settings))
    bridge.test_loop = loop_thread
    bridge.__rsgi_init__(loop_thread)
    value_url = "type.googleapis.com/google.protobuf.Value"
    try:
        for name, value, status in (
                ("plain", None, 204),
                ("fine", struct_pb2.Value(number_value=1.5), 204),
                ("nan", struct_pb2.Value(number_value=math.nan), 400)):
            pooled.clear()
            body: dict[str, Any] = {"dueTime": "1h", "data": {"k": 1}}
            if value is not None:
                body["data"] = {"@type": value_url, "@bytes": base64.b64encode(
                    value.SerializeToString()).decode()}
            path = f"/v1.0-alpha1/jobs/{name}"
            answer = _over_bridge(bridge, "POST", path, orjson.dumps(body),
                                  {"content-type": "application/json"})
            assert answer[0] == status, answer
            assert pooled == ([] if value is None else [path])
    finally:
        bridge.__rsgi_del__(loop_thread)


def test_the_event_loop_path_leaves_redis_trouble_to_the_wsgi_path(
        redis_server: RedisProcess, loop_thread: Any) -> None:
    """Redis away: the loop path declines, the WSGI path answers its 503 (as Flask does).
    A Redis that never answers: after the client's socket timeout, Flask answers the
    timeout (503) at once, as the WSGI path would have, without a second wait."""
    import socket

    from app.store.loop_redis import LoopRedis

    away = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                    prefix=f"t{uuid.uuid4().hex[:10]}", app_id="fast",
                    app_url="http://127.0.0.1:9")
    up, _, _ = _app(redis_server.url, "")
    with socket.socket() as silent:  # accepts, reads, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent_port = silent.getsockname()[1]
        answers = []
        for app in (create_app(away), up):
            bridge, pooled = _served_on_loop(app)
            if app is up:
                _shortcut(app)._loop_redis = LoopRedis(
                    "127.0.0.1", silent_port, reply_timeout_s=0.2)
            bridge.test_loop = loop_thread
            bridge.__rsgi_init__(loop_thread)
            try:
                status, _, payload = _over_bridge(bridge, "POST", "/v1.0/jobs/down",
                                                  _body(dueTime=DUE), JSON)
            finally:
                bridge.__rsgi_del__(loop_thread)
            answers.append((status, json.loads(payload), pooled))
    for status, body, pooled in answers:
        assert status == 503 and body["errorCode"] == "ERR_REDIS_UNAVAILABLE", body
        assert pooled == ["/v1.0/jobs/down"]
    assert answers[1][1]["message"].endswith(
        f"Timeout reading from 127.0.0.1:{silent_port}"), answers[1][1]


def test_the_event_loop_path_is_off_when_writes_wait_for_replicas(
        redis_server: RedisProcess) -> None:
    """JOBRUNNER_WAIT_REPLICAS: every write is followed by WAIT (app/store/redis_wait.py),
    which the loop's client does not do: the schedule request stays on the WSGI path."""
    settings = Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                        app_id="fast", app_url="http://127.0.0.1:9", wait_replicas=1)
    shortcut = _shortcut(create_app(settings))
    assert shortcut.armed and not shortcut.use_loop()


def test_only_the_bulk_route_has_its_larger_body_read() -> None:
    """The bridge reads a body up to the API's limit, and up to the bulk limit only on the
    bulk route (POST on the collection): any other route's larger body is refused (413) by
    its Content-Length, never read into memory."""
    from app.processes.wsgi_bridge import WsgiOnRsgi

    def never(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        raise AssertionError("not called")

    bridge = WsgiOnRsgi(never, threads=1, body_timeout_s=5.0, max_body_bytes=10,
                        larger_bodies={("POST", "/v1.0/jobs"): 100})

    def read(method: str, path: str, size: int) -> tuple[bytes, bool]:
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(size)}
        return asyncio.run(bridge._read_body(environ, _Proto(b"x" * size)))

    assert read("POST", "/v1.0/jobs", 50) == (b"x" * 50, True)
    assert read("POST", "/v1.0/jobs", 101) == (b"", False)
    assert read("POST", "/v1.0/jobs/name", 50) == (b"", False)
    assert read("DELETE", "/v1.0/jobs", 50) == (b"", False)
    assert read("POST", "/v1.0/jobs/name", 10) == (b"x" * 10, True)
