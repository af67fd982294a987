"""schedule: HTTP schedule requests/s against the API as the Procfile runs it (gunicorn),
from a closed-loop load generator that reports its own CPU use. Every request schedules
a new seed-sized job an hour ahead. The baselines serve the same route with Flask under
the same gunicorn options, scheduling through RQ / rq-scheduler."""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.context import JOBRUNNER, Context
from benchmarks.cpu import cores_used, snapshot
from benchmarks.jobrunner_side import APP_ID, wait_http_ok, worker_env
from benchmarks.loadgen import run_load
from benchmarks.procfile import venv_path_env, web_command
from benchmarks.procs import free_port
from benchmarks.report import Metric, Target
from benchmarks.systems import rfc3339_ms

DEFAULT_DURATION = 10.0
QUICK_DURATION = 1.0
DEFAULT_CONCURRENCY = 32
TARGET_RATE = 3000.0

METRICS = [
    Metric("schedule requests/s", "rate", "{:,.0f}", "higher"),
    Metric("latency p50 (ms)", "latency_ms.p50", "{:,.2f}", "lower"),
    Metric("latency p90 (ms)", "latency_ms.p90", "{:,.2f}", "lower"),
    Metric("latency p99 (ms)", "latency_ms.p99", "{:,.2f}", "lower"),
    Metric("requests", "requests", "{:,}"),
    Metric("non-2xx answers", "failed", "{:,}"),
    Metric("jobs stored", "stored", "{:,}"),
    Metric("CPU: API under gunicorn (cores)", "cpu.api", "{:.2f}"),
    Metric("CPU: redis (cores)", "cpu.redis", "{:.2f}"),
    Metric("CPU: load generator (cores)", "cpu.generator", "{:.2f}"),
    Metric("CPU: not this run (cores)", "cpu.other", "{:.2f}"),
]


def _stored(ctx: Context, name: str) -> int:
    client = ctx.redis.client()
    try:
        if name == JOBRUNNER:
            return sum(int(client.hlen(k)) for k in client.scan_iter("*:jobs", count=1000))
        if name == "rq":
            return int(client.zcard("rq:scheduled:bench"))
        return int(client.zcard("rq:scheduler:scheduled_jobs"))
    finally:
        client.close()


def serve(ctx: Context, name: str, port: int, grpc_port: int = 0) -> None:
    """The API (jobrunner's, or a baseline's) on `port`; jobrunner's gRPC API on
    `grpc_port`, or none (0)."""
    env = worker_env(ctx.redis.url, ctx.receiver.url)
    env.update({"PORT": str(port), "APP_ID": APP_ID, "DAPR_HTTP_PORT": str(port),
                "DAPR_GRPC_PORT": str(grpc_port),
                "PATH": venv_path_env(os.environ.get("PATH", "")), "BENCH_RQ_KIND": name})
    target = None if name == JOBRUNNER else "benchmarks.rq_api:create_app()"
    ctx.procs.start(f"api-{name}", web_command(target), env=env)
    wait_http_ok(ctx.procs, port, "/healthz", 60.0, f"the {name} API under gunicorn")


def run(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    duration = opts.duration or (QUICK_DURATION if opts.quick else DEFAULT_DURATION)
    concurrency = opts.concurrency or DEFAULT_CONCURRENCY
    count = opts.jobs or 10**9
    systems: dict[str, Any] = {}
    for i, name in enumerate(ctx.system_names()):
        ctx.redis.flush()
        port = free_port()
        serve(ctx, name, port)
        try:
            due = rfc3339_ms(int(time.time() * 1000) + 3_600_000)
            before = snapshot(ctx.procs)
            load = run_load(port, "schedule", count, duration, concurrency, core=None,
                            prefix=f"sched{i}", due_time=due, timeout=duration + 120.0,
                            label=f"schedule {name}")
            cores = cores_used(before, snapshot(ctx.procs))
        finally:
            ctx.procs.stop_all_named(f"api-{name}")
        ok = int(load["ok"])  # type: ignore[call-overload]
        seconds = float(load["seconds"])  # type: ignore[arg-type]
        load["failed"] = int(load["requests"]) - ok  # type: ignore[call-overload]
        load["rate"] = ok / seconds if seconds > 0 else 0.0
        load["generator_busy"] = float(load["cpu_s"]) / seconds if seconds > 0 else 0.0  # type: ignore[arg-type]
        load["stored"] = _stored(ctx, name)
        generator = load["generator_busy"]
        load["cpu_cores"] = cores
        load["cpu"] = {
            "api": cores.get(f"api-{name}", 0.0),
            "redis": cores.get("redis", 0.0),
            "generator": generator,
            # The generator is a child of ours but not in a Procs group: not "other".
            "other": max(0.0, cores.get("other processes", 0.0) - generator),  # type: ignore[operator]
        }
        systems[name] = load
    targets = []
    jr = systems.get(JOBRUNNER)
    if jr is not None:
        targets.append(Target("jobrunner schedule requests/s", f">= {TARGET_RATE:,.0f}",
                              jr["rate"], jr["rate"] >= TARGET_RATE))
    return {
        "scenario": "schedule",
        "title": (f"POST /v1.0-alpha1/jobs/<name> for {duration:g} s, {concurrency} connections, "
                  "API under gunicorn as in the Procfile"),
        "params": {"duration": duration, "concurrency": concurrency},
        "systems": systems,
        "metrics": METRICS,
        "targets": targets,
    }
