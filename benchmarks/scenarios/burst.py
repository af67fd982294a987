"""burst: N jobs due at the same instant; drain rate after the due time and lateness."""

from __future__ import annotations

from typing import Any

from benchmarks.context import JOBRUNNER, Context
from benchmarks.deliveries import burst_figures, run_jobs
from benchmarks.report import Metric, Target
from benchmarks.stats import ratio
from benchmarks.systems import BenchJob, job_name

DEFAULT_JOBS = 20_000
QUICK_JOBS = 200
DEFAULT_WORKERS = 2
TARGET_RATE = 12_700
TARGET_RATIO = 20.0

METRICS = [
    Metric("drain rate (deliveries/s after due)", "drain_rate", "{:,.0f}", "higher"),
    Metric("drain rate from first delivery (/s)", "drain_rate_from_first", "{:,.0f}", "higher"),
    Metric("time to drain (s)", "drain_s", "{:,.2f}", "lower"),
    Metric("lateness p50 (ms)", "lateness_ms.p50", "{:,.1f}", "lower"),
    Metric("lateness p99 (ms)", "lateness_ms.p99", "{:,.1f}", "lower"),
    Metric("lateness max (ms)", "lateness_ms.max", "{:,.1f}", "lower"),
    Metric("delivered", "distinct", "{:,}"),
    Metric("lost", "lost", "{:,}"),
    Metric("duplicates", "duplicates", "{:,}"),
    Metric("early", "early", "{:,}"),
    Metric("load time (s)", "load_s", "{:,.2f}"),
    Metric("CPU while draining: system (cores)", "cpu.system", "{:.2f}"),
    Metric("CPU while draining: redis (cores)", "cpu.redis", "{:.2f}"),
    Metric("CPU while draining: receiver (cores)", "cpu.receiver", "{:.2f}"),
    Metric("CPU while draining: not this run (cores)", "cpu.other", "{:.2f}"),
]


def burst_once(ctx: Context, name: str, jobs: int, workers: int, tag: str,
               protocol: str = "http") -> dict[str, Any]:
    receiver = ctx.receiver
    if protocol == "http":
        system = ctx.system(name)
    else:  # jobrunner delivering over gRPC (AppCallback.OnJobEvent) to the gRPC receiver
        from benchmarks.jobrunner_side import Jobrunner

        receiver = ctx.grpc_receiver()
        system = Jobrunner(ctx.redis.url, receiver.url, protocol=protocol)

    def make(due_ms: int) -> list[BenchJob]:
        return [BenchJob(job_name(tag, i, due_ms), due_ms) for i in range(jobs)]

    run = run_jobs(
        system, ctx.procs, ctx.redis, receiver, workers, make, jobs, tag,
        label=f"{tag} {system.name} x{workers}", align_to_second=True,
        stall_s=ctx.stall_s, max_wait_s=60.0 + jobs / 50.0,
    )
    figures = burst_figures(run)
    figures["workers"] = workers
    return figures


def run(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    jobs = opts.jobs or (QUICK_JOBS if opts.quick else DEFAULT_JOBS)
    workers = opts.workers or DEFAULT_WORKERS
    runs = [(name, protocol) for name in ctx.system_names()
            for protocol in (ctx.options.protocols if name == JOBRUNNER else ("http",))]
    systems = {
        name if protocol == "http" else f"{name}-{protocol}":
            burst_once(ctx, name, jobs, workers, f"burst{i}", protocol)
        for i, (name, protocol) in enumerate(runs)
    }
    jr = systems.get(JOBRUNNER, {})
    rq = systems.get("rq", {})
    rate = jr.get("drain_rate")
    targets = []
    if JOBRUNNER in systems:
        targets.append(Target(f"jobrunner drain rate, {workers} workers", f">= {TARGET_RATE:,}/s",
                              rate, None if rate is None else rate >= TARGET_RATE))
    if JOBRUNNER in systems and "rq" in systems:
        r = ratio(rate, rq.get("drain_rate"))
        targets.append(Target("jobrunner / rq drain rate", f">= {TARGET_RATIO:g}x", r,
                              None if r is None else r >= TARGET_RATIO))
    return {
        "scenario": "burst",
        "title": f"{jobs:,} jobs due at the same instant, {workers} worker processes each",
        "params": {"jobs": jobs, "workers": workers, "protocols": list(ctx.options.protocols)},
        "systems": systems,
        "metrics": METRICS,
        "targets": targets,
    }
