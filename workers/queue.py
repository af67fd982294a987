"""The worker's side of the store: claim, acknowledge and release triggers (asyncio).

Same keys and Lua scripts as app/store.py; batched so that one round trip
claims or settles many triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import secrets
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from app.jobs.clock import machine_ns, now_ms
from app.jobs.errors import ApiError
from app.jobs.model import Job, RunState, Trigger
from app.settings import Settings
from app.store import scripts
from app.store.keys import Keys, is_fired_now, parent_job_id, split_job_id
from app.store.loop_redis import LoopRedis, ReplyTimeout, Unavailable
from app.store.redis_client import UNAVAILABLE, async_client
from app.store.redis_wait import mark_read_only
from app.store.store import AppRegistration

log = logging.getLogger("jobrunner.worker")
T = TypeVar("T")

# Registrations (addresses, rate limits) a worker uses are at most this old.
APPS_MAX_AGE_S = 1.0
# After Redis did not answer for the registrations, they are not asked for again this long,
# doubled each time it fails again up to the most.
APPS_REST_MIN_S = 0.5
APPS_REST_MAX_S = 2.0
# A claimed trigger whose job this worker cannot read is due again this much later.
UNREADABLE_RETRY_S = 5.0
# Unreadable jobs (and versions of their records) a worker logs one by one; past that, a
# count at most every _UNREADABLE_SUMMARY_S (a rolling upgrade can make millions).
_UNREADABLE_LOGGED = 10_000
_UNREADABLE_SUMMARY_S = 60.0


# A partition Redis Cluster did not answer for is not claimed from for this long, doubled
# each time it fails again up to the most (Queue.claim_within).
PARTITION_REST_MIN_S = 0.1
PARTITION_REST_MAX_S = 1.0
# On Redis Cluster, a claim or settlement call a partition's master has not answered within
# this long goes on in the background while the other partitions are claimed and settled
# (a master that stops answering, rather than refusing connections, held up every
# partition until its promoted replica took over: 4 s); its answer is taken when it
# comes. A call answers within milliseconds otherwise.
PARTITION_ANSWER_S = 0.2
# Triggers given back as a worker stops (those unfinished, those of such calls that answered
# but were not taken) go back within this long, or are left to their leases: a master that
# does not answer held a stop up for a minute (redis-py tries ten times, 5 s each).
RELEASE_WITHIN_S = 5.0


class _Rest(NamedTuple):
    """A while without calls after Redis did not answer; doubled while it keeps failing."""

    until: float  # monotonic
    rest_s: float

    @staticmethod
    def after(last: _Rest | None, least_s: float, most_s: float) -> _Rest:
        rest_s = least_s if last is None else min(last.rest_s * 2, most_s)
        return _Rest(time.monotonic() + rest_s, rest_s)


class _Parked(NamedTuple):
    """A call to one partition that outlived PARTITION_ANSWER_S, still going on."""

    call: asyncio.Task[Any]
    started: float  # monotonic
    token: str = ""  # a claim's lease token
    sent: tuple[Settlement, ...] = ()  # a settlement's outcomes, in the call's order
    node: str | None = None  # the master it went to, as the client knew the slots then


async def _within(work: Coroutine[Any, Any, T], timeout_s: float) -> asyncio.Task[T]:
    """`work` as a task, waited for up to `timeout_s`: done, or going on in the background
    (cancelled with the caller)."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task}, timeout=timeout_s)
    except BaseException:
        task.cancel()  # the caller was cancelled (the worker stopping)
        raise
    return task


class Standing(NamedTuple):
    """Where a claimed trigger stands before it goes out (Queue.still_current)."""

    held: bool  # it still holds its lease
    job_exists: bool  # a "trigger now": its job is still there
    paused: bool  # its job, or its app, was paused while it waited


class Action:
    NEXT = "next"  # finished: go on to the next occurrence, or end the job
    RETRY = "retry"  # failed: try again at `at_ms`
    DEAD = "dead"  # failure policy spent: dead-letter, then as NEXT
    # missed and passed over by the job's catch-up policy, not delivered: the trigger due
    # at `at_ms` is the job's next (None: the job is over), not counted as fired
    SKIP = "skip"


@dataclass(frozen=True)
class Budgets:
    """What one claim may take of each app: `apps[app]` triggers, or `default` for an app
    not named; `set_aside`: how many due triggers of apps out of budget it may set aside
    to reach other apps' triggers behind them (bounds the work of one call)."""

    default: int
    apps: dict[str, int]
    set_aside: int


@dataclass
class Claim:
    triggers: list[Trigger]
    earliest: int | None  # when anything else this worker could take is due
    more: bool  # due triggers may be left that the claim had no room to look at
    blocked: set[str]  # apps with due triggers left for want of budget
    answered: bool = True  # a partition answered (not all resting or skipped)
    # The lease tokens of its triggers from calls that went on in the background (_Parked),
    # taken only now, with when each call was made (monotonic): when they were leased.
    parked: dict[str, float] = field(default_factory=dict)


@dataclass
class Settled:
    """What came of a batch of outcomes (Queue.settle)."""

    applied: list[Settlement]  # not those whose lease was gone, which change nothing
    left: list[Settlement]  # of partitions Redis did not answer for: to settle again
    error: Exception | None = None  # why they are left


@dataclass(slots=True)  # one per delivery: not frozen (see Trigger)
class Settlement:
    trigger: Trigger
    action: str
    at_ms: int | None  # next due time (NEXT/DEAD; None: the job is over) or retry time
    dead_id: str = ""
    dead_record: bytes = b""
    entry: str = ""  # the outcome for the job's history (app/store/history.py); "": none
    # DEAD: the fields of its "dead-lettered" line, written once Redis has taken it (a
    # lease lost meanwhile, its job deleted or changed in flight, stores no dead letter).
    log_fields: dict[str, object] | None = None


class Queue:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self._parts = self.keys.all_partitions()  # built once: settle names a key per trigger
        self.redis = client if client is not None else async_client(settings)
        self._scripts = {n: self.redis.register_script(scripts.source(n))
                         for n in ("claim", "ack", "release", "stage", "delete", "job_read")}
        mark_read_only(scripts.source("job_read"))
        # Claims and settlements on a lean pipelined connection, where the client allows
        # (a single node over TCP): redis-py's call machinery was a tenth of a worker's CPU
        # per delivery. Anything but a reply goes through redis-py (_script).
        self._loop_redis = LoopRedis.for_client(self.redis)
        self._worker_id = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._claims = itertools.count(1)
        self._next_partition = 0
        self._rests: dict[int, _Rest] = {}  # partitions resting after a failure (cluster)
        # Calls not answered within PARTITION_ANSWER_S, by partition (cluster); none
        # other goes to a partition while its call is on. `on_parked_done` is called when
        # one ends: its answer is taken by the next claim_within or settle.
        self._parked_claims: dict[int, _Parked] = {}
        self._parked_acks: dict[int, _Parked] = {}
        # Apps whose held triggers a load could not rescore, Redis refusing the writes
        # (_load_apps): the next loads rescore them with the apps changed since.
        self._rescore_owed: set[str] = set()
        self.on_parked_done: Callable[[], None] | None = None
        self._apps: dict[str, AppRegistration] = {}
        self._apps_loaded = 0.0
        # Redis did not answer for them, and why: not asked again meanwhile.
        self._apps_rest: tuple[_Rest, Exception] | None = None
        self._apps_call: asyncio.Task[None] | None = None  # a refresh going on (cluster)
        self._alive: dict[str, bool] = {}
        self._unreadable_seen: set[tuple[bytes, int]] = set()  # see _unreadable
        self._unreadable_unlogged = 0
        self._unreadable_summary_at = 0.0

    async def close(self, within_s: float = RELEASE_WITHIN_S) -> None:
        # A claim left going on leases its triggers to nobody: they come back when their
        # leases run out, or now (within `within_s`) for one that has answered. A
        # settlement's outcomes were left to the worker.
        answered = [(part, c.token, c.call.result()[3::6], c.call.result()[8::6])
                    for part, c in self._parked_claims.items()
                    if c.call.done() and not c.call.cancelled() and not c.call.exception()]
        releases = [self._release(part, token, jids, 0, dues)
                    for part, token, jids, dues in answered if jids]
        if releases:  # (within a bound: their master may have stalled again since)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*releases), within_s)
        parked = [p.call for p in (*self._parked_claims.values(), *self._parked_acks.values())]
        if self._apps_call is not None:
            parked.append(self._apps_call)
        for call in parked:
            call.cancel()
        await asyncio.gather(*parked, return_exceptions=True)
        self._parked_claims.clear()
        self._parked_acks.clear()
        if self._loop_redis is not None:
            self._loop_redis.close()
        await self.redis.aclose()

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """The script's reply, on the loop connection when there is one. An error reply
        (NOSCRIPT after a Redis restart, ...) or a broken connection is done again by
        redis-py, which loads the script, retries, and raises UNAVAILABLE when Redis is
        away; a claim done twice leases its first triggers to nobody until their lease
        runs out (as a retry of redis-py's own would), a settlement applies once. No reply
        within the socket timeout is raised as it is (a redis TimeoutError): waiting as
        long again would only delay the worker's back-off."""
        if self._loop_redis is not None:
            try:
                reply = await self._loop_redis.evalsha(self._scripts[name].sha, keys, args)
            except ReplyTimeout:
                raise
            except Unavailable:
                pass
            else:
                if not isinstance(reply, Exception):
                    return reply
        return await self._scripts[name](keys=keys, args=args)

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """The script's reply; on Redis Cluster, the call itself when it has not answered
        within PARTITION_ANSWER_S: it goes on in the background, and `on_parked_done` is
        called when it ends."""
        if not self.settings.redis_cluster:
            return await self._script(name, keys, args)
        call = await _within(self._script(name, keys, args), PARTITION_ANSWER_S)
        if not call.done():
            call.add_done_callback(self._parked_done)
            return call
        return call.result()

    def _parked_done(self, call: asyncio.Task[Any]) -> None:
        if not call.cancelled() and self.on_parked_done is not None:
            self.on_parked_done()

    async def claim(self, limit: int) -> tuple[list[Trigger], int | None]:
        """Claim up to `limit` due triggers, no app bounded but by its rate limit. Returns
        them and the earliest time anything else needs a worker."""
        claim = await self.claim_within(limit, Budgets(limit, {}, limit))
        return claim.triggers, claim.earliest

    async def claim_within(self, limit: int, budgets: Budgets, ahead_ms: int = 0,
                           skip: Collection[int] = ()) -> Claim:
        """Claim up to `limit` due triggers over the partitions, taking turns so none
        starves, each app within its budget and its rate limit (claim.lua); `ahead_ms`:
        also those due within that long, which the caller holds until they are due;
        `skip`: partitions not to claim from now (their outcomes wait to be settled).

        On Redis Cluster, a partition Redis did not answer for (its master failing over)
        rests a while, its rest doubling up to PARTITION_REST_MAX_S while it fails: each
        call to a dead master costs redis-py's retries (0.2-0.6 s), which held up the
        claims of every other partition. A partition whose call has not answered within
        PARTITION_ANSWER_S (a master that stopped answering) is not waited for: the call
        goes on, and its triggers come with a later claim (`Claim.parked`). UNAVAILABLE is
        raised when no partition answered."""
        if time.monotonic() - self._apps_loaded > APPS_MAX_AGE_S:
            try:
                await self.load_apps(None)  # rate limits as registered now
            except UNAVAILABLE:
                if not self._apps_loaded:
                    raise  # nothing to go by yet
                # The registrations' node may be failing over (Redis Cluster): the cached
                # ones serve meanwhile, and the partitions that answer are claimed.
        claim = Claim([], None, False, set())
        left = dict(budgets.apps)
        answered = False
        for part, parked in list(self._parked_claims.items()):
            if not parked.call.done():
                continue
            del self._parked_claims[part]
            try:
                raw = parked.call.result()
            except UNAVAILABLE as exc:
                self._rest(part, exc)
                continue
            answered = True
            claim.parked[parked.token] = parked.started
            await self._take(claim, part, raw, parked.token, left, budgets)
        # With one live app there is nobody its backlog could hold up (claim.lua ARGV[7]);
        # an app registered since is known within APPS_MAX_AGE_S.
        solo = sum(self._alive.values()) <= 1
        lease_ms = int(self.settings.lease_s * 1000)
        n = self.keys.partitions
        start, self._next_partition = self._next_partition, (self._next_partition + 1) % n
        unavailable: Exception | None = None
        stalled = self._stalled_nodes()
        for part in ((start + i) % n for i in range(n)):
            if len(claim.triggers) >= limit:
                claim.more = True
                break
            if part in skip or self._resting(part) or part in self._parked_claims:
                continue
            node = self._node_of(part)
            if node is not None and node in stalled:
                continue  # (its other partitions' calls are on: this one would wait too)
            pk = self.keys.partition(part)
            token = f"{self._worker_id}:{next(self._claims)}"
            started = time.monotonic()
            try:
                raw = await self._call(
                    "claim", pk.claim_keys(),
                    [now_ms() + ahead_ms, limit - len(claim.triggers), lease_ms, token,
                     budgets.default, budgets.set_aside, "1" if solo else "0",
                     *self._app_args(left, budgets)])
            except UNAVAILABLE as exc:
                # On Redis Cluster, this partition's master may be failing over: the
                # other partitions go on.
                unavailable = exc
                self._rest(part, exc)
                continue
            if isinstance(raw, asyncio.Task):
                self._parked_claims[part] = _Parked(raw, started, token, node=node)
                if node is not None:
                    stalled.add(node)
                continue
            answered = True
            await self._take(claim, part, raw, token, left, budgets)
        if unavailable is not None and not answered:
            raise unavailable
        claim.answered = answered
        # Only rests still running: a partition whose rest has ended and that was skipped
        # all the same waits on a parked call, whose end wakes the worker. Counted, it made
        # the claim loop go round at once, never yielding to the event loop (so the call,
        # and a stop, never came).
        clock = time.monotonic()
        rests = [r.until for p, r in self._rests.items() if p not in skip and r.until > clock]
        if rests:  # look again when the first rest ends (the caller wakes ahead_ms early)
            ends = now_ms() + math.ceil(1000 * max(min(rests) - time.monotonic(), 0)) + ahead_ms
            claim.earliest = ends if claim.earliest is None else min(claim.earliest, ends)
        return claim

    async def _take(self, claim: Claim, part: int, raw: Any, token: str,
                    left: dict[str, int], budgets: Budgets) -> None:
        """Add what claim.lua answered for partition `part` to `claim`, spending the apps'
        budgets in `left`."""
        self._rests.pop(part, None)
        head, more, blocked = raw[0], raw[1], raw[2]
        if head is not None:
            head_ms = int(head)
            claim.earliest = head_ms if claim.earliest is None else min(claim.earliest, head_ms)
        claim.more = claim.more or bool(more)
        claim.blocked.update(a.decode() for a in blocked)
        unreadable: list[bytes] = []  # their ids; their apps' budgets are not spent
        for i in range(3, len(raw), 6):
            jid, record, sched, attempt, count, due = raw[i:i + 6]
            try:
                job_id = jid.decode()
                app_id, name = split_job_id(job_id)
                # Positional (job, job_id, partition, sched_ms, attempt, count, lease,
                # due_ms): keywords doubled the cost of making one, once per delivery.
                claim.triggers.append(Trigger(
                    Job.decode(app_id, name, record), job_id, part, int(sched),
                    int(attempt), int(count), token, int(due)))
            except Exception as exc:
                self._unreadable(jid, record, exc)
                unreadable.append(jid)
                continue
            left[app_id] = left.get(app_id, budgets.default) - 1
        if unreadable:
            await self._put_back(part, token, unreadable)
            # claim.lua counted them against their apps' budgets, and may have called
            # an app blocked for them: claim again now (they are due later), or the
            # app's readable triggers wait behind them for a slot that never frees.
            claim.more = True
            claim.blocked.difference_update(
                split_job_id(j.decode(errors="replace"))[0] for j in unreadable)

    def _node_of(self, part: int) -> str | None:
        """On Redis Cluster, the master of the partition's slot as the client knows it now
        (None: not known yet, or one Redis)."""
        if not self.settings.redis_cluster:
            return None
        try:
            node = self.redis.get_node_from_key(self._parts[part].due)
        except Exception:  # (the slot map not learnt yet, or a hole in it)
            return None
        return None if node is None else str(node.name)

    def _stalled_nodes(self) -> set[str]:
        """The masters with a call going on past PARTITION_ANSWER_S: their other partitions
        are not asked meanwhile (each call would wait as long before going on in the
        background: 0.2 s for each partition of a stalled master, on every claim)."""
        calls = (*self._parked_claims.values(), *self._parked_acks.values())
        return {c.node for c in calls if c.node is not None and not c.call.done()}

    def _resting(self, part: int) -> bool:
        rest = self._rests.get(part)
        return rest is not None and time.monotonic() < rest.until

    def _rest(self, part: int, exc: Exception) -> None:
        """Rest a partition Redis did not answer for, on Redis Cluster (one Redis is one
        node: all its partitions fail together, and the caller backs off)."""
        if not self.settings.redis_cluster:
            return
        last = self._rests.get(part)
        rest = self._rests[part] = _Rest.after(last, PARTITION_REST_MIN_S, PARTITION_REST_MAX_S)
        # Once as it starts; again at debug (up to once a second for each partition).
        log.log(logging.WARNING if last is None else logging.DEBUG,
                "redis unavailable for partition %d, trying it again in %.2fs: %s",
                part, rest.rest_s, exc)

    def _app_args(self, left: dict[str, int], budgets: Budgets) -> list[Any]:
        """claim.lua's groups: app, budget, rate (tokens per ms), bucket size. A rate limit
        is shared evenly by the partitions: each has its own bucket (a script touches one
        partition), with 1/N of the rate and of the bucket."""
        n = self.keys.partitions
        args: list[Any] = []
        rated = {a: r.rate for a, r in self._apps.items() if r.rate > 0}
        for app_id in set(left) | set(rated):
            rate = rated.get(app_id, 0.0) / n
            args += [app_id, max(left.get(app_id, budgets.default), 0),
                     repr(rate / 1000), repr(max(1.0, rate))]
        return args

    async def settle(self, settlements: list[Settlement]) -> Settled:
        """Apply a batch of outcomes, one script call per partition, which also records them
        in the jobs' histories (when Settings.history_size is above 0). Those applied: not
        one whose lease was gone (its job deleted or replaced meanwhile, or the trigger
        taken by another worker), which changes nothing. Those of a partition whose call
        failed are left (on Redis Cluster, its master may be failing over, or refusing
        writes), the other partitions' applied. On Redis Cluster, the partitions' calls go
        out together, and the outcomes of one whose call has not answered within
        PARTITION_ANSWER_S are left too, without an error: its call goes on, and what it
        applied is counted when they are settled again."""
        settled = Settled([], [])
        in_part: dict[int, list[Settlement]] = defaultdict(list)
        for s in settlements:
            in_part[s.trigger.partition].append(s)
        calls: dict[int, tuple[list[str], list[Any]]] = {}
        now = now_ms()
        for part, group in in_part.items():
            in_part[part] = group = self._after_parked(part, group, settled)
            if group:
                calls[part] = self._ack_call(part, group, now)
        replies: list[Any] = []
        nodes: dict[int, str | None] = {}
        started = time.monotonic()
        if self.settings.redis_cluster:  # together: a master not answering holds up no other
            nodes = {part: self._node_of(part) for part in calls}  # (as the calls go out)
            replies = await asyncio.gather(*(self._call("ack", *c) for c in calls.values()),
                                           return_exceptions=True)
        else:  # one node: each in turn
            for keys, args in calls.values():
                try:
                    replies.append(await self._script("ack", keys, args))
                except Exception as exc:  # (not only UNAVAILABLE: an OOM master's too)
                    replies.append(exc)
        for part, reply in zip(calls, replies, strict=True):
            group = in_part[part]
            if isinstance(reply, asyncio.Task):  # going on in the background
                self._parked_acks[part] = _Parked(reply, started, sent=tuple(group),
                                                  node=nodes[part])
                settled.left += group
            elif isinstance(reply, Exception):
                settled.left += group
                settled.error = reply
            elif isinstance(reply, BaseException):
                raise reply
            else:
                self._count(settled, group, reply)
        return settled

    def _ack_call(self, part: int, group: list[Settlement],
                  now: int) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ack.lua for one partition's outcomes."""
        size = self.settings.history_size
        args: list[Any] = [now, size, int(self.settings.history_ttl_s * 1000)]
        history: list[str] = []
        pk = self._parts[part]
        for s in group:
            t = s.trigger
            at = "" if s.at_ms is None else s.at_ms
            # ack.lua's groups of 3: the id's length (in bytes) tells it from the letter id.
            size_of_id = len(t.job_id) if t.job_id.isascii() else len(t.job_id.encode())
            args += (f"{t.lease}|{s.action}|{at}|{size_of_id}|{t.job_id}{s.dead_id}",
                     s.dead_record, s.entry)
            if size:
                history.append(pk.history(t.job_id))
        return [*pk.all(), *history], args

    @staticmethod
    def _count(settled: Settled, group: Sequence[Settlement], flags: Any) -> None:
        """Add those of `group` that ack.lua applied (its flags, one per outcome)."""
        flags = flags.decode() if isinstance(flags, bytes) else str(flags)
        settled.applied += (s for s, flag in zip(group, flags, strict=True) if flag == "1")

    def _after_parked(self, part: int, group: list[Settlement],
                      settled: Settled) -> list[Settlement]:
        """Those of a partition's outcomes still to send: all of them, unless a call for
        the partition went on in the background (_Parked). While it goes on, none (all are
        left); once it has answered, and `group` holds all it carried (they are settled
        again together), those it did not carry; when it failed, all of them again."""
        parked = self._parked_acks.get(part)
        if parked is None:
            return group
        carried = {id(s) for s in parked.sent}
        if not parked.call.done() or not carried <= {id(s) for s in group}:
            settled.left += group
            return []
        del self._parked_acks[part]
        try:
            flags = parked.call.result()
        except Exception:
            return group  # each applies once (by its lease) when sent again
        self._count(settled, parked.sent, flags)
        return [s for s in group if id(s) not in carried]

    async def still_current(self, trigger: Trigger, lease: bool) -> Standing:
        """Where a trigger about to go out after a wait in this worker (`lease`), or fired
        by "trigger now", stands: whether it still holds its lease (a deleted job's
        trigger-nows go with it: delete.lua), whether its job was paused meanwhile (with
        `lease`; else False), and for a trigger-now stored before its job kept a set of
        them (PartitionKeys.fired_now), whether its job still exists (else True)."""
        pk = self.keys.partition(trigger.partition)
        parent = parent_job_id(trigger.job_id) if is_fired_now(trigger.job_id) else None
        pipe = self.redis.pipeline(transaction=False)
        if lease or parent is not None:
            pipe.hget(pk.runs, trigger.job_id)
        if lease:
            pipe.hexists(pk.paused, trigger.job_id)
        if parent is not None:
            pipe.sismember(pk.fired_now(parent), trigger.job_id)
        answers = list(await pipe.execute()) if lease or parent is not None else []
        held, paused, job_exists = True, False, True
        if lease or parent is not None:
            state = answers.pop(0)
            held = state is not None and RunState.decode(state).lease == trigger.lease
        if lease:
            paused = bool(answers.pop(0))
        if parent is not None and not answers[0]:  # not listed: is its job there, near or far?
            # (a script call of its own: redis-py's asyncio cluster pipeline runs none)
            [length] = await self._script("job_read", pk.read_keys(), ["l", parent])
            job_exists = length is not None
        return Standing(held, job_exists, paused)

    async def clock_reading(self, samples: int = 5) -> tuple[int, int]:
        """How far this machine's clock runs ahead of Redis's (negative: behind), and the
        round trip of the reading, the quickest of `samples` (Redis Cluster: one master's
        clock). Taken once Redis's answer is back, a reading is never less than the true
        lead (a clock set back by it sends nothing early), and over it by at most its
        round trip (a busy loop's delay included)."""
        readings = []
        for _ in range(samples):
            sent = machine_ns()
            seconds, micros = await self.redis.time()
            back = machine_ns()
            readings.append((back - sent, back - (int(seconds) * 1_000_000 + int(micros)) * 1000))
        round_trip, lead = min(readings)
        return lead, round_trip

    async def release(self, triggers: list[Trigger]) -> int:
        """Give back claimed triggers at once (on shutdown) instead of waiting for the lease."""
        groups: dict[tuple[int, str], list[Trigger]] = defaultdict(list)
        for t in triggers:
            groups[(t.partition, t.lease)].append(t)
        released = 0
        for (part, lease), group in groups.items():
            released += await self._release(part, lease, [t.job_id for t in group], 0,
                                            [t.due_ms for t in group])
        return released

    async def _release(self, part: int, lease: str, jids: list[Any], not_before_ms: int,
                       dues: Sequence[Any] = ()) -> int:
        """release.lua: each of `jids` due again at its `dues` (none: at its scheduled
        time), or at `not_before_ms` if later."""
        pk = self.keys.partition(part)
        pairs = [x for jid, due in itertools.zip_longest(jids, dues, fillvalue=0)
                 for x in (jid, due)]
        return int(await self._scripts["release"](
            keys=[pk.due, pk.runs, pk.paused], args=[lease, not_before_ms, *pairs]))

    async def load_apps(self, app_ids: set[str] | None, max_age_s: float = APPS_MAX_AGE_S,
                        miss_retry_s: float = 0.5) -> None:
        """Refresh the cache of app registrations and liveness when it is stale, or when
        one of `app_ids` is missing from it (at most every `miss_retry_s`); None: when
        stale. Called once per claimed batch, never once per delivery."""
        age = time.monotonic() - self._apps_loaded
        if app_ids is None:
            app_ids = set()
        elif not app_ids:
            return
        missing = not app_ids.issubset(self._apps)
        if not (age > max_age_s or (missing and age > miss_retry_s)):
            return
        last = self._apps_rest
        if last is not None and time.monotonic() < last[0].until:
            # The last try's error, without another: one costs redis-py's retries (0.3-0.4 s
            # against a master that is down), on the claim loop.
            raise last[1].with_traceback(None)
        try:
            await self._refresh_apps(app_ids)
        except UNAVAILABLE as exc:
            rest = _Rest.after(last and last[0], APPS_REST_MIN_S, APPS_REST_MAX_S)
            self._apps_rest = rest, exc
            log.warning("cannot load app registrations, trying again in %.1fs: %s",
                        rest.rest_s, exc)
            raise
        self._apps_rest = None

    async def _refresh_apps(self, app_ids: set[str]) -> None:
        """_load_apps; on Redis Cluster, once they were loaded, not waited for past
        PARTITION_ANSWER_S: the call goes on (the registrations, the liveness keys and
        the held triggers are on any of the masters), and the cached ones serve until it
        ends; its end, or its error, is taken by the next refresh."""
        if self._apps_call is None:
            if not (self.settings.redis_cluster and self._apps_loaded):
                await self._load_apps(app_ids)
                return
            self._apps_call = await _within(self._load_apps(app_ids), PARTITION_ANSWER_S)
        if self._apps_call.done():
            call, self._apps_call = self._apps_call, None
            call.result()

    async def _load_apps(self, app_ids: set[str]) -> None:
        raw = await self.redis.hgetall(self.keys.apps)
        before = {app_id: r.rate for app_id, r in self._apps.items()}
        self._apps = {k.decode(): AppRegistration.decode(k.decode(), v) for k, v in raw.items()}
        # Apps whose rate limit changed (all of them, at the first load), and those whose
        # rescore Redis refused before.
        owed = self._rescore_owed | {
            app_id for app_id in set(before) | set(self._apps)
            if not before or before.get(app_id, 0.0) != self._rate(app_id)}
        try:
            await self._rescore_held(owed)
        except UNAVAILABLE as exc:
            # A master refusing writes (full, or its disk): the registrations serve as
            # they are (the other partitions are claimed), and each load tries again.
            if not self._rescore_owed:
                log.warning("cannot make held triggers due at their apps' rate limits now, "
                            "at a later load: %s", exc)
            self._rescore_owed = owed
        else:
            self._rescore_owed = set()
        # Every registered app's liveness: claims go by how many apps are live.
        known = sorted(set(self._apps) | app_ids)
        pipe = self.redis.pipeline(transaction=False)
        for app_id in known:
            pipe.exists(self.keys.alive(app_id))
        alive = await pipe.execute() if known else []
        self._alive = {app_id: bool(n) for app_id, n in zip(known, alive, strict=True)}
        self._apps_loaded = time.monotonic()

    async def _rescore_held(self, app_ids: set[str]) -> None:
        """Apps whose rate limit changed: their held triggers waited for their next token
        as the old rate timed it (claim.lua scores `heldapps` so), which a rate raised or
        removed brings sooner; made due now, the next claim takes them at the new rate, or
        times the wait again."""
        if not app_ids:
            return
        now = now_ms()
        pipe = self.redis.pipeline(transaction=False)
        for pk in self.keys.all_partitions():
            for app_id in sorted(app_ids):
                pipe.zadd(pk.heldapps, {app_id: now}, xx=True, lt=True)  # only ever sooner
        await pipe.execute()

    def _rate(self, app_id: str) -> float:
        registration = self._apps.get(app_id)
        return 0.0 if registration is None else registration.rate

    def apps_stale_within(self, seconds: float) -> bool:
        """Whether the next claim_within, `seconds` from now, would refresh the registrations
        first (a refresh now, while idle, keeps them off the due path: Worker._sleep_until);
        False when it would be stale by then anyway."""
        age = time.monotonic() - self._apps_loaded
        return age + seconds > APPS_MAX_AGE_S and seconds < APPS_MAX_AGE_S

    def is_live(self, app_id: str) -> bool:
        """Whether the app has a live API process (as of the last load_apps)."""
        return self._alive.get(app_id, False)

    def app(self, app_id: str) -> AppRegistration | None:
        return self._apps.get(app_id)

    async def stage(self, triggers: list[Trigger]) -> int:
        """Park claimed triggers of apps with no live API process until they return."""
        groups: dict[tuple[int, str, str], list[str]] = defaultdict(list)
        for t in triggers:
            groups[(t.partition, t.job.app_id, t.lease)].append(t.job_id)
        staged = 0
        for (part, app_id, lease), jids in groups.items():
            pk = self.keys.partition(part)
            staged += int(await self._scripts["stage"](
                keys=[pk.due, pk.runs, pk.staged(app_id), pk.paused], args=[lease, *jids]))
        return staged

    async def _put_back(self, part: int, token: str, jids: list[bytes]) -> None:
        """Claimed triggers whose stored jobs this worker cannot read (edited by hand, or
        written by a version that stores them otherwise) go back, their attempts given
        back, due again UNREADABLE_RETRY_S later: a worker that can read them (the next
        version, in a rolling upgrade) takes them then, and the job's record stays as it
        was until it is scheduled again or deleted. Raising here instead killed the worker
        with the rest of its claim, and then every worker that claimed them after."""
        try:
            jids = await self._drop_orphans(part, jids)
            if jids:
                await self._release(part, token, jids,
                                    now_ms() + int(UNREADABLE_RETRY_S * 1000))
        except Exception as exc:  # their leases run out instead
            log.warning("cannot give back %d unreadable triggers now: %s: %s", len(jids),
                        type(exc).__name__, exc)

    async def _drop_orphans(self, part: int, jids: list[bytes]) -> list[bytes]:
        """`jids` but the "trigger now" one-shots whose job is gone, which are deleted: one
        that can be read is dropped undelivered then (workers/worker.py), and one that
        cannot would come back for ever, beyond any API's reach (it is in no app's list)."""
        once = [j for j in jids if is_fired_now(j.decode(errors="replace"))]
        if not once:
            return jids
        pk = self.keys.partition(part)
        parents = [parent_job_id(jid.decode(errors="replace")) for jid in once]
        lengths = await self._script("job_read", pk.read_keys(), ["l", *parents])
        gone = [jid for jid, length in zip(once, lengths, strict=True) if length is None]
        for jid in gone:
            app_id = split_job_id(jid.decode(errors="replace"))[0]
            await self._scripts["delete"](
                keys=pk.delete_keys(app_id, [jid.decode(errors="replace")], fired_now=False),
                args=[jid])
            log.info("dropped a \"trigger now\" of a deleted job, unread: %s",
                     jid.decode(errors="replace"))
        return [jid for jid in jids if jid not in gone]

    def _unreadable(self, jid: bytes, record: Any, exc: Exception) -> None:
        """Logs a job this worker cannot read, once per version of its record (it comes
        back every UNREADABLE_RETRY_S); past _UNREADABLE_LOGGED of them, counts."""
        seen = (jid, zlib.crc32(record) if isinstance(record, bytes) else 0)
        if seen in self._unreadable_seen:
            return
        if len(self._unreadable_seen) >= _UNREADABLE_LOGGED:
            self._unreadable_unlogged += 1
            if time.monotonic() - self._unreadable_summary_at >= _UNREADABLE_SUMMARY_S:
                self._unreadable_summary_at = time.monotonic()
                log.error("claims of jobs this worker cannot read, not logged one by one "
                          "(%d are): %d since the last count; each is tried again every %gs",
                          _UNREADABLE_LOGGED, self._unreadable_unlogged, UNREADABLE_RETRY_S)
                self._unreadable_unlogged = 0
            return
        self._unreadable_seen.add(seen)
        why = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
        log.error("cannot read stored job %r, not delivered; it is tried again every %gs "
                  "until it is scheduled again or deleted (logged once per version of its "
                  "record): %s", jid.decode(errors="replace"), UNREADABLE_RETRY_S, why)

    def pubsub(self) -> Any:
        return self.redis.pubsub()
