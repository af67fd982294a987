"""The one clock every due-time comparison uses.

In a worker it is Redis's clock (its `TIME`), read through this machine's: the worker
measures how far its own clock runs ahead of Redis's (workers/timekeeping.py) and
sets that lead here. All workers so go by one clock, whatever their machines' clocks say:
one whose clock ran 2 s ahead sent every trigger 2 s early, and took over other workers'
leases before they ended. Elsewhere (the API) the lead stays 0: this machine's clock.
"""

from __future__ import annotations

import time

_lead_ns = 0


def set_lead_ns(lead_ns: int) -> None:
    """How far this machine's clock is ahead of the one kept (negative: behind)."""
    global _lead_ns
    _lead_ns = lead_ns


def machine_ns() -> int:
    """Epoch nanoseconds of this machine's clock (what the lead is measured from)."""
    return time.time_ns()


def now_ns() -> int:
    """Epoch nanoseconds of the clock kept."""
    return time.time_ns() - _lead_ns


def now_ms() -> int:
    """Epoch milliseconds, rounded down.

    Due times are rounded up to whole milliseconds, so `now_ms() >= due` only
    once the real time has reached the due time: a trigger is never early.
    """
    return (time.time_ns() - _lead_ns) // 1_000_000
