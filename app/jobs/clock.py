"""The one clock every due-time comparison uses."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Epoch milliseconds, rounded down.

    Due times are rounded up to whole milliseconds, so `now_ms() >= due` only
    once the real time has reached the due time: a trigger is never early.
    """
    return time.time_ns() // 1_000_000
