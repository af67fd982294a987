"""steady: triggers fall due at a constant rate; lateness and early deliveries."""

from __future__ import annotations

from typing import Any

from benchmarks.context import JOBRUNNER, Context
from benchmarks.deliveries import run_jobs, steady_figures
from benchmarks.report import Metric, Target
from benchmarks.systems import BenchJob, job_name

DEFAULT_RATE = 200.0
DEFAULT_DURATION = 30.0
QUICK_DURATION = 1.0
DEFAULT_WORKERS = 2

METRICS = [
    Metric("lateness min (ms)", "lateness_ms.min", "{:,.2f}", "lower"),
    Metric("lateness p50 (ms)", "lateness_ms.p50", "{:,.2f}", "lower"),
    Metric("lateness p90 (ms)", "lateness_ms.p90", "{:,.2f}", "lower"),
    Metric("lateness p99 (ms)", "lateness_ms.p99", "{:,.2f}", "lower"),
    Metric("lateness max (ms)", "lateness_ms.max", "{:,.2f}", "lower"),
    Metric("early deliveries", "early", "{:,}"),
    Metric("delivered", "distinct", "{:,}"),
    Metric("lost", "lost", "{:,}"),
    Metric("duplicates", "duplicates", "{:,}"),
    Metric("CPU while delivering: system (cores)", "cpu.system", "{:.2f}"),
    Metric("CPU while delivering: redis (cores)", "cpu.redis", "{:.2f}"),
    Metric("CPU while delivering: receiver (cores)", "cpu.receiver", "{:.2f}"),
    Metric("CPU while delivering: not this run (cores)", "cpu.other", "{:.2f}"),
]


def run(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    rate = opts.rate or DEFAULT_RATE
    duration = opts.duration or (QUICK_DURATION if opts.quick else DEFAULT_DURATION)
    workers = opts.workers or DEFAULT_WORKERS
    count = max(1, int(rate * duration))
    systems: dict[str, Any] = {}
    for i, name in enumerate(ctx.system_names()):
        tag = f"steady{i}"

        def make(first_ms: int, tag: str = tag) -> list[BenchJob]:
            dues = [first_ms + round(k * 1000.0 / rate) for k in range(count)]
            return [BenchJob(job_name(tag, k, due), due) for k, due in enumerate(dues)]

        run_ = run_jobs(
            ctx.system(name), ctx.procs, ctx.redis, ctx.receiver, workers, make, count, tag,
            label=f"{tag} {name}", stall_s=ctx.stall_s, max_wait_s=duration + 120.0 + count / 50.0,
        )
        systems[name] = steady_figures(run_)
    targets = []
    jr = systems.get(JOBRUNNER)
    if jr is not None:
        late = jr["lateness_ms"]
        targets += [
            Target("jobrunner early deliveries", "0", jr["early"], jr["early"] == 0),
            Target("jobrunner lateness p50 (ms)", "<= 2 ms", late["p50"], late["p50"] <= 2.0),
            Target("jobrunner lateness p99 (ms)", "<= 5 ms", late["p99"], late["p99"] <= 5.0),
        ]
    return {
        "scenario": "steady",
        "title": f"{rate:g} triggers/s for {duration:g} s ({count:,} jobs), {workers} workers each",
        "params": {"rate": rate, "duration": duration, "jobs": count, "workers": workers},
        "systems": systems,
        "metrics": METRICS,
        "targets": targets,
    }
