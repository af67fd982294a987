"""The far tier's keys read directly (app/store/lua/far.lua), for tests that check what
Redis holds: every job, near or far, after checking the tier's own invariants."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class FarTier:
    """A partition's far tier as its keys hold it."""

    n: int  # buckets (farmeta "n", absent: 1)
    count: int  # farmeta "count"
    due: dict[str, float]  # job id -> due ms (fardue:{b}), every bucket
    records: dict[str, bytes]  # job id -> record (farjobs:{b}), every bucket
    sizes: dict[int, tuple[int, int]]  # bucket -> (HLEN farjobs, ZCARD fardue)


def far_tier(client: Any, pk: PartitionKeys) -> FarTier:
    """The partition's far tier, after checking its bookkeeping: `count` is the number of
    jobs each bucket's hash and sorted set hold (the same ids in both), each id is in the
    bucket linear hashing gives it (with farmeta's secret), `fartop` holds each non-empty
    bucket with its earliest due time and no other, no bucket key lies past `n`, and no
    far job is also near."""
    meta = {_text(k): _text(v) for k, v in client.hgetall(pk.far_meta).items()}
    n, count = int(meta.get("n", "1")), int(meta.get("count", "0"))
    assert n >= 1, meta
    due: dict[str, float] = {}
    records: dict[str, bytes] = {}
    sizes: dict[int, tuple[int, int]] = {}
    heads: dict[str, float] = {}
    for b in range(n):
        held = {_text(k): v for k, v in client.hgetall(pk.far_jobs(b)).items()}
        scored = {_text(m): s for m, s in client.zrange(pk.far_due(b), 0, -1, withscores=True)}
        assert set(held) == set(scored), (
            f"bucket {b}: records without a due time {sorted(set(held) - set(scored))[:5]}, "
            f"due times without a record {sorted(set(scored) - set(held))[:5]}")
        misplaced = [jid for jid in held if bucket_of(jid, n, meta.get("key", "")) != b]
        assert not misplaced, f"bucket {b} of {n} holds ids hashed elsewhere: {misplaced[:5]}"
        assert not set(held) & set(records), f"ids in two buckets: {set(held) & set(records)}"
        records.update(held)
        due.update(scored)
        sizes[b] = (len(held), len(scored))
        if scored:
            heads[str(b)] = min(scored.values())
    assert count == len(records) == len(due), (
        f"farmeta count {count}, records {len(records)}, due entries {len(due)}")
    top = {_text(m): s for m, s in client.zrange(pk.far_top, 0, -1, withscores=True)}
    assert top == heads, f"fartop {top} where the buckets' earliest due times are {heads}"
    for kind in ("farjobs", "fardue"):
        stray = [_text(k) for k in client.scan_iter(match=f"{pk.base}:{kind}:*", count=1000)
                 if int(_text(k).rpartition(":")[2]) >= n]
        assert not stray, f"bucket keys past the {n} buckets: {stray}"
    if records:
        ids = list(records)
        near_records = client.hmget(pk.jobs, ids)
        near_due = client.zmscore(pk.due, ids)
        both = [jid for jid, rec, score in zip(ids, near_records, near_due, strict=True)
                if rec is not None or score is not None]
        assert not both, f"far jobs also in the near tier: {both[:5]}"
    return FarTier(n, count, due, records, sizes)


def far_jobs(client: Any, pk: PartitionKeys) -> tuple[dict[str, bytes], dict[str, float]]:
    """The far tier's records and due times by job id, after far_tier's checks and that
    each bucket is within Redis's compact size."""
    tier = far_tier(client, pk)
    for b, (records, entries) in tier.sizes.items():
        assert max(records, entries) <= BUCKET_MAX, f"bucket {b} holds {records} / {entries}"
    return tier.records, tier.due


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
