"""A worker goes by Redis's clock (app/jobs/clock.py): it reads Redis's `TIME` before its
first claim, then every CLOCK_CHECK_S, and sets its machine's lead over it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from app.jobs.clock import set_lead_ns
from app.store.redis_client import UNAVAILABLE
from workers.queue import Queue

log = logging.getLogger("jobrunner.worker")

# How often a worker measures its clock against Redis's, and past what lead it says so.
CLOCK_CHECK_S = 10.0
CLOCK_WARN_MS = 50
CLOCK_READ_WITHIN_S = 1.0
# A later reading is taken if its round trip (what it may be over the true lead: a busy
# loop's delay) is under this, or twice the quickest this worker has seen (a remote Redis).
CLOCK_ROUND_TRIP_NS = 2_000_000
CLOCK_FAULTS: tuple[type[BaseException], ...] = (*UNAVAILABLE, TimeoutError)


class RedisClock:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.quickest_ns = 10**18  # the least round trip of a reading yet
        self._lead_said_ms = 0  # the lead last said in the log

    async def first(self, stop: asyncio.Event) -> None:
        """Until Redis's clock is read: claiming by this machine's, were it ahead, would
        send triggers early (Redis down or stalled at the start: nothing to claim anyway)."""
        rest, said = 0.05, 0.0
        while not stop.is_set() and not await self.read():
            if time.monotonic() - said > 10.0:
                said = time.monotonic()
                log.warning("cannot read Redis's clock yet; claiming once it can be read")
            await _wait(stop, rest)
            rest = min(rest * 2, 1.0)

    async def keep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait(stop, CLOCK_CHECK_S)
            if not stop.is_set():  # a read as the worker stops would race its connections
                await self.read()

    async def read(self) -> bool:
        """Go by Redis's clock: this machine's, less its lead. False, and the last lead
        stands, when it could not be read, or only slowly."""
        try:
            async with asyncio.timeout(CLOCK_READ_WITHIN_S):  # a Redis down or stalled
                lead_ns, round_trip_ns = await self.queue.clock_reading()
        except CLOCK_FAULTS as exc:
            log.debug("cannot read Redis's clock: %s", exc)
            return False
        if round_trip_ns > max(CLOCK_ROUND_TRIP_NS, 2 * self.quickest_ns):
            return False  # the loop busy (a burst): it would make the worker that late
        self.quickest_ns = min(self.quickest_ns, round_trip_ns)
        set_lead_ns(lead_ns)
        lead_ms = round(lead_ns / 1e6)
        warn = abs(lead_ms) > CLOCK_WARN_MS
        if warn and abs(lead_ms - self._lead_said_ms) > CLOCK_WARN_MS:
            log.warning("this machine's clock is %d ms %s Redis's: the worker goes by Redis's "
                        "(set the clocks right: NTP)", abs(lead_ms),
                        "ahead of" if lead_ms > 0 else "behind")
        self._lead_said_ms = lead_ms if warn else 0
        return True


async def _wait(stop: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout)
