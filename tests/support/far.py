"""The far tier's keys read directly (app/store/lua/far.lua), for tests that check what
Redis holds: every job, near or far, after checking the tier's own invariants."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

from app.store import scripts
from app.store.keys import PartitionKeys, as_text

LEAF_MAX = 128  # Redis's *-max-listpack-entries: a leaf holds fewer


def _far_constant(name: str) -> int:
    found = re.search(rf"^local {name} = (\d+)", scripts.source("schedule"), re.MULTILINE)
    assert found, f"far.lua sets no {name}"
    return int(found.group(1))


FAR_PIECE = _far_constant("FAR_PIECE")  # far.lua's: a cut leaf's most
FAR_LEAF_MIN = _far_constant("FAR_LEAF_MIN")


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


@dataclass(frozen=True)
class FarTier:
    """A partition's far tier as its keys hold it."""

    bounds: list[bytes]  # the leaves' low bounds, in order (fartree)
    count: int  # farmeta "count"
    due: dict[str, float]  # job id -> due ms (farwhen:{low}), every leaf
    records: dict[str, bytes]  # job id -> record (farleaf:{low}), every leaf
    sizes: dict[bytes, int]  # low bound -> how many jobs its leaf holds


def far_tier(client: Any, pk: PartitionKeys) -> FarTier:
    """The partition's far tier, after checking its bookkeeping: `count` is the number of
    jobs the leaves hold (the same ids in each leaf's hash and sorted set), each id lies
    between its leaf's low bound and the next leaf's, the first bound is "", `farheads`
    holds each non-empty leaf with its earliest due time and no other, no leaf key lies
    outside the tree, and no far job is also near."""
    meta = {as_text(k): as_text(v) for k, v in client.hgetall(pk.far_meta).items()}
    assert set(meta) <= {"count"}, f"farmeta holds {meta}"
    count = int(meta.get("count", "0"))
    bounds = [_bytes(b) for b in client.zrange(pk.far_tree, 0, -1)]
    assert not bounds or bounds[0] == b"", f"the first leaf's bound is {bounds[0]!r}"
    due: dict[str, float] = {}
    records: dict[str, bytes] = {}
    sizes: dict[bytes, int] = {}
    heads: dict[bytes, float] = {}
    for k, low in enumerate(bounds):
        high = bounds[k + 1] if k + 1 < len(bounds) else None
        held = {_bytes(i): v for i, v in client.hgetall(pk.far_leaf(low)).items()}
        scored = {_bytes(m): s for m, s in client.zrange(pk.far_when(low), 0, -1,
                                                         withscores=True)}
        assert set(held) == set(scored), (
            f"leaf {low!r}: records without a due time {sorted(set(held) - set(scored))[:5]}, "
            f"due times without a record {sorted(set(scored) - set(held))[:5]}")
        outside = [i for i in held if i < low or (high is not None and i >= high)]
        assert not outside, f"leaf {low!r} (to {high!r}) holds ids outside it: {outside[:5]}"
        records.update((as_text(i), v) for i, v in held.items())
        due.update((as_text(i), s) for i, s in scored.items())
        sizes[low] = len(held)
        assert held or (low == b"" and len(bounds) > 1), f"empty leaf {low!r} of {len(bounds)}"
        if scored:
            heads[low] = min(scored.values())
    assert count == len(records) == len(due), (
        f"farmeta count {count}, records {len(records)}, due entries {len(due)}")
    top = {_bytes(m): s for m, s in client.zrange(pk.far_heads, 0, -1, withscores=True)}
    assert top == heads, f"farheads {top} where the leaves' earliest due times are {heads}"
    for kind in ("farleaf", "farwhen"):
        prefix = _bytes(f"{pk.base}:{kind}:")
        stray = [k for k in map(_bytes, client.scan_iter(match=prefix + b"*", count=1000))
                 if k[len(prefix):] not in sizes]
        assert not stray, f"leaf keys outside the tree: {stray[:5]}"
    legacy = [k for pattern in ("farjobs:*", "fardue:*", "fartop", "farscratch", "farmerge")
              for k in client.scan_iter(match=f"{pk.base}:{pattern}", count=1000)]
    assert not legacy, f"scratch keys, or keys of the far tier's first version: {legacy[:5]}"
    if records:
        ids = list(records)
        near_records = client.hmget(pk.jobs, ids)
        near_due = client.zmscore(pk.due, ids)
        both = [jid for jid, rec, score in zip(ids, near_records, near_due, strict=True)
                if rec is not None or score is not None]
        assert not both, f"far jobs also in the near tier: {both[:5]}"
    return FarTier(bounds, count, due, records, sizes)


def far_jobs(client: Any, pk: PartitionKeys) -> tuple[dict[str, bytes], dict[str, float]]:
    """The far tier's records and due times by job id, after far_tier's checks and that
    each leaf is within Redis's compact size."""
    tier = far_tier(client, pk)
    for low, size in tier.sizes.items():
        assert size < LEAF_MAX, f"leaf {low!r} holds {size} jobs"
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
    bounds = [_bytes(b) for b in client.zrange(pk.far_tree, 0, -1)]
    assert bounds, f"{job_id} is stored in neither tier"
    key = pk.far_leaf(bounds[bisect.bisect_right(bounds, job_id.encode()) - 1])
    assert client.hexists(key, job_id), f"{job_id} is stored in neither tier"
    client.hset(key, job_id, record)


# A setting under which a store puts no job in the far tier, as versions before it: for
# tests that write the data an older version left.
NO_FAR_S = 1e9
