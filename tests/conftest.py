"""Fixtures shared by the test modules.

- Redis and the app: `redis_server` (one private redis-server per session, the
  binary `jobrunner up` would pick: no redis-server on the PATH is needed),
  `redis_client`, `receiver` (the app: an HTTP server recording deliveries),
  `settings` (this test's own key prefix, delivering to `receiver`).
- Delivery tests: `store` (the receiver registered as the app), `worker` (an
  in-process worker), `api` (a Flask test client), and `reap_workers`, which a
  module that starts in-process workers uses to surface their crashes.
- HTTP API contract tests (tests/test_api_*.py, which override `settings` with
  one that has no receiver): `app`, `client`, and `base`, which runs each test
  on both spellings of the jobs API.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from xdist.scheduler import LoadFileScheduling

from app.api.factory import create_app
from app.processes.redis_server import RedisServerError, choose_redis_server
from app.settings import Settings
from app.store.store import Store
from tests.support import summary
from tests.support.jobs import register
from tests.support.receiver import Receiver
from tests.support.redis_proc import RedisProcess
from tests.support.workers import ThreadWorker
from tests.test_api_helpers import BASES


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long soaks (marked slow)")


# --- the suite's two processes (pytest-xdist: `-n 2` in pyproject.toml) --------------------

# Test files that run servers and workers under load and bound what they measure (lost
# and duplicate triggers, fairness ratios, failover counts), and the catch-up tests, whose
# worker must settle within a fraction of a second: one process runs them one after
# another, so that none of them shares the cores with another.
_UNDER_LOAD = ("tests/chaos/", "tests/cluster/test_failover.py", "tests/test_benchmarks.py",
               "tests/test_fairness.py", "tests/test_slow_clients.py",
               "tests/test_catch_up.py")


class _FilesAndLoad(LoadFileScheduling):
    """Each process takes whole test files (a module's fixtures are built once), and the
    files under load together."""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.partition("::")[0]
        return "under load" if path.startswith(_UNDER_LOAD) else path


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: `-p no:xdist` works too
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> _FilesAndLoad:
    return _FilesAndLoad(config, log)


# --- the run's summary (tests/support/summary.py) ------------------------------------------

_REPORTS: list[pytest.TestReport] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.user_properties:
        _REPORTS.append(report)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")  # its reports go to the process that prints


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if _is_xdist_worker(config):
        return
    found = summary.gathered(_REPORTS)
    for title, kind, line in (("chaos", summary.CHAOS, summary.chaos_line),
                              ("redis cluster failover", summary.FAILOVER, str)):
        if found[kind]:
            terminalreporter.section(title)
            for value in found[kind]:
                terminalreporter.write_line(line(value))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _is_xdist_worker(session.config):
        summary.write_chaos_results(summary.gathered(_REPORTS)[summary.CHAOS])


def pytest_report_header(config: pytest.Config) -> str:
    """Which Redis the suite runs on (the finder of `jobrunner up`; see tests/support)."""
    try:
        return f"redis-server: {choose_redis_server()}"
    except RedisServerError as e:
        return f"redis-server: none ({e})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def settings(redis_server: RedisProcess, receiver: Receiver) -> Settings:
    """Settings on the private Redis with a key prefix of this test's own."""
    return Settings(
        redis_url=redis_server.url,
        prefix=f"t{uuid.uuid4().hex[:10]}",
        app_url=receiver.url,
        delivery_timeout_s=2.0,
        lease_s=5.0,
        idle_poll_s=0.2,
    )


# --- delivery -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reap_workers() -> Iterator[None]:
    """In-process workers stop in the background; surface any crash by the module's end.

    Use it module-wide: `pytestmark = pytest.mark.usefixtures("reap_workers")`."""
    yield
    ThreadWorker.reap()


@pytest.fixture
def store(settings: Settings, receiver: Receiver) -> Iterator[Store]:
    s = register(settings, receiver.url)
    yield s
    s.close()


@pytest.fixture
def worker(settings: Settings) -> Iterator[ThreadWorker]:
    with ThreadWorker(settings) as w:
        yield w  # stops in the background (ThreadWorker.stop_soon)


@pytest.fixture
def api(settings: Settings) -> FlaskClient:
    """The Flask API; it registers the receiver (settings.app_url) as the app."""
    return create_app(settings).test_client()


# --- HTTP API contract ----------------------------------------------------------------------


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as c:
        yield c


@pytest.fixture(params=BASES, ids=["alpha1", "v1"])
def base(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _no_service_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that starts the shared service (`jobrunner run`, JOBRUNNER_HOME under its
    tmp_path) and fails before its own `stop` must not leave it running."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    from app.processes.service_state import read_state, stop_service

    tmp: Path = request.getfixturevalue("tmp_path")
    yield
    for home in (tmp / "home", *tmp.glob("*/home")):
        state = read_state(home) if home.is_dir() else None
        if state is not None and state.alive():
            stop_service(home)
