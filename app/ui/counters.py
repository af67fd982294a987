"""The dashboard's live counters: the figures `jobrunner stats` and /metrics show, for this
page's app, read from Redis at each refresh (app/store/stats.py).

- From the store: the app's jobs and dead letters (its per-app indexes), its triggers due
  and waiting for a worker (the shared due index, read up to a bound per partition: a
  count that reached it shows as "N+"), and those waiting for the app's API process.
- From the workers' counters, which every worker adds to Redis once a second: deliveries
  and failures per second and the lateness p50/p99 over the last 20 to 30 s (the
  10-second slots), the workers alive and the app's deliveries in flight (their
  heartbeats, at most a second old).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.jobs.clock import now_ms
from app.store import stats
from app.store.store import Store

WINDOW_SLOTS = 3  # 10-second slots behind the rates and the lateness, the current one too


@dataclass(frozen=True)
class Count:
    value: int
    capped: bool = False  # the count stopped at the bound: there are more

    def __str__(self) -> str:
        return f"{self.value}+" if self.capped else str(self.value)


@dataclass(frozen=True)
class WorkerFigures:
    """The app's deliveries over the last `window_s` seconds, from every worker."""

    window_s: float
    deliveries_per_s: float  # attempts the app answered 2xx or 404
    failures_per_s: float  # attempts that failed (another answer, a timeout, no connection)
    lateness_p50_ms: float | None  # None: no first attempt in the window
    lateness_p99_ms: float | None


@dataclass(frozen=True)
class Counters:
    app_id: str
    jobs: int
    backlog: Count  # the app's triggers that are due and wait for a worker
    staged: int  # due triggers parked until the app's API process is live again
    in_flight: int  # the app's deliveries the live workers are making now
    dead_letters: int
    workers: int  # worker processes alive (they serve every app)
    worker: WorkerFigures
    measured_ms: int


def worker_figures(store: Store, app_id: str, at_ms: int) -> WorkerFigures:
    """Rates and lateness percentiles of the app, from the workers' aggregated counters,
    over the slot being filled and the WINDOW_SLOTS - 1 before it: the page moves within
    a second of a delivery (the workers' flush), not only once a slot is complete."""
    counts, _ = stats.recent(store.redis, store.keys, app_id, WINDOW_SLOTS,
                             at_ms + stats.SLOT_MS)  # the slots up to the one being filled
    window_s = ((WINDOW_SLOTS - 1) * stats.SLOT_MS + at_ms % stats.SLOT_MS) / 1000
    return WorkerFigures(window_s, counts.delivered / window_s, counts.failed / window_s,
                         counts.lateness_ms(0.5), counts.lateness_ms(0.99))


def live_counters(store: Store, app_id: str, at_ms: int | None = None) -> Counters:
    at = now_ms() if at_ms is None else at_ms
    workers = stats.read_workers(store.redis, store.keys, at)
    figures = stats.app_stats(store, app_id, workers, at)
    staged = store.redis.pipeline(transaction=False)
    for pk in store.keys.all_partitions():
        staged.zcard(pk.staged(app_id))
    return Counters(
        app_id=app_id,
        jobs=figures.jobs,
        backlog=Count(figures.due_now, figures.due_now_capped),
        staged=sum(int(n) for n in staged.execute()),
        in_flight=figures.in_flight,
        dead_letters=figures.dead_letters,
        workers=len(workers),
        worker=worker_figures(store, app_id, at),
        measured_ms=at,
    )
