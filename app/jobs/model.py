"""The job model: a typed job, its failure policy, the triggers and dead letters.

Stored as compact JSON, an array of the record's fields by place (RECORD_FIELDS): a
pending job costs under 300 bytes of Redis memory with seed-sized data (`jobrunner bench
scale`). The app id and name are not in the record: they are the job id, the hash field
it sits under.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from app.jobs import errors
from app.jobs.durations import format_ms

JSONValue = Any  # any value json.loads can return


# The largest of repeats and maxRetries (a uint32 in Dapr's protos).
UINT32_MAX = 2**32 - 1


class FailureKind(enum.StrEnum):
    DROP = "drop"
    CONSTANT = "constant"
    EXPONENTIAL = "exponential"  # beyond Dapr (README, "Delivery policies beyond Dapr")


@dataclass(frozen=True)
class FailurePolicy:
    kind: FailureKind = FailureKind.CONSTANT
    # constant: the interval; exponential: the first one (initialInterval).
    interval_ms: int = 1000
    # None: retry without limit.
    max_retries: int | None = 3
    # exponential only: no interval is longer (before the jitter), each is `multiplier`
    # times the one before, and a random share of up to `jitter` of it is added.
    max_interval_ms: int = 0
    multiplier: float = 1.0
    jitter: float = 0.0

    def retry_delay_ms(self, attempt: int, rand: float = 0.0) -> int | None:
        """Delay before the next attempt after `attempt` failed ones, or None when spent.
        `rand`, in [0, 1): where the jitter falls (random.random() in the worker)."""
        if self.kind is FailureKind.DROP:
            return None
        if self.max_retries is not None and attempt > self.max_retries:
            return None
        if self.kind is FailureKind.CONSTANT:
            return self.interval_ms
        try:
            interval = min(self.interval_ms * self.multiplier ** (attempt - 1),
                           float(self.max_interval_ms))
        except OverflowError:  # past the float range: long since at its cap
            interval = float(self.max_interval_ms)
        return round(interval * (1.0 + self.jitter * rand))

    def to_api(self) -> dict[str, Any]:
        if self.kind is FailureKind.DROP:
            return {"drop": {}}
        if self.kind is FailureKind.EXPONENTIAL:
            exponential: dict[str, Any] = {
                "initialInterval": _ms_to_go(self.interval_ms),
                "maxInterval": _ms_to_go(self.max_interval_ms),
                "multiplier": _number(self.multiplier),
                "jitter": _number(self.jitter),
            }
            if self.max_retries is not None:
                exponential["maxRetries"] = self.max_retries
            return {"exponential": exponential}
        constant: dict[str, Any] = {"interval": _ms_to_go(self.interval_ms)}
        if self.max_retries is not None:
            constant["maxRetries"] = self.max_retries
        return {"constant": constant}

    def encode(self) -> list[Any]:
        head = [self.kind.value, self.interval_ms, self.max_retries]
        if self.kind is FailureKind.EXPONENTIAL:
            return [*head, self.max_interval_ms, self.multiplier, self.jitter]
        return head

    @classmethod
    def decode(cls, raw: list[Any]) -> FailurePolicy:
        """As encode wrote it; anything else raises (a record edited by hand, or another
        version's: Job.decode), not converted: "3" or "nan" would be shown and used."""
        interval, retries = raw[1], raw[2]
        if type(interval) is not int or interval < 0 or not (
                retries is None or (type(retries) is int and 0 <= retries <= UINT32_MAX)):
            raise ValueError(f"failure policy {raw!r:.80}")
        policy = cls(FailureKind(raw[0]), interval, retries)
        if len(raw) > 3:
            longest, multiplier, jitter = raw[3], raw[4], raw[5]
            if type(longest) is not int or not all(
                    type(x) in (int, float) and math.isfinite(x) for x in (multiplier, jitter)):
                raise ValueError(f"failure policy {raw!r:.80}")
            policy = dataclasses.replace(policy, max_interval_ms=longest,
                                         multiplier=float(multiplier), jitter=float(jitter))
        return policy


def _number(value: float) -> int | float:
    """2.0 as 2, 1.5 as 1.5: a JSON number as one would write it."""
    return int(value) if value.is_integer() else value


DEFAULT_FAILURE_POLICY = FailurePolicy()


class CatchUp(enum.StrEnum):
    """What a recurring job does with the occurrences it missed (no worker running, the
    job or its app paused): README, "Pause, resume and catch-up"."""

    COALESCE = "coalesce"  # one trigger for all of them, then on schedule (the default)
    ALL = "all"  # each of them, oldest first (Dapr), at most Settings.max_catch_up
    SKIP = "skip"  # none: on with the first occurrence not in the past


def go_duration(ms: int) -> str:
    """Milliseconds as a Go duration string, as GET answers durations."""
    return _ms_to_go(ms)


def _ms_to_go(ms: int) -> str:
    """Milliseconds as Go's Duration.String() writes them (`0s`, `250ms`, `1.5s`, `2m0s`,
    `1h0m0.001s`): exact, so that an answer sent back as a request means the same."""
    if 0 < ms < 1000:
        return f"{ms}ms"
    seconds, frac = divmod(ms, 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs}.{frac:03d}".rstrip("0") if frac else str(secs)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


class TriggerStatus(enum.StrEnum):
    """Where a job's current trigger stands."""

    SCHEDULED = "scheduled"  # waiting for its due time
    IN_FLIGHT = "in_flight"  # claimed by a worker, under a lease
    RETRYING = "retrying"  # failed at least once, waiting for the next attempt
    STAGED = "staged"  # due, but parked until its app's API process is live again
    PAUSED = "paused"  # the job or its app is paused: nothing fires until resumed


@dataclass
class Job:
    app_id: str
    name: str
    # The data as the caller gave it, unless it is a protobuf Any (then `any_type`/`any_value`).
    data: JSONValue = None
    # A protobuf Any, kept serialized: type URL and standard base64 of the message bytes.
    any_type: str | None = None
    any_value: str | None = None
    # The data's JSON text exactly as scheduled (an app in Dapr compatibility mode:
    # delivered byte for byte); `data` then holds it parsed. Stored only when it is not
    # what orjson.dumps(data) gives back: compact JSON costs nothing extra.
    data_text: str | None = None
    schedule: str | None = None
    due_time: str | None = None
    repeats: int | None = None
    ttl: str | None = None
    failure_policy: FailurePolicy = DEFAULT_FAILURE_POLICY
    # deliveryTimeout (beyond Dapr): how long each delivery attempt may take; None: the
    # worker's JOBRUNNER_DELIVERY_TIMEOUT.
    delivery_timeout_ms: int | None = None
    # catchUp (beyond Dapr): what the missed occurrences of a recurring job become.
    catch_up: CatchUp = CatchUp.COALESCE
    first_ms: int = 0  # the first trigger's due time
    expires_ms: int | None = None  # no trigger is due after this
    # Set on the one-shot job that replays a dead letter: the dead trigger's id,
    # kept as the idempotency id of the replay.
    replay_of: str | None = None

    @functools.cached_property
    def rev(self) -> str:
        """A digest of the stored record, part of every trigger id: a job overwritten with
        anything different never shares an idempotency id with the old one. Derived, not
        stored (memory)."""
        return f"{zlib.crc32(self.encode()):08x}"

    def encode(self) -> bytes:
        """The stored record: what a worker or a GET needs, as a JSON array of RECORD_FIELDS
        with the absent ones at its end left off (memory: see the module docstring)."""
        any_type = any_value = data = text = None
        if self.any_type is not None:
            any_type, any_value = _short_type(self.any_type), self.any_value
        elif self.data_text is not None and (
                self.data is None or orjson.dumps(self.data) != self.data_text.encode()):
            text = self.data_text
        else:
            data = self.data
        due_time: str | int | None = self.due_time
        if due_time is not None and due_time == format_ms(self.first_ms):
            due_time = 0  # the dueTime was given as exactly the RFC 3339 form of first_ms
        record = [
            self.first_ms, due_time, any_type, any_value, data, text,
            self.schedule, self.repeats, self.ttl, self.expires_ms,
            None if self.failure_policy == DEFAULT_FAILURE_POLICY else self.failure_policy.encode(),
            self.delivery_timeout_ms,
            None if self.catch_up is CatchUp.COALESCE else self.catch_up.value,
            self.replay_of,
        ]
        while record[-1] is None:
            record.pop()
        return orjson.dumps(record)

    @classmethod
    def decode(cls, app_id: str, name: str, raw: bytes | str) -> Job:
        # The instance's fields set as one dict, not through the generated __init__: its
        # seventeen keywords were a third of a worker's decoding, which comes once per
        # delivery. Every field is here (tests/test_model.py checks it against fields()).
        try:
            record = orjson.loads(raw)
            if type(record) is list:
                if not 1 <= len(record) <= len(RECORD_FIELDS):
                    raise ValueError(f"a record of {len(record)} fields")
                (first_ms, due_time, any_type, any_value, data, text, schedule, repeats, ttl,
                 expires, fp, timeout, catch_up, replay_of) = record + _ABSENT[len(record):]
            else:  # a record as versions before 2026-12-01 stored it: an object
                get = record.get
                first_ms, due_time, any_type, any_value = record["f1"], get("u"), get("t"), get("v")
                data, schedule, repeats, ttl, expires = (
                    get("d"), get("s"), get("r"), get("l"), get("x"))
                fp, timeout, catch_up, replay_of, text = (
                    get("fp"), get("dt"), get("cu"), get("ti"), get("j"))
            # Each field of its type (a record edited by hand, or another version's, reads as
            # one that cannot be read), not found wrong later by whatever uses it: a worker
            # recording a failure, a GET. Inline: about 0.1 µs of a delivery.
            if not (type(first_ms) is int
                    and (any_type is None or type(any_type) is str)
                    and (any_value is None or type(any_value) is str)
                    and (text is None or type(text) is str)
                    and (schedule is None or type(schedule) is str)
                    and (due_time is None or type(due_time) is str or due_time == 0)
                    and (repeats is None or (type(repeats) is int
                                             and 0 <= repeats <= UINT32_MAX))
                    and (ttl is None or type(ttl) is str)
                    and (timeout is None or (type(timeout) is int and timeout > 0))
                    and (expires is None or type(expires) is int)
                    and (replay_of is None or type(replay_of) is str)):
                raise TypeError("a field of another type or out of range")
            job = object.__new__(cls)
            job.__dict__ = {
                "app_id": app_id,
                "name": name,
                "data": data if text is None else orjson.loads(text),
                "any_type": None if any_type is None else _long_type(any_type),
                "any_value": any_value,
                "data_text": text,
                "schedule": schedule,
                "due_time": format_ms(first_ms) if due_time == 0 else due_time,
                "repeats": repeats,
                "ttl": ttl,
                "failure_policy": FailurePolicy.decode(fp) if fp else DEFAULT_FAILURE_POLICY,
                "delivery_timeout_ms": timeout,
                "catch_up": CatchUp.COALESCE if catch_up is None else CatchUp(catch_up),
                "first_ms": first_ms,
                "expires_ms": expires,
                "replay_of": replay_of,
                # The digest of these very bytes, as stored: re-encoding them for `rev` was a
                # tenth of a worker's CPU per delivery (its trigger id names the rev).
                "rev": f"{zlib.crc32(raw if isinstance(raw, bytes) else raw.encode()):08x}",
            }
            return job
        except Exception as exc:  # free on 3.11 until raised
            raise errors.unreadable_job(name, exc) from exc


# What each place of a stored record (Job.encode) holds, by the keys of the object that
# versions before 2026-12-01 stored, which Job.decode still reads: the first due time
# (ms), dueTime (0: first_ms's RFC 3339 form), the protobuf Any's type and value, the
# data, or its JSON text as given, schedule, repeats, ttl, expiry (ms), failure policy,
# delivery timeout (ms), catchUp and the replayed trigger's id. The seed's record is
# 59 bytes, where an object of these keys took 76.
RECORD_FIELDS = ("f1", "u", "t", "v", "d", "j", "s", "r", "l", "x", "fp", "dt", "cu", "ti")
_ABSENT: list[Any] = [None] * len(RECORD_FIELDS)

# Well-known type URLs are stored as "~Name": 36 bytes less per job with Any data.
# No stored type URL can start with "~" otherwise: only resolvable types are accepted.
_WKT_PREFIX = "type.googleapis.com/google.protobuf."


def _short_type(type_url: str) -> str:
    return "~" + type_url[len(_WKT_PREFIX):] if type_url.startswith(_WKT_PREFIX) else type_url


def _long_type(stored: str) -> str:
    return _WKT_PREFIX + stored[1:] if stored.startswith("~") else stored


# The lease of a due trigger that a claim set aside because its app had no room
# (app/store/lua/claim.lua): no worker holds it; the next claim with room takes it.
HELD_LEASE = "*"


@dataclass(frozen=True)
class RunState:
    """A job's run state, kept in the `runs` hash as `sched|attempt|count|last|lease`.

    sched:   due time (ms) of the current trigger
    attempt: delivery attempts made for the current trigger
    count:   triggers of this job finished so far (delivered, dropped or dead-lettered)
    last:    due time (ms) of the last finished trigger, None before the first
    lease:   token of the worker holding the trigger, empty when none does
    """

    sched: int
    attempt: int = 0
    count: int = 0
    last: int | None = None
    lease: str = ""

    def encode(self) -> str:
        last = "" if self.last is None else str(self.last)
        return f"{self.sched}|{self.attempt}|{self.count}|{last}|{self.lease}"

    @classmethod
    def decode(cls, raw: bytes | str) -> RunState:
        text = raw.decode() if isinstance(raw, bytes) else raw
        sched, attempt, count, last, lease = text.split("|", 4)
        return cls(int(sched), int(attempt), int(count), int(last) if last else None, lease)


@dataclass(slots=True)
class Trigger:
    """One claimed trigger, as a worker holds it. Not frozen: a frozen dataclass's
    constructor sets each field through object.__setattr__, five times the cost, and a
    worker builds one per delivery."""

    job: Job
    job_id: str  # the hash field in the store (a replay's differs from app/name)
    partition: int
    sched_ms: int  # when it was due
    attempt: int  # 1 for the first delivery
    count: int  # triggers of the job finished before this one
    lease: str
    # when this attempt may go out: a retry's time, else sched_ms (claim.lua's `due`); a
    # worker that claimed it ahead holds it until then and until sched_ms
    due_ms: int = 0

    @property
    def trigger_id(self) -> str:
        """Unique per trigger, the same on every retry and replay: the idempotency id."""
        if self.job.replay_of is not None:
            return self.job.replay_of
        return f"{self.job.app_id}/{self.job.name}@{self.job.rev}:{self.sched_ms}"

    @property
    def scheduled_ms(self) -> int:
        """When the trigger was due, as the app, its dead letter and its history are told:
        a replay's is the dead trigger's, which its id holds (`...@{rev}:{ms}`), as the
        replay is that trigger again; `sched_ms` is when the replay itself was due."""
        replay_of = self.job.replay_of
        if replay_of is None:
            return self.sched_ms
        due = replay_of[replay_of.rfind("@") + 1:].split(":")
        return int(due[1]) if len(due) > 1 and due[1].isdigit() else self.sched_ms


@dataclass(frozen=True)
class DeadLetter:
    """A trigger whose failure policy was spent, with the job as it was then."""

    id: str  # the trigger id
    app_id: str
    name: str
    sched_ms: int
    attempts: int
    error: str
    dead_ms: int
    record: str  # the job record (Job.encode) at the time

    @property
    def job(self) -> Job:
        try:
            return Job.decode(self.app_id, self.name, self.record)
        except errors.ApiError as exc:  # the letter's to purge, not the job's to schedule
            raise errors.unreadable_letter(self.id, exc.__cause__ or exc) from exc

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "appId": self.app_id,
                "name": self.name,
                "scheduledMs": self.sched_ms,
                "attempts": self.attempts,
                "error": self.error,
                "deadMs": self.dead_ms,
                "record": self.record,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str, letter_id: str | None = None) -> DeadLetter:
        """`letter_id`: the id it is stored under, for the error when it cannot be read."""
        try:
            r = orjson.loads(raw)
            values = (r["id"], r["appId"], r["name"], r["scheduledMs"], r["attempts"],
                      r["error"], r["deadMs"], r["record"])
            if tuple(map(type, values)) != _LETTER_TYPES:  # as encode wrote them
                raise TypeError("a field of another type")
            if letter_id is not None and values[0] != letter_id:  # copied by hand
                raise ValueError(f"it holds the letter {errors.shown(values[0])}")
            return cls(*values)
        except Exception as exc:
            raise errors.unreadable_letter(letter_id, exc) from exc


# The types of DeadLetter's fields, in their order.
_LETTER_TYPES = (str, str, str, int, int, str, int, str)
