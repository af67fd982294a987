"""The API's metrics: its own HTTP requests, and, read from Redis at each scrape, the store
and the workers' aggregated counters (app/store/stats.py); and `GET /v1.0/stats`.

Requests are counted by route, the URL rule (`/v1.0/jobs/<anything:name>`), never the
raw path: job names are unbounded, and so would the series be. An API instance runs
several processes (gunicorn workers, or any pre-fork server): `jobrunner api` gives them
one folder of their own, PROMETHEUS_MULTIPROC_DIR (app/processes/metrics_dir.py), where
prometheus_client's multiprocess mode keeps each process's counters in a file, so that a
scrape, whichever process answers it, adds up those of every process of the instance.
Without that folder (the app served some other way), each process counts its own.

What comes from Redis is the same on every API process of every machine: the workers'
counters are aggregated there, so a Prometheus that scrapes several API instances gets
them once per instance (the Grafana dashboard takes the `max` over instances).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector

from app.api.query import bool_arg
from app.jobs.clock import now_ms
from app.jobs.durations import format_ms
from app.store import stats
from app.store.redis_client import UNAVAILABLE
from app.store.stats import LATENESS_BOUNDS_MS, AppStats, Counts

REQUESTS = Counter(
    "jobrunner_http_requests_total",
    "HTTP requests answered, by route (the URL rule), method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "jobrunner_http_request_duration_seconds",
    "Time to answer an HTTP request, by route (the URL rule) and method",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# A request that matched no route (404, 405) is counted under this route.
UNMATCHED = "unmatched"
# Methods are any token in HTTP: others are counted as "other", so series stay bounded.
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
_ROUTE_KEY = "jobrunner.route"  # the environ entry where the route is left for the count
_STATS_PATHS = ("/v1.0-alpha1/stats", "/v1.0/stats")


def multiprocess() -> bool:
    """Whether this process keeps its counters in PROMETHEUS_MULTIPROC_DIR (it must have
    been set before prometheus_client was imported)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")) and \
        values.ValueClass is not values.MutexValue


class _CountRequests:
    """WSGI middleware: counts each request and its time, from the server's call to the
    answer's status (the route comes from Flask, through the environ)."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ["500"]

        def recording_start(status_line: str, *args: Any) -> Any:
            status[0] = status_line[:3]
            return start_response(status_line, *args)

        try:
            return self.wsgi_app(environ, recording_start)
        finally:
            count_request(environ.get(_ROUTE_KEY, UNMATCHED), environ.get("REQUEST_METHOD", ""),
                          status[0], time.perf_counter() - started)


# (route, method, status) -> its counter and histogram: `labels` looks them up at some
# cost on every call. Bounded as the series are (routes, methods and statuses are).
_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def count_request(route: str, method: str, status: str, seconds: float) -> None:
    """Count one answered request (also for those answered past this middleware:
    the schedule shortcut's event-loop path, app/api/fast_schedule.py)."""
    method = method if method in _METHODS else "other"
    key = (route, method, status)
    series = _series.get(key)
    if series is None:
        series = _series[key] = (REQUESTS.labels(route, method, status),
                                 LATENCY.labels(route, method))
    series[0].inc()
    series[1].observe(seconds)


def attach(bp: Blueprint) -> None:
    """Count the requests of every route of the app `bp` is registered on, and serve
    `GET /v1.0/stats` (and its alpha twin) from `bp`."""

    @bp.record_once
    def _install(state: Any) -> None:
        app: Flask = state.app
        app.wsgi_app = _CountRequests(app.wsgi_app)  # type: ignore[method-assign]

    @bp.after_app_request
    def _leave_route(response: Response) -> Response:
        rule = request.url_rule
        request.environ[_ROUTE_KEY] = rule.rule if rule is not None else UNMATCHED
        return response

    for version, path in enumerate(_STATS_PATHS):
        bp.add_url_rule(path, view_func=stats_view, methods=["GET"], endpoint=f"stats_{version}")


# -- /metrics ------------------------------------------------------------------------------


def exposition(store: Any) -> Response:
    """The Prometheus text of /metrics: this instance's requests (all its processes in
    multiprocess mode), then what Redis holds, read now."""
    if multiprocess():
        own = CollectorRegistry()
        MultiProcessCollector(own)  # type: ignore[no-untyped-call]
    else:
        own = REGISTRY
    from_redis = CollectorRegistry(auto_describe=False)
    from_redis.register(_RedisCollector(store))
    return Response(generate_latest(own) + generate_latest(from_redis),
                    mimetype=CONTENT_TYPE_LATEST)


class _RedisCollector:
    """The store's sizes and the workers' aggregated counters, read at each scrape."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("jobrunner_redis_up",
                               "1 when this scrape could read Redis, else 0")
        try:
            families = list(self._read())
        except UNAVAILABLE:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> Iterator[Metric]:
        store, keys, at = self.store, self.store.keys, now_ms()
        sizes = GaugeMetricFamily("jobrunner_store_size", "Sizes of the store", labels=["what"])
        for what, value in store.counts().items():
            sizes.add_metric([what], value)
        yield sizes

        store.ensure_indexed()  # the per-app job index, for data of an older version
        app_ids = stats.counted_apps(store.redis, keys, own=store.settings.app_id)
        workers = stats.read_workers(store.redis, keys, at)
        totals = stats.read_totals(store.redis, keys, app_ids)
        pipe = store.redis.pipeline(transaction=False)
        for app_id in app_ids:
            stats.queue_jobs_count(store, pipe, app_id)
        for pk in keys.all_partitions():
            pipe.zcount(pk.due, "-inf", at)
        for pk in keys.all_partitions():  # due, but set aside until the app has room
            pipe.zcard(pk.held)
        answers = pipe.execute()
        per_app = keys.partitions * len(app_ids)

        jobs = GaugeMetricFamily("jobrunner_jobs", "Jobs stored, per app", labels=["app_id"])
        for i, app_id in enumerate(app_ids):
            jobs.add_metric([app_id], sum(answers[i * keys.partitions:(i + 1) * keys.partitions]))
        yield jobs
        yield GaugeMetricFamily(
            "jobrunner_triggers_due", "Triggers due now and waiting for a worker (all apps)",
            value=sum(int(n) for n in answers[per_app:]) + stats.far_due(store, at))
        yield GaugeMetricFamily("jobrunner_workers_alive",
                                "Worker processes whose heartbeat is current",
                                value=len(workers))
        in_flight = GaugeMetricFamily("jobrunner_in_flight",
                                      "Deliveries in flight in the live workers, per app",
                                      labels=["app_id"])
        for app_id in sorted(set(app_ids) | {a for w in workers for a in w.in_flight}):
            in_flight.add_metric([app_id], sum(w.in_flight.get(app_id, 0) for w in workers))
        yield in_flight
        yield from _counter_families(totals)


def _counter_families(totals: dict[str, Counts]) -> Iterator[Metric]:
    attempts = CounterMetricFamily(
        "jobrunner_delivery_attempts", "Delivery attempts of all workers, per app, by result "
        "(delivered: 2xx or 404; failed: any other answer, a timeout, no connection)",
        labels=["app_id", "result"])
    retries = CounterMetricFamily("jobrunner_retries", "Retries scheduled by all workers, "
                                  "per app", labels=["app_id"])
    dead = CounterMetricFamily("jobrunner_dead_lettered", "Triggers put in the dead-letter "
                               "queue by all workers, per app", labels=["app_id"])
    lateness = HistogramMetricFamily(
        "jobrunner_trigger_lateness_seconds", "Time from a trigger's due time to its first "
        "delivery attempt, all workers, per app", labels=["app_id"])
    bounds = [*(f"{b / 1000:g}" for b in LATENESS_BOUNDS_MS), "+Inf"]
    for app_id, c in totals.items():
        attempts.add_metric([app_id, "delivered"], c.delivered)
        attempts.add_metric([app_id, "failed"], c.failed)
        retries.add_metric([app_id], c.retried)
        dead.add_metric([app_id], c.dead)
        cumulative, seen = [], 0
        for bound, n in zip(bounds, c.buckets, strict=True):
            seen += n
            cumulative.append((bound, seen))
        lateness.add_metric([app_id], cumulative, c.lateness_sum_ms / 1000)
    yield from (attempts, retries, dead, lateness)


# -- GET /v1.0/stats -----------------------------------------------------------------------


def stats_view() -> Response:
    """This app's figures; `?all=true`: every app's (what /metrics shows as well)."""
    everything = bool_arg("all")
    store, at = g.store, now_ms()
    workers = stats.read_workers(store.redis, store.keys, at)
    app_ids = (stats.counted_apps(store.redis, store.keys, own=g.settings.app_id)
               if everything else [g.settings.app_id])
    cap = stats.due_count_cap(len(app_ids))
    return jsonify({
        "apps": [_app_doc(stats.app_stats(store, a, workers, at, cap)) for a in app_ids],
        "workersAlive": len(workers),
        "time": format_ms(at),
    })


def _app_doc(s: AppStats) -> dict[str, Any]:
    return {"appId": s.app_id, "jobs": s.jobs, "dueNow": s.due_now,
            "dueNowCapped": s.due_now_capped, "inFlight": s.in_flight,
            "deadLetters": s.dead_letters, "lastMinute": _window_doc(s.last_minute),
            "lastHour": _window_doc(s.last_hour)}


def _window_doc(c: Counts) -> dict[str, Any]:
    def ms(q: float) -> float | None:
        value = c.lateness_ms(q)
        return None if value is None else round(value, 3)

    return {"delivered": c.delivered, "failed": c.failed, "retried": c.retried,
            "deadLettered": c.dead, "triggers": c.lateness_count,
            "latenessMs": {"p50": ms(0.5), "p99": ms(0.99)}}

