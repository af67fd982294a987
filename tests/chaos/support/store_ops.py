"""Jobs in and state out of Redis, for the chaos tests (through app.store.Store)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from app.jobs.model import DeadLetter, FailureKind, FailurePolicy, Job, RunState
from app.store.keys import split_job_id
from app.store.redis_client import UNAVAILABLE
from app.store.store import Store
from tests.chaos.support.ledger import TriggerKey
from tests.chaos.support.receiver import Delivery, Receiver


def one_shot(app_id: str, name: str, due_ms: int, now: int, **fields: Any) -> Job:
    return Job(app_id=app_id, name=name, data={"n": name}, first_ms=due_ms,
               **fields)


def every(app_id: str, name: str, due_ms: int, now: int, interval: str, repeats: int,
          **fields: Any) -> Job:
    return Job(app_id=app_id, name=name, data={"n": name}, schedule=f"@every {interval}",
               repeats=repeats, first_ms=due_ms, **fields)


def constant(interval_ms: int, max_retries: int | None) -> FailurePolicy:
    return FailurePolicy(FailureKind.CONSTANT, interval_ms, max_retries)


DROP = FailurePolicy(FailureKind.DROP, 0, None)


def expected_triggers(jobs: Sequence[Job]) -> dict[str, int]:
    """Per job name, the triggers it must produce (see ledger.py)."""
    return {j.name: (j.repeats or 1) if j.schedule else 1 for j in jobs}


def load(store: Store, jobs: Sequence[Job]) -> float:
    """Store the jobs (pipelined); returns the seconds it took."""
    started = time.monotonic()
    stored = store.schedule_many(jobs, overwrite=False, chunk=2000)
    assert stored == len(jobs), f"stored {stored} of {len(jobs)} jobs"
    return time.monotonic() - started


def counts(store: Store) -> dict[str, int] | None:
    try:
        return store.counts()
    except UNAVAILABLE:
        return None


def wait_settled(store: Store, timeout: float) -> tuple[bool, dict[str, int] | None]:
    """Until no job is left (every trigger finished and acknowledged) or the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = counts(store)
        if last is not None and last["jobs"] == 0 and last["due_index"] == 0:
            return True, last
        time.sleep(0.2)
    return False, last


def run_states(store: Store) -> dict[str, RunState]:
    """job id -> run state, over all partitions."""
    out: dict[str, RunState] = {}
    for pk in store.keys.all_partitions():
        for jid, raw in store.redis.hscan_iter(pk.runs, count=5000):
            out[jid.decode()] = RunState.decode(raw)
    return out


def leases_held_by(store: Store, pid: int) -> set[TriggerKey]:
    """The triggers a worker process holds leases on (its lease tokens start `{pid}-`)."""
    mark = f"{pid}-"
    return {(split_job_id(jid)[1], st.sched) for jid, st in run_states(store).items()
            if st.lease.startswith(mark)}


def dead_letters(store: Store) -> list[DeadLetter]:
    """Every dead letter of every partition (read straight from the `dead` hashes)."""
    return [DeadLetter.decode(raw) for pk in store.keys.all_partitions()
            for raw in store.redis.hvals(pk.dead)]


def leftovers(store: Store, app_id: str = "", limit: int = 20) -> str:
    """A sample of the jobs still stored, with their run state and due score."""
    lines = []
    for pk in store.keys.all_partitions():
        for jid, score in store.redis.zrange(pk.due, 0, limit - 1, withscores=True):
            state = store.redis.hget(pk.runs, jid)
            lines.append(f"{jid.decode()} due={int(score)} state={state!r}")
        lines.append(f"partition {pk.due}: {store.redis.hlen(pk.jobs)} jobs, "
                     f"{store.redis.zcard(pk.due)} in the due index")
        staged = getattr(pk, "staged", None)
        if app_id and staged is not None:
            lines.append(f"  staged for {app_id}: {store.redis.zcard(staged(app_id))}")
    return "\n".join(lines)


def drain(store: Store, receiver: Receiver, settle_timeout: float,
          grace_s: float) -> tuple[bool, dict[str, int] | None, list[Delivery]]:
    """Wait until every job is finished and acknowledged, then `grace_s` more (a
    delivery still in flight, a late duplicate, arrives by then); the records."""
    settled, left = wait_settled(store, settle_timeout)
    time.sleep(grace_s)
    return settled, left, receiver.records()
