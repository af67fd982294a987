"""`jobrunner jobs` against a real `jobrunner api` process (gunicorn) on the private Redis.

Every command in text and --json; paging through the list; the confirmation before a
delete by prefix; export -> delete -> import giving back every field (next and last
trigger, trigger count, expiry included); the restore extension of the schedule body
that import relies on (app/jobs/restore.py), its refusals, and a restored job going on
counting its repeats; the one-line errors: API unreachable (refused, no answer), 401, and
the API's 4xx as status, errorCode and message; exit codes 0 / 1 / 2 / 3.

The commands run in this process through click's runner (stdout and stderr apart),
except where the real console script is the point (no traceback, exit codes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import pytest
from click.testing import CliRunner, Result

from app.cli import client as cli_client
from app.cli.main import main
from app.settings import Settings
from tests.chaos.support.procs import Procs, child_env
from tests.support.receiver import Receiver
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker

pytestmark = pytest.mark.usefixtures("reap_workers")

STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
# The installed command, as a shell script would run it (else the module).
_EXE = Path(sys.executable).with_name("jobrunner")
JOBRUNNER = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "app.cli"]
TOKEN = "s3cret-token"


class Api:
    """`jobrunner api` for one app on a free port (1 process, 4 threads), no gRPC."""

    def __init__(self, procs: Procs, settings: Settings, name: str) -> None:
        self.port = free_port()
        self.settings = settings.with_(http_port=self.port, grpc_port=0)
        argv = [*JOBRUNNER, "api", "--app-id", settings.app_id, "--app-url", settings.app_url,
                 "--http-port", str(self.port), "--processes", "1", "--threads", "4"]
        self.proc = procs.spawn(name, argv, child_env(self.settings))

        def healthy() -> bool:
            if not self.proc.alive:
                raise AssertionError(f"the API exited:\n{self.proc.tail()}")
            return http("GET", self.url + "/healthz")[0] == 200

        wait_for(healthy, 60, interval=0.1, what="the API to answer /healthz")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, name: str) -> tuple[int | None, Any]:
        return http("GET", f"{self.url}/v1.0/jobs/{_quote(name)}", headers=self._headers())

    def post(self, name: str, body: Any) -> tuple[int | None, Any]:
        return http("POST", f"{self.url}/v1.0/jobs/{_quote(name)}", body, self._headers())

    def _headers(self) -> dict[str, str]:
        return {"dapr-api-token": self.settings.api_token} if self.settings.api_token else {}


def _quote(name: str) -> str:
    return quote(name, safe="")


def http(method: str, url: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int | None, Any]:
    """(status, decoded JSON body) of one request; (None, None) when no answer came."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except OSError:
        return None, None
    return status, json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Procs]:
    p = Procs(tmp_path_factory.mktemp("cli-jobs"))
    yield p
    p.kill_all()


@pytest.fixture(scope="module")
def app_receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def _settings(redis_server: RedisProcess, receiver: Receiver, **changes: Any) -> Settings:
    return Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                    app_id="cli-jobs", app_url=receiver.url, delivery_timeout_s=2.0,
                    lease_s=5.0, idle_poll_s=0.2).with_(**changes)


@pytest.fixture(scope="module")
def api(procs: Procs, redis_server: RedisProcess, app_receiver: Receiver) -> Api:
    return Api(procs, _settings(redis_server, app_receiver), "api")


@pytest.fixture(scope="module")
def token_api(procs: Procs, redis_server: RedisProcess, app_receiver: Receiver) -> Api:
    return Api(procs, _settings(redis_server, app_receiver, api_token=TOKEN), "api-token")


@pytest.fixture
def prefix() -> str:
    """Job names of this test's own: the API is shared by the module's tests."""
    return f"t{uuid.uuid4().hex[:8]}-"


def run(*args: str, url: str | None = None, token: str | None = None,
        stdin: str | bytes | None = None, env: dict[str, str | None] | None = None) -> Result:
    """`jobrunner jobs ARGS` in this process; DAPR_API_TOKEN is `token` (unset when None)."""
    argv = ["jobs", *args] + (["--url", url] if url else [])
    return CliRunner().invoke(main, argv, input=stdin,
                              env={"DAPR_API_TOKEN": token, **(env or {})})


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr,
                                   result.exception)
    return result


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}Z"


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# --- schedule, get, list, delete ------------------------------------------------------------


def test_schedule_get_list_delete_as_text(api: Api, prefix: str) -> None:
    name = f"{prefix}heartbeat"
    out = ok(run("schedule", name, "--schedule", "@every 5s", "--repeats", "3",
                 "--data", '{"ping": true}', "--failure-policy", "constant:3s:5",
                 url=api.url)).stdout
    status, job = api.get(name)
    assert status == 200
    assert job["schedule"] == "@every 5s" and job["repeats"] == 3 and job["data"] == {"ping": True}
    assert job["failurePolicy"] == {"constant": {"interval": "3s", "maxRetries": 5}}
    assert out == f"scheduled '{name}': next trigger {job['nextTriggerTime']}\n"

    ok(run("schedule", f"{prefix}once", "--due-time", "1h", "--data", '"text"',
           "--failure-policy", "drop", url=api.url))
    got = ok(run("get", name, url=api.url)).stdout.splitlines()
    assert got == [
        f"name             {name}",
        "schedule         @every 5s",
        "dueTime          -",
        "repeats          3",
        'data             {"ping": true}',
        "failurePolicy    constant 3s, 5 retries",
        "status           scheduled",
        f"nextTriggerTime  {job['nextTriggerTime']}",
        "lastTriggerTime  -",
        "expiryTime       -",
        "triggerCount     0",
        "attempt          0",
    ]
    once = ok(run("get", f"{prefix}once", url=api.url)).stdout
    assert "failurePolicy    drop\n" in once and 'data             "text"\n' in once

    lines = ok(run("list", "--prefix", prefix, url=api.url)).stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["NAME", "SCHEDULE", "NEXT TRIGGER", "LAST TRIGGER",
                                             "TRIGGERS", "STATUS"]
    assert len(lines) == 3
    assert re.split(r"\s{2,}", lines[1]) == [name, "@every 5s", job["nextTriggerTime"], "-",
                                             "0/3", "scheduled"]
    assert re.split(r"\s{2,}", lines[2])[:2] == [f"{prefix}once", "once"]
    # Aligned: every column starts at the same offset on every line.
    for header in ("SCHEDULE", "NEXT TRIGGER", "STATUS"):
        column = lines[0].index(header)
        assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines)

    assert ok(run("delete", name, url=api.url)).stdout == f"deleted '{name}'\n"
    assert api.get(name)[0] == 404
    empty = ok(run("list", "--prefix", f"{prefix}heart", url=api.url))
    assert empty.stdout == ""
    assert empty.stderr == f"no jobs whose name starts with '{prefix}heart'\n"


def test_every_command_answers_json(api: Api, prefix: str) -> None:
    name = f"{prefix}j é"  # a space and Unicode travel percent-encoded
    data = {"nested": [1, {"x": None}], "ü": "ö"}
    doc = json.loads(ok(run("schedule", name, "--due-time", "2h", "--data", json.dumps(data),
                            "--json", url=api.url)).stdout)
    assert doc == api.get(name)[1]
    assert doc["data"] == data and doc["dueTime"] == "2h"
    assert json.loads(ok(run("get", name, "--json", url=api.url)).stdout) == doc

    ok(run("schedule", f"{prefix}k", "--schedule", "0 30 9 * * MON-FRI", "--json", url=api.url))
    listed = json_lines(ok(run("list", "--prefix", prefix, "--json", url=api.url)).stdout)
    assert {j["name"] for j in listed} == {name, f"{prefix}k"}
    assert next(j for j in listed if j["name"] == name) == doc

    assert json.loads(ok(run("delete", name, "--json", url=api.url)).stdout) == {"deleted": name}
    assert json.loads(ok(run("delete", "--prefix", prefix, "--yes", "--json",
                             url=api.url)).stdout) == {"deleted": 1}


def test_schedule_data_file_and_overwrite(api: Api, prefix: str, tmp_path: Path) -> None:
    name = f"{prefix}file"
    seed = {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}
    (tmp_path / "data.json").write_text(json.dumps(seed))
    ok(run("schedule", name, "--due-time", "1h", "--data-file", str(tmp_path / "data.json"),
           url=api.url))
    assert api.get(name)[1]["data"] == seed
    again = run("schedule", name, "--due-time", "1h", "--data", "1", url=api.url)
    assert again.exit_code == 1
    assert again.stderr == (f"Error: 409 DAPR_SCHEDULER_SCHEDULE_JOB: failed to schedule job "
                            f"due to: job already exists: '{name}'\n")
    ok(run("schedule", name, "--due-time", "1h", "--data-file", "-", "--overwrite",
           stdin="[1, 2]", url=api.url))
    assert api.get(name)[1]["data"] == [1, 2]


def test_list_pages_through_the_api(api: Api, prefix: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    names = {f"{prefix}{i:03d}" for i in range(40)}
    for name in names:
        assert api.post(name, {"dueTime": "1h"})[0] == 204
    # Pages of 7: the list is only complete if every nextPageToken is followed.
    monkeypatch.setattr(cli_client, "MAX_PAGE", 7)
    listed = json_lines(ok(run("list", "--prefix", prefix, "--limit", "0", "--json",
                               url=api.url)).stdout)
    assert sorted(j["name"] for j in listed) == sorted(names)

    limited = ok(run("list", "--prefix", prefix, "--limit", "25", url=api.url))
    assert len(limited.stdout.splitlines()) == 1 + 25
    assert limited.stderr == "(the first 25 jobs; --limit 0 lists all)\n"
    table = ok(run("list", "--prefix", prefix, "--limit", "0", url=api.url)).stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == sorted(names)  # sorted by name
    exported = json_lines(ok(run("export", "--prefix", prefix, url=api.url)).stdout)
    assert sorted(j["name"] for j in exported) == sorted(names)


# --- delete by prefix ------------------------------------------------------------------------


def test_delete_by_prefix_asks_first(api: Api, prefix: str) -> None:
    for i in range(3):
        assert api.post(f"{prefix}{i}", {"dueTime": "1h"})[0] == 204
    assert api.post(f"other-{prefix}", {"dueTime": "1h"})[0] == 204

    declined = run("delete", "--prefix", prefix, stdin="n\n", url=api.url)
    assert declined.exit_code == 1
    assert declined.stderr.startswith(
        f"Delete 3 jobs whose name starts with '{prefix}' at {api.url}? [y/N]: ")
    assert declined.stderr.endswith("Error: nothing deleted (--yes deletes without asking)\n")
    assert declined.stdout == ""
    no_answer = run("delete", "--prefix", prefix, stdin="", url=api.url)  # end of input
    assert no_answer.exit_code == 1 and "nothing deleted" in no_answer.stderr
    assert all(api.get(f"{prefix}{i}")[0] == 200 for i in range(3))

    assert ok(run("delete", "--prefix", prefix, stdin="y\n", url=api.url)).stdout == \
        f"deleted 3 jobs whose name starts with '{prefix}'\n"
    assert all(api.get(f"{prefix}{i}")[0] == 404 for i in range(3))
    assert api.get(f"other-{prefix}")[0] == 200

    nothing = ok(run("delete", "--prefix", prefix, url=api.url))
    assert nothing.stdout == f"no jobs whose name starts with '{prefix}': nothing to delete\n"
    assert api.post(f"{prefix}x", {"dueTime": "1h"})[0] == 204
    yes = ok(run("delete", "--prefix", prefix, "--yes", url=api.url))  # no question asked
    assert yes.stdout == f"deleted 1 job whose name starts with '{prefix}'\n" and not yes.stderr
    assert ok(run("delete", f"other-{prefix}", url=api.url))


# --- export, import --------------------------------------------------------------------------


def test_export_delete_import_gives_back_every_field(api: Api, app_receiver: Receiver,
                                                      prefix: str, tmp_path: Path) -> None:
    fired = f"{prefix}fired"
    with ThreadWorker(api.settings):
        # Due at once, then hourly: it fires once, then stands still for an hour.
        ok(run("schedule", fired, "--due-time", "0s", "--schedule", "@every 1h", "--repeats",
               "5", "--ttl", "24h", "--data", '"tick"', "--failure-policy", "constant:2s:7",
               url=api.url))
        wait_for(lambda: api.get(fired)[1].get("triggerCount") == 1, 30, interval=0.05,
                 what="the job to fire once")
    schedules = [
        ("once", ["--due-time", "1h", "--data", json.dumps({"@type": STRING_VALUE,
                                                             "value": "R2-D2:Oil Change"})]),
        ("cron", ["--schedule", "TZ=Europe/Berlin 0 30 9 * * MON-FRI", "--repeats", "10",
                  "--ttl", "720h", "--failure-policy", "drop",
                  "--data", json.dumps({"nested": [1, 2, {"x": None}], "ünï": "cödé"})]),
        ("absolute", ["--due-time", "2031-06-01T00:00:00Z", "--schedule", "@daily",
                      "--ttl", "2032-01-01T00:00:00Z"]),
        ("with space é", ["--schedule", "@every 90s", "--failure-policy", "constant:500ms"]),
    ]
    for suffix, options in schedules:
        ok(run("schedule", prefix + suffix, *options, url=api.url))

    export = ok(run("export", "--prefix", prefix, url=api.url))
    assert export.stderr == f"exported 5 jobs whose name starts with '{prefix}'\n"
    before = {j["name"]: j for j in json_lines(export.stdout)}
    assert before[fired]["triggerCount"] == 1 and before[fired]["lastTriggerTime"] is not None
    assert before[fired]["expiryTime"] == rfc3339(
        dt.datetime.fromtimestamp(ms(before[fired]["lastTriggerTime"]) / 1000 + 86400, dt.UTC))
    (tmp_path / "jobs.jsonl").write_text(export.stdout)

    ok(run("delete", "--prefix", prefix, "--yes", url=api.url))
    assert ok(run("list", "--prefix", prefix, "--json", url=api.url)).stdout == ""

    imported = ok(run("import", str(tmp_path / "jobs.jsonl"), url=api.url))
    assert imported.stdout == "imported 5 jobs\n" and imported.stderr == ""
    after = {j["name"]: j for j in json_lines(ok(run("export", "--prefix", prefix,
                                                     url=api.url)).stdout)}
    assert after == before  # every field: data, policy, next/last trigger, count, expiry
    for name, job in before.items():
        assert api.get(name)[1] == job


def test_import_reports_each_failure_and_goes_on(api: Api, prefix: str) -> None:
    assert api.post(f"{prefix}exists", {"dueTime": "3h"})[0] == 204
    lines = [
        json.dumps({"name": f"{prefix}a", "dueTime": "1h"}),
        "",
        json.dumps({"name": f"{prefix}exists", "dueTime": "2h"}),
        "{not json",
        json.dumps({"name": f"{prefix}bad", "schedule": "every 5s"}),
        json.dumps(["no", "name"]),
        json.dumps({"name": f"{prefix}b", "schedule": "@hourly"}),
    ]
    result = run("import", stdin="\n".join(lines) + "\n", url=api.url)
    assert result.exit_code == 1
    assert result.stdout == "imported 2 jobs\n"
    errors = result.stderr.splitlines()
    assert errors[0] == (f"line 3 (job '{prefix}exists'): 409 DAPR_SCHEDULER_SCHEDULE_JOB: "
                         f"failed to schedule job due to: job already exists: '{prefix}exists'")
    assert errors[1].startswith("line 4: Expecting property name")
    assert errors[2].startswith(f"line 5 (job '{prefix}bad'): 400 DAPR_SCHEDULER_SCHEDULE_JOB: "
                                "invalid schedule 'every 5s'")
    assert errors[3] == "line 6: not a job: a JSON object with a name is expected"
    assert errors[4] == "Error: 4 of 6 not imported"
    assert api.get(f"{prefix}a")[0] == 200 and api.get(f"{prefix}b")[0] == 200
    assert api.get(f"{prefix}exists")[1]["dueTime"] == "3h"

    again = run("import", "--overwrite", "--json", stdin=lines[2] + "\n", url=api.url)
    assert json.loads(again.stdout) == {"imported": 1, "failed": []}
    assert api.get(f"{prefix}exists")[1]["dueTime"] == "2h"
    failed = run("import", "--json", stdin=lines[4] + "\n", url=api.url)
    assert failed.exit_code == 1
    report = json.loads(failed.stdout)
    assert report["imported"] == 0
    assert [(f["line"], f["name"], f["status"], f["errorCode"]) for f in report["failed"]] == [
        (1, f"{prefix}bad", 400, "DAPR_SCHEDULER_SCHEDULE_JOB")]


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The requests the CLI makes from now on: (method, path)."""
    from app.cli.client import ApiClient

    calls: list[tuple[str, str]] = []
    real_call = ApiClient.call

    def counted(self: ApiClient, method: str, path: str, **kwargs: Any) -> Any:
        calls.append((method, path))
        return real_call(self, method, path, **kwargs)

    monkeypatch.setattr(ApiClient, "call", counted)
    return calls


def test_import_sends_the_lines_in_bulk_requests_and_answers_them_in_order(
        api: Api, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """IMPORT_BATCH_JOBS lines a request (3 here): 8 lines, 3 requests; a name given again
    meets its own earlier line in another request, as it would one by one."""
    from app.cli import jobs as cli_jobs

    monkeypatch.setattr(cli_jobs, "IMPORT_BATCH_JOBS", 3)
    calls = _count_calls(monkeypatch)
    names = [f"{prefix}{i}" for i in range(6)]
    lines = [json.dumps({"name": n, "dueTime": "1h"}) for n in names]
    lines[4:4] = ["{not json"]
    lines.append(json.dumps({"name": names[0], "dueTime": "2h"}))
    result = run("import", stdin="\n".join(lines) + "\n", url=api.url)
    assert result.exit_code == 1
    assert result.stdout == "imported 6 jobs\n"
    assert result.stderr.splitlines()[:2] == [
        "line 5: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        f"line 8 (job '{names[0]}'): 409 DAPR_SCHEDULER_SCHEDULE_JOB: failed to schedule job "
        f"due to: job already exists: '{names[0]}'"]
    assert calls == [("POST", "/v1.0/jobs")] * 3
    assert all(api.get(n)[1]["dueTime"] == "1h" for n in names)


def test_import_sends_text_as_utf8_so_a_batch_stays_under_the_bulk_limit(
        api: Api, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line's text went as ASCII escapes, three times its bytes for `日`: 5 lines of
    990 KB (a batch under IMPORT_BATCH_BYTES) became one request over the API's 8 MiB,
    refused while being sent, and the import ended as "cannot reach the jobs API"."""
    calls = _count_calls(monkeypatch)
    lines = [json.dumps({"name": f"{prefix}{i}", "dueTime": "1h", "data": "日" * 330_000},
                        ensure_ascii=False) for i in range(5)]
    result = run("import", stdin="\n".join(lines) + "\n", url=api.url)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout == "imported 5 jobs\n" and calls == [("POST", "/v1.0/jobs")]


def test_a_line_over_the_apis_body_limit_is_that_lines_failure(
        api: Api, prefix: str) -> None:
    """Refused (413) while it was being sent, it ended the import as "cannot reach the
    jobs API", the lines after it not imported; a single schedule said the same."""
    big = json.dumps({"name": f"{prefix}big", "dueTime": "1h", "data": ["x" * 1000] * 9000})
    lines = [json.dumps({"name": f"{prefix}a", "dueTime": "1h"}), big,
             json.dumps({"name": f"{prefix}b", "dueTime": "1h"})]
    result = run("import", stdin="\n".join(lines) + "\n", url=api.url)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == "imported 2 jobs\n"
    assert result.stderr.splitlines()[0].startswith(f"line 2 (job '{prefix}big'): 413")
    assert api.get(f"{prefix}a")[0] == 200 and api.get(f"{prefix}b")[0] == 200


def test_import_ends_at_a_refusal_that_each_job_would_meet(token_api: Api, prefix: str) -> None:
    """A wrong token (or the API's 503) refuses the bulk request as it would each job: the
    import ends there, instead of sending every line alone to the same answer."""
    lines = [json.dumps({"name": f"{prefix}{i}", "dueTime": "1h"}) for i in range(5)]
    result = run("import", stdin="\n".join(lines) + "\n", url=token_api.url, token="nope")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: 401 ERR_UNAUTHORIZED: invalid api token (DAPR_API_TOKEN is not the API's "
        "token) (after 0 imported)"]


def test_import_keeps_at_most_a_bound_of_failures_for_its_summary(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every failure is said, and counted; a million bad lines were all held in memory,
    and in one batch that was never sent."""
    from app.cli import jobs as cli_jobs

    monkeypatch.setattr(cli_jobs, "MAX_KEPT_FAILURES", 3)
    monkeypatch.setattr(cli_jobs, "IMPORT_BATCH_JOBS", 4)
    result = run("import", "--json", stdin="x\n" * 10, url=api.url)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["imported"] == 0 and report["failedCount"] == 10
    assert [f["line"] for f in report["failed"]] == [1, 2, 3]
    assert len(result.stderr.splitlines()) == 11  # each line, then the count


def test_import_goes_one_by_one_where_the_api_refuses_the_bulk_request(
        procs: Procs, redis_server: RedisProcess, app_receiver: Receiver, prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An API with a lower JOBRUNNER_BULK_MAX_JOBS refuses the whole request (400): the
    lines are sent again one by one, with the same outcome."""
    small = Api(procs, _settings(redis_server, app_receiver, bulk_max_jobs=2), "api-bulk-2")
    assert small.post(f"{prefix}exists", {"dueTime": "3h"})[0] == 204
    calls = _count_calls(monkeypatch)
    lines = [json.dumps({"name": f"{prefix}{n}", "dueTime": "1h"})
             for n in ("a", "b", "exists", "c")]
    result = run("import", stdin="\n".join(lines) + "\n", url=small.url)
    assert result.exit_code == 1 and result.stdout == "imported 3 jobs\n"
    assert result.stderr.startswith(f"line 3 (job '{prefix}exists'): 409 ")
    assert calls == [("POST", "/v1.0/jobs"), *[("POST", f"/v1.0/jobs/{prefix}{n}")
                                               for n in ("a", "b", "exists", "c")]]
    assert all(small.get(f"{prefix}{n}")[0] == 200 for n in ("a", "b", "c"))


# --- the restore extension of the schedule body ----------------------------------------------


def _at(seconds_from_now: float) -> str:
    return rfc3339(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param({"schedule": "0 0 * * * *", "nextTriggerTime": "2031-01-01T00:30:00Z"},
                     "is not a time of the schedule", id="not-a-cron-time"),
        pytest.param({"dueTime": "2031-01-01T00:00:00Z", "nextTriggerTime": "2031-01-02T00:00:00Z"},
                     "is not the job's dueTime", id="not-the-due-time"),
        pytest.param({"dueTime": "1h", "nextTriggerTime": "2031-01-01T00:00:00Z",
                      "triggerCount": 1, "lastTriggerTime": "2030-01-01T00:00:00Z"},
                     "a job without a schedule fires once", id="one-shot-that-fired"),
        pytest.param({"schedule": "@hourly", "repeats": 2,
                      "nextTriggerTime": "2031-01-01T00:00:00Z", "triggerCount": 2,
                      "lastTriggerTime": "2030-12-31T23:00:00Z"},
                     "has fired all its 2 repeats", id="repeats-spent"),
        pytest.param({"schedule": "@hourly", "nextTriggerTime": "2031-01-01T00:00:00Z",
                      "triggerCount": 3}, "go together", id="count-without-last"),
        pytest.param({"schedule": "@hourly", "nextTriggerTime": "2031-01-01T00:00:00Z",
                      "expiryTime": "2032-01-01T00:00:00Z"}, "expiryTime needs a ttl",
                     id="expiry-without-ttl"),
        pytest.param({"schedule": "@hourly", "ttl": "2030-06-01T00:00:00Z",
                      "nextTriggerTime": "2030-01-01T00:00:00Z",
                      "expiryTime": "2030-07-01T00:00:00Z"}, "is not the job's ttl",
                     id="expiry-not-the-ttl"),
        pytest.param({"schedule": "@every 1h", "ttl": "100h",
                      "nextTriggerTime": "2031-01-01T00:00:00Z",
                      "expiryTime": "2030-12-31T00:00:00Z"}, "would never fire",
                     id="next-after-expiry"),
        pytest.param({"schedule": "@every 1h", "nextTriggerTime": "2031-01-01T00:00:00Z",
                      "triggerCount": 1, "lastTriggerTime": "2031-01-01T00:00:00Z"},
                     "must be before the next trigger", id="last-not-before-next"),
    ],
)
def test_restore_refuses_what_does_not_fit_the_job(api: Api, prefix: str, body: dict[str, Any],
                                                   message: str) -> None:
    status, answer = api.post(f"{prefix}r", body)
    assert status == 400, answer
    assert answer["errorCode"] == "DAPR_SCHEDULER_SCHEDULE_JOB" and message in answer["message"]
    assert api.get(f"{prefix}r")[0] == 404


def test_restore_takes_back_the_expiry_of_a_ttl_with_sub_millisecond_digits(
        api: Api, prefix: str) -> None:
    """The ttl is kept rounded down; the import compared the export's expiryTime with it
    rounded up, and refused the job's own export ("is not the job's ttl")."""
    ttl = "2031-06-01T00:00:00.0005Z"
    assert api.post(f"{prefix}sub", {"schedule": "@hourly", "ttl": ttl})[0] == 204
    status, exported = api.get(f"{prefix}sub")
    assert status == 200 and exported["expiryTime"] == "2031-06-01T00:00:00.000Z", exported
    body = {k: exported[k] for k in ("schedule", "ttl", "nextTriggerTime", "expiryTime")}
    status, answer = api.post(f"{prefix}sub-again", body)
    assert status == 204, answer


@pytest.mark.parametrize(
    ("field", "value"),
    [("nextTriggerTime", "1h"), ("nextTriggerTime", 5), ("lastTriggerTime", "yesterday"),
     ("triggerCount", -1), ("triggerCount", True), ("triggerCount", 2**32),
     ("expiryTime", "2031-02-30T00:00:00Z")],
)
def test_restore_fields_must_be_well_formed(api: Api, prefix: str, field: str, value: Any) -> None:
    body = {"schedule": "@hourly", "ttl": "1000h", "nextTriggerTime": "2031-01-01T00:00:00Z",
            field: value}
    status, answer = api.post(f"{prefix}w", body)
    assert status == 400 and answer["errorCode"] == "ERR_MALFORMED_REQUEST", answer
    assert field in answer["message"]


def test_a_next_trigger_already_past_plans_the_job_anew(api: Api, prefix: str) -> None:
    name = f"{prefix}late"
    status, _ = api.post(name, {"schedule": "@every 1h", "nextTriggerTime": "2020-01-01T00:00:00Z",
                                "triggerCount": 3, "lastTriggerTime": "2019-12-31T23:00:00Z"})
    assert status == 204
    job = api.get(name)[1]
    # Its schedule's next time after now, as a worker would have it (`@every` keeps its
    # phase: on the hour, from 23:00), with the count and last kept.
    now = dt.datetime.now(dt.UTC).timestamp() * 1000
    assert now < ms(job["nextTriggerTime"]) <= now + 3_600_000
    assert ms(job["nextTriggerTime"]) % 3_600_000 == 0
    assert job["triggerCount"] == 3 and job["lastTriggerTime"] == "2019-12-31T23:00:00.000Z"


@pytest.mark.parametrize("last", ["2030-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_a_last_trigger_after_a_past_next_one_is_refused(api: Api, prefix: str,
                                                         last: str) -> None:
    """Taken, it silenced the job until after that time, or stored a next trigger past
    what GET can write (exported so, refused on import)."""
    status, answer = api.post(f"{prefix}skewed", {
        "schedule": "@every 1h", "nextTriggerTime": "2020-01-01T00:00:00Z",
        "triggerCount": 1, "lastTriggerTime": last})
    assert status == 400 and "must be before the next trigger" in answer["message"], answer


def test_an_every_job_with_a_ttl_restored_in_its_last_interval_is_kept(
        api: Api, prefix: str) -> None:
    """Its next trigger is before its expiry; the schedule's first time from now is not,
    and was taken for the job's first (400: the job lost on export, delete, import)."""
    now = dt.datetime.now(dt.UTC)
    nxt, ttl = now + dt.timedelta(seconds=30), now + dt.timedelta(seconds=40)
    iso = "%Y-%m-%dT%H:%M:%S.%f"
    name = f"{prefix}lasting"
    status, answer = api.post(name, {
        "schedule": "@every 1m", "ttl": ttl.strftime(iso)[:-3] + "Z",
        "nextTriggerTime": nxt.strftime(iso)[:-3] + "Z", "triggerCount": 3,
        "lastTriggerTime": (nxt - dt.timedelta(minutes=1)).strftime(iso)[:-3] + "Z",
        "expiryTime": ttl.strftime(iso)[:-3] + "Z"})
    assert status == 204, answer
    assert api.get(name)[1]["nextTriggerTime"] == nxt.strftime(iso)[:-3] + "Z"


def test_a_name_that_is_no_unicode_text_is_that_lines_failure(api: Api, prefix: str) -> None:
    lines = [json.dumps({"name": f"{prefix}\ud800x", "dueTime": "1h"}),
             json.dumps({"name": f"{prefix}fine", "dueTime": "1h"})]
    result = run("import", stdin="\n".join(lines) + "\n", url=api.url)
    assert result.exit_code == 1, result.exception  # not a traceback (it was one)
    assert "line 1" in result.stderr and "lone surrogate" in result.stderr
    assert api.get(f"{prefix}fine")[0] == 200


def test_a_large_request_to_an_api_that_went_away_is_unreachable(tmp_path: Path) -> None:
    """A connection cut while a large body is sent is a 413 only while the API is still
    there; one that went away (killed mid-upload) is exit 3, as unreachable."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def take_some_then_go() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        server.close()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset

    threading.Thread(target=take_some_then_go, daemon=True).start()
    data = tmp_path / "big.json"
    data.write_text(json.dumps(["x" * 1000] * 2000))
    result = run("schedule", "x", "--due-time", "1h", "--data-file", str(data),
                 url=f"http://127.0.0.1:{port}")
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "cannot reach the jobs API" in result.stderr


@pytest.mark.parametrize("due_time", ["2020-01-01T00:00:00Z", "10m"], ids=["rfc3339", "duration"])
def test_a_job_that_fired_is_not_planned_from_its_due_time_again(
        api: Api, prefix: str, due_time: str) -> None:
    """Its next trigger passed (exported while retrying, or the file waited): an RFC 3339
    dueTime was refused, as not before the last trigger (the job lost on export, delete,
    import), and a duration one started it again from the dueTime (silent 10 minutes)."""
    name = f"{prefix}fired"
    status, answer = api.post(name, {"dueTime": due_time, "schedule": "@every 2s",
                                     "nextTriggerTime": "2020-01-01T00:00:04Z",
                                     "triggerCount": 2,
                                     "lastTriggerTime": "2020-01-01T00:00:02Z"})
    assert status == 204, answer
    job = api.get(name)[1]
    now = dt.datetime.now(dt.UTC).timestamp() * 1000
    assert now < ms(job["nextTriggerTime"]) <= now + 2_000
    assert job["triggerCount"] == 2


def test_a_restored_job_goes_on_counting_its_repeats(api: Api, app_receiver: Receiver,
                                                     prefix: str) -> None:
    name = f"{prefix}counted"
    line = json.dumps({"name": name, "schedule": "@every 1s", "repeats": 3,
                       "nextTriggerTime": _at(1.0), "triggerCount": 2,
                       "lastTriggerTime": _at(-1.0), "data": "last one"})
    ok(run("import", stdin=line + "\n", url=api.url))
    job = api.get(name)[1]
    assert job["triggerCount"] == 2 and job["status"] == "scheduled"
    with ThreadWorker(api.settings):
        wait_for(lambda: api.get(name)[0] == 404, 30, interval=0.05,
                 what="the job to fire its third and last time")
    path = f"/job/{_quote(name)}"
    assert [d.body for d in app_receiver.received(path)] == [b'"last one"']


# --- errors ----------------------------------------------------------------------------------


def test_the_api_saying_no_is_one_line_with_its_code(api: Api, prefix: str) -> None:
    bad = run("schedule", f"{prefix}x", "--schedule", "every 5s", url=api.url)
    assert bad.exit_code == 1 and bad.stdout == ""
    assert re.fullmatch(r"Error: 400 DAPR_SCHEDULER_SCHEDULE_JOB: invalid schedule 'every 5s'"
                        r": [^\n]+\n", bad.stderr), bad.stderr
    missing = run("get", f"{prefix}none", url=api.url)
    assert missing.exit_code == 1
    assert missing.stderr == (f"Error: 404 DAPR_SCHEDULER_JOB_NOT_FOUND: failed to get job "
                              f"due to: job not found: {prefix}none\n")
    assert run("delete", f"{prefix}none", url=api.url).exit_code == 1


def test_a_name_or_prefix_of_bytes_that_are_not_utf8_is_a_usage_error_not_a_traceback(
        api: Api, prefix: str) -> None:
    """A command line's bytes that are not UTF-8 (Python's surrogate escapes) could not be
    put in the URL: a UnicodeEncodeError's traceback."""
    name = f"{prefix}\udcff"  # the byte 0xff, as Python reads it from argv
    for args in (["get", name], ["pause", name], ["trigger", name], ["history", name],
                 ["list", "--prefix", name], ["delete", "--prefix", name, "--yes"]):
        result = run(*args, url=api.url)
        assert result.exit_code == 2, (args, result.stdout, result.stderr, result.exception)
        assert "is not UTF-8 text" in result.stderr and "\\xff" in result.stderr, (
            args, result.stderr)


def test_a_token_is_sent_and_a_wrong_one_is_said_so(token_api: Api, prefix: str) -> None:
    without = run("list", url=token_api.url)
    assert without.exit_code == 1
    assert without.stderr == ("Error: 401 ERR_UNAUTHORIZED: invalid api token "
                              "(the API wants its token in DAPR_API_TOKEN)\n")
    wrong = run("list", url=token_api.url, token="nope")
    assert wrong.exit_code == 1
    assert wrong.stderr == ("Error: 401 ERR_UNAUTHORIZED: invalid api token "
                            "(DAPR_API_TOKEN is not the API's token)\n")
    ok(run("schedule", f"{prefix}t", "--due-time", "1h", url=token_api.url, token=TOKEN))
    assert json.loads(ok(run("get", f"{prefix}t", "--json", url=token_api.url,
                             token=TOKEN)).stdout)["dueTime"] == "1h"


def test_the_default_url_is_this_machines_api(api: Api, prefix: str) -> None:
    ok(run("schedule", f"{prefix}d", "--due-time", "1h",
           env={"DAPR_HTTP_PORT": str(api.port), "JOBRUNNER_HTTP_HOST": "0.0.0.0"}))
    assert api.get(f"{prefix}d")[0] == 200


def test_an_unreachable_api_is_one_line_and_exit_3() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    refused = run("list", url=closed)
    assert refused.exit_code == 3 and refused.stdout == ""
    assert refused.stderr == (f"Error: cannot reach the jobs API at {closed}: connection "
                              "refused (is jobrunner running there? --url says where)\n")

    # A listener that never answers: the timeout, said as such.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = run("get", "x", "--timeout", "0.3", url=url)
    assert result.exit_code == 3
    assert result.stderr == (f"Error: cannot reach the jobs API at {url}: no answer within "
                             "0.3s (--timeout)\n")


@pytest.mark.parametrize("status", [b"200 OK", b"500 Internal Server Error"])
def test_the_timeout_bounds_the_whole_request_not_each_read(status: bytes) -> None:
    """A server that trickles its answer (or its error's), a byte at a time within the
    timeout: each read met urllib's bound, and the command waited as long as the server
    went on."""
    stop = threading.Event()

    def trickle(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n")
            while not stop.wait(0.1):
                with contextlib.suppress(OSError):
                    conn.sendall(b" ")

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        server = threading.Thread(target=trickle, args=(listener,), daemon=True)
        server.start()
        try:
            result = run("get", "x", "--timeout", "1", url=url)
        finally:
            stop.set()
            server.join(10)
    assert result.exit_code == 3, result.output
    assert result.stderr == (f"Error: cannot reach the jobs API at {url}: no answer within "
                             "1s (--timeout)\n")


@pytest.mark.parametrize(("status", "body", "kind", "says"), [
    # An HTML error page (a proxy, another server): said as not the jobs API.
    (502, b"<html>bad gateway</html>", "text/html",
     "502: Bad Gateway (not an answer of the jobs API: text/html)"),
    # A server's error that would drive the terminal (its title): said with escapes.
    (400, b'{"errorCode": "E\\u001b[2J", "message": "bad \\u001b]0;PWNED\\u0007"}',
     "application/json", "400 E\\x1b[2J: bad \\x1b]0;PWNED\\x07"),
])
def test_something_else_than_the_api_at_the_url(status: int, body: bytes, kind: str,
                                                says: str) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Html(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        result = run("get", "x", url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {says}\n"


def test_an_internationalised_host_name_is_taken_in_its_xn_form() -> None:
    """As the Host header can carry it (a name outside latin-1 was urllib's traceback)."""
    for given, sent in (("http://b\u00fccher.localhost:9/", "http://xn--bcher-kva.localhost:9"),
                        ("https://\u2603.example", "https://xn--n3h.example")):
        assert cli_client.check_url(click.Context(main), None, given) == sent


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["schedule", "x"], "say when: --due-time, --schedule, or both"),
        (["schedule", "x", "--due-time", "1s", "--data", "hello"], "not JSON"),
        (["schedule", "x", "--due-time", "1s", "--data", "1", "--data-file", "-"],
         "give --data or --data-file, not both"),
        (["schedule", "x", "--due-time", "1s", "--failure-policy", "sometimes"],
         "use drop, constant:INTERVAL:MAX_RETRIES"),
        (["schedule", "x", "--due-time", "1s", "--repeats", "-1"], "--repeats"),
        (["delete"], "say which jobs: NAME, or --prefix P (not both)"),
        (["delete", "x", "--prefix", "y"], "say which jobs"),
        (["list", "--url", "ftp://host"], "must be an http(s) URL"),
        (["list", "--url", "http://[::1"], "Invalid IPv6 URL"),
        (["list", "--url", "http://user:s3cret@127.0.0.1:9"], "takes no user or password"),
        # (urllib's and the socket's tracebacks)
        (["list", "--url", "http://127.0.0.1:9/\u2603"], "must be ASCII"),
        (["list", "--url", "http://127.0.0.1:9", "--timeout", "nan"], "not nan"),
        # A route in the address: said, not a job name "v1.0/jobs" that is invalid.
        (["list", "--url", "http://127.0.0.1:9/v1.0/jobs"],
         "without its routes: 'http://127.0.0.1:9', not"),
        (["list", "--url", "http://127.0.0.1:9/under/v1.0-alpha1/"],
         "without its routes: 'http://127.0.0.1:9/under', not"),
    ],
)
def test_usage_errors_exit_2(args: list[str], says: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert says in result.stderr and "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr


def test_the_console_script_exit_codes_and_no_traceback(api: Api) -> None:
    """The installed command, as a shell script would run it."""
    env = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}

    def jobs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*JOBRUNNER, "jobs", *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    closed = jobs("list", "--url", f"http://127.0.0.1:{free_port()}")
    missing = jobs("get", "no-such-job", "--url", api.url)
    usage = jobs("schedule", "x")
    assert (closed.returncode, missing.returncode, usage.returncode) == (3, 1, 2)
    for done in (closed, missing, usage):
        assert "Traceback" not in done.stderr and done.stdout == ""
    assert len(closed.stderr.splitlines()) == 1 and len(missing.stderr.splitlines()) == 1
    assert jobs("list", "--url", api.url).returncode == 0


class _Foreign(threading.Thread):
    """An HTTP server that is not a jobs API: every request answered 200 with `body`."""

    def __init__(self, body: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.body = body
        self.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\nContent-Length: "
                             + str(len(self.body)).encode() + b"\r\n\r\n" + self.body)


@pytest.mark.parametrize("body", [b"[" * 100_000,  # deeper than json reads
                                  b'{"jobs": [1, 2, 3], "workersAlive": 1e999, "apps": []}'])
def test_an_answer_that_is_not_the_jobs_apis_is_one_error_line(body: bytes) -> None:
    foreign = _Foreign(body)
    try:
        for args in (["list"], ["history", "x"]):
            result = run(*args, url=foreign.url)
            assert result.exit_code == 1, (args, result.stdout, result.exception)
            assert "is --url a jobrunner API?" in result.stderr, (args, result.stderr)
        result = CliRunner().invoke(main, ["stats", "--url", foreign.url])
        assert result.exit_code == 1 and "is --url a jobrunner API?" in result.stderr, (
            result.stderr, result.exception)
    finally:
        foreign.sock.close()


@pytest.mark.parametrize("body", [b'{"foo": 1}',
                                  b'{"name": 3, "triggerId": [1], "appId": null}',
                                  b'{"jobs": [], "nextPageToken": "again"}',  # a page for ever
                                  b'{"jobs": [{"name": "a"}], "nextPageToken": 7}',
                                  b'{"jobs": ["a"], "deleted": "all"}'])
def test_json_of_another_shape_is_one_error_line_not_a_listing(body: bytes) -> None:
    """Another server's JSON object: every command that reads an answer refuses it, rather
    than print its fields as a job's, `None` as a count, or page on for ever."""
    foreign = _Foreign(body)
    try:
        for args in (["get", "x"], ["list"], ["export"], ["pause", "x"], ["resume", "x"],
                     ["pause", "--all"], ["trigger", "x"], ["schedule", "x", "--due-time", "1h"],
                     ["delete", "--prefix", "a", "--yes"]):
            result = run(*args, url=foreign.url)
            assert result.exit_code == 1, (args, result.stdout, result.exception)
            assert "is --url a jobrunner API?" in result.stderr, (args, result.stderr)
            assert result.stdout == "", (args, result.stdout)
    finally:
        foreign.sock.close()


def test_an_apps_error_text_cannot_add_rows_or_drive_the_terminal() -> None:
    """A history entry's error is the app's own text (a gRPC status message, say): its
    line breaks printed a second row that was never there, its escapes colours."""
    fake = "2026-11-30T00:00:00.000Z  -  1  delivered  200  0.50ms  -"
    answer = {"name": "x", "jobExists": True, "history": [
        {"scheduledTime": "2026-11-29T00:00:00.000Z", "deliveredTime": "2026-11-29T00:00:00.001Z",
         "attempt": 1, "result": "dropped", "status": None, "durationMs": 12.3,
         "error": f"app answered gRPC INTERNAL: boom\n{fake}\x1b[2J"}]}
    foreign = _Foreign(json.dumps(answer).encode())
    try:
        result = run("history", "x", url=foreign.url)
    finally:
        foreign.sock.close()
    assert result.exit_code == 0, result.stderr
    header, row = result.stdout.splitlines()  # one entry: one row
    assert header.startswith("SCHEDULED") and "\x1b" not in result.stdout
    assert row.endswith("boom\\n" + fake + "\\x1b[2J")


def test_json_nested_too_deep_is_refused_as_input(tmp_path: Path) -> None:
    deep = "[" * 100_000
    result = run("schedule", "x", "--due-time", "1s", "--data", deep,
                 url="http://127.0.0.1:9")
    assert result.exit_code == 2 and "--data" in result.stderr, (result.stderr,
                                                                 result.exception)
    lines = tmp_path / "deep.jsonl"
    lines.write_text(deep + "\n")
    result = run("import", str(lines), "--json", url="http://127.0.0.1:9")
    assert result.exit_code == 1, (result.stdout, result.exception)
    assert json.loads(result.stdout)["failed"][0]["message"] == "not JSON: nested too deep"


def test_a_reader_that_leaves_early_ends_the_command_quietly() -> None:
    """`jobrunner jobs export | head -1`: no `Error: [Errno 32] Broken pipe`."""
    page = {"jobs": [{"name": f"j{i}", "dueTime": "1h"} for i in range(20_000)],
            "nextPageToken": ""}
    foreign = _Foreign(json.dumps(page).encode())
    try:
        proc = subprocess.Popen([*JOBRUNNER, "jobs", "export", "--url",
                                 foreign.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())["name"] == "j0"
        proc.stdout.close()  # as `head -1` does
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=30) == 0, stderr
        assert stderr == "", stderr
    finally:
        foreign.sock.close()


def test_a_served_api_refuses_a_job_past_the_apps_max_jobs(
        procs: Procs, redis_server: RedisProcess, app_receiver: Receiver) -> None:
    """Through the served API's event-loop path (app/api/fast_schedule.py), which hands a
    refused job to the WSGI path to answer; the CLI says it in one line."""
    capped = Api(procs, _settings(redis_server, app_receiver, app_max_jobs=1), "api-capped")
    assert capped.post("first", {"dueTime": "1h"})[0] == 204
    status, body = capped.post("second", {"dueTime": "1h"})
    assert (status, body["errorCode"]) == (429, "ERR_APP_JOB_LIMIT")
    said = run("schedule", "second", "--due-time", "1h", url=capped.url)
    assert (said.exit_code, said.stderr) == (
        1, f"Error: 429 ERR_APP_JOB_LIMIT: {body['message']}\n")
    assert capped.post("first", {"dueTime": "2h", "overwrite": True})[0] == 204
