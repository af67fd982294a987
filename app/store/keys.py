"""Every Redis key name is built here, and nowhere else.

Jobs are spread over `partitions` hash-tagged partitions. All the keys of one
partition share the tag `{N}`, so each Lua script touches a single slot and
runs unchanged on Redis Cluster.

Per partition:
    {prefix}:{N}:due     ZSET  job id -> ms when it next needs a worker
                               (its due time, a retry time, or a lease expiry)
    {prefix}:{N}:jobs    HASH  job id -> job definition (JSON)
    {prefix}:{N}:runs    HASH  job id -> run state "sched|attempt|count|last|lease"
                               (absent until the job is first claimed)
    {prefix}:{N}:dead    HASH  dead-letter id -> dead-letter record (JSON)
    {prefix}:{N}:deadidx ZSET  dead-letter id -> ms it was dead-lettered
    {prefix}:{N}:staged:{app}  ZSET  job id -> due ms of a trigger parked
                               while the app has no live API process
Global (scripts touch one of them at a time):
    {prefix}:apps        HASH  app id -> app registration (JSON)
    {prefix}:alive:{app} STRING with a TTL while the app's API process lives: the
                         binding of its tokens (app_alive.lua), "1" without tokens
    {prefix}:wake        pub/sub channel: "a new job may be due earlier"

A job id is `{app_id}/{name}`: names cannot hold '/', app ids neither.
A dead letter's replay is a one-shot job of its own, `{app_id}/{name}` +
REPLAY_SEP + a suffix: names cannot hold control characters, so it never
meets a user's job, and it lives in the same partition as the job it replays.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

REPLAY_SEP = "\x1f"


def job_id(app_id: str, name: str) -> str:
    return f"{app_id}/{name}"


def replay_job_id(app_id: str, name: str, suffix: str) -> str:
    return f"{app_id}/{name}{REPLAY_SEP}{suffix}"


def split_job_id(jid: str) -> tuple[str, str]:
    """(app id, job name); a replay's id gives the name of the job it replays."""
    app_id, _, name = jid.partition("/")
    return app_id, name.partition(REPLAY_SEP)[0]


def is_replay(jid: str) -> bool:
    return REPLAY_SEP in jid


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of one partition, in the order the Lua scripts take them."""

    due: str
    jobs: str
    runs: str
    dead: str
    deadidx: str

    def all(self) -> list[str]:
        return [self.due, self.jobs, self.runs, self.dead, self.deadidx]

    def staged(self, app_id: str) -> str:
        return f"{self.due.removesuffix(':due')}:staged:{app_id}"


@dataclass(frozen=True)
class Keys:
    prefix: str = "jr"
    partitions: int = 1

    def partition_of(self, jid: str) -> int:
        base = jid.partition(REPLAY_SEP)[0]
        return zlib.crc32(base.encode()) % self.partitions

    def partition(self, index: int) -> PartitionKeys:
        base = f"{self.prefix}:{{{index}}}"
        return PartitionKeys(
            due=f"{base}:due",
            jobs=f"{base}:jobs",
            runs=f"{base}:runs",
            dead=f"{base}:dead",
            deadidx=f"{base}:deadidx",
        )

    def for_job(self, jid: str) -> PartitionKeys:
        return self.partition(self.partition_of(jid))

    def all_partitions(self) -> list[PartitionKeys]:
        return [self.partition(i) for i in range(self.partitions)]

    @property
    def apps(self) -> str:
        return f"{self.prefix}:apps"

    def alive(self, app_id: str) -> str:
        return f"{self.prefix}:alive:{app_id}"

    @property
    def wake_channel(self) -> str:
        return f"{self.prefix}:wake"
