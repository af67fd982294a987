"""steady: triggers fall due at a constant rate; lateness and early deliveries.

Without --rate, two rates: 200/s for every system, then 2,000/s for jobrunner alone (the
`jobrunner-2000/s` row; RQ drains a few hundred a second, so it would only fall behind).
The receiver records 2,000/s with room to spare: its ceiling, in the run's header, is
tens of thousands a second, and it stamps each arrival as its bytes come in."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.context import JOBRUNNER, Context
from benchmarks.deliveries import run_jobs, steady_figures
from benchmarks.report import Metric, Target
from benchmarks.systems import BenchJob, job_name

DEFAULT_RATE = 200.0
HIGH_RATE = 2000.0  # issue 12's second rate: jobrunner alone
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
    duration = opts.duration or (QUICK_DURATION if opts.quick else DEFAULT_DURATION)
    workers = opts.workers or DEFAULT_WORKERS
    rows = [(name, opts.rate or DEFAULT_RATE) for name in ctx.system_names()]
    if opts.rate is None and JOBRUNNER in ctx.system_names():
        rows.append((JOBRUNNER, HIGH_RATE))
    systems: dict[str, Any] = {}
    for i, (name, rate) in enumerate(rows):
        count = max(1, int(rate * duration))
        tag = f"steady{i}"

        def make(first_ms: int, tag: str = tag, rate: float = rate,
                 count: int = count) -> list[BenchJob]:
            dues = [first_ms + round(k * 1000.0 / rate) for k in range(count)]
            return [BenchJob(job_name(tag, k, due), due) for k, due in enumerate(dues)]

        run_ = run_jobs(
            ctx.system(name), ctx.procs, ctx.redis, ctx.receiver, workers, make, count, tag,
            label=f"{tag} {name}", stall_s=ctx.stall_s, max_wait_s=duration + 120.0 + count / 50.0,
        )
        row = name if rate == rows[0][1] else f"{name}-{rate:g}/s"
        systems[row] = steady_figures(run_)
        systems[row]["rate"] = rate
    rates = sorted({rate for _, rate in rows}) or [opts.rate or DEFAULT_RATE]
    return {
        "scenario": "steady",
        "title": (f"{' and '.join(f'{r:g}' for r in rates)} triggers/s for {duration:g} s "
                  f"({', '.join(f'{int(r * duration):,}' for r in rates)} jobs), "
                  f"{workers} workers each"),
        "params": {"rate": rates[0], "rates": rates, "duration": duration,
                   "jobs": max(1, int(rates[0] * duration)), "workers": workers},
        "systems": systems,
        "metrics": METRICS,
        "targets": targets(systems),
    }


def targets(systems: dict[str, Any]) -> list[Target]:
    """Issue 12: at 200/s p50 <= 1 ms and p99 <= 2 ms; at 2,000/s p99 <= 5 ms; never early
    (at another --rate, the 200/s bounds)."""
    out = []
    rq = systems.get("rq")  # the baseline, at the first rate only
    for name, figures in systems.items():
        if not name.startswith(JOBRUNNER):
            continue
        late, rate = figures["lateness_ms"], figures["rate"]
        base = rq if rq is not None and rq["rate"] == rate else None
        out.append(Target(f"{name} early deliveries at {rate:g}/s", "0", figures["early"],
                          figures["early"] == 0,
                          baseline=None if base is None else base["early"], issue=12))
        bounds = [("p99", 5.0)] if rate >= HIGH_RATE else [("p50", 1.0), ("p99", 2.0)]
        for q, bound in bounds:
            value = late[q]
            out.append(Target(f"{name} lateness {q} at {rate:g}/s (ms)", f"<= {bound:g} ms",
                              value, None if math.isnan(value) else value <= bound,
                              baseline=None if base is None else base["lateness_ms"][q],
                              issue=12))
    return out
