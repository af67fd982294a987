"""capacity: what one delivery and one schedule cost Redis, and what K Redis Cluster
masters give (issue 12's capacity model).

Per delivery: a burst (20,000 jobs, 2 workers) on the run's Redis; 10,000 on it with 12
partitions (`jobrunner-12p`: the partitions' own cost); then on a private Redis
Cluster of K = 1 and K = 3 masters (benchmarks/cluster.py; JOBRUNNER_PARTITIONS=12, so
the jobs spread over the masters' slots). From Redis's own counters over the drain (the
first due time to the last arrival): commands (INFO commandstats: the calls a Lua script
makes count too), network bytes in and out (INFO stats), CPU (INFO cpu, user + sys), each
divided by the deliveries; deliveries/s per Redis core = 1e6 / Redis us per delivery.
On the cluster: each master's share of the Redis CPU, and the deliveries/s the cluster
would carry once its busiest master's core is full (per core / the busiest share).
Per schedule: a short run of the single-job HTTP route on the run's Redis (the schedule
scenario's row), the same counters divided by the jobs stored.

On 2 cores a cluster is no faster (its masters share the cores with everything else):
the point is each master's cost and how evenly the load spreads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.cluster import BenchCluster
from benchmarks.context import JOBRUNNER, Context
from benchmarks.deliveries import burst_figures, run_jobs
from benchmarks.jobrunner_side import Jobrunner
from benchmarks.procs import RedisTarget
from benchmarks.report import Metric
from benchmarks.scenarios import schedule
from benchmarks.systems import BenchJob, job_name

DEFAULT_JOBS, QUICK_JOBS = 20_000, 300
# A cluster loads ~1,300 jobs/s and drains slower on 2 cores: fewer jobs keep the run short.
CLUSTER_JOBS = 10_000
DEFAULT_WORKERS = 2
MASTERS = (1, 3)
PARTITIONS = 12
SCHEDULE_S, QUICK_SCHEDULE_S = 3.0, 0.5

METRICS = [
    Metric("deliveries", "distinct", "{:,}"),
    Metric("drain rate (/s; 2 cores shared by all)", "drain_rate", "{:,.0f}"),
    Metric("CPU per delivery: workers + redis (us)", "cost.cpu_us_per_delivery", "{:,.1f}"),
    Metric("redis CPU per delivery, all masters (us)", "cost.redis_cpu_us_per_delivery",
           "{:,.1f}"),
    Metric("redis commands per delivery", "cost.redis_calls_per_delivery", "{:,.2f}"),
    Metric("redis bytes in per delivery", "cost.redis_net_in_per_delivery", "{:,.0f}"),
    Metric("redis bytes out per delivery", "cost.redis_net_out_per_delivery", "{:,.0f}"),
    Metric("deliveries/s per redis core", "cost.deliveries_per_redis_core", "{:,.0f}"),
    Metric("each master's share of redis CPU", "spread.shares", "{}"),
    Metric("each master's redis CPU per delivery (us)", "spread.us_per_delivery", "{}"),
    Metric("busiest master's share", "spread.max_share", "{:.0%}"),
    Metric("deliveries/s when the busiest master's core is full", "spread.capacity",
           "{:,.0f}"),
    Metric("schedule: redis commands per job stored", "schedule.calls_per_op", "{:,.2f}"),
    Metric("schedule: redis bytes in per job stored", "schedule.net_in_per_op", "{:,.0f}"),
    Metric("schedule: redis bytes out per job stored", "schedule.net_out_per_op", "{:,.0f}"),
    Metric("schedule: redis CPU per job stored (us)", "schedule.cpu_us_per_op", "{:,.1f}"),
    Metric("schedule: jobs stored/s per redis core", "schedule.ops_per_core", "{:,.0f}"),
]


def _burst(ctx: Context, system: Jobrunner, target: RedisTarget, jobs: int, workers: int,
           tag: str) -> dict[str, Any]:
    def make(due_ms: int) -> list[BenchJob]:
        return [BenchJob(job_name(tag, i, due_ms), due_ms) for i in range(jobs)]

    run = run_jobs(system, ctx.procs, target, ctx.receiver, workers, make, jobs, tag,
                   label=f"capacity {system.name} {tag}", align_to_second=True,
                   stall_s=ctx.stall_s, max_wait_s=60.0 + jobs / 50.0)
    figures = burst_figures(run)
    redis = figures["cost"]["redis"]
    shares = redis["cpu_share"]
    deliveries = max(int(figures["distinct"]), 1)
    top = max(shares.values(), default=float("nan"))
    figures["spread"] = {
        "shares": " / ".join(f"{v:.0%}" for v in shares.values()),
        "us_per_delivery": " / ".join(f"{n['cpu_s'] * 1e6 / deliveries:.1f}"
                                      for n in redis["nodes"].values()),
        "max_share": top,
        "capacity": figures["cost"]["deliveries_per_redis_core"] / top if top > 0 else None,
    }
    return figures


def run(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    jobs = opts.jobs or (QUICK_JOBS if opts.quick else DEFAULT_JOBS)
    workers = opts.workers or DEFAULT_WORKERS
    systems: dict[str, Any] = {}
    one = _burst(ctx, Jobrunner(ctx.redis.url, ctx.receiver.url), ctx.redis, jobs, workers,
                 "cap0")
    sched = schedule._measure(ctx, JOBRUNNER, "granian", "capsched",
                              QUICK_SCHEDULE_S if opts.quick else SCHEDULE_S,
                              schedule.DEFAULT_CONCURRENCY, 10**9)
    one["schedule"] = sched["redis"]
    systems[JOBRUNNER] = one
    # One Redis with the cluster rows' partitions: what the partitions cost, apart from
    # the cluster (its client, its spread).
    systems[f"{JOBRUNNER}-{PARTITIONS}p"] = _burst(
        ctx, Jobrunner(ctx.redis.url, ctx.receiver.url, partitions=PARTITIONS), ctx.redis,
        min(jobs, CLUSTER_JOBS), workers, "capp")
    for k in MASTERS:
        with tempfile.TemporaryDirectory(prefix="jobrunner-bench-cluster-") as tmp:
            cluster = BenchCluster(ctx.procs, Path(tmp), k).start()
            try:
                system = Jobrunner(cluster.url, ctx.receiver.url, cluster_partitions=PARTITIONS,
                                   node_urls=cluster.node_urls)
                systems[f"{JOBRUNNER}-cluster-{k}"] = _burst(
                    ctx, system, cluster, min(jobs, CLUSTER_JOBS), workers, f"cap{k}")
            finally:
                cluster.stop()
    notes = [f"cluster rows: {PARTITIONS} partitions over K masters, no replicas; on 2 "
             "cores the masters share the cores with the workers and the receiver: compare "
             "costs and shares, not rates"]
    return {
        "scenario": "capacity",
        "title": (f"Redis's cost per delivery (a burst of {jobs:,} jobs, {workers} workers, on one "
                  f"Redis; of {min(jobs, CLUSTER_JOBS):,} on a cluster of "
                  f"{' and '.join(map(str, MASTERS))} masters) and per "
                  "schedule (the single-job HTTP route)"),
        "params": {"jobs": jobs, "cluster_jobs": min(jobs, CLUSTER_JOBS), "workers": workers,
                   "masters": list(MASTERS),
                   "partitions": PARTITIONS},
        "systems": systems,
        "metrics": METRICS,
        "targets": [],
        "notes": notes,
    }
