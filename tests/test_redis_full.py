"""Redis that is there but refuses writes: over maxmemory with no eviction (OOM), the
usual way a Redis fills up, unable to write to its disk (MISCONF: the disk full, or its
folder gone), or a replica (READONLY). Writes are answered 503 with a clear error, reads
go on, deleting (which frees memory) works over maxmemory, the workers back off without
ending, and the API's registration heartbeat outlives it: once Redis takes writes again,
everything goes on.

On its own Redis (module scope). OOM: `CONFIG SET maxmemory 1` makes every write that
would grow it an OOM at once, whatever its size; `maxmemory 0` ends it. MISCONF: its data
folder is removed, so a snapshot (BGSAVE, with a `save` rule set) fails and Redis refuses
writes; `save ""` ends it. READONLY: REPLICAOF a port nothing listens on; `REPLICAOF NO ONE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from app.api.factory import create_app
from app.jobs.clock import now_ms
from app.processes.redis_server import answers, ping, require_redis
from app.settings import Settings
from app.store import stats
from app.store.keys import Keys
from app.store.redis_client import UNAVAILABLE
from app.store.store import AppRegistration, Store
from tests.support.jobs import APP, make_job, register
from tests.support.receiver import Receiver
from tests.support.redis_proc import RedisProcess, free_port
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
from workers.metrics import WorkerMetrics
from workers.queue import Queue

pytestmark = pytest.mark.usefixtures("reap_workers")

REDIS_DOWN = "ERR_REDIS_UNAVAILABLE"


@pytest.fixture(scope="module")
def full_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(Path(tmp_path_factory.mktemp("redis-full")) / "data")
    server.start()
    shutil.rmtree(server.workdir)  # (for MISCONF: a snapshot fails; nothing else needs it)
    yield server
    server.stop()


class Refusal:
    """Makes Redis refuse writes (`kind`: "oom" or "misconf"), and take them again."""

    def __init__(self, kind: str, admin: redis.Redis) -> None:
        self.kind, self.admin = kind, admin
        # What the error that says so holds (redis-py drops the code: OOM, MISCONF...).
        self.says = {"oom": "maxmemory", "misconf": "unable to persist to disk",
                     "readonly": "read only replica"}[kind]

    def begin(self) -> None:
        if self.kind == "oom":
            self.admin.config_set("maxmemory", 1)
        elif self.kind == "misconf":
            self.admin.config_set("save", "3600 1")
            self.admin.bgsave()
        else:  # a replica of a master that is not there: it keeps its data, takes no write
            self.admin.replicaof("127.0.0.1", free_port())
        wait_for(self._refused, what=f"Redis to refuse writes ({self.kind})")

    def _refused(self) -> bool:
        try:
            self.admin.set("probe", "x")
        except UNAVAILABLE as exc:  # (MISCONF as one too: the premise of this module)
            return self.says in str(exc)
        return False

    def end(self) -> None:
        self.admin.config_set("maxmemory", 0)
        self.admin.config_set("save", "")
        self.admin.replicaof("no", "one")


@pytest.fixture(params=["oom", "misconf", "readonly"])
def refusal(request: pytest.FixtureRequest, full_redis: RedisProcess) -> Iterator[Refusal]:
    admin = redis.Redis.from_url(full_redis.url)
    admin.config_set("maxmemory-policy", "noeviction")
    refusal = Refusal(request.param, admin)
    yield refusal
    refusal.end()
    admin.close()


def test_a_full_redis_refuses_writes_with_503_and_still_answers_reads(
        full_redis: RedisProcess, refusal: Refusal) -> None:
    settings = api_settings(full_redis.url)
    base = BASES[0]
    with create_app(settings).test_client() as client:
        assert_no_content(post_job(client, base, "kept", {"dueTime": "1h", "data": 1}))
        assert_no_content(post_job(client, base, "to-delete", {"dueTime": "1h"}))
        refusal.begin()
        err = assert_error(post_job(client, base, "refused", {"dueTime": "1h"}), 503,
                           REDIS_DOWN)
        assert refusal.says in err["message"], err
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
        deleted = client.delete(job_url(base, "to-delete"))
        if refusal.kind == "oom":  # deleting frees memory: Redis lets it through
            assert deleted.status_code == 204, deleted.get_data(as_text=True)
        else:  # no write at all while the disk refuses
            assert_error(deleted, 503, REDIS_DOWN)
        assert_error(client.get(job_url(base, "refused")), 404)
        refusal.end()
        assert client.delete(job_url(base, "to-delete")).status_code in (204, 404)
        assert_no_content(post_job(client, base, "after", {"dueTime": "1h"}))
        assert client.get(job_url(base, "after")).status_code == 200
        assert_error(client.get(job_url(base, "to-delete")), 404)


def test_a_dashboard_logout_while_redis_refuses_writes_still_logs_this_browser_out(
        full_redis: RedisProcess, refusal: Refusal) -> None:
    """A logout is kept in Redis (every copy of the session ends with it): refused, it
    answered 503 and left the browser logged in. It logs this browser out and says the
    rest."""
    settings = dataclasses.replace(api_settings(full_redis.url), api_token="tok-full")
    with create_app(settings).test_client() as client:
        page = client.get("/ui/login")
        csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page.data)
        assert csrf is not None
        logged_in = client.post("/ui/login", data={"csrf_token": csrf[1].decode(),
                                                   "token": "tok-full"})
        assert logged_in.status_code == 303
        jobs = client.get("/ui/jobs")
        assert jobs.status_code == 200
        csrf = re.search(rb'name="csrf_token" value="([^"]+)"', jobs.data)
        assert csrf is not None
        refusal.begin()
        out = client.post("/ui/logout", data={"csrf_token": csrf[1].decode()})
        assert out.status_code == 303 and out.headers["Location"] == "/ui/login"
        refusal.end()
        assert client.get("/ui/jobs").status_code == 303  # logged out
        assert b"Logged out of this browser only" in client.get("/ui/login").data


def test_a_worker_waits_out_a_full_redis_and_then_delivers_once(
        full_redis: RedisProcess, refusal: Refusal, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jobrunner.worker")
    receiver = Receiver().start()
    settings = Settings(redis_url=full_redis.url, prefix=f"full{id(caplog) % 10**6}",
                        app_url=receiver.url, delivery_timeout_s=2.0, lease_s=5.0,
                        idle_poll_s=0.2)
    store = register(settings, receiver.url)
    try:
        with ThreadWorker(settings) as worker:
            store.schedule(make_job("before", data=1))
            wait_for(lambda: store.get(APP, "before") is None, what="a first delivery, settled")
            store.schedule(make_job("during", now_ms() + 500, data=2))
            refusal.begin()
            # Due while full: the claim's first write is refused, so nothing is taken.
            wait_for(lambda: [r for r in caplog.records if "retrying" in r.getMessage()
                              and refusal.says in r.getMessage()],
                     what="the worker's line about the refused claim")
            assert worker.alive
            assert receiver.received("/job/during") == []
            refusal.end()
            wait_for(lambda: receiver.received("/job/during"), what="the delivery once freed")
            assert worker.alive
        assert len(receiver.received("/job/during")) == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
            [r.getMessage() for r in caplog.records]
    finally:
        store.close()
        receiver.stop()


def test_the_apps_registration_outlives_a_full_redis(
        full_redis: RedisProcess, refusal: Refusal) -> None:
    receiver = Receiver().start()
    settings = api_settings(full_redis.url, app_url=receiver.url,
                            app_registration_ttl_s=1.0)
    store = Store(settings)
    alive = store.keys.alive(settings.app_id)
    try:
        app = create_app(settings)  # registers the app, and keeps it alive while it lives
        admin = refusal.admin
        wait_for(lambda: admin.exists(alive), what="the registration")
        refusal.begin()
        wait_for(lambda: not admin.exists(alive), what="the registration to run out")
        refusal.end()
        # The heartbeat goes on through the refusals: the app is live again.
        wait_for(lambda: admin.exists(alive), timeout=10.0, what="the registration renewed")
        assert app.name  # (held until here: the heartbeat stops once the app is collected)
    finally:
        store.close()
        receiver.stop()



def test_a_rate_change_met_while_redis_refuses_writes_is_acted_on_once_it_takes_them(
        full_redis: RedisProcess, refusal: Refusal) -> None:
    """A worker's first load of the registrations makes every rate-limited app's held
    triggers due now (they were timed by a rate that may have changed); a load whose
    rescore Redis refuses does it again at the next load, not never."""
    settings = api_settings(full_redis.url)
    store = Store(settings)
    store.register_app(AppRegistration(settings.app_id, "http://127.0.0.1:9", rate=100.0))
    held_apps = store.keys.partition(0).heldapps
    an_hour = now_ms() + 3_600_000  # timed by an old, slower rate
    refusal.admin.zadd(held_apps, {settings.app_id: an_hour})

    async def loads() -> None:
        queue = Queue(settings)
        try:
            refusal.begin()
            with contextlib.suppress(UNAVAILABLE):  # (MISCONF: its PING is refused too)
                await queue.load_apps(None)
            if refusal.kind != "misconf":  # the load goes on without it: claims go on
                assert queue.app(settings.app_id) is not None
            refusal.end()
            queue._apps_rest = None  # (its back-off over)
            await queue.load_apps(None, max_age_s=0.0)  # (the next refresh)
        finally:
            await queue.close()

    try:
        asyncio.run(loads())
        assert refusal.admin.zscore(held_apps, settings.app_id) < an_hour - 3_000_000
    finally:
        store.close()


def test_counters_that_redis_filled_up_in_the_middle_of_are_not_counted_twice(
        full_redis: RedisProcess) -> None:
    """A flush is one pipeline of many HINCRBYs, not atomic: over maxmemory part-way, the
    apps it had counted are counted, the others go again at the next flush, and none twice
    (an app part-way through loses the rest of that flush instead)."""
    admin = redis.Redis.from_url(full_redis.url)
    keys = Keys(f"mx{free_port()}")
    apps = [f"app{i:04d}" for i in range(5000)]

    def counted() -> list[int]:
        pipe = admin.pipeline(transaction=False)
        for app_id in apps:
            pipe.hget(keys.stats_total(app_id), stats.DELIVERED)
        return [int(n or 0) for n in pipe.execute()]

    async def steps(metrics: WorkerMetrics) -> None:
        for app_id in apps:
            metrics._tally(app_id).attempt(True, 5)
        # Room for some of the flush's counts, not all.
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 300_000)
        await metrics.flush()
        some = counted()
        assert 0 < sum(some) < len(apps), sum(some)  # (the premise: full part-way)
        admin.config_set("maxmemory", 0)
        await metrics.flush()

    try:
        _flushes(full_redis.url, keys, admin, steps)
        after = counted()
        assert max(after) == 1, [a for a, n in zip(apps, after, strict=True) if n > 1][:5]
        # Those refused whole went again; those taken in part (a few: Redis crosses its
        # limit back and forth as the pipeline's buffers come and go) lost the rest.
        assert sum(after) >= len(apps) - 100, sum(after)
    finally:
        admin.close()


def test_processes_start_against_a_redis_that_refuses_writes(
        full_redis: RedisProcess, refusal: Refusal) -> None:
    """The start-up gate of `jobrunner worker`, `api` and `up` (a PING), and /healthz: a
    Redis that refuses writes is there (under MISCONF it refuses PING too, which made them
    exit at once); they start and back off as for the rest."""
    store = Store(api_settings(full_redis.url))
    try:
        refusal.begin()
        for url in (full_redis.url, full_redis.url + "?socket_timeout=2"):  # (bare, redis-py)
            said = ping(url)
            assert answers(said), said
            require_redis(url, timeout=2.0)  # (the start-up gate: raises when it gives up)
            # `jobrunner status` says so: only MISCONF refuses PING.
            assert (said is not None) == (refusal.kind == "misconf"), said
            assert said is None or "unable to persist" in said
        assert store.ping()
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["oom", "readonly"])  # (MISCONF: the load fails at PING)
def test_an_app_whose_rescore_was_refused_is_rescored_even_if_its_rate_went_back(
        full_redis: RedisProcess, kind: str) -> None:
    """Rate 100, then 0.01 seen by a load whose rescore Redis refuses: claims meanwhile hold
    the app's triggers at the slow rate's time; the rate goes back to 100, and the next
    load still rescores the app (it is owed, whatever the rates compare to)."""
    refusal = Refusal(kind, redis.Redis.from_url(full_redis.url))
    settings = api_settings(full_redis.url)
    store = Store(settings)
    app_id = settings.app_id

    def rate(per_s: float) -> None:
        store.register_app(AppRegistration(app_id, "http://127.0.0.1:9", rate=per_s))

    held_apps = store.keys.partition(0).heldapps

    async def loads() -> None:
        queue = Queue(settings)
        try:
            rate(100.0)
            await queue.load_apps(None, max_age_s=0.0)
            rate(0.01)
            refusal.begin()
            await queue.load_apps(None, max_age_s=0.0)  # goes on; the rescore is owed
            refusal.end()
            # A claim at the slow rate holds the app's triggers until its next token.
            refusal.admin.zadd(held_apps, {app_id: now_ms() + 100_000})
            rate(100.0)
            await queue.load_apps(None, max_age_s=0.0)
        finally:
            await queue.close()

    try:
        asyncio.run(loads())
        assert refusal.admin.zscore(held_apps, app_id) < now_ms() + 1_000
    finally:
        refusal.end()
        refusal.admin.close()
        store.close()


def test_a_counter_error_that_is_no_outage_is_said_once_and_hides_no_outage(
        full_redis: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    """A stats key of another type fails that app's counts at every flush: logged once and
    dropped (not sent again forever), the other apps' taken; a later outage is still said."""
    caplog.set_level(logging.WARNING, logger="jobrunner.worker")
    admin = redis.Redis.from_url(full_redis.url)
    keys = Keys(f"mx{free_port()}")
    admin.set(keys.stats_total("bad"), "not a hash")

    async def steps(metrics: WorkerMetrics) -> None:
        for _ in range(3):
            for app_id in ("bad", "good"):
                metrics._tally(app_id).attempt(True, 5)
            await metrics.flush()
        admin.config_set("maxmemory", 1)
        metrics._tally("good").attempt(True, 5)
        await metrics.flush()

    try:
        _flushes(full_redis.url, keys, admin, steps)
        said = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
        assert said == [
            ("ERROR", "cannot add the delivery counters to redis, dropped"),
            ("WARNING", "cannot add the delivery counters to redis")], said
        assert admin.hget(keys.stats_total("good"), stats.DELIVERED) == b"3"
    finally:
        admin.close()


def _flushes(url: str, keys: Keys, admin: redis.Redis,
             steps: Callable[[WorkerMetrics], Awaitable[None]]) -> None:
    """`steps` with a worker's counters on their own client; Redis takes writes after."""
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(url)
        try:
            await steps(WorkerMetrics(client, keys, prometheus=False))
        finally:
            admin.config_set("maxmemory", 0)
            await client.aclose()

    asyncio.run(run())
