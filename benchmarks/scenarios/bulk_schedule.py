"""bulk-schedule: jobs stored per second through the bulk route, `POST /v1.0-alpha1/jobs`
with `{"jobs": [{"name": ..., <the single route's body>}, ...]}` (BATCH seed-sized jobs a
request, each due an hour ahead), from a few keep-alive connections of the closed-loop
generator, against the API as the Procfile runs it (`jobrunner api`).

Jobs/s counts the jobs found in Redis at the end (each request's result list is not
read by the generator: a job refused there is a job not stored). The baseline in the same
run: RQ behind the same route in Flask under gunicorn (benchmarks/rq_api.py), `enqueue_at`
of every job of a request in one Redis pipeline. rq-scheduler has no pipelined
`enqueue_at`: no row."""

from __future__ import annotations

import http.client
import time
from typing import Any

import orjson

from benchmarks.context import JOBRUNNER, Context
from benchmarks.cpu import cores_used, snapshot
from benchmarks.loadgen import run_load
from benchmarks.procs import LOOPBACK, counters_delta, free_port
from benchmarks.report import Metric, Target
from benchmarks.scenarios.schedule import serve, stored_jobs
from benchmarks.systems import rfc3339_ms

DEFAULT_DURATION = 10.0
QUICK_DURATION = 1.0
CONNECTIONS = 4  # the API's 2 processes, twice over
BATCH = 1000  # JOBRUNNER_BULK_MAX_JOBS's default: the most one request may carry
TARGET_JOBS_PER_S = 50_000.0  # issue 12

METRICS = [
    Metric("jobs stored/s", "jobs_rate", "{:,.0f}", "higher"),
    Metric("requests/s", "rate", "{:,.1f}", "higher"),
    Metric("jobs per request", "batch", "{:,}"),
    Metric("request latency p50 (ms)", "latency_ms.p50", "{:,.1f}", "lower"),
    Metric("request latency p99 (ms)", "latency_ms.p99", "{:,.1f}", "lower"),
    Metric("requests", "requests", "{:,}"),
    Metric("non-2xx answers", "failed", "{:,}"),
    Metric("jobs sent", "sent", "{:,}"),
    Metric("jobs stored", "stored", "{:,}"),
    Metric("CPU: API (cores)", "cpu.api", "{:.2f}"),
    Metric("CPU: redis (cores)", "cpu.redis", "{:.2f}"),
    Metric("CPU: load generator (cores)", "cpu.generator", "{:.2f}"),
    Metric("CPU: not this run (cores)", "cpu.other", "{:.2f}"),
    Metric("API CPU per job stored (us)", "api_cpu_us_per_job", "{:,.1f}", "lower"),
    Metric("redis CPU per job stored (us)", "redis.cpu_us_per_op", "{:,.1f}", "lower"),
    Metric("redis commands per job stored", "redis.calls_per_op", "{:,.3f}", "lower"),
    Metric("redis bytes in per job stored", "redis.net_in_per_op", "{:,.0f}", "lower"),
]


def _probe(port: int, due: str) -> str | None:
    """One job through the route: None when it was stored, else what went wrong."""
    body = orjson.dumps({"jobs": [{"name": "bulkprobe", "dueTime": due, "data": "x"}]})
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10.0)
    try:
        conn.request("POST", "/v1.0-alpha1/jobs", body=body,
                     headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        raw = answer.read()
    finally:
        conn.close()
    if answer.status != 200:
        return f"POST /v1.0-alpha1/jobs answered {answer.status}: {raw[:200]!r}"
    results = orjson.loads(raw).get("results") or [{}]
    status = results[0].get("status")
    return None if status == 204 else f"the probe job's result: {results[0]}"


def _measure(ctx: Context, name: str, duration: float, batch: int,
             prefix: str) -> dict[str, Any] | str:
    ctx.redis.flush()
    port = free_port()
    serve(ctx, name, port)
    try:
        due = rfc3339_ms(int(time.time() * 1000) + 3_600_000)
        problem = _probe(port, due)
        if problem is not None:
            return problem
        before = snapshot(ctx.procs)
        redis_before = ctx.redis.counters()
        load = run_load(port, "bulk", 10**9, duration, CONNECTIONS, core=None, prefix=prefix,
                        due_time=due, timeout=duration + 120.0, label=f"bulk {name}",
                        batch=batch)
        redis_after = ctx.redis.counters()
        cores = cores_used(before, snapshot(ctx.procs))
    finally:
        ctx.procs.stop_all_named(f"api-{name}")
    seconds = float(load["seconds"])  # type: ignore[arg-type]
    ok = int(load["ok"])  # type: ignore[call-overload]
    stored = stored_jobs(ctx, name) - 1  # less the probe
    generator = float(load["cpu_s"]) / seconds if seconds > 0 else 0.0  # type: ignore[arg-type]
    api = cores.get(f"api-{name}", 0.0)
    out: dict[str, Any] = dict(load)
    out.update(
        batch=batch, failed=int(load["requests"]) - ok,  # type: ignore[call-overload]
        rate=ok / seconds if seconds > 0 else 0.0, sent=ok * batch, stored=stored,
        jobs_rate=stored / seconds if seconds > 0 else 0.0,
        api_cpu_us_per_job=api * seconds * 1e6 / stored if stored else float("nan"),
        redis=counters_delta(redis_before, redis_after, stored), cpu_cores=cores,
        cpu={"api": api, "redis": cores.get("redis", 0.0), "generator": generator,
             "other": max(0.0, cores.get("other processes", 0.0) - generator)},
    )
    return out


def run(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    duration = opts.duration or (QUICK_DURATION if opts.quick else DEFAULT_DURATION)
    batch = BATCH
    names = [n for n in ctx.system_names() if n in (JOBRUNNER, "rq")]
    systems: dict[str, Any] = {}
    notes = []
    for i, name in enumerate(names):
        figures = _measure(ctx, name, duration, batch, f"bulk{i}")
        if isinstance(figures, str):
            notes.append(f"{name}: no row, the bulk route did not store a job: {figures}")
            continue
        systems[name] = figures
    jr, rq = systems.get(JOBRUNNER), systems.get("rq")
    rate = None if jr is None else float(jr["jobs_rate"])
    targets = [Target("jobrunner bulk route, jobs stored/s (rq pipelined: baseline)",
                      f">= {TARGET_JOBS_PER_S:,.0f}/s", rate,
                      None if rate is None else rate >= TARGET_JOBS_PER_S,
                      baseline=None if rq is None else rq["jobs_rate"], issue=12)]
    return {
        "scenario": "bulk-schedule",
        "title": (f"POST /v1.0-alpha1/jobs, {batch:,} seed-sized jobs a request, for "
                  f"{duration:g} s over {CONNECTIONS} connections, API as the Procfile runs it"),
        "params": {"duration": duration, "batch": batch, "connections": CONNECTIONS},
        "systems": systems,
        "metrics": METRICS,
        "targets": targets,
        "notes": notes,
    }
