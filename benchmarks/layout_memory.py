"""What a compact storage layout costs in Redis memory per pending job, beside what the
store costs today: the evidence behind the far tier (app/store/lua/far.lua), measured here
as the store writes it, against the bound of the layout it approximates. Today the job
index is a B-tree (app/store/lua/names_index.lua), and jobs scheduled more than
Settings.far_after_s ahead (these are, a day ahead) are kept in the far tier's leaves.

    python -m benchmarks.layout_memory [--jobs 1000000]

Today's layout is loaded through the store itself (Store.schedule_many, history off), as
the `scale` scenario loads it. The candidate is loaded by hand, with no engine behind it:
the same job ids, each record as the store writes it (a JSON array of its values, 59
bytes, within Redis's `hash-max-listpack-value` of 64), in three kinds of small keys Redis
keeps as listpacks (at most 128 entries each, `*-max-listpack-entries`):
  - the records in hashes bucketed by the id's CRC-32 (about 100 ids a bucket);
  - the due index and the per-app name index as the leaves of a B-tree each: sorted sets
    of at most 128 entries, split in two when full, with one sorted set over the leaves'
    first entries to find a leaf. The ids go in in random order, so leaves are as full as
    random inserts leave them.
"""

from __future__ import annotations

import argparse
import bisect
import random
import tempfile
import time
import zlib
from pathlib import Path

from benchmarks.jobrunner_side import make_job
from benchmarks.procs import Procs, RedisServer
from benchmarks.scale_systems import SEED_DATA, seed_name

LEAF_MAX = 128  # Redis's zset-max-listpack-entries
PER_BUCKET = 100  # below hash-max-listpack-entries (128), with room for uneven buckets
CHUNK = 1000


def leaves(keys: list[str]) -> list[list[str]]:
    """The leaves a B-tree ends with after inserting `keys` in their order."""
    lows: list[str] = [""]
    out: list[list[str]] = [[]]
    for key in keys:
        i = bisect.bisect_right(lows, key) - 1
        leaf = out[i]
        bisect.insort(leaf, key)
        if len(leaf) > LEAF_MAX:
            half = len(leaf) // 2
            lows.insert(i + 1, leaf[half])
            out.insert(i + 1, leaf[half:])
            del leaf[half:]
    return out


def today(redis: RedisServer, jobs: int, due_ms: int) -> float:
    from app.settings import Settings
    from app.store.store import Store

    redis.flush()
    before = redis.used_memory()
    store = Store(Settings(redis_url=redis.url, prefix="jrlay", history_size=0))
    try:
        store.schedule_many((make_job(seed_name(i), due_ms, SEED_DATA) for i in range(jobs)),
                            chunk=CHUNK)
    finally:
        store.close()
    return (redis.used_memory() - before) / jobs


def candidate(redis: RedisServer, jobs: int, due_ms: int) -> dict[str, float]:
    """Bytes per job of each kind of key of the candidate layout."""
    redis.flush()
    client = redis.client()
    ids = [f"{make_job(seed_name(i), due_ms, SEED_DATA).app_id}/{seed_name(i)}"
           for i in range(jobs)]
    record = make_job(seed_name(0), due_ms, SEED_DATA).encode()  # already the array
    random.Random(1).shuffle(ids)
    buckets = max(1, jobs // PER_BUCKET)
    sizes: dict[str, float] = {"record_bytes": len(record)}
    used = redis.used_memory()
    pipe = client.pipeline(transaction=False)
    for n, job_id in enumerate(ids, 1):
        pipe.hset(f"c:jobs:{zlib.crc32(job_id.encode()) % buckets}", job_id, record)
        if n % CHUNK == 0:
            pipe.execute()
    pipe.execute()
    sizes["jobs"], used = (redis.used_memory() - used) / jobs, redis.used_memory()
    # The due index's order is (due ms, id): a fixed-width ms first makes it a string order.
    for kind, keys in (("due", [f"{due_ms:015d}{i}" for i in ids]), ("names", ids)):
        for n, leaf in enumerate(leaves(keys)):
            members = ({k[15:]: due_ms for k in leaf} if kind == "due"
                       else dict.fromkeys(leaf, 0))
            pipe.zadd(f"c:{kind}:{n}", members)
            pipe.zadd(f"c:{kind}:top", {leaf[0]: 0})
            if n % 100 == 0:
                pipe.execute()
        pipe.execute()
        sizes[kind], used = (redis.used_memory() - used) / jobs, redis.used_memory()
        sizes[f"{kind}_encoding"] = 1.0 if client.object("encoding", f"c:{kind}:0") in (
            b"listpack", b"ziplist") else 0.0
    client.close()
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    due_ms = int(time.time() * 1000) + 86_400_000
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp)) as procs:
        redis = RedisServer(procs, Path(tmp) / "redis").start()
        version = redis.version()
        now = today(redis, args.jobs, due_ms)
        new = candidate(redis, args.jobs, due_ms)
    total = new["jobs"] + new["due"] + new["names"]
    compact = "listpack" if new["due_encoding"] and new["names_encoding"] else "NOT listpack"
    print(f"{args.jobs:,} pending jobs (seed-sized data), redis-server {version}")
    print(f"  today (the far tier's leaves, the job index's leaves): {now:6.1f} B per job")
    print(f"  candidate ({compact}, a {new['record_bytes']:.0f}-byte record): {total:6.1f} B "
          f"per job (records {new['jobs']:.1f}, due {new['due']:.1f}, names "
          f"{new['names']:.1f})")


if __name__ == "__main__":
    main()
