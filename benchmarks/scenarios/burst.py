"""burst: N jobs due at the same instant; drain rate after the due time and lateness."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.context import JOBRUNNER, Context
from benchmarks.deliveries import burst_figures, run_jobs
from benchmarks.report import Metric, Target
from benchmarks.stats import figure, median_round, ratio
from benchmarks.systems import BenchJob, job_name

DEFAULT_JOBS = 20_000
QUICK_JOBS = 200
DEFAULT_WORKERS = 2
# Issue 12: at least 25,000 deliveries/s and 60x rq in the same run, at most 40 us of CPU
# (workers + Redis) per delivery, both cores busy while draining.
TARGET_RATE = 25_000
TARGET_RATIO = 60.0
TARGET_CPU_US = 40.0
TARGET_BUSY_CORES = 1.8

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
    Metric("busy while draining: workers+redis+receiver (cores)", "cost.busy_cores", "{:.2f}"),
    Metric("CPU per delivery: workers + redis (us)", "cost.cpu_us_per_delivery", "{:,.1f}",
           "lower"),
    Metric("CPU per delivery: workers (us)", "cost.workers_cpu_us_per_delivery", "{:,.1f}",
           "lower"),
    Metric("CPU per delivery: redis (us)", "cost.redis_cpu_us_per_delivery", "{:,.1f}", "lower"),
    Metric("redis commands per delivery", "cost.redis_calls_per_delivery", "{:,.2f}", "lower"),
    Metric("redis bytes in per delivery", "cost.redis_net_in_per_delivery", "{:,.0f}", "lower"),
    Metric("redis bytes out per delivery", "cost.redis_net_out_per_delivery", "{:,.0f}",
           "lower"),
    Metric("deliveries/s per redis core", "cost.deliveries_per_redis_core", "{:,.0f}", "higher"),
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
    rounds = opts.rounds or 1
    rows = [(name if protocol == "http" else f"{name}-{protocol}", name, protocol)
            for name in ctx.system_names()
            for protocol in (ctx.options.protocols if name == JOBRUNNER else ("http",))]
    # Rounds: every row in turn, again and again, so that the machine's slow minutes fall
    # on all rows alike; each row shows its median round (by drain rate), whose figures
    # (CPU per delivery...) the targets read.
    measured: dict[str, list[dict[str, Any]]] = {row: [] for row, _, _ in rows}
    for r in range(rounds):
        for i, (row, name, protocol) in enumerate(rows):
            tag = f"burst{i}" if rounds == 1 else f"burst{r}x{i}"
            measured[row].append(burst_once(ctx, name, jobs, workers, tag, protocol))
    systems: dict[str, Any] = {}
    notes: list[str] = []
    for row, figures in measured.items():
        systems[row] = median_round(figures, "drain_rate")
        if rounds > 1:
            notes.append(f"{row}: deliveries/s in each round "
                         + ", ".join(f"{figure(f, 'drain_rate'):,.0f}" for f in figures))
    return {
        "scenario": "burst",
        "title": (f"{jobs:,} jobs due at the same instant, {workers} worker processes each"
                  + (f"; the median of {rounds} rounds" if rounds > 1 else "")),
        "params": {"jobs": jobs, "workers": workers, "protocols": list(ctx.options.protocols),
                   "rounds": rounds},
        "systems": systems,
        "metrics": METRICS,
        "targets": targets(systems, workers),
        "notes": notes,
    }


def targets(systems: dict[str, Any], workers: int) -> list[Target]:
    """Issue 12's burst targets, for each of jobrunner's rows (HTTP, gRPC)."""
    rq = systems.get("rq", {})
    rq_rate = rq.get("drain_rate")
    rq_cost = rq.get("cost", {})
    out = []
    for name, figures in systems.items():
        if not name.startswith(JOBRUNNER):
            continue
        rate = figures.get("drain_rate")
        cost = figures.get("cost", {})
        cpu, busy = cost.get("cpu_us_per_delivery"), cost.get("busy_cores")
        r = ratio(rate, rq_rate)
        out += [
            Target(f"{name} CPU per delivery, workers + redis (us)", f"<= {TARGET_CPU_US:g} us",
                   cpu, None if cpu is None else cpu <= TARGET_CPU_US,
                   baseline=rq_cost.get("cpu_us_per_delivery"), issue=12),
            Target(f"{name} drain rate, {workers} workers (/s)", f">= {TARGET_RATE:,}/s", rate,
                   None if rate is None or math.isnan(rate) else rate >= TARGET_RATE,
                   baseline=rq_rate, issue=12),
            Target(f"{name} / rq drain rate (rq's rate: baseline)", f">= {TARGET_RATIO:g}x", r,
                   None if r is None else r >= TARGET_RATIO, baseline=rq_rate, issue=12),
            Target(f"{name} cores busy while draining (workers+redis+receiver)",
                   f">= {TARGET_BUSY_CORES:g} of 2", busy,
                   None if busy is None else busy >= TARGET_BUSY_CORES,
                   baseline=rq_cost.get("busy_cores"), issue=12),
        ]
    return out

