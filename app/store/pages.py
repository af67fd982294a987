"""Paging over the per-app indexes (app/store/keys.py: `names`, `deadlex`).

Each index orders its members bytewise, so one app's entries (or one name prefix's) are
one ZRANGEBYLEX range: `deadlex` is one ZSET per partition whose members all score 0, the
job index a B-tree of such ZSETs (read with a script, Store.names_in). Reading a page
costs O(log N + page) whatever other apps store. A page token is a position in
that order (the last entry passed), so any well-formed token is a valid place to resume
and costs the same as the first page; a malformed one is refused before Redis is asked.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

# Longest page token accepted: a job name is at most 253 characters (1,012 bytes of
# UTF-8), a dead-letter position holds an id of about that, base64 adds a third.
MAX_TOKEN_CHARS = 4096
# Most index entries read in one ZRANGEBYLEX.
MAX_CHUNK = 1000


class BadPageToken(ValueError):
    """A page token this store did not give (or gave in another query): a 400."""

    def __init__(self, token: str, why: str) -> None:
        shown = token if len(token) <= 40 else token[:40] + "..."
        super().__init__(f"invalid page token {shown!r}: {why}")


def encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(token: str) -> str:
    """The text a token encodes; BadPageToken when it is not one (checked in O(length))."""
    if len(token) > MAX_TOKEN_CHARS:
        raise BadPageToken(token, f"longer than {MAX_TOKEN_CHARS} characters")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        return raw.decode()
    except (binascii.Error, ValueError):
        raise BadPageToken(token, "not a token this API gave") from None


class RangeReader(Protocol):
    """Reads at most `count` members of the index `key` in the ZRANGEBYLEX bounds `low`
    and `high`, on `client` (a pipeline queues it)."""

    def __call__(self, key: str, low: bytes, high: bytes, count: int, client: Any, /) -> Any:
        ...


def zrangebylex(key: str, low: bytes, high: bytes, count: int, client: Any) -> Any:
    """The RangeReader of an index that is one sorted set (`deadlex`)."""
    return client.zrangebylex(key, low, high, start=0, num=count)


def first_in_ranges(redis: Any, keys: Sequence[str], low: bytes, high: bytes,
                    count: int, read: RangeReader = zrangebylex) -> list[bytes]:
    """The first `count` members in [low, high] over all `keys` (one per partition),
    merged in Redis's order: one pipelined read per key."""
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        read(key, low, high, count, pipe)
    found: list[bytes] = [m for members in pipe.execute() for m in members]
    found.sort()
    return found[:count]


def walk_ranges(redis: Any, keys: Sequence[str], low: bytes, high: bytes,
                chunk: int, read: RangeReader = zrangebylex) -> Iterator[tuple[bytes, int]]:
    """(member, index of its key) for every member in [low, high] over all `keys`, in
    Redis's order, read lazily `chunk` at a time per key. A member removed after it was
    read is still yielded; one added behind the walk's position is not."""
    chunk = max(1, min(chunk, MAX_CHUNK))

    def one(index: int, key: str) -> Iterator[tuple[bytes, int]]:
        position = low
        while True:
            members: list[bytes] = read(key, position, high, chunk, redis)
            for member in members:
                yield member, index
            if len(members) < chunk:
                return
            position = b"(" + members[-1]

    yield from heapq.merge(*(one(i, key) for i, key in enumerate(keys)))
