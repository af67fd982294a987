"""Schedule maths for jobs: validating a job's timing, and when its triggers are due.

Schedules (cron and `@every`) are parsed by app.jobs.cron, a port of Dapr's cron
dialect whose docstring describes it; this module caches them and turns a
job's schedule, dueTime, ttl and repeats into trigger times. It also
re-exports the schedule types and the duration helpers of app.jobs.durations
(see there for dueTime/ttl parsing), so callers import from here.

Trigger times are integer epoch milliseconds and a trigger is never due
before its time.

Where this differs from Dapr (1.15+, go-etcd-cron), deliberately (see app.jobs.cron
for the differences in the cron dialect itself):

- Missed occurrences are coalesced by default: after downtime the next trigger
  is the first occurrence not in the past; Dapr fires every missed one in
  immediate succession (go-etcd-cron README). A job's `catchUp` chooses:
  `coalesce`, `all` (Dapr's way, at most `max_catch_up` of them: the latest)
  or `skip` (catch_up_due, next_fire_ms).
- `repeats` 0 means unlimited, like no repeats (brief). Dapr rejects an
  explicit 0 ("defined repeats must be greater than 0", a 500).
- A job that could never fire is refused with a 400-class error: a schedule
  with no occurrence and no dueTime, or a first trigger after the ttl
  expiry. Dapr accepts those and silently deletes the job.
- `@every 0s` needs `repeats`: it then fires that many times back to back,
  as Dapr does, each trigger due as soon as the previous one is settled (and
  at least 1 ms later, so each has its own idempotency id). Without repeats
  it would fire without end, so it is refused (Dapr accepts it).
- Validation errors carry Dapr's code (DAPR_SCHEDULER_SCHEDULE_JOB) but are
  meant to be answered 400 (Dapr answers 500), per design.md.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from app.jobs.cron import CronSchedule, EverySchedule, Schedule, parse_cron
from app.jobs.durations import (
    NS_PER_MS,
    ScheduleError,
    ceil_ms,
    floor_ms,
    format_ms,
    go_duration_ns,
    parse_go_duration,
    parse_iso8601_duration,
    parse_point_in_time,
    point_in_time_ns,
    rfc3339_ns,
)
from app.jobs.errors import MALFORMED_REQUEST, SCHEDULE_EMPTY, SCHEDULE_JOB, shown
from app.jobs.model import CatchUp
from app.jobs.sizedcache import SizedCache, text_size

__all__ = [
    "CronSchedule",
    "EverySchedule",
    "Plan",
    "Schedule",
    "ScheduleError",
    "catch_up_due",
    "go_duration_ns",
    "next_fire_ms",
    "parse_go_duration",
    "parse_iso8601_duration",
    "parse_point_in_time",
    "parse_schedule",
    "plan",
]

_MAX_REPEATS = 2**32 - 1  # Dapr's repeats is a uint32
# How many missed occurrences a job with catchUp `all` fires at most, by default
# (Settings.max_catch_up, JOBRUNNER_MAX_CATCH_UP): the latest ones.
DEFAULT_MAX_CATCH_UP = 100
# The longest schedule accepted. A cron line that lists every value of every field with a
# time zone is under 600 characters; a longer one is garbage whose parsing, storing and
# every worker's re-parsing would cost in proportion (a 4 MB one: seconds of CPU).
MAX_SCHEDULE_LENGTH = 1024
# The parse cache of the API and of each worker holds at most this much (sizedcache).
SCHEDULE_CACHE_BYTES = 2 * 1024 * 1024
_cache: SizedCache[str, Schedule] = SizedCache(SCHEDULE_CACHE_BYTES, 4 * MAX_SCHEDULE_LENGTH)


def parse_schedule(expr: str) -> Schedule:
    """Parse a Dapr job schedule (the dialect is app.jobs.cron's); cached by expression.

    Raises ScheduleError (code DAPR_SCHEDULER_SCHEDULE_JOB) naming the problem.
    """
    if not isinstance(expr, str):
        raise ScheduleError("invalid schedule: not a string", SCHEDULE_JOB)
    if len(expr) > MAX_SCHEDULE_LENGTH:
        raise ScheduleError(
            f"invalid schedule: longer than {MAX_SCHEDULE_LENGTH} characters", SCHEDULE_JOB
        )
    found = _cache.get(expr)
    if found is not None:
        return found
    try:
        parsed = parse_cron(expr)
    except ValueError as e:
        shown = repr(expr) if len(expr) <= 120 else repr(expr[:120]) + "..."
        raise ScheduleError(f"invalid schedule {shown}: {e}", SCHEDULE_JOB) from None
    _cache.put(expr, parsed, text_size(expr))
    return parsed


@dataclass(frozen=True)
class Plan:
    first_ms: int  # when the first trigger is due
    expires_ms: int | None  # no trigger is due after this (from ttl)


def _check_repeats(repeats: int | None) -> None:
    if repeats is None:
        return
    if isinstance(repeats, bool) or not isinstance(repeats, int):
        raise ScheduleError(f"repeats must be an integer, got {repeats!r}", MALFORMED_REQUEST)
    if not 0 <= repeats <= _MAX_REPEATS:
        raise ScheduleError(
            f"repeats must be between 0 and {_MAX_REPEATS} (0: unlimited), got {repeats}",
            MALFORMED_REQUEST,
        )


def plan(
    schedule: str | None,
    due_time: str | None,
    ttl: str | None,
    repeats: int | None,
    now_ms: int,
    restoring: bool = False,
) -> Plan:
    """Validate a job's timing fields and resolve its first trigger and its expiry.
    `restoring`: the request puts the job back where it stood (app/jobs/restore.py),
    whose next trigger, not the schedule's first from now, must be before the ttl.

    - neither schedule nor dueTime: DAPR_SCHEDULER_SCHEDULE_EMPTY ("Schedule is empty").
    - dueTime only: fires once at dueTime; a past dueTime is due at once (first_ms
      is that past time).
    - schedule only: first fire is schedule.next_after(now_ms) (`@every d`: now + d).
    - both: first at dueTime, then by schedule.
    - repeats: None or 0 = unlimited; negative -> error; > 1 needs a schedule.
    - ttl needs a schedule; counts from dueTime when one is set, else from now;
      a ttl before dueTime is an error (equal is fine: one trigger); so is a
      schedule-only job whose first fire falls after the ttl (it would never fire).
    """
    if schedule is None and due_time is None:
        raise ScheduleError("Schedule is empty", SCHEDULE_EMPTY)
    _check_repeats(repeats)
    if schedule is None and repeats is not None and repeats > 1:
        raise ScheduleError(
            f"job must have a schedule to repeat (repeats is {repeats})", SCHEDULE_JOB
        )
    if schedule is None and ttl is not None:
        raise ScheduleError("job must have a schedule to have a ttl", SCHEDULE_JOB)
    parsed = parse_schedule(schedule) if schedule is not None else None
    if isinstance(parsed, EverySchedule) and parsed.interval_ms == 0 and not repeats:
        raise ScheduleError(
            f"schedule {schedule!r} fires back to back without end: give repeats"
            " (how many times it fires)",
            SCHEDULE_JOB,
        )
    if due_time is not None:
        try:
            due_ns = point_in_time_ns(due_time, now_ms)
        except ScheduleError as e:
            raise ScheduleError(f"invalid dueTime: {e}", SCHEDULE_JOB) from None
        first = ceil_ms(due_ns)  # never earlier than given
    else:
        assert parsed is not None
        found = parsed.next_after(now_ms)
        if found is None:
            raise ScheduleError(
                f"job would never fire: schedule {shown(schedule, 100)} has no occurrence"
                " in the next five years",
                SCHEDULE_JOB,
            )
        first = found
        due_ns = first * NS_PER_MS
    expires = None
    if ttl is not None:
        try:
            end_ns = point_in_time_ns(ttl, first if due_time is not None else now_ms,
                                      end=True)
        except ScheduleError as e:
            raise ScheduleError(f"invalid ttl: {e}", SCHEDULE_JOB) from None
        # An end: rounded down (up, a trigger just past it fired: a 4.9995 s ttl, a
        # trigger at 5 s). A time is compared with the dueTime as given (a ttl just before
        # it passed; one in the same millisecond after it is the dueTime's: one trigger),
        # a duration with what it counts from (a negative one is before the dueTime).
        start_ns = due_ns if rfc3339_ns(ttl) is not None else first * NS_PER_MS
        expires = floor_ms(end_ns)
        if start_ns <= end_ns:
            expires = max(expires, first)
        elif not (restoring and due_time is None):
            what = (
                "ttl must be greater than due time"
                if due_time is not None
                else "job would never fire: its first trigger is after its ttl"
            )
            raise ScheduleError(
                f"{what} (first trigger {format_ms(first)}, ttl expiry {format_ms(expires)})",
                SCHEDULE_JOB,
            )
    # Before 1970 is just "in the past": due at once. Scores stay non-negative, and so
    # does the expiry (left below, it ended the job before its own first trigger).
    return Plan(max(first, 0), None if expires is None else max(expires, 0))


def next_fire_ms(
    schedule: str | None,
    last_sched_ms: int,
    fired: int,
    repeats: int | None,
    expires_ms: int | None,
    now_ms: int,
    catch_up: CatchUp = CatchUp.COALESCE,
    max_catch_up: int = DEFAULT_MAX_CATCH_UP,
) -> int | None:
    """When the trigger after the one due at `last_sched_ms` is due, or None if the job is over.

    `fired` counts finished triggers, the one just finished included. The job
    is over without a schedule (one-shot), once `fired >= repeats` (repeats
    None or 0: unlimited), when the schedule has no further occurrence, or
    when the next time is after `expires_ms` (equal still fires, as Dapr).

    Missed occurrences are coalesced (`coalesce`, the default, and `skip`): the
    result is the first occurrence strictly after max(last_sched_ms, now_ms - 1),
    i.e. never in the past when the worker was down or a delivery ran long, and
    always after last_sched_ms. For `@every d` that is the first
    last_sched_ms + k*d (k >= 1) that is >= now_ms, so the phase is kept.
    `@every 0s` (only with repeats) is due at once, but at least 1 ms after
    last_sched_ms: trigger ids hold the due ms.

    With `all`, as Dapr: the next occurrence after last_sched_ms even when it is
    past (due at once), but never more than `max_catch_up` occurrences behind:
    of those missed, the latest `max_catch_up` are kept (_nth_latest).
    """
    if schedule is None:
        return None
    if repeats and fired >= repeats:
        return None
    parsed = parse_schedule(schedule)
    if catch_up is CatchUp.ALL and not (isinstance(parsed, EverySchedule)
                                        and parsed.interval_ms == 0):
        following = parsed.next_after(last_sched_ms)
        if following is None or (expires_ms is not None and following > expires_ms):
            return None
        if following >= now_ms:
            return following
        return _nth_latest(parsed, following, _catch_up_end(now_ms, expires_ms), max_catch_up)
    floor = max(last_sched_ms, now_ms - 1)
    if isinstance(parsed, EverySchedule):
        step = parsed.interval_ms
        nxt: int | None = (
            last_sched_ms + ((floor - last_sched_ms) // step + 1) * step
            if step
            else max(last_sched_ms + 1, now_ms)
        )
    else:
        nxt = parsed.next_after(floor)
    if nxt is None or (expires_ms is not None and nxt > expires_ms):
        return None
    return nxt


def catch_up_due(
    schedule: str | None,
    has_due_time: bool,
    sched_ms: int,
    count: int,
    repeats: int | None,
    expires_ms: int | None,
    now_ms: int,
    catch_up: CatchUp,
    max_catch_up: int,
    grace_ms: int,
) -> int | None:
    """Where a trigger due at `sched_ms` goes when it is taken at `now_ms`: a worker's first
    attempt of it (`grace_ms`: Settings.catch_up_grace_s), or a paused job's waiting trigger
    at its resume (`grace_ms` 0: what fell due while paused was missed).

    Returns `sched_ms` itself when the trigger is to be delivered now; a later due time when
    it was missed and the job's catch-up policy passes over it (the trigger does not count
    as fired); None when passing over it ends the job (its ttl or schedule ran out).

    - `coalesce`: always delivered (it stands for every occurrence missed since; the next
      one is then the first not in the past, next_fire_ms).
    - `skip`: a trigger taken more than `grace_ms` after its due time is missed; the job
      goes on with its first occurrence not in the past.
    - `all`: delivered, unless more than `max_catch_up` occurrences from it on are past:
      then the job goes on with the `max_catch_up`-th latest of them (older ones are lost).

    Catch-up is about a schedule's occurrences: a one-shot job, the dueTime trigger of a
    job (its first, when it has a dueTime: a past dueTime fires at once) and `@every 0s`
    (back to back by design) are always delivered.
    """
    if (schedule is None or catch_up is CatchUp.COALESCE or sched_ms >= now_ms
            or (count == 0 and has_due_time)):
        return sched_ms
    parsed = parse_schedule(schedule)
    if isinstance(parsed, EverySchedule) and parsed.interval_ms == 0:
        return sched_ms
    if catch_up is CatchUp.SKIP:
        if now_ms - sched_ms <= grace_ms:
            return sched_ms
        return next_fire_ms(schedule, sched_ms, count, repeats, expires_ms, now_ms)
    end = _catch_up_end(now_ms, expires_ms)
    if end <= sched_ms:
        return sched_ms
    return _nth_latest(parsed, sched_ms, end, max_catch_up)


def _catch_up_end(now_ms: int, expires_ms: int | None) -> int:
    """Missed occurrences are before this: the past, and not after the job's expiry."""
    return now_ms if expires_ms is None else min(now_ms, expires_ms + 1)


# The first window a search for the latest occurrences of a cron schedule looks back over
# (it doubles); cron times are whole seconds.
_FIRST_LOOK_BACK_MS = 1000


def _nth_latest(parsed: Schedule, first_ms: int, end_ms: int, n: int) -> int:
    """Of the occurrences from `first_ms` (one of them) to before `end_ms`, the n-th latest;
    `first_ms` when there are n or fewer (n >= 1).

    `@every` is arithmetic. A cron schedule can only be walked forwards, so the windows
    before `end_ms` are looked at from the newest, each twice as long as the one before,
    until they hold n occurrences: next_after calls in proportion to n and to the number
    of windows, never to the number of occurrences missed (a year of a per-second cron)."""
    if isinstance(parsed, EverySchedule):
        step = parsed.interval_ms
        latest = (end_ms - 1 - first_ms) // step  # occurrence first + latest*step < end
        return first_ms + max(0, latest - n + 1) * step
    newer: list[int] = []  # the latest occurrences found, oldest first
    low, width = end_ms, _FIRST_LOOK_BACK_MS
    while low > first_ms:
        start = max(first_ms, low - width)
        window: deque[int] = deque(maxlen=n)  # only its latest n can matter
        seen = 0
        t = parsed.next_after(start - 1)
        while t is not None and t < low:
            window.append(t)
            seen += 1
            t = parsed.next_after(t)
        if seen + len(newer) >= n:
            return [*window, *newer][-n]
        newer[:0] = window
        low, width = start, width * 2
    return first_ms
