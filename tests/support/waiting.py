"""Wait on a condition with a deadline, never sleep-and-hope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    for result in _polls(condition, timeout, what):
        if result:
            return result
        time.sleep(interval)
    raise AssertionError("unreachable")


async def wait_for_async(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """wait_for inside an event loop: the loop runs while it waits."""
    for result in _polls(condition, timeout, what):
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError("unreachable")


def _polls(condition: Callable[[], T], timeout: float, what: str) -> Iterator[T]:
    """`condition()`, again each time it is asked for, until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not result and time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        yield result
