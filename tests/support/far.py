"""The far tier's keys read directly (app/store/lua/far.lua), for tests that check what
Redis holds: every job, near or far, after checking the tier's own invariants."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from app.store import scripts
from app.store.keys import PartitionKeys

BUCKET_MAX = 128  # Redis's *-max-listpack-entries
# far.lua's: a bucket splits past this many jobs a bucket on average.
FAR_FILL = int(re.search(r"^local FAR_FILL = (\d+)$", scripts.source("schedule"),
                         re.MULTILINE).group(1))  # type: ignore[union-attr]


def bucket_of(job_id: str | bytes, n: int, key: str | bytes = b"") -> int:
    """far.lua's far_bucket: linear hashing over `n` buckets of the SHA-1 of the
    partition's secret `key` (farmeta "key") and the id."""
    raw = job_id.encode() if isinstance(job_id, str) else job_id
    secret = key.encode() if isinstance(key, str) else key
    h = int(hashlib.sha1(secret + raw).hexdigest()[:8], 16)
    low = 1 << (n.bit_length() - 1)
    b = h % low
    return h % (2 * low) if b < n - low else b


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def far_jobs(client: Any, pk: PartitionKeys) -> tuple[dict[str, bytes], dict[str, float]]:
    """The far tier's records and due times by job id, after checking that each job is in
    its bucket, in both of its keys, in neither near key, each bucket compact, the top its
    earliest and the count the jobs'."""
    meta = {_text(k): v for k, v in client.hgetall(pk.far_meta).items()}
    n = int(meta.get("n", 1))
    count = int(meta.get("count", 0))
    key = meta.get("key", b"")
    records: dict[str, bytes] = {}
    due: dict[str, float] = {}
    top = {int(b): s for b, s in client.zrange(pk.far_top, 0, -1, withscores=True)}
    for b in range(n):
        held = {_text(k): v for k, v in client.hgetall(pk.far_jobs(b)).items()}
        scores = {_text(k): s for k, s in client.zrange(pk.far_due(b), 0, -1, withscores=True)}
        assert set(held) == set(scores), f"bucket {b}: records {set(held) ^ set(scores)}"
        assert len(held) <= BUCKET_MAX, f"bucket {b} holds {len(held)}"
        for job_id in held:
            assert bucket_of(job_id, n, key) == b, f"{job_id} is in bucket {b}"
        if scores:
            assert top.get(b) == min(scores.values()), f"bucket {b}: top {top.get(b)}"
        else:
            assert b not in top, f"empty bucket {b} is in the top"
        records.update(held)
        due.update(scores)
    assert set(top) <= set(range(n))
    assert count == len(records), f"count {count}, jobs {len(records)}"
    if records:
        near = client.hmget(pk.jobs, list(records))
        assert near == [None] * len(records), "a far job is in `jobs` too"
        near_due = client.zmscore(pk.due, list(records))
        assert near_due == [None] * len(records), "a far job is in `due` too"
    return records, due


def all_job_ids(client: Any, pk: PartitionKeys) -> set[str]:
    """The ids of every job of the partition, near or far."""
    return {k.decode() for k in client.hkeys(pk.jobs)} | set(far_jobs(client, pk)[0])


def all_due(client: Any, pk: PartitionKeys) -> dict[str, float]:
    """Every due entry of the partition, near or far: job id -> due ms."""
    near = {m.decode(): s for m, s in client.zrange(pk.due, 0, -1, withscores=True)}
    return near | far_jobs(client, pk)[1]


def any_record(client: Any, pk: PartitionKeys, job_id: str) -> bytes | None:
    """The job's stored record, near or far."""
    record: bytes | None = client.hget(pk.jobs, job_id)
    return record if record is not None else far_jobs(client, pk)[0].get(job_id)


def all_records(client: Any, pk: PartitionKeys) -> dict[bytes, bytes]:
    """Every record of the partition, near or far, as HGETALL gives them (bytes ids)."""
    far = {job_id.encode(): record for job_id, record in far_jobs(client, pk)[0].items()}
    near: dict[bytes, bytes] = client.hgetall(pk.jobs)
    return near | far


def set_record(client: Any, pk: PartitionKeys, job_id: str, record: bytes | str) -> None:
    """Overwrite the job's stored record where it is, near or far (a test's way to store
    what another version, or a corrupt write, left)."""
    if client.hexists(pk.jobs, job_id):
        client.hset(pk.jobs, job_id, record)
        return
    n = int(client.hget(pk.far_meta, "n") or 1)
    key = pk.far_jobs(bucket_of(job_id, n, client.hget(pk.far_meta, "key") or b""))
    assert client.hexists(key, job_id), f"{job_id} is stored in neither tier"
    client.hset(key, job_id, record)


# A setting under which a store puts no job in the far tier, as versions before it: for
# tests that write the data an older version left.
NO_FAR_S = 1e9
