"""One master of the cluster away (failing over): its partitions wait, the others go on.

Redis not answering for a partition is simulated at the worker's script calls (a master
killed for real is tests/cluster/test_failover.py, which reports how late the other
partitions' triggers were: 4-9 s before these changes, 1-2 s after, on 2 cores)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
import redis

from app.jobs.clock import now_ms
from app.settings import Settings
from app.store.keys import Keys, job_id
from tests.support.jobs import APP, make_job, register
from tests.support.receiver import Delivery, Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from workers.queue import PARTITION_REST_MIN_S, Budgets, Queue

pytestmark = pytest.mark.usefixtures("reap_workers")


def _names_in(settings: Settings, partition: int, count: int, prefix: str) -> list[str]:
    keys = Keys(settings.prefix, settings.partitions)
    names = (f"{prefix}-{i}" for i in range(100_000))
    return [n for n in names if keys.partition_of(job_id(APP, n)) == partition][:count]


def _others(settings: Settings, partition: int, prefix: str) -> list[str]:
    """One job name on each partition but `partition`."""
    return [_names_in(settings, p, 1, prefix)[0]
            for p in range(settings.partitions) if p != partition]


def _name(d: Delivery) -> str:
    return d.path.rsplit("/", 1)[-1]


def test_while_one_partition_cannot_be_settled_the_others_are_claimed_and_delivered(
        csettings: Settings, receiver: Receiver) -> None:
    """A delivery's outcome cannot be written (its partition's master is away): the worker
    claims nothing more from that partition, as a claim would take back the trigger once
    its lease ran out and deliver it again, but goes on with the others. (Any settlement
    that failed stopped every claim until it went in.) Once the partition answers, the
    outcome goes in and every trigger has been delivered once."""
    settings = csettings.with_(lease_s=60.0)
    store = register(settings, receiver.url)
    down_part = 3
    [first] = _names_in(settings, down_part, 1, "first")
    answer = threading.Event()
    down = threading.Event()

    def responder(d: Delivery) -> int:
        if _name(d) == first:
            answer.wait(30)
        return 200

    receiver.responder = responder
    with ThreadWorker(settings) as w:
        queue = w.worker.queue
        script = queue._script
        marker = f":{{{down_part}}}:"

        failed: list[str] = []

        async def away(name: str, keys: list[str], args: list[Any]) -> Any:
            if down.is_set() and marker in keys[0]:
                failed.append(name)
                raise redis.ConnectionError(f"partition {down_part}'s master is away (test)")
            return await script(name, keys, args)

        queue._script = away  # type: ignore[method-assign]
        store.schedule(make_job(first, now_ms()))
        wait_for(lambda: len(receiver.received()) == 1, 10, what="the first delivery out")
        down.set()
        answer.set()  # its outcome cannot be written
        wait_for(lambda: "ack" in failed, 10, what="the outcome not written")
        others = _others(settings, down_part, "other")
        store.schedule_many(make_job(n, now_ms()) for n in others)
        wait_for(lambda: {_name(d) for d in receiver.received()} >= set(others), 15,
                 what="the other partitions' jobs delivered while one is away")
        assert store.get(APP, first) is not None  # its outcome still waits
        down.clear()
        wait_for(lambda: store.get(APP, first) is None, 15, what="the outcome written at last")
    delivered = [_name(d) for d in receiver.received()]
    assert sorted(delivered) == sorted([first, *others])  # each once


def test_a_partition_that_does_not_answer_rests_while_the_others_are_claimed(
        csettings: Settings) -> None:
    """A claim meets a partition Redis does not answer for: the other partitions' triggers
    are claimed (no error: that made the worker back off), the partition is not asked again
    until its rest is over (each try at a dead master cost redis-py's retries, 0.2-0.6 s, on
    the claim loop), the claim's `earliest` is the rest's end, and after it the partition's
    triggers are claimed."""
    down_part = 5
    [waiting] = _names_in(csettings, down_part, 1, "waiting")
    others = _others(csettings, down_part, "ready")
    store = register(csettings, "http://127.0.0.1:9")
    store.schedule_many(make_job(n, now_ms() - 1000) for n in [waiting, *others])
    budgets = Budgets(100, {}, 100)

    async def scenario() -> None:
        queue = Queue(csettings)
        script = queue._script
        tries: list[int] = []
        marker = f":{{{down_part}}}:"

        async def away(name: str, keys: list[str], args: list[Any]) -> Any:
            if marker in keys[0]:
                tries.append(now_ms())
                if len(tries) == 1:
                    raise redis.ConnectionError("away (test)")
            return await script(name, keys, args)

        queue._script = away  # type: ignore[method-assign]
        try:
            first = await queue.claim_within(100, budgets)
            assert sorted(t.job.name for t in first.triggers) == sorted(others)
            assert first.earliest is not None
            assert 0 < first.earliest - tries[0] <= PARTITION_REST_MIN_S * 1000 + 50
            again = await queue.claim_within(100, budgets)  # within the rest: not asked
            assert again.triggers == [] and len(tries) == 1
            wait_s = (first.earliest - now_ms()) / 1000 + 0.01
            await asyncio.sleep(max(wait_s, 0))  # the rest's end, as the worker sleeps
            after = await queue.claim_within(100, budgets)
            assert [t.job.name for t in after.triggers] == [waiting] and len(tries) == 2
        finally:
            await queue.close()

    asyncio.run(scenario())


def test_a_partition_that_keeps_failing_is_warned_of_once(
        csettings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Every partition fails, rest after rest: one warning for each as its rests start, not
    one for each try (up to one a second for each partition, for the whole outage)."""
    register(csettings, "http://127.0.0.1:9")
    budgets = Budgets(10, {}, 10)

    async def scenario() -> None:
        queue = Queue(csettings)
        await queue.load_apps(None)

        async def away(name: str, keys: list[str], args: list[Any]) -> Any:
            raise redis.ConnectionError("away (test)")

        queue._script = away  # type: ignore[method-assign]
        try:
            for _ in range(3):
                with pytest.raises(redis.ConnectionError):
                    await queue.claim_within(10, budgets)
                # Each rest over: the next claim tries every partition again.
                ends = max(r.until for r in queue._rests.values())
                await asyncio.sleep(max(ends - time.monotonic(), 0) + 0.01)
        finally:
            await queue.close()

    with caplog.at_level(logging.DEBUG, logger="jobrunner.worker"):
        asyncio.run(scenario())
    tries = [r for r in caplog.records if "for partition" in r.getMessage()]
    warned = [r for r in tries if r.levelno == logging.WARNING]
    assert len(tries) == 3 * csettings.partitions
    assert len(warned) == csettings.partitions
