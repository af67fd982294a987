"""Each system's side of the scale scenario: load pending jobs in bulk, and time one
claim of a batch of due triggers (for RQ: its scheduler moving them to the queue)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import redis

from benchmarks.rq_baseline import QUEUE
from benchmarks.rq_jobs import deliver
from benchmarks.systems import utc_datetime

# Seed-sized job data (the seed's R2-D2 droid job).
SEED_DATA = {
    "@type": "type.googleapis.com/google.protobuf.StringValue",
    "value": "R2-D2:Oil Change",
}


def seed_name(i: int) -> str:
    return f"R2-D2-{i:06d}"


class ScaleSystem(Protocol):
    def open(self) -> None: ...
    def close(self) -> None: ...
    def load_pending(self, start: int, count: int, due_ms: int) -> None: ...
    def claim_probe(self, level: int, round_: int, batch: int) -> float:
        """Add `batch` due jobs, then return the seconds one claim of them took."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class JobrunnerScale:
    def __init__(self, redis_url: str, receiver_url: str) -> None:
        from benchmarks.jobrunner_side import settings

        # A long lease: probed triggers stay claimed and never come back as due. History
        # off (issue 12 measures memory without it; a pending job has none anyway).
        self.settings = settings(redis_url, receiver_url).with_(lease_s=3600.0,
                                                                 history_size=0)
        self.store: Any = None
        self.queue: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        from app.store.store import Store
        from workers.queue import Queue

        self.store = Store(self.settings)
        self.loop = asyncio.new_event_loop()
        self.queue = Queue(self.settings)

    def close(self) -> None:
        if self.loop is not None:
            if self.queue is not None:
                self.loop.run_until_complete(self.queue.close())
            self.loop.close()
        if self.store is not None:
            self.store.close()

    def _load(self, names: list[str], due_ms: int) -> None:
        from benchmarks.jobrunner_side import make_job

        self.store.schedule_many((make_job(n, due_ms, SEED_DATA) for n in names), chunk=1000)

    def load_pending(self, start: int, count: int, due_ms: int) -> None:
        self._load([seed_name(i) for i in range(start, start + count)], due_ms)

    def claim_probe(self, level: int, round_: int, batch: int) -> float:
        assert self.loop is not None
        self._load([f"probe-{level}-{round_}-{i}" for i in range(batch)], _now_ms() - 1)
        t0 = time.perf_counter()
        triggers, _ = self.loop.run_until_complete(self.queue.claim(batch))
        elapsed = time.perf_counter() - t0
        if len(triggers) != batch:
            raise RuntimeError(f"claim returned {len(triggers)} triggers, expected {batch}")
        return elapsed


    def breakdown(self, client: redis.Redis) -> dict[str, int]:
        """Redis bytes of each kind of key (jobs hash, due zset, names zset, runs...):
        MEMORY USAGE with SAMPLES 0 (every element counted) of each of jobrunner's keys,
        summed by kind across partitions (`jrbench:{3}:jobs` is kind "jobs")."""
        prefix = self.settings.prefix + ":"
        out: dict[str, int] = {}
        for raw in client.scan_iter(match=prefix + "*", count=1000):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            rest = key[len(prefix):]
            if rest.startswith("{"):
                rest = rest.partition("}:")[2]
            kind = rest.split(":", 1)[0]
            size = client.memory_usage(key, samples=0)
            out[kind] = out.get(kind, 0) + int(size or 0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


class RQScale:
    """RQ's built-in scheduler: ScheduledJobRegistry + RQScheduler.enqueue_scheduled_jobs."""

    def __init__(self, redis_url: str, receiver_url: str) -> None:
        self.redis_url = redis_url
        self.receiver_url = receiver_url
        self.conn: redis.Redis | None = None
        self.queue: Any = None
        self.scheduler: Any = None

    def open(self) -> None:
        from rq import Queue
        from rq.scheduler import RQScheduler

        self.conn = redis.Redis.from_url(self.redis_url)
        self.queue = Queue(QUEUE, connection=self.conn)
        self.scheduler = RQScheduler([QUEUE], connection=self.conn, logging_level="WARNING")
        self.scheduler.acquire_locks()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.release_locks()
        if self.conn is not None:
            self.conn.close()

    def _load(self, names: list[str], due_ms: int) -> None:
        assert self.conn is not None
        when = utc_datetime(due_ms)
        with self.conn.pipeline() as pipe:
            for name in names:
                self.queue.enqueue_at(when, deliver, self.receiver_url, name, due_ms,
                                      pipeline=pipe)
            pipe.execute()

    def load_pending(self, start: int, count: int, due_ms: int) -> None:
        for s in range(start, start + count, 1000):
            self._load([seed_name(i) for i in range(s, min(s + 1000, start + count))], due_ms)

    def _move_due(self) -> None:
        self.scheduler.enqueue_scheduled_jobs()

    def claim_probe(self, level: int, round_: int, batch: int) -> float:
        before = self.queue.count
        # RQ keeps due times in whole seconds: make sure the batch is due now.
        self._load([f"probe-{level}-{round_}-{i}" for i in range(batch)], _now_ms() - 2000)
        t0 = time.perf_counter()
        self._move_due()
        elapsed = time.perf_counter() - t0
        moved = self.queue.count - before
        if moved != batch:
            raise RuntimeError(f"the RQ scheduler moved {moved} jobs, expected {batch}")
        return elapsed


class RQSchedulerScale(RQScale):
    """rq-scheduler: its scheduled_jobs ZSET + Scheduler.enqueue_jobs."""

    def open(self) -> None:
        from rq import Queue
        from rq_scheduler import Scheduler

        self.conn = redis.Redis.from_url(self.redis_url)
        self.queue = Queue(QUEUE, connection=self.conn)
        self.scheduler = Scheduler(queue_name=QUEUE, connection=self.conn)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def _load(self, names: list[str], due_ms: int) -> None:
        # Scheduler.enqueue_at, pipelined: the same records, without a round trip per job.
        from rq_scheduler.utils import to_unix

        assert self.conn is not None
        score = to_unix(utc_datetime(due_ms))
        with self.conn.pipeline() as pipe:
            for name in names:
                job = self.scheduler._create_job(
                    deliver, args=(self.receiver_url, name, due_ms), commit=False
                )
                job.save(pipeline=pipe)
                pipe.zadd(self.scheduler.scheduled_jobs_key, {job.id: score})
            pipe.execute()

    def _move_due(self) -> None:
        self.scheduler.enqueue_jobs()


SCALE_SYSTEMS: dict[str, type[JobrunnerScale] | type[RQScale]] = {
    "jobrunner": JobrunnerScale,
    "rq": RQScale,
    "rq-scheduler": RQSchedulerScale,
}
