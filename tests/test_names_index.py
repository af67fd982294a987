"""The per-app job index as a B-tree of small sorted sets (app/store/lua/names_index.lua),
against the private redis-server, through the Store's own calls.

Every result is checked against plain Python: the set of ids (bytes, sorted as Redis
sorts them) and `TreeModel`, the leaves the library's rules give (a leaf that reaches
LEAF_MAX ids splits in half, so that it stays a listpack; a leaf under LEAF_MIN after a
removal joins the one before when both fit in LEAF_MAX - LEAF_MIN; an empty leaf but the
first is dropped). After each change, `index_ids` checks the tree's shape and the app
counts.
"""

from __future__ import annotations

import bisect
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from app.jobs import errors
from app.jobs.errors import ApiError
from app.settings import Settings
from app.store import pages
from app.store.deadletters import DeadLetters, Selection
from app.store.keys import PartitionKeys, is_replay, job_id
from app.store.store import DELETE_BATCH, Store
from tests.support.far import NO_FAR_S
from tests.support.jobs import QueueDriver, make_job
from tests.support.names_index import LEAF_MAX, drop_index, index_ids, leaf_key
from tests.support.redis_proc import RedisProcess
from workers.queue import Action, Settlement

T0 = 1_900_000_000_000  # a fixed "now" in epoch ms (the QueueDriver's clock)
LEAF_MIN = 32  # names_index.lua NAMES_LEAF_MIN
# App ids that are prefixes of one another: bytewise, "a-b/" < "a/" < "a_b/", so app a's
# range sits between the other two, and its first and last leaves hold their ids too.
APPS = ("a-b", "a", "a_b")
# Names whose order is bytewise (UTF-8): prefixes of one another, '-', '.', '~' (0x2d,
# 0x2e, 0x7e), digits, and 2-, 3- and 4-byte characters (bounds of leaves among them).
STEMS = ("job", "job-", "job.", "job~", "job-1", "jo", "J", "z", "~", "-", ".x", "0", "9",
         "é", "ée", "名前", "名", "😀", "Ünï", "a~b")
SEPS = ("", "-", ".", "~", "-0", "é")
PREFIXES = ("", "job", "job-", "job-1", "名", "é", "~", "zzz-none")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    """As conftest's, without the HTTP receiver: nothing here delivers."""
    return Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                    app_url="http://127.0.0.1:9", delivery_timeout_s=2.0, lease_s=5.0)


@pytest.fixture
def stores(settings: Settings) -> Iterator[Callable[..., Store]]:
    """Stores on this test's prefix (or another), with the Settings fields given."""
    opened: list[Store] = []

    def open_store(**fields: Any) -> Store:
        store = Store(settings.with_(**fields))
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


# --- the model -------------------------------------------------------------------------------


class TreeModel:
    """One partition's leaves as names_index.lua's rules lay them out: their low
    bounds (b"" first) and their ids, as bytes in Redis's (bytewise) order."""

    def __init__(self) -> None:
        self.lows: list[bytes] = []
        self.leaves: dict[bytes, list[bytes]] = {}

    def leaf_of(self, jid: bytes) -> bytes | None:
        at = bisect.bisect_right(self.lows, jid) - 1
        return self.lows[at] if at >= 0 else None

    def add(self, jid: bytes) -> None:
        low = self.leaf_of(jid)
        if low is None:
            low = b""
            self.lows, self.leaves[low] = [low], []
        leaf = self.leaves[low]
        at = bisect.bisect_left(leaf, jid)
        if at < len(leaf) and leaf[at] == jid:
            return
        leaf.insert(at, jid)
        if len(leaf) >= LEAF_MAX:
            upper = leaf[len(leaf) // 2:]
            del leaf[len(leaf) // 2:]
            self.leaves[upper[0]] = upper
            bisect.insort(self.lows, upper[0])

    def remove(self, jid: bytes) -> None:
        low = self.leaf_of(jid)
        if low is None or jid not in self.leaves[low]:
            return
        leaf = self.leaves[low]
        leaf.remove(jid)
        if low == b"":
            if not leaf and len(self.lows) == 1:
                self.lows, self.leaves = [], {}
            return
        if len(leaf) >= LEAF_MIN:
            return
        before = self.lows[self.lows.index(low) - 1]
        if not leaf or len(self.leaves[before]) + len(leaf) <= LEAF_MAX - LEAF_MIN:
            self.leaves[before] += leaf
            del self.leaves[low]
            self.lows.remove(low)

    def layout(self) -> list[tuple[bytes, list[bytes]]]:
        return [(low, list(self.leaves[low])) for low in self.lows]

    def adopt(self, leaves: list[tuple[bytes, list[bytes]]]) -> None:
        """Take these leaves as the model's own (once checked: see Index.removed_at_once)."""
        self.lows = [low for low, _ in leaves]
        self.leaves = {low: list(ids) for low, ids in leaves}

    def ids(self) -> list[bytes]:
        return [jid for low in self.lows for jid in self.leaves[low]]

    def leaves_holding(self, low: bytes, high: bytes) -> int:
        """How many leaves hold ids in [low, high)."""
        return sum(1 for ids in self.leaves.values() if any(low <= i < high for i in ids))


def layout(client: redis.Redis, pk: PartitionKeys) -> list[tuple[bytes, list[bytes]]]:
    """The partition's leaves as Redis holds them: (low bound, ids)."""
    lows = cast(list[bytes], client.zrange(pk.names, 0, -1))
    pipe = client.pipeline(transaction=False)
    for low in lows:
        pipe.zrange(leaf_key(pk, low), 0, -1)
    return list(zip(lows, pipe.execute(), strict=True))


class Index:
    """A store and what its job index must hold: each partition's TreeModel, fed every
    change the store is asked for, in the same order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.models = [TreeModel() for _ in range(store.keys.partitions)]

    def model_of(self, jid: str) -> TreeModel:
        return self.models[self.store.keys.partition_of(jid)]

    def added(self, app_id: str, names: Iterable[str]) -> None:
        for name in names:
            jid = job_id(app_id, name)
            self.model_of(jid).add(jid.encode())

    def removed(self, app_id: str, names: Iterable[str]) -> None:
        """Names the store took out one to a script call, in this order."""
        for name in names:
            jid = job_id(app_id, name)
            self.model_of(jid).remove(jid.encode())

    def schedule(self, app_id: str, names: Sequence[str]) -> None:
        """schedule.lua for each name, pipelined (Store.schedule_many), in this order."""
        assert self.store.schedule_many(make_job(n, T0 + 60_000, app_id=app_id)
                                        for n in names) == len(names)
        self.added(app_id, names)

    def delete(self, app_id: str, name: str) -> None:
        assert self.store.delete(app_id, name) is True, name
        self.removed(app_id, [name])

    def added_at_once(self, jids: Iterable[str]) -> None:
        """Job ids the store added several to a script call (schedule_batch): how
        names_add_many lays out the leaves it fills is its own (each leaf's share in one
        command, a full leaf cut in pieces), so they are checked for what any way must
        give, and the model takes them as its own: every id there, in order; no leaf
        gone; a leaf no id went to as it was. (`check` then checks the shape: no leaf
        at LEAF_MAX, each a listpack.)"""
        client = self.store.redis
        new: dict[int, set[bytes]] = {}
        for jid in jids:
            new.setdefault(self.store.keys.partition_of(jid), set()).add(jid.encode())
        for part, ids in new.items():
            model = self.models[part]
            before = dict(model.layout())
            touched = {model.leaf_of(jid) for jid in ids} | ({b""} if not before else set())
            now = layout(client, self.store.keys.partition(part))
            assert [jid for _, leaf in now for jid in leaf] == sorted(set(model.ids()) | ids)
            assert before.keys() <= {low for low, _ in now}, "a leaf gone"
            for low, leaf in before.items():
                if low not in touched:
                    assert dict(now)[low] == leaf, low
            model.adopt(now)

    def removed_at_once(self, jids: Iterable[str]) -> None:
        """Job ids the store took out several to a script call (delete_prefix, a batch of
        settlements). names_remove then settles each leaf it touched once, after all its
        removals, in the order of a Lua table: the leaves need not be those of one removal
        at a time, so they are checked for what holds in any order, and the model takes
        them as its own. What holds: the ids are gone, and only they; no leaf is new; a
        leaf not touched is still there with its ids (and any that joined it); a touched
        leaf still under LEAF_MIN does not fit in the one before it (once the removals
        are done, leaves only grow or go; delete_prefix's batches go in name order, so a
        later one never shrinks the leaf before one an earlier one settled)."""
        client = self.store.redis
        gone: dict[int, list[bytes]] = {}
        for jid in jids:
            gone.setdefault(self.store.keys.partition_of(jid), []).append(jid.encode())
        for part, ids in gone.items():
            model = self.models[part]
            before = dict(model.layout())
            touched = {model.leaf_of(jid) for jid in ids}
            left = sorted(set(model.ids()) - set(ids))
            now = layout(client, self.store.keys.partition(part))
            assert [jid for _, leaf in now for jid in leaf] == left
            lows = [low for low, _ in now]
            assert set(lows) <= before.keys(), "a leaf that was not there"
            for low, leaf in before.items():
                if low not in touched and now:  # (the first leaf goes with the last id)
                    assert low in lows and set(leaf) <= set(dict(now)[low]), low
            for n, (low, leaf) in enumerate(now):
                if n and low in touched and len(leaf) < LEAF_MIN:
                    assert len(leaf) + len(now[n - 1][1]) > LEAF_MAX - LEAF_MIN, low
            model.adopt(now)

    def names(self, app_id: str, prefix: str = "") -> list[str]:
        """The app's names starting with `prefix`, in bytewise order."""
        low, high = f"{app_id}/{prefix}".encode(), f"{app_id}/{prefix}".encode() + b"\xff"
        return [jid.decode().partition("/")[2] for jid in
                sorted(jid for model in self.models for jid in model.ids() if low <= jid < high)]

    def check(self) -> None:
        """Redis holds the model's leaves, a valid tree, and each app's count."""
        client = self.store.redis
        counts: Counter[str] = Counter()
        for pk, model in zip(self.store.keys.all_partitions(), self.models, strict=True):
            assert [i.encode() for i in index_ids(client, pk)] == model.ids()
            assert layout(client, pk) == model.layout()
            counts.update(i.decode().partition("/")[0] for i in model.ids())
        for app_id in {*APPS, *counts}:
            assert self.store.app_counts(app_id)["jobs"] == counts[app_id], app_id


def walk(store: Store, app_id: str, prefix: str = "", limit: int = 100) -> list[str]:
    """Every name list_jobs gives, page by page."""
    names: list[str] = []
    token = ""
    while True:
        views, token = store.list_jobs(app_id, prefix, token, limit)
        assert len(views) <= limit
        assert views or not token, "a page of nothing that says there is more"
        names += [v.job.name for v in views]
        if not token:
            return names


def random_names(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        digits = rng.randint(0, 4)
        number = str(rng.randrange(10 ** digits)) if digits else ""
        names.add(rng.choice(STEMS) + rng.choice(SEPS) + number)
    return sorted(names)


def bytewise(names: Iterable[str]) -> list[str]:
    return sorted(names, key=str.encode)


def index_keys(client: redis.Redis, pk: PartitionKeys) -> list[bytes]:
    """The partition's index keys that exist: its top, its leaves, its app counts."""
    leaves = list(client.scan_iter(match=leaf_key(pk, b"*"), count=1000))
    return [k for k in (pk.names.encode(), pk.app_jobs.encode()) if client.exists(k)] + leaves


# --- the model itself --------------------------------------------------------------------------


def test_the_model_splits_and_merges_as_the_library_says() -> None:
    """The model is the yardstick of every test here: pin its rules on a case worked by
    hand (128 ids split 64 + 64; the upper half under 32 joins the lower when <= 96)."""
    model = TreeModel()
    ids = [b"a/%03d" % n for n in range(128)]
    for jid in ids[:127]:
        model.add(jid)
    assert [(low, len(leaf)) for low, leaf in model.layout()] == [(b"", 127)]
    model.add(ids[127])
    assert [(low, len(leaf)) for low, leaf in model.layout()] == [(b"", 64), (b"a/064", 64)]
    extra = [b"a/%03d.5" % n for n in range(20)]  # into the first leaf: 84
    for jid in extra:
        model.add(jid)
    for jid in ids[64:97]:  # the upper leaf down to 31: 84 + 31 > 96, it stays
        model.remove(jid)
    assert [(low, len(leaf)) for low, leaf in model.layout()] == [(b"", 84), (b"a/064", 31)]
    for jid in extra:  # the first leaf joins nothing, whatever its size
        model.remove(jid)
    model.remove(ids[97])  # 30 left above, 64 below: they join
    assert model.layout() == [(b"", ids[:64] + ids[98:])]
    for jid in ids[:64] + ids[98:]:
        model.remove(jid)
    assert model.layout() == []


def test_each_rule_of_the_leaves_holds_at_its_bound(stores: Callable[..., Store],
                                                   redis_client: redis.Redis) -> None:
    """Through schedule.lua and delete.lua, one rule at a time at its threshold: a leaf
    that reaches LEAF_MAX splits in half; one at LEAF_MIN stays; under it, it joins the one
    before when both fit in LEAF_MAX - LEAF_MIN (exactly included) and stays when not; an
    empty leaf but the first goes; the first stays, empty, while others do; the last id
    takes every key of the index with it."""
    index = Index(stores())
    store = index.store
    pk = store.keys.partition(0)
    model = index.models[0]

    def sizes() -> list[int]:
        leaves = layout(redis_client, pk)
        assert leaves == model.layout()
        index_ids(redis_client, pk)
        return [len(ids) for _, ids in leaves]

    def names_of_leaf(n: int) -> list[str]:
        return [jid.decode().partition("/")[2] for jid in model.layout()[n][1]]

    def delete(names: Iterable[str]) -> None:
        for name in names:
            index.delete("a", name)

    names = [f"n{n:03d}" for n in range(256)]
    index.schedule("a", names[:127])
    assert sizes() == [127]
    index.schedule("a", names[127:128])
    assert sizes() == [64, 64]  # reaching LEAF_MAX: halved
    assert model.lows == [b"", b"a/n064"]  # the upper half's first id bounds it
    index.schedule("a", names[128:])
    assert sizes() == [64, 64, 64, 64]
    index.schedule("a", ["n000a"])  # into the first leaf
    assert sizes() == [65, 64, 64, 64]

    delete(names[64:96])
    assert sizes() == [65, 32, 64, 64]  # at LEAF_MIN: stays (its bound too, n064 gone)
    delete(names[96:97])
    assert sizes() == [96, 64, 64]  # 31 + 65 = 96 fit: joined
    delete(names[128:161])
    assert sizes() == [96, 31, 64]  # 31 + 96 do not fit: stays
    delete(names[161:192])
    assert sizes() == [96, 64]  # empty: dropped
    delete(names[192:225])
    assert sizes() == [96, 31]
    delete(names_of_leaf(0)[:40])  # the first leaf joins nothing, however small
    assert sizes() == [56, 31]
    delete(names_of_leaf(1)[:1])
    assert sizes() == [86]  # 30 + 56 fit now: joined at the next removal

    index.schedule("a", [f"z{n:02d}" for n in range(42)])
    assert sizes() == [64, 64]
    delete(names_of_leaf(0))
    assert sizes() == [0, 64]  # the first leaf stays, empty, while another does
    delete(names_of_leaf(1)[:33])
    assert sizes() == [31]  # into the empty first leaf
    delete(names_of_leaf(0))
    assert sizes() == []
    assert index_keys(redis_client, pk) == []


def test_a_page_reads_the_leaves_it_lists_not_those_before_it(tmp_path: Path) -> None:
    """names_range starts at the leaf that holds its low bound: a page deep in the index
    reads about as many leaves as it lists ids (count + 2 at most), not every leaf before
    it. Counted by Redis itself (INFO commandstats counts a script's commands), on a
    server of this test's own so that no other client's commands are counted."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
    store = Store(Settings(redis_url=server.url, prefix="cost", app_url="http://127.0.0.1:9"))
    try:
        index = Index(store)
        names = [f"c{n:05d}" for n in range(3000)]
        index.schedule("a", names)
        index.schedule("a_b", names[:500])
        assert len(index.models[0].lows) >= 3500 // LEAF_MAX
        store.app_counts("a")  # the one-time index check, before counting

        def lex_reads(read: Callable[..., Any], *args: Any) -> tuple[int, Any]:
            """What read(*args) gives, and the lex-range reads Redis ran for it."""
            store.redis.config_resetstat()
            result = read(*args)
            stats = store.redis.info("commandstats")
            return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0))
                       for c in ("zrange", "zrangebylex", "zrevrangebylex")), result

        count = 5
        top = store.keys.partition(0).names
        # Deep and shallow positions, and some just before a leaf's end: those pages
        # take the rest of one leaf and the start of the next.
        bounds = [low.decode().partition("/")[2] for low in index.models[0].lows[1:]
                  if low.startswith(b"a/")]
        crossing = [names[names.index(bound) - 2] for bound in bounds[::7]]
        assert len(crossing) >= 3
        for after in ("c00000", "c01500", "c02700", "c02994", "c02999", *crossing):
            reads, found = lex_reads(store.names_in, top, f"(a/{after}".encode(), b"(a/\xff",
                                     count)
            assert [f.decode() for f in found] == [
                f"a/{n}" for n in index.names("a") if n > after][:count]
            # 1 for the first leaf, then per leaf read: itself and the next one's bound.
            assert reads <= 1 + 2 * (count + 2), (after, reads)
        reads, (views, _) = lex_reads(store.list_jobs, "a", "", pages.encode("c02900"), count)
        assert [v.job.name for v in views] == names[2901:2906]
        assert reads <= 1 + 2 * (count + 1 + 2), reads  # it reads one more than a page
    finally:
        store.close()
        server.stop()


# --- 1. thousands of jobs ----------------------------------------------------------------------


@pytest.mark.parametrize("order", ["random", "sorted"])
def test_thousands_of_jobs_in_and_out_keep_the_index_and_the_pages_exact(
        stores: Callable[..., Store], order: str) -> None:
    """3,000 jobs of 3 apps in one partition (random names, in random order, or sorted so
    that only the last leaf ever splits), then deleted at random down to 5: after each
    phase the tree is the model's, and every walk (each limit, each prefix) lists each
    name of the app once, in order."""
    rng = random.Random(f"thousands-{order}")
    index = Index(stores())
    store = index.store
    names = {app: random_names(rng, 1000) for app in APPS}
    todo = [(app, name) for app in APPS for name in names[app]]
    if order == "random":
        rng.shuffle(todo)
    else:  # by job id: the tree only ever grows at its right edge
        todo.sort(key=lambda entry: job_id(*entry).encode())
    for at in range(0, len(todo), 250):
        for app in APPS:
            index.schedule(app, [n for a, n in todo[at:at + 250] if a == app])
    model = index.models[0]
    # What follows is only worth as much as the leaves the prefixes cross.
    assert len(model.lows) >= 3000 // LEAF_MAX
    assert model.leaves_holding(b"a/job", b"a/job\xff") >= 3

    def check_phase(full_walk_app: str) -> None:
        # The model against the plainest one: the set of (app, name) still there.
        assert {(app, n) for app in APPS for n in index.names(app)} == set(alive)
        index.check()
        for app in APPS:
            for limit in (7, 100, 500):
                assert walk(store, app, limit=limit) == index.names(app), (app, limit)
            for prefix in PREFIXES:
                assert walk(store, app, prefix, 7) == index.names(app, prefix), (app, prefix)
        assert walk(store, full_walk_app, "job", 1) == index.names(full_walk_app, "job")

    alive = [(app, name) for app in APPS for name in names[app]]
    check_phase("a")
    rng.shuffle(alive)
    for left, app in ((1500, "a-b"), (300, "a_b"), (5, "a")):
        while len(alive) > left:
            index.delete(*alive.pop())
            if len(alive) % 200 == 0:
                index.check()
        check_phase(app)
    assert sum(len(index.names(app)) for app in APPS) == 5


# --- 2. bytewise order -----------------------------------------------------------------------


def test_names_and_app_ids_that_are_prefixes_keep_to_their_own_range(
        stores: Callable[..., Store]) -> None:
    """Redis orders bytewise (UTF-8), and an app's range is "{app}/" up to "{app}/\\xff":
    no app's listing, count or delete may reach into an app whose id it prefixes (or that
    prefixes it), whatever leaf they share."""
    apps = ("a", "a-", "a-b", "a.b", "a0", "a_b", "ab", "A")
    tricky = ["p", "p-", "p-1", "p-10", "p-100", "p-1000", "p.", "p.1", "p~", "p~~", "p0",
              "p9", "pé", "pé-1", "p名", "p名前", "p😀", "p\u00ff", "p\u0100", "p\uffff",
              "pZ", "pz", "p~z", "~", "-", "-p", "0"]
    filler = [f"p-{n}" for n in range(120)] + [f"p.{n}" for n in range(40)]
    shared = {*tricky, *filler}  # each app's names, with one of its own
    index = Index(stores())
    store = index.store
    rng = random.Random("prefixes")
    for app in apps:  # each app's own name too: a walk that strays shows another's
        names = sorted({*shared, f"only-{app}"})
        rng.shuffle(names)
        index.schedule(app, names)
    index.check()
    assert len(index.models[0].lows) >= len(apps) * 180 // LEAF_MAX
    for app in apps:
        every = bytewise({*shared, f"only-{app}"})
        assert index.names(app) == every  # the model and Python's bytewise sort agree
        for limit in (1, 7, 100):
            assert walk(store, app, limit=limit) == every, (app, limit)
        for prefix in ("p", "p-", "p-1", "p-10", "p.", "pé", "p名", "p😀", "p~", "~", "only-"):
            expected = [n for n in every if n.startswith(prefix)]
            assert walk(store, app, prefix, 3) == expected, (app, prefix)
    # Deleting one app's everything leaves every other's whole.
    assert store.delete_prefix("a", "") == len(shared) + 1
    index.removed_at_once(job_id("a", n) for n in index.names("a"))
    index.check()
    assert walk(store, "a") == []
    for app in apps[1:]:
        assert walk(store, app, limit=500) == bytewise({*shared, f"only-{app}"})


# --- 3. delete_prefix ------------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 4])
def test_delete_prefix_across_many_leaves_then_everything_leaves_no_index_keys(
        stores: Callable[..., Store], redis_client: redis.Redis, partitions: int) -> None:
    """delete_prefix deletes exactly the prefix's jobs, whose range crosses leaves shared
    with the apps on both sides; once every app's jobs are gone, so is every key of the
    index (the top, each leaf, the app counts)."""
    index = Index(stores(partitions=partitions))
    store = index.store
    names = [f"g{g}-{n:04d}" for g in range(3) for n in range(300)]
    assert len(names) > DELETE_BATCH  # the last deletes take several delete.lua calls
    rng = random.Random("delete-prefix")
    for app in APPS:
        rng.shuffle(names)
        index.schedule(app, names)
    if partitions == 1:
        assert index.models[0].leaves_holding(b"a/g1", b"a/g1\xff") >= 3
    index.check()

    for prefix, count in (("g1", 300), ("g1-01", 0), ("g0-00", 100), ("g2-02", 100)):
        gone = index.names("a", prefix)
        assert store.delete_prefix("a", prefix) == count == len(gone), prefix
        index.removed_at_once(job_id("a", n) for n in gone)
        index.check()
        assert walk(store, "a", limit=200) == index.names("a")
    for app in ("a-b", "a_b"):
        assert walk(store, app, limit=500) == sorted(names)

    for app in APPS:
        assert store.delete_prefix(app, "") == len(index.names(app))
        index.removed_at_once(job_id(app, n) for n in index.names(app))
        index.check()
    for pk in store.keys.all_partitions():
        assert index_keys(redis_client, pk) == []
        assert redis_client.hlen(pk.jobs) == 0


@pytest.mark.parametrize("order", ["name", "shuffled"])
def test_a_batch_in_any_order_with_repeats_and_strangers_removes_each_of_its_ids_once(
        stores: Callable[..., Store], order: str) -> None:
    """names_remove has Redis sort a batch, and takes each leaf's share in a few commands
    (ZMSCORE finds which are there): a batch across several leaves, in name order or
    shuffled, with ids given twice and ids not in the index, removes each of its own ids
    once, counts each once, and leaves the rest of the index as it was."""
    index = Index(stores(partitions=1))
    store = index.store
    names = [f"n{n:04d}" for n in range(700)]
    index.schedule("a", names)
    index.schedule("b", names[:50])
    index.check()
    gone = names[100:400] + names[500:560]
    rng = random.Random(order)
    if order == "shuffled":
        rng.shuffle(gone)
    batch = [job_id("a", n) for n in gone]
    batch += batch[:20] * 2 + batch[200:260]  # given two or three times
    batch += [job_id("a", "n0100x"), job_id("a", "zz"), job_id("a", "")]  # not there
    if order == "shuffled":
        rng.shuffle(batch)
    else:
        batch.sort()
    pk = store.keys.partition(0)
    deleted = store._scripts["delete"](keys=pk.delete_keys("a", batch), args=batch)
    assert deleted == len(gone)
    index.removed_at_once(job_id("a", n) for n in gone)
    index.check()
    assert store.names_count(pk.names, "a") == 700 - len(gone)
    assert walk(store, "a", limit=500) == sorted(set(names) - set(gone))
    assert walk(store, "b", limit=500) == names[:50]


# --- 4. the quota ----------------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 4])
def test_the_app_count_holds_the_quota_and_a_delete_makes_room(
        stores: Callable[..., Store], redis_client: redis.Redis, partitions: int) -> None:
    """JOBRUNNER_APP_MAX_JOBS, shared out over the partitions, is checked against the
    app's count in each (`app_jobs`): a new job past it is refused, in bulk and alone; an
    overwrite is no new job; a delete in its partition makes room for one."""
    share = LEAF_MAX + 2  # the app's jobs in each partition: past one leaf
    index = Index(stores(partitions=partitions, app_max_jobs=share * partitions))
    store = index.store
    parts = store.keys.all_partitions()
    rng = random.Random(f"quota-{partitions}")
    # Apps whose ids start with the capped app's ("a") fill the leaves on both sides of
    # its range: none of theirs may count for it.
    for app in ("a-b", "a_b"):
        index.schedule(app, [f"n{n}" for n in range(share)])

    names = [f"n{n}" for n in range(share * partitions + 200)]
    rng.shuffle(names)
    out = store.schedule_batch("a", [(n, make_job(n, T0, app_id="a").encode(), T0, False, "")
                                     for n in names])
    stored = [n for n, result in zip(names, out, strict=True) if result is None]
    refused = [n for n, result in zip(names, out, strict=True) if result is not None]
    assert all(isinstance(r, ApiError) and r.code == errors.APP_JOB_LIMIT
               for r in out if r is not None)
    index.added_at_once(job_id("a", n) for n in stored)
    index.check()
    assert [int(redis_client.hget(pk.app_jobs, "a") or 0) for pk in parts] == (
        [share] * partitions)
    assert len(refused) == 200

    # One at a time now (schedule.lua): refused; an overwrite is no new job.
    late = refused[0]
    late_part = store.keys.partition_of(job_id("a", late))
    with pytest.raises(ApiError) as caught:
        store.schedule(make_job(late, T0, app_id="a"))
    assert caught.value.code == errors.APP_JOB_LIMIT
    store.schedule(make_job(stored[0], T0 + 5, app_id="a"), overwrite=True)
    # A delete in another partition makes no room in this one (each holds its share).
    others = [n for n in stored if store.keys.partition_of(job_id("a", n)) != late_part]
    if partitions > 1:
        index.delete("a", others[0])
        with pytest.raises(ApiError):
            store.schedule(make_job(late, T0, app_id="a"))
    # One in its own does, for exactly one.
    index.delete("a", next(n for n in stored
                           if store.keys.partition_of(job_id("a", n)) == late_part))
    store.schedule(make_job(late, T0, app_id="a"))
    index.added("a", [late])
    after = next(n for n in refused[1:]
                 if store.keys.partition_of(job_id("a", n)) == late_part)
    with pytest.raises(ApiError):
        store.schedule(make_job(after, T0, app_id="a"))
    index.check()
    assert store.app_counts("a")["jobs"] == share * partitions - (1 if partitions > 1 else 0)


# --- 5. page tokens while the tree changes -----------------------------------------------------


def test_a_page_token_resumes_exactly_while_leaves_split_and_merge_around_it(
        stores: Callable[..., Store], redis_client: redis.Redis) -> None:
    """A token is the last name listed, not a place in a leaf: between the pages of one
    walk, jobs come and go on both sides of it (splitting the leaf it is in, merging it
    into the one before, dropping the name it is, or a leaf's bound), and each page is
    exactly the next names after it; a job there for the whole walk is listed once."""
    index = Index(stores())
    store = index.store
    pk = store.keys.partition(0)
    rng = random.Random("walk")
    initial = [f"w{n:05d}" for n in range(0, 60_000, 100)]  # room between them for more
    index.schedule("a", rng.sample(initial, len(initial)))
    index.schedule("a_b", initial[:300])  # another app's leaves after a's
    stable = set(initial[::3])  # never deleted
    fresh = iter(rng.sample(range(60_000), 60_000))
    listed: list[str] = []
    token, limit = "", 40
    splits = merges = 0
    while True:
        views, token = store.list_jobs("a", "", token, limit)
        page = [v.job.name for v in views]
        after = listed[-1] if listed else ""
        assert page == [n for n in index.names("a") if n > after][:limit]
        listed += page
        if not token:
            break
        position = page[-1]
        before = dict(layout(redis_client, pk))
        # Splits: a burst of new names just past the position, and some anywhere.
        present = set(index.names("a"))
        near = [f"w{int(position[1:]) + k:05d}" for k in range(1, 70)]
        wide = [f"w{next(fresh):05d}" for _ in range(60)]
        index.schedule("a", [n for n in dict.fromkeys(near + wide) if n not in present])
        # Merges: most of the names on both sides of the position go (every other one,
        # so leaves shrink under LEAF_MIN with ids left), the position itself, and the
        # names that are a leaf's bound.
        names = index.names("a")
        at = bisect.bisect_left(names, position)
        bounds = {low.decode().partition("/")[2] for low in index.models[0].lows}
        doomed = sorted(({*names[max(0, at - 90):at + 120:2], position} | bounds)
                        & set(names) - stable)
        rng.shuffle(doomed)
        for name in doomed:
            index.delete("a", name)
        index.check()
        now = dict(layout(redis_client, pk))
        still = set(index.models[0].ids())
        splits += len(now.keys() - before.keys())
        merges += sum(1 for low in before.keys() - now.keys()
                      if any(i in still for i in before[low]))
    assert listed == sorted(set(listed)), "a name listed twice, or out of order"
    assert stable <= set(listed)
    assert splits >= 5 and merges >= 5, (splits, merges)  # the walk met both


# --- 6. bulk -----------------------------------------------------------------------------------


def test_a_bulk_batch_fills_the_leaves_and_overwrites_count_once(
        stores: Callable[..., Store], redis_client: redis.Redis, settings: Settings) -> None:
    """schedule_many.lua (Store.schedule_batch) adds an app's ids a leaf at a time: into an
    empty index, into leaves other apps share, and many into one leaf (cut in pieces, each
    under LEAF_MAX and a listpack); the ids and counts are those of one schedule.lua at a
    time; an overwrite, or a name given twice, counts once."""
    rng = random.Random("bulk")
    index = Index(stores())
    store = index.store
    twin = Index(stores(prefix=f"{settings.prefix}twin"))  # one schedule.lua at a time

    def entry(name: str, overwrite: bool, ms: int = T0) -> tuple[str, bytes, int, bool, str]:
        return (name, make_job(name, ms, app_id="a").encode(), ms, overwrite, "")

    names = random_names(rng, 600)
    rng.shuffle(names)
    assert store.schedule_batch("a", [entry(n, False) for n in names]) == [None] * 600
    index.added_at_once(job_id("a", n) for n in names)
    index.check()
    assert len(index.models[0].lows) >= 600 // LEAF_MAX
    for name in names:
        twin.store.schedule(make_job(name, T0, app_id="a"))
    twin.added("a", names)
    twin.check()
    assert index.names("a") == twin.names("a")

    # Other apps' ids on both sides, one at a time.
    for app in ("a-b", "a_b"):
        index.schedule(app, random_names(rng, 300))
    index.check()
    # Overwrites (some of them twice), new names (one given twice; 200 of them in one
    # leaf's range), existing names without overwrite: only the new ones count.
    again = rng.sample(names, 300)
    kept = rng.sample(sorted(set(names) - set(again)), 50)
    new = [*sorted(set(random_names(rng, 800)) - set(names))[:100],
           *(f"job-1-{n:03d}" for n in range(200))]
    assert len(new) == len(set(new) - set(names)) == 300
    model = index.models[0]  # the 200 go to one leaf: it takes more than it can hold
    assert model.leaf_of(b"a/job-1-000") == model.leaf_of(b"a/job-1-199")
    batch = ([entry(n, True, T0 + 1) for n in again] + [entry(n, True, T0 + 2) for n in new]
             + [entry(n, False) for n in kept] + [entry(new[0], False)]
             + [entry(n, True, T0 + 3) for n in again[:20]])
    rng.shuffle(batch)
    out = store.schedule_batch("a", batch)
    first_of_new0 = next(i for i, e in enumerate(batch) if e[0] == new[0])
    for i, (name, _, _, overwrite, _) in enumerate(batch):
        existed = name in kept or (name == new[0] and i != first_of_new0)
        if not overwrite and existed:
            assert isinstance(out[i], bytes), name  # the stored record: nothing changed
        else:
            assert out[i] is None, name
    index.added_at_once(job_id("a", name) for name, *_ in batch)
    index.check()
    assert store.app_counts("a")["jobs"] == 900
    assert walk(store, "a", limit=500) == index.names("a")
    assert walk(store, "a", "job-1-", 7) == index.names("a", "job-1-")


# --- 7. delivered one-shot jobs ----------------------------------------------------------------


def test_one_shot_jobs_that_end_in_a_settlement_leave_the_index(
        stores: Callable[..., Store], redis_client: redis.Redis, settings: Settings) -> None:
    """ack.lua takes a job that ends (a one-shot delivered, or dead-lettered) out of the
    index, many in one batch; a retry or a next occurrence stays; the end of a dead
    letter's replay takes out nothing (the job of its name, scheduled anew, stays)."""
    index = Index(stores())
    store = index.store
    q = QueueDriver(settings, start_ms=T0)
    try:
        rng = random.Random("delivered")
        for app in ("a", "a-b"):
            names = [f"once-{n:03d}" for n in range(250)]
            rng.shuffle(names)
            assert store.schedule_many(make_job(n, T0, app_id=app) for n in names) == 250
            index.added(app, names)
        index.check()

        claimed = q.claim(limit=1000)
        assert len(claimed) == 500
        rng.shuffle(claimed)
        ended, kept = claimed[:330], claimed[330:]
        dead, ended = ended[:10], ended[10:]
        q.settle(*[Settlement(t, Action.NEXT, None) for t in ended],
                 *[Settlement(t, Action.RETRY, T0 + 1000) for t in kept[:80]],
                 *[Settlement(t, Action.NEXT, T0 + 2000) for t in kept[80:]])
        index.removed_at_once(t.job_id for t in ended)  # in one ack.lua call
        for t in dead:  # one call each
            assert q.dead(t, None) == 1
            index.removed(t.job.app_id, [t.job.name])
        index.check()
        assert store.app_counts("a")["dead_letters"] + store.app_counts("a-b")[
            "dead_letters"] == 10
        for app in ("a", "a-b"):
            assert walk(store, app, limit=100) == index.names(app)

        # A dead letter's replay ends after its job of that name was scheduled anew.
        letter = dead[0].job
        store.schedule(make_job(letter.name, T0 + 3_600_000, app_id=letter.app_id))
        index.added(letter.app_id, [letter.name])
        assert DeadLetters(store).replay(letter.app_id, Selection(everything=True)).count >= 1
        replays = [t for t in q.claim(limit=1000, at=T0 + 500) if is_replay(t.job_id)]
        assert replays
        q.settle(*[Settlement(t, Action.NEXT, None) for t in replays])
        index.check()
        assert letter.name in index.names(letter.app_id)

        # The rest end too: nothing of the index is left but that one job.
        rest = q.claim(limit=1000, at=T0 + 2000)
        assert len(rest) == 170
        q.settle(*[Settlement(t, Action.NEXT, None) for t in rest])
        index.removed_at_once(t.job_id for t in rest)
        index.check()
        assert store.delete(letter.app_id, letter.name)
        index.removed(letter.app_id, [letter.name])
        index.check()
        assert index_keys(redis_client, store.keys.partition(0)) == []
    finally:
        q.close()



# --- the index of the version before the B-tree, until ensure_indexed has moved it ---------


def as_the_sorted_set_version_left_it(client: redis.Redis, store: Store) -> None:
    """Every id in the one sorted set `names`, `indexed` = "1", no tree."""
    for pk in store.keys.all_partitions():
        ids = index_ids(client, pk)
        drop_index(client, pk)
        if ids:
            client.zadd(pk.legacy_names, dict.fromkeys(ids, 0))
        client.set(pk.indexed, "1")


def test_a_full_redis_lists_counts_and_deletes_the_jobs_of_the_version_before(
        settings: Settings) -> None:
    """ensure_indexed cannot move the old index into a full Redis: the old one, kept up to
    date beside the tree, is read until it can (the tree alone listed nothing)."""
    writer = Store(settings.with_(far_after_s=NO_FAR_S))  # an older version: no far tier
    client = writer.redis
    for i in range(5):
        writer.schedule(make_job(f"old{i}", T0, app_id="a"))
    as_the_sorted_set_version_left_it(client, writer)
    client.config_set("maxmemory", 1)
    try:
        store = Store(settings)
        assert [v.job.name for v in store.list_jobs("a")[0]] == [f"old{i}" for i in range(5)]
        assert store.app_counts("a")["jobs"] == 5
        assert store.delete_prefix("a", "") == 5  # a delete frees memory: it goes through
        assert store.list_jobs("a")[0] == []
        store.close()
    finally:
        client.config_set("maxmemory", 0)
        writer.close()


def test_the_cap_counts_the_jobs_of_the_version_before_before_any_list(
        settings: Settings) -> None:
    writer = Store(settings.with_(far_after_s=NO_FAR_S))  # an older version: no far tier
    for i in range(5):
        writer.schedule(make_job(f"old{i}", T0, app_id="a"))
    as_the_sorted_set_version_left_it(writer.redis, writer)
    store = Store(settings.with_(app_max_jobs=5))
    try:
        with pytest.raises(ApiError):
            store.schedule(make_job("new", T0, app_id="a"))
        store.delete("a", "old0")  # the old index loses it too: room for one
        assert store.schedule(make_job("new", T0, app_id="a")) is not None
        assert store.app_counts("a")["jobs"] == 5  # moves the old index into the tree
        assert not writer.redis.exists(store.keys.partition(0).legacy_names)
        assert index_ids(writer.redis, store.keys.partition(0)) == sorted(
            f"a/{n}" for n in ["new", "old1", "old2", "old3", "old4"])
    finally:
        store.close()
        writer.close()


def test_a_leaf_that_held_a_long_id_is_a_listpack_again(settings: Settings) -> None:
    """An id over zset-max-listpack-value (64 bytes) makes its leaf a skiplist, which Redis
    keeps once it is one: its removal writes the leaf again (index_ids checks encodings)."""
    store = Store(settings)
    try:
        for i in range(100):
            store.schedule(make_job(f"n{i:03d}", T0, app_id="a"))
        long = "n050-" + "x" * 80
        store.schedule(make_job(long, T0, app_id="a"))
        pk = store.keys.partition(0)
        assert store.redis.object("encoding", leaf_key(pk, b"")) == b"skiplist"
        store.delete("a", long)
        index_ids(store.redis, pk)
        for i in range(100, 140):  # and a split of a skiplist leaf leaves none behind
            store.schedule(make_job(f"n{i:03d}", T0, app_id="a"))
        store.schedule(make_job(long, T0, app_id="a"))
        store.delete("a", long)
        index_ids(store.redis, pk)
    finally:
        store.close()
