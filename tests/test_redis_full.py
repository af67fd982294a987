"""Redis that is there but refuses writes: over maxmemory with no eviction (OOM), the
usual way a Redis fills up. Writes are answered 503 with a clear error, reads go on,
deleting (which frees memory) works, the workers back off without ending, and the API's
registration heartbeat outlives it: once memory is freed, everything goes on.

On its own Redis (module scope): `CONFIG SET maxmemory 1` makes every write that would
grow it an OOM at once, whatever its size, and `maxmemory 0` ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.api.factory import create_app
from app.jobs.clock import now_ms
from app.settings import Settings
from app.store.store import Store
from tests.support.jobs import make_job, register
from tests.support.receiver import Receiver
from tests.support.redis_proc import RedisProcess
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from tests.test_api_helpers import (
    BASES,
    api_settings,
    assert_error,
    assert_no_content,
    job_url,
    post_job,
)

pytestmark = pytest.mark.usefixtures("reap_workers")

REDIS_DOWN = "ERR_REDIS_UNAVAILABLE"


@pytest.fixture(scope="module")
def full_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(Path(tmp_path_factory.mktemp("redis-full")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin(full_redis: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(full_redis.url)
    client.config_set("maxmemory-policy", "noeviction")
    yield client
    client.config_set("maxmemory", 0)
    client.close()


def fill(admin: redis.Redis) -> None:
    admin.config_set("maxmemory", 1)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("probe", "x")  # (the premise: Redis refuses writes now)


def free(admin: redis.Redis) -> None:
    admin.config_set("maxmemory", 0)


def test_a_full_redis_refuses_writes_with_503_and_still_answers_reads(
        full_redis: RedisProcess, admin: redis.Redis) -> None:
    settings = api_settings(full_redis.url)
    base = BASES[0]
    with create_app(settings).test_client() as client:
        assert_no_content(post_job(client, base, "kept", {"dueTime": "1h", "data": 1}))
        assert_no_content(post_job(client, base, "to-delete", {"dueTime": "1h"}))
        fill(admin)
        err = assert_error(post_job(client, base, "refused", {"dueTime": "1h"}), 503,
                           REDIS_DOWN)
        assert "maxmemory" in err["message"], err
        assert_error(post_job(client, base, "kept", {"dueTime": "2h", "overwrite": True}), 503,
                     REDIS_DOWN)
        # Reads go on: a GET reads its keys in a MULTI, which a full Redis refuses.
        got = client.get(job_url(base, "kept"))
        assert got.status_code == 200, got.get_data(as_text=True)
        assert got.get_json()["dueTime"] == "1h"  # the refused overwrite changed nothing
        history = client.get(job_url(base, "kept") + "/history")
        assert history.status_code == 200, history.get_data(as_text=True)
        listed = client.get(base)
        assert listed.status_code == 200, listed.get_data(as_text=True)
        assert sorted(j["name"] for j in listed.get_json()["jobs"]) == ["kept", "to-delete"]
        # Deleting frees memory: Redis lets it through.
        assert client.delete(job_url(base, "to-delete")).status_code == 204
        assert_error(client.get(job_url(base, "refused")), 404)
        free(admin)
        assert_no_content(post_job(client, base, "after", {"dueTime": "1h"}))
        assert client.get(job_url(base, "after")).status_code == 200
        assert_error(client.get(job_url(base, "to-delete")), 404)


def test_a_worker_waits_out_a_full_redis_and_then_delivers_once(
        full_redis: RedisProcess, admin: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jobrunner.worker")
    receiver = Receiver().start()
    settings = Settings(redis_url=full_redis.url, prefix=f"full{id(caplog) % 10**6}",
                        app_url=receiver.url, delivery_timeout_s=2.0, lease_s=5.0,
                        idle_poll_s=0.2)
    store = register(settings, receiver.url)
    try:
        with ThreadWorker(settings) as worker:
            store.schedule(make_job("before", data=1))
            wait_for(lambda: receiver.received("/job/before"), what="a first delivery")
            store.schedule(make_job("during", now_ms() + 500, data=2))
            fill(admin)
            # Due while full: the claim's first write is refused, so nothing is taken.
            wait_for(lambda: [r for r in caplog.records if "retrying" in r.getMessage()
                              and "maxmemory" in r.getMessage()],
                     what="the worker's line about the refused claim")
            assert worker.alive
            assert receiver.received("/job/during") == []
            free(admin)
            wait_for(lambda: receiver.received("/job/during"), what="the delivery once freed")
            assert worker.alive
        assert len(receiver.received("/job/during")) == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
            [r.getMessage() for r in caplog.records]
    finally:
        store.close()
        receiver.stop()


def test_the_apps_registration_outlives_a_full_redis(
        full_redis: RedisProcess, admin: redis.Redis) -> None:
    receiver = Receiver().start()
    settings = api_settings(full_redis.url, app_url=receiver.url,
                            app_registration_ttl_s=1.0)
    store = Store(settings)
    alive = store.keys.alive(settings.app_id)
    try:
        app = create_app(settings)  # registers the app, and keeps it alive while it lives
        wait_for(lambda: admin.exists(alive), what="the registration")
        fill(admin)
        wait_for(lambda: not admin.exists(alive), what="the registration to run out")
        free(admin)
        # The heartbeat goes on through the refusals: the app is live again.
        wait_for(lambda: admin.exists(alive), timeout=10.0, what="the registration renewed")
        assert app.name  # (held until here: the heartbeat stops once the app is collected)
    finally:
        store.close()
        receiver.stop()

