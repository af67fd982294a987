"""Prometheus metrics of a worker process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from app.jobs.model import Trigger
from workers.delivery import Outcome

DELIVERIES = Counter(
    "jobrunner_deliveries_total", "Delivery attempts by result", ["app_id", "result"]
)
LATENESS = Histogram(
    "jobrunner_delivery_lateness_seconds",
    "Time from a trigger's due time to the start of its first delivery attempt",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class WorkerMetrics:
    def observe(self, trigger: Trigger, outcome: Outcome, started_ms: int) -> None:
        result = "done" if outcome.done else "failed"
        DELIVERIES.labels(trigger.job.app_id, result).inc()
        if trigger.attempt == 1:
            LATENESS.observe(max(started_ms - trigger.sched_ms, 0) / 1000)
