"""Trigger history (issue 11, part 2): the last outcomes of each job.

A real worker delivers to a real receiver (HTTP, or a gRPC app for the byte bound); the
history is read through the HTTP API (`GET .../jobs/{name}/history`) and the CLI
(`jobrunner jobs history`, against the API served over HTTP on 127.0.0.1). Checked: the
outcomes in order with every field, against what the receiver got; the cap in entries and
in bytes; size 0 turns it off; a one-shot job's history outlives the job (with its
retention), a name scheduled again keeps its history for good; delete removes it (by
name, by prefix, also a finished job's); another app cannot read it; 404, 400 and 401;
an acknowledge that no longer applies records nothing; the entry format and the settings.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any
from urllib.parse import quote, unquote

import grpc
import pytest
import redis
from click.testing import CliRunner
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from app.api.factory import create_app
from app.cli.main import main
from app.jobs.clock import now_ms
from app.jobs.durations import format_ms
from app.settings import Settings, SettingsError
from app.store.history import HistoryEntry, encode_entry
from app.store.keys import Keys, job_id, replay_job_id
from app.store.store import Store
from tests.support.jobs import APP, QueueDriver, dead_letters, make_job
from tests.support.receiver import Delivery, Receiver
from tests.support.redis_proc import free_port
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker

pytestmark = pytest.mark.usefixtures("reap_workers")

BASES = ("/v1.0-alpha1/jobs", "/v1.0/jobs")
FAST_RETRIES = {"constant": {"interval": "0s", "maxRetries": 3}}
DAY_MS = 86_400_000
TOKEN = "history-token"


# --- helpers ------------------------------------------------------------------------------


def schedule(api: FlaskClient, name: str, body: dict[str, Any]) -> None:
    response = api.post(f"/v1.0/jobs/{quote(name, safe='')}", json=body)
    assert response.status_code == 204, response.get_data(as_text=True)


def read(api: FlaskClient, name: str, base: str = "/v1.0/jobs") -> tuple[int, Any]:
    response = api.get(f"{base}/{quote(name, safe='')}/history")
    return response.status_code, response.get_json()


def history(api: FlaskClient, name: str) -> dict[str, Any]:
    status, body = read(api, name)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def finished(api: FlaskClient, name: str, entries: int) -> Callable[[], dict[str, Any] | None]:
    """A condition: the job is gone and its history holds `entries` outcomes."""
    def check() -> dict[str, Any] | None:
        status, body = read(api, name)
        if status == 200 and not body["jobExists"] and len(body["history"]) == entries:
            return dict(body)
        return None
    return check


def ms(rfc3339: str) -> int:
    moment = dt.datetime.fromisoformat(rfc3339)
    return int(moment.timestamp() * 1000)


def answering(*statuses: int) -> Callable[[Delivery], int]:
    """A responder: the n-th delivery of each path gets statuses[n], then 200."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def respond(delivery: Delivery) -> int:
        with lock:
            n = seen[delivery.path]
            seen[delivery.path] += 1
        return statuses[n] if n < len(statuses) else 200
    return respond


def history_keys(client: redis.Redis, settings: Settings) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{settings.prefix}:*:hist:*"))


def history_key(settings: Settings, name: str, app_id: str = APP) -> str:
    jid = job_id(app_id, name)
    return Keys(settings.prefix, settings.partitions).for_job(jid).history(jid)


# --- what is recorded ---------------------------------------------------------------------


def test_outcomes_are_recorded_newest_first_with_their_fields(
        settings: Settings, receiver: Receiver, api: FlaskClient,
        redis_client: redis.Redis) -> None:
    receiver.responder = answering(503)
    with ThreadWorker(settings):
        schedule(api, "once", {"dueTime": "0s", "data": {"n": 1},
                               "failurePolicy": FAST_RETRIES})
        body = wait_for(finished(api, "once", 2), what="two outcomes of 'once'")
    first, second = receiver.received("/job/once")
    newest, oldest = body["history"]
    assert set(newest) == {"triggerId", "scheduledTime", "deliveredTime", "attempt", "result",
                           "status", "error", "durationMs"}
    for entry, delivery, attempt in ((oldest, first, 1), (newest, second, 2)):
        assert entry["triggerId"] == unquote(delivery.headers["jobrunner-trigger-id"])
        assert entry["scheduledTime"] == format_ms(int(delivery.headers["jobrunner-scheduled-ms"]))
        assert entry["attempt"] == attempt == int(delivery.headers["jobrunner-attempt"])
        # Sent after it was due (never early), and before the receiver had it.
        sent = ms(entry["deliveredTime"])
        assert ms(entry["scheduledTime"]) <= sent <= delivery.received_at * 1000
        assert entry["durationMs"] > 0
    assert (oldest["result"], oldest["status"], oldest["error"]) == \
        ("retrying", 503, "app answered HTTP 503")
    assert (newest["result"], newest["status"], newest["error"]) == ("delivered", 200, None)
    assert ms(oldest["deliveredTime"]) <= ms(newest["deliveredTime"])

    # The one-shot job is gone; its history is kept for JOBRUNNER_HISTORY_TTL (24 h).
    before = now_ms()
    assert api.get("/v1.0/jobs/once").status_code == 404
    body = history(api, "once")
    after = now_ms()
    assert body["name"] == "once" and body["jobExists"] is False
    assert before < ms(body["keptUntil"]) <= after + DAY_MS
    assert 0 < redis_client.pttl(history_key(settings, "once")) <= DAY_MS


def test_dead_lettered_dropped_and_replayed_outcomes(
        settings: Settings, receiver: Receiver, api: FlaskClient, store: Store) -> None:
    from app.store.deadletters import DeadLetters, Selection

    receiver.status = 500
    with ThreadWorker(settings):
        schedule(api, "dead", {"dueTime": "0s",
                               "failurePolicy": {"constant": {"interval": "0s",
                                                              "maxRetries": 1}}})
        schedule(api, "dropped", {"dueTime": "0s", "failurePolicy": {"drop": {}}})
        dead = wait_for(finished(api, "dead", 2), what="two outcomes of 'dead'")
        dropped = wait_for(finished(api, "dropped", 1), what="the outcome of 'dropped'")
        assert [(e["result"], e["attempt"], e["status"]) for e in dead["history"]] == \
            [("dead-lettered", 2, 500), ("retrying", 1, 500)]
        assert [(e["result"], e["status"], e["error"]) for e in dropped["history"]] == \
            [("dropped", 500, "app answered HTTP 500")]

        # A replay's outcome is its job's, under the same trigger id.
        receiver.status = 200
        [letter] = dead_letters(store)
        assert DeadLetters(store).replay(APP, Selection(ids=(letter.id,))).count == 1
        replayed = wait_for(finished(api, "dead", 3), what="the replay's outcome")
    newest = replayed["history"][0]
    assert (newest["result"], newest["attempt"], newest["status"]) == ("delivered", 1, 200)
    assert {e["triggerId"] for e in replayed["history"]} == {letter.id}
    assert replayed["keptUntil"] is not None


def test_capped_at_the_history_size(settings: Settings, receiver: Receiver,
                                    api: FlaskClient, redis_client: redis.Redis) -> None:
    capped = settings.with_(history_size=3)
    with ThreadWorker(capped):
        schedule(api, "often", {"schedule": "@every 0s", "repeats": 5})
        body = wait_for(finished(api, "often", 3), what="'often' to end")
    deliveries = receiver.received("/job/often")
    assert len(deliveries) == 5
    # The three newest triggers, newest first.
    assert [e["triggerId"] for e in body["history"]] == \
        [unquote(d.headers["jobrunner-trigger-id"]) for d in reversed(deliveries[2:])]
    assert redis_client.llen(history_key(settings, "often")) == 3


class _FailingApp(appcallback_pb2_grpc.AppCallbackServicer):  # type: ignore[misc]
    """A gRPC app whose handler fails with a long message (multi-byte characters)."""

    details = "é" * 1000 + "x" * 1000

    def OnJobEvent(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.INTERNAL, self.details)


def test_each_entry_and_each_history_is_bounded_in_bytes(
        settings: Settings, redis_client: redis.Redis) -> None:
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(_FailingApp(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    bounded = settings.with_(app_url=f"http://127.0.0.1:{port}", app_protocol="grpc",
                             history_size=2, history_max_bytes=512)
    api = create_app(bounded).test_client()
    worker = ThreadWorker(bounded).start()
    try:
        schedule(api, "long-error", {"dueTime": "0s", "failurePolicy": FAST_RETRIES})
        body = wait_for(finished(api, "long-error", 2), 20, what="the last two attempts")
    finally:
        worker.stop()  # grpc.aio: the loop must be gone before another worker starts
        server.stop(None)
    stored = redis_client.lrange(history_key(settings, "long-error"), 0, -1)
    assert len(stored) == 2
    assert all(len(raw) <= 256 for raw in stored)  # 512 bytes / 2 entries
    assert sum(len(raw) for raw in stored) <= 512
    full = f"app answered gRPC INTERNAL: {_FailingApp.details}"
    for entry in body["history"]:
        assert entry["error"].endswith("\u2026")  # cut, and said so
        assert full.startswith(entry["error"][:-1])
        assert len(entry["error"]) > 60
    assert [e["attempt"] for e in body["history"]] == [4, 3]
    assert body["history"][0]["result"] == "dead-lettered"


def test_size_0_turns_it_off(settings: Settings, receiver: Receiver, api: FlaskClient,
                             redis_client: redis.Redis) -> None:
    off = settings.with_(history_size=0)
    with ThreadWorker(off):
        schedule(api, "twice", {"schedule": "@every 0s", "repeats": 2})
        schedule(api, "later", {"schedule": "@every 1h", "dueTime": "0s"})
        wait_for(lambda: len(receiver.received("/job/twice")) == 2
                 and len(receiver.received("/job/later")) == 1, what="three deliveries")
        wait_for(lambda: api.get("/v1.0/jobs/twice").status_code == 404
                 and api.get("/v1.0/jobs/later").get_json()["triggerCount"] == 1,
                 what="the outcomes settled")
    assert history_keys(redis_client, settings) == []
    assert read(api, "twice")[0] == 404  # neither a job nor a history
    assert history(api, "later") == {"name": "later", "jobExists": True, "keptUntil": None,
                                      "history": []}


def test_a_name_scheduled_again_keeps_its_history_for_good(
        settings: Settings, receiver: Receiver, api: FlaskClient,
        redis_client: redis.Redis) -> None:
    key = history_key(settings, "again")
    with ThreadWorker(settings):
        schedule(api, "again", {"dueTime": "0s"})
        wait_for(finished(api, "again", 1), what="the one-shot job's outcome")
        assert redis_client.pttl(key) > 0
        schedule(api, "again", {"schedule": "@every 1h", "dueTime": "0s"})
        wait_for(lambda: len(history(api, "again")["history"]) == 2, what="the second outcome")
    body = history(api, "again")
    assert body["jobExists"] is True and body["keptUntil"] is None
    assert redis_client.pttl(key) == -1  # lives as long as the job
    newer, older = body["history"]
    assert newer["triggerId"] != older["triggerId"]


# --- delete, other apps, errors -------------------------------------------------------------


def test_delete_removes_the_history(settings: Settings, receiver: Receiver, api: FlaskClient,
                                    redis_client: redis.Redis) -> None:
    with ThreadWorker(settings):
        for name in ("hourly", "p-1", "p-2", "other"):
            schedule(api, name, {"schedule": "@every 1h", "dueTime": "0s"})
        schedule(api, "fired", {"dueTime": "0s"})
        for name in ("hourly", "p-1", "p-2", "other"):
            wait_for(lambda n=name: len(history(api, n)["history"]) == 1,  # type: ignore[misc]
                     what=f"the outcome of {name!r}")
        wait_for(finished(api, "fired", 1), what="the one-shot job's outcome")
    assert len(history_keys(redis_client, settings)) == 5

    assert api.delete("/v1.0/jobs/hourly").status_code == 204
    assert read(api, "hourly")[0] == 404
    assert api.delete("/v1.0/jobs?prefix=p-").get_json() == {"deleted": 2}
    assert read(api, "p-1")[0] == 404 and read(api, "p-2")[0] == 404
    # A finished job's history goes when its name is deleted.
    assert api.delete("/v1.0/jobs/fired").status_code == 204
    assert read(api, "fired")[0] == 404
    assert history_keys(redis_client, settings) == [history_key(settings, "other").encode()]
    assert len(history(api, "other")["history"]) == 1


def test_another_app_cannot_read_it(settings: Settings, receiver: Receiver,
                                    api: FlaskClient) -> None:
    with ThreadWorker(settings):
        schedule(api, "mine", {"schedule": "@every 1h", "dueTime": "0s"})
        wait_for(lambda: len(history(api, "mine")["history"]) == 1, what="the outcome")
    other = create_app(settings.with_(app_id="other-app")).test_client()
    status, body = read(other, "mine")
    assert status == 404 and body["errorCode"] == "DAPR_SCHEDULER_JOB_NOT_FOUND"
    assert len(history(api, "mine")["history"]) == 1


@pytest.mark.parametrize("base", BASES)
def test_unknown_bad_and_unauthorized(settings: Settings, base: str) -> None:
    api = create_app(settings).test_client()
    status, body = read(api, "nothing-here", base)
    assert status == 404
    assert body == {"errorCode": "DAPR_SCHEDULER_JOB_NOT_FOUND",
                    "message": "no job and no trigger history of that name: nothing-here"}
    status, body = read(api, "x" * 300, base)
    assert status == 400 and body["errorCode"].startswith("DAPR_SCHEDULER_JOB_NAME")

    # A job named "history" is a job like any other.
    schedule(api, "history", {"dueTime": "1h"})
    assert api.get(f"{base}/history").get_json()["name"] == "history"
    assert read(api, "history", base) == (200, {"name": "history", "jobExists": True,
                                                "keptUntil": None, "history": []})

    # The token rules of the other routes (another app: an app's tokens are bound to it).
    guarded = create_app(settings.with_(app_id="guarded", api_token=TOKEN)).test_client()
    schedule_guarded = guarded.post("/v1.0/jobs/g", json={"dueTime": "1h"},
                                    headers={"dapr-api-token": TOKEN})
    assert schedule_guarded.status_code == 204
    assert read(guarded, "g", base)[0] == 401
    response = guarded.get(f"{base}/g/history", headers={"dapr-api-token": TOKEN})
    assert response.status_code == 200 and response.get_json()["jobExists"] is True


def test_an_acknowledge_that_no_longer_applies_records_nothing(
        settings: Settings, store: Store, redis_client: redis.Redis) -> None:
    from workers.queue import Action, Settlement

    q = QueueDriver(settings)
    try:
        store.schedule(make_job("deleted-in-flight", schedule="@every 1h"))
        [trigger] = q.claim(limit=10, at=now_ms())
        store.delete(APP, "deleted-in-flight")
        entry = encode_entry(trigger.trigger_id, trigger.sched_ms, now_ms(), 1, "d", 200, 10,
                             "", 256)
        assert q.settle(Settlement(trigger, Action.NEXT, None, entry=entry)) == 0
    finally:
        q.close()
    assert history_keys(redis_client, settings) == []


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def served(settings: Settings) -> Iterator[str]:
    """The API over HTTP on 127.0.0.1 (the CLI talks HTTP); its URL."""
    httpd: BaseWSGIServer = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def test_the_cli_shows_the_history(settings: Settings, receiver: Receiver, api: FlaskClient,
                                   served: str) -> None:
    receiver.responder = answering(500)
    with ThreadWorker(settings):
        schedule(api, "cli-job", {"dueTime": "0s", "failurePolicy": FAST_RETRIES})
        body = wait_for(finished(api, "cli-job", 2), what="two outcomes")

    runner = CliRunner()
    text = runner.invoke(main, ["jobs", "history", "cli-job", "--url", served])
    assert text.exit_code == 0, text.output
    header, *rows = text.stdout.splitlines()
    assert header.split() == ["SCHEDULED", "SENT", "ATTEMPT", "RESULT", "STATUS", "DURATION",
                              "ERROR"]
    newest, oldest = body["history"]
    assert rows[0].split()[:5] == [newest["scheduledTime"], newest["deliveredTime"], "2",
                                   "delivered", "200"]
    assert rows[0].split()[6] == "-"
    assert rows[1].split()[:5] == [oldest["scheduledTime"], oldest["deliveredTime"], "1",
                                   "retrying", "500"]
    assert rows[1].endswith("app answered HTTP 500")
    assert rows[0].split()[5].endswith("ms")
    assert text.stderr.startswith("'cli-job' is over (no trigger left); its history is kept "
                                  "until 20")

    as_json = runner.invoke(main, ["jobs", "history", "cli-job", "--url", served, "--json"])
    assert as_json.exit_code == 0 and as_json.stderr == ""
    answer = json.loads(as_json.stdout)
    assert answer["history"] == body["history"] and answer["jobExists"] is False

    missing = runner.invoke(main, ["jobs", "history", "no-such-job", "--url", served])
    assert missing.exit_code == 1
    assert missing.stderr.strip() == ("Error: 404 DAPR_SCHEDULER_JOB_NOT_FOUND: no job and no "
                                      "trigger history of that name: no-such-job")


def test_the_cli_says_when_nothing_is_recorded_yet(settings: Settings, api: FlaskClient,
                                                   served: str) -> None:
    schedule(api, "not-yet", {"dueTime": "1h"})
    result = CliRunner().invoke(main, ["jobs", "history", "not-yet", "--url", served])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "no outcomes of 'not-yet' recorded yet\n"


# --- the dashboard ---------------------------------------------------------------------------


def test_the_dashboard_shows_the_history_also_of_a_job_that_is_over(
        settings: Settings, receiver: Receiver, api: FlaskClient) -> None:
    receiver.responder = answering(500)
    with ThreadWorker(settings):
        schedule(api, "page-once", {"dueTime": "0s", "failurePolicy": FAST_RETRIES})
        schedule(api, "page-hourly", {"schedule": "@every 1h", "dueTime": "0s"})
        wait_for(finished(api, "page-once", 2), what="two outcomes of 'page-once'")
        wait_for(lambda: len(history(api, "page-hourly")["history"]) == 1,
                 what="the outcome of 'page-hourly'")
    schedule(api, "page-later", {"dueTime": "1h"})

    page = api.get("/ui/jobs/page-hourly")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    start = html.index('id="job-history"')
    table = html[start:html.index("</table>", start)]
    assert table.count("<tr>") == 2  # the header and one outcome
    assert '<span class="badge retrying">retrying</span>' in table
    assert "app answered HTTP 500" in table

    # A one-shot job that fired: its GET is a 404, its page shows what became of it.
    over = api.get("/ui/jobs/page-once")
    assert over.status_code == 200
    html = over.get_data(as_text=True)
    assert 'id="job-over"' in html and "Its history is kept until" in html
    table = html[html.index('id="job-history"'):]
    assert '<span class="badge delivered">delivered</span>' in table
    assert '<span class="badge retrying">retrying</span>' in table
    assert table.index("delivered") < table.index("retrying")  # newest first

    nothing_yet = api.get("/ui/jobs/page-later").get_data(as_text=True)
    assert 'id="job-history-empty"' in nothing_yet and 'id="job-history"' not in nothing_yet
    assert api.get("/ui/jobs/never-was").status_code == 404


# --- the entry format and the settings ------------------------------------------------------


def test_entries_round_trip() -> None:
    trigger = "app/a|b@c@0a1b2c3d:1700000000123"
    raw = encode_entry(trigger, 1_700_000_000_123, 1_700_000_000_125, 3, "r", 503, 1843,
                       "app answered | HTTP 503", 256)
    assert raw == "1700000000123|2|3|r|503|1843|0a1b2c3d|app answered | HTTP 503"
    entry = HistoryEntry.decode("app", "a|b@c", raw)
    assert entry == HistoryEntry(trigger, 1_700_000_000_123, 1_700_000_000_125, 3, "retrying",
                                 503, 1843, "app answered | HTTP 503")
    # The worker passes only the job's rev for the job's own trigger id.
    assert encode_entry("0a1b2c3d", 1_700_000_000_123, 1_700_000_000_125, 3, "r", 503, 1843,
                        "app answered | HTTP 503", 256) == raw
    # A replay keeps the dead trigger's id, whose due time is not the replay's.
    replay = encode_entry("app/x@0a1b2c3d:1600000000000", 1_700_000_000_000,
                          1_700_000_000_001, 1, "d", None, 5, "", 256)
    decoded = HistoryEntry.decode("app", "x", replay)
    assert decoded.trigger_id == "app/x@0a1b2c3d:1600000000000"
    assert (decoded.status, decoded.error, decoded.result) == (None, "", "delivered")


@pytest.mark.parametrize("error", ["é" * 400, "x" + "€" * 300, "😀" * 200, "a" * 1000])
@pytest.mark.parametrize("max_bytes", [128, 129, 130, 131, 200])
def test_an_entry_never_passes_its_bytes(error: str, max_bytes: int) -> None:
    raw = encode_entry("app/n@0a1b2c3d:1700000000123", 1_700_000_000_123, 1_700_000_001_000,
                       12, "x", None, 99_999_999, error, max_bytes)
    assert len(raw.encode()) <= max_bytes
    decoded = HistoryEntry.decode("app", "n", raw.encode())
    assert decoded.error.endswith("\u2026") and error.startswith(decoded.error[:-1])


def test_replays_share_their_jobs_history_key() -> None:
    keys = Keys("jr", 4)
    jid = job_id("app", "name")
    pk = keys.for_job(jid)
    assert pk.history(replay_job_id("app", "name", "r1")) == pk.history(jid)
    assert pk.history(jid).startswith(pk.due.removesuffix(":due"))  # the partition's tag


def test_history_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.history_size, defaults.history_max_bytes, defaults.history_ttl_s) == \
        (20, 8192, 86400.0)
    assert defaults.history_entry_bytes == 409
    custom = Settings.from_env({"JOBRUNNER_HISTORY_SIZE": "0", "JOBRUNNER_HISTORY_TTL": "60"})
    assert (custom.history_size, custom.history_ttl_s) == (0, 60.0)
    assert Settings.from_env(custom.to_env()) == custom
    for env, message in (
            ({"JOBRUNNER_HISTORY_SIZE": "1001"}, "at most 1000"),
            ({"JOBRUNNER_HISTORY_SIZE": "-1"}, "at least 0"),
            ({"JOBRUNNER_HISTORY_MAX_BYTES": str(2 * 1024 * 1024)}, "at most"),
            ({"JOBRUNNER_HISTORY_SIZE": "20", "JOBRUNNER_HISTORY_MAX_BYTES": "2000"},
             "give each 128 at least"),
            ({"JOBRUNNER_HISTORY_TTL": "0"}, "at least 1")):
        with pytest.raises(SettingsError, match=message):
            Settings.from_env(env)

