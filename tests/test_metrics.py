"""One metrics view (issue 11, part 6): the API's /metrics counts its requests over all the
processes of an instance, shows the workers' counters of every worker process (aggregated
in Redis), and `GET /v1.0/stats` / `jobrunner stats` give one app's figures; the Grafana
dashboard only queries metrics a real scrape has. README: "Operating jobrunner", Metrics.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from app.api.factory import create_app
from app.cli.main import main
from app.jobs.clock import now_ms
from app.processes import metrics_dir
from app.processes.procs import child_env, python_module
from app.settings import Settings
from app.store import stats
from app.store.keys import Keys
from tests.support.receiver import Delivery, Receiver
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker, WorkerFleet

pytestmark = pytest.mark.usefixtures("reap_workers")

REPO = Path(__file__).resolve().parents[1]
APP = "job-service"
JOB_ROUTE = "/v1.0/jobs/<anything:name>"
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
# Sample lines of the Prometheus text format: name{labels} value.
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


# --- reading the Prometheus text ------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (name, labels) -> value."""
    found = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        found[(match.group(1), labels)] = float(match.group(3))
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


# --- a real `jobrunner api` -----------------------------------------------------------------


class ApiProcess:
    """`python -P -m app.cli api --processes N` on a free port; TMPDIR is `tmp`, so that its
    metrics folder (app/processes/metrics_dir.py) is found there."""

    def __init__(self, settings: Settings, tmp: Path, processes: int = 2) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.log_path = tmp / "api.log"
        env = child_env({**settings.to_env(), "DAPR_HTTP_PORT": str(self.port),
                         "DAPR_GRPC_PORT": "0", "DAPR_API_TOKEN": "", "TMPDIR": str(tmp),
                         "JOBRUNNER_LOG_LEVEL": "warning"})
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                python_module("app.cli", "api", "--processes", str(processes), "--threads", "2"),
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        wait_for(self._ready, timeout=30, interval=0.05, what="`jobrunner api` to answer")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """One request on a connection of its own (so that any process may take it)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def metrics(self) -> str:
        status, body = self.request("GET", "/metrics")
        assert status == 200, body
        return body.decode()

    def metrics_dirs(self) -> list[Path]:
        return sorted(self.tmp.glob("jobrunner-api-metrics-*"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def api_process(settings: Settings, tmp_path: Path) -> Iterator[ApiProcess]:
    api = ApiProcess(settings, tmp_path)
    yield api
    api.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[WorkerFleet]:
    f = WorkerFleet(tmp_path)
    yield f
    f.cleanup()


def test_request_counters_of_the_api_processes_add_up(api_process: ApiProcess) -> None:
    """Requests spread over both processes of one `jobrunner api`; every scrape, whichever
    process answers it, counts all of them, by route (never the job name) and status."""
    [folder] = api_process.metrics_dirs()
    sent = 0

    def serving_pids() -> set[str]:
        return {m.group(1) for p in folder.glob("counter_*.db")
                if (m := re.fullmatch(r"counter_(\d+)\.db", p.name))}

    def burst() -> bool:
        nonlocal sent
        names = [f"no-such-job-{uuid.uuid4().hex}" for _ in range(16)]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda n: api_process.request("GET", f"/v1.0/jobs/{n}")[0],
                                     names))
        assert statuses == [404] * len(names)
        sent += len(names)
        return len(serving_pids()) >= 2

    wait_for(burst, timeout=60, interval=0, what="both API processes to answer requests")
    for _ in range(6):  # scrapes land on either process: each one counts every request
        text = api_process.metrics()
        assert value(text, "jobrunner_http_requests_total",
                     route=JOB_ROUTE, method="GET", status="404") == sent
        assert value(text, "jobrunner_http_request_duration_seconds_count",
                     route=JOB_ROUTE, method="GET") == sent
        assert "no-such-job" not in text  # the route, never the raw path
    assert len(serving_pids()) == 2

    api_process.stop()
    assert api_process.proc.returncode == 0, api_process.log_path.read_text()
    assert api_process.metrics_dirs() == [], "the instance's metrics folder is removed"


def test_two_api_instances_count_apart(settings: Settings, tmp_path: Path) -> None:
    """Each `jobrunner api` has a folder of its own: another instance's requests, or a
    previous run's, are never added in."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = ApiProcess(settings, tmp_path / "one")
    try:
        second = ApiProcess(settings.with_(app_id="other-app"), tmp_path / "two")
        try:
            for _ in range(3):
                assert first.request("GET", "/v1.0/jobs/x")[0] == 404
            assert second.request("GET", "/v1.0/jobs/x")[0] == 404
            assert value(first.metrics(), "jobrunner_http_requests_total",
                         route=JOB_ROUTE, method="GET", status="404") == 3
            assert value(second.metrics(), "jobrunner_http_requests_total",
                         route=JOB_ROUTE, method="GET", status="404") == 1
        finally:
            second.stop()
    finally:
        first.stop()


# --- the workers' counters, from every worker, on any API process ---------------------------


def _schedule(client: FlaskClient, name: str, **body: Any) -> None:
    response = client.post(f"/v1.0/jobs/{name}", json={"dueTime": "0s", **body})
    assert response.status_code == 204, response.get_data(as_text=True)


def test_triggers_due_counts_the_far_jobs_due_and_not_yet_claimed(settings: Settings) -> None:
    """With no worker running, jobs due count whether they wait in the due index or in the
    far tier (app/store/lua/far.lua), which only a worker's claim empties."""
    settings = settings.with_(far_after_s=0.0)  # every job scheduled ahead goes far
    client = create_app(settings).test_client()
    _schedule(client, "near")  # due now: near
    for i in range(3):
        _schedule(client, f"far-{i}", dueTime="1s")
    _schedule(client, "later", dueTime="1h")
    pk = Keys(settings.prefix, settings.partitions).partition(0)
    with redis.Redis.from_url(settings.redis_url) as r:
        assert int(r.hget(pk.far_meta, "count") or 0) == 4

    def due() -> float | None:
        response = client.get("/metrics")
        assert response.status_code == 200
        return value(response.get_data(as_text=True), "jobrunner_triggers_due")

    assert due() == 1
    wait_for(lambda: due() == 4, 10, what="the far jobs to fall due")
    assert value(client.get("/metrics").get_data(as_text=True), "jobrunner_jobs",
                 app_id=APP) == 5


def test_counters_of_two_worker_processes_on_one_metrics(
    settings: Settings, receiver: Receiver, fleet: WorkerFleet
) -> None:
    """Deliveries that only the first worker could make, then only the second: the API's
    /metrics counts all of them; both are alive while both run; in flight is counted."""
    client = create_app(settings).test_client()

    def scrape() -> str:
        response = client.get("/metrics")
        assert response.status_code == 200
        return response.get_data(as_text=True)

    def delivered() -> float | None:
        return value(scrape(), "jobrunner_delivery_attempts_total",
                     app_id=APP, result="delivered")

    first = fleet.start(settings)
    for i in range(5):
        _schedule(client, f"first-{i}")
    wait_for(lambda: len(receiver.deliveries) == 5, 20, what="the first worker's deliveries")
    wait_for(lambda: delivered() == 5, 10, what="/metrics to count them")

    second = fleet.start(settings)
    wait_for(lambda: value(scrape(), "jobrunner_workers_alive") == 2, 10,
             what="two workers alive")
    assert first.terminate() == 0  # its last counts flushed, and it says goodbye
    assert value(scrape(), "jobrunner_workers_alive") == 1

    release = threading.Event()

    def held(d: Delivery) -> int:
        release.wait(20)
        return 200

    receiver.responder = held
    for i in range(3):
        _schedule(client, f"second-{i}")
    wait_for(lambda: len(receiver.deliveries) == 8, 20, what="the second worker's deliveries")
    wait_for(lambda: value(scrape(), "jobrunner_in_flight", app_id=APP) == 3, 10,
             what="three deliveries in flight")
    release.set()
    wait_for(lambda: delivered() == 8, 10, what="/metrics to count the second's")

    text = scrape()
    assert value(text, "jobrunner_in_flight", app_id=APP) == 0
    assert value(text, "jobrunner_delivery_attempts_total", app_id=APP, result="failed") == 0
    assert value(text, "jobrunner_trigger_lateness_seconds_count", app_id=APP) == 8
    assert value(text, "jobrunner_trigger_lateness_seconds_bucket", app_id=APP, le="+Inf") == 8
    assert value(text, "jobrunner_jobs", app_id=APP) == 0  # one-shot jobs, all fired
    keys = Keys(settings.prefix, settings.partitions)
    client_redis = redis.Redis.from_url(settings.redis_url)
    try:
        [beat] = stats.read_workers(client_redis, keys)
        assert beat.pid == second.pid and beat.attempts == 3
    finally:
        client_redis.close()
    assert second.terminate() == 0


# --- GET /v1.0/stats and `jobrunner stats` --------------------------------------------------


class Served:
    """The API app behind a real HTTP server in this process (for the CLI)."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.httpd: BaseWSGIServer = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    s = Served(settings)
    yield s
    s.close()


def _fails_for_bad(d: Delivery) -> int:
    return 500 if d.path == "/job/bad" else 200


def test_stats_after_known_deliveries_failures_and_dead_letters(
    settings: Settings, receiver: Receiver, served: Served
) -> None:
    receiver.responder = _fails_for_bad
    client = served.app.test_client()
    for name in ("ok-1", "ok-2", "ok-3"):
        _schedule(client, name)
    _schedule(client, "hourly", schedule="@every 1h")  # fires now, and stays
    _schedule(client, "bad", failurePolicy={"constant": {"interval": "0s", "maxRetries": 1}})
    _schedule(client, "later", dueTime="1h")
    expected = {"delivered": 4, "failed": 2, "retried": 1, "deadLettered": 1, "triggers": 5}

    def window(doc: dict[str, Any], which: str) -> dict[str, Any]:
        return {k: v for k, v in doc["apps"][0][which].items() if k != "latenessMs"}

    with ThreadWorker(settings):
        def settled() -> dict[str, Any] | None:
            response = client.get("/v1.0/stats")
            assert response.status_code == 200
            doc: dict[str, Any] = response.get_json()
            return doc if window(doc, "lastMinute") == expected else None

        found = wait_for(settled, 20, interval=0.05, what="the stats of the deliveries")
    assert found is not None
    doc = found
    [app] = doc["apps"]
    assert app["appId"] == APP
    assert window(doc, "lastHour") == expected
    assert (app["jobs"], app["dueNow"], app["dueNowCapped"], app["inFlight"],
            app["deadLetters"]) == (2, 0, False, 0, 1)
    for which in ("lastMinute", "lastHour"):
        p50, p99 = app[which]["latenessMs"]["p50"], app[which]["latenessMs"]["p99"]
        assert 0 <= p50 <= p99 <= stats.LATENESS_BOUNDS_MS[-1]
    assert doc["workersAlive"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", doc["time"])

    # The CLI shows the same figures, from the API over HTTP.
    runner = CliRunner()
    result = runner.invoke(main, ["stats", "--url", served.url, "--json"])
    assert result.exit_code == 0, result.output
    cli_doc = json.loads(result.output)
    assert cli_doc["apps"][0]["lastHour"]["delivered"] == 4
    result = runner.invoke(main, ["stats", "--url", served.url])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split("  ")[0] == "APP" and "DELIVERED 1m/1h" in header
    assert row.split()[:8] == [APP, "2", "0", "0", "4/4", "2/2", "1/1", row.split()[7]]
    assert re.fullmatch(r"[\d.]+m?s/[\d.]+m?s", row.split()[7])


def test_stats_shows_only_this_app_unless_all(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Another app's counters (another tenant's) only with ?all=true, which /metrics, behind
    the same token, shows as well."""
    keys = Keys(settings.prefix, settings.partitions)
    other = stats.Tally()
    for lateness in (3, 7, 400):
        other.attempt(True, lateness)
    other.attempt(False, None)
    other.dead += 1
    pipe = redis_client.pipeline(transaction=False)
    stats.queue_flush(pipe, keys, {"other-app": other}, now_ms())
    pipe.execute()
    client = create_app(settings).test_client()

    [mine] = client.get("/v1.0/stats").get_json()["apps"]
    assert mine["appId"] == APP and mine["lastMinute"]["delivered"] == 0
    assert mine["lastMinute"]["latenessMs"] == {"p50": None, "p99": None}
    both = client.get("/v1.0-alpha1/stats?all=true").get_json()["apps"]
    assert [a["appId"] for a in both] == sorted([APP, "other-app"])
    theirs = next(a for a in both if a["appId"] == "other-app")
    assert {k: theirs["lastHour"][k] for k in ("delivered", "failed", "deadLettered")} == \
        {"delivered": 3, "failed": 1, "deadLettered": 1}
    # 3, 7 and 400 ms: ranks 1.5 and 2.97 fall in (5, 10] and (250, 500], interpolated there
    # as Prometheus's histogram_quantile does
    assert theirs["lastHour"]["latenessMs"] == {"p50": 7.5, "p99": 492.5}
    text = client.get("/metrics").get_data(as_text=True)
    assert value(text, "jobrunner_delivery_attempts_total",
                 app_id="other-app", result="delivered") == 3
    assert value(text, "jobrunner_dead_lettered_total", app_id="other-app") == 1
    assert value(text, "jobrunner_trigger_lateness_seconds_sum", app_id="other-app") == 0.41
    assert value(text, "jobrunner_trigger_lateness_seconds_bucket",
                 app_id="other-app", le="0.005") == 1

    # A rate over complete 10-second slots (a live page's deliveries per second).
    counts, seconds = stats.recent(redis_client, keys, "other-app", 3, now_ms() + 10_000)
    assert (counts.delivered, counts.dead, seconds) == (3, 1, 30.0)
    counts, _ = stats.recent(redis_client, keys, "other-app", 3, now_ms() + 40_000)
    assert counts.delivered == 0  # that slot is out of the window by then

    response = client.get("/v1.0/stats?all=yes")
    assert response.status_code == 400
    assert response.get_json()["errorCode"] == "ERR_MALFORMED_REQUEST"


@pytest.mark.parametrize(("ms", "shown"), [
    (0.5, "0.5ms"), (12.34, "12.3ms"), (999.4, "999ms"), (999.6, "1s"), (1234, "1.23s"),
    (123_456, "123s"), (999_999, "1000s"), (1_234_567, "1235s")])
def test_stats_writes_lateness_in_three_digits_never_as_an_exponent(ms: float,
                                                                    shown: str) -> None:
    from app.cli.stats import _ms

    assert _ms(ms) == shown


def test_the_apis_own_app_is_shown_whatever_other_apps_sort_before_it(
        redis_client: redis.Redis, settings: Settings) -> None:
    """/metrics and `?all=true` show at most MAX_APPS apps, in name order: the asking
    API's own app was cut when a thousand others sorted before it."""
    keys = Keys(settings.prefix)
    redis_client.sadd(keys.stats_apps, *(f"aaa-{i:04d}" for i in range(stats.MAX_APPS + 5)))
    shown = stats.counted_apps(redis_client, keys, own=APP)
    assert len(shown) == stats.MAX_APPS and APP in shown and shown == sorted(shown)
    assert APP not in stats.counted_apps(redis_client, keys)  # the cut, when nobody asks


def test_stats_needs_the_api_token(settings: Settings) -> None:
    client = create_app(settings.with_(api_token="s3cret")).test_client()
    response = client.get("/v1.0/stats")
    assert response.status_code == 401
    assert set(response.get_json()) == {"errorCode", "message"}
    assert client.get("/v1.0/stats", headers={"dapr-api-token": "s3cret"}).status_code == 200


def test_stats_cli_when_the_api_is_not_there() -> None:
    result = CliRunner().invoke(main, ["stats", "--url", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 3
    assert result.output.count("\n") == 1 and "cannot reach the jobs API" in result.output
    assert "Traceback" not in result.output


def test_metrics_with_redis_unreachable_say_so() -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="tdown",
                        app_url="http://127.0.0.1:9")
    response = create_app(settings).test_client().get("/metrics")
    assert response.status_code == 200
    assert value(response.get_data(as_text=True), "jobrunner_redis_up") == 0


def test_percentiles_interpolate_within_a_bucket_as_prometheus() -> None:
    bounds = (1, 2, 5)
    assert stats.quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert stats.quantile(bounds, [4, 0, 0, 0], 0.5) == 0.5  # from 0 to the first bound
    assert stats.quantile(bounds, [0, 2, 2, 0], 0.5) == 2.0
    assert stats.quantile(bounds, [0, 2, 2, 0], 0.75) == 3.5
    assert stats.quantile(bounds, [1, 0, 0, 3], 0.99) == 5.0  # past the last bound
    assert [stats.bucket_of(ms) for ms in (0, 1, 2, 3, 5, 6)] == [0, 0, 1, 2, 2, 3]


# --- the Grafana dashboard and the README's list ----------------------------------------------


@pytest.fixture(scope="module")
def real_scrape(redis_server: RedisProcess,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a real `jobrunner api` after a real delivery (and a retry, a dead letter)
    by a real worker process: every histogram has samples. The tests only read the text:
    one scrape serves the module (its own receiver, key prefix and processes)."""
    tmp_path = tmp_path_factory.mktemp("real-scrape")
    receiver = Receiver(responder=_fails_for_bad).start()
    settings = Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                        app_url=receiver.url, delivery_timeout_s=2.0, lease_s=5.0,
                        idle_poll_s=0.2)
    fleet = WorkerFleet(tmp_path)
    api = ApiProcess(settings, tmp_path)
    try:
        fleet.start(settings)
        for name, body in (("good", {}), ("bad", {"failurePolicy": {"constant": {
                "interval": "0s", "maxRetries": 1}}})):
            status, answer = api.request("POST", f"/v1.0/jobs/{name}", {"dueTime": "0s", **body})
            assert status == 204, answer

        def counted() -> str | None:
            text = api.metrics()
            return text if value(text, "jobrunner_dead_lettered_total", app_id=APP) == 1 \
                else None

        text = wait_for(counted, 20, interval=0.05, what="the delivery counted on /metrics")
        assert text is not None
        yield text
    finally:
        api.stop()
        fleet.cleanup()
        receiver.stop()


def _names(text: str) -> set[str]:
    return {name for name, _ in samples(text)}


def _queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "definition") and isinstance(v, str):  # queries, variables
                yield v
            else:
                yield from _queries(v)
    elif isinstance(node, list):
        for v in node:
            yield from _queries(v)


def test_grafana_dashboard_uses_only_metrics_a_real_scrape_has(real_scrape: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    queries = list(_queries(dashboard))
    assert len(queries) >= 8
    used = {m for q in queries for m in re.findall(r"\bjobrunner_[a-z0-9_]+", q)}
    scraped = _names(real_scrape)
    assert used - scraped == set(), "the dashboard queries metrics /metrics does not have"
    # ...and it shows each of the metrics this part is about
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert families >= {
        "jobrunner_http_requests_total", "jobrunner_http_request_duration_seconds",
        "jobrunner_delivery_attempts_total", "jobrunner_retries_total",
        "jobrunner_dead_lettered_total", "jobrunner_trigger_lateness_seconds",
        "jobrunner_in_flight", "jobrunner_workers_alive", "jobrunner_jobs",
    }


def test_readme_lists_every_metric_of_the_scrape(real_scrape: str) -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    listed = set(re.findall(r"^\| `(jobrunner_[a-z0-9_]+)`", readme, re.MULTILINE))
    ours = {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in _names(real_scrape)
            if n.startswith("jobrunner_")}
    assert ours - listed == set(), "metrics missing from the README's list"
    assert listed - ours == set(), "the README lists metrics /metrics does not have"


def test_metrics_folder_is_the_instance_s_own(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`jobrunner api`'s folder is set for the instance only, and removed afterwards; one
    left by an instance killed outright is removed by the next (metrics_dir.py)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f"{metrics_dir.PREFIX}{dead.pid}-x"
    living = tmp_path / f"{metrics_dir.PREFIX}{os.getppid()}-x"
    orphan.mkdir()
    living.mkdir()
    monkeypatch.setenv(metrics_dir.VARIABLE, "/elsewhere")
    with metrics_dir.metrics_dir() as path:
        assert os.environ[metrics_dir.VARIABLE] == path
        assert Path(path).parent == tmp_path and Path(path).is_dir()
        assert not orphan.exists() and living.exists()
    assert os.environ[metrics_dir.VARIABLE] == "/elsewhere" and not Path(path).exists()
