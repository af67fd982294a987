"""A worker's delivery slots: a global count and a cap per app, so that a slow or hanging
app waits on its own slots while the other apps' triggers keep flowing.

A claim takes of an app at most what its slots here can hold, plus a queue (`prefetch`):
those wait here, in claim order, for a slot of their own app, and start the moment one
frees, without waiting for the next claim's round trip. The next claim of the app goes
out while three slots' worth still wait. A busy worker's event loop answers a claim only
after a few rounds of finished deliveries, up to the app's slots each: with a queue as
long as the slots, a fast app's deliveries all finished before the claim that refills
them came back, and the worker stood idle with slots free (the 20,000-job burst: its
queue was empty most of the time; four times the slots keep it filled). An app whose
triggers wait here longer than SLOW_WAIT_S is slow: for SLOW_FOR_S its queue is only as
long as its slots, so that what waits does not outwait its lease. A waiting trigger
holds no slot of the worker's, so no other app waits for it, and it waits only for its
own app's deliveries; one that waited so long that its lease could run out before its
delivery ends is given back (Worker._deliver). The rest of the app's
due triggers stay in Redis, for whichever worker has room for that app first (claim.lua).
"""

from __future__ import annotations

import collections
import time
from collections import Counter

from app.jobs.model import Trigger
from workers.queue import Budgets

SLOW_WAIT_S = 1.0
SLOW_FOR_S = 30.0


class Slots:
    def __init__(self, concurrency: int, per_app: int, claim_batch: int) -> None:
        self.concurrency = concurrency
        self.per_app = min(per_app, concurrency)
        self.prefetch = 4 * self.per_app  # of a fast app; a slow one's: per_app
        # Set aside in one claim, at most: bounds the work of one call (claims repeat until
        # another app's triggers are reached).
        self.set_aside = claim_batch
        self.inflight: Counter[str] = Counter()
        self.total = 0
        self.waiting: dict[str, collections.deque[tuple[Trigger, float]]] = {}
        # Claims come in batches, not one per freed slot: each is a round trip.
        self.refill = max(1, min(claim_batch, concurrency) // 4)
        self._app_refill = self.per_app  # claim per_app at a time
        # Apps whose due triggers the last claim left for want of room here.
        self._blocked: set[str] = set()
        self._slow: dict[str, float] = {}  # app -> until when it counts as slow (monotonic)

    @property
    def free(self) -> int:
        return self.concurrency - self.total

    def _held(self, app_id: str) -> int:
        queue = self.waiting.get(app_id)
        return self.inflight[app_id] + (len(queue) if queue else 0)

    def _room(self, app_id: str, now: float) -> int:
        """How many of the app's triggers this worker may hold, delivering or waiting."""
        slow = self._slow.get(app_id)
        if slow is not None:
            if slow > now:
                return 2 * self.per_app
            del self._slow[app_id]
        return self.per_app + self.prefetch

    def budgets(self) -> Budgets:
        now = time.monotonic()
        apps = {app: self._room(app, now) - self._held(app)
                for app in set(self.inflight) | set(self.waiting)}
        return Budgets(self.per_app + self.prefetch, apps, self.set_aside)

    def blocked(self, apps: set[str]) -> None:
        self._blocked = apps

    def admit(self, trigger: Trigger, now: float) -> bool:
        """True: deliver it now (its slot is taken). False: it waits for its app's slot."""
        app_id = trigger.job.app_id
        if self.inflight[app_id] < self.per_app:
            self._take(app_id)
            return True
        self.waiting.setdefault(app_id, collections.deque()).append((trigger, now))
        return False

    def _take(self, app_id: str) -> None:
        self.inflight[app_id] += 1
        self.total += 1

    def give_back(self, app_id: str, start_next: bool = True
                  ) -> tuple[tuple[Trigger, float] | None, bool]:
        """Free a slot. Returns the app's next waiting trigger, its slot taken, with when it
        was admitted (None: none waits, or not `start_next`); and True when the app has due
        triggers left for want of room here and now has room for a batch: time to claim."""
        self.total -= 1
        left = self.inflight[app_id] - 1
        if left:
            self.inflight[app_id] = left
        else:
            del self.inflight[app_id]
        nxt = None
        now = time.monotonic()
        queue = self.waiting.get(app_id)
        if queue and start_next:
            nxt = queue.popleft()
            if not queue:
                del self.waiting[app_id]
            self._take(app_id)
            if now - nxt[1] > SLOW_WAIT_S:
                self._slow[app_id] = now + SLOW_FOR_S
        claim = (app_id in self._blocked
                 and self._held(app_id) <= self._room(app_id, now) - self._app_refill)
        if claim:
            self._blocked.discard(app_id)
        return nxt, claim

    def drain(self) -> list[Trigger]:
        """Every waiting trigger, waiting no more (the worker stops: they are given back)."""
        out = [t for queue in self.waiting.values() for t, _ in queue]
        self.waiting.clear()
        return out
