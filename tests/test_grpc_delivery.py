"""gRPC delivery (`--app-protocol grpc`): jobs reach the app through Dapr's
`AppCallback.OnJobEvent`, or `AppCallbackAlpha.OnJobEventAlpha1` for apps that only
have that, with the request daprd builds.

The apps are real gRPC servers on 127.0.0.1: one built with the Python SDK's
`dapr.ext.grpc.App` and `@app.job_event`, as a user writes it; a recording servicer
(sync grpc) that keeps whole requests, metadata and peers; an Alpha1-only servicer on
grpc.aio. Jobs are scheduled through the HTTP API, whose process registers the app
with its protocol, and delivered by a real worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from dapr.ext.grpc import App, JobEvent
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from flask.testing import FlaskClient
from google.protobuf import json_format, struct_pb2, wrappers_pb2
from grpc import aio

from app.api.factory import create_app
from app.cli.main import main
from app.settings import Settings, SettingsError
from app.store.store import Store
from tests.support.jobs import APP, dead_letters
from tests.support.redis_proc import free_port
from tests.support.seed import SEED_BODY
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker, WorkerFleet

pytestmark = pytest.mark.usefixtures("reap_workers")

STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
VALUE = "type.googleapis.com/google.protobuf.Value"
STABLE = "/dapr.proto.runtime.v1.AppCallback/OnJobEvent"
ALPHA = "/dapr.proto.runtime.v1.AppCallbackAlpha/OnJobEventAlpha1"
FAST_RETRIES = {"constant": {"interval": "0s", "maxRetries": 2}}  # 3 attempts


def _wait_serving(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)


def _grpc_settings(settings: Settings, port: int, **changes: Any) -> Settings:
    return settings.with_(app_url=f"http://127.0.0.1:{port}", app_protocol="grpc", **changes)


def _schedule(api: FlaskClient, name: str, body: Any) -> None:
    if isinstance(body, bytes):
        resp = api.post(f"/v1.0-alpha1/jobs/{name}", data=body,
                        headers={"Content-Type": "application/json"})
    else:
        resp = api.post(f"/v1.0-alpha1/jobs/{name}", json=body)
    assert resp.status_code == 204, resp.get_data(as_text=True)


@contextlib.contextmanager
def _worker(settings: Settings) -> Iterator[ThreadWorker]:
    """An in-process worker, stopped completely at the end of the block: grpc.aio keeps
    process-wide state for every event loop that used it, so one worker's loop must be
    gone before the next test's worker starts (the shared fixture lets it finish in the
    background). The worker process, production's way, has one loop for its life."""
    worker = ThreadWorker(settings).start()
    try:
        yield worker
    finally:
        worker.stop()


def _dead_letter(store: Store, name: str, timeout: float = 15.0) -> Any:
    return wait_for(lambda: next((d for d in dead_letters(store) if d.name == name), None),
                    timeout, what=f"a dead letter for {name!r}")


# --- the apps -----------------------------------------------------------------------------


class SdkApp:
    """An app as the Python SDK's docs write it: `App()`, `@app.job_event(name)`,
    `app.run(port)` (on a thread here)."""

    def __init__(self) -> None:
        self.app = App()
        self.port = free_port()
        self.events: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.app.run, args=(self.port, "127.0.0.1"),
                                        name="sdk-app", daemon=True)

    def on(self, name: str, handler: Callable[[JobEvent], None] | None = None) -> None:
        @self.app.job_event(name)  # type: ignore[untyped-decorator]
        def handle(event: JobEvent) -> None:
            with self._lock:
                self.events.append((event.name, event.data))
            if handler is not None:
                handler(event)

    def received(self, name: str) -> list[bytes]:
        with self._lock:
            return [data for n, data in self.events if n == name]

    def start(self) -> SdkApp:
        self._thread.start()
        _wait_serving(self.port)
        return self

    def stop(self) -> None:
        self.app.stop()
        self._thread.join(10)


@dataclass
class Call:
    method: str
    request: Any
    metadata: dict[str, str]
    peer: str


@dataclass
class Recorder(appcallback_pb2_grpc.AppCallbackServicer):
    """Keeps every OnJobEvent call whole; answers `code` (OK by default)."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    calls: list[Call] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    hold: bool = False  # wait for `release` before answering (a slow app)

    def OnJobEvent(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls.append(Call(STABLE, request, dict(context.invocation_metadata()),
                               context.peer()))
        if self.hold:
            self.release.wait(10)
        if self.code is not grpc.StatusCode.OK:
            context.abort(self.code, f"answering {self.code.name}")
        return appcallback_pb2.JobEventResponse()

    def named(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.request.name == name]


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, int]]:
    servicer = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    servicer.release.set()
    server.stop(0)


class AlphaOnlyApp:
    """An app of an older SDK: only `AppCallbackAlpha.OnJobEventAlpha1`, on grpc.aio in a
    thread of its own. An interceptor counts every call by method, the ones the server
    has no handler for included."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.jobs: list[Any] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._main, name="alpha-app", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        app = self

        class Count(aio.ServerInterceptor):  # type: ignore[misc]
            async def intercept_service(self, continuation: Any, details: Any) -> Any:
                app.methods.append(details.method)
                return await continuation(details)

        class Alpha(appcallback_pb2_grpc.AppCallbackAlphaServicer):
            async def OnJobEventAlpha1(self, request: Any, context: Any) -> Any:
                app.jobs.append(request)
                return appcallback_pb2.JobEventResponse()

        server = aio.server(interceptors=[Count()])
        appcallback_pb2_grpc.add_AppCallbackAlphaServicer_to_server(  # type: ignore[no-untyped-call]
            Alpha(), server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    def start(self) -> AlphaOnlyApp:
        self._thread.start()
        assert self._ready.wait(10), "the Alpha1 app did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the Alpha1 app did not stop"


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """The store, with no app registered: each test's API process registers its gRPC app."""
    s = Store(settings)
    yield s
    s.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[WorkerFleet]:
    f = WorkerFleet(tmp_path)
    yield f
    f.cleanup()


# --- what the app gets ----------------------------------------------------------------------


def test_sdk_app_gets_the_seed_job_and_plain_json_with_their_exact_data(
        settings: Settings, fleet: WorkerFleet) -> None:
    """The Python SDK's `@app.job_event` app, a real worker process (uvloop), jobs
    scheduled over HTTP: the seed's StringValue Any, and plain JSON data (which Dapr
    keeps as a google.protobuf.Value)."""
    app = SdkApp()
    app.on("R2-D2")
    app.on("plain")
    app.start()
    try:
        grpc_settings = _grpc_settings(settings, app.port)
        api = create_app(grpc_settings).test_client()
        fleet.start(grpc_settings)
        _schedule(api, "R2-D2", SEED_BODY)
        data = {"droid": "R2-D2", "tasks": ["oil", {"n": 2}], "ok": True}
        _schedule(api, "plain", {"dueTime": "0s", "data": data})

        [plain] = wait_for(lambda: app.received("plain"), what="the plain job")
        value = struct_pb2.Value.FromString(plain)
        assert json_format.MessageToDict(value) == data
        [seed] = wait_for(lambda: app.received("R2-D2"), timeout=15, what="the seed's job")
        assert seed == wrappers_pb2.StringValue(value="R2-D2:Oil Change").SerializeToString()
        assert wrappers_pb2.StringValue.FromString(seed).value == "R2-D2:Oil Change"
    finally:
        app.stop()
    assert fleet.procs[0].proc is not None and fleet.procs[0].proc.poll() is None, fleet.logs()


def test_the_request_is_what_daprd_builds_with_the_delivery_headers_as_metadata(
        settings: Settings, recorder: tuple[Recorder, int]) -> None:
    servicer, port = recorder
    grpc_settings = _grpc_settings(settings, port, app_api_token="app-s3cret")
    api = create_app(grpc_settings).test_client()
    with _worker(grpc_settings):
        _schedule(api, "R2-D2", {"dueTime": "0s", "data": {"@type": STRING_VALUE,
                                                           "value": "R2-D2:Oil Change"}})
        _schedule(api, "no-data", {"dueTime": "0s"})
        [call] = wait_for(lambda: servicer.named("R2-D2"), what="the R2-D2 job")
        [empty] = wait_for(lambda: servicer.named("no-data"), what="the job without data")

    request = call.request
    assert call.method == STABLE
    assert request.name == "R2-D2"
    assert request.method == "job/R2-D2"
    assert request.data.type_url == STRING_VALUE
    assert request.data.value == b"\n\x10R2-D2:Oil Change"
    assert request.content_type == STRING_VALUE  # daprd: the Any's type URL
    assert request.http_extension.verb == common_pb2.HTTPExtension.Verb.POST
    md = call.metadata
    assert md["dapr-api-token"] == "app-s3cret"
    assert md["jobrunner-trigger-id"].startswith(f"{APP}/R2-D2@")
    assert md["jobrunner-attempt"] == "1"
    assert int(md["jobrunner-scheduled-ms"]) > 0
    assert md["traceparent"].startswith("00-")

    assert empty.request.method == "job/no-data"
    assert not empty.request.HasField("data")  # daprd: a nil Any
    assert empty.request.content_type == ""
    assert empty.metadata["jobrunner-trigger-id"].startswith(f"{APP}/no-data@")


def test_no_token_no_token_metadata(settings: Settings,
                                    recorder: tuple[Recorder, int]) -> None:
    servicer, port = recorder
    grpc_settings = _grpc_settings(settings, port)
    api = create_app(grpc_settings).test_client()
    with _worker(grpc_settings):
        _schedule(api, "tokenless", {"dueTime": "0s", "data": 1})
        [call] = wait_for(lambda: servicer.named("tokenless"), what="the job")
    assert "dapr-api-token" not in call.metadata
    assert call.request.data.type_url == VALUE


def test_a_delivery_logs_the_apps_answer_as_its_status(
        settings: Settings, recorder: tuple[Recorder, int], caplog: pytest.LogCaptureFixture,
) -> None:
    """As an HTTP delivery logs the status the app answered (an OK was logged as "")."""
    _, port = recorder
    grpc_settings = _grpc_settings(settings, port)
    api = create_app(grpc_settings).test_client()
    caplog.set_level(logging.INFO, logger="jobrunner.worker")
    with _worker(grpc_settings):
        _schedule(api, "logged", {"dueTime": "0s"})
        [line] = wait_for(lambda: [r for r in caplog.records if r.getMessage() == "delivered"
                                   and getattr(r, "job", None) == "logged"],
                          what="the delivery's log line")
    assert line.status == "OK"  # type: ignore[attr-defined]


def test_one_connection_is_kept_and_reused(settings: Settings,
                                           recorder: tuple[Recorder, int]) -> None:
    servicer, port = recorder
    grpc_settings = _grpc_settings(settings, port)
    api = create_app(grpc_settings).test_client()
    with _worker(grpc_settings):
        for i in range(20):
            _schedule(api, f"job-{i}", {"dueTime": "0s", "data": i})
            wait_for(functools.partial(servicer.named, f"job-{i}"), what=f"job-{i}")  # in turn
    assert len(servicer.calls) == 20
    assert len({c.peer for c in servicer.calls}) == 1, {c.peer for c in servicer.calls}


# --- failures -------------------------------------------------------------------------------


def test_a_handler_that_raises_is_retried_per_the_policy_then_dead_lettered(
        settings: Settings, store: Store) -> None:
    app = SdkApp()

    def fail(event: JobEvent) -> None:
        raise RuntimeError("the droid is out of oil")

    app.on("failing", fail)
    app.start()
    try:
        grpc_settings = _grpc_settings(settings, app.port)
        api = create_app(grpc_settings).test_client()
        with _worker(grpc_settings):
            _schedule(api, "failing", {"dueTime": "0s", "data": "x",
                                       "failurePolicy": FAST_RETRIES})
            letter = _dead_letter(store, "failing")
    finally:
        app.stop()
    assert len(app.received("failing")) == 3
    assert letter.attempts == 3
    assert "gRPC UNKNOWN" in letter.error, letter.error
    assert store.get(APP, "failing") is None


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_an_error_status_follows_the_failure_policy(
        settings: Settings, store: Store, recorder: tuple[Recorder, int],
        code: grpc.StatusCode) -> None:
    servicer, port = recorder
    servicer.code = code
    grpc_settings = _grpc_settings(settings, port)
    api = create_app(grpc_settings).test_client()
    with _worker(grpc_settings):
        _schedule(api, "bad", {"dueTime": "0s", "failurePolicy": FAST_RETRIES})
        letter = _dead_letter(store, "bad")
    assert [c.metadata["jobrunner-attempt"] for c in servicer.named("bad")] == ["1", "2", "3"]
    assert len({c.metadata["jobrunner-trigger-id"] for c in servicer.named("bad")}) == 1
    assert f"gRPC {code.name}" in letter.error, letter.error


def test_an_answer_that_is_no_job_event_response_is_a_failure_not_a_delivery(
        settings: Settings, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """grpc-go (daprd's) fails such a call INTERNAL; grpc's Python decoding logged a
    traceback for each and the trigger read as delivered."""
    calls: list[bytes] = []

    def garbled(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls.append(request)
        return b"\x0a\x05hello\x12\xff\xff\xff"  # a field cut short

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "dapr.proto.runtime.v1.AppCallback",
        {"OnJobEvent": grpc.unary_unary_rpc_method_handler(garbled)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        grpc_settings = _grpc_settings(settings, port)
        api = create_app(grpc_settings).test_client()
        with _worker(grpc_settings):
            _schedule(api, "garbled", {"dueTime": "0s", "failurePolicy": FAST_RETRIES})
            letter = _dead_letter(store, "garbled")
    finally:
        server.stop(0)
    assert len(calls) == 3 and letter.attempts == 3
    assert "gRPC INTERNAL" in letter.error and "not a JobEventResponse" in letter.error
    assert "Exception deserializing" not in caplog.text


def test_not_found_finishes_the_trigger_as_daprd_does(
        settings: Settings, store: Store, recorder: tuple[Recorder, int]) -> None:
    servicer, port = recorder
    servicer.code = grpc.StatusCode.NOT_FOUND
    grpc_settings = _grpc_settings(settings, port)
    api = create_app(grpc_settings).test_client()
    with _worker(grpc_settings):
        _schedule(api, "gone", {"dueTime": "0s", "failurePolicy": FAST_RETRIES})
        wait_for(lambda: store.get(APP, "gone") is None, what="the job to be finished")
    assert len(servicer.named("gone")) == 1
    assert dead_letters(store) == []


def _serve_recorder(servicer: Recorder, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


def test_an_app_that_went_away_is_a_refused_connection(settings: Settings,
                                                       store: Store) -> None:
    """Registered while it listened (the API process waits for that), then gone:
    each attempt fails as a refused HTTP connection does, then the dead letter."""
    server, port = _serve_recorder(Recorder())
    grpc_settings = _grpc_settings(settings, port)
    api = create_app(grpc_settings).test_client()
    server.stop(0).wait(10)
    with _worker(grpc_settings):
        _schedule(api, "nowhere", {"dueTime": "0s", "failurePolicy": FAST_RETRIES})
        letter = _dead_letter(store, "nowhere")
    assert letter.attempts == 3
    assert letter.error.startswith("cannot connect to the app"), letter.error


def test_an_app_that_comes_back_is_reached_by_the_next_retry(settings: Settings,
                                                             store: Store) -> None:
    """The kept channel reconnects: gRPC's own reconnect backoff (up to 120 s by
    default) would otherwise fail the retries at once, without dialing."""
    server, port = _serve_recorder(Recorder())
    grpc_settings = _grpc_settings(settings, port)
    api = create_app(grpc_settings).test_client()
    server.stop(0).wait(10)
    back = Recorder()
    with _worker(grpc_settings):
        _schedule(api, "later", {"dueTime": "0s", "data": "x", "failurePolicy": {
            "constant": {"interval": "100ms", "maxRetries": 200}}})
        wait_for(lambda: (v := store.get(APP, "later")) is not None and v.attempt >= 5,
                 what="five failed attempts")
        server, _ = _serve_recorder(back, port)
        try:
            [call] = wait_for(lambda: back.named("later"), timeout=15, what="the job")
            wait_for(lambda: store.get(APP, "later") is None, what="the job to end")
        finally:
            server.stop(0)
    assert int(call.metadata["jobrunner-attempt"]) > 5
    assert dead_letters(store) == []


def test_the_delivery_timeout_is_the_call_deadline(
        settings: Settings, store: Store, recorder: tuple[Recorder, int]) -> None:
    servicer, port = recorder
    servicer.hold = True  # answers only when released, after the test
    grpc_settings = _grpc_settings(settings, port, delivery_timeout_s=0.2)
    api = create_app(grpc_settings).test_client()
    with _worker(grpc_settings):
        _schedule(api, "slow", {"dueTime": "0s",
                                "failurePolicy": {"constant": {"maxRetries": 0}}})
        letter = _dead_letter(store, "slow")
    assert letter.attempts == 1
    assert letter.error == "no answer within 0.2s"


# --- the Alpha1 fallback --------------------------------------------------------------------


def test_an_app_with_only_the_alpha1_method_gets_its_jobs_and_is_remembered(
        settings: Settings, store: Store, fleet: WorkerFleet) -> None:
    """The worker runs in its own process: this test's app is on grpc.aio too (see
    `_worker`). The counts below are of calls: a generous delivery timeout, so that a
    first call slowed by a loaded machine is not retried. (It failed now and then in full
    runs with [STABLE, ALPHA, STABLE, ALPHA]: the second job was sent before the worker
    had taken the first one's answer, so it could not know yet which method answers.)"""
    app = AlphaOnlyApp().start()
    try:
        grpc_settings = _grpc_settings(settings, app.port, lease_s=30.0,
                                       delivery_timeout_s=20.0)
        api = create_app(grpc_settings).test_client()
        fleet.start(grpc_settings)
        _schedule(api, "first", {"dueTime": "0s", "data": "one"})
        wait_for(lambda: len(app.jobs) == 1, what="the first job")
        # Its end, not only its arrival: the worker has taken the answer, and with it which
        # method answered (a second job sent before that tried OnJobEvent first too).
        wait_for(lambda: store.get(APP, "first") is None, what="the first job to end")
        _schedule(api, "second", {"dueTime": "0s", "data": "two"})
        wait_for(lambda: len(app.jobs) == 2, what="the second job")
        wait_for(lambda: store.get(APP, "second") is None, what="the second job to end")
    finally:
        app.stop()
    assert [j.name for j in app.jobs] == ["first", "second"]
    assert [struct_pb2.Value.FromString(j.data.value).string_value for j in app.jobs] == \
        ["one", "two"]
    assert [j.method for j in app.jobs] == ["job/first", "job/second"]
    # the stable method was tried once, for the first job; the second went straight to
    # the method that answered
    assert app.methods == [STABLE, ALPHA, ALPHA]
    assert dead_letters(store) == []


def test_calls_at_once_to_an_alpha1_app_leave_it_remembered(settings: Settings) -> None:
    """Each call that found the other method answering toggled the remembered one: two at
    once undid each other, and every later trigger paid the extra call."""
    from workers.grpc_client import GrpcClient, job_event_request
    from workers.http_client import Origin

    app = AlphaOnlyApp().start()
    origin = Origin("127.0.0.1", app.port, False, APP)

    async def deliver() -> list[grpc.StatusCode]:
        client = GrpcClient()
        try:
            def one(name: str) -> Any:
                return client.on_job_event(origin, job_event_request(name, None), (), 20.0)
            codes = [r.code for r in await asyncio.gather(one("a"), one("b"))]
            codes.append((await one("c")).code)
            assert client.uses_alpha(origin)
            return codes
        finally:
            await client.close()

    try:
        assert asyncio.run(deliver()) == [grpc.StatusCode.OK] * 3
    finally:
        app.stop()
    assert sorted(app.methods) == sorted([STABLE, STABLE, ALPHA, ALPHA, ALPHA])
    assert app.methods[-1] == ALPHA


# --- the setting ----------------------------------------------------------------------------


def test_app_protocol_setting() -> None:
    assert Settings.from_env({}).app_protocol == "http"
    settings = Settings.from_env({"APP_PROTOCOL": "GRPC"})
    assert settings.app_protocol == "grpc"
    assert Settings.from_env(settings.to_env()).app_protocol == "grpc"
    with pytest.raises(SettingsError, match="APP_PROTOCOL must be one of http, grpc"):
        Settings.from_env({"APP_PROTOCOL": "grpcs"})


@pytest.mark.parametrize("command", ["api", "up", "run"])
def test_app_protocol_flag_refuses_other_values(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--app-protocol", "soap"],
                                env={"JOBRUNNER_HOME": f"/nonexistent/{uuid.uuid4().hex}"})
    assert result.exit_code == 2, result.output
    assert "'soap' is not one of 'http', 'grpc'" in result.output
