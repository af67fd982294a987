"""Run one system through a set of scheduled jobs and collect what the receiver got.

The system's workers start, the jobs are loaded with a lead time before the first
is due, and the receiver's count is polled (progress bar on stderr) until every job
arrived, or deliveries stalled, or the deadline passed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from benchmarks.cpu import CpuSnapshot, cores_used, snapshot
from benchmarks.procs import Procs, RedisCounters, RedisTarget, counters_delta
from benchmarks.receiver import ReceiverClient, Record
from benchmarks.stats import summarize
from benchmarks.systems import BenchJob, System, due_of

POLL_S = 0.1
SETTLE_S = 0.3  # after the last expected delivery: catch duplicates
LEAD_S = 0.5  # before the first due time, on top of the estimated load time
SNAPSHOT_EARLY_MS = 20  # CPU and Redis counters taken this long before the first due time


@dataclass
class Run:
    system: str
    workers: int
    expected: int
    first_due_ms: int
    last_due_ms: int
    load_s: float
    loaded_at_ms: int
    lead_s: float
    wall_s: float
    receiver_cpu_s: float
    timed_out: bool
    cpu_cores: dict[str, float]  # cores each part used from the first due time to the end
    cpu_s: dict[str, float]  # CPU seconds of each part over the same time
    start_s: float  # starting the workers until they were ready
    stop_s: float  # stopping them
    records: list[Record] = field(default_factory=list)
    foreign: int = 0  # deliveries of other runs' jobs (must be 0)
    # Redis's counters at the first due time and at the end (INFO cpu, commandstats, stats)
    redis_before: dict[str, RedisCounters] = field(default_factory=dict)
    redis_after: dict[str, RedisCounters] = field(default_factory=dict)


def run_jobs(
    system: System,
    procs: Procs,
    redis_server: RedisTarget,
    receiver: ReceiverClient,
    workers: int,
    make_jobs: Callable[[int], Sequence[BenchJob]],
    count: int,
    tag: str,
    label: str,
    align_to_second: bool = False,
    stall_s: float = 30.0,
    max_wait_s: float = 3600.0,
) -> Run:
    """`make_jobs(first_due_ms)` builds the jobs once the lead time is known."""
    redis_server.flush()
    receiver.take()
    t_start = time.perf_counter()
    system.start(procs, workers)
    start_s = time.perf_counter() - t_start
    try:
        lead = LEAD_S + count * system.load_cost_s * 1.5
        first_due = time.time() + lead
        if align_to_second:
            first_due = math.ceil(first_due)
        first_due_ms = int(first_due * 1000)
        jobs = make_jobs(first_due_ms)
        last_due_ms = max(j.due_ms for j in jobs)
        t0 = time.time()
        cpu0 = receiver.stats()["cpu"]
        system.load(jobs)
        loaded_at_ms = int(time.time() * 1000)
        load_s = loaded_at_ms / 1000 - t0
        timed_out, cpu_before, cpu_after, redis_before, redis_after = _wait_for_deliveries(
            procs, redis_server, receiver, count, first_due_ms, last_due_ms, label, stall_s,
            max_wait_s,
        )
        wall = time.time() - t0
        cpu = receiver.stats()["cpu"] - cpu0
    finally:
        t_stop = time.perf_counter()
        system.stop(procs)
        stop_s = time.perf_counter() - t_stop
    records = receiver.take()
    mine = [r for r in records if r.name.startswith(tag + "-")]
    return Run(
        system=system.name, workers=workers, expected=count, first_due_ms=first_due_ms,
        last_due_ms=last_due_ms, load_s=load_s, loaded_at_ms=loaded_at_ms, lead_s=lead, wall_s=wall,
        receiver_cpu_s=cpu, timed_out=timed_out,
        cpu_cores=cores_used(cpu_before, cpu_after), cpu_s=cpu_seconds(cpu_before, cpu_after),
        start_s=start_s, stop_s=stop_s, records=mine, foreign=len(records) - len(mine),
        redis_before=redis_before, redis_after=redis_after,
    )


Counters = dict[str, RedisCounters]


def _wait_for_deliveries(
    procs: Procs, redis_server: RedisTarget, receiver: ReceiverClient, count: int,
    first_due_ms: int, last_due_ms: int, label: str, stall_s: float, max_wait_s: float,
) -> tuple[bool, CpuSnapshot, CpuSnapshot, Counters, Counters]:
    """(gave up before `count` deliveries arrived, CPU at the first due time, CPU at the
    end, Redis's counters at the first due time, at the end)."""
    deadline = time.monotonic() + max_wait_s
    last_seen, last_change = 0, time.monotonic()
    cpu_before: CpuSnapshot | None = None
    redis_before: Counters | None = None
    with tqdm(total=count, desc=label, unit="job", disable=None, leave=False,
              dynamic_ncols=True, smoothing=0.1) as bar:
        while True:
            # The counters just before the due time: a late wake-up of this loop on a busy
            # machine must not miss the start of a short drain (the workers idle until then).
            if cpu_before is None and time.time() * 1000 >= first_due_ms - SNAPSHOT_EARLY_MS:
                redis_before = redis_server.counters()
                cpu_before = snapshot(procs)
            seen = receiver.count()
            if seen != last_seen:
                bar.update(min(seen, count) - min(last_seen, count))
                last_seen, last_change = seen, time.monotonic()
            if seen >= count or _gave_up(deadline, last_change, last_due_ms, stall_s):
                cpu_after = snapshot(procs)
                redis_after = redis_server.counters()
                if seen >= count:
                    time.sleep(SETTLE_S)
                return (seen < count, cpu_before or cpu_after, cpu_after,
                        redis_before or redis_after, redis_after)
            procs.check_alive()
            until_due = (first_due_ms - SNAPSHOT_EARLY_MS) / 1000 - time.time()
            time.sleep(min(POLL_S, until_due) if cpu_before is None and until_due > 0 else POLL_S)


def _gave_up(deadline: float, last_change: float, last_due_ms: int, stall_s: float) -> bool:
    now = time.monotonic()
    past_due = time.time() * 1000 > last_due_ms
    return now > deadline or (past_due and now - last_change > stall_s)


def lateness_ms(records: Sequence[Record]) -> list[float]:
    out = []
    for r in records:
        due = due_of(r.name)
        if due is not None:
            out.append(r.arrived * 1000.0 - due)
    return out


def delivery_counts(run: Run) -> dict[str, Any]:
    names = [r.name for r in run.records]
    distinct = len(set(names))
    header_mismatch = sum(
        1 for r in run.records if r.sched_ms is not None and r.sched_ms != due_of(r.name)
    )
    return {
        "expected": run.expected,
        "delivered": len(names),
        "distinct": distinct,
        "duplicates": len(names) - distinct,
        "lost": run.expected - distinct,
        "foreign": run.foreign,
        "scheduled_header_mismatch": header_mismatch,
        "timed_out": run.timed_out,
        "load_s": run.load_s,
        "lead_s": run.lead_s,
        "start_s": run.start_s,
        "stop_s": run.stop_s,
        # The load overran the due time: lateness then includes part of the load.
        "loaded_after_due": run.loaded_at_ms > run.first_due_ms,
        "receiver_busy": run.receiver_cpu_s / run.wall_s if run.wall_s > 0 else 0.0,
        "cpu_cores": run.cpu_cores,
        "cpu": cpu_summary(run.cpu_cores),
    }


_NOT_SYSTEM = ("redis", "receiver", "harness", "other processes", "machine")


def cpu_summary(cores: dict[str, float]) -> dict[str, float]:
    """Cores used while delivering: the system under test (its workers, scheduler and API
    processes), Redis, the receiver, and processes outside this run."""
    return {
        "system": round(sum(v for k, v in cores.items() if k not in _NOT_SYSTEM), 3),
        "redis": cores.get("redis", 0.0),
        "receiver": cores.get("receiver", 0.0),
        "other": cores.get("other processes", 0.0),
    }


def cpu_seconds(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds each group of our child processes used between the snapshots."""
    return {g: max(0.0, cpu - before.groups.get(g, 0.0)) for g, cpu in after.groups.items()}


def cost_figures(run: Run, deliveries: int) -> dict[str, Any]:
    """What each delivery cost, over the time from the first due time to the last
    arrival: the workers' CPU (their processes' user + system time from /proc) plus
    Redis's (INFO cpu), in microseconds; Redis's commands and network bytes; and the
    cores the workers, Redis and the receiver kept busy meanwhile."""
    redis = counters_delta(run.redis_before, run.redis_after, deliveries)
    workers_s = sum(v for k, v in run.cpu_s.items() if k.endswith("-worker"))
    per = max(deliveries, 1)
    # Cores busy: their CPU seconds over the drain itself (the first due time to the last
    # arrival), not over the snapshots' window, which runs up to a poll longer (idle).
    span = max((r.arrived for r in run.records), default=0.0) - run.first_due_ms / 1000.0
    busy_s = sum(v for k, v in run.cpu_s.items()
                 if k.endswith("-worker") or k.startswith("redis") or k == "receiver")
    return {
        "cpu_us_per_delivery": (workers_s + redis["cpu_s"]) * 1e6 / per,
        "workers_cpu_us_per_delivery": workers_s * 1e6 / per,
        "redis_cpu_us_per_delivery": redis["cpu_us_per_op"],
        "redis_calls_per_delivery": redis["calls_per_op"],
        "redis_net_in_per_delivery": redis["net_in_per_op"],
        "redis_net_out_per_delivery": redis["net_out_per_op"],
        "deliveries_per_redis_core": redis["ops_per_core"],
        # workers + Redis + receiver: on 2 cores, 2.0 is everything
        "busy_cores": busy_s / span if span > 0 else math.nan,
        "redis": redis,
    }


def burst_figures(run: Run) -> dict[str, Any]:
    """Drain rate after the common due time, and lateness percentiles."""
    late = lateness_ms(run.records)
    out = delivery_counts(run)
    if run.records:
        last = max(r.arrived for r in run.records)
        first = min(r.arrived for r in run.records)
        span = last - run.first_due_ms / 1000.0
        out["drain_s"] = span
        out["drain_rate"] = out["distinct"] / span if span > 0 else math.nan
        # From the first delivery on: excludes the wait for the first poll.
        out["drain_rate_from_first"] = (
            (out["distinct"] - 1) / (last - first) if last > first else math.nan
        )
    else:
        out.update(drain_s=math.nan, drain_rate=math.nan, drain_rate_from_first=math.nan)
    out["cost"] = cost_figures(run, out["distinct"])
    out["lateness_ms"] = summarize(late)
    out["early"] = sum(1 for x in late if x < 0)
    return out


def steady_figures(run: Run) -> dict[str, Any]:
    late = lateness_ms(run.records)
    out = delivery_counts(run)
    out["lateness_ms"] = summarize(late)
    out["early"] = sum(1 for x in late if x < 0)
    return out
