"""A worker's delivery slots: a global count and a cap per app, so that a slow or hanging
app waits on its own slots while the other apps' triggers keep flowing.

A claim never takes more of an app's triggers than the app has free slots here (its
budget, claim.lua): the rest stay in Redis, set aside, for whichever worker has room for
that app first. So no claimed trigger waits in a worker for a slot.
"""

from __future__ import annotations

from collections import Counter

from workers.queue import Budgets


class Slots:
    def __init__(self, concurrency: int, per_app: int, claim_batch: int) -> None:
        self.concurrency = concurrency
        self.per_app = min(per_app, concurrency)
        self.lookahead = claim_batch
        self.inflight: Counter[str] = Counter()
        self.total = 0
        # Claims come in batches, not one per freed slot: each is a round trip.
        self.refill = max(1, min(claim_batch, concurrency) // 4)
        self._app_refill = max(1, self.per_app // 4)
        # Apps whose due triggers the last claim left for want of room here.
        self._blocked: set[str] = set()

    @property
    def free(self) -> int:
        return self.concurrency - self.total

    def budgets(self) -> Budgets:
        return Budgets(self.per_app, {app: self.per_app - n for app, n in self.inflight.items()},
                       self.lookahead)

    def blocked(self, apps: set[str]) -> None:
        self._blocked = apps

    def take(self, app_id: str) -> None:
        self.inflight[app_id] += 1
        self.total += 1

    def give_back(self, app_id: str) -> bool:
        """Free a slot; True when its app had due triggers left for want of room here and
        now has room for a batch of them: time to claim."""
        self.total -= 1
        left = self.inflight[app_id] - 1
        if left:
            self.inflight[app_id] = left
        else:
            del self.inflight[app_id]
        if app_id in self._blocked and left <= self.per_app - self._app_refill:
            self._blocked.discard(app_id)
            return True
        return False
