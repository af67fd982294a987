"""What a worker POSTs to the app: path, body, headers; and never before the due time.

A real worker (in this process, on its own event loop) delivers to a real HTTP
server on localhost (the `receiver` fixture), over the private redis-server.
"""

from __future__ import annotations

import base64
import json
import random
import re
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from urllib.parse import unquote

import pytest
from flask.testing import FlaskClient

from app.api.factory import create_app
from app.jobs.clock import now_ms
from app.jobs.model import FailureKind, FailurePolicy
from app.settings import Settings
from app.store.store import Store
from tests.support.jobs import APP, dead_letters, make_job, register
from tests.support.receiver import Delivery, Receiver
from tests.support.seed import SEED_BODY
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from workers import delivery

STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
FAST_RETRY = FailurePolicy(FailureKind.CONSTANT, interval_ms=0, max_retries=5)
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")

pytestmark = pytest.mark.usefixtures("reap_workers")


def _job_path(name: str) -> str:
    from urllib.parse import quote

    return "/job/" + quote(name, safe="")


def _delivered(receiver: Receiver, name: str, n: int = 1, timeout: float = 10.0) -> list[Delivery]:
    return wait_for(lambda: (d := receiver.received(_job_path(name))) and len(d) >= n and d,
                    timeout, what=f"{n} deliveries of {name!r}")


def _not_early(d: Delivery, due_ms: int) -> None:
    """A delivery must never arrive before its due time (exact, to the ms)."""
    assert d.received_at * 1000 >= due_ms, (
        f"{d.path} arrived {due_ms - d.received_at * 1000:.3f} ms early")


# --- bodies ------------------------------------------------------------------------


def test_seed_flow_protobuf_any_arrives_as_type_url_envelope(
        api: FlaskClient, receiver: Receiver, worker: ThreadWorker) -> None:
    before = now_ms()
    resp = api.post("/v1.0-alpha1/jobs/R2-D2", data=SEED_BODY,
                    headers={"Content-Type": "application/json"})
    assert resp.status_code == 204, resp.get_data(as_text=True)
    assert resp.get_data() == b""

    [d] = _delivered(receiver, "R2-D2")
    assert d.path == "/job/R2-D2"
    assert d.headers["content-type"] == "application/json"
    assert json.loads(d.body) == {"type_url": STRING_VALUE, "value": "ChBSMi1EMjpPaWwgQ2hhbmdl"}
    # what the seed's handler does with it: the StringValue's wire bytes hold the text
    raw = base64.b64decode(json.loads(d.body)["value"])
    assert raw[2:] == b"R2-D2:Oil Change"
    scheduled = int(d.headers["jobrunner-scheduled-ms"])
    assert scheduled >= before + 2000
    _not_early(d, scheduled)


@pytest.mark.parametrize(("data", "body"), [
    ("someData", b'"someData"'),
    (123, b"123"),
    (0, b"0"),
    (False, b"false"),
    (1.5, b"1.5"),
    ({"droid": "R2-D2", "tasks": ["oil", {"n": 2}], "ok": True}, None),
    ([1, "two", None], None),
    ("ünïcødé ✓", None),
])
def test_plain_json_data_arrives_as_itself(api: FlaskClient, receiver: Receiver,
                                           worker: ThreadWorker, data: Any,
                                           body: bytes | None) -> None:
    resp = api.post("/v1.0-alpha1/jobs/plain", json={"data": data, "dueTime": "0s"})
    assert resp.status_code == 204, resp.get_data(as_text=True)
    [d] = _delivered(receiver, "plain")
    assert d.headers["content-type"] == "application/json"
    assert json.loads(d.body) == data
    if body is not None:
        assert d.body == body


def test_no_data_arrives_as_an_empty_body(api: FlaskClient, receiver: Receiver,
                                          worker: ThreadWorker) -> None:
    assert api.post("/v1.0-alpha1/jobs/empty", json={"dueTime": "0s"}).status_code == 204
    [d] = _delivered(receiver, "empty")
    assert d.body == b""
    assert d.headers.get("content-length", "0") == "0"


@pytest.mark.parametrize(("fmt", "data", "expected"), [
    ("raw", {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"},
     {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}),
    ("envelope", "someData",
     {"type_url": STRING_VALUE,
      "value": base64.b64encode(b"\x0a\x08someData").decode()}),
])
def test_a_per_app_format_forces_raw_or_envelope(settings: Settings, receiver: Receiver,
                                                 fmt: str, data: Any, expected: Any) -> None:
    settings = settings.with_(delivery_format=fmt)
    client = create_app(settings).test_client()
    with ThreadWorker(settings):
        resp = client.post("/v1.0/jobs/fmt", json={"data": data, "dueTime": "0s"})
        assert resp.status_code == 204
        [d] = _delivered(receiver, "fmt")
    assert json.loads(d.body) == expected


def test_apps_at_one_address_have_a_connection_pool_each(settings: Settings,
                                                        receiver: Receiver) -> None:
    """Two apps served by one server under two paths: one's requests hanging there hold
    its own connections, never the other's (the pool was the address's: every delivery of
    the other app waited for a connection, then failed)."""
    settings = settings.with_(connections_per_app=2, delivery_timeout_s=60.0, lease_s=90.0)
    release = threading.Event()

    def answer(d: Delivery) -> int:
        if d.path.startswith("/hang/"):
            release.wait(60)
        return 200

    receiver.responder = answer
    store = register(settings, f"{receiver.url}/hang", app_id="app-hang")
    register(settings, f"{receiver.url}/ok", app_id="app-ok").close()
    try:
        with ThreadWorker(settings):
            store.schedule_many(make_job(f"h{i}", now_ms(), app_id="app-hang") for i in range(6))
            wait_for(lambda: len(receiver.received()) >= 2, 10, what="the hanging app's two")
            store.schedule(make_job("fine", now_ms(), app_id="app-ok"))
            wait_for(lambda: receiver.received("/ok/job/fine"), 20,
                     what="the other app's delivery beside the hanging one")
            assert len(receiver.received()) == 3  # the hanging app still at its two
            release.set()
            wait_for(lambda: len(receiver.received()) == 7, 30, what="the rest, released")
    finally:
        release.set()
        store.close()


# --- headers -----------------------------------------------------------------------


def test_delivery_headers(store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    # first two attempts of "retried" fail: its retries must keep the trigger id
    receiver.responder = lambda d: (
        500 if d.path == "/job/retried" and d.headers["jobrunner-attempt"] in ("1", "2") else 200)
    due = now_ms() + 200
    jobs = {n: make_job(n, due + i, data=n, failure_policy=FAST_RETRY)
            for i, n in enumerate(["retried", "other"])}
    for job in jobs.values():
        store.schedule(job)

    retried = _delivered(receiver, "retried", 3)
    [other] = _delivered(receiver, "other")

    assert [d.headers["jobrunner-attempt"] for d in retried] == ["1", "2", "3"]
    assert len({d.headers["jobrunner-trigger-id"] for d in retried}) == 1
    assert other.headers["jobrunner-trigger-id"] != retried[0].headers["jobrunner-trigger-id"]
    assert other.headers["jobrunner-attempt"] == "1"

    for name, ds in (("retried", retried), ("other", [other])):
        for d in ds:
            assert d.headers["jobrunner-scheduled-ms"] == str(jobs[name].first_ms)
            _not_early(d, jobs[name].first_ms)
            m = TRACEPARENT.match(d.headers["traceparent"])
            assert m, d.headers["traceparent"]
            assert set(m.group(1)) != {"0"} and set(m.group(2)) != {"0"}  # all-zero is invalid
            assert "dapr-api-token" not in d.headers  # no app token registered
            assert "webhook-signature" not in d.headers  # no signing keys (test_signing.py)
    wait_for(lambda: store.get(APP, "retried") is None, what="retried job acknowledged")
    assert dead_letters(store) == []


def test_app_token_is_sent_as_dapr_api_token(settings: Settings, receiver: Receiver) -> None:
    store = register(settings, receiver.url, token="s3cr3t-app-token")
    with ThreadWorker(settings):
        store.schedule(make_job("tok", data=1))
        [d] = _delivered(receiver, "tok")
    assert d.headers["dapr-api-token"] == "s3cr3t-app-token"


@pytest.mark.parametrize("name", [
    "with space", "ünïcødé-名前", "100%", "a+b", "semi;colon", "amp&eq=", "~tilde.dot",
    "quote\"'", "%2F-not-a-slash",
])
def test_names_needing_percent_encoding_reach_the_right_path(
        api: FlaskClient, receiver: Receiver, worker: ThreadWorker, name: str) -> None:
    from urllib.parse import quote

    resp = api.post(f"/v1.0-alpha1/jobs/{quote(name, safe='')}",
                    json={"data": name, "dueTime": "0s"})
    assert resp.status_code == 204, resp.get_data(as_text=True)
    [d] = _delivered(receiver, name)
    assert d.path.startswith("/job/")
    segment = d.path[len("/job/"):]
    assert "/" not in segment and " " not in segment
    assert unquote(segment) == name  # what the app's router decodes
    assert json.loads(d.body) == name


def test_header_values_are_ascii_even_for_unicode_names(
        store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    """RFC 9110 field values are visible ASCII (non-ASCII is obsolete obs-text that strict
    servers refuse); the idempotency id must survive any job name."""
    store.schedule(make_job("ünïcødé-名前", data=1))
    [d] = _delivered(receiver, "ünïcødé-名前")
    for header, value in d.headers.items():
        # the receiver decodes header bytes as latin-1, as http.server does
        assert value.isascii(), f"{header}: {value!r}"


# --- schedules -----------------------------------------------------------------------


def test_every_1s_with_repeats_3_delivers_exactly_3_times(
        api: FlaskClient, store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    resp = api.post("/v1.0-alpha1/jobs/thrice",
                    json={"schedule": "@every 1s", "dueTime": "0s", "repeats": 3, "data": "x"})
    assert resp.status_code == 204, resp.get_data(as_text=True)
    # the positive signal that nothing more can come: the job is over and removed
    wait_for(lambda: store.get(APP, "thrice") is None, 15, what="the job to end")
    ds = receiver.received("/job/thrice")
    assert len(ds) == 3
    scheduled = [int(d.headers["jobrunner-scheduled-ms"]) for d in ds]
    assert [b - a for a, b in pairwise(scheduled)] == [1000, 1000]
    assert len({d.headers["jobrunner-trigger-id"] for d in ds}) == 3
    assert all(d.headers["jobrunner-attempt"] == "1" for d in ds)
    for d, s in zip(ds, scheduled, strict=True):
        _not_early(d, s)


def test_due_time_and_schedule_first_fire_at_due_time(
        api: FlaskClient, store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    due = datetime.now(UTC) + timedelta(milliseconds=600)
    due_ms = int(due.timestamp() * 1000)  # whole ms below
    due = datetime.fromtimestamp(due_ms / 1000, UTC)
    resp = api.post("/v1.0-alpha1/jobs/both", json={
        "schedule": "@every 1h", "dueTime": due.isoformat().replace("+00:00", "Z")})
    assert resp.status_code == 204, resp.get_data(as_text=True)
    [d] = _delivered(receiver, "both")
    assert int(d.headers["jobrunner-scheduled-ms"]) == due_ms
    _not_early(d, due_ms)
    # the next trigger follows the schedule from the dueTime
    view = wait_for(lambda: (v := store.get(APP, "both")) and v.count == 1 and v,
                    what="first trigger acknowledged")
    assert view.next_ms == due_ms + 3_600_000
    got = api.get("/v1.0-alpha1/jobs/both").get_json()
    assert got["schedule"] == "@every 1h" and got["triggerCount"] == 1


def test_past_due_time_fires_at_once(api: FlaskClient, receiver: Receiver,
                                     worker: ThreadWorker) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert api.post("/v1.0/jobs/past", json={"dueTime": past, "data": 1}).status_code == 204
    _delivered(receiver, "past", timeout=5)


# --- never early ------------------------------------------------------------------------


def _rfc3339_us(us: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_never_early_hundreds_of_jobs_over_two_seconds(
        api: FlaskClient, store: Store, receiver: Receiver, worker: ThreadWorker) -> None:
    rng = random.Random(1234)
    start = now_ms() + 400
    due_us: dict[str, int] = {}  # the job's own due time, exactly, in microseconds

    # store-scheduled jobs with random whole-ms due times over ~2 s
    jobs = [make_job(f"s-{i}", start + rng.randrange(0, 2000), data=i) for i in range(250)]
    store.schedule_many(jobs)
    due_us.update({j.name: j.first_ms * 1000 for j in jobs})
    # API-scheduled jobs with sub-millisecond RFC 3339 dueTimes
    for i in range(60):
        us = start * 1000 + rng.randrange(0, 2_000_000)
        if i % 10 == 0:
            us -= us % 1000  # some on an exact millisecond
        name = f"a-{i}"
        resp = api.post(f"/v1.0-alpha1/jobs/{name}", json={"dueTime": _rfc3339_us(us),
                                                             "data": i})
        assert resp.status_code == 204, resp.get_data(as_text=True)
        due_us[name] = us
    # relative dueTimes with a sub-ms part (server-side "now": checked against the header)
    for i in range(10):
        resp = api.post(f"/v1.0-alpha1/jobs/d-{i}", json={"dueTime": f"{1 + i / 10:.4f}0001s"})
        assert resp.status_code == 204, resp.get_data(as_text=True)

    total = len(due_us) + 10
    wait_for(lambda: len(receiver.received()) >= total, 20, what=f"{total} deliveries")
    ds = receiver.received()
    names = Counter(unquote(d.path[len("/job/"):]) for d in ds)
    assert len(names) == total and set(names.values()) == {1}

    early = []
    for d in ds:
        name = unquote(d.path[len("/job/"):])
        header_ms = int(d.headers["jobrunner-scheduled-ms"])
        arrival_us = d.received_at * 1_000_000
        if arrival_us < header_ms * 1000:
            early.append((name, header_ms * 1000 - arrival_us))
        if name in due_us:
            # the header is the due time, rounded UP to a whole ms
            assert header_ms == -(-due_us[name] // 1000), name
            if arrival_us < due_us[name]:
                early.append((name, due_us[name] - arrival_us))
    assert early == [], f"{len(early)} deliveries early (µs): {early[:10]}"


def test_an_http_1_0_app_that_answers_without_content_length_is_done_after_one_attempt(
        settings: Settings) -> None:
    """Python's http.server answers HTTP/1.0 with no Content-Length and closes: the
    response ends with the connection, and its status is the answer (no retry)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[str] = []

    class OldStyle(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.headers["jobrunner-attempt"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), OldStyle)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                     daemon=True).start()
    try:
        store = register(settings, f"http://127.0.0.1:{server.server_address[1]}")
        with ThreadWorker(settings):
            for i in range(3):
                store.schedule(make_job(f"old-{i}", data=i))
            wait_for(lambda: store.counts()["jobs"] == 0, what="all three acknowledged")
        assert seen == ["1", "1", "1"]
        assert dead_letters(store) == []
    finally:
        server.shutdown()
        server.server_close()


def test_traceparent_ids_are_never_all_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """W3C trace context: an all-zero trace id or parent id is invalid, and is drawn
    again (the generator gives one once in 2**64 deliveries; here, on purpose)."""
    draws = iter([bytes(24), bytes(16) + b"\x01" * 8, b"\x01" * 16 + bytes(8),
                  bytes(range(24))])
    monkeypatch.setattr(delivery, "_random_bytes", lambda _n: next(draws))
    m = TRACEPARENT.match(delivery._traceparent())
    assert m is not None
    assert m.groups() == (bytes(range(16)).hex(), bytes(range(16, 24)).hex())
