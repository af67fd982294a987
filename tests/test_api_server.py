"""HTTP API contract through a real HTTP server and raw sockets.

What the test client cannot show: a request with no Content-Type header at
all (as Go's http.NewRequest sends it), percent-encoding on the wire, chunked
bodies, the exact bytes of the answers, and the seed's request as it is sent.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.serving import BaseWSGIServer, make_server

from app.api.factory import create_app
from app.settings import Settings
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.seed import SEED_BODY
from tests.support.waiting import wait_for
from tests.test_api_helpers import STRING_VALUE, api_settings, assert_store_consistent


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.httpd: BaseWSGIServer = make_server("127.0.0.1", 0, create_app(settings),
                                                 threaded=True)
        self.port = self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request over http.client, which adds no Content-Type of its own."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return (response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read())
        finally:
            conn.close()

    def raw(self, data: bytes) -> bytes:
        """Send exact bytes, read the whole answer (the request says Connection: close)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def server(redis_server: RedisProcess) -> Iterator[Server]:
    with Server(api_settings(redis_server.url)) as s:
        yield s


def error_body(body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(body)
    assert set(parsed) == {"errorCode", "message"}
    return parsed


def test_seed_request_as_go_sends_it(server: Server) -> None:
    status, headers, body = server.request(
        "POST", "/v1.0-alpha1/jobs/R2-D2", SEED_BODY,
        {"Content-Type": "application/json", "User-Agent": "Go-http-client/1.1",
         "Accept-Encoding": "gzip"},
    )
    assert status == 204
    assert body == b""
    status, headers, body = server.request("GET", "/v1.0-alpha1/jobs/R2-D2")
    assert status == 200
    assert headers["content-type"] == "application/json"
    job = json.loads(body)
    assert job["data"] == {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}
    assert job["dueTime"] == "2s"


@pytest.mark.parametrize("base", ["/v1.0-alpha1/jobs", "/v1.0/jobs"])
def test_body_without_content_type_header_is_json(server: Server, base: str) -> None:
    status, _, body = server.request("POST", f"{base}/no-ct",
                                     b'{"dueTime": "1h", "data": {"k": "v"}}')
    assert status == 204, body
    status, _, body = server.request("GET", f"{base}/no-ct")
    assert json.loads(body)["data"] == {"k": "v"}


def test_raw_request_without_content_type(server: Server) -> None:
    body = b'{"schedule": "@every 1m", "data": 5}'
    answer = server.raw(
        b"POST /v1.0/jobs/raw HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert answer.startswith(b"HTTP/1.1 204 "), answer
    status, _, got = server.request("GET", "/v1.0/jobs/raw")
    assert status == 200 and json.loads(got)["data"] == 5


def test_chunked_body(server: Server) -> None:
    body = b'{"dueTime": "1h", "data": "chunked"}'
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    answer = server.raw(
        b"POST /v1.0/jobs/chunky HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )
    assert answer.startswith(b"HTTP/1.1 204 "), answer
    status, _, got = server.request("GET", "/v1.0/jobs/chunky")
    assert status == 200 and json.loads(got)["data"] == "chunked"


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param("a%2Fb", id="slash"),
        pytest.param("a%5Cb", id="backslash"),
        pytest.param("a%23b", id="hash"),
        pytest.param("a%3Fb", id="question-mark"),
        pytest.param("a%00b", id="nul"),
        pytest.param("a%0Ab", id="newline"),
        pytest.param("a%09b", id="tab"),
        pytest.param("a%7Fb", id="del"),
        pytest.param("%2Flead", id="leading-slash"),
        pytest.param("%2E%2E", id="dotdot"),
        pytest.param("x" * 254, id="too-long"),
    ],
)
def test_invalid_names_on_the_wire_are_400(server: Server, encoded: str) -> None:
    for method, body in (("POST", b'{"dueTime": "1s"}'), ("GET", None), ("DELETE", None)):
        status, headers, answer = server.request(method, f"/v1.0-alpha1/jobs/{encoded}", body)
        assert status == 400, (method, status, answer)
        assert headers["content-type"] == "application/json"
        error_body(answer)
    redis_client = redis.Redis.from_url(server.settings.redis_url)
    try:
        assert assert_store_consistent(redis_client, server.settings) == set()
    finally:
        redis_client.close()


def test_blank_name_on_the_wire_is_400(server: Server) -> None:
    for path in ("/v1.0-alpha1/jobs/", "/v1.0-alpha1/jobs/%20", "/v1.0/jobs/%20%09%20"):
        status, _, answer = server.request("POST", path, b'{"schedule": "@daily"}')
        assert status == 400, (path, answer)
        assert error_body(answer)["errorCode"] == "DAPR_SCHEDULER_JOB_NAME_EMPTY"


def test_unicode_name_on_the_wire(server: Server) -> None:
    path = "/v1.0/jobs/%E3%82%B8%E3%83%A7%E3%83%96"
    status, _, _ = server.request("POST", path, b'{"dueTime": "1h"}')
    assert status == 204
    status, _, body = server.request("GET", path)
    assert json.loads(body)["name"] == "\u30b8\u30e7\u30d6"


def test_invalid_json_over_the_wire_is_400_json(server: Server) -> None:
    status, headers, body = server.request("POST", "/v1.0/jobs/bad", b"{nope",
                                           {"Content-Type": "application/json"})
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert error_body(body)["errorCode"] == "ERR_MALFORMED_REQUEST"


def test_declared_body_over_the_limit_is_413(redis_server: RedisProcess) -> None:
    """A Content-Length far over the limit is refused without reading the body."""
    with Server(api_settings(redis_server.url, max_data_bytes=64)) as small:
        answer = small.raw(
            b"POST /v1.0/jobs/big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{"
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert error_body(body)["errorCode"] == "ERR_PAYLOAD_TOO_LARGE"


def test_get_and_delete_answer_bytes(server: Server) -> None:
    status, headers, body = server.request("GET", "/v1.0/jobs/missing")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert error_body(body)["errorCode"] == "DAPR_SCHEDULER_JOB_NOT_FOUND"
    status, headers, body = server.request("DELETE", "/v1.0/jobs/missing")
    assert status == 204
    assert body == b""


def test_healthz_over_the_wire(server: Server) -> None:
    status, _, body = server.request("GET", "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_concurrent_schedules_of_one_name_one_wins(server: Server) -> None:
    """Many clients racing on one name: exactly one 204, the rest 409, one job stored."""
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def schedule(i: int) -> None:
        start.wait()
        status, _, _ = server.request("POST", "/v1.0/jobs/race",
                                      json.dumps({"dueTime": "1h", "data": i}).encode())
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=schedule, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == [204] + [409] * 15
    redis_client = redis.Redis.from_url(server.settings.redis_url)
    try:
        ids = assert_store_consistent(redis_client, server.settings)
    finally:
        redis_client.close()
    assert ids == {f"{server.settings.app_id}/race"}


# --- the production server: `jobrunner api` (gunicorn) ------------------------------------


@pytest.fixture
def gunicorn_api(redis_server: RedisProcess, tmp_path: Any) -> Iterator[tuple[int, Settings]]:
    """`python -m app.cli api` on a free port against the private Redis."""
    settings = api_settings(redis_server.url)
    port = free_port()
    env = {**os.environ, "REDIS_URL": settings.redis_url, "JOBRUNNER_PREFIX": settings.prefix,
           "APP_ID": "gunicorn-app", "APP_URL": "http://127.0.0.1:9",
           "DAPR_HTTP_PORT": str(port), "DAPR_API_TOKEN": ""}
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api", "--processes", "1", "--threads", "4"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1],
    )

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "api.log").read_text()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=30, what="`jobrunner api` to answer /healthz")
        yield port, settings.with_(app_id="gunicorn-app")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_jobrunner_api_serves_the_seed_without_content_type(
    gunicorn_api: tuple[int, Settings], redis_client: redis.Redis
) -> None:
    port, settings = gunicorn_api

    def call(method: str, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, body=body)  # http.client adds no Content-Type
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type") or "", response.read()
        finally:
            conn.close()

    status, _, body = call("POST", "/v1.0-alpha1/jobs/R2-D2", SEED_BODY)
    assert status == 204, body
    status, ctype, body = call("GET", "/v1.0/jobs/R2-D2")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body)["data"] == {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}
    status, _, body = call("POST", "/v1.0-alpha1/jobs/R2-D2", SEED_BODY)
    assert status == 204, body  # the same request again: a retry, answered as stored
    status, _, body = call("POST", "/v1.0-alpha1/jobs/R2-D2",
                           SEED_BODY.replace(b'"2s"', b'"3s"'))
    assert status == 409 and error_body(body)["errorCode"] == "DAPR_SCHEDULER_SCHEDULE_JOB"
    status, _, body = call("POST", "/v1.0-alpha1/jobs/a%2Fb", SEED_BODY)
    assert status == 400, body
    status, _, body = call("POST", "/v1.0-alpha1/jobs/x", b"{")
    assert status == 400 and error_body(body)["errorCode"] == "ERR_MALFORMED_REQUEST"
    assert assert_store_consistent(redis_client, settings) == {"gunicorn-app/R2-D2"}
    status, _, body = call("DELETE", "/v1.0-alpha1/jobs/R2-D2")
    assert status == 204 and body == b""
    status, _, body = call("GET", "/v1.0-alpha1/jobs/R2-D2")
    assert status == 404


def test_jobrunner_api_refuses_another_sites_page_on_every_path(
    gunicorn_api: tuple[int, Settings], redis_client: redis.Redis
) -> None:
    """Without a token, a rebound host name or another site's Origin is a 403 on the wire,
    the schedule shortcut's event-loop path included (app/api/callers.py); SDKs and curl,
    by IP address or localhost and without an Origin, are served."""
    port, settings = gunicorn_api

    def post(name: str, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", f"/v1.0-alpha1/jobs/{name}", body=SEED_BODY,
                         headers={"Content-Type": "text/plain", **headers})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    for headers, code in (({"Host": f"attacker.example:{port}"}, "ERR_HOST_NOT_ALLOWED"),
                          ({"Origin": "https://attacker.example"}, "ERR_CROSS_SITE_REQUEST")):
        status, body = post("refused", headers)
        assert status == 403 and error_body(body)["errorCode"] == code, body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        status, body = post("served", {"Host": host})
        assert status == 204, body
    assert assert_store_consistent(redis_client, settings) == {"gunicorn-app/served"}
