"""Reading the per-app job index (app/store/lua/names_index.lua) whole, for tests: its ids,
once its shape has been checked."""

from __future__ import annotations

from collections import Counter
from typing import Any

from app.store.keys import PartitionKeys

LEAF_MAX = 128


def leaf_key(pk: PartitionKeys, low: bytes) -> bytes:
    return pk.names.removesuffix(":nametop").encode() + b":nameleaf:" + low


def index_ids(client: Any, pk: PartitionKeys) -> list[str]:
    """Every id of the partition's job index, in order, after checking the B-tree: each
    leaf within its bounds and under LEAF_MAX, every leaf but the first non-empty, no
    leaf without its bound in the top, and each app's count its number of ids."""
    lows: list[bytes] = client.zrange(pk.names, 0, -1)
    assert lows == sorted(lows)
    if lows:
        assert lows[0] == b"", f"the first leaf's bound is {lows[0]!r}"
    ids: list[bytes] = []
    for n, low in enumerate(lows):
        members: list[bytes] = client.zrange(leaf_key(pk, low), 0, -1)
        assert len(members) < LEAF_MAX, f"leaf {low!r} holds {len(members)}"
        assert members or n == 0, f"leaf {low!r} is empty"
        if members and max(map(len, members)) <= 64:  # zset-max-listpack-value
            encoding = client.object("encoding", leaf_key(pk, low))
            assert encoding in (b"listpack", b"ziplist"), f"leaf {low!r} is a {encoding!r}"
        assert all(m >= low for m in members), f"leaf {low!r} holds ids below its bound"
        if n + 1 < len(lows):
            assert all(m < lows[n + 1] for m in members), f"leaf {low!r} holds the next one's"
        ids += members
    leaves = {k for k in client.scan_iter(match=leaf_key(pk, b"*"), count=1000)}
    assert leaves <= {leaf_key(pk, low) for low in lows}, "a leaf outside the top"
    texts = [i.decode() for i in ids]
    counts = Counter(t.partition("/")[0] for t in texts)
    stored = {a.decode(): int(n) for a, n in client.hgetall(pk.app_jobs).items()}
    assert stored == dict(counts), f"app counts {stored} for ids {dict(counts)}"
    return texts


def drop_index(client: Any, pk: PartitionKeys) -> None:
    """Delete the partition's job index, as data stored before it was there lacks it."""
    leaves = [leaf_key(pk, low) for low in client.zrange(pk.names, 0, -1)]
    client.delete(pk.names, pk.app_jobs, *leaves)
