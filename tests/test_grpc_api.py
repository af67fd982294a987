"""Dapr's gRPC jobs API (app/grpc), through the stubs the official `dapr` package generates:
every jobs method and its Alpha1 twin, the same validation and store as the HTTP API,
Dapr's status codes and ErrorInfo reasons, the token, bounded messages, UNIMPLEMENTED for
the rest, and data as Dapr keeps it (an Any, given back as given; HTTP JSON data as a
google.protobuf.Value Any). The SDK's own client: tests/test_dapr_sdk.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import (
    appcallback_pb2_grpc,
    configuration_pb2,
    dapr_pb2_grpc,
    jobs_pb2,
    state_pb2,
)
from flask.testing import FlaskClient
from google.protobuf import any_pb2, duration_pb2, empty_pb2, json_format, struct_pb2, wrappers_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from app.api.factory import create_app
from app.grpc import service
from app.grpc.server import FirstMessages, create_server, max_message_bytes
from app.jobs import errors
from app.jobs.anydata import job_data_as_any, stored_any
from app.jobs.errors import ApiError
from app.jobs.model import DeadLetter, Job
from app.jobs.validation import parse_job_fields
from app.processes.procs import PROJECT_ROOT
from app.settings import Settings, SettingsError
from app.store.keys import dead_member
from app.store.store import Store
from benchmarks.grpc_loadgen import CLIENTS, schedule_template
from tests.support.far import any_record, set_record
from tests.support.jobs import record_with
from tests.support.names_index import index_ids
from tests.support.receiver import Receiver
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from tests.test_api_helpers import STRING_VALUE, api_settings, assert_store_consistent

pytestmark = pytest.mark.usefixtures("reap_workers")

VALUE_URL = "type.googleapis.com/google.protobuf.Value"
TWINS = ["", "Alpha1"]


class Api:
    """The HTTP app and the gRPC server of one API process, in this process, on one store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings)
        self.http: FlaskClient = create_app(settings, self.store).test_client()
        self.server = create_server(settings, self.store, threads=4)
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}")
        self.stub = dapr_pb2_grpc.DaprStub(self.channel)

    def call(self, method: str, request: Any, **kwargs: Any) -> Any:
        return getattr(self.stub, method)(request, timeout=10, **kwargs)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0).wait(5)
        self.store.close()


@pytest.fixture
def api_for(redis_server: RedisProcess) -> Iterator[Callable[..., Api]]:
    """Starts APIs with settings of the test's choosing (no app: nothing is delivered)."""
    started: list[Api] = []

    def start(**changes: Any) -> Api:
        api = Api(api_settings(redis_server.url, grpc_port=free_port(), **changes))
        started.append(api)
        return api

    yield start
    for api in started:
        api.close()


@pytest.fixture
def api(api_for: Callable[..., Api]) -> Api:
    return api_for()


@pytest.fixture(params=TWINS, ids=["stable", "alpha1"])
def twin(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def packed(message: Any) -> any_pb2.Any:
    data = any_pb2.Any()
    data.Pack(message)
    return data


def string_any(text: str) -> any_pb2.Any:
    return packed(wrappers_pb2.StringValue(value=text))


def schedule(api: Api, job: jobs_pb2.Job, overwrite: bool = False, twin: str = "") -> None:
    api.call("ScheduleJob" + twin, jobs_pb2.ScheduleJobRequest(job=job, overwrite=overwrite))


def get(api: Api, name: str, twin: str = "") -> jobs_pb2.Job:
    job: jobs_pb2.Job = api.call("GetJob" + twin, jobs_pb2.GetJobRequest(name=name)).job
    return job


def failure(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, str | None]:
    """(status code, message, ErrorInfo reason or None) of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err: Any = caught.value
    status = rpc_status.from_call(err)
    reason = None
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                assert info.domain == "dapr.io"
                assert info.metadata["appID"] == "job-service"
                reason = info.reason
    return err.code(), err.details(), reason


# --- the methods --------------------------------------------------------------------------


def test_every_jobs_method_of_the_installed_dapr_service_is_served() -> None:
    """dapr 1.19's Dapr service has exactly these jobs methods; each is ours, not the
    generated UNIMPLEMENTED one."""
    methods = {m for m in dir(dapr_pb2_grpc.DaprServicer) if "Job" in m}
    assert methods == {
        "ScheduleJob", "ScheduleJobAlpha1", "GetJob", "GetJobAlpha1", "DeleteJob",
        "DeleteJobAlpha1", "ListJobs", "ListJobsAlpha1", "DeleteJobsByPrefix",
        "DeleteJobsByPrefixAlpha1",
    }
    assert methods == service.JOB_METHODS
    for method in methods:
        ours = getattr(service.JobsServicer, method)
        assert ours is not getattr(dapr_pb2_grpc.DaprServicer, method)
        assert ours.__qualname__.startswith("JobsServicer."), method


def test_schedule_and_get_every_field(api: Api, twin: str) -> None:
    interval = duration_pb2.Duration(seconds=2, nanos=500_000_000)
    data = packed(jobs_pb2.GetJobRequest(name="an arbitrary dapr message"))
    job = jobs_pb2.Job(
        name="every-field", schedule="@every 1h", due_time="2s", repeats=3, ttl="2h",
        data=data,
        failure_policy=common_pb2.JobFailurePolicy(constant=common_pb2.JobFailurePolicyConstant(
            interval=interval, max_retries=5)),
    )
    schedule(api, job, twin=twin)
    assert get(api, "every-field", twin) == job


def test_data_of_any_type_is_kept_as_given(api: Api) -> None:
    cases = {
        "string": string_any("R2-D2:Oil Change"),
        "duration": packed(duration_pb2.Duration(seconds=3)),
        "unknown-type": any_pb2.Any(type_url="example.com/acme.Order", value=b"\x08\x01\xff\x00"),
        # The Python SDK's own jobs example: JSON bytes and no type URL.
        "no-type-url": any_pb2.Any(value=json.dumps({"message": "hi"}).encode()),
    }
    for name, data in cases.items():
        schedule(api, jobs_pb2.Job(name=name, due_time="1h", data=data))
    for name, data in cases.items():
        got = get(api, name).data
        assert (got.type_url, got.value) == (data.type_url, data.value), name


def test_no_data_and_an_empty_any_are_no_data(api: Api) -> None:
    schedule(api, jobs_pb2.Job(name="none", due_time="1h"))
    schedule(api, jobs_pb2.Job(name="empty", due_time="1h", data=any_pb2.Any()))
    for name in ("none", "empty"):
        assert not get(api, name).HasField("data")
        assert "data" not in api.http.get(f"/v1.0/jobs/{name}").get_json()


def _policy(**kwargs: Any) -> common_pb2.JobFailurePolicy:
    return common_pb2.JobFailurePolicy(**kwargs)


@pytest.mark.parametrize(
    ("given", "stored", "http"),
    [
        pytest.param(None, _policy(constant=common_pb2.JobFailurePolicyConstant(
            interval=duration_pb2.Duration(seconds=1), max_retries=3)),
            {"constant": {"interval": "1s", "maxRetries": 3}}, id="none-is-the-default"),
        pytest.param(_policy(drop=common_pb2.JobFailurePolicyDrop()),
                     _policy(drop=common_pb2.JobFailurePolicyDrop()), {"drop": {}}, id="drop"),
        pytest.param(_policy(constant=common_pb2.JobFailurePolicyConstant(
            interval=duration_pb2.Duration(seconds=5))),
            _policy(constant=common_pb2.JobFailurePolicyConstant(
                interval=duration_pb2.Duration(seconds=5))),
            {"constant": {"interval": "5s"}}, id="retry-forever"),
        pytest.param(_policy(constant=common_pb2.JobFailurePolicyConstant(max_retries=2)),
                     _policy(constant=common_pb2.JobFailurePolicyConstant(
                         interval=duration_pb2.Duration(), max_retries=2)),
                     {"constant": {"interval": "0s", "maxRetries": 2}}, id="no-interval-is-0"),
        pytest.param(_policy(), _policy(constant=common_pb2.JobFailurePolicyConstant(
            interval=duration_pb2.Duration(seconds=1), max_retries=3)),
            {"constant": {"interval": "1s", "maxRetries": 3}}, id="empty-is-the-default"),
    ],
)
def test_failure_policies(api: Api, given: Any, stored: Any, http: dict[str, Any]) -> None:
    job = jobs_pb2.Job(name="fp", due_time="1h")
    if given is not None:
        job.failure_policy.CopyFrom(given)
    schedule(api, job)
    assert get(api, "fp").failure_policy == stored
    assert api.http.get("/v1.0/jobs/fp").get_json()["failurePolicy"] == http


def test_get_of_an_unknown_job_is_not_found(api: Api, twin: str) -> None:
    code, message, reason = failure(lambda: get(api, "nobody", twin))
    assert code == grpc.StatusCode.NOT_FOUND
    assert reason == errors.JOB_NOT_FOUND
    assert message == "failed to get job due to: job not found: nobody"


def test_existing_name_is_already_exists_unless_overwrite(api: Api, twin: str) -> None:
    schedule(api, jobs_pb2.Job(name="dup", due_time="1h", data=string_any("first")), twin=twin)
    code, message, reason = failure(lambda: schedule(
        api, jobs_pb2.Job(name="dup", due_time="1h", data=string_any("second")), twin=twin))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, errors.JOB_EXISTS)
    assert "job already exists: 'dup'" in message
    assert get(api, "dup").data == string_any("first")
    schedule(api, jobs_pb2.Job(name="dup", due_time="1h", data=string_any("second")),
             overwrite=True, twin=twin)
    assert get(api, "dup").data == string_any("second")


def test_delete(api: Api, twin: str) -> None:
    schedule(api, jobs_pb2.Job(name="gone", due_time="1h"))
    api.call("DeleteJob" + twin, jobs_pb2.DeleteJobRequest(name="gone"))
    assert failure(lambda: get(api, "gone"))[0] == grpc.StatusCode.NOT_FOUND
    # As in Dapr and the HTTP API: deleting what is not there is fine.
    api.call("DeleteJob" + twin, jobs_pb2.DeleteJobRequest(name="gone"))
    code, _, reason = failure(lambda: api.call("DeleteJob" + twin, jobs_pb2.DeleteJobRequest()))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, errors.JOB_NAME_EMPTY)


def test_a_stored_job_that_cannot_be_read_is_a_clear_error_on_both_apis(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """A job whose stored record this version cannot read (edited by hand, or another
    version's): GET and the list answer a 500 that names it and says what to do, over HTTP
    and gRPC alike; the bulk route says it for that job alone; delete and overwrite mend
    it. Before: a bare "internal error" with a traceback in the log, and a list answered
    400 "invalid query", as if the caller's query were wrong."""
    schedule(api, jobs_pb2.Job(name="ok", due_time="1h"))
    schedule(api, jobs_pb2.Job(name="broken", due_time="1h"))
    jid = "job-service/broken"
    set_record(api.store.redis, api.store.keys.for_job(jid), jid, b'{"s": "@every 1s"}')
    said = "job 'broken' is stored in a form this version cannot read (KeyError: 'f1'); " \
           "schedule it again with overwrite, or delete it"
    http, base = api.http, "/v1.0-alpha1/jobs"
    for path in (f"{base}/broken", base):
        response = http.get(path)
        assert response.status_code == 500, response.get_data(as_text=True)
        assert response.get_json() == {"errorCode": errors.JOB_UNREADABLE, "message": said}
    assert http.get(f"{base}/ok").status_code == 200
    for call in (lambda: get(api, "broken"),
                 lambda: api.call("ListJobs", jobs_pb2.ListJobsRequest())):
        assert failure(call) == (grpc.StatusCode.INTERNAL, said, errors.JOB_UNREADABLE)
    # the operator's to mend: each answer is in the API's log too (no traceback)
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and said in r.getMessage()]
    assert len(logged) == 4 and not any(r.exc_info for r in logged)
    results = http.post(base, json={"jobs": [{"name": "broken", "dueTime": "1h"},
                                             {"name": "new", "dueTime": "1h"}]}).get_json()
    assert [(r["name"], r["status"], r.get("errorCode")) for r in results["results"]] == [
        ("broken", 500, errors.JOB_UNREADABLE), ("new", 204, None)]
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and said in r.getMessage()]
    assert len(logged) == 5  # the bulk route's result too
    schedule(api, jobs_pb2.Job(name="broken", due_time="2h"), overwrite=True)
    assert get(api, "broken").due_time == "2h"
    set_record(api.store.redis, api.store.keys.for_job(jid), jid, b"not json")
    assert http.delete(f"{base}/broken").status_code == 204
    assert http.get(f"{base}/broken").status_code == 404
    assert sorted(j.name for j in api.call("ListJobs", jobs_pb2.ListJobsRequest()).jobs) == [
        "new", "ok"]


@pytest.mark.parametrize(("field", "value"), [
    ("x", "later"), ("dt", "5s"), ("dt", 0), ("r", True), ("r", 2**32), ("s", 5), ("l", 60),
    ("f1", "1"), ("f1", None), ("ti", ["id"]), ("fp", ["constant", "3", None]),
    ("fp", ["constant", 1000, -1]), ("fp", ["exponential", 1000, 3, 5000, "nan", 0]),
])
def test_a_stored_field_of_another_type_is_the_same_clear_error(
        api: Api, field: str, value: Any) -> None:
    """A record that parses but holds a field of another type, or out of its range: the
    same answer as one that cannot be read (Job.decode), where it was a bare ERR_INTERNAL, a
    job shown with the wrong type (or as JSON no parser reads: NaN), or one the worker
    could not record a failure of; pausing, resuming and triggering it are refused before
    anything is done, and the bulk route says it in its result; delete mends it."""
    schedule(api, jobs_pb2.Job(name="odd", schedule="@every 1h", repeats=3, ttl="2h",
                               data=string_any("x")))
    jid = "job-service/odd"
    key = api.store.keys.for_job(jid)
    set_record(api.store.redis, key, jid,
               record_with(any_record(api.store.redis, key, jid), field, value))
    http, base = api.http, "/v1.0-alpha1/jobs"
    before = assert_store_consistent(api.store.redis, api.settings)
    for answer in (http.get(f"{base}/odd"), http.get(base), http.post(f"{base}/odd/pause"),
                   http.post(f"{base}/odd/resume"), http.post(f"{base}/odd/trigger")):
        assert answer.status_code == 500, answer.get_data(as_text=True)
        body = answer.get_json()
        assert body["errorCode"] == errors.JOB_UNREADABLE and "cannot read" in body["message"]
    assert api.store.redis.hget(key.paused, jid) is None  # the pause did nothing
    assert assert_store_consistent(api.store.redis, api.settings) == before  # nor the trigger
    results = http.post(base, json={"jobs": [{"name": "odd", "schedule": "@every 1h"}]})
    assert [r.get("errorCode") for r in results.get_json()["results"]] == [errors.JOB_UNREADABLE]
    code, _, reason = failure(lambda: get(api, "odd"))
    assert (code, reason) == (grpc.StatusCode.INTERNAL, errors.JOB_UNREADABLE)
    assert http.delete(f"{base}/odd").status_code == 204
    assert http.get(f"{base}/odd").status_code == 404


def test_list_jobs_lists_every_job_of_this_app_only(api_for: Callable[..., Api],
                                                    twin: str) -> None:
    api = api_for()
    other = api_for(prefix=api.settings.prefix, app_id="other-app")
    schedule(other, jobs_pb2.Job(name="theirs", due_time="1h"))
    schedule(api, jobs_pb2.Job(name="by-grpc", due_time="1h", data=string_any("x")))
    assert api.http.post("/v1.0/jobs/by-http", json={"schedule": "@every 1m"}).status_code == 204
    request = jobs_pb2.ListJobsRequest() if not twin else jobs_pb2.ListJobsRequestAlpha1()
    listed = {job.name: job for job in api.call("ListJobs" + twin, request).jobs}
    assert set(listed) == {"by-grpc", "by-http"}
    assert listed["by-grpc"] == get(api, "by-grpc")
    assert listed["by-http"].schedule == "@every 1m"


def test_list_jobs_is_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "MAX_LISTED", 3)
    monkeypatch.setattr(service, "_PAGE", 2)
    for i in range(3):
        schedule(api, jobs_pb2.Job(name=f"j{i}", due_time="1h"))
    assert len(api.call("ListJobs", jobs_pb2.ListJobsRequest()).jobs) == 3
    schedule(api, jobs_pb2.Job(name="j3", due_time="1h"))
    code, message, reason = failure(lambda: api.call("ListJobs", jobs_pb2.ListJobsRequest()))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "DAPR_SCHEDULER_LIST_JOBS")
    assert "more than 3 jobs" in message and "pageToken" in message


def test_list_jobs_is_bounded_in_bytes_too(api: Api) -> None:
    """Six jobs of 780 KB of data each pass the count but not the 4 MiB a client takes
    in one message by default: refused before the answer is built whole; five fit."""
    big = packed(wrappers_pb2.BytesValue(value=os.urandom(780_000)))
    for i in range(6):
        schedule(api, jobs_pb2.Job(name=f"big-{i}", due_time="1h", data=big))
    code, message, reason = failure(lambda: api.call("ListJobs", jobs_pb2.ListJobsRequest()))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "DAPR_SCHEDULER_LIST_JOBS")
    assert f"jobs of more than {service.MAX_LISTED_BYTES} bytes" in message
    api.call("DeleteJob", jobs_pb2.DeleteJobRequest(name="big-5"))
    assert len(api.call("ListJobs", jobs_pb2.ListJobsRequest()).jobs) == 5


def test_delete_by_prefix(api: Api, twin: str) -> None:
    request_type = (jobs_pb2.DeleteJobsByPrefixRequest if not twin
                    else jobs_pb2.DeleteJobsByPrefixRequestAlpha1)
    for name in ("a-1", "a-2", "b-1", "ab"):
        schedule(api, jobs_pb2.Job(name=name, due_time="1h"))
    api.call("DeleteJobsByPrefix" + twin, request_type(name_prefix="a-"))
    names = {job.name for job in api.call("ListJobs", jobs_pb2.ListJobsRequest()).jobs}
    assert names == {"b-1", "ab"}
    # No prefix: every job of the app, as in Dapr.
    api.call("DeleteJobsByPrefix" + twin, request_type())
    assert list(api.call("ListJobs", jobs_pb2.ListJobsRequest()).jobs) == []


# --- bad input ----------------------------------------------------------------------------


def _job(**kwargs: Any) -> jobs_pb2.Job:
    kwargs.setdefault("name", "bad")
    return jobs_pb2.Job(**kwargs)


BAD = [
    pytest.param(jobs_pb2.ScheduleJobRequest(), "DAPR_SCHEDULER_EMPTY", id="no-job"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(name="", due_time="1s")),
                 errors.JOB_NAME_EMPTY, id="empty-name"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(name="  ", due_time="1s")),
                 errors.JOB_NAME_EMPTY, id="blank-name"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(name="a/b", due_time="1s")),
                 errors.JOB_NAME_INVALID, id="slash-in-name"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(name="x" * 254, due_time="1s")),
                 errors.JOB_NAME_INVALID, id="long-name"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job()), errors.SCHEDULE_EMPTY,
                 id="no-schedule"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(schedule="")), errors.SCHEDULE_EMPTY,
                 id="empty-schedule"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(schedule="every minute")),
                 errors.SCHEDULE_JOB, id="bad-schedule"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(due_time="tomorrow")),
                 errors.SCHEDULE_JOB, id="bad-due-time"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(due_time="1s", ttl="1h")),
                 errors.SCHEDULE_JOB, id="ttl-without-schedule"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(due_time="1s", repeats=2)),
                 errors.SCHEDULE_JOB, id="repeats-without-schedule"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(
        due_time="1s", failure_policy=_policy(constant=common_pb2.JobFailurePolicyConstant(
            interval=duration_pb2.Duration(seconds=-1)))
    )), errors.MALFORMED_REQUEST, id="negative-interval"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(
        due_time="1s", data=any_pb2.Any(type_url="not a type url", value=b"x"))),
        errors.MALFORMED_REQUEST_DATA, id="bad-type-url"),
    pytest.param(jobs_pb2.ScheduleJobRequest(job=_job(
        due_time="1s", data=any_pb2.Any(type_url="~x/y.Z", value=b"x"))),
        errors.MALFORMED_REQUEST_DATA, id="reserved-type-url"),
]


@pytest.mark.parametrize(("request_", "reason"), BAD)
def test_bad_input_is_invalid_argument_and_stores_nothing(
    api: Api, twin: str, request_: jobs_pb2.ScheduleJobRequest, reason: str
) -> None:
    code, message, got = failure(lambda: api.call("ScheduleJob" + twin, request_))
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason), message
    assert message
    assert list(api.call("ListJobs", jobs_pb2.ListJobsRequest()).jobs) == []
    assert_store_consistent(api.store.redis, api.settings)


def _as_grpc(fields: dict[str, Any]) -> jobs_pb2.ScheduleJobRequest:
    """The ScheduleJobRequest that says what an HTTP body with `fields` says."""
    job = jobs_pb2.Job(name="same")
    for key, attr in (("schedule", "schedule"), ("dueTime", "due_time"), ("ttl", "ttl"),
                      ("repeats", "repeats")):
        if key in fields:
            setattr(job, attr, fields[key])
    if "data" in fields:
        job.data.CopyFrom(string_any(fields["data"]["value"]))
    policy = fields.get("failurePolicy")
    if policy is not None:
        job.failure_policy.CopyFrom(json_format.ParseDict(policy, common_pb2.JobFailurePolicy()))
    return jobs_pb2.ScheduleJobRequest(job=job, overwrite=fields.get("overwrite", False))


GRPC_FOR_HTTP = {400: grpc.StatusCode.INVALID_ARGUMENT, 409: grpc.StatusCode.ALREADY_EXISTS,
                 413: grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.mark.parametrize("fields", [
    {"dueTime": "1h"},
    {"dueTime": "1h", "data": {"@type": STRING_VALUE, "value": "x" * 2000}},
    {},
    {"schedule": "@every 0s"},
    {"schedule": "0 0 0 30 2 *"},
    {"schedule": "TZ=Mars/Olympus 0 * * * * *"},
    {"schedule": "@every 1s", "ttl": "1s", "dueTime": "2s"},
    {"schedule": "@every 1s", "repeats": 4294967295},
    {"dueTime": "10000-01-01T00:00:00Z"},
    {"dueTime": "PT1H", "failurePolicy": {"constant": {"interval": "1.5s", "maxRetries": 0}}},
    {"dueTime": "1h", "failurePolicy": {"drop": {}}},
], ids=lambda fields: ",".join(fields) or "empty")
def test_grpc_and_http_answer_alike(api_for: Callable[..., Api], fields: dict[str, Any]) -> None:
    """The same request over both APIs (each on its own key prefix): the same outcome, code
    and message. Then once more over an existing job: the overwrite rule alike too."""
    for existing in (False, True):
        http_api, grpc_api = api_for(max_data_bytes=2048), api_for(max_data_bytes=2048)
        if existing:
            for api in (http_api, grpc_api):
                schedule(api, jobs_pb2.Job(name="same", due_time="1h"))
        response = http_api.http.post("/v1.0/jobs/same", json=fields)
        if response.status_code == 204:
            grpc_api.call("ScheduleJob", _as_grpc(fields))
            assert get(grpc_api, "same") == get(http_api, "same")
            continue
        body = response.get_json()
        request = _as_grpc(fields)
        code, message, reason = failure(
            lambda api=grpc_api, request=request: api.call("ScheduleJob", request))
        assert (code, reason) == (GRPC_FOR_HTTP[response.status_code], body["errorCode"])
        if response.status_code == 413:
            # HTTP measures the data's JSON, gRPC its bytes: the sizes in the text differ.
            assert message.endswith("more than the limit of 2048 bytes"), message
        else:
            assert message == body["message"]


def test_grpc_data_whose_json_form_the_api_would_refuse_reads_back_as_its_bytes(
        api_for: Callable[..., Api]) -> None:
    """Within the limit as kept (its bytes' base64), its JSON form was over what the API
    takes as JSON (each control character is six): exported so, refused on import."""
    api = api_for(max_data_bytes=4096)
    data = string_any("\x01" * 3000)  # base64: 4,004 bytes; JSON: about 18,000
    schedule(api, jobs_pb2.Job(name="wide", due_time="1h", data=data))
    shown = api.http.get("/v1.0/jobs/wide").get_json()["data"]
    assert shown == {"@type": STRING_VALUE, "@bytes": base64.b64encode(data.value).decode()}
    again = api.http.post("/v1.0/jobs/wide-again", json={"dueTime": "1h", "data": shown})
    assert again.status_code == 204, again.get_data(as_text=True)
    assert get(api, "wide-again").data == data
    # A dead letter's `job` is shown as GET shows a job (it was still the long JSON).
    pk = api.store.keys.for_job(f"{api.settings.app_id}/wide")
    record = any_record(api.store.redis, pk, f"{api.settings.app_id}/wide")
    letter = DeadLetter(id=f"{api.settings.app_id}/wide@r:1:2", app_id=api.settings.app_id,
                        name="wide", sched_ms=1, attempts=1, error="HTTP 500", dead_ms=2,
                        record=record.decode())
    api.store.redis.hset(pk.dead, letter.id, letter.encode())
    api.store.redis.zadd(pk.deadidx, {letter.id: 2})
    api.store.redis.zadd(pk.deadlex, {dead_member(api.settings.app_id, 2, letter.id): 0})
    shown_dead = api.http.get(f"/v1.0/deadletters/{quote(letter.id, safe='')}").get_json()
    assert shown_dead["job"]["data"] == shown
    schedule(api, jobs_pb2.Job(name="narrow", due_time="1h", data=string_any("\x01" * 10)))
    assert api.http.get("/v1.0/jobs/narrow").get_json()["data"] == {
        "@type": STRING_VALUE, "value": "\x01" * 10}


def test_data_over_the_limit_is_resource_exhausted(api_for: Callable[..., Api]) -> None:
    api = api_for(max_data_bytes=1024)
    too_big = any_pb2.Any(type_url="example.com/x.Blob", value=b"\x00" * 800)  # base64: 1068
    code, message, reason = failure(lambda: schedule(
        api, jobs_pb2.Job(name="big", due_time="1h", data=too_big)))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.PAYLOAD_TOO_LARGE)
    assert "1068 bytes, more than the limit of 1024" in message
    # Past the message bound, gRPC itself refuses it.
    huge = any_pb2.Any(type_url="example.com/x.Blob", value=b"\x00" * max_message_bytes(
        api.settings))
    code, _, _ = failure(lambda: schedule(api, jobs_pb2.Job(name="big", due_time="1h",
                                                            data=huge)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    schedule(api, jobs_pb2.Job(name="fits", due_time="1h", data=any_pb2.Any(
        type_url="example.com/x.Blob", value=b"\x00" * 768)))  # base64: 1024
    assert [job.name for job in api.call("ListJobs", jobs_pb2.ListJobsRequest()).jobs] == ["fits"]
    # What fits over gRPC fits over HTTP as GET shows it (`jobs export`, then `import`):
    # an Any is measured as kept, not with its JSON around it (that was a 413).
    near = {"wrapped": packed(wrappers_pb2.BytesValue(value=b"\x00" * 765)),  # base64: 1024
            "fits": any_pb2.Any(type_url="example.com/x.Blob", value=b"\x00" * 768)}
    for name, data in near.items():
        if name != "fits":
            schedule(api, jobs_pb2.Job(name=name, due_time="1h", data=data))
        shown = api.http.get(f"/v1.0/jobs/{name}").get_json()["data"]
        again = api.http.post(f"/v1.0/jobs/{name}-again", json={"dueTime": "1h", "data": shown})
        assert again.status_code == 204, again.get_data(as_text=True)
        assert get(api, f"{name}-again").data == data


def test_redis_unreachable_is_unavailable() -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="tdown",
                        app_url="http://127.0.0.1:9", grpc_port=free_port())
    api = Api(settings)
    try:
        for call in (lambda: schedule(api, jobs_pb2.Job(name="x", due_time="1h")),
                     lambda: get(api, "x"),
                     lambda: api.call("ListJobs", jobs_pb2.ListJobsRequest())):
            code, message, reason = failure(call)
            assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, errors.REDIS_UNAVAILABLE)
            assert message.startswith("the job store (Redis) is unavailable")
    finally:
        api.close()


def test_a_redis_that_never_answers_is_unavailable_after_one_wait(api: Api) -> None:
    """ScheduleJob on the loop meets the socket timeout: answered at once, as the HTTP
    API's fast path answers it, not done again on the pool (a second whole wait; here the
    pool's Redis would even have stored it)."""
    from app.store.loop_redis import LoopRedis

    with socket.socket() as silent:  # accepts, reads, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        api.server._servicer.loop_redis = LoopRedis("127.0.0.1", port, reply_timeout_s=0.2)
        code, message, reason = failure(
            lambda: schedule(api, jobs_pb2.Job(name="stalled", due_time="1h")))
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, errors.REDIS_UNAVAILABLE)
    assert message.endswith(f"Timeout reading from 127.0.0.1:{port}"), message
    assert api.store.get(api.settings.app_id, "stalled") is None


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_the_benchmarks_clients_count_each_calls_status(api: Api, client: str) -> None:
    """`bench grpc-schedule`'s load generators, its own HTTP/2 client too, on the real
    server: a call is OK only when stored, and a refused one is counted by its status."""
    def load(due_time: str, count: int) -> dict[str, Any]:
        return asyncio.run(CLIENTS[client](api.settings.grpc_port,
                                           schedule_template("lg", due_time), count, 30.0,
                                           4, 2))

    assert load("1h", 12)["statuses"] == {"OK": 12}
    listed = api.call("ListJobs", jobs_pb2.ListJobsRequest()).jobs
    assert sorted(job.name for job in listed) == [f"lg-{i:09d}" for i in range(12)]
    assert load("2h", 3)["statuses"] == {"ALREADY_EXISTS": 3}  # the same names, not the same jobs


# --- token, other methods -----------------------------------------------------------------


def test_api_token_is_checked_as_dapr_does(api_for: Callable[..., Api]) -> None:
    api = api_for(api_token="s3cret")
    request = jobs_pb2.ScheduleJobRequest(job=jobs_pb2.Job(name="t", due_time="1h"))
    code, message, _ = failure(lambda: api.call("ScheduleJob", request))
    assert (code, message) == (grpc.StatusCode.UNAUTHENTICATED,
                               "missing api token in request metadata")
    code, message, _ = failure(lambda: api.call("ScheduleJob", request,
                                                metadata=[("dapr-api-token", "wrong")]))
    assert (code, message) == (grpc.StatusCode.UNAUTHENTICATED,
                               "authentication error: api token mismatch")
    # Before anything else: an unserved method is refused the same way.
    code, _, _ = failure(lambda: api.call("GetState", state_pb2.GetStateRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert list(api.call("ListJobs", jobs_pb2.ListJobsRequest(),
                         metadata=[("dapr-api-token", "s3cret")]).jobs) == []
    api.call("ScheduleJob", request, metadata=[("dapr-api-token", "s3cret")])
    code, _, _ = failure(lambda: get(api, "t"))  # reading needs it too
    assert code == grpc.StatusCode.UNAUTHENTICATED
    job = api.call("GetJob", jobs_pb2.GetJobRequest(name="t"),
                   metadata=[("dapr-api-token", "s3cret")]).job
    assert job.due_time == "1h"


def test_other_dapr_methods_are_unimplemented_with_a_clear_message(api: Api) -> None:
    code, message, _ = failure(lambda: api.call(
        "GetState", state_pb2.GetStateRequest(store_name="s", key="k")))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert message.startswith("jobrunner serves only the jobs API of Dapr")
    assert "GetState is not served" in message
    # A server-streaming one.
    stream = api.stub.SubscribeConfiguration(
        configuration_pb2.SubscribeConfigurationRequest(store_name="s"), timeout=10)
    code, message, _ = failure(lambda: list(stream))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "SubscribeConfiguration is not served" in message
    # A method of another service.
    callback = appcallback_pb2_grpc.AppCallbackStub(api.channel)
    code, message, _ = failure(lambda: callback.ListTopicSubscriptions(empty_pb2.Empty(),
                                                                        timeout=10))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert message.startswith("jobrunner serves only the jobs API of Dapr")


def test_bytes_that_are_no_message_to_an_unserved_method_are_unimplemented(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """Refused before any decoding, unary or streaming: the streaming ones answered
    UNKNOWN and logged a traceback per call (a log any client could fill)."""
    unary = api.channel.unary_unary("/dapr.proto.runtime.v1.Dapr/GetState")
    calls: dict[str, Callable[[], Any]] = {"GetState": lambda: unary(b"\xff\xff", timeout=10)}
    for method in ("SubscribeConfiguration", "GetBinaryFileAlpha1"):
        stream = api.channel.unary_stream(f"/dapr.proto.runtime.v1.Dapr/{method}")
        calls[method] = lambda s=stream: list(s(b"\xff\xff", timeout=10))
    with caplog.at_level(logging.WARNING):
        for method, call in calls.items():
            code, message, _ = failure(call)
            assert code == grpc.StatusCode.UNIMPLEMENTED, (method, code, message)
            assert f"{method} is not served" in message
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_call_grpc_has_ended_is_not_answered_again() -> None:
    """A message grpc cannot decompress, or past the limit: grpc answers and ends the call,
    and the handler finds no message. Answering again failed in grpc's core, with a
    traceback in the log (for about 3 such calls in 5, from any client: seen with a raw
    HTTP/2 client, which the tests do not have; grpc's own client does not race so)."""
    class Ended:  # the context grpc gives the handler of such a call
        async def read(self) -> Any:
            return grpc.aio.EOF

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise RuntimeError('Failed "execute_batch"')  # grpc's ExecuteBatchError

    with pytest.raises(asyncio.CancelledError):  # grpc's own way out: logged at DEBUG
        asyncio.run(FirstMessages(30.0).read(Ended()))  # type: ignore[arg-type]


def test_metadata_that_is_not_utf8_leaves_no_log_line(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """grpc reads it as Latin-1 and goes on, after an ERROR with a traceback each (as
    grpc's own code logs it: grpc's Python client cannot send such a value)."""
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    with caplog.at_level(logging.WARNING):
        try:
            b"\xff".decode()
        except UnicodeDecodeError:
            grpc_log.exception("Invalid encoding on %s", b"\xff")
        grpc_log.error("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_get_job_of_http_data_too_big_for_a_grpc_answer_is_refused_saying_so(
        api: Api) -> None:
    """1 MiB of numbers stored over HTTP is over 5 MiB as a protobuf Value: the SDK's call
    failed on its side ("Received message larger than max"), after the server's work."""
    ones = [1] * (api.settings.max_data_bytes // 2 - 8)
    assert api.http.post("/v1.0/jobs/big", json={"dueTime": "1h", "data": ones}
                         ).status_code == 204
    code, message, _ = failure(lambda: api.call("GetJob", jobs_pb2.GetJobRequest(name="big")))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, message
    assert "GET it over HTTP" in message and len(message) < 400, message
    # A job that fits is answered as ever.
    assert api.http.post("/v1.0/jobs/small", json={"dueTime": "1h", "data": ones[:1000]}
                         ).status_code == 204
    assert api.call("GetJob", jobs_pb2.GetJobRequest(name="small")).job.name == "small"


def test_a_call_reset_before_its_answer_leaves_no_log_line(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """A client that resets its call before reading the answer: grpc logs an ERROR with a
    traceback for the answer it cannot send (20 resets, 20 tracebacks; a raw HTTP/2
    client's, which grpc's Python client does not make), as grpc's own code logs it."""
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    with caplog.at_level(logging.WARNING):
        try:
            raise RuntimeError('Failed "execute_batch"')
        except RuntimeError:
            grpc_log.exception("ExecuteBatchError raised in core by servicer method [%s]",
                               "/dapr.proto.runtime.v1.Dapr/GetJob")
        grpc_log.error("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


@pytest.mark.parametrize("compat", [{"dapr_compat": True}, {"delivery_format": "raw"}],
                         ids=["dapr-compat", "raw"])
def test_a_value_with_no_json_form_is_refused_where_the_body_is_its_json(
        api_for: Callable[..., Api], compat: dict[str, Any]) -> None:
    """Accepted before, then every trigger dead-lettered by the workers, with a traceback."""
    api = api_for(**compat)
    nan = struct_pb2.Value(number_value=math.nan).SerializeToString()
    for value in (nan, b"\x1a\x02\xff\xfe"):  # NaN; a string that is not UTF-8
        code, message, _ = failure(lambda v=value: schedule(api, jobs_pb2.Job(
            name="odd", due_time="1h", data=any_pb2.Any(type_url=VALUE_URL, value=v))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "google.protobuf.Value with no JSON form" in message
    # Where the body is an envelope of its bytes, or to a gRPC app, it goes as it is.
    for app in (api_for(app_id="enveloped"), api_for(app_id="by-grpc", app_protocol="grpc",
                                                       **compat)):
        schedule(app, jobs_pb2.Job(
            name="odd", due_time="1h", data=any_pb2.Any(type_url=VALUE_URL, value=nan)))


def test_null_data_of_a_dapr_compat_app_is_a_value_holding_null_over_grpc_too(
        api_for: Callable[..., Api]) -> None:
    """HTTP GET showed it so, gRPC GetJob had no data at all."""
    api = api_for(dapr_compat=True)
    assert api.http.post("/v1.0-alpha1/jobs/nothing",
                         json={"dueTime": "1h", "data": None}).status_code == 204
    assert api.http.get("/v1.0-alpha1/jobs/nothing").get_json()["data"] == {
        "@type": VALUE_URL, "value": None}
    data = api.call("GetJob", jobs_pb2.GetJobRequest(name="nothing")).job.data
    value = struct_pb2.Value()
    assert data.type_url == VALUE_URL and data.Unpack(value)
    assert value.WhichOneof("kind") == "null_value"


def _idle_call(api: Api, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """A call that starts and never sends its request message (nor ends its side)."""
    never = threading.Event()

    def nothing() -> Iterator[bytes]:
        never.wait(60)
        yield from ()

    call = api.channel.stream_unary(f"/dapr.proto.runtime.v1.Dapr/{method}").future(
        nothing(), timeout=60, metadata=metadata)
    return call, never


def test_a_call_that_never_sends_its_message_is_ended_by_the_body_timeout(
        api_for: Callable[..., Api]) -> None:
    """Idle calls held the server's slots (MAX_CONCURRENT_RPCS) for ever, and locked
    every client out. Now each ends at JOBRUNNER_HTTP_BODY_TIMEOUT, the rest served."""
    api = api_for(http_body_timeout_s=0.5)
    held = [_idle_call(api, method) for method in ("GetJob", "ScheduleJob", "ListJobs")]
    schedule(api, jobs_pb2.Job(name="meanwhile", due_time="1h"))  # served beside them
    try:
        for call, _ in held:
            err = call.exception(timeout=30)  # the call's own deadline is 60 s
            assert err is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
            assert "did not arrive within 0.5s" in err.details()
    finally:
        for call, never in held:
            never.set()
            call.cancel()
    assert get(api, "meanwhile").due_time == "1h"


def test_a_call_without_the_token_is_refused_before_its_message(
        api_for: Callable[..., Api]) -> None:
    api = api_for(api_token="s3cret", http_body_timeout_s=30.0)
    call, never = _idle_call(api, "GetJob")
    try:
        err = call.exception(timeout=10)  # long before the 30 s body timeout
        assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    finally:
        never.set()
        call.cancel()


# --- data as Dapr keeps it ----------------------------------------------------------------


def _value(data: any_pb2.Any) -> Any:
    assert data.type_url == VALUE_URL
    value = struct_pb2.Value()
    assert data.Unpack(value)
    return json_format.MessageToDict(value)


@pytest.mark.parametrize("data", [
    {"a": [1, "x", None, True], "b": {"c": 2.5}}, "someData", 123, [1, 2], True,
], ids=repr)
def test_http_json_data_reads_back_over_grpc_as_dapr_keeps_it(api: Api, data: Any) -> None:
    """Dapr 1.15+ stores HTTP job data as a google.protobuf.Value packed in an Any."""
    assert api.http.post("/v1.0/jobs/h", json={"dueTime": "1h", "data": data}).status_code == 204
    got = get(api, "h").data
    assert _value(got) == json.loads(json.dumps(data), parse_int=float)
    listed = api.call("ListJobs", jobs_pb2.ListJobsRequest()).jobs
    assert [job.data for job in listed] == [got]


def test_http_any_data_reads_back_over_grpc_as_that_any(api: Api) -> None:
    body = {"dueTime": "1h", "data": {"@type": STRING_VALUE, "value": "R2-D2:Oil Change"}}
    assert api.http.post("/v1.0/jobs/seed", json=body).status_code == 204
    assert get(api, "seed").data == string_any("R2-D2:Oil Change")


def test_grpc_data_of_a_known_type_reads_back_over_http_in_its_json_form(
        api_for: Callable[..., Api]) -> None:
    api = api_for()
    struct = struct_pb2.Struct()
    struct.update({"b": [1, "x"], "a": {"c": True}})
    schedule(api, jobs_pb2.Job(name="st", due_time="1h", data=packed(struct)))
    assert api.http.get("/v1.0/jobs/st").get_json()["data"] == {
        "@type": "type.googleapis.com/google.protobuf.Struct",
        "value": {"b": [1, "x"], "a": {"c": True}}}
    # An app in Dapr compatibility mode takes every type back as JSON: it shows it so.
    compat = api_for(app_id="compat", dapr_compat=True)
    schedule(compat, jobs_pb2.Job(name="dapr-type", due_time="1h",
                                  data=packed(common_pb2.StateItem(key="k"))))
    assert compat.http.get("/v1.0/jobs/dapr-type").get_json()["data"] == {
        "@type": "type.googleapis.com/dapr.proto.common.v1.StateItem", "key": "k"}
    schedule(api, jobs_pb2.Job(name="s", due_time="1h", data=string_any("hello")))
    schedule(api, jobs_pb2.Job(name="d", due_time="1h",
                               data=packed(duration_pb2.Duration(seconds=3))))
    assert api.http.get("/v1.0/jobs/s").get_json()["data"] == {"@type": STRING_VALUE,
                                                               "value": "hello"}
    assert api.http.get("/v1.0/jobs/d").get_json()["data"] == {
        "@type": "type.googleapis.com/google.protobuf.Duration", "value": "3s"}


def test_grpc_data_without_a_json_form_reads_back_over_http_as_its_bytes(api: Api) -> None:
    """A type no descriptor here knows, or bytes JSON cannot write (a Value holding NaN, a
    StringValue that is not UTF-8): Dapr's protojson cannot render them (its GET fails).
    GET gives the type URL and the base64 of the bytes as stored, under `@bytes`, never a
    500; sent back, that stores the very same Any. (Under `value`, as before, a Value or
    StringValue came back as a string holding the base64.)"""
    cases = {"acme": any_pb2.Any(type_url="example.com/acme.Order", value=b"\x08\x01"),
             "sdk-example": any_pb2.Any(value=b'{"message": "hi"}'),
             "nan": packed(struct_pb2.Value(number_value=float("nan"))),
             "not-utf8": any_pb2.Any(type_url=STRING_VALUE, value=b"\x0a\x03\xff\xff\xff"),
             # Shown as JSON, these two were refused (a type the API knows, not a well-known
             # one: Dapr's own) or changed (a field StringValue lacks) by export-import.
             "dapr-type": packed(common_pb2.StateItem(key="k", value=b"v")),
             "unknown-field": any_pb2.Any(type_url=STRING_VALUE, value=b"\n\x05hello(\x01")}
    for name, data in cases.items():
        schedule(api, jobs_pb2.Job(name=name, due_time="1h", data=data))
    for name, data in cases.items():
        response = api.http.get(f"/v1.0/jobs/{name}")
        assert response.status_code == 200, response.get_data(as_text=True)
        shown = response.get_json()["data"]
        assert shown == {"@type": data.type_url, "@bytes": base64.b64encode(data.value).decode()}
        again = api.http.post(f"/v1.0/jobs/{name}-again", json={"dueTime": "1h", "data": shown})
        assert again.status_code == 204, again.get_data(as_text=True)
        assert get(api, f"{name}-again").data == data
    listed = api.http.get("/v1.0/jobs").get_json()["jobs"]
    assert {job["name"] for job in listed} == {n + again for n in cases for again in ("", "-again")}


@pytest.mark.parametrize(("data", "says"), [
    ({"@type": VALUE_URL, "@bytes": "!!!"}, "not standard base64"),
    ({"@type": VALUE_URL, "@bytes": 5}, "bytes form"),
    ({"@type": VALUE_URL, "@bytes": "", "value": 1}, "nothing else"),
    ({"@type": "not a url", "@bytes": "CAE="}, "not a protobuf type URL"),
])
def test_a_bad_bytes_form_is_a_400(api: Api, data: dict[str, Any], says: str) -> None:
    response = api.http.post("/v1.0/jobs/b", json={"dueTime": "1h", "data": data})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert says in response.get_json()["message"]


def test_job_data_as_any() -> None:
    assert job_data_as_any(Job("a", "n")) is None
    assert _value(job_data_as_any(Job("a", "n", data={"k": [1]})) or any_pb2.Any()) == {
        "k": [1.0]}
    raw = b"\x08\x01"
    job = Job("a", "n", any_type="example.com/x.Y", any_value=base64.b64encode(raw).decode())
    assert job_data_as_any(job) == any_pb2.Any(type_url="example.com/x.Y", value=raw)


def test_parse_job_fields_keeps_the_any_and_checks_like_http() -> None:
    job, overwrite = parse_job_fields("n", {"dueTime": "1s", "overwrite": True},
                                      ("example.com/x.Y", b"\x01"), "app", 1000, 100)
    assert overwrite is True
    assert (job.any_type, job.any_value, job.data) == ("example.com/x.Y", "AQ==", None)
    assert job.first_ms == 2000
    assert stored_any("", b"", 10) is None
    with pytest.raises(ApiError) as caught:
        parse_job_fields(" ", {"dueTime": "1s"}, None, "app", 0, 100)
    assert caught.value.code == errors.JOB_NAME_EMPTY


# --- delivery -----------------------------------------------------------------------------


def test_a_job_scheduled_over_grpc_is_delivered_to_an_http_app(
    settings: Settings, receiver: Receiver
) -> None:
    """Its StringValue data arrives as the seed's default format gives an Any: the
    {type_url, value} envelope."""
    api = Api(settings.with_(grpc_port=free_port()))
    try:
        with ThreadWorker(api.settings):
            schedule(api, jobs_pb2.Job(name="R2-D2", due_time="0s",
                                       data=string_any("R2-D2:Oil Change")))
            wait_for(lambda: receiver.deliveries, 10, what="the delivery")
    finally:
        api.close()
    [delivery] = receiver.deliveries
    assert delivery.path == "/job/R2-D2"
    assert json.loads(delivery.body) == {"type_url": STRING_VALUE,
                                         "value": "ChBSMi1EMjpPaWwgQ2hhbmdl"}


# --- the setting --------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "port"), [("", 50001), ("6281", 6281), ("0", 0), ("off", 0),
                                           ("OFF", 0)])
def test_grpc_port_setting(raw: str, port: int) -> None:
    assert Settings.from_env({"DAPR_GRPC_PORT": raw}).grpc_port == port


@pytest.mark.parametrize("raw", ["70000", "-1", "abc", "6280"])
def test_bad_grpc_port_setting(raw: str) -> None:
    with pytest.raises(SettingsError, match="DAPR_GRPC_PORT"):
        Settings.from_env({"DAPR_GRPC_PORT": raw, "DAPR_HTTP_PORT": "6280"})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "JOBRUNNER_"))}
    return subprocess.run([sys.executable, "-P", "-m", "app.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**env, "PYTHONPATH": str(PROJECT_ROOT)})


def test_cli_refuses_a_bad_or_taken_grpc_port() -> None:
    done = _cli("api", "--grpc-port", "abc")
    assert done.returncode == 2 and "'abc' is not a port number or off" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli("api", "--http-port", str(free_port()), "--grpc-port", str(port))
    assert done.returncode == 1
    assert f"the gRPC API's (--grpc-port) port {port} on 127.0.0.1 is already in use" in (
        done.stderr), done.stderr


@pytest.mark.parametrize("raw", [b"\xff\xff\xff\xff",  # not a message
                                 b"\x0a\x02\xff\xfe",  # a string field of bad UTF-8
                                 b"\x0a\x10abc"])  # truncated
def test_bytes_that_are_not_the_request_are_invalid_argument_not_logged(
        api: Api, twin: str, raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """grpc.aio answered UNKNOWN and logged a traceback per call: a log any client fills."""
    for method in ("ScheduleJob", "GetJob", "DeleteJob"):
        call = api.channel.unary_unary(f"/dapr.proto.runtime.v1.Dapr/{method}{twin}")
        with pytest.raises(grpc.RpcError) as refused:
            call(raw, timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value
        assert "not a valid message" in str(refused.value.details())
    assert "Traceback" not in caplog.text and "DecodeError" not in caplog.text


def test_an_app_holds_at_most_its_max_jobs_on_every_route(api_for: Callable[..., Api]) -> None:
    """JOBRUNNER_APP_MAX_JOBS: on a Redis apps share, one app that stores without end (a
    loop of new names) filled it, and every app's schedules and settlements failed. A new
    job past the bound is refused (429, gRPC RESOURCE_EXHAUSTED); an overwrite is not a new
    job; another app is not counted; a deleted job makes room."""
    api = api_for(app_max_jobs=3)
    other = api_for(app_id="other-app", app_max_jobs=3)
    http, base = api.http, "/v1.0/jobs"
    for name in ("a", "b"):
        assert http.post(f"{base}/{name}", json={"dueTime": "1h"}).status_code == 204
    results = http.post(base, json={"jobs": [
        {"name": "c", "dueTime": "1h"}, {"name": "c", "dueTime": "1h"},  # a retry of it
        {"name": "d", "dueTime": "1h"}, {"name": "a", "dueTime": "2h", "overwrite": True}]})
    assert [(r["name"], r["status"], r.get("errorCode")) for r in
            results.get_json()["results"]] == [
        ("c", 204, None), ("c", 204, None), ("d", 429, errors.APP_JOB_LIMIT), ("a", 204, None)]
    refused = http.post(f"{base}/e", json={"dueTime": "1h"})
    assert refused.status_code == 429
    assert refused.get_json() == {
        "errorCode": errors.APP_JOB_LIMIT,
        "message": "failed to schedule job 'e': the app holds as many jobs as it may "
                   "(JOBRUNNER_APP_MAX_JOBS, 3); delete some, or raise it"}
    assert failure(lambda: schedule(api, jobs_pb2.Job(name="e", due_time="1h"))) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, refused.get_json()["message"], errors.APP_JOB_LIMIT)
    schedule(api, jobs_pb2.Job(name="b", due_time="3h"), overwrite=True)
    assert other.http.post(f"{base}/e", json={"dueTime": "1h"}).status_code == 204
    assert http.get(f"{base}/e").status_code == 404
    assert http.delete(f"{base}/a").status_code == 204
    assert http.post(f"{base}/e", json={"dueTime": "1h"}).status_code == 204
    assert sorted(j["name"] for j in http.get(base).get_json()["jobs"]) == ["b", "c", "e"]


def test_with_several_partitions_each_holds_its_share_of_the_max_jobs(
        api_for: Callable[..., Api]) -> None:
    api = api_for(app_max_jobs=9, partitions=4)  # 2 in each partition: never over 9
    answers = [api.http.post(f"/v1.0/jobs/j{n}", json={"dueTime": "1h"}) for n in range(60)]
    assert {a.status_code for a in answers} == {204, 429}
    held = [len(index_ids(api.store.redis, pk)) for pk in api.store.keys.all_partitions()]
    assert held == [2, 2, 2, 2]
    refused = next(a.get_json()["message"] for a in answers if a.status_code == 429)
    assert refused.endswith("(JOBRUNNER_APP_MAX_JOBS, 9) in this job's partition, one of 4 "
                            "that share it out; delete some, or raise it"), refused
