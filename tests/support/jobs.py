"""Helpers to build jobs and drive the worker's side of the store from sync tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from unittest import mock

import orjson

from app.jobs.clock import now_ms
from app.jobs.model import RECORD_FIELDS, DeadLetter, Job, Trigger
from app.settings import Settings
from app.store.store import AppRegistration, Store

APP = "job-service"


def record_with(raw: bytes | str | None, field: str, value: Any) -> bytes:
    """The stored job record `raw` with its `field` (a key of RECORD_FIELDS) set to
    `value`: a record edited by hand, or another version's."""
    assert raw is not None
    record = orjson.loads(raw)
    record += [None] * (len(RECORD_FIELDS) - len(record))
    record[RECORD_FIELDS.index(field)] = value
    return orjson.dumps(record)


def make_job(name: str, due_ms: int | None = None, app_id: str = APP, **fields: Any) -> Job:
    """A Job due at `due_ms` (default: now)."""
    now = now_ms()
    due = now if due_ms is None else due_ms
    return Job(app_id=app_id, name=name, first_ms=due, **fields)


def register(settings: Settings, url: str, token: str = "", app_id: str = APP,
             delivery_format: str = "auto") -> Store:
    """Register `url` as the address of `app_id`; returns a Store to schedule with."""
    store = Store(settings)
    store.register_app(AppRegistration(app_id, url, token, delivery_format))
    return store


def dead_letters(store: Store, app_id: str | None = None, limit: int = 100,
                 offset: int = 0) -> list[DeadLetter]:
    """The dead-letter queue, oldest first (app/deadletters.py)."""
    from app.store.deadletters import DeadLetters

    return DeadLetters(store).list_letters(app_id, limit=limit, offset=offset)


class FakeClock:
    """The clock the worker's queue reads, set by the test."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


class QueueDriver:
    """workers.queue.Queue driven synchronously, with the clock under the test's control.

    One event loop (asyncio.Runner) for the Queue's whole life, so its asyncio
    Redis connections stay on the loop they were made on.
    """

    def __init__(self, settings: Settings, start_ms: int | None = None) -> None:
        from workers import queue as queue_mod

        self.clock = FakeClock(now_ms() if start_ms is None else start_ms)
        self._patch = mock.patch.object(queue_mod, "now_ms", self.clock)
        self._patch.start()
        self._runner = asyncio.Runner()
        self._mod = queue_mod
        self.queue = queue_mod.Queue(settings)

    def close(self) -> None:
        try:
            self._runner.run(self.queue.close())
        finally:
            self._runner.close()
            self._patch.stop()

    def claim(self, limit: int = 1000, at: int | None = None) -> list[Trigger]:
        return self.claim_with_head(limit, at)[0]

    def claim_with_head(self, limit: int = 1000,
                        at: int | None = None) -> tuple[list[Trigger], int | None]:
        if at is not None:
            self.clock.ms = at
        return self._runner.run(self.queue.claim(limit))

    def claim_within(self, limit: int, budgets: Any, at: int | None = None,
                     ahead_ms: int = 0) -> Any:
        """Queue.claim_within: a Claim, each app within `budgets` (workers.queue.Budgets)."""
        if at is not None:
            self.clock.ms = at
        return self._runner.run(self.queue.claim_within(limit, budgets, ahead_ms))

    def settle(self, *settlements: Any) -> int:
        settled = self._runner.run(self.queue.settle(list(settlements)))
        if settled.left:
            raise settled.error or AssertionError("left unsettled")
        return len(settled.applied)

    def next(self, trigger: Trigger, at_ms: int | None) -> int:
        return self.settle(self._mod.Settlement(trigger, self._mod.Action.NEXT, at_ms))

    def retry(self, trigger: Trigger, at_ms: int) -> int:
        return self.settle(self._mod.Settlement(trigger, self._mod.Action.RETRY, at_ms))

    def dead(self, trigger: Trigger, at_ms: int | None, error: str = "app answered HTTP 500",
             dead_ms: int | None = None) -> int:
        job = trigger.job
        letter = DeadLetter(
            id=trigger.trigger_id, app_id=job.app_id, name=job.name, sched_ms=trigger.sched_ms,
            attempts=trigger.attempt, error=error,
            dead_ms=self.clock.ms if dead_ms is None else dead_ms,
            record=job.encode().decode(),
        )
        return self.settle(self._mod.Settlement(trigger, self._mod.Action.DEAD, at_ms,
                                                letter.id, letter.encode()))

    def release(self, triggers: Iterable[Trigger]) -> int:
        return self._runner.run(self.queue.release(list(triggers)))

    def stage(self, triggers: Iterable[Trigger]) -> int:
        return self._runner.run(self.queue.stage(list(triggers)))
