"""Duration and point-in-time parsing for job `dueTime`, `ttl` and `@every`.

Three grammars, tried in Dapr's order (go-etcd-cron `parsePointInTime`):

1. RFC 3339 timestamp, as Go's `time.Parse(time.RFC3339, s)` reads it:
   `2024-04-24T11:42:22Z`, `2024-04-24T11:42:22.5+02:00` (fractional seconds
   with `.` or `,`, any number of digits, truncated to nanoseconds as Go does).
   Difference: lower-case `t`/`z` are accepted too (RFC 3339 allows them).
2. Go duration, `time.ParseDuration`: `300ms`, `-1.5h`, `2h45m`, `1µs`, `0`.
3. ISO 8601 duration: `PT2S`, `P1DT2H`, `P1W`, `P1Y2M3DT4H5M6S`. Years,
   months and days are calendar arithmetic on the UTC date of the base time,
   exactly like Go's `AddDate` used by Dapr (31 Jan + P1M = 3 Mar, or 2 Mar in
   a leap year). Differences from dapr/kit `ParseISO8601Duration`, whose
   scanner is lax: the grammar here is strict (components in order, no
   signs, no bare digits; an empty `T` is fine as in Dapr, so `PT` is zero),
   a decimal fraction is allowed on seconds (`PT0.5S`, which Dapr rejects),
   and any repeating form `Rn/...` is rejected (Dapr lets `R0/...` through).

Everything resolves to integer nanoseconds, as Go holds it; a point in time
is then rounded UP to whole epoch milliseconds, because a trigger must never
fire before its due time. No floats anywhere.
"""

from __future__ import annotations

import datetime as _dt
import re

from app.jobs.errors import MALFORMED_REQUEST, SCHEDULE_JOB, JobrunnerError, shown


class ScheduleError(JobrunnerError, ValueError):
    """Bad schedule/dueTime/ttl/repeats input. `code` is a Dapr-style error code string,
    str(e) a clear message."""

    code: str

    def __init__(self, message: str, code: str = MALFORMED_REQUEST) -> None:
        super().__init__(message)
        self.code = code


NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
_MAX_NS = (1 << 63) - 1  # a Go time.Duration is an int64 of nanoseconds
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
# The longest dueTime, ttl or duration accepted: longer input is garbage, and this keeps
# the big-integer maths bounded.
MAX_DURATION_LENGTH = 256

_GO_UNITS_NS = {
    "ns": 1,
    "us": NS_PER_US,
    "\u00b5s": NS_PER_US,  # µ MICRO SIGN
    "\u03bcs": NS_PER_US,  # μ GREEK SMALL LETTER MU
    "ms": NS_PER_MS,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
}
_DIGITS = frozenset("0123456789")


def _too_long(text: object) -> str:
    """Why an input was refused before parsing; never the input itself (it may be huge)."""
    if not isinstance(text, str):
        return "not a string"
    return f"longer than {MAX_DURATION_LENGTH} characters"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def ceil_ms(ns: int) -> int:
    """Nanoseconds as whole milliseconds, rounded up: what is kept in milliseconds never
    comes sooner than given (a due time, an interval)."""
    return _ceil_div(ns, NS_PER_MS)


def floor_ms(ns: int) -> int:
    """Nanoseconds as whole milliseconds, rounded down: an end never comes later than given."""
    return ns // NS_PER_MS


def go_duration_ns(text: str) -> int:
    """Go's `time.ParseDuration`, to integer nanoseconds (sign kept).

    Scans like Go: `[-+]?` then one or more `digits[.digits]unit`, where the
    unit is the longest run of non-digit, non-dot characters; a bare "0" is 0.
    Fractions are truncated at the nanosecond as Go does.
    """
    orig = text
    if not isinstance(text, str) or len(text) > MAX_DURATION_LENGTH:
        raise ScheduleError(f"time: invalid duration: {_too_long(text)}")
    s, neg = text, False
    if s and s[0] in "+-":
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise ScheduleError(f"time: invalid duration {shown(orig)}")
    total = 0
    while s:
        i = 0
        while i < len(s) and s[i] in _DIGITS:
            i += 1
        whole, s = s[:i], s[i:]
        frac = ""
        if s.startswith("."):
            j = 1
            while j < len(s) and s[j] in _DIGITS:
                j += 1
            frac, s = s[1:j], s[j:]
        if not whole and not frac:
            raise ScheduleError(f"time: invalid duration {shown(orig)}")
        k = 0
        while k < len(s) and s[k] != "." and s[k] not in _DIGITS:
            k += 1
        if k == 0:
            raise ScheduleError(f"time: missing unit in duration {shown(orig)}")
        unit, s = s[:k], s[k:]
        if unit not in _GO_UNITS_NS:
            raise ScheduleError(f"time: unknown unit {shown(unit)} in duration {shown(orig)}")
        scale = _GO_UNITS_NS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        if total > _MAX_NS + 1:
            raise ScheduleError(f"time: invalid duration {shown(orig)} (out of range)")
    if total > _MAX_NS + (1 if neg else 0):
        raise ScheduleError(f"time: invalid duration {shown(orig)} (out of range)")
    return -total if neg else total


def _ns_to_timedelta(ns: int) -> _dt.timedelta:
    # timedelta holds microseconds: round up so nothing derived from it is early.
    return _dt.timedelta(microseconds=_ceil_div(ns, NS_PER_US))


def parse_go_duration(text: str) -> _dt.timedelta:
    """Go `time.ParseDuration` grammar ("300ms", "-1.5h", "2h45m", "1µs", "0").

    Negative durations parse (Go allows them); callers decide. A sub-microsecond
    remainder is rounded up (towards +inf) to fit `timedelta`; use
    `go_duration_ns` for the exact value.
    """
    return _ns_to_timedelta(go_duration_ns(text))


_ISO_RE = re.compile(
    r"P(?:(?P<y>[0-9]+)Y)?(?:(?P<mo>[0-9]+)M)?(?:(?P<w>[0-9]+)W)?(?:(?P<d>[0-9]+)D)?"
    r"(?:T(?:(?P<h>[0-9]+)H)?(?:(?P<mi>[0-9]+)M)?(?:(?P<s>[0-9]+)(?:[.,](?P<f>[0-9]+))?S)?)?"
)


def iso8601_parts(text: str) -> tuple[int, int, int, int]:
    """A non-repeating ISO 8601 duration as (years, months, days, nanoseconds)."""
    if not isinstance(text, str) or len(text) > MAX_DURATION_LENGTH:
        raise ScheduleError(f"unsupported ISO8601 duration format: {_too_long(text)}")
    if text.startswith("R"):
        raise ScheduleError(f"non-repeating ISO8601 expected, got {shown(text)}")
    m = _ISO_RE.fullmatch(text)
    if m is None or len(text) < 2:  # "P" alone is rejected, "PT" is zero (as in Dapr)
        raise ScheduleError(f"unsupported ISO8601 duration format: {shown(text)}")
    y, mo, w, d, h, mi, s = (int(m.group(g) or "0") for g in ("y", "mo", "w", "d", "h", "mi", "s"))
    frac = (m.group("f") or "")[:9].ljust(9, "0")  # Go keeps nanoseconds, truncates the rest
    return y, mo, w * 7 + d, (h * 3600 + mi * 60 + s) * NS_PER_S + int(frac)


def parse_iso8601_duration(text: str) -> _dt.timedelta:
    """ISO 8601 duration as a fixed length: "PT2S", "P1DT2H", "PT0.5S", "P1W".

    Years and months have no fixed length, so a non-zero Y or M(onth) is a
    ScheduleError here; `parse_point_in_time` applies them as calendar
    arithmetic, as Dapr does. Repeating forms ("R5/PT2S") are rejected.
    """
    years, months, days, ns = iso8601_parts(text)
    if years or months:
        raise ScheduleError(
            f"ISO8601 duration {shown(text)} has years or months, which have no fixed length;"
            " use days/weeks, or use it as a dueTime/ttl (calendar arithmetic)"
        )
    return _dt.timedelta(days=days) + _ns_to_timedelta(ns)


_RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.,]([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to (year, month, day), normalising overflowing months
    and days like Go's time.Date. Raises ValueError outside years 1..9999."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return _dt.date(year, month, 1).toordinal() - _EPOCH_ORDINAL + day - 1


def rfc3339_ns(text: str) -> int | None:
    """An RFC 3339 timestamp as epoch nanoseconds, or None if it is not one."""
    m = _RFC3339_RE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    if hour > 23 or minute > 59 or second > 59:
        return None
    try:
        _dt.date(year, month, day)  # validates the day of the month
    except ValueError:
        return None
    zone = m.group(8)
    offset = 0
    if zone not in ("Z", "z"):
        oh, om = int(zone[1:3]), int(zone[4:6])
        if oh > 23 or om > 59:
            return None
        offset = (oh * 3600 + om * 60) * (-1 if zone[0] == "-" else 1)
    seconds = days_since_epoch(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    frac = (m.group(7) or "")[:9].ljust(9, "0")
    return (seconds - offset) * NS_PER_S + int(frac)


def _add_calendar_ms(base_ms: int, years: int, months: int, days: int) -> int:
    """Go's t.AddDate(years, months, days) on a UTC time, in epoch ms."""
    if not (years or months or days):
        return base_ms
    day_index, ms_of_day = divmod(base_ms, 86_400_000)
    date = _dt.date.fromordinal(_EPOCH_ORDINAL + day_index)
    new_day = days_since_epoch(date.year + years, date.month + months, date.day + days)
    return new_day * 86_400_000 + ms_of_day


# Due times must be real instants a client can read back: years 1970..9999 (UTC).
# An earlier instant is in the past anyway (due at once: the caller clamps it).
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def parse_point_in_time(text: str, base_ms: int) -> int:
    """A dueTime/ttl value as absolute epoch milliseconds, rounded UP (a due time is never
    made earlier: base + 1.000001 ms -> base + 2 ms), checked to be before year 10000."""
    return ceil_ms(point_in_time_ns(text, base_ms))


def point_in_time_ns(text: str, base_ms: int, end: bool = False) -> int:
    """A dueTime/ttl value as the exact instant, epoch nanoseconds (a ttl is compared with
    its dueTime so: see app.jobs.schedule.plan), checked to be before year 10000 as it
    is kept: rounded up, or down for an `end` (a ttl)."""
    ns = _parse_point_in_time(text, base_ms)
    if (floor_ms if end else ceil_ms)(ns) > MAX_MS:
        raise ScheduleError(f"{shown(text)} is after the year 9999", SCHEDULE_JOB)
    return ns


def _parse_point_in_time(text: str, base_ms: int) -> int:
    """A dueTime/ttl value as absolute epoch NANOSECONDS.

    Accepts an RFC 3339 timestamp, or a Go or ISO 8601 duration counted from `base_ms`.
    """
    if not isinstance(text, str) or len(text) > MAX_DURATION_LENGTH:
        raise ScheduleError(f"unrecognized time or duration: {_too_long(text)}", SCHEDULE_JOB)
    ts = rfc3339_ns(text)
    if ts is not None:
        return ts
    try:
        return base_ms * NS_PER_MS + go_duration_ns(text)
    except ScheduleError:
        pass
    try:
        years, months, days, ns = iso8601_parts(text)
    except ScheduleError as e:
        if text.startswith("R"):
            raise ScheduleError(str(e), SCHEDULE_JOB) from None
        raise ScheduleError(
            f"unrecognized time or duration {shown(text)}: expected an RFC3339 timestamp"
            ' ("2024-04-24T11:42:22Z"), a Go duration ("2s", "1h30m", "500ms")'
            ' or an ISO 8601 duration ("PT2S", "P1DT2H")',
            SCHEDULE_JOB,
        ) from None
    try:
        start_ms = _add_calendar_ms(base_ms, years, months, days)
    except (ValueError, OverflowError):
        raise ScheduleError(
            f"{shown(text)} is out of the supported date range", SCHEDULE_JOB
        ) from None
    return start_ms * NS_PER_MS + ns


# format_ms's last second and its text (a job's encoding formats its due time, and due
# times come in runs within a second; strftime is most of the cost), and its last answer
# (a burst's jobs, decoded by the workers one by one, share their due time). Tuples: a
# thread sees an old pair or a new one, never one of each.
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00.")
_last_text: tuple[int, str] = (0, "1970-01-01T00:00:00.000Z")


def format_ms(ms: int) -> str:
    """Epoch ms as an RFC 3339 UTC string with milliseconds (for messages and GET)."""
    global _last_second, _last_text
    last_ms, text = _last_text
    if ms == last_ms:
        return text
    second, millis = divmod(ms, 1000)
    cached, prefix = _last_second
    if second != cached:
        try:
            moment = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(seconds=second)
        except OverflowError:
            return f"{ms} ms since the epoch"
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second = (second, prefix)
    text = f"{prefix}{millis:03d}Z"
    _last_text = (ms, text)
    return text
