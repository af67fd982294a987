"""One app's data never costs another app's requests (issue 10, parts 2(c), 3 and 6).

App A holds many large dead letters and many jobs; app B holds a few. B's dead-letter
list, inspect, replay and purge, B's job list and B's counts must cost B exactly the same
Redis commands and the same bytes read with A's data there as without it. Costs are
counted in the client, per thread (`Meter`): every command sent and every byte of every
reply, so a background heartbeat of the API process is not mixed in. Also here: page
tokens that are not ours are refused without asking Redis, replays and purges name at
most JOBRUNNER_MAX_REPLAY_IDS ids, an empty selection is refused rather than taken as
"everything", dead letters are shown in the jobs API's form, and data stored before the
per-app indexes existed is indexed once.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient

from app.api.factory import create_app
from app.cli.main import main
from app.jobs.model import FailureKind, FailurePolicy, Job, Trigger
from app.settings import Settings
from app.store import pages, stats
from app.store.deadletters import DeadLetters, Selection
from app.store.keys import INDEXED_VERSION, job_id, letter_job_name
from app.store.store import Store
from tests.support.far import NO_FAR_S
from tests.support.jobs import QueueDriver, make_job
from tests.support.names_index import drop_index, index_ids
from tests.support.redis_proc import RedisProcess

T0 = 1_900_000_000_000
A, B = "app-a", "app-b"
MIB = 1024 * 1024
ONE_ATTEMPT = FailurePolicy(FailureKind.CONSTANT, 0, 0)
DL = "/v1.0/deadletters"
JOBS = "/v1.0/jobs"


# --- counting what a thread asks of Redis ----------------------------------------------


@dataclass
class Meter:
    commands: Counter[str] = field(default_factory=Counter)
    bytes_read: int = 0
    round_trips: int = 0
    largest_round_trip: int = 0  # bytes of the largest reply (or pipeline of replies)
    _current: int = 0

    def sent(self) -> None:
        self.round_trips += 1
        self._current = 0

    def read(self, n: int) -> None:
        self.bytes_read += n
        self._current += n
        self.largest_round_trip = max(self.largest_round_trip, self._current)

    def cost(self) -> tuple[dict[str, int], int]:
        return dict(self.commands), self.bytes_read


_METERS: dict[int, Meter] = {}


def _reply_size(reply: Any) -> int:
    if isinstance(reply, bytes | str):
        return len(reply)
    if isinstance(reply, list | tuple):
        return sum(_reply_size(r) for r in reply)
    return 8 if reply is not None else 0


class CountingConnection(redis.Connection):
    """Counts, for the thread being metered, every command packed and every reply byte."""

    @staticmethod
    def _count(args: Any) -> None:
        meter = _METERS.get(threading.get_ident())
        if meter is not None:
            name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            meter.commands[name.upper()] += 1

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._count(args)
        super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:  # a pipeline's
        for args in commands:
            self._count(args)
        return super().pack_commands(commands)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        meter = _METERS.get(threading.get_ident())
        if meter is not None:
            meter.sent()
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        reply = super().read_response(*args, **kwargs)
        meter = _METERS.get(threading.get_ident())
        if meter is not None:
            meter.read(_reply_size(reply))
        return reply


def measure(action: Callable[[], Any]) -> tuple[Meter, Any]:
    meter = Meter()
    _METERS[threading.get_ident()] = meter
    try:
        result = action()
    finally:
        del _METERS[threading.get_ident()]
    return meter, result


def counting_store(settings: Settings) -> Store:
    pool = redis.ConnectionPool.from_url(settings.redis_url, connection_class=CountingConnection)
    return Store(settings, client=redis.Redis(connection_pool=pool))


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    return Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                    app_url="http://127.0.0.1:9", app_id=B, delivery_timeout_s=2.0,
                    lease_s=5.0)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = counting_store(settings)
    yield s
    s.close()


@pytest.fixture
def q(settings: Settings) -> Iterator[QueueDriver]:
    driver = QueueDriver(settings, start_ms=T0)
    yield driver
    driver.close()


@pytest.fixture
def api(settings: Settings, store: Store) -> FlaskClient:
    return create_app(settings, store=store).test_client()


def dead_letter_jobs(store: Store, q: QueueDriver, app_id: str, names: list[str],
                     data: Any = "x") -> list[Trigger]:
    """Jobs of `app_id` that the worker's acknowledge script (ack.lua) dead-letters."""
    store.schedule_many(make_job(n, T0, app_id=app_id, data=data, schedule="@every 1h",
                                 failure_policy=ONE_ATTEMPT) for n in names)
    claimed = q.claim(limit=10_000, at=T0)
    held = [t for t in claimed if t.job.app_id == app_id and t.job.name in names]
    assert len(held) == len(names)
    q.release([t for t in claimed if t not in held])
    for i, trigger in enumerate(held):
        q.clock.ms = T0 + 1 + i
        assert q.dead(trigger, T0 + 3_600_000) == 1
    return held


def fill_app_a(store: Store, q: QueueDriver, letters: int = 24, jobs: int = 20_000) -> None:
    """App A: `letters` dead letters of 1 MiB each and `jobs` jobs, ten of them 1 MiB."""
    dead_letter_jobs(store, q, A, [f"big-{i}" for i in range(letters)], data="x" * MIB)
    store.schedule_many(make_job(f"job-{i:05d}", T0 + 10**9, app_id=A) for i in range(jobs))
    store.schedule_many(make_job(f"b-{i}", T0 + 10**9, app_id=A, data="y" * MIB)
                        for i in range(10))  # the same names as B's, in A


# --- the cost of B's requests does not grow with A's data -------------------------------


def b_reads(api: FlaskClient, store: Store) -> dict[str, Callable[[], Any]]:
    """B's read requests, over HTTP and on the store."""
    def get(url: str) -> Any:
        response = api.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    letters = DeadLetters(store)
    return {
        "deadletters?limit=1": lambda: get(f"{DL}?limit=1"),
        "deadletters": lambda: get(DL),
        "deadletters?prefix=b-1": lambda: get(f"{DL}?prefix=b-1"),
        "deadletters/{id}": lambda: get(f"{DL}/{get(f'{DL}?limit=1')['deadLetters'][0]['id']}"),
        "jobs?limit=1": lambda: get(f"{JOBS}?limit=1"),
        "jobs": lambda: get(JOBS),
        "jobs?prefix=b-": lambda: get(f"{JOBS}?prefix=b-"),
        "app_counts": lambda: store.app_counts(B),
        "page 2 of dead letters": lambda: letters.page(
            B, limit=2, token=letters.page(B, limit=2)[1]),
    }


def test_b_reads_cost_the_same_whatever_a_stores(api: FlaskClient, store: Store,
                                                 q: QueueDriver) -> None:
    dead_letter_jobs(store, q, B, [f"b-{i}" for i in range(5)])
    store.schedule_many(make_job(f"b-job-{i}", T0 + 10**9, app_id=B) for i in range(5))
    reads = b_reads(api, store)
    for read in reads.values():
        read()  # warm: scripts loaded, ensure_indexed done
    alone = {what: measure(read) for what, read in reads.items()}

    fill_app_a(store, q)
    assert store.app_counts(A) == {"jobs": 24 + 20_010, "dead_letters": 24}
    with_a = {what: measure(read) for what, read in reads.items()}

    for what in reads:
        (m_alone, r_alone), (m_with, r_with) = alone[what], with_a[what]
        assert r_with == r_alone, what  # the same answer
        assert m_with.cost() == m_alone.cost(), f"{what}: {m_alone.cost()} -> {m_with.cost()}"
        assert m_with.bytes_read < MIB // 4, f"{what} read {m_with.bytes_read} bytes"
    assert alone["app_counts"][1] == {"jobs": 5 + 5, "dead_letters": 5}  # b-i go on too


def test_b_stats_count_and_cost_the_same_whatever_a_has_due(store: Store) -> None:
    """B's due count (`GET .../stats`, the dashboard's counters every few seconds) read the
    head of the due index, which every app shares: 20,000 of A's due triggers made it read
    megabytes, and B's own due trigger, behind them, went uncounted ("0+")."""
    store.schedule_many(make_job(f"b-due-{i}", T0, app_id=B) for i in range(3))
    store.schedule_many(make_job("b-later", T0 + 10**9, app_id=B) for _ in range(1))
    now = T0 + 1000

    def b_stats() -> tuple[int, bool]:
        figures = stats.app_stats(store, B, [], at_ms=now)
        return figures.due_now, figures.due_now_capped

    b_stats()  # warm
    alone = measure(b_stats)
    store.schedule_many(make_job(f"a-{i:05d}", T0 - 1, app_id=A) for i in range(20_000))
    with_a = measure(b_stats)
    assert alone[1] == with_a[1] == (3, False)
    assert with_a[0].cost() == alone[0].cost(), (alone[0].cost(), with_a[0].cost())


def test_every_apps_stats_read_a_share_of_the_due_count_cap_each(store: Store) -> None:
    """`?all=true` read up to 10,000 of each app's jobs: about 15 ms an app with many, 15 s
    at the 1,000-app cap, for any app's token. Each app now has a share of one cap."""
    store.schedule_many(make_job(f"a-{i:05d}", T0 - 1, app_id=A) for i in range(3_000))
    now = T0 + 1000
    alone = measure(lambda: stats.app_stats(store, A, [], at_ms=now))
    shared_cap = stats.due_count_cap(30)  # thirty apps shown at once
    shared = measure(lambda: stats.app_stats(store, A, [], at_ms=now, due_cap=shared_cap))
    assert (alone[1].due_now, alone[1].due_now_capped) == (3_000, False)
    assert (shared[1].due_now, shared[1].due_now_capped) == (shared_cap, True)  # "N+"
    assert shared[0].bytes_read * 5 < alone[0].bytes_read
    assert stats.due_count_cap(1) == stats.DUE_COUNT_CAP
    assert stats.due_count_cap(1000) == stats.ALL_APPS_DUE_COUNT_FLOOR


def test_b_replay_and_purge_cost_the_same_whatever_a_stores(settings: Settings, store: Store,
                                                            q: QueueDriver) -> None:
    def cycle() -> tuple[Meter, Meter, Meter]:
        names = [f"b-{i}" for i in range(6)]
        held = dead_letter_jobs(store, q, B, names)
        letters = DeadLetters(store)
        by_ids = Selection.of([held[0].trigger_id], None, False, settings.max_replay_ids)
        by_prefix = Selection.of(None, "b-", False, settings.max_replay_ids)
        m_ids, n_ids = measure(lambda: letters.replay(B, by_ids).count)
        m_prefix, n_prefix = measure(lambda: letters.replay(B, by_prefix).count)
        assert (n_ids, n_prefix) == (1, 5)
        dead_letter_jobs(store, q, B, [f"c-{i}" for i in range(6)])
        m_purge, n_purge = measure(lambda: letters.purge(B, Selection(everything=True)))
        assert n_purge == 6
        # B's jobs and its pending replays go, so that the next cycle starts alike.
        store.delete_prefix(B, "")
        for trigger in q.claim(limit=100, at=T0):
            assert trigger.job.app_id == B and trigger.job.replay_of is not None
            q.next(trigger, None)
        assert store.app_counts(B) == {"jobs": 0, "dead_letters": 0}
        return m_ids, m_prefix, m_purge

    cycle()  # warm
    alone = cycle()
    fill_app_a(store, q, jobs=2_000)
    with_a = cycle()
    for what, m_alone, m_with in zip(("ids", "prefix", "purge"), alone, with_a, strict=True):
        assert m_with.commands == m_alone.commands, what
        assert m_with.bytes_read < MIB // 4, f"replay by {what} read {m_with.bytes_read} bytes"


# --- bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["0.0.0.", "0.0", "x", "not a token", "%%%", "b" * 5000,
                                   pages.encode("a/b"), pages.encode("job\n"),
                                   pages.encode("other-prefix")])
def test_a_forged_page_token_is_a_400_without_asking_redis(api: FlaskClient, token: str) -> None:
    for url, query in ((JOBS, {"prefix": "b-"}), (DL, {})):
        meter, response = measure(
            lambda u=url, q=query: api.get(u, query_string={**q, "pageToken": token}))
        assert response.status_code == 400, (url, response.get_data(as_text=True))
        assert response.get_json()["errorCode"] == "ERR_MALFORMED_REQUEST"
        assert "page token" in response.get_json()["message"]
        assert meter.round_trips == 0, (url, meter.commands)


def test_any_position_token_costs_one_page(api: FlaskClient, store: Store,
                                           q: QueueDriver) -> None:
    """A token of our form that no page gave (a stale one, a made-up name) is a position:
    the page after it, for the price of a first page, with 20,000 jobs stored."""
    store.schedule_many(make_job(f"job-{i:05d}", T0 + 10**9, app_id=B) for i in range(20_000))
    api.get(f"{JOBS}?limit=10")  # warm
    first = measure(lambda: api.get(f"{JOBS}?limit=10"))[0]
    token = pages.encode("job-12345x")  # between job-12345 and job-12346: never stored
    meter, response = measure(lambda: api.get(f"{JOBS}?limit=10&pageToken={token}"))
    assert [j["name"] for j in response.get_json()["jobs"]] == [
        f"job-{i:05d}" for i in range(12346, 12356)]
    assert meter.commands == first.commands


@pytest.mark.parametrize("partitions", [1, 3])
def test_list_pages_walk_every_job_once_in_name_order(settings: Settings,
                                                      partitions: int) -> None:
    settings = settings.with_(partitions=partitions)
    store = counting_store(settings)
    api = create_app(settings, store=store).test_client()
    names = [f"n-{i:03d}" for i in range(57)]
    store.schedule_many(make_job(n, T0, app_id=B) for n in reversed(names))
    store.schedule_many(make_job(n, T0, app_id=A) for n in names)
    seen: list[str] = []
    token = ""
    for _ in range(100):
        body = api.get(JOBS, query_string={"limit": 10, "pageToken": token}).get_json()
        seen += [j["name"] for j in body["jobs"]]
        token = body["nextPageToken"]
        if not token:
            break
    assert seen == names
    store.close()


@pytest.mark.parametrize("partitions", [1, 3])
def test_dead_letter_pages_walk_every_letter_once_oldest_first(settings: Settings,
                                                               partitions: int) -> None:
    """Over partitions, with a prefix whose scan budget (2) runs out on most pages: the
    tokens still lead through every matching letter once, oldest first."""
    settings = settings.with_(partitions=partitions, list_scan_budget=2)
    store = counting_store(settings)
    q = QueueDriver(settings, start_ms=T0)
    try:
        held = dead_letter_jobs(store, q, B, [f"{'keep' if i % 3 else 'skip'}-{i:02d}"
                                              for i in range(30)])
        names = [t.job.name for t in held]  # dead-lettered in this order, 1 ms apart
        dead_letter_jobs(store, q, A, ["keep-a"])
        letters = DeadLetters(store)
        for prefix, want in (("", names), ("keep-", [n for n in names if n[0] == "k"])):
            seen: list[str] = []
            token = ""
            for _ in range(100):
                page, token = letters.page(B, prefix, limit=4, token=token)
                assert len(page) <= 4
                seen += [d.name for d in page]
                if not token:
                    break
            assert seen == want, prefix
        # A token of one prefix's pages is refused with another prefix, without Redis.
        token = letters.page(B, "keep-", limit=4)[1]
        for other in ("", "skip-", "keep"):
            with pytest.raises(pages.BadPageToken, match="not a token of the letters"):
                letters.page(B, other, limit=4, token=token)
        skipped = [d.name for d in letters.page(B, "keep-", limit=3, offset=2)[0]]
        assert skipped == [n for n in names if n[0] == "k"][2:2 + len(skipped)]
    finally:
        q.close()
        store.close()


def test_a_page_stops_at_the_byte_budget(settings: Settings, q: QueueDriver) -> None:
    store = counting_store(settings.with_(page_max_bytes=3 * MIB))
    try:
        store.schedule_many(make_job(f"big-{i}", T0, app_id=B, data="z" * MIB)
                            for i in range(7))
        got: list[str] = []
        token = ""
        for _ in range(10):
            meter, (views, token) = measure(lambda t=token: store.list_jobs(B, "", t, 100))
            assert 1 <= len(views) <= 3
            assert meter.bytes_read < 4 * MIB
            got += [v.job.name for v in views]
            if not token:
                break
        assert got == [f"big-{i}" for i in range(7)]
    finally:
        store.close()


def test_a_page_of_non_ascii_data_is_answered_in_about_its_byte_budget(
        settings: Settings) -> None:
    """The answer is UTF-8 as the records are: escaped, 4-byte characters took 12."""
    budget = 3 * MIB
    own = settings.with_(app_id=B, page_max_bytes=budget)
    store = Store(own)
    try:
        store.schedule_many(make_job(f"emoji-{i}", T0, app_id=B, data="\U0001f600" * (MIB // 4))
                            for i in range(7))
        api = create_app(own).test_client()
        listed, token = 0, ""
        for _ in range(10):
            answer = api.get("/v1.0/jobs", query_string={"limit": 100, "pageToken": token})
            assert answer.status_code == 200
            assert len(answer.data) < budget + 64 * 1024, len(answer.data)
            body = answer.get_json()
            assert all(job["data"] == "\U0001f600" * (MIB // 4) for job in body["jobs"])
            listed, token = listed + len(body["jobs"]), body["nextPageToken"]
            if not token:
                break
        assert listed == 7
    finally:
        store.close()


def test_replay_ids_are_bounded(api: FlaskClient, settings: Settings) -> None:
    ids = [f"{B}/job-{i}@00000000:{T0}" for i in range(settings.max_replay_ids + 1)]
    meter, response = measure(lambda: api.post(f"{DL}/replay", json={"ids": ids}))
    assert response.status_code == 400
    assert "JOBRUNNER_MAX_REPLAY_IDS" in response.get_json()["message"]
    assert meter.round_trips == 0
    purge = measure(lambda: api.delete(DL, query_string={"id": ids}))[1]
    assert purge.status_code == 400
    # At the bound: one pipelined look-up per BATCH ids, never one round trip per id.
    api.get(DL)  # a connection open, as in a running API
    meter, response = measure(lambda: api.post(f"{DL}/replay", json={"ids": ids[:-1]}))
    assert response.get_json() == {"replayed": 0, "notFound": ids[:-1]}
    assert meter.round_trips <= settings.max_replay_ids // 100 + 1


def test_other_apps_ids_are_not_even_looked_up(api: FlaskClient, store: Store,
                                               q: QueueDriver) -> None:
    [theirs] = dead_letter_jobs(store, q, A, ["secret"], data="s" * MIB)
    for action in (lambda: api.get(f"{DL}/{theirs.trigger_id}"),
                   lambda: api.post(f"{DL}/replay", json={"ids": [theirs.trigger_id]}),
                   lambda: api.delete(DL, query_string={"id": theirs.trigger_id})):
        meter, response = measure(action)
        assert response.status_code in (200, 404)
        assert meter.round_trips == 0 and "s" * 100 not in response.get_data(as_text=True)
    assert store.app_counts(A)["dead_letters"] == 1


def test_replay_by_prefix_reads_in_batches_of_the_byte_budget(settings: Settings,
                                                              q: QueueDriver) -> None:
    store = counting_store(settings.with_(page_max_bytes=2 * MIB))
    try:
        dead_letter_jobs(store, q, B, [f"big-{i}" for i in range(5)], data="w" * MIB)
        meter, n = measure(lambda: DeadLetters(store).replay(
            B, Selection.of(None, "big-", False, 1000)).count)
        assert n == 5
        assert meter.largest_round_trip < 3 * MIB  # never all five at once
        assert store.app_counts(B)["dead_letters"] == 0
    finally:
        store.close()


# --- destructive defaults ----------------------------------------------------------------


@pytest.mark.parametrize("body", [{"ids": [], "prefix": "", "all": False}, {"prefix": ""},
                                  {"ids": []}, {}, {"all": False}, {"all": "true"},
                                  {"prefix": "b-", "all": True}])
def test_an_empty_selection_replays_nothing(api: FlaskClient, store: Store, q: QueueDriver,
                                            body: dict[str, Any]) -> None:
    dead_letter_jobs(store, q, B, ["b-1", "b-2"])
    response = api.post(f"{DL}/replay", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert store.app_counts(B)["dead_letters"] == 2


@pytest.mark.parametrize("query", [{"prefix": ""}, {"id": []}, {}, {"all": "false"},
                                   {"all": "1"}, {"all": "true", "prefix": "b"}])
def test_an_empty_selection_purges_nothing(api: FlaskClient, store: Store, q: QueueDriver,
                                           query: dict[str, Any]) -> None:
    dead_letter_jobs(store, q, B, ["b-1", "b-2"])
    assert api.delete(DL, query_string=query).status_code == 400
    assert store.app_counts(B)["dead_letters"] == 2
    assert api.delete(DL, query_string={"all": "true"}).get_json() == {"purged": 2}


def test_the_openapi_examples_select_what_they_say(api: FlaskClient, store: Store,
                                                   q: QueueDriver) -> None:
    document = json.loads(resources.files("app.api").joinpath("openapi.json").read_text())
    replay = document["paths"]["/v1.0/deadletters/replay"]["post"]
    examples = replay["requestBody"]["content"]["application/json"]["examples"]
    assert examples
    for name, example in examples.items():
        dead_letter_jobs(store, q, B, [f"nightly-{name}", f"other-{name}"])
        body = example["value"]
        if body.get("ids"):
            continue  # made-up ids: replays none
        response = api.post(f"{DL}/replay", json=body)
        assert response.status_code == 200, (name, response.get_data(as_text=True))
        assert body.get("all") is True or response.get_json()["replayed"] <= 1, name


# --- dead letters in the jobs API's form -------------------------------------------------


def test_dlq_show_and_the_http_answer_give_the_job_as_get_does(
        api: FlaskClient, settings: Settings, store: Store, q: QueueDriver) -> None:
    data = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "R2-D2"}
    response = api.post(f"{JOBS}/droid", json={"schedule": "@every 1h", "data": data,
                                               "failurePolicy": {"drop": {}}})
    assert response.status_code == 204
    as_get = api.get(f"{JOBS}/droid").get_json()
    [trigger] = [t for t in q.claim(at=T0 + 10**10) if t.job.app_id == B]
    assert q.dead(trigger, None) == 1

    [listed] = api.get(DL).get_json()["deadLetters"]
    shown = api.get(f"{DL}/{listed['id']}").get_json()
    assert shown["job"] == {k: v for k, v in as_get.items() if k in shown["job"]}
    assert {"name", "schedule", "data", "failurePolicy"} <= set(shown["job"])
    assert shown["job"]["data"] == data

    result = CliRunner().invoke(main, ["dlq", "show", listed["id"], "--app-id", B,
                                       "--redis-url", settings.redis_url],
                                env={"JOBRUNNER_PREFIX": settings.prefix},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == shown
    assert "record" not in result.output and '"f1"' not in result.output


def test_a_letter_id_names_its_job() -> None:
    for name in ("plain", "with@at", "a:b@c:d", "ünï", "x" * 253):
        job = Job(app_id=B, name=name, first_ms=T0, data={"k": 1})
        trigger = Trigger(job, job_id(B, name), 0, T0, 1, 0, "lease")
        assert letter_job_name(B, trigger.trigger_id) == name
        assert letter_job_name(A, trigger.trigger_id) is None


# --- data stored before the indexes ------------------------------------------------------


def test_data_from_before_the_indexes_is_indexed_once(settings: Settings, q: QueueDriver,
                                                      redis_client: redis.Redis) -> None:
    writer = Store(settings.with_(far_after_s=NO_FAR_S))  # an older version: no far tier
    try:
        dead_letter_jobs(writer, q, B, ["old-1", "old-2"])
        writer.schedule_many(make_job(f"old-job-{i}", T0, app_id=B) for i in range(700))
        writer.schedule_many(make_job(f"old-job-{i}", T0, app_id=A) for i in range(50))
    finally:
        writer.close()
    for pk in Store(settings).keys.all_partitions():  # as an older version left them
        drop_index(redis_client, pk)
        redis_client.delete(pk.deadlex, pk.indexed)

    store = counting_store(settings)
    try:
        assert store.app_counts(B) == {"jobs": 702, "dead_letters": 2}
        assert store.app_counts(A) == {"jobs": 50, "dead_letters": 0}
        assert len(DeadLetters(store).page(B)[0]) == 2
        again = measure(lambda: store.app_counts(B))[0]
        assert "HSCAN" not in again.commands
        fresh = counting_store(settings)  # a new process: one GET per partition
        meter = measure(lambda: fresh.app_counts(B))[0]
        assert meter.commands["GET"] == settings.partitions
        assert meter.commands["EVALSHA"] == settings.partitions  # the counts, no reindex step
        fresh.close()
    finally:
        store.close()


def test_the_job_index_of_the_version_before_the_b_tree_is_moved_into_it(
        settings: Settings, q: QueueDriver, redis_client: redis.Redis) -> None:
    writer = Store(settings.with_(far_after_s=NO_FAR_S))  # an older version: no far tier
    try:
        dead_letter_jobs(writer, q, B, ["old-1", "old-2"])
        writer.schedule_many(make_job(f"old-job-{i}", T0, app_id=B) for i in range(700))
        writer.schedule_many(make_job(f"old-job-{i}", T0, app_id=A) for i in range(50))
        parts = writer.keys.all_partitions()
    finally:
        writer.close()
    for pk in parts:  # as that version left them: every id in one sorted set, marked "1"
        ids = index_ids(redis_client, pk)
        drop_index(redis_client, pk)
        if ids:
            redis_client.zadd(pk.legacy_names, dict.fromkeys(ids, 0))
        redis_client.set(pk.indexed, "1")
    store = Store(settings)
    try:
        assert store.app_counts(B) == {"jobs": 702, "dead_letters": 2}
        assert store.app_counts(A) == {"jobs": 50, "dead_letters": 0}
        names = [v.job.name for v in store.list_jobs(B, limit=1000)[0]]
        assert names == sorted(["old-1", "old-2", *(f"old-job-{i}" for i in range(700))])
        for pk in parts:
            assert not redis_client.exists(pk.legacy_names)
            assert redis_client.get(pk.indexed) == INDEXED_VERSION.encode()
            index_ids(redis_client, pk)  # checks the B-tree's shape and counts
    finally:
        store.close()
