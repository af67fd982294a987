"""The official Dapr Python SDK (`dapr` 1.19) against jobrunner, as a user runs it: its
`DaprClient` starts at once against `jobrunner up` (Dapr's health endpoints), schedules,
gets and deletes jobs over gRPC with data of any type, meets Dapr's errors; `jobrunner
run` hands the app DAPR_GRPC_PORT; a job scheduled over gRPC reaches an HTTP app.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._jobs import ConstantFailurePolicy, DropFailurePolicy, Job
from dapr.proto.runtime.v1 import dapr_pb2_grpc, jobs_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from werkzeug.serving import BaseWSGIServer, make_server

from app.api.factory import create_app
from app.grpc.server import create_server
from app.processes.procs import PROJECT_ROOT
from app.settings import Settings
from app.store.store import Store
from tests.support.receiver import Receiver
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for
from tests.test_api_helpers import STRING_VALUE, api_settings

# The SDK's DaprClient() waits on /v1.0/healthz/outbound; a failed probe prints this line,
# and after DAPR_HEALTH_TIMEOUT (60 s unless set) raises TimeoutError.
HEALTH_FAILED = "Health check on"


@dataclass
class Up:
    http_port: int
    grpc_port: int
    prefix: str
    redis_url: str
    home: Path
    receiver: Receiver
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DAPR_", "JOBRUNNER_", "APP_")) and k != "REDIS_URL"}
    env.update(PYTHONPATH=str(PROJECT_ROOT), **extra)
    return env


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(200 <= response.status < 300)
    except OSError:
        return False


@pytest.fixture(scope="module")
def up(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """`jobrunner up` on the test Redis: one worker, the API (2 processes) with HTTP and gRPC,
    delivering to a receiver."""
    tmp = tmp_path_factory.mktemp("up")
    receiver = Receiver().start()
    http_port, grpc_port = free_port(), free_port()
    prefix = f"t{uuid.uuid4().hex[:10]}"
    log = tmp / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "app.cli", "up", "--redis-url", redis_server.url,
             "--app-url", receiver.url, "--http-port", str(http_port),
             "--grpc-port", str(grpc_port), "--workers", "1", "--processes", "2",
             "--threads", "2"],
            env=_env(JOBRUNNER_HOME=str(tmp / "home"), JOBRUNNER_PREFIX=prefix,
                     JOBRUNNER_IDLE_POLL="0.2"),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    service = Up(http_port, grpc_port, prefix, redis_server.url, tmp / "home", receiver, proc,
                 log)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"jobrunner up exited:\n{service.output()}")
            return _answers(f"http://127.0.0.1:{http_port}/healthz")

        wait_for(ready, 60, interval=0.1, what="jobrunner up")
        yield service
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        receiver.stop()


@pytest.fixture
def client(up: Up, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaprClient]:
    """A DaprClient as an app gets one from `dapr run`'s environment."""
    monkeypatch.setenv("DAPR_HTTP_PORT", str(up.http_port))
    monkeypatch.setenv("DAPR_GRPC_PORT", str(up.grpc_port))
    monkeypatch.setenv("DAPR_HEALTH_TIMEOUT", "5")  # not 60 s, should the wait ever fail
    monkeypatch.delenv("DAPR_API_TOKEN", raising=False)
    with DaprClient() as c:
        yield c


@pytest.fixture
def stub(up: Up) -> Iterator[dapr_pb2_grpc.DaprStub]:
    """The generated stub, for the methods the 1.19 client does not wrap (list, prefix)."""
    with grpc.insecure_channel(f"127.0.0.1:{up.grpc_port}") as channel:
        yield dapr_pb2_grpc.DaprStub(channel)


def name() -> str:
    return f"sdk-{uuid.uuid4().hex[:8]}"


def string_any(text: str) -> any_pb2.Any:
    data = any_pb2.Any()
    data.Pack(wrappers_pb2.StringValue(value=text))
    return data


# --- start-up -----------------------------------------------------------------------------


def test_dapr_client_starts_at_once(up: Up, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Its first probe of /v1.0/healthz/outbound is answered (no failed probe printed),
    so the constructor returns at once instead of retrying for a minute."""
    monkeypatch.setenv("DAPR_HTTP_PORT", str(up.http_port))
    monkeypatch.setenv("DAPR_GRPC_PORT", str(up.grpc_port))
    monkeypatch.setenv("DAPR_HEALTH_TIMEOUT", "5")
    with DaprClient() as c:
        c.schedule_job(Job(name=name(), due_time="1h"))
    assert HEALTH_FAILED not in capsys.readouterr().out
    banner = up.output()
    assert f"gRPC     127.0.0.1:{up.grpc_port}" in banner, banner


# --- the jobs methods ---------------------------------------------------------------------


def test_schedule_job_and_get_job_with_string_value_data(client: DaprClient) -> None:
    job_name = name()
    client.schedule_job(Job(name=job_name, schedule="@every 1h", due_time="30m", repeats=5,
                            ttl="10h", data=string_any("R2-D2:Oil Change")))
    got = client.get_job(job_name)
    assert (got.name, got.schedule, got.due_time, got.repeats, got.ttl) == (
        job_name, "@every 1h", "30m", 5, "10h")
    assert got.data == string_any("R2-D2:Oil Change")
    value = wrappers_pb2.StringValue()
    assert got.data is not None and got.data.Unpack(value)
    assert value.value == "R2-D2:Oil Change"


def test_schedule_job_alpha1(client: DaprClient) -> None:
    job_name = name()
    with pytest.warns(DeprecationWarning):
        client.schedule_job_alpha1(Job(name=job_name, due_time="1h", data=string_any("a1")))
    assert client.get_job(job_name).data == string_any("a1")


def test_data_of_any_message_type_comes_back_as_given(client: DaprClient) -> None:
    duration = any_pb2.Any()
    duration.Pack(duration_pb2.Duration(seconds=90, nanos=5))
    dapr_message = any_pb2.Any()
    dapr_message.Pack(jobs_pb2.GetJobRequest(name="a message of Dapr's own"))
    # What the SDK's own jobs example schedules: JSON bytes, no type URL.
    sdk_example = any_pb2.Any(value=json.dumps({"message": "hello"}).encode())
    for data in (duration, dapr_message, sdk_example):
        job_name = name()
        client.schedule_job(Job(name=job_name, due_time="1h", data=data))
        got = client.get_job(job_name).data
        assert got is not None
        assert (got.type_url, got.value) == (data.type_url, data.value)


def test_failure_policies_round_trip(client: DaprClient) -> None:
    dropped, constant = name(), name()
    client.schedule_job(Job(name=dropped, due_time="1h", failure_policy=DropFailurePolicy()))
    client.schedule_job(Job(name=constant, due_time="1h", failure_policy=ConstantFailurePolicy(
        max_retries=2, interval_seconds=5)))
    assert isinstance(client.get_job(dropped).failure_policy, DropFailurePolicy)
    policy = client.get_job(constant).failure_policy
    assert isinstance(policy, ConstantFailurePolicy)
    assert (policy.max_retries, policy.interval_seconds) == (2, 5)


def test_delete_job(client: DaprClient) -> None:
    job_name = name()
    client.schedule_job(Job(name=job_name, due_time="1h"))
    client.delete_job(job_name)
    with pytest.raises(DaprGrpcError) as caught:
        client.get_job(job_name)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.error_code() == "DAPR_SCHEDULER_JOB_NOT_FOUND"
    client.delete_job(job_name)  # deleting what is not there is fine, as in Dapr


def test_list_and_delete_by_prefix_through_the_generated_stub(
    client: DaprClient, stub: dapr_pb2_grpc.DaprStub
) -> None:
    prefix = name()
    for suffix in ("a", "b"):
        client.schedule_job(Job(name=f"{prefix}-{suffix}", due_time="1h"))
    listed = {job.name for job in stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=10).jobs}
    assert {f"{prefix}-a", f"{prefix}-b"} <= listed
    stub.DeleteJobsByPrefixAlpha1(jobs_pb2.DeleteJobsByPrefixRequestAlpha1(
        name_prefix=f"{prefix}-"), timeout=10)
    listed = {job.name for job in stub.ListJobsAlpha1(jobs_pb2.ListJobsRequestAlpha1(),
                                                      timeout=10).jobs}
    assert not {n for n in listed if n.startswith(prefix)}


def test_dapr_errors(client: DaprClient) -> None:
    with pytest.raises(DaprGrpcError) as caught:
        client.schedule_job(Job(name=name(), schedule="every day at noon"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.error_code() == "DAPR_SCHEDULER_SCHEDULE_JOB"
    assert "every day at noon" in caught.value.details()
    job_name = name()
    client.schedule_job(Job(name=job_name, due_time="1h"))
    with pytest.raises(DaprGrpcError) as caught:
        client.schedule_job(Job(name=job_name, due_time="2h"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    client.schedule_job(Job(name=job_name, due_time="2h"), overwrite=True)
    assert client.get_job(job_name).due_time == "2h"


def test_other_methods_are_unimplemented(client: DaprClient) -> None:
    with pytest.raises(DaprGrpcError) as caught:
        client.get_state("statestore", "key")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details().startswith("jobrunner serves only the jobs API of Dapr")


# --- the API token ------------------------------------------------------------------------


class InProcessApi:
    """The HTTP app (werkzeug, a thread) and the gRPC server of one API, in this process."""

    def __init__(self, settings: Settings) -> None:
        self.store = Store(settings)
        self.httpd: BaseWSGIServer = make_server(
            "127.0.0.1", settings.http_port, create_app(settings, self.store), threaded=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.grpc = create_server(settings, self.store, threads=2)

    def __enter__(self) -> InProcessApi:
        self.thread.start()
        self.grpc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.grpc.stop(0).wait(5)
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
        self.store.close()


def test_api_token(redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    settings = api_settings(redis_server.url, api_token="s3cret", http_port=free_port(),
                            grpc_port=free_port())
    monkeypatch.setenv("DAPR_HTTP_PORT", str(settings.http_port))
    monkeypatch.setenv("DAPR_GRPC_PORT", str(settings.grpc_port))
    monkeypatch.setenv("DAPR_HEALTH_TIMEOUT", "5")
    with InProcessApi(settings):
        monkeypatch.setenv("DAPR_API_TOKEN", "s3cret")
        with DaprClient() as c:
            c.schedule_job(Job(name="tok", due_time="1h", data=string_any("x")))
            assert c.get_job("tok").data == string_any("x")
        monkeypatch.setenv("DAPR_API_TOKEN", "wrong")
        with DaprClient() as c, pytest.raises(DaprGrpcError) as caught:
            c.get_job("tok")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        monkeypatch.delenv("DAPR_API_TOKEN")
        with DaprClient() as c, pytest.raises(DaprGrpcError) as caught:
            c.get_job("tok")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The health endpoints need no token: no client's start-up probe failed.
    assert HEALTH_FAILED not in capsys.readouterr().out


# --- delivery and `jobrunner run` ---------------------------------------------------------


def test_a_job_scheduled_with_the_sdk_reaches_the_http_app(client: DaprClient, up: Up) -> None:
    """As the seed's default delivery format gives an Any: the {type_url, value} envelope."""
    job_name = name()
    client.schedule_job(Job(name=job_name, due_time="0s", data=string_any("R2-D2:Oil Change")))

    def delivered() -> list[bytes]:
        return [d.body for d in up.receiver.deliveries if d.path == f"/job/{job_name}"]

    [body] = wait_for(delivered, 20, interval=0.05, what="the delivery")
    assert json.loads(body) == {"type_url": STRING_VALUE, "value": "ChBSMi1EMjpPaWwgQ2hhbmdl"}


APP = textwrap.dedent("""
    import os
    from google.protobuf.any_pb2 import Any
    from google.protobuf.wrappers_pb2 import StringValue
    from dapr.clients import DaprClient, Job

    print("ports", os.environ["DAPR_HTTP_PORT"], os.environ["DAPR_GRPC_PORT"], flush=True)
    data = Any()
    data.Pack(StringValue(value="from run"))
    with DaprClient() as client:
        client.schedule_job(Job(name="from-run", due_time="1h", data=data))
        got = StringValue()
        client.get_job("from-run").data.Unpack(got)
        print("got", got.value, flush=True)
""")


def test_run_gives_the_app_the_grpc_port(up: Up, tmp_path: Path) -> None:
    """`jobrunner run` (beside `up`'s service) picks a free gRPC port, as `dapr run` does,
    and exports it: the SDK's client in the app finds the API with no configuration."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    http_port = free_port()
    done = subprocess.run(
        [sys.executable, "-P", "-m", "app.cli", "run", "--app-id", "sdk-run",
         "--app-port", str(free_port()), "--http-port", str(http_port), "--",
         sys.executable, str(app)],
        env=_env(JOBRUNNER_HOME=str(up.home), JOBRUNNER_PREFIX=up.prefix,
                 REDIS_URL=up.redis_url, DAPR_HEALTH_TIMEOUT="5"),
        capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    ports = next(line for line in output.splitlines() if "ports " in line).split()
    assert ports[-2] == str(http_port)
    assert ports[-1].isdigit() and ports[-1] not in (str(http_port), str(up.grpc_port))
    assert "got from run" in output
    assert HEALTH_FAILED not in output


# --- Dapr's health endpoints --------------------------------------------------------------


def test_dapr_health_endpoints(redis_server: RedisProcess) -> None:
    client = create_app(api_settings(redis_server.url, api_token="s3cret")).test_client()
    for path in ("/v1.0/healthz", "/v1.0/healthz/outbound", "/v1.0/healthz?appid=job-service"):
        response = client.get(path)  # no token: probes carry none, as in Dapr
        assert (response.status_code, response.data) == (204, b""), path
    response = client.get("/v1.0/healthz?appid=someone-else")
    assert response.status_code == 503
    assert response.get_json()["errorCode"] == "ERR_HEALTH_APPID_NOT_MATCH"
    assert client.get("/v1.0/jobs/x").status_code == 401  # the rest still needs it


def test_dapr_health_when_redis_is_down() -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="tdown",
                        app_url="http://127.0.0.1:9")
    client = create_app(settings).test_client()
    response = client.get("/v1.0/healthz")
    assert response.status_code == 503
    assert response.get_json()["errorCode"] == "ERR_HEALTH_NOT_READY"
    # The process takes calls (each answers 503 while Redis is away): a client starts.
    assert client.get("/v1.0/healthz/outbound").status_code == 204
