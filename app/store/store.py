"""The job store on Redis, as the API and the tools use it (synchronous).

Every multi-key change is one Lua script on one partition (see app/lua/).
The worker's hot path (claim, acknowledge, release) lives in
workers/queue.py and uses the same scripts and keys.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from app.jobs import errors
from app.jobs.durations import format_ms
from app.jobs.errors import ApiError, JobrunnerError
from app.jobs.model import HELD_LEASE, Job, RunState, TriggerStatus
from app.jobs.validation import job_to_api, validate_name
from app.settings import Settings
from app.store import pages, scripts
from app.store.keys import (
    INDEXED_VERSION,
    Keys,
    PartitionKeys,
    as_text,
    dead_range,
    job_id,
    names_range,
    split_job_id,
)
from app.store.pauses import BY_APP, BY_JOB, Paused
from app.store.redis_client import REFUSES_WRITES, UNAVAILABLE, read_together, sync_client
from app.store.redis_wait import NotReplicated, mark_read_only

if TYPE_CHECKING:  # only the API's processes use one (app/api/fast_schedule.py, app/grpc)
    from app.store.loop_redis import LoopRedis

# Jobs deleted by one delete.lua call of delete_prefix; entries one reindex.lua step of
# the one-time rebuild looks at; staged triggers one unstage.lua call puts back.
DELETE_BATCH = 500
REINDEX_STEP = 1000
UNSTAGE_BATCH = 1000


class JobExists(JobrunnerError):
    """A job of that name exists and overwrite was not asked for."""


@dataclass(frozen=True)
class JobView:
    """A stored job with where its current trigger stands."""

    job: Job
    status: TriggerStatus
    next_ms: int | None  # due time of the current (or next) trigger
    attempt: int  # attempts made on the current trigger
    count: int  # triggers finished so far
    last_ms: int | None = None  # due time of the last finished trigger
    paused: bool = False  # the job itself is paused (app/store/pauses.py)
    app_paused: bool = False  # its app is paused
    paused_ms: int | None = None  # since when it fires nothing (either pause)

    def to_api(self, *, dapr_compat: bool = False,
               max_data_bytes: int | None = None) -> dict[str, Any]:
        """The GET answer: the definition (job_to_api), then, beyond Dapr's shape, where
        the job stands."""
        body = job_to_api(self.job, dapr_compat=dapr_compat, max_data_bytes=max_data_bytes)
        body["status"] = self.status.value
        body["nextTriggerTime"] = rfc3339(self.next_ms)
        body["lastTriggerTime"] = rfc3339(self.last_ms)
        body["expiryTime"] = rfc3339(self.job.expires_ms)  # from ttl; null: never
        body["triggerCount"] = self.count
        body["attempt"] = self.attempt
        # Only when paused (app/store/pauses.py): false would be every other job's answer.
        if self.paused:
            body["paused"] = True
        if self.app_paused:
            body["appPaused"] = True
        if self.paused or self.app_paused:
            body["pausedTime"] = rfc3339(self.paused_ms)
        return body


def rfc3339(ms: int | None) -> str | None:
    """An epoch-ms time as the API answers it (null: none)."""
    return None if ms is None else format_ms(ms)


@dataclass(frozen=True)
class AppRegistration:
    app_id: str
    url: str
    token: str = ""
    delivery_format: str = "auto"
    protocol: str = "http"  # Settings.app_protocol: how workers deliver (http or grpc)
    # Settings.app_rate_limit: most deliveries a second to the app, over all workers; 0: none.
    rate: float = 0.0

    def encode(self, seen_ms: int | None = None) -> bytes:
        record: dict[str, Any] = {"url": self.url, "token": self.token,
                                  "format": self.delivery_format, "protocol": self.protocol}
        if self.rate:
            record["rate"] = self.rate
        if seen_ms is not None:
            record["seen"] = seen_ms  # when an API process last renewed it (forget_gone_apps)
        return orjson.dumps(record)

    @classmethod
    def decode(cls, app_id: str, raw: bytes | str) -> AppRegistration:
        r = orjson.loads(raw)
        return cls(app_id, r["url"], r.get("token", ""), r.get("format", "auto"),
                   r.get("protocol", "http"), float(r.get("rate", 0.0)))


# The binding of an app served without tokens (also what older versions marked apps with).
UNBOUND = "1"


def app_binding(app_id: str, api_token: str, app_token: str) -> str:
    """What binds an app's registration to its API processes: a digest of their tokens
    (DAPR_API_TOKEN, APP_API_TOKEN), never the tokens; UNBOUND when neither is set."""
    if not api_token and not app_token:
        return UNBOUND
    material = "\0".join(("jobrunner-app-binding", app_id, api_token, app_token))
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()[:32]


class AppClaimed(JobrunnerError):
    """A live API process with other tokens serves the app: registering would take its
    deliveries."""

    def __init__(self, app_id: str, ttl_s: float | None = None) -> None:
        expiry = f"within {ttl_s:g} s" if ttl_s else "after JOBRUNNER_APP_TTL"
        super().__init__(
            f"app {app_id!r} is served by a live API process with other tokens "
            "(DAPR_API_TOKEN, APP_API_TOKEN): this one would take its deliveries, so it is "
            "refused. Give both the same tokens, or stop the other one (its registration "
            f"then expires {expiry}) and start this one again")
        self.app_id = app_id


class Store:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.redis = client if client is not None else sync_client(settings)
        self._scripts = {name: self.redis.register_script(scripts.source(name))
                         for name in scripts.SCRIPT_NAMES}
        for name in scripts.READ_ONLY:
            mark_read_only(scripts.source(name))
        self._indexed = False  # ensure_indexed has run
        self._ui_secret: bytes | None = None  # as read last (ui_secret)
        # The jobs an app may hold in each partition (schedule.lua's ARGV[7]): its share of
        # JOBRUNNER_APP_MAX_JOBS, rounded down (so never more than it in all), 1 at least;
        # "": no bound.
        cap = settings.app_max_jobs
        self._jobs_share = str(max(1, cap // settings.partitions)) if cap else ""
        # A new job first due more than this many ms ahead goes to the far tier (far.lua).
        self._far_after = str(round(settings.far_after_s * 1000))

    def close(self) -> None:
        self.redis.close()

    def script(self, name: str) -> Any:
        return self._scripts[name]

    def ping(self) -> bool:
        """Whether Redis answers; one that refuses writes does (MISCONF refuses PING too)."""
        try:
            return bool(self.redis.ping())
        except REFUSES_WRITES:
            return True

    # -- jobs ---------------------------------------------------------------

    def schedule(self, job: Job, overwrite: bool = False, run: RunState | None = None) -> bool:
        """Store `job`; raise JobExists unless `overwrite`. True when it is now the earliest due.

        `run`: the run state to start from, for a job put back where it stood (its
        trigger count and last trigger: app/jobs/restore.py); None for a new job."""
        keys, args = self.schedule_call(job, overwrite, run)
        result = self._scripts["schedule"](keys=keys, args=args)
        if result == 0:
            raise JobExists(job.name)
        if result == -1:
            raise self._over_limit(job.name)
        return bool(result == 2)

    def schedule_call(self, job: Job, overwrite: bool = False, run: RunState | None = None,
                      ) -> tuple[list[str], list[str | bytes | int]]:
        """The KEYS and ARGV of `schedule`'s schedule.lua call (also sent by the API's
        event-loop path, app/api/fast_schedule.py, as an EVALSHA of script("schedule"))."""
        jid = job_id(job.app_id, job.name)
        pk = self.keys.for_job(jid)
        return ([pk.due, pk.jobs, pk.runs, pk.staged(job.app_id), pk.names, pk.paused,
                 pk.pausedapps],
                [jid, job.encode(), job.first_ms, "1" if overwrite else "0",
                 self.keys.wake_channel, "" if run is None else run.encode(),
                 self._jobs_share, self._far_after])

    def _over_limit(self, name: str) -> ApiError:
        """A new job past the app's JOBRUNNER_APP_MAX_JOBS (the scripts' -1)."""
        return errors.app_job_limit(name, self.settings.app_max_jobs, self.settings.partitions)

    async def schedule_on_loop(self, client: LoopRedis, job: Job, overwrite: bool = False,
                               run: RunState | None = None) -> bool:
        """`schedule`'s script call sent on an event loop's connection (the API's, see
        app/store/loop_redis.py): whether it stored the job. False when the job exists, the
        app holds as many as it may, or Redis answered with an error (a script it has
        forgotten...): the caller's synchronous path does it all again and answers. Raises
        loop_redis.Unavailable."""
        keys, args = self.schedule_call(job, overwrite, run)
        result = await client.evalsha(self._scripts["schedule"].sha, keys, args)
        return bool(result == 1 or result == 2)  # 0: the job exists

    def schedule_many(self, jobs: Iterable[Job], overwrite: bool = True, chunk: int = 1000) -> int:
        """Bulk load, pipelined; returns how many were stored (existing ones skipped
        unless `overwrite`, new ones past the app's JOBRUNNER_APP_MAX_JOBS refused)."""
        stored = 0
        pipe = self.redis.pipeline(transaction=False)
        pending = 0
        script = self._scripts["schedule"]
        for job in jobs:
            keys, args = self.schedule_call(job, overwrite)
            script(keys=keys, args=args, client=pipe)
            pending += 1
            if pending >= chunk:
                stored += sum(1 for r in pipe.execute() if r in (1, 2))
                pending = 0
        if pending:
            stored += sum(1 for r in pipe.execute() if r in (1, 2))
        return stored

    def schedule_batch(self, app_id: str,
                       entries: Sequence[tuple[str, bytes, int, bool, str]],
                       ) -> list[bytes | ApiError | None]:
        """Store many jobs of the app `app_id`, each as `schedule` stores it, one after
        another in the order given (a name given twice meets its own earlier entry).

        `entries`: (name, record (Job.encode), first due ms, overwrite, run state
        (RunState.encode) or ""). Per entry: None when stored; the stored record when the
        job exists and overwrite is off (nothing changed); the ApiError of a new job the
        app may not hold (JOBRUNNER_APP_MAX_JOBS). One schedule_many.lua call per
        partition (on Redis Cluster each is a slot of its own), all in one round trip."""
        if not entries:
            return []
        jids = [job_id(app_id, entry[0]) for entry in entries]
        groups: dict[int, list[int]] = {}
        if self.keys.partitions == 1:  # the default: no crc32 per job
            groups[0] = list(range(len(entries)))
        else:
            for n, jid in enumerate(jids):
                groups.setdefault(self.keys.partition_of(jid), []).append(n)
        script = self._scripts["schedule_many"]
        calls: list[tuple[list[str], list[Any]]] = []
        for partition, members in groups.items():
            pk = self.keys.partition(partition)
            lines: list[bytes] = []
            for n in members:  # four lines a job (schedule_many.lua)
                _, record, first_ms, overwrite, run = entries[n]
                lines += (jids[n].encode(), record, b"%d" % first_ms,
                          (b"1" if overwrite else b"0") + run.encode())
            blob = b"\n".join(lines)
            if blob.count(b"\n") != len(lines) - 1:
                raise ValueError("a job id, record or run state holds a newline")
            calls.append(([pk.due, pk.jobs, pk.runs, pk.staged(app_id), pk.names, pk.paused,
                           pk.pausedapps],
                          [self.keys.wake_channel, blob, self._jobs_share, self._far_after]))
        if len(calls) == 1:  # one partition (the default): no pipeline's SCRIPT EXISTS
            replies = [script(keys=calls[0][0], args=calls[0][1])]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                script(keys=keys, args=args, client=pipe)
            replies = pipe.execute()
        out: list[bytes | ApiError | None] = [None] * len(entries)
        for members, reply in zip(groups.values(), replies, strict=True):
            for n, result in zip(members, reply, strict=True):
                if result == -1:
                    out[n] = self._over_limit(entries[n][0])
                elif result != 1:
                    out[n] = result
        return out

    def get(self, app_id: str, name: str) -> JobView | None:
        jid = job_id(app_id, name)
        pk = self.keys.for_job(jid)

        def reads(pipe: Any) -> None:
            self.read_jobs(pipe, pk, "rd", [jid])
            pipe.hget(pk.runs, jid)
            pipe.hget(pk.paused, jid)
            pipe.hget(pk.pausedapps, app_id)

        (record, score), state, paused, app_paused = read_together(self.redis, reads)
        if record is None:
            return None
        return with_pause(self._view(Job.decode(app_id, name, record), state, score),
                          paused, app_paused)

    def read_jobs(self, pipe: Any, pk: PartitionKeys, what: str,
                  ids: Sequence[str | bytes]) -> None:
        """Queue on `pipe` a read of `ids` (jobs of the partition `pk`) from whichever
        tier holds each (job_read.lua): per id, its record for "r" (None: no such job),
        its due ms (bytes; None: out of the due index) for "d", or both ("rd"); its
        record's length for "l" ("ld": and its due ms). One reply, a list."""
        self._scripts["job_read"](keys=pk.read_keys(), args=[what, *ids], client=pipe)

    def record(self, pk: PartitionKeys, jid: str) -> bytes | None:
        """The stored record of the job `jid` (of the partition `pk`), from whichever tier
        holds it; None when there is no such job."""
        record: bytes | None = self._scripts["job_read"](keys=pk.read_keys(), args=["r", jid])[0]
        return record

    @staticmethod
    def _view(job: Job, raw_state: bytes | None, score: bytes | float | None) -> JobView:
        if raw_state is None:
            next_ms = int(float(score)) if score is not None else None
            return JobView(job, TriggerStatus.SCHEDULED, next_ms, 0, 0)
        state = RunState.decode(raw_state)
        if state.lease == HELD_LEASE:
            # Due, set aside until a worker has room for its app (claim.lua): as if in the
            # due index, not yet claimed.
            status = TriggerStatus.RETRYING if state.attempt else TriggerStatus.SCHEDULED
        elif score is None:
            status = TriggerStatus.STAGED  # out of the due index: waiting for its app
        elif state.lease:
            status = TriggerStatus.IN_FLIGHT
        elif state.attempt:
            status = TriggerStatus.RETRYING
        else:
            status = TriggerStatus.SCHEDULED
        return JobView(job, status, state.sched, state.attempt, state.count, state.last)

    def delete(self, app_id: str, name: str) -> bool:
        jid = job_id(app_id, name)
        pk = self.keys.for_job(jid)
        return bool(self._scripts["delete"](
            keys=[*pk.delete_keys(app_id, [jid]), pk.history(jid)], args=[jid]))

    def list_jobs(self, app_id: str, prefix: str = "", page_token: str = "",
                  limit: int = 100) -> tuple[list[JobView], str]:
        """A page of at most `limit` of the app's jobs whose name starts with `prefix`, in
        name order, and the token of the next page ("" after the last). One range of the
        per-app index (app/store/pages.py): other apps' jobs cost nothing, and the token,
        the last name listed, resumes exactly there (a job present for the whole walk is
        listed once). A page stops early past `page_max_bytes` of records. ValueError
        (BadPageToken) for a token this store did not give."""
        after = _name_after(page_token, prefix)
        self.ensure_indexed()
        low, high = names_range(app_id, prefix, after)
        parts = self.keys.all_partitions()
        ids = [as_text(m) for m in pages.first_in_ranges(self.redis, [pk.names for pk in parts],
                                                       low, high, limit + 1, self.names_in)]
        more = len(ids) > limit
        views, read = self._views(app_id, ids[:limit])
        if read < min(len(ids), limit):
            more = True
        last = ids[:limit][read - 1] if read else None
        return views, pages.encode(split_job_id(last)[1]) if more and last else ""

    def _views(self, app_id: str, ids: list[str]) -> tuple[list[JobView], int]:
        """The views of the first of `ids` whose records fit in `page_max_bytes` (one at
        least), and how many ids that took. A job deleted meanwhile is left out."""
        if not ids:
            return [], 0
        pipe = self.redis.pipeline(transaction=False)
        lengths, _ = self._queue_reads(pipe, ids, "l")(pipe.execute())
        take, size = 0, 0
        for (length,) in lengths:
            size += int(length or 0)
            if take and size > self.settings.page_max_bytes:
                break
            take += 1
        pipe = self.redis.pipeline(transaction=False)
        parse = self._queue_reads(pipe, ids[:take], "rd")
        for jid in ids[:take]:
            pipe.hget(self.keys.for_job(jid).runs, jid)
        reads, states = parse(pipe.execute())
        pauses = self._pauses_of(app_id, ids[:take])
        views = []
        for i, (record, score) in enumerate(reads):
            if record is not None:
                name = split_job_id(ids[i])[1]
                views.append(with_pause(
                    self._view(Job.decode(app_id, name, record), states[i], score),
                    *pauses[i]))
        return views, take

    def _queue_reads(self, pipe: Any, ids: Sequence[str], what: str,
                     ) -> Callable[[list[Any]], tuple[list[list[Any]], list[Any]]]:
        """Queue on `pipe` read_jobs of `ids` (of any partitions), one job_read.lua call a
        partition, not one an id. Returns what parses the pipeline's replies: per id, in
        order, one entry a letter of `what`; and the replies after these calls'."""
        groups: dict[int, list[int]] = {}
        for n, jid in enumerate(ids):
            groups.setdefault(self.keys.partition_of(jid), []).append(n)
        for partition, members in groups.items():
            self.read_jobs(pipe, self.keys.partition(partition), what, [ids[n] for n in members])

        def parse(replies: list[Any]) -> tuple[list[list[Any]], list[Any]]:
            out: list[list[Any]] = [[] for _ in ids]
            for members, reply in zip(groups.values(), replies, strict=False):
                for k, n in enumerate(members):
                    out[n] = reply[k * len(what):(k + 1) * len(what)]
            return out, replies[len(groups):]
        return parse

    def _pauses_of(self, app_id: str, ids: list[str]) -> list[tuple[Any, Any]]:
        """(paused entry, the app's pause) of each of `ids` (app/store/pauses.py), in one
        round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for jid in ids:
            pipe.hget(self.keys.for_job(jid).paused, jid)
        pipe.hget(self.keys.partition(0).pausedapps, app_id)
        *entries, app_paused = pipe.execute()
        return [(entry, app_paused) for entry in entries]

    def delete_prefix(self, app_id: str, prefix: str) -> int:
        """Delete the app's jobs whose name starts with `prefix` (every job for ""), in
        batches of its index range; a pending replay is the dead-letter queue's, not a
        job, and stays."""
        self.ensure_indexed()
        deleted = 0
        low, high = names_range(app_id, prefix)
        for pk in self.keys.all_partitions():
            while ids := self.names_in(pk.names, low, high, DELETE_BATCH):
                # delete.lua takes them out of the index too: the range shrinks each time.
                texts = [as_text(jid) for jid in ids]
                deleted += int(self._scripts["delete"](
                    keys=[*pk.delete_keys(app_id, texts), *(pk.history(j) for j in texts)],
                    args=ids))
        return deleted

    def ui_session_ended(self, app_id: str, session_id: str) -> bool:
        """Whether the app's dashboard session `session_id` was logged out of."""
        return self.redis.zscore(self.keys.ui_ended(app_id), session_id) is not None

    def ui_end_session(self, app_id: str, session_id: str, login_s: int, lasts_s: int) -> None:
        """Log the session out, every copy of its cookie included, for as long as it could
        last (`lasts_s` from its login `login_s`); those that could not any more go."""
        key, now = self.keys.ui_ended(app_id), int(time.time())
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {session_id: login_s})
        pipe.zremrangebyscore(key, "-inf", now - lasts_s - 1)
        pipe.expire(key, lasts_s + 1)
        pipe.execute()

    def ui_secret(self) -> bytes:
        """The random key every API process on this Redis (and prefix) shares, made by the
        first that asks: it signs the dashboard's cookies when there is no token to derive
        a key from (a constant key let any page on another port of the host set one)."""
        # Read each time (a round trip per page, which the dashboard can spare): a key kept
        # by each process outlived one that Redis lost (a flush, a restart without data),
        # and processes then signed with different keys. While Redis is away, the key read
        # last (a blip voided every session, and the forms open with them).
        try:
            secret = self.redis.get(self.keys.ui_secret)  # a read first: Redis may be full
        except UNAVAILABLE:
            if self._ui_secret is None:
                raise
            return self._ui_secret
        if not isinstance(secret, bytes) or len(secret) < 32:  # none yet (or cut by hand)
            fresh = secrets.token_bytes(32)
            secret = fresh if self.redis.set(self.keys.ui_secret, fresh, nx=True) else (
                self.redis.get(self.keys.ui_secret))
            if not isinstance(secret, bytes) or len(secret) < 32:
                self.redis.set(self.keys.ui_secret, fresh)
                secret = fresh
        self._ui_secret = secret
        return secret

    # -- the per-app indexes ------------------------------------------------

    def names_in(self, index: str, low: bytes, high: bytes, count: int,
                 client: Any = None) -> Any:
        """At most `count` ids of the job index `index` (a partition's `names`) within the
        ZRANGEBYLEX bounds `low` and `high`, in order (names_read.lua: the index is a
        B-tree of small sorted sets). Queued on `client` when it is a pipeline."""
        return self._scripts["names_read"](keys=[index], args=["range", low, high, count],
                                           client=client)

    def names_count(self, index: str, app_id: str, client: Any = None) -> Any:
        """How many jobs the app holds in the job index `index` (a partition's `names`).
        Queued on `client` when it is a pipeline."""
        return self._scripts["names_read"](keys=[index], args=["count", app_id],
                                           client=client)

    def ensure_indexed(self) -> None:
        """Once per process: make sure the per-app indexes hold what older versions stored
        without them (jobs, dead letters), or in the job index they kept before it was a
        B-tree, then mark each partition done. The scripts keep them up to date from then
        on; on data written by this version it costs one GET per partition."""
        if self._indexed:
            return
        parts = self.keys.all_partitions()
        pipe = self.redis.pipeline(transaction=False)
        for pk in parts:
            pipe.get(pk.indexed)
        try:
            for pk, done in zip(parts, pipe.execute(), strict=True):
                if done is None or as_text(done) != INDEXED_VERSION:
                    self._reindex(pk, dead_letters=done is None)
        except REFUSES_WRITES:
            # A full Redis (over maxmemory, or its disk) takes no index entry, nor the
            # mark: the lists read the indexes as they are (complete, but for what a
            # version before them stored), and the next call tries again.
            return
        self._indexed = True

    def _reindex(self, pk: PartitionKeys, dead_letters: bool) -> None:
        """Index what the partition holds, in steps of REINDEX_STEP entries run inside
        Redis (reindex.lua): no record crosses the network. The dead letters only when
        the partition was never indexed (a version with the job index as one sorted set
        indexed them as now); that sorted set goes once the B-tree holds its jobs."""
        keys = [pk.jobs, pk.names, pk.deadidx, pk.deadlex]
        for what in ("jobs", "dead") if dead_letters else ("jobs",):
            cursor = "0"
            while True:
                try:
                    cursor = as_text(self._scripts["reindex"](
                        keys=keys, args=[what, cursor, REINDEX_STEP]))
                except NotReplicated as exc:
                    # It ran: an index is derived data and needs no replica (`wait_replicas`
                    # is for the user's writes; waiting here made every read a 503 while
                    # a replica was short). A replica that lacks these entries lacks the
                    # mark written after them too, and indexes again once promoted.
                    cursor = as_text(exc.result)
                if cursor == "0":
                    break
        self.redis.unlink(pk.legacy_names)
        self.redis.set(pk.indexed, INDEXED_VERSION)

    def app_counts(self, app_id: str) -> dict[str, int]:
        """The app's jobs and dead letters, from its job count and its dead-letter range:
        O(log N) per partition, whatever other apps store."""
        self.ensure_indexed()
        dead_low, dead_high = dead_range(app_id)
        pipe = self.redis.pipeline(transaction=False)
        for pk in self.keys.all_partitions():
            self.names_count(pk.names, app_id, pipe)
            pipe.zlexcount(pk.deadlex, dead_low, dead_high)
        values = pipe.execute()
        return {"jobs": sum(values[0::2]), "dead_letters": sum(values[1::2])}

    # -- apps ---------------------------------------------------------------

    def register_app(self, registration: AppRegistration, ttl_s: float | None = None,
                     binding: str = UNBOUND) -> int:
        """Record where the app's jobs go and that it is live: for `ttl_s` (an API process
        renews it), or for good when None. Puts back the app's staged triggers; returns
        how many.

        `binding` (app_binding) ties the registration to the tokens of the app's API
        processes: while one with another binding is live, this raises AppClaimed and
        leaves its registration as it is (README, "Trust boundary")."""
        app_id = registration.app_id
        self.check_app_binding(app_id, binding, ttl_s)
        self.redis.hset(self.keys.apps, app_id,
                        registration.encode(seen_ms=int(time.time() * 1000)))
        # Atomic on the mark: of two processes with other bindings starting at once, one
        # wins; the other is refused here, or at its next renewal.
        held = self._scripts["app_alive"](
            keys=[self.keys.alive(app_id)],
            args=[binding, int(ttl_s * 1000) if ttl_s else 0])
        if held:
            raise AppClaimed(app_id, ttl_s)
        return self.unstage(app_id)

    def check_app_binding(self, app_id: str, binding: str, ttl_s: float | None = None) -> None:
        """Raise AppClaimed when a live API process with another binding serves the app."""
        held = self.redis.get(self.keys.alive(app_id))
        if held is not None and as_text(held) != binding:
            raise AppClaimed(app_id, ttl_s)

    def forget_gone_apps(self, older_than_s: float, now_ms: int | None = None) -> list[str]:
        """Remove the registrations (address, token) of apps that no API process has renewed
        for `older_than_s` and that are not live; returns their ids. Their jobs are not
        touched: due triggers stay staged until an API process registers the app again.
        A registration from before renewals were stamped is stamped now (so it is
        forgotten `older_than_s` from now, if it is not renewed)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now - int(older_than_s * 1000)
        stale: list[tuple[str, bytes]] = []
        changes: list[Any] = []
        for field, raw in self.redis.hgetall(self.keys.apps).items():
            app_id = as_text(field)
            try:
                seen = orjson.loads(raw).get("seen")
            except (orjson.JSONDecodeError, AttributeError):
                continue  # not a registration this version wrote: left alone
            if seen is None:
                changes += [app_id, raw, AppRegistration.decode(app_id, raw).encode(now)]
            elif isinstance(seen, int) and seen < cutoff:
                stale.append((app_id, raw))
        if stale:
            pipe = self.redis.pipeline(transaction=False)
            for app_id, _ in stale:
                pipe.exists(self.keys.alive(app_id))
            alive = pipe.execute()
            stale = [entry for entry, live in zip(stale, alive, strict=True) if not live]
        for app_id, raw in stale:
            changes += [app_id, raw, ""]
        if not changes:
            return []
        changed = {as_text(a) for a in self._scripts["apps_cas"](keys=[self.keys.apps],
                                                               args=changes)}
        forgotten = [app_id for app_id, _ in stale if app_id in changed]
        if forgotten:  # nor counted any more: /metrics reads every counted app's totals
            pipe = self.redis.pipeline(transaction=False)
            pipe.srem(self.keys.stats_apps, *forgotten)
            for app_id in forgotten:
                pipe.delete(self.keys.stats_total(app_id))
            pipe.execute()
        return forgotten

    def unstage(self, app_id: str) -> int:
        """Put the app's staged triggers back in the due index; returns how many. In
        batches of UNSTAGE_BATCH, each a script of its own: all at once, 100,000 of them
        held Redis for 0.2 s, every other app's requests and deliveries with it."""
        moved = 0
        for pk in self.keys.all_partitions():
            while True:
                n = int(self._scripts["unstage"](keys=[pk.due, pk.staged(app_id)],
                                                 args=[self.keys.wake_channel, UNSTAGE_BATCH]))
                moved += n
                if n < UNSTAGE_BATCH:
                    break
        return moved

    def app(self, app_id: str) -> AppRegistration | None:
        raw = self.redis.hget(self.keys.apps, app_id)
        return None if raw is None else AppRegistration.decode(app_id, raw)

    def counts(self) -> dict[str, int]:
        """Sizes for /metrics: jobs stored, triggers in the due index, dead letters."""
        pipe = self.redis.pipeline(transaction=False)
        for pk in self.keys.all_partitions():
            pipe.hlen(pk.jobs)
            pipe.zcard(pk.due)
            pipe.hlen(pk.dead)
            pipe.hget(pk.far_meta, "count")  # far jobs: each a job and a due trigger
        values = pipe.execute()
        far = sum(int(v or 0) for v in values[3::4])
        return {
            "jobs": sum(values[0::4]) + far,
            "due_index": sum(values[1::4]) + far,
            "dead_letters": sum(values[2::4]),
        }


def with_pause(view: JobView, raw_entry: bytes | None, app_since: bytes | None) -> JobView:
    """The view of a job with its pause (app/store/pauses.py): a paused job's trigger waits
    in its paused entry, not in the due index; one in flight is still in flight."""
    if raw_entry is None and app_since is None:
        return view
    if raw_entry is None:  # its app's pause has not reached it yet
        return replace(view, app_paused=True, paused_ms=int(app_since or 0))
    entry = Paused.decode(raw_entry)
    status = view.status if view.status is TriggerStatus.IN_FLIGHT else TriggerStatus.PAUSED
    return replace(view, status=status,
                   next_ms=view.next_ms if entry.due_ms is None else entry.due_ms,
                   paused=BY_JOB in entry.by,
                   app_paused=BY_APP in entry.by or app_since is not None,
                   paused_ms=entry.since_ms)


def _name_after(token: str, prefix: str) -> str | None:
    """The last name of the previous page, from its token; BadPageToken (a ValueError)
    when the token is not one a page of this prefix gave, checked without Redis."""
    if not token:
        return None
    name = pages.decode(token)
    if not name.startswith(prefix):
        raise pages.BadPageToken(token, f"it is not a position among names starting with "
                                        f"{prefix!r}")
    try:
        valid = validate_name(name) == name
    except ApiError:
        valid = False
    if not valid:  # no stored job has that name: not a token this store gave
        raise pages.BadPageToken(token, "not a token this API gave")
    return name
