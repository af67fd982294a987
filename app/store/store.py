"""The job store on Redis, as the API and the tools use it (synchronous).

Every multi-key change is one Lua script on one partition (see app/lua/).
The worker's hot path (claim, acknowledge, release) lives in
workers/queue.py and uses the same scripts and keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from app.jobs.errors import JobrunnerError
from app.jobs.model import Job, RunState, TriggerStatus
from app.settings import Settings
from app.store import scripts
from app.store.keys import Keys, is_replay, job_id, split_job_id
from app.store.redis_client import sync_client


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


@dataclass(frozen=True)
class AppRegistration:
    app_id: str
    url: str
    token: str = ""
    delivery_format: str = "auto"
    protocol: str = "http"  # Settings.app_protocol: how workers deliver (http or grpc)

    def encode(self, seen_ms: int | None = None) -> bytes:
        record: dict[str, Any] = {"url": self.url, "token": self.token,
                                  "format": self.delivery_format, "protocol": self.protocol}
        if seen_ms is not None:
            record["seen"] = seen_ms  # when an API process last renewed it (forget_gone_apps)
        return orjson.dumps(record)

    @classmethod
    def decode(cls, app_id: str, raw: bytes | str) -> AppRegistration:
        r = orjson.loads(raw)
        return cls(app_id, r["url"], r.get("token", ""), r.get("format", "auto"),
                   r.get("protocol", "http"))


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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Store:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.redis = client if client is not None else sync_client(settings)
        self._scripts = {name: self.redis.register_script(scripts.source(name))
                         for name in scripts.SCRIPT_NAMES}

    def close(self) -> None:
        self.redis.close()

    def script(self, name: str) -> Any:
        return self._scripts[name]

    def ping(self) -> bool:
        return bool(self.redis.ping())

    # -- jobs ---------------------------------------------------------------

    def schedule(self, job: Job, overwrite: bool = False, run: RunState | None = None) -> bool:
        """Store `job`; raise JobExists unless `overwrite`. True when it is now the earliest due.

        `run`: the run state to start from, for a job put back where it stood (its
        trigger count and last trigger: app/jobs/restore.py); None for a new job."""
        jid = job_id(job.app_id, job.name)
        pk = self.keys.for_job(jid)
        result = self._scripts["schedule"](
            keys=[pk.due, pk.jobs, pk.runs, pk.staged(job.app_id)],
            args=[jid, job.encode(), job.first_ms, "1" if overwrite else "0",
                  self.keys.wake_channel, "" if run is None else run.encode()],
        )
        if result == 0:
            raise JobExists(job.name)
        return bool(result == 2)

    def schedule_many(self, jobs: Iterable[Job], overwrite: bool = True, chunk: int = 1000) -> int:
        """Bulk load, pipelined; returns how many were stored (existing ones skipped
        unless `overwrite`)."""
        stored = 0
        pipe = self.redis.pipeline(transaction=False)
        pending = 0
        script = self._scripts["schedule"]
        for job in jobs:
            jid = job_id(job.app_id, job.name)
            pk = self.keys.for_job(jid)
            script(keys=[pk.due, pk.jobs, pk.runs, pk.staged(job.app_id)],
                   args=[jid, job.encode(), job.first_ms, "1" if overwrite else "0",
                         self.keys.wake_channel],
                   client=pipe)
            pending += 1
            if pending >= chunk:
                stored += sum(1 for r in pipe.execute() if r)
                pending = 0
        if pending:
            stored += sum(1 for r in pipe.execute() if r)
        return stored

    def get(self, app_id: str, name: str) -> JobView | None:
        jid = job_id(app_id, name)
        pk = self.keys.for_job(jid)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(pk.jobs, jid)
        pipe.hget(pk.runs, jid)
        pipe.zscore(pk.due, jid)
        record, state, score = pipe.execute()
        if record is None:
            return None
        return self._view(Job.decode(app_id, name, record), state, score)

    @staticmethod
    def _view(job: Job, raw_state: bytes | None, score: float | None) -> JobView:
        if raw_state is None:
            next_ms = int(score) if score is not None else None
            return JobView(job, TriggerStatus.SCHEDULED, next_ms, 0, 0)
        state = RunState.decode(raw_state)
        if score is None:
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
        return bool(self._scripts["delete"](keys=[pk.due, pk.jobs, pk.runs, pk.staged(app_id)],
                                            args=[jid]))

    def _scan_ids(self, app_id: str, prefix: str, count: int = 500) -> Iterator[list[str]]:
        """Yield the ids of the app's jobs whose name starts with `prefix`, batch by batch,
        replays included."""
        pattern = _glob_escape(f"{app_id}/{prefix}") + "*"
        for pk in self.keys.all_partitions():
            pos = None
            while pos != 0:
                pos, fields = self.redis.hscan(pk.jobs, pos or 0, match=pattern, count=count)
                yield [_text(f) for f in fields]

    def list_jobs(self, app_id: str, prefix: str = "", page_token: str = "",
                  limit: int = 100) -> tuple[list[JobView], str]:
        """A page of at most `limit` jobs whose name starts with `prefix`, and the token of
        the next page ("" after the last). As SCAN promises: a job that exists for the
        whole walk is listed, even if others are deleted meanwhile (barring a rehash)."""
        part, cursor, batch_end, after_id = _parse_page_token(page_token, self.keys.partitions)
        pattern = _glob_escape(f"{app_id}/{prefix}") + "*"
        found: list[tuple[str, bytes]] = []
        while part < self.keys.partitions:
            key = self.keys.partition(part).jobs
            if batch_end is None:
                # HSCAN NOVALUES needs Redis 7.4; the records are wanted anyway.
                next_cursor, fields = self.redis.hscan(key, cursor, match=pattern,
                                                       count=max(limit, 10))
            else:
                next_cursor, fields = self._rescan(key, cursor, batch_end, pattern)
            # Sorted, so that a page ending inside this batch can resume after its last id.
            batch = sorted((jid, v) for f, v in fields.items()
                           if not is_replay(jid := _text(f)) and jid > after_id)
            room = limit - len(found)
            if len(batch) > room:
                found += batch[:room]
                token = _page_token(part, cursor, next_cursor, found[-1][0])
                return self._views(app_id, found), token
            found += batch
            batch_end, after_id = None, ""
            part, cursor = (part + 1, 0) if next_cursor == 0 else (part, next_cursor)
            if len(found) == limit:
                break
        token = _page_token(part, cursor) if part < self.keys.partitions else ""
        return self._views(app_id, found), token

    def _rescan(self, key: str, cursor: int, batch_end: int,
                pattern: str) -> tuple[int, dict[bytes, bytes]]:
        """The batch [cursor, batch_end) again, one bucket per call (COUNT 1), without
        going past batch_end however many of the batch's entries are gone since."""
        fields: dict[bytes, bytes] = {}
        end = _scan_order(batch_end)
        for _ in range(100_000):  # bounded: a rehash meanwhile may move batch_end away
            nxt, got = self.redis.hscan(key, cursor, match=pattern, count=1)
            if batch_end != 0 and (nxt == 0 or _scan_order(nxt) > end):
                # Past the batch: COUNT 1 stops at the first non-empty bucket, so all of
                # this call's entries lie beyond it; the next batch starts at batch_end.
                return batch_end, fields
            fields.update(got)
            cursor = nxt
            if cursor in (batch_end, 0):
                break
        return cursor, fields

    def _views(self, app_id: str, records: list[tuple[str, bytes]]) -> list[JobView]:
        pipe = self.redis.pipeline(transaction=False)
        for jid, _ in records:
            pk = self.keys.for_job(jid)
            pipe.hget(pk.runs, jid)
            pipe.zscore(pk.due, jid)
        answers = pipe.execute()
        views = []
        for i, (jid, record) in enumerate(records):
            _, name = split_job_id(jid)
            job = Job.decode(app_id, name, record)
            views.append(self._view(job, answers[2 * i], answers[2 * i + 1]))
        return views

    def delete_prefix(self, app_id: str, prefix: str) -> int:
        deleted = 0
        for ids in self._scan_ids(app_id, prefix):
            by_part: dict[int, list[str]] = {}
            for jid in ids:
                if not is_replay(jid):  # a pending replay is the dead-letter queue's
                    by_part.setdefault(self.keys.partition_of(jid), []).append(jid)
            for part, jids in by_part.items():
                pk = self.keys.partition(part)
                deleted += int(self._scripts["delete"](
                    keys=[pk.due, pk.jobs, pk.runs, pk.staged(app_id)], args=jids))
        return deleted

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
        if held is not None and _text(held) != binding:
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
            app_id = _text(field)
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
        changed = {_text(a) for a in self._scripts["apps_cas"](keys=[self.keys.apps],
                                                               args=changes)}
        return [app_id for app_id, _ in stale if app_id in changed]

    def unstage(self, app_id: str) -> int:
        return sum(
            int(self._scripts["unstage"](keys=[pk.due, pk.staged(app_id)],
                                         args=[self.keys.wake_channel]))
            for pk in self.keys.all_partitions()
        )

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
        values = pipe.execute()
        return {
            "jobs": sum(values[0::3]),
            "due_index": sum(values[1::3]),
            "dead_letters": sum(values[2::3]),
        }


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _scan_order(cursor: int) -> int:
    """Where a SCAN cursor stands in the walk: Redis steps cursors in bit-reversed order."""
    return int(f"{cursor:064b}"[::-1], 2)


def _page_token(part: int, cursor: int, batch_end: int | None = None,
                after_id: str = "") -> str:
    """`part.cursor`, or `part.cursor.batch_end.<last id listed, base64>` when a page ended
    inside the HSCAN batch [cursor, batch_end)."""
    if batch_end is None:
        return f"{part}.{cursor}"
    tail = base64.urlsafe_b64encode(after_id.encode()).decode().rstrip("=")
    return f"{part}.{cursor}.{batch_end}.{tail}"


def _parse_page_token(token: str, partitions: int) -> tuple[int, int, int | None, str]:
    """(partition, HSCAN cursor, end of the batch a page ended inside or None, last id
    listed from that batch)."""
    if not token:
        return (0, 0, None, "")
    try:
        fields = token.split(".")
        if len(fields) not in (2, 4):
            raise ValueError
        part, cursor = int(fields[0]), int(fields[1])
        batch_end = int(fields[2]) if len(fields) == 4 else None
        tail = fields[3] if len(fields) == 4 else ""
        after_id = base64.urlsafe_b64decode(tail + "=" * (-len(tail) % 4)).decode()
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ValueError(f"invalid page token {token!r}") from None
    in_range = 0 <= part < partitions and 0 <= cursor < 2**64
    if not in_range or (batch_end is not None and not 0 <= batch_end < 2**64):
        raise ValueError(f"invalid page token {token!r}")
    return (part, cursor, batch_end, after_id)
