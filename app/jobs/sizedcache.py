"""A least-recently-used cache bounded by the bytes it holds, not by its entries.

The parse caches (schedules, packed protobuf Anys) are keyed by caller input. Bounded by
entries, 4,096 of them could hold 4,096 long strings: gigabytes that stay after the jobs
are gone. Here every entry is charged its size as the caller measures it; entries larger
than `max_item_bytes` are never kept (computing them again costs time in proportion to
their size anyway), and the least recently used go first once `max_bytes` is reached.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# What an entry costs beyond the strings the caller measures: the dict slot, the
# (value, size) pair and the value object (tracemalloc: 385 bytes for a parsed cron
# schedule, 200 for a packed Any beside its strings).
ENTRY_OVERHEAD = 400


def text_size(*texts: str | bytes) -> int:
    """The memory of some strings, as an entry's size."""
    return sum(sys.getsizeof(t) for t in texts) + ENTRY_OVERHEAD


class SizedCache(Generic[K, V]):
    """LRU, thread-safe, at most `max_bytes` in all and `max_item_bytes` per entry."""

    def __init__(self, max_bytes: int, max_item_bytes: int) -> None:
        if not 0 < max_item_bytes <= max_bytes:
            raise ValueError("need 0 < max_item_bytes <= max_bytes")
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: K, value: V, size: int) -> None:
        if size > self.max_item_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    @property
    def bytes(self) -> int:
        """The bytes charged for what is held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
