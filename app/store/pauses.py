"""Pause, resume and trigger now (README, "Pause, resume and catch-up").

A paused job keeps its schedule and fires nothing: its pending trigger leaves the due
index for the partition's `paused` hash (pause.lua), where no claim looks, so the
workers' claim path knows nothing of pauses. A trigger in flight when its job is paused
is finished by its worker, whose settlement puts the next due time into `paused` instead
of the due index (ack.lua). Resuming puts the trigger back (resume.lua) at the time the
job's catch-up policy gives what fell due meanwhile (app.jobs.schedule.catch_up_due,
with no grace: those occurrences were missed).

An app is paused by a flag in every partition (`pausedapps`: schedule.lua pauses the
app's new jobs as they come) and by pausing each of its jobs, found through the per-app
index `names`, partition by partition, in batches of BATCH: a round trip per batch, and
Redis is never held longer than one batch. A job is paused by its app, by itself, or by
both (`by` holds "a" and/or "j"); resuming one leaves the other standing. A pause and a
resume of the app at once (two operators, a retried request) end as the one that started
later says, in every partition: each takes a number first (an INCR), then sets or clears
each partition's flag before its walk there, unless a higher number got there first
(app_flag.lua), and the scripts of a walk change nothing in a partition another holds.

Trigger now stores a one-shot job of its own beside the job (the kind of job id a
dead-letter replay has, marked: keys.fired_now_job_id), due at once, with the job's data
and policies, and an idempotency id of its own; the schedule, the run state and a pause
of the job are not touched. Once the job is deleted, a worker drops it undelivered.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from app.jobs import errors
from app.jobs.clock import now_ms
from app.jobs.model import CatchUp, Job, RunState
from app.jobs.schedule import catch_up_due
from app.store.keys import (
    FIRED_NOW_KEEP_MS,
    FIRED_NOW_PRUNE_AT,
    PartitionKeys,
    fired_now_job_id,
    job_id,
    names_range,
    split_job_id,
)

if TYPE_CHECKING:  # store.py reads paused entries with Paused
    from app.store.store import Store

# Jobs paused or resumed per script call of an app's pause or resume.
BATCH = 500
# Reads and tries of one job whose paused entry or record changed under a resume or a
# trigger (a settlement or an overwrite at that very moment).
TRIES = 5

BY_JOB, BY_APP = "j", "a"

# resume.lua's group: job id, its paused entry as read, its due ms once resumed, run state.
_Group = tuple[str, str | bytes, str, str]


@dataclass(frozen=True)
class Paused:
    """A paused job's entry in `paused`: who paused it, since when, and when its pending
    trigger is due (None: one is in flight, or none is left)."""

    by: str
    since_ms: int
    due_ms: int | None

    @classmethod
    def decode(cls, raw: bytes | str) -> Paused:
        text = raw.decode() if isinstance(raw, bytes) else raw
        by, since, due = text.split("|", 2)
        return cls(by, int(since or 0), int(due) if due else None)


@dataclass(frozen=True)
class Fired:
    """A trigger fired now: its idempotency id and its due time."""

    trigger_id: str
    due_ms: int


class Pauses:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis
        self.keys = store.keys
        self.settings = store.settings

    # -- one job --------------------------------------------------------------

    def pause_job(self, app_id: str, name: str) -> bool:
        """Pause the job; False when there is no such job."""
        jid = job_id(app_id, name)
        pk = self.keys.for_job(jid)
        return self._readable(pk, app_id, name) and self._pause(pk, app_id, [jid], BY_JOB) == 1

    def resume_job(self, app_id: str, name: str) -> bool:
        """Lift the job's own pause (a pause of its app stays); False when there is no
        such job."""
        jid = job_id(app_id, name)
        pk = self.keys.for_job(jid)
        if not self._readable(pk, app_id, name):
            return False
        self._resume(pk, [jid], BY_JOB)
        return True

    def _readable(self, pk: PartitionKeys, app_id: str, name: str) -> bool:
        """Whether the job exists; its error when this version cannot read it, before
        anything is done (an answer that cannot show the job would say the act failed)."""
        record = self.store.record(pk, job_id(app_id, name))
        if record is not None:
            Job.decode(app_id, name, record)
        return record is not None

    def trigger(self, app_id: str, name: str) -> Fired | None:
        """Fire the job once now, beside its schedule; None when there is no such job."""
        jid = job_id(app_id, name)
        pk = self.keys.for_job(jid)
        for attempt in range(1, TRIES + 1):
            record = self.store.record(pk, jid)
            if record is None:
                return None
            job = Job.decode(app_id, name, record)
            due = now_ms()
            fired = Fired(f"{jid}@{job.rev}:{due}:now-{secrets.token_hex(3)}", due)
            once = replace(job, schedule=None, repeats=None, ttl=None, expires_ms=None,
                           due_time=None, first_ms=due, catch_up=CatchUp.COALESCE,
                           replay_of=fired.trigger_id)
            once_id = fired_now_job_id(app_id, name, secrets.token_hex(4))
            stored = int(self.store.script("trigger")(
                keys=[pk.due, pk.jobs, pk.fired_now(jid)],
                # The last try, of a job overwritten again and again, fires the job as it
                # was read a moment ago (raising answered 500): the one-shot is as it
                # would have been had the trigger come first.
                args=[jid, record if attempt < TRIES else "", once_id, once.encode(), due,
                      self.keys.wake_channel, FIRED_NOW_PRUNE_AT, FIRED_NOW_KEEP_MS]))
            if stored == 1:
                return fired
            if stored == 0:
                return None
            if stored == -2:
                raise errors.too_many_fired_now(name, FIRED_NOW_PRUNE_AT)
        raise AssertionError("unreachable: trigger.lua's last try stores the job or finds none")

    # -- the app --------------------------------------------------------------

    def pause_app(self, app_id: str) -> int:
        """Pause the app and each of its jobs; returns how many jobs it has."""
        self.store.ensure_indexed()
        now = now_ms()
        number = self._number(app_id)
        paused = 0
        for pk in self.keys.all_partitions():
            # First the flag: a job scheduled from now on is paused as it is stored.
            if self._flag(pk, app_id, number, "pause", now):
                for ids in self._app_jobs(pk, app_id):
                    paused += self._pause(pk, app_id, ids, BY_APP, now, number)
            else:  # a later resume holds the partition: the app's jobs there count all the same
                paused += int(self.store.names_count(pk.names, app_id))
        return paused

    def resume_app(self, app_id: str) -> int:
        """Lift the app's pause; returns how many jobs are no longer paused (a job paused
        by itself stays)."""
        self.store.ensure_indexed()
        number = self._number(app_id)
        resumed = 0
        for pk in self.keys.all_partitions():
            if self._flag(pk, app_id, number, "resume", now_ms()):
                for ids in self._app_jobs(pk, app_id):
                    resumed += self._resume(pk, ids, BY_APP, number)
        return resumed

    def _number(self, app_id: str) -> str:
        """This pause's or resume's number: the later of two at once has the higher, and
        it decides every partition (app_flag.lua). Above any a partition holds: a count
        behind them (lost in a failover, deleted) made every later one change nothing."""
        pipe = self.redis.pipeline(transaction=False)
        for pk in self.keys.all_partitions():
            pipe.hget(pk.pausegen, app_id)
        held = max((int(n) for n in pipe.execute() if n is not None), default=0)
        count = self.keys.app_pause_count(app_id)
        number = int(self.redis.incr(count))
        if number <= held:
            number = int(self.redis.incrby(count, held - number + 1))
        return str(number)

    def _flag(self, pk: PartitionKeys, app_id: str, number: str, what: str, now: int) -> bool:
        return bool(int(self.store.script("app_flag")(
            keys=[pk.pausedapps, pk.pausegen], args=[app_id, number, what, now])))

    def app_paused_since(self, app_id: str) -> int | None:
        """When the app was paused; None when it is not."""
        raw = self.redis.hget(self.keys.partition(0).pausedapps, app_id)
        return None if raw is None else int(raw)

    # -- the scripts ----------------------------------------------------------

    def _pause(self, pk: PartitionKeys, app_id: str, ids: list[str], by: str,
               now: int | None = None, number: str = "") -> int:
        return int(self.store.script("pause")(
            keys=[pk.due, pk.jobs, pk.runs, pk.paused, pk.staged(app_id), pk.pausegen],
            args=[now_ms() if now is None else now, by, app_id, number, *ids]))

    def _resume(self, pk: PartitionKeys, ids: list[str], by: str, number: str = "") -> int:
        """Resume `ids` (of one partition) as each one's catch-up policy says; those whose
        entries change meanwhile are read and planned again. Returns how many are no
        longer paused."""
        resumed = 0
        for _ in range(TRIES - 1):
            if not ids:
                return resumed
            pipe = self.redis.pipeline(transaction=False)
            pipe.hmget(pk.paused, ids)
            pipe.hmget(pk.jobs, ids)
            pipe.hmget(pk.runs, ids)
            entries, records, states = pipe.execute()
            now = now_ms()
            groups: list[_Group] = []
            for jid, entry, record, state in zip(ids, entries, records, states, strict=True):
                if entry is None or record is None:
                    continue  # not paused, or gone
                due, run = self._plan(jid, record, Paused.decode(entry), state, now)
                groups.append((jid, entry, due, run))
            if not groups:
                return resumed
            done, ids = self._resume_call(pk, by, number, groups)
            resumed += done
        if not ids:
            return resumed
        # Kept changing (overwritten again and again): resumed as their entries stand, at
        # their own due times. Raising left an app's later jobs paused by a resume that
        # had cleared its flag, and answered 500.
        done, _ = self._resume_call(pk, by, number, [(jid, "*", "*", "") for jid in ids])
        return resumed + done

    def _resume_call(self, pk: PartitionKeys, by: str, number: str,
                     groups: list[_Group]) -> tuple[int, list[str]]:
        """resume.lua on `groups`: (how many are no longer paused, the ids whose entries
        changed since they were read)."""
        keep = (str(int(self.settings.history_ttl_s * 1000))
                if self.settings.history_size else "")
        histories = [pk.history(jid) for jid, _, _, _ in groups] if keep else []
        done, changed = self.store.script("resume")(
            keys=[pk.due, pk.jobs, pk.runs, pk.paused, pk.names, pk.pausegen, *histories],
            args=[by, self.keys.wake_channel, keep, split_job_id(groups[0][0])[0], number,
                  *(a for group in groups for a in group)])
        return int(done), [c.decode() if isinstance(c, bytes) else c for c in changed]

    def _plan(self, jid: str, record: bytes, paused: Paused, raw_state: bytes | None,
              now: int) -> tuple[str, str]:
        """resume.lua's due time and run state for one job, should this resume lift its
        last pause."""
        if paused.due_ms is None:
            return "", ""  # in flight (its settlement re-queues it) or nothing pending
        try:
            state = None if raw_state is None else RunState.decode(raw_state)
            if state is not None and state.attempt:
                return str(paused.due_ms), ""  # a retry: its attempts go on, no catch-up
            app_id, _, name = jid.partition("/")
            job = Job.decode(app_id, name, record)
            count = 0 if state is None else state.count
            target = catch_up_due(job.schedule, job.due_time is not None, paused.due_ms,
                                  count, job.repeats, job.expires_ms, now, job.catch_up,
                                  self.settings.max_catch_up, grace_ms=0)
        except Exception:  # a job this version cannot read, or whose fields it cannot use:
            # no catch-up to work out, its trigger back at its own time (raising here left
            # the rest of an app's jobs paused by a resume that read as done)
            return str(paused.due_ms), ""
        if target is None:
            return "end", ""
        if target == paused.due_ms or state is None:
            return str(target), ""
        # Passed over: the trigger now due is a later one, not yet fired.
        return str(target), RunState(target, 0, state.count, state.last).encode()

    def _app_jobs(self, pk: PartitionKeys, app_id: str) -> Iterator[list[str]]:
        """The app's job ids in this partition, BATCH at a time, in name order."""
        low, high = names_range(app_id)
        while True:
            batch = self.store.names_in(pk.names, low, high, BATCH)
            if not batch:
                return
            ids = [m.decode() if isinstance(m, bytes) else m for m in batch]
            yield ids
            if len(ids) < BATCH:
                return
            low = b"(" + ids[-1].encode()
