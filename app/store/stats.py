"""The workers' delivery counters, aggregated in Redis so that any API process shows those
of every worker on every machine (`/metrics`, `GET /v1.0/stats`).

Each worker process counts in memory (a `Tally` per app) and adds its counts to Redis
once a second, in one pipeline with its heartbeat (workers/metrics.py): never a Redis
call per delivery. Each count goes to three hashes of the app (app/store/keys.py):

- its total since the start, never expiring: what /metrics exposes as Prometheus
  counters and a histogram;
- its 10-second slot (kept 90 s): "the last minute" is the slot being filled and the six
  before it, the last 60 to 70 s;
- its minute (kept 62 min): "the last hour" is the minute being filled and the sixty
  before it, the last 60 to 61 min.

Lateness (from a trigger's due time to its first attempt) is counted in fixed buckets,
`LATENESS_BOUNDS_MS`, so that the counts of every worker add up; the percentiles are
interpolated within a bucket as Prometheus's histogram_quantile does.

Workers alive: each worker sets a key of its own with a TTL every second (its heartbeat,
with its deliveries in flight per app) and keeps its id in the `workers` sorted set,
scored by when the heartbeat expires.

Counts are approximate only when Redis fails in the middle of a flush (a pipeline is not
atomic): the worker adds its counts again at the next flush, and some may count twice.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.jobs.clock import now_ms
from app.store.keys import Keys, names_range

# Upper bounds of the lateness buckets, in ms (and one more bucket for anything later).
LATENESS_BOUNDS_MS: tuple[int, ...] = (
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
)
SLOT_MS = 10_000
SLOTS_IN_MINUTE_WINDOW = 7  # the slot being filled and the six before: 60 to 70 s
SLOT_TTL_S = 90  # read for 70 s after a slot starts
MINUTE_MS = 60_000
MINUTES_IN_HOUR_WINDOW = 61  # the minute being filled and the sixty before
MINUTE_TTL_S = 62 * 60  # read for 61 min after a minute starts
# A worker beats every second; one not heard from for this long is gone.
WORKER_TTL_MS = 10_000
FLUSH_EVERY_S = 1.0
# The most apps /metrics and `?all=true` show (each costs a few series and reads).
MAX_APPS = 1000
# Most of an app's jobs per partition whose place in the due index is read to count its
# due triggers (the index is every app's: only the app's own jobs are looked up).
DUE_COUNT_CAP = 10_000
# `?all=true` shares one such cap out among the apps it shows (at least this many each):
# its cost grows with the number of apps, not with their jobs.
ALL_APPS_DUE_COUNT_FLOOR = 100


def due_count_cap(apps: int) -> int:
    """Each app's cap when `apps` apps are shown at once."""
    return max(ALL_APPS_DUE_COUNT_FLOOR, DUE_COUNT_CAP // max(apps, 1))

# Hash fields (short: there are up to 72 hashes per active app).
DELIVERED, FAILED, RETRIED, DEAD = "delivered", "failed", "retried", "dead"
LATENESS_SUM = "lateness_ms_sum"
_BUCKET_FIELDS = (*(f"le_{b}" for b in LATENESS_BOUNDS_MS), "le_inf")


def bucket_of(lateness_ms: int) -> int:
    """The index of the bucket a lateness falls in (bucket i: at most bound i)."""
    return bisect_left(LATENESS_BOUNDS_MS, lateness_ms)


@dataclass
class Tally:
    """One app's counts in one worker since its last flush."""

    delivered: int = 0  # attempts the app answered 2xx or 404
    failed: int = 0  # attempts that failed (any other answer, a timeout, no connection)
    retried: int = 0  # retries scheduled
    dead: int = 0  # triggers dead-lettered
    buckets: list[int] = field(default_factory=lambda: [0] * len(_BUCKET_FIELDS))
    lateness_sum_ms: int = 0

    def attempt(self, done: bool, lateness_ms: int | None) -> None:
        if done:
            self.delivered += 1
        else:
            self.failed += 1
        if lateness_ms is not None:
            self.buckets[bucket_of(lateness_ms)] += 1
            self.lateness_sum_ms += lateness_ms

    def fields(self) -> dict[str, int]:
        """The counts to add, without zeros."""
        pairs = [(DELIVERED, self.delivered), (FAILED, self.failed), (RETRIED, self.retried),
                 (DEAD, self.dead), (LATENESS_SUM, self.lateness_sum_ms),
                 *zip(_BUCKET_FIELDS, self.buckets, strict=True)]
        return {name: n for name, n in pairs if n}

    def merge(self, other: Tally) -> None:
        self.delivered += other.delivered
        self.failed += other.failed
        self.retried += other.retried
        self.dead += other.dead
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.lateness_sum_ms += other.lateness_sum_ms


@dataclass(frozen=True)
class Counts:
    """An app's counts over a window (or since the start): the sum of its hashes."""

    delivered: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    buckets: tuple[int, ...] = (0,) * len(_BUCKET_FIELDS)
    lateness_sum_ms: int = 0

    @classmethod
    def of(cls, hashes: Iterable[Mapping[bytes, bytes]]) -> Counts:
        sums: dict[str, int] = {}
        for h in hashes:
            for name, value in h.items():
                key = name.decode()
                sums[key] = sums.get(key, 0) + int(value)
        return cls(sums.get(DELIVERED, 0), sums.get(FAILED, 0), sums.get(RETRIED, 0),
                   sums.get(DEAD, 0), tuple(sums.get(f, 0) for f in _BUCKET_FIELDS),
                   sums.get(LATENESS_SUM, 0))

    @property
    def lateness_count(self) -> int:
        return sum(self.buckets)

    def lateness_ms(self, q: float) -> float | None:
        """The q-quantile of the lateness (None: no trigger)."""
        return quantile(LATENESS_BOUNDS_MS, self.buckets, q)


def quantile(bounds: Sequence[float], buckets: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) of counts in buckets with these upper bounds (and one more
    bucket past the last bound), interpolated linearly within its bucket as Prometheus's
    histogram_quantile does; in the last bucket, the highest bound. None when empty."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i == len(bounds):
                return float(bounds[-1])
            low = 0.0 if i == 0 else float(bounds[i - 1])
            return low + (float(bounds[i]) - low) * max(rank - seen, 0.0) / n
        seen += n
    return float(bounds[-1])


# -- the workers' side: queue commands on a pipeline (sync or asyncio) -------------------


@dataclass(frozen=True)
class Heartbeat:
    """What a worker tells about itself every second."""

    worker_id: str
    host: str
    pid: int
    started_ms: int
    concurrency: int
    in_flight: dict[str, int]  # app id -> deliveries in flight now
    attempts: int  # delivery attempts since it started

    def encode(self) -> str:
        return json.dumps({"id": self.worker_id, "host": self.host, "pid": self.pid,
                           "startedMs": self.started_ms, "concurrency": self.concurrency,
                           "inFlight": self.in_flight, "attempts": self.attempts},
                          separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Heartbeat | None:
        try:
            d = json.loads(raw)
            return cls(str(d["id"]), str(d["host"]), int(d["pid"]), int(d["startedMs"]),
                       int(d["concurrency"]),
                       {str(k): int(v) for k, v in dict(d["inFlight"]).items()},
                       int(d["attempts"]))
        except (ValueError, KeyError, TypeError):
            return None  # written by another version: not counted


def queue_flush(pipe: Any, keys: Keys, tallies: Mapping[str, Tally],
                at_ms: int) -> list[tuple[str, range]]:
    """Add the tallies to the apps' totals, slots and minutes (HINCRBY on `pipe`); each
    app's, with the places of its HINCRBYs in the pipeline (to tell what was taken)."""
    slot, minute = at_ms // SLOT_MS, at_ms // MINUTE_MS
    places = []
    for app_id, tally in tallies.items():
        counts = tally.fields()
        if not counts:
            continue
        pipe.sadd(keys.stats_apps, app_id)
        slot_key, minute_key = keys.stats_slot(app_id, slot), keys.stats_minute(app_id, minute)
        first = len(pipe)
        for key in (keys.stats_total(app_id), slot_key, minute_key):
            for name, n in counts.items():
                pipe.hincrby(key, name, n)
        places.append((app_id, range(first, len(pipe))))
        pipe.expire(slot_key, SLOT_TTL_S)
        pipe.expire(minute_key, MINUTE_TTL_S)
    return places


def queue_heartbeat(pipe: Any, keys: Keys, beat: Heartbeat, at_ms: int) -> None:
    pipe.set(keys.worker(beat.worker_id), beat.encode(), px=WORKER_TTL_MS)
    pipe.zadd(keys.workers, {beat.worker_id: at_ms + WORKER_TTL_MS})
    pipe.zremrangebyscore(keys.workers, "-inf", at_ms)  # the ids of workers gone


def queue_goodbye(pipe: Any, keys: Keys, worker_id: str) -> None:
    """A worker stopping: no longer alive."""
    pipe.delete(keys.worker(worker_id))
    pipe.zrem(keys.workers, worker_id)


# -- the readers' side (a sync client: the API) ------------------------------------------


def read_workers(redis: Any, keys: Keys, at_ms: int | None = None) -> list[Heartbeat]:
    """The workers alive: those whose heartbeat has not expired."""
    at = now_ms() if at_ms is None else at_ms
    ids = redis.zrangebyscore(keys.workers, f"({at}", "+inf")
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for worker_id in ids:
        pipe.get(keys.worker(worker_id.decode()))
    beats = (Heartbeat.decode(raw) for raw in pipe.execute() if raw is not None)
    return [b for b in beats if b is not None]


def counted_apps(redis: Any, keys: Keys, own: str | None = None) -> list[str]:
    """The apps with counters or a registration, sorted, at most MAX_APPS; `own` (the app
    of the API asking) always among them, whatever other apps' names sort before it."""
    pipe = redis.pipeline(transaction=False)
    pipe.smembers(keys.stats_apps)
    pipe.hkeys(keys.apps)
    counted, registered = pipe.execute()
    apps = sorted({a.decode() for a in (*counted, *registered)})
    shown = apps[:MAX_APPS]
    if own is not None and own not in shown:
        shown = sorted([*shown[:MAX_APPS - 1], own])
    return shown


def read_totals(redis: Any, keys: Keys, app_ids: Sequence[str]) -> dict[str, Counts]:
    """Each app's counts since the start."""
    pipe = redis.pipeline(transaction=False)
    for app_id in app_ids:
        pipe.hgetall(keys.stats_total(app_id))
    return {app_id: Counts.of([h]) for app_id, h in zip(app_ids, pipe.execute(), strict=True)}


def queue_jobs_count(store: Any, pipe: Any, app_id: str) -> int:
    """Queue the count of the app's jobs (its count in every partition's job index);
    returns how many answers to add up."""
    for pk in store.keys.all_partitions():
        store.names_count(pk.names, app_id, pipe)
    return int(store.keys.partitions)


def recent(redis: Any, keys: Keys, app_id: str, slots: int = 3,
           at_ms: int | None = None) -> tuple[Counts, float]:
    """The app's counts over the last `slots` complete 10-second slots (not the one being
    filled), and that window's length in seconds: for a rate, such as deliveries per
    second on a live page."""
    slot = (now_ms() if at_ms is None else at_ms) // SLOT_MS
    slots = max(1, min(slots, SLOTS_IN_MINUTE_WINDOW - 1))  # the slots still kept
    pipe = redis.pipeline(transaction=False)
    for s in range(slot - slots, slot):
        pipe.hgetall(keys.stats_slot(app_id, s))
    return Counts.of(pipe.execute()), slots * SLOT_MS / 1000


@dataclass(frozen=True)
class AppStats:
    app_id: str
    jobs: int
    due_now: int  # due triggers waiting for a worker (at most the cap when capped)
    due_now_capped: bool
    in_flight: int  # deliveries in flight in the live workers
    dead_letters: int  # stored now
    last_minute: Counts
    last_hour: Counts


def app_stats(store: Any, app_id: str, workers: Sequence[Heartbeat],
              at_ms: int | None = None, due_cap: int = DUE_COUNT_CAP) -> AppStats:
    """One app's figures: its jobs and due triggers from the store, its deliveries from
    the workers' counters (the last minute and hour), in one pipeline."""
    at = now_ms() if at_ms is None else at_ms
    keys: Keys = store.keys
    counts = store.app_counts(app_id)  # jobs and dead letters, from the per-app indexes
    slot, minute = at // SLOT_MS, at // MINUTE_MS
    pipe = store.redis.pipeline(transaction=False)
    for s in range(slot - SLOTS_IN_MINUTE_WINDOW + 1, slot + 1):
        pipe.hgetall(keys.stats_slot(app_id, s))
    for m in range(minute - MINUTES_IN_HOUR_WINDOW + 1, minute + 1):
        pipe.hgetall(keys.stats_minute(app_id, m))
    parts = keys.all_partitions()
    low, high = names_range(app_id)  # held entries are `{app}/...` too
    # The app's own jobs, not the due index's head: that is every app's, and another
    # app's backlog would fill the cap (the cost and the count were the other app's).
    for pk in parts:
        store.names_in(pk.names, low, high, due_cap, pipe)
    for pk in parts:  # due, but set aside by a claim until the app has room (claim.lua)
        pipe.zlexcount(pk.held, low, high)
    answers = pipe.execute()
    slots = answers[:SLOTS_IN_MINUTE_WINDOW]
    minutes = answers[SLOTS_IN_MINUTE_WINDOW:SLOTS_IN_MINUTE_WINDOW + MINUTES_IN_HOUR_WINDOW]
    names = answers[SLOTS_IN_MINUTE_WINDOW + MINUTES_IN_HOUR_WINDOW:][:len(parts)]
    held = answers[SLOTS_IN_MINUTE_WINDOW + MINUTES_IN_HOUR_WINDOW + len(parts):]
    capped = any(len(ids) >= due_cap for ids in names)
    pipe = store.redis.pipeline(transaction=False)
    for pk, ids in zip(parts, names, strict=True):
        if ids:  # their next need of a worker, each, from whichever tier holds it
            store.read_jobs(pipe, pk, "d", ids)
    due = sum(1 for scores in pipe.execute() for score in scores
              if score is not None and float(score) <= at)
    due += sum(int(n) for n in held)
    return AppStats(
        app_id=app_id,
        jobs=int(counts["jobs"]),
        due_now=due,
        due_now_capped=capped,
        in_flight=sum(w.in_flight.get(app_id, 0) for w in workers),
        dead_letters=int(counts["dead_letters"]),
        last_minute=Counts.of(slots),
        last_hour=Counts.of(minutes),
    )


# Far leaves per partition that a /metrics read looks into for due far jobs (a bound on
# its work: past it the count is short).
FAR_DUE_LEAVES = 64


def far_due(store: Any, at: int) -> int:
    """Jobs of the far tier (app/store/lua/far.lua) due by `at`: due while no worker's
    claim has moved them into the due index yet (no worker runs, or it is behind)."""
    parts = store.keys.all_partitions()
    pipe = store.redis.pipeline(transaction=False)
    for pk in parts:
        pipe.zrangebyscore(pk.far_heads, "-inf", at, start=0, num=FAR_DUE_LEAVES)
    leaves = pipe.execute()
    if not any(leaves):
        return 0
    pipe = store.redis.pipeline(transaction=False)
    for pk, lows in zip(parts, leaves, strict=True):
        for low in lows:
            pipe.zcount(pk.far_when(low), "-inf", at)
    return sum(int(n) for n in pipe.execute())
