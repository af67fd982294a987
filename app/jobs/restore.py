"""Putting a job back where it stood: the schedule request's restore extension.

`jobrunner jobs export` writes each job as GET answers it, and `jobrunner jobs import`
POSTs that answer back as the schedule request. Beside the job's own fields (read by
app.jobs.validation as in any request) the answer has where the job stands, and a
request that has `nextTriggerTime` is read as a restore of these fields (jobrunner's
extension; Dapr has none of them and ignores them as unknown fields):

- `nextTriggerTime` (RFC 3339): the next trigger is due then, instead of when dueTime or
  schedule would put it counted from now. Honoured when it is after now and consistent
  with the job; when it is not after now (its time passed between export and import, or
  the trigger was in flight or retrying then), it is ignored: a job that has not fired
  is planned from its dueTime and schedule as a new request is, and one that has fired
  is next due at its schedule's first time after now (its dueTime is behind it).
  Consistent means:
    * not after the job's expiry (below);
    * a job without schedule, or with schedule and dueTime that has not fired yet
      (triggerCount 0), is next due at its dueTime: when the dueTime is an RFC 3339 time
      it must be that time; a duration was counted from when the job was first
      scheduled, so any time fits it;
    * any other job with a cron schedule is next due at one of the schedule's times;
      `@every` counts from the job's own earlier triggers, so any time fits it.
  Inconsistent: 400 (DAPR_SCHEDULER_SCHEDULE_JOB).
- `triggerCount` (an integer, 0 when absent) and `lastTriggerTime` (RFC 3339, or null):
  the triggers already finished and the due time of the last one, so that `repeats`
  goes on counting where it was and GET shows the same. Both or neither (a count of 0
  has no last time); only a job with a schedule can have fired and still be there; the
  count stays below `repeats`; the last trigger is before the next one.
- `expiryTime` (RFC 3339, or null): the end of the job as GET shows it, kept instead of
  a ttl counted from now; needs a ttl, and when the ttl is an RFC 3339 time it must be
  that time.

The rest of the GET answer (`status`, `attempt`, `name`...) is not read: a trigger that
was in flight or retrying is put back as due at its next time, with its attempts spent
forgotten. Each restored time is an RFC 3339 string of at most MAX_TIME_LENGTH characters,
rounded up to the millisecond as due times are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from app.jobs import errors
from app.jobs.durations import MAX_MS, ceil_ms, floor_ms, format_ms, rfc3339_ns
from app.jobs.errors import ApiError, malformed, shown
from app.jobs.model import UINT32_MAX, Job, RunState
from app.jobs.schedule import CronSchedule, next_fire_ms, parse_schedule

RESTORE_FIELD = "nextTriggerTime"
# Longer than any RFC 3339 time (nanoseconds and an offset make 35 characters).
MAX_TIME_LENGTH = 64


def restore(body: bytes, job: Job, now_ms: int) -> tuple[Job, RunState | None]:
    """(the job to store, the run state to start it from) for a schedule request whose
    body was read by app.jobs.validation into `job` at `now_ms`: the job as it is and
    None when the body has no nextTriggerTime; else its restore fields applied (the
    module docstring). Raises ApiError (400) on a field that is not consistent."""
    # A body without the field's name skips a second decode (the common case); a key
    # spelled with escapes (`\\u0074`) is still found through the decode.
    if not body or (RESTORE_FIELD.encode() not in body and b"\\u" not in body):
        return job, None
    request = orjson.loads(body)  # validation has read it as a JSON object
    if not isinstance(request, dict) or request.get(RESTORE_FIELD) is None:
        return job, None

    nxt = _time(request, RESTORE_FIELD)
    count = _count(request.get("triggerCount"))
    last = _time(request, "lastTriggerTime")
    expires = _expiry(job, _time(request, "expiryTime"))
    if (last is None) != (count == 0):
        raise _inconsistent("lastTriggerTime and triggerCount go together: a job that has "
                            f"fired has both (triggerCount {count}, lastTriggerTime "
                            f"{_when(last)})")
    if count and job.schedule is None:
        raise _inconsistent(f"a job without a schedule fires once, so it cannot have fired "
                            f"already and still be there (triggerCount {count})")
    if job.repeats and count >= job.repeats:
        raise _inconsistent(f"the job has fired all its {job.repeats} repeats "
                            f"(triggerCount {count})")

    first = job.first_ms
    assert nxt is not None
    if last is not None and last >= nxt:
        raise _inconsistent(f"lastTriggerTime {format_ms(last)} must be before the next "
                            f"trigger {format_ms(nxt)}")
    if nxt > now_ms:
        _check_next(job, nxt, count)
        first = nxt
    elif count:
        assert last is not None
        upcoming = next_fire_ms(job.schedule, last, count, job.repeats, expires, now_ms)
        if upcoming is None or upcoming > MAX_MS:
            raise _inconsistent(f"the job has no trigger left after now: its schedule "
                                f"{shown(job.schedule, 100)} is over or past its expiry")
        first = upcoming
    if expires is not None and first > expires:
        raise _inconsistent(f"job would never fire: its next trigger {format_ms(first)} is "
                            f"after its expiry {format_ms(expires)}")
    if last is not None and last >= first:
        raise _inconsistent(f"lastTriggerTime {format_ms(last)} must be before the next "
                            f"trigger {format_ms(first)}")
    job = dataclasses.replace(job, first_ms=first, expires_ms=expires)
    run = None if count == 0 else RunState(sched=first, attempt=0, count=count, last=last)
    return job, run


def _check_next(job: Job, nxt: int, count: int) -> None:
    if job.schedule is None or (count == 0 and job.due_time is not None):
        assert job.due_time is not None  # a job has a schedule or a dueTime
        if rfc3339_ns(job.due_time) is not None and nxt != job.first_ms:
            raise _inconsistent(f"nextTriggerTime {format_ms(nxt)} is not the job's dueTime "
                                f"{shown(job.due_time, 100)}")
        return
    parsed = parse_schedule(job.schedule)
    if isinstance(parsed, CronSchedule) and parsed.next_after(nxt - 1) != nxt:
        raise _inconsistent(f"nextTriggerTime {format_ms(nxt)} is not a time of the "
                            f"schedule {shown(job.schedule, 100)}")


def _expiry(job: Job, given: int | None) -> int | None:
    if given is None:
        return job.expires_ms
    if job.ttl is None:
        raise _inconsistent("expiryTime needs a ttl: a job without one does not expire")
    ttl_ns = rfc3339_ns(job.ttl)
    # Rounded down as app.jobs.schedule.plan keeps it (up in an export of an older
    # version, and up to the dueTime's millisecond when it falls in it).
    if ttl_ns is not None and given not in (floor_ms(ttl_ns), ceil_ms(ttl_ns)):
        raise _inconsistent(f"expiryTime {format_ms(given)} is not the job's ttl "
                            f"{shown(job.ttl, 100)}")
    return given


def _time(request: dict[str, Any], field: str) -> int | None:
    value = request.get(field)
    if value is None:
        return None
    ns = rfc3339_ns(value) if isinstance(value, str) and len(value) <= MAX_TIME_LENGTH \
        else None
    if ns is None:
        raise malformed(f"{field} must be an RFC 3339 time such as 2026-01-02T03:04:05Z, "
                        f"got {_show(value)}")
    ms = ceil_ms(ns)
    if not 0 <= ms <= MAX_MS:
        raise malformed(f"{field} must be between 1970 and 9999, got {_show(value)}")
    return ms


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT32_MAX:
        raise malformed(f"triggerCount must be a whole number from 0 to {UINT32_MAX}, "
                        f"got {_show(value)}")
    return value


def _inconsistent(message: str) -> ApiError:
    return ApiError(400, errors.SCHEDULE_JOB, message)


def _when(ms: int | None) -> str:
    return "null" if ms is None else format_ms(ms)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
