"""Every Redis key name is built here, and nowhere else, but for the job index's leaves,
count and scratch set, which app/store/lua/names_index.lua names from the index's top
(`names`) as it finds them inside a script, and the far tier's, which
app/store/lua/far.lua names from the due key: the names below and there must agree.

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
    {prefix}:{N}:held    ZSET  all scores 0, members `{app}/{due ms, 15 digits}/{name}`:
                               due triggers a claim set aside because their app had
                               no room (its budget in that worker, or its rate limit);
                               in lexical order, so one range reads one app's, oldest
                               first (run state lease HELD_LEASE while there)
    {prefix}:{N}:heldapps ZSET app id -> ms its held triggers may next be taken
    {prefix}:{N}:rate    HASH  app id -> token bucket "tokens|ms" of a rate-limited app
    {prefix}:{N}:nametop ZSET  the per-app job index, a B-tree of job ids (not replays)
                               in bytewise order, by app, then name: this key holds each
                               leaf's low bound, all scored 0 (app/store/lua/names_index.lua)
    {prefix}:{N}:nameleaf:{low} ZSET  a leaf: the ids from its low bound to the next one's,
                               at most 128, so Redis keeps it compact (a listpack)
    {prefix}:{N}:appjobs HASH  app id -> how many of its jobs the index holds
    {prefix}:{N}:namescratch ZSET  a bulk schedule's or a removal's ids, for Redis to
                               sort, inside one script (names_index.lua): gone before
                               the script ends
    {prefix}:{N}:fartree ZSET  the far tier, a B-tree of job ids in bytewise order: this key
                               holds each leaf's low bound, all scored 0. Its jobs are
                               first due more than Settings.far_after_s ahead when
                               scheduled, not paused, never claimed; none of them is in
                               `jobs` or `due` (app/store/lua/far.lua, which names these
                               keys from the due key)
    {prefix}:{N}:farleaf:{low} HASH  job id -> record, of a leaf's jobs: the ids from its
                               low bound to the next one's, fewer than 128 (a listpack)
    {prefix}:{N}:farwhen:{low} ZSET  job id -> due ms, of the same jobs
    {prefix}:{N}:farheads ZSET leaf low bound -> its earliest due ms
    {prefix}:{N}:farmeta HASH  "count": the jobs the far tier holds
    {prefix}:{N}:farscratch, farmerge ZSET  a call's ids, and a leaf's with those of the
                               call that go there, for Redis to sort, inside one script
                               (far.lua): gone before the script ends
    {prefix}:{N}:names   ZSET  the index as versions before the B-tree kept it (every id in
                               one sorted set): ensure_indexed moves it and deletes it
    {prefix}:{N}:deadlex ZSET  "{app}/{ms, 13 digits}/{dead-letter id}", scored 0:
                               one app's dead letters, oldest first, as one range
    {prefix}:{N}:paused  HASH  job id -> "{by}|{since ms}|{due ms}" of a paused job
                               (app/store/pauses.py): `by` holds "j" (the job was
                               paused) and/or "a" (its app was); its pending trigger
                               waits here, out of the due index ("" while one is in
                               flight: the worker's settlement fills it in)
    {prefix}:{N}:pausedapps HASH app id -> ms the app was paused (in every partition:
                               schedule.lua pauses the new jobs of a paused app)
    {prefix}:{N}:pausegen HASH app id -> the number of the last pause or resume of the
                               app that reached this partition (app_flag.lua: an older
                               one, overtaken, changes nothing here)
    {prefix}:{N}:indexed STRING set once the job index and `deadlex` hold the data older
                               versions stored without them (store.Store.ensure_indexed):
                               INDEXED_VERSION; "1" from versions whose job index was `names`
    {prefix}:{N}:nows:{job id} SET  the job's "trigger now" one-shots (their job ids)
                               that may be left: delete.lua removes them with the job
                               (a TTL of FIRED_NOW_KEEP_MS from the last one)
    {prefix}:{N}:hist:{job id} LIST  the job's last outcomes, newest first
                               (app/store/history.py): written by ack.lua, deleted
                               with the job by delete.lua; no TTL while the job
                               exists, Settings.history_ttl_s once it is over
Global (scripts touch one of them at a time):
    {prefix}:apps        HASH  app id -> app registration (JSON)
    {prefix}:alive:{app} STRING with a TTL while the app's API process lives: the
                         binding of its tokens (app_alive.lua), "1" without tokens
    {prefix}:wake        pub/sub channel: "a new job may be due earlier"
    {prefix}:pausegen:{app} STRING counts the pauses and resumes of the app (INCR): each
                         one's number (app/store/pauses.py)
    {prefix}:uiended:{app} ZSET  the app's dashboard sessions logged out of (a digest of
                         each one's CSRF token), scored by their login (s): kept while a
                         copy of their cookie could still be in use (app/ui/auth.py)
    {prefix}:uisecret    STRING random bytes, set once: what signs the dashboard's session
                         cookies of an API without DAPR_API_TOKEN (app/ui/auth.py)
The workers' aggregated counters (app/store/stats.py; written once a second by each
worker, never from scripts):
    {prefix}:stats:apps           SET   app ids that have counters
    {prefix}:stats:total:{app}    HASH  counter -> value since the start (no TTL)
    {prefix}:stats:10s:{app}:{n}  HASH  the same, for the 10 s from n*10 s (a TTL)
    {prefix}:stats:1m:{app}:{n}   HASH  the same, for the minute n (a TTL)
    {prefix}:workers              ZSET  worker id -> ms its heartbeat expires
    {prefix}:worker:{id}          STRING with a TTL: the worker's heartbeat (JSON)

A job id is `{app_id}/{name}`: names cannot hold '/', app ids neither.
A dead letter's replay is a one-shot job of its own, `{app_id}/{name}` +
REPLAY_SEP + a suffix: names cannot hold control characters, so it never
meets a user's job, and it lives in the same partition as the job it replays.
A "trigger now" is one too, its suffix starting with FIRED_NOW.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

REPLAY_SEP = "\x1f"


def as_text(value: str | bytes) -> str:
    """A value as Redis returned it (bytes, from a client that does not decode), as text."""
    return value.decode() if isinstance(value, bytes) else value


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


# The suffix of a "trigger now" one-shot (app/store/pauses.py): unlike a dead letter's
# replay, it is dropped undelivered once its job is deleted (workers/worker.py).
FIRED_NOW = "now-"
# Past this many members, trigger.lua drops those of a job's fired-now set that are over,
# of twice as many picked at random; past it still, the trigger-now is refused: a job has
# at most this many waiting to go (each a copy of the job, data and all: an app whose
# receiver is down cannot fill Redis with them). The set goes this long after the job's
# last trigger-now.
FIRED_NOW_PRUNE_AT = 64
FIRED_NOW_KEEP_MS = 7 * 24 * 3600 * 1000


def fired_now_job_id(app_id: str, name: str, suffix: str) -> str:
    return replay_job_id(app_id, name, FIRED_NOW + suffix)


def is_fired_now(jid: str) -> bool:
    return REPLAY_SEP + FIRED_NOW in jid


def parent_job_id(jid: str) -> str:
    """The id of the job a replay or a "trigger now" one-shot belongs to (`jid` itself
    for a job's own)."""
    return jid.partition(REPLAY_SEP)[0]


# -- the per-app indexes (lex ranges of one ZSET per partition) ----------------------
# Redis compares members bytewise; app ids hold no '/' and names are UTF-8, which never
# holds the byte 0xff, so these bounds take exactly one app's (or one prefix's) entries.
_TOP = b"\xff"


def names_range(app_id: str, prefix: str = "", after: str | None = None) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the app's jobs whose name starts with `prefix`, past the name
    `after` when given (a page token)."""
    low = (b"(" + job_id(app_id, after).encode() if after is not None
           else b"[" + job_id(app_id, prefix).encode())
    return low, b"(" + job_id(app_id, prefix).encode() + _TOP


def dead_member(app_id: str, dead_ms: int, letter_id: str) -> str:
    """The entry of a dead letter in `deadlex` (ack.lua, replay.lua and deadletters.lua
    build the same one)."""
    return f"{app_id}/{dead_ms:013d}/{letter_id}"


def dead_range(app_id: str, after: str | None = None,
               through: bytes | None = None) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the app's dead letters past the member `after`, up to the
    member `through` when given."""
    low = b"(" + after.encode() if after is not None else b"[" + f"{app_id}/".encode()
    high = b"[" + through if through is not None else b"(" + f"{app_id}/".encode() + _TOP
    return low, high


def letter_job_name(app_id: str, letter_id: str) -> str | None:
    """The job name in a dead letter's id, `{app}/{name}@{rev}:{ms}` (Trigger.trigger_id);
    None when the id is not one of this app's."""
    if not letter_id.startswith(f"{app_id}/"):
        return None
    return letter_id[len(app_id) + 1:].rpartition("@")[0] or None


# What `indexed` holds once the job index is the B-tree (older versions set "1").
INDEXED_VERSION = "2"


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of one partition, in the order the Lua scripts take them."""

    due: str
    jobs: str
    runs: str
    dead: str
    deadidx: str
    names: str
    deadlex: str

    def all(self) -> list[str]:
        return [self.due, self.jobs, self.runs, self.dead, self.deadidx, self.names,
                self.deadlex, self.paused]

    @property
    def base(self) -> str:
        """`{prefix}:{N}`: what every key of the partition starts with."""
        return self.due.removesuffix(":due")

    @property
    def app_jobs(self) -> str:
        """HASH app id -> how many of its jobs the job index (`names`) holds."""
        return f"{self.base}:appjobs"

    @property
    def legacy_names(self) -> str:
        """The job index as versions before the B-tree kept it (`names` is its top now)."""
        return f"{self.base}:names"

    @property
    def indexed(self) -> str:
        return f"{self.base}:indexed"

    @property
    def far_meta(self) -> str:
        """HASH of the far tier (far.lua): "count" the jobs it holds."""
        return f"{self.base}:farmeta"

    @property
    def far_tree(self) -> str:
        """ZSET of the far tier's leaves' low bounds, scored 0."""
        return f"{self.base}:fartree"

    @property
    def far_heads(self) -> str:
        """ZSET far leaf low bound -> its earliest due ms."""
        return f"{self.base}:farheads"

    def far_leaf(self, low: str | bytes) -> str:
        """HASH job id -> record, of the far jobs of the leaf whose low bound is `low`."""
        return f"{self.base}:farleaf:{as_text(low)}"

    def far_when(self, low: str | bytes) -> str:
        """ZSET job id -> due ms, of the far jobs of the leaf whose low bound is `low`."""
        return f"{self.base}:farwhen:{as_text(low)}"

    def staged(self, app_id: str) -> str:
        return f"{self.base}:staged:{app_id}"

    def fired_now(self, jid: str) -> str:
        """The SET of the "trigger now" one-shots of the job `jid` that may be left, which
        delete.lua removes with it (trigger.lua adds them; members whose one-shot is over
        are pruned there, past FIRED_NOW_PRUNE_AT, and no more are added past it; the set
        expires FIRED_NOW_KEEP_MS after the last one was added)."""
        return f"{self.base}:nows:{parent_job_id(jid)}"

    def history(self, jid: str) -> str:
        """The trigger history of the job `jid`; a replay's outcomes are those of the job
        it replays (app/store/history.py)."""
        return f"{self.base}:hist:{parent_job_id(jid)}"

    @property
    def paused(self) -> str:
        return f"{self.base}:paused"

    @property
    def pausedapps(self) -> str:
        return f"{self.base}:pausedapps"

    @property
    def pausegen(self) -> str:
        return f"{self.base}:pausegen"

    @property
    def held(self) -> str:
        return f"{self.base}:held"

    @property
    def heldapps(self) -> str:
        return f"{self.base}:heldapps"

    @property
    def rate(self) -> str:
        return f"{self.base}:rate"

    def read_keys(self) -> list[str]:
        """The keys of job_read.lua, in its order."""
        return [self.due, self.jobs]

    def claim_keys(self) -> list[str]:
        """The keys of claim.lua, in its order."""
        return [self.due, self.jobs, self.runs, self.held, self.heldapps, self.rate]

    def delete_keys(self, app_id: str, jids: list[str], fired_now: bool = True) -> list[str]:
        """The keys of delete.lua for the jobs `jids` of `app_id`, in its order (the
        histories of the jobs follow, when they are to go too). `fired_now=False`: their
        "trigger now" one-shots stay (`jids` are such one-shots themselves)."""
        return [self.due, self.jobs, self.runs, self.staged(app_id), self.names, self.paused,
                *(self.fired_now(jid) if fired_now else self.never_written for jid in jids)]

    @property
    def never_written(self) -> str:
        """A key of this partition that holds nothing, ever: an empty set for a script."""
        return f"{self.base}:none"


@dataclass(frozen=True)
class Keys:
    prefix: str = "jr"
    partitions: int = 1

    def partition_of(self, jid: str) -> int:
        base = parent_job_id(jid)
        return zlib.crc32(base.encode()) % self.partitions

    def partition(self, index: int) -> PartitionKeys:
        base = f"{self.prefix}:{{{index}}}"
        return PartitionKeys(
            due=f"{base}:due",
            jobs=f"{base}:jobs",
            runs=f"{base}:runs",
            dead=f"{base}:dead",
            deadidx=f"{base}:deadidx",
            names=f"{base}:nametop",
            deadlex=f"{base}:deadlex",
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

    def app_pause_count(self, app_id: str) -> str:
        return f"{self.prefix}:pausegen:{app_id}"

    @property
    def ui_secret(self) -> str:
        return f"{self.prefix}:uisecret"

    def ui_ended(self, app_id: str) -> str:
        return f"{self.prefix}:uiended:{app_id}"

    # -- the workers' aggregated counters (app/store/stats.py) ----------------

    @property
    def stats_apps(self) -> str:
        return f"{self.prefix}:stats:apps"

    def stats_total(self, app_id: str) -> str:
        return f"{self.prefix}:stats:total:{app_id}"

    def stats_slot(self, app_id: str, slot: int) -> str:
        """The app's counters of the 10 seconds from `slot` * 10 s (epoch)."""
        return f"{self.prefix}:stats:10s:{app_id}:{slot}"

    def stats_minute(self, app_id: str, minute: int) -> str:
        """The app's counters of the minute from `minute` * 60 s (epoch)."""
        return f"{self.prefix}:stats:1m:{app_id}:{minute}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"
