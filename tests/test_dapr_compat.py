"""Today's Dapr beside the seed: the per-app `--dapr-compat` switch (JOBRUNNER_DAPR_COMPAT).

End to end (a real API server, an in-process worker and the app, all on 127.0.0.1):
- a program written like today's Dapr jobs quickstart (dapr/quickstarts, jobs/python/http:
  its job-service reads the delivered body as the scheduled data and splits
  `data['value']` at ':'; its job-scheduler POSTs with `requests.post(json=...)` and
  prints the GET answer) prints every line the quickstart expects under the switch, and
  fails as the issue describes without it;
- the seed's job-service (reads `{"type_url", "value": base64}`) works without the switch,
  and fails with it: the two need opposite settings, hence one switch per app.

Then the switch's contract piece by piece: data delivered byte for byte as scheduled,
any `@type` and extra fields accepted, GET `data` as Dapr 1.15+ answers it, a stored Any
(given over gRPC) delivered as Dapr's HTTP channel does; the switch on the commands and
in the settings; the default path's job record unchanged. And the unreachable-app
decision: an app that does not listen yet has its triggers held (staged, no attempt
spent) until it does, as daprd holds them; `@every 0s` with repeats fires back to back.
"""

from __future__ import annotations

import base64
import json
import threading
import traceback
import urllib.error
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2
from werkzeug.serving import BaseWSGIServer, make_server

from app.api.factory import create_app
from app.cli.main import main as jobrunner
from app.cli.options import app_env, app_options
from app.jobs.anydata import DAPR_FORMAT, dapr_body, dapr_get_data, delivery_body
from app.jobs.errors import ApiError
from app.jobs.model import RECORD_FIELDS, Job
from app.jobs.validation import job_to_api, parse_job_request
from app.settings import Settings, SettingsError
from app.store.store import Store
from tests.support.jobs import APP, dead_letters
from tests.support.receiver import Receiver
from tests.support.redis_proc import free_port
from tests.support.seed import SEED_BODY
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker

pytestmark = pytest.mark.usefixtures("reap_workers")

WKT = "type.googleapis.com/google.protobuf."
VALUE = WKT + "Value"
STRING_VALUE = WKT + "StringValue"
DEFAULT_POLICY = {"constant": {"interval": "1s", "maxRetries": 3}}

# The quickstart's two jobs (its dueTimes are 15s and 20s; shorter here, long enough for
# the GET right after each POST to find the job).
QUICKSTART_JOBS = {
    "R2-D2": {"data": {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}, "dueTime": "2s"},
    "C-3PO": {"data": {"@type": STRING_VALUE, "value": "C-3PO:Limb Calibration"},
              "dueTime": "3s"},
}
# The quickstart README's expected_stdout_lines (output_match_mode: substring, any order).
QUICKSTART_EXPECTED = [
    "Sending request to schedule job: R2-D2",
    "Job scheduled: R2-D2",
    "Sending request to retrieve job: R2-D2",
    "Job details for R2-D2:",
    "Sending request to schedule job: C-3PO",
    "Job scheduled: C-3PO",
    "Received job request...",
    "Starting droid: R2-D2",
    "Executing maintenance job: Oil Change",
    "Sending request to retrieve job: C-3PO",
    "Job details for C-3PO:",
    "Received job request...",
    "Starting droid: C-3PO",
    "Executing maintenance job: Limb Calibration",
]


# --- the programs ------------------------------------------------------------------------


class Output:
    """What a program prints, line by line (thread-safe)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def print(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def count(self, fragment: str) -> int:
        with self._lock:
            return sum(fragment in line for line in self.lines)


def quickstart_service(out: Output) -> type[BaseHTTPRequestHandler]:
    """The quickstart's job-service handler, its parsing mirrored step by step: the body is
    the scheduled data, `value` of it is "droid:task"; an exception answers 400."""

    class JobHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            out.print("Received job request...")
            try:
                if not self.path.startswith("/job/"):
                    self._answer(404)
                    return
                length = int(self.headers.get("Content-Length", 0))
                job_data = json.loads(self.rfile.read(length).decode("utf-8"))
                value = job_data.get("value", "")
                droid_array = value.replace("\n", "").split(":")
                droid, task = droid_array[0], droid_array[1]
                out.print("Starting droid: " + droid)
                out.print("Executing maintenance job: " + task)
                self._answer(200)
            except Exception:
                out.print("Error processing job request:")
                out.print(traceback.format_exc())
                self._answer(400)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-type", "application/json")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return JobHandler


def seed_service(out: Output) -> type[BaseHTTPRequestHandler]:
    """The seed's job-service handler (Go), mirrored: `{"type_url", "value"}`, the value
    decoded as base64.RawStdEncoding (no padding), newlines removed, split at ':'."""

    class JobHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            out.print("Received job request...")
            length = int(self.headers.get("Content-Length", 0))
            try:
                job = json.loads(self.rfile.read(length))
                value = job["value"] if isinstance(job, dict) else None
                if not isinstance(value, str):  # Go: a JSON type error
                    raise ValueError(f"cannot unmarshal {type(value).__name__} into .value")
                if "=" in value:
                    raise ValueError("illegal base64 data (RawStdEncoding takes no padding)")
                decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            except (ValueError, TypeError) as exc:
                out.print(f"Error decoding: {exc}")
                self._answer(400)
                return
            parts = decoded.decode("utf-8", "replace").replace("\n", "").split(":")
            if len(parts) < 2:  # Go panics: index out of range [1] with length 1
                out.print(f"panic: runtime error: index out of range [1] with length {len(parts)}")
                self._answer(500)
                return
            out.print("Starting droid: " + parts[0])
            out.print("Executing maintenance job: " + parts[1])
            self._answer(200)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return JobHandler


class App:
    """An app's HTTP server on 127.0.0.1 (single-threaded, as the quickstart's)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.httpd = HTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> App:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class Api:
    """The jobs API (create_app) served on 127.0.0.1 by a real HTTP server."""

    def __init__(self, settings: Settings) -> None:
        self.httpd: BaseWSGIServer = make_server("127.0.0.1", 0, create_app(settings),
                                                 threaded=True)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Api:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def request(method: str, url: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def quickstart_scheduler(api: Api, out: Output) -> None:
    """The quickstart's job-scheduler: schedule each job (`requests.post(json=body)`,
    i.e. json.dumps with its default separators), then print its GET answer."""
    for name, body in QUICKSTART_JOBS.items():
        out.print(f"Sending request to schedule job: {name}")
        status, text = request("POST", f"{api.base}/v1.0-alpha1/jobs/{name}",
                               json.dumps(body).encode(), {"Content-Type": "application/json"})
        if status not in (200, 204):
            raise AssertionError(f"Failed to schedule job. Status code: {status}, {text}")
        out.print(f"Job scheduled: {name}")
        out.print(f"Sending request to retrieve job: {name}")
        status, text = request("GET", f"{api.base}/v1.0-alpha1/jobs/{name}")
        if status in (200, 204):
            out.print(f"Job details for {name}: {text}")


@pytest.fixture
def compat(settings: Settings) -> Settings:
    return settings.with_(dapr_compat=True)


def _job_details(out: Output, name: str) -> dict[str, Any]:
    prefix = f"Job details for {name}: "
    [line] = [line for line in out.lines if line.startswith(prefix)]
    parsed: dict[str, Any] = json.loads(line[len(prefix):])
    return parsed


# --- end to end: the quickstart and the seed -------------------------------------------


def test_the_quickstart_prints_every_expected_line_under_the_switch(compat: Settings) -> None:
    out = Output()
    with App(quickstart_service(out)) as app, \
            Api(compat.with_(app_url=app.url)) as api, ThreadWorker(compat):
        quickstart_scheduler(api, out)
        wait_for(lambda: out.count("Executing maintenance job:") >= 2, timeout=20,
                 what="both jobs executed")
    for expected in QUICKSTART_EXPECTED:
        assert any(expected in line for line in out.lines), (expected, out.lines)
    assert out.count("Received job request...") == 2  # no retries: each job once
    assert not any("Error" in line for line in out.lines), out.lines
    # The GET answer in Dapr 1.15+'s shape, as the quickstart's README shows it.
    details = _job_details(out, "R2-D2")
    assert {k: details[k] for k in ("name", "dueTime", "data", "failurePolicy")} == {
        "name": "R2-D2", "dueTime": "2s",
        "data": {"@type": VALUE,
                 "value": {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}},
        "failurePolicy": DEFAULT_POLICY,
    }
    assert list(details)[:4] == ["name", "dueTime", "data", "failurePolicy"]


def test_the_quickstart_fails_without_the_switch(settings: Settings) -> None:
    """The issue's report: the envelope's `value` is base64, with no ':' in it."""
    out = Output()
    with App(quickstart_service(out)) as app, \
            Api(settings.with_(app_url=app.url)) as api, ThreadWorker(settings):
        status, _ = request("POST", f"{api.base}/v1.0-alpha1/jobs/R2-D2",
                            json.dumps(QUICKSTART_JOBS["R2-D2"] | {"dueTime": "0s"}).encode())
        assert status == 204
        wait_for(lambda: out.count("IndexError: list index out of range"), timeout=10,
                 what="the quickstart's handler to fail")
    assert out.count("Starting droid:") == 0


def test_the_seed_job_service_works_by_default(settings: Settings) -> None:
    out = Output()
    with App(seed_service(out)) as app, \
            Api(settings.with_(app_url=app.url)) as api, ThreadWorker(settings):
        status, _ = request("POST", f"{api.base}/v1.0-alpha1/jobs/R2-D2", SEED_BODY)
        assert status == 204
        _, text = request("GET", f"{api.base}/v1.0-alpha1/jobs/R2-D2")  # due in 2 s
        wait_for(lambda: out.count("Executing maintenance job:"), timeout=10,
                 what="the seed job executed")
    assert out.count("Received job request...") == 1
    # The droid's name follows the StringValue's length byte (0x10), as in the seed.
    assert any(line.startswith("Starting droid:") and line.endswith("R2-D2")
               for line in out.lines), out.lines
    assert "Executing maintenance job: Oil Change" in out.lines
    assert json.loads(text)["data"] == {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}


def test_the_seed_job_service_fails_under_the_switch(compat: Settings) -> None:
    """The other direction: with the switch the seed's handler gets the data as scheduled,
    whose `value` is not base64."""
    out = Output()
    with App(seed_service(out)) as app, \
            Api(compat.with_(app_url=app.url)) as api, ThreadWorker(compat):
        body = SEED_BODY.replace(b'"2s"', b'"0s"')
        assert request("POST", f"{api.base}/v1.0-alpha1/jobs/R2-D2", body)[0] == 204
        wait_for(lambda: out.count("Error decoding"), timeout=10, what="the seed handler to fail")
    assert out.count("Starting droid:") == 0


# --- the switch, piece by piece (API test client, in-process worker) ----------------------


def _api(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def _delivered_body(receiver: Receiver, name: str) -> bytes:
    [d] = wait_for(lambda: receiver.received(f"/job/{name}"), what=f"delivery of {name}")
    return d.body


@pytest.mark.parametrize(
    "data_text",
    [
        # the quickstart's data as Python's requests sends it (spaces after ':' and ',')
        '{"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "R2-D2:Oil Change"}',
        # the two: no protobuf round trip ("5" stays "5", "1.5s" stays "1.5s")
        '{"@type":"type.googleapis.com/google.protobuf.Int64Value","value":"5"}',
        '{"@type":"type.googleapis.com/google.protobuf.Duration","value":"1.5s"}',
        # any @type, extra fields, a type no descriptor here knows
        '{"@type":"type.googleapis.com/acme.Droid","name":"R2-D2","tasks":["oil",1e3]}',
        '{"@type":"type.googleapis.com/google.protobuf.StringValue","value":"x","extra":true}',
        # JSON text as given: indentation, escapes, exponents, big numbers, repeated keys
        '{\n    "droid" : "R2-D2",\n    "task": "Oil\\u0020Change"\n}',
        '[1.50, 2E+2, -0, 12345678901234567890123]',
        '{"a":1,"a":2}',
        '"someData"',
        "123",
        "true",
        "null",  # data given as null is data: Dapr delivers `null`
    ],
)
def test_data_is_delivered_byte_for_byte_as_scheduled(
        compat: Settings, receiver: Receiver, data_text: str) -> None:
    api = _api(compat)
    body = '{"dueTime": "0s",  "data" :  ' + data_text + ' , "overwrite": true}'
    with ThreadWorker(compat):
        resp = api.post("/v1.0/jobs/exact", data=body.encode())
        assert resp.status_code == 204, resp.get_data(as_text=True)
        assert _delivered_body(receiver, "exact") == data_text.encode()


def test_no_data_is_an_empty_body_and_no_data_in_get(compat: Settings, receiver: Receiver) -> None:
    api = _api(compat)
    assert api.post("/v1.0/jobs/none", json={"dueTime": "1h"}).status_code == 204
    assert "data" not in api.get("/v1.0/jobs/none").get_json()
    with ThreadWorker(compat):
        api.post("/v1.0/jobs/nothing", json={"dueTime": "0s"})
        assert _delivered_body(receiver, "nothing") == b""


@pytest.mark.parametrize(
    "data",
    [
        {"@type": WKT + "Int64Value", "value": "5"},
        {"@type": "type.googleapis.com/acme.Droid", "name": "R2-D2"},
        {"@type": "not even a type URL", "value": [1, {"x": None}]},
        {"@type": STRING_VALUE, "value": "x", "extra": 1},
        {"plain": "object"},
        "text",
        [1, 2],
    ],
)
def test_get_answers_data_as_dapr_does(compat: Settings, data: Any) -> None:
    api = _api(compat)
    resp = api.post("/v1.0-alpha1/jobs/shape", json={"data": data, "dueTime": "1h"})
    assert resp.status_code == 204, resp.get_data(as_text=True)
    for answer in (api.get("/v1.0-alpha1/jobs/shape").get_json(),
                   api.get("/v1.0-alpha1/jobs?prefix=shape").get_json()["jobs"][0]):
        assert answer["data"] == {"@type": VALUE, "value": data}


def test_without_the_switch_unknown_types_and_extra_fields_stay_400(settings: Settings) -> None:
    api = _api(settings)
    for data in ({"@type": "type.googleapis.com/acme.Droid", "name": "R2-D2"},
                 {"@type": STRING_VALUE, "value": "x", "extra": 1}):
        resp = api.post("/v1.0/jobs/bad", json={"data": data, "dueTime": "1h"})
        assert resp.status_code == 400
        assert resp.get_json()["errorCode"] == "ERR_MALFORMED_REQUEST_DATA"


def test_data_limit_counts_the_text_as_given(compat: Settings) -> None:
    api = _api(compat.with_(max_data_bytes=20))
    fits = '{"dueTime":"1h","data":"' + "x" * 18 + '"}'  # 20 bytes of data text
    assert api.post("/v1.0/jobs/fits", data=fits).status_code == 204
    spaced = '{"dueTime":"1h","data":[1,   2,   3,   4,   5,  6]}'  # 21 bytes as given
    resp = api.post("/v1.0/jobs/spaced", data=spaced)
    assert resp.status_code == 413, resp.get_data(as_text=True)
    deep = '{"dueTime":"1h","data":' + "[" * 33 + "]" * 33 + "}"
    resp = _api(compat).post("/v1.0/jobs/deep", data=deep)
    assert resp.status_code == 400 and "nested" in resp.get_json()["message"]


def test_a_dead_letter_shows_its_job_in_the_apps_shape(compat: Settings,
                                                       receiver: Receiver) -> None:
    receiver.status = 500
    api = _api(compat)
    store = Store(compat)
    with ThreadWorker(compat):
        api.post("/v1.0/jobs/dead", json={"dueTime": "0s", "data": {"k": "v"},
                                          "failurePolicy": {"constant": {"maxRetries": 0}}})
        [letter] = wait_for(lambda: dead_letters(store, APP), what="the dead letter")
    shown = api.get(f"/v1.0-alpha1/deadletters/{letter.id}").get_json()
    assert shown["job"]["data"] == {"@type": VALUE, "value": {"k": "v"}}


# --- data at rest and the formats (no Redis) ---------------------------------------------


def _parse(body: bytes, compat: bool) -> Job:
    job, _ = parse_job_request("job", body, None, APP, 1_700_000_000_000, 1 << 20,
                               dapr_compat=compat)
    return job


def test_the_default_path_stores_what_it_stored_before() -> None:
    """The record of a default job has no trace of the switch: the seed's is 59 bytes,
    an array of its fields by place (RECORD_FIELDS), under 64 (README, "Memory")."""
    seed = _parse(SEED_BODY, compat=False)
    assert seed.data_text is None
    assert seed.encode() == b'[1700000002000,"2s","~StringValue","ChBSMi1EMjpPaWwgQ2hhbmdl"]'
    plain = _parse(b'{"dueTime": "2s", "data": {"a": [1, 2]}}', compat=False)
    assert plain.encode() == b'[1700000002000,"2s",null,null,{"a":[1,2]}]'


def test_a_record_as_older_versions_stored_it_reads_the_same() -> None:
    """Versions before 2026-12-01 stored an object of short keys: such a record reads as
    the job it was, and keeps its rev (the digest of the stored bytes, in trigger ids)."""
    for body, compat in ((SEED_BODY, False), (b'{"dueTime":"2s","data":{"a": [1, 2]}}', True),
                         (b'{"schedule": "@every 1m", "repeats": 3, "ttl": "1h", "data": 5,'
                          b' "failurePolicy": {"drop": {}}}', False)):
        job = _parse(body, compat)
        old = orjson.dumps({key: value for key, value in zip(
            RECORD_FIELDS, orjson.loads(job.encode()), strict=False) if value is not None})
        again = Job.decode(APP, "job", old)
        assert again.encode() == job.encode()
        assert again.rev == f"{zlib.crc32(old):08x}" != job.rev


def test_compact_data_under_the_switch_costs_nothing_extra() -> None:
    compact = _parse(b'{"dueTime":"2s","data":{"a":[1,2]}}', compat=True)
    assert compact.encode() == b'[1700000002000,"2s",null,null,{"a":[1,2]}]'
    spaced = _parse(b'{"dueTime":"2s","data":{"a": [1, 2]}}', compat=True)
    record = spaced.encode()
    assert record == b'[1700000002000,"2s",null,null,null,"{\\"a\\": [1, 2]}"]'
    again = Job.decode(APP, "job", record)
    assert (again.data, again.data_text) == ({"a": [1, 2]}, '{"a": [1, 2]}')
    assert delivery_body(again, DAPR_FORMAT) == b'{"a": [1, 2]}'


def test_a_job_scheduled_under_the_switch_reads_back_as_dapr_keeps_it() -> None:
    job = _parse(b'{"dueTime":"2s","data":{"@type":"x/acme.T", "v": 1}}', compat=True)
    assert (job.any_type, job.any_value) == (None, None)
    assert job.data == {"@type": "x/acme.T", "v": 1}
    assert job_to_api(job, dapr_compat=True)["data"] == {"@type": VALUE, "value": job.data}
    assert dapr_get_data(_parse(b'{"dueTime":"2s"}', compat=True)) is None


def _stored_any(type_url: str, message: bytes) -> Job:
    return Job(app_id=APP, name="grpc", any_type=type_url,
               any_value=base64.b64encode(message).decode())


def test_a_stored_any_goes_out_as_daprs_http_channel_sends_it() -> None:
    """Data given over gRPC as an Any (pkg/channel/http, constructJobRequest): a Value as
    its JSON (keys sorted, whole numbers without a fraction), nothing for an empty Value;
    any other type as its value bytes, trimmed."""
    value = struct_pb2.Value()
    value.struct_value.update({"b": [5, 1.5, None, True], "a": "x"})
    assert dapr_body(_stored_any(VALUE, value.SerializeToString())) == \
        b'{"a":"x","b":[5,1.5,null,true]}'
    assert dapr_body(_stored_any(VALUE, b"")) == b""
    text = wrappers_pb2.StringValue(value="R2-D2:Oil Change").SerializeToString()
    assert dapr_body(_stored_any(STRING_VALUE, text)) == text.strip()
    assert dapr_body(_stored_any("", b'  {"json": "bytes"}\n')) == b'{"json": "bytes"}'
    assert dapr_body(_stored_any("type.googleapis.com/acme.T", b"\x08\x01")) == b"\x08\x01"
    # `raw` gives a known type its JSON form, and an unknown one Dapr's bytes
    duration = duration_pb2.Duration(seconds=1, nanos=500_000_000).SerializeToString()
    assert orjson.loads(delivery_body(_stored_any(WKT + "Duration", duration), "raw")) == \
        {"@type": WKT + "Duration", "value": "1.500s"}
    assert delivery_body(_stored_any("type.googleapis.com/acme.T", b"\x08\x01"), "raw") == \
        b"\x08\x01"
    # GET: the Any's JSON form; bytes as base64 when no descriptor knows the type
    assert dapr_get_data(_stored_any("type.googleapis.com/acme.T", b"\x08\x01")) == \
        {"@type": "type.googleapis.com/acme.T", "@bytes": "CAE="}


def test_unknown_delivery_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown delivery format"):
        delivery_body(_stored_any(VALUE, b""), "dapr-ish")


# --- the switch itself --------------------------------------------------------------------


def test_the_switch_in_the_settings() -> None:
    on = Settings.from_env({"JOBRUNNER_DAPR_COMPAT": "1"})
    assert on.dapr_compat and on.registration_format == DAPR_FORMAT
    assert Settings.from_env(on.to_env()) == on
    off = Settings.from_env({})
    assert not off.dapr_compat and off.registration_format == "auto"
    assert Settings.from_env({"JOBRUNNER_DELIVERY_FORMAT": "raw"}).registration_format == "raw"
    with pytest.raises(SettingsError, match="JOBRUNNER_DELIVERY_FORMAT"):
        Settings.from_env({"JOBRUNNER_DAPR_COMPAT": "1", "JOBRUNNER_DELIVERY_FORMAT": "raw"})
    with pytest.raises(SettingsError, match="JOBRUNNER_DAPR_COMPAT"):
        Settings.from_env({"JOBRUNNER_DAPR_COMPAT": "maybe"})
    with pytest.raises(SettingsError, match="JOBRUNNER_DELIVERY_FORMAT"):
        Settings.from_env({"JOBRUNNER_DELIVERY_FORMAT": "dapr"})  # one switch, not two


def test_the_switch_on_the_commands() -> None:
    for name in ("up", "run", "api"):
        # get_command: up and run are loaded when first asked for (app/cli/main.py)
        command = jobrunner.get_command(click.Context(jobrunner), name)
        assert command is not None, name
        assert any(p.name == "dapr_compat" for p in command.params), name

    @click.command()
    @app_options
    @click.pass_context
    def probe(ctx: click.Context, /, **params: Any) -> None:
        click.echo(json.dumps(app_env(ctx, params)))

    runner = CliRunner()
    on = runner.invoke(probe, ["--dapr-compat"], env={"JOBRUNNER_DAPR_COMPAT": None})
    assert json.loads(on.output)["JOBRUNNER_DAPR_COMPAT"] == "1", on.output
    off = runner.invoke(probe, [], env={"JOBRUNNER_DAPR_COMPAT": None})
    assert "JOBRUNNER_DAPR_COMPAT" not in json.loads(off.output), off.output


def test_the_registration_tells_the_workers(compat: Settings) -> None:
    create_app(compat)
    registration = Store(compat).app(compat.app_id)
    assert registration is not None and registration.delivery_format == DAPR_FORMAT


def test_compat_parse_rejects_what_dapr_rejects() -> None:
    with pytest.raises(ApiError) as info:
        _parse(b'{"dueTime":"2s","data":[1,,2]}', compat=True)
    assert info.value.status == 400


# --- an app that does not listen yet; @every 0s ---------------------------------------------


def test_an_app_that_does_not_listen_yet_gets_its_triggers_once_it_does(
        settings: Settings) -> None:
    """As daprd, which takes no trigger before the app's port accepts a connection: the
    API registers the app only then, and meanwhile its due triggers are staged, spending
    no attempt. Once the app listens, each is delivered on its first attempt."""
    port = free_port()
    settings = settings.with_(app_url=f"http://127.0.0.1:{port}")
    api = _api(settings)
    store = Store(settings)
    assert store.app(settings.app_id) is None  # nothing registered while nothing listens
    with ThreadWorker(settings):
        assert api.post("/v1.0/jobs/early", json={"dueTime": "0s", "data": 1}).status_code == 204
        wait_for(lambda: (v := store.get(APP, "early")) and v.status.value == "staged",
                 what="the trigger to be staged")
        view = store.get(APP, "early")
        assert view is not None and view.attempt == 0
        app = Receiver(port=port).start()
        try:
            [d] = wait_for(lambda: app.received("/job/early"), timeout=15,
                           what="delivery once the app listens")
            wait_for(lambda: store.get(APP, "early") is None, what="the job acknowledged")
        finally:
            app.stop()
    assert d.headers["jobrunner-attempt"] == "1"
    assert dead_letters(store, APP) == []


def test_every_0s_with_repeats_fires_back_to_back(settings: Settings, receiver: Receiver,
                                                  store: Store) -> None:
    """Dapr's own test body (tests/integration/suite/daprd/jobs/http/metrics/success.go):
    three triggers, each its own, then the job is over."""
    api = _api(settings)
    with ThreadWorker(settings):
        resp = api.post("/v1.0/jobs/burst", data=b'{"dueTime":"0s","data":"test","repeats":3,'
                                                 b'"schedule":"@every 0s"}')
        assert resp.status_code == 204, resp.get_data(as_text=True)
        wait_for(lambda: store.get(APP, "burst") is None, what="the job to finish")
    ds = receiver.received("/job/burst")
    assert [d.body for d in ds] == [b'"test"'] * 3
    assert len({d.headers["jobrunner-trigger-id"] for d in ds}) == 3
    assert [d.headers["jobrunner-attempt"] for d in ds] == ["1"] * 3
    due = [int(d.headers["jobrunner-scheduled-ms"]) for d in ds]
    assert due == sorted(set(due))


@pytest.mark.parametrize("body", [{"schedule": "@every 0s"},
                                  {"schedule": "@every 0s", "repeats": 0},
                                  {"schedule": "CRON_TZ=Europe/Rome @every 1h"},
                                  {"schedule": "TZ=UTC @every 0s", "repeats": 3}])
def test_every_0s_without_repeats_and_a_zone_on_every_are_400(settings: Settings,
                                                             body: dict[str, Any]) -> None:
    resp = _api(settings).post("/v1.0/jobs/no", json=body)
    assert resp.status_code == 400
    assert resp.get_json()["errorCode"] == "DAPR_SCHEDULER_SCHEDULE_JOB"

