"""What the trigger history costs in Redis memory: N recurring jobs, each settled `rounds`
times through the workers' own acknowledge path (workers.queue.Queue.settle, ack.lua),
once with the history off (JOBRUNNER_HISTORY_SIZE=0) and once on, on a private Redis;
the difference in `used_memory`, divided by N, is the history's bytes per job.

    python -m benchmarks.history_memory [--jobs 10000] [--rounds 20] [--size 20]

The entries are what a worker writes for a delivery answered 200 (`--error` adds the
text of a failed one, "app answered HTTP 500"); `scale` only schedules, so it cannot show
this.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.jobrunner_side import APP_ID, make_job
from benchmarks.procs import Procs, RedisServer
from benchmarks.scale_systems import SEED_DATA

BATCH = 1000


async def _settle_rounds(settings: Any, jobs: int, rounds: int, error: str) -> int:
    from app.jobs.clock import now_ms
    from app.store import history
    from workers.queue import Action, Queue, Settlement

    queue = Queue(settings)
    settled = 0
    try:
        for _ in range(rounds):
            done = 0
            while done < jobs:
                triggers, _ = await queue.claim(BATCH)
                if not triggers:
                    await asyncio.sleep(0.002)  # the next occurrence is not due yet
                    continue
                now = now_ms()
                batch = []
                for t in triggers:
                    entry = ""
                    if settings.history_size:
                        entry = history.encode_entry(
                            t.job.rev, t.sched_ms, now, 1, history.RETRYING if error
                            else history.DELIVERED, 500 if error else 200, 1_843, error,
                            settings.history_entry_bytes)
                    batch.append(Settlement(t, Action.NEXT, now, entry=entry))
                settled += len((await queue.settle(batch)).applied)
                done += len(triggers)
    finally:
        await queue.close()
    return settled


def measure(redis: RedisServer, jobs: int, rounds: int, size: int, error: str) -> dict[str, Any]:
    from app.settings import Settings
    from app.store.store import AppRegistration, Store

    redis.flush()
    settings = Settings(redis_url=redis.url, prefix="jrhist", app_id=APP_ID,
                        history_size=size)
    store = Store(settings)
    try:
        store.register_app(AppRegistration(APP_ID, "http://127.0.0.1:9"))
        before = redis.used_memory()
        due = int(time.time() * 1000) - 1
        store.schedule_many(
            (make_job(f"job-{i:07d}", due, SEED_DATA) for i in range(jobs)), chunk=BATCH)
        # make_job builds one-shot jobs; a schedule lets each fire `rounds` times.
        loaded = redis.used_memory()
        settled = asyncio.run(_settle_rounds(settings, jobs, rounds, error))
        after = redis.used_memory()
    finally:
        store.close()
    return {"size": size, "settled": settled, "job_bytes": (loaded - before) / jobs,
            "after_bytes": (after - before) / jobs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=20, help="JOBRUNNER_HISTORY_SIZE when on")
    parser.add_argument("--error", action="store_true",
                        help="entries of failed attempts ('app answered HTTP 500')")
    args = parser.parse_args(argv)
    error = "app answered HTTP 500" if args.error else ""
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp)) as procs:
        redis = RedisServer(procs, Path(tmp) / "redis").start()
        version = redis.version()
        off = measure(redis, args.jobs, args.rounds, 0, error)
        on = measure(redis, args.jobs, args.rounds, args.size, error)
    per_job = on["after_bytes"] - off["after_bytes"]
    print(f"{args.jobs:,} jobs (seed-sized data), {args.rounds} outcomes each "
          f"({'failed' if error else 'delivered'}); redis-server {version}")
    print(f"  job stored:                     {off['job_bytes']:8.0f} B per job")
    print(f"  after the outcomes, history off: {off['after_bytes']:8.0f} B per job")
    print(f"  after the outcomes, history on:  {on['after_bytes']:8.0f} B per job "
          f"(JOBRUNNER_HISTORY_SIZE={args.size})")
    print(f"  the history:                    {per_job:8.0f} B per job, "
          f"{per_job / min(args.rounds, args.size):.0f} B per entry")


if __name__ == "__main__":
    main()
