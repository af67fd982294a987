"""workers: burst throughput with 1, 2 and 4 worker processes."""

from __future__ import annotations

from typing import Any

from benchmarks.context import Context
from benchmarks.report import Metric
from benchmarks.scenarios.burst import DEFAULT_JOBS, QUICK_JOBS, burst_once

WORKER_COUNTS = (1, 2, 4)


def run(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    jobs = opts.jobs or (QUICK_JOBS if opts.quick else DEFAULT_JOBS)
    counts = (opts.workers,) if opts.workers else WORKER_COUNTS
    systems: dict[str, Any] = {}
    for i, name in enumerate(ctx.system_names()):
        figures: dict[str, Any] = {}
        for w in counts:
            figures[f"w{w}"] = burst_once(ctx, name, jobs, w, f"workers{i}w{w}")
        systems[name] = figures
    metrics = []
    for w in counts:
        metrics += [
            Metric(f"drain rate, {w} worker(s) (/s)", f"w{w}.drain_rate", "{:,.0f}", "higher"),
            Metric(f"lateness p99, {w} worker(s) (ms)", f"w{w}.lateness_ms.p99", "{:,.1f}",
                   "lower"),
            Metric(f"lost, {w} worker(s)", f"w{w}.lost", "{:,}"),
            Metric(f"CPU: system, {w} worker(s) (cores)", f"w{w}.cpu.system", "{:.2f}"),
            Metric(f"CPU: not this run, {w} worker(s) (cores)", f"w{w}.cpu.other", "{:.2f}"),
        ]
    return {
        "scenario": "workers",
        "title": f"burst of {jobs:,} jobs with {', '.join(map(str, counts))} worker processes",
        "params": {"jobs": jobs, "workers": list(counts)},
        "systems": systems,
        "metrics": metrics,
        "targets": [],
    }
