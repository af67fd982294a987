"""A worker process's metrics: its own Prometheus counters (served on
JOBRUNNER_WORKER_METRICS_PORT when set), and its counts added to the aggregated counters in
Redis once a second with its heartbeat (app/store/stats.py), which every API process's
/metrics and /v1.0/stats show for all the workers on all machines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections import Counter as Tallied
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis
from prometheus_client import Counter, Histogram

from app.jobs.clock import now_ms
from app.jobs.model import Trigger
from app.store import stats
from app.store.keys import Keys
from app.store.redis_client import UNAVAILABLE, AsyncClusterClient
from workers.delivery import Outcome
from workers.queue import Action, Settlement

log = logging.getLogger("jobrunner.worker")

# A worker stopping writes its last counts within this long, or goes without: a master that
# does not answer held a stop up for a minute (redis-py tries a call again ten times).
LAST_FLUSH_WITHIN_S = 5.0

DELIVERIES = Counter(
    "jobrunner_deliveries_total", "Delivery attempts by result", ["app_id", "result"]
)
LATENESS = Histogram(
    "jobrunner_delivery_lateness_seconds",
    "Time from a trigger's due time to the start of its first delivery attempt",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class WorkerMetrics:
    """Counts deliveries as they happen (in memory: no Redis call per delivery) and, with a
    Redis client, adds them to the aggregated counters once a second (`run`)."""

    def __init__(self, redis: Any = None, keys: Keys | None = None,
                 in_flight: Callable[[], Iterable[Trigger]] = tuple,
                 concurrency: int = 0, prometheus: bool = True) -> None:
        self._redis = redis
        self._cluster = isinstance(redis, AsyncClusterClient)
        # The process's own Prometheus counters: kept only when something serves them
        # (JOBRUNNER_WORKER_METRICS_PORT); a few us per delivery otherwise spent for nobody.
        self._prometheus = prometheus
        self._keys = keys or Keys()
        self._in_flight = in_flight  # the triggers being delivered now
        self._tallies: dict[str, stats.Tally] = {}
        self._counters: dict[tuple[str, bool], Any] = {}  # DELIVERIES' child per app, result
        self._attempts = 0
        host = socket.gethostname()
        self.worker_id = f"{host}:{os.getpid()}:{secrets.token_hex(3)}"
        self._host, self._started_ms, self._concurrency = host, now_ms(), concurrency
        self._failing = False  # the last flush failed (say so once per outage)
        self._odd_said = False  # an error that is no outage was logged (said once)

    def _tally(self, app_id: str) -> stats.Tally:
        tally = self._tallies.get(app_id)
        if tally is None:
            tally = self._tallies[app_id] = stats.Tally()
        return tally

    def observe(self, trigger: Trigger, outcome: Outcome, started_ms: int) -> None:
        """One delivery attempt."""
        app_id = trigger.job.app_id
        lateness_ms = None
        if trigger.attempt == 1:
            lateness_ms = max(started_ms - trigger.sched_ms, 0)
        if self._prometheus:
            counter = self._counters.get((app_id, outcome.done))
            if counter is None:  # labels() per delivery was a few percent of a worker's CPU
                counter = self._counters[(app_id, outcome.done)] = DELIVERIES.labels(
                    app_id, "done" if outcome.done else "failed")
            counter.inc()
            if lateness_ms is not None:
                LATENESS.observe(lateness_ms / 1000)
        self._tally(app_id).attempt(outcome.done, lateness_ms)
        self._attempts += 1

    def settled(self, batch: Iterable[Settlement]) -> None:
        """Settlements Redis has applied: retries scheduled, triggers dead-lettered."""
        for s in batch:
            if s.action == Action.RETRY:
                self._tally(s.trigger.job.app_id).retried += 1
            elif s.action == Action.DEAD:
                self._tally(s.trigger.job.app_id).dead += 1

    async def run(self, stop: asyncio.Event,
                  quiet: Callable[[float], Awaitable[None]] | None = None) -> None:
        """Flush once a second until `stop` (then `close` says goodbye); each flush after
        `quiet(at most s)` returns: a flush is ~70 commands to pack, a few ms of the loop,
        best spent while the claim loop sleeps with time to spare."""
        if self._redis is None:
            return
        while not stop.is_set():
            await self.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), stats.FLUSH_EVERY_S)
            if quiet is not None:
                await quiet(0.5)

    async def close(self, within_s: float = LAST_FLUSH_WITHIN_S) -> None:
        """The last counts, and this worker is no longer alive (its heartbeat expires
        otherwise, when Redis does not answer within `within_s`)."""
        if self._redis is not None:
            try:
                await asyncio.wait_for(self.flush(final=True), within_s)
            except TimeoutError:
                log.warning("the last delivery counters were not written: redis did not "
                            "answer within %.1fs", within_s)

    async def flush(self, final: bool = False) -> None:
        """Add the counts since the last flush to Redis, with the heartbeat: one round trip.
        Counts that Redis did not take are added at the next flush."""
        tallies, self._tallies = self._tallies, {}
        at = now_ms()
        pipe = self._redis.pipeline(transaction=False)
        places = stats.queue_flush(pipe, self._keys, tallies, at)
        if final:
            stats.queue_goodbye(pipe, self._keys, self.worker_id)
        else:
            in_flight = Tallied(t.job.app_id for t in list(self._in_flight()))
            beat = stats.Heartbeat(self.worker_id, self._host, os.getpid(), self._started_ms,
                                   self._concurrency, dict(in_flight), self._attempts)
            stats.queue_heartbeat(pipe, self._keys, beat, at)
        try:
            # On one node, each command's reply, to tell what Redis took. (A Redis Cluster
            # pipeline raises instead: it relearns the cluster's layout when it does, and a
            # worker's calls rely on that after a failover; there, a flush Redis filled up
            # part-way is merged back whole, and counted twice in part.)
            replies = await pipe.execute(raise_on_error=self._cluster)
        except UNAVAILABLE as exc:
            for app_id, tally in tallies.items():
                self._tally(app_id).merge(tally)
            self._warn_once(exc)
            return
        except redis.RedisError as exc:  # (Redis Cluster's pipeline raises them)
            replies = [exc]
        errors = [r for r in replies if isinstance(r, Exception)]
        refused = next((e for e in errors if isinstance(e, UNAVAILABLE)), None)
        odd = next((e for e in errors if not isinstance(e, UNAVAILABLE)), None)
        if odd is not None:
            # Not an outage (a stats key of another type, ...): sending the counts again
            # would fail the same way, every second. Said once; those counts are dropped.
            if not self._odd_said:
                log.error("cannot add the delivery counters to redis, dropped: %s: %s",
                          type(odd).__name__, odd)
            self._odd_said = True
            if self._cluster:
                return
        if refused is None:
            self._failing = False
            return
        # Redis refused some (full, or its disk: UNAVAILABLE's REFUSES_WRITES). An app's
        # counts go again at the next flush only if none of them was taken: one that Redis
        # filled up in the middle of is not counted twice, its rest lost instead.
        for app_id, place in places:
            if all(isinstance(replies[i], UNAVAILABLE) for i in place):
                self._tally(app_id).merge(tallies[app_id])
        self._warn_once(refused)

    def _warn_once(self, exc: Exception) -> None:
        """Said once while Redis does not take the counts."""
        if not self._failing:
            log.warning("cannot add the delivery counters to redis: %s", exc)
        self._failing = True
