"""scale: N pending jobs (default 1,000,000) in Redis; memory per job and claim latency
at N/1000, N/10 and N pending (1k, 100k, 1M).

Memory per job is the `INFO memory` used_memory delta over the bulk loads of pending
jobs (probe jobs excluded) divided by the jobs loaded; jobrunner runs with its trigger
history off (JOBRUNNER_HISTORY_SIZE=0; a pending job has none anyway). For jobrunner, the
result also splits the memory by kind of key (`breakdown`: MEMORY USAGE ... SAMPLES 0 of
each key, summed over partitions, divided by the pending jobs; the probe batches are in
those keys too, 1% of the jobs at 1M). Claim latency is one claim of
a batch of due triggers while everything else is pending far in the future; each
round first adds a batch of due jobs (untimed), then times the claim. For the RQ
baselines the equivalent step is their scheduler moving the due batch to the queue.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm import tqdm

from benchmarks.context import JOBRUNNER, Context
from benchmarks.report import Metric, Target
from benchmarks.scale_systems import SCALE_SYSTEMS, ScaleSystem
from benchmarks.stats import ratio, summarize

DEFAULT_JOBS = 1_000_000
QUICK_JOBS = 2_000
PROBE_BATCH = 100
ROUNDS = 30
QUICK_ROUNDS = 5
CHUNK = 10_000
TARGET_BYTES = 200.0  # issue 12, at 1,000,000 jobs
TARGET_CLAIM_RATIO = 1.5


def levels_for(jobs: int) -> list[int]:
    return sorted({max(1, jobs // 1000), max(1, jobs // 10), jobs})


def level_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def _measure(ctx: Context, system: ScaleSystem, levels: list[int], rounds: int,
             label: str) -> dict[str, Any]:
    ctx.redis.flush()
    system.open()
    try:
        loaded, mem_delta, load_s = 0, 0, 0.0
        claims: dict[str, Any] = {}
        far_ms = int(time.time() * 1000) + 30 * 86_400_000
        with tqdm(total=levels[-1], desc=f"scale {label}", unit="job", disable=None,
                  leave=False, dynamic_ncols=True) as bar:
            for level in levels:
                before = ctx.redis.used_memory()
                t0 = time.perf_counter()
                while loaded < level:
                    step = min(CHUNK, level - loaded)
                    system.load_pending(loaded, step, far_ms)
                    loaded += step
                    bar.update(step)
                load_s += time.perf_counter() - t0
                time.sleep(0.5)  # let an incremental rehash settle
                mem_delta += ctx.redis.used_memory() - before
                lat = [system.claim_probe(level, r, PROBE_BATCH) for r in range(rounds)]
                claims[level_label(level)] = summarize([x * 1000.0 for x in lat])
        breakdown = getattr(system, "breakdown", None)
        per_kind: dict[str, float] = {}
        if breakdown is not None and loaded:
            client = ctx.redis.client()
            try:
                per_kind = {k: v / loaded for k, v in breakdown(client).items()}
                per_kind["all"] = sum(per_kind.values())
            finally:
                client.close()
    finally:
        system.close()
    return {
        "bytes_by_kind": per_kind,
        "pending": loaded,
        "bytes_per_job": mem_delta / loaded if loaded else None,
        "memory_mb": mem_delta / 1e6,
        "load_s": load_s,
        "load_rate": loaded / load_s if load_s > 0 else None,
        "claim_ms": claims,
        "claim_batch": PROBE_BATCH,
    }


def run(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    jobs = opts.jobs or (QUICK_JOBS if opts.quick else DEFAULT_JOBS)
    rounds = QUICK_ROUNDS if opts.quick else ROUNDS
    levels = levels_for(jobs)
    labels = [level_label(n) for n in levels]
    systems: dict[str, Any] = {}
    for name in ctx.system_names():
        system = SCALE_SYSTEMS[name](ctx.redis.url, ctx.receiver.url)
        figures = _measure(ctx, system, levels, rounds, name)
        low, high = figures["claim_ms"][labels[0]]["p50"], figures["claim_ms"][labels[-1]]["p50"]
        figures["claim_growth"] = ratio(high, low)
        systems[name] = figures
    metrics = [
        Metric("Redis memory per pending job (B)", "bytes_per_job", "{:,.0f}", "lower"),
        Metric("Redis memory, all pending (MB)", "memory_mb", "{:,.1f}", "lower"),
        Metric("bulk load rate (jobs/s)", "load_rate", "{:,.0f}", "higher"),
    ]
    for lab in labels:
        metrics += [
            Metric(f"claim {PROBE_BATCH} due, {lab} pending p50 (ms)", f"claim_ms.{lab}.p50",
                   "{:,.2f}", "lower"),
            Metric(f"claim {PROBE_BATCH} due, {lab} pending p99 (ms)", f"claim_ms.{lab}.p99",
                   "{:,.2f}", "lower"),
        ]
    metrics.append(Metric(f"claim p50 at {labels[-1]} / at {labels[0]}", "claim_growth",
                          "{:,.2f}", "lower"))
    kinds = list(systems.get(JOBRUNNER, {}).get("bytes_by_kind", {}))
    metrics += [Metric(f"jobrunner bytes per job in {'all keys' if k == 'all' else f'`{k}` keys'}"
                       " (MEMORY USAGE)", f"bytes_by_kind.{k}", "{:,.1f}") for k in kinds]
    targets = []
    jr = systems.get(JOBRUNNER)
    if jr is not None:
        bpj, growth = jr["bytes_per_job"], jr["claim_growth"]
        full = jobs >= DEFAULT_JOBS  # issue 12's figure is at 1,000,000 pending
        targets += [
            Target(f"jobrunner Redis memory per pending job at {labels[-1]}, history off (B)",
                   f"<= {TARGET_BYTES:g} B at 1M", bpj,
                   None if bpj is None or not full else bpj <= TARGET_BYTES,
                   baseline=systems.get("rq", {}).get("bytes_per_job"), issue=12),
            Target(f"jobrunner claim latency at {labels[-1]} vs {labels[0]}",
                   f"<= {TARGET_CLAIM_RATIO:g}x", growth,
                   None if growth is None else growth <= TARGET_CLAIM_RATIO),
        ]
    return {
        "scenario": "scale",
        "title": f"{jobs:,} pending jobs; claim latency at {', '.join(labels)} pending",
        "params": {"jobs": jobs, "levels": levels, "rounds": rounds, "batch": PROBE_BATCH},
        "systems": systems,
        "metrics": metrics,
        "targets": targets,
    }
