"""Dapr's cron dialect: a port of robfig/cron v3's parser and `Next` search.

The dialect is Dapr's (dapr/kit `cron`, a fork of robfig/cron v3, used
by go-etcd-cron with Second|Minute|Hour|Dom|Month|Dow|Descriptor), ported
field by field rather than delegated to croniter, whose dialect differs
(it takes 7 in dow, `L`/`W`/`#`, 5 or 7 fields, and treats DST otherwise):

- exactly 6 fields, seconds first: `sec min hour dom month dow`; `*` or `?`
  in any field; `a`, `a-b`, `*/n`, `a/n` (= a-max/n), `a-b/n`, comma lists;
  month names JAN-DEC and day names SUN-SAT (0-6), case-insensitive.
- day of month and day of week: if either field starts with `*`/`?` (and no
  step > 1) both must match, else either may match (classic cron).
- `TZ=Area/City ` / `CRON_TZ=Area/City ` prefix: fields are wall-clock times
  in that zone. Default: UTC. DST exactly as robfig's `Next`: a wall time
  that does not exist (spring forward) is skipped that day, one that exists
  twice (fall back) fires twice, and `@daily` etc. follow the wall clock.
- `@yearly @annually @monthly @weekly @daily @midnight @hourly`, and
  `@every <Go duration>` which fires every d from the previous fire.
- No occurrence within five years (e.g. `0 0 0 30 2 *`): none (robfig's rule).

As in robfig, the parser makes both kinds of schedule (`CronSchedule`,
robfig's SpecSchedule, and `EverySchedule`, its ConstantDelaySchedule), so
both and their base `Schedule` live here. Times are epoch milliseconds.

Where this differs from Dapr (1.15+, go-etcd-cron), deliberately:

- `@every 0s` parses (Dapr takes it and fires back to back; app.jobs.schedule
  accepts it only with `repeats`); a negative one is refused. A sub-millisecond
  part is rounded up to whole ms, the engine's grain.
- A `TZ=`/`CRON_TZ=` prefix on `@every` is refused, as dapr/kit does since
  2026-07 (kit#161: an interval has no wall clock for a zone to apply to).
- `TZ=Local` (and an empty zone) means UTC: Dapr's scheduler evaluates Local
  against the UTC times it passes, so it is UTC there too.
"""

from __future__ import annotations

import datetime as _dt
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.jobs.durations import ScheduleError, ceil_ms, days_since_epoch, go_duration_ns
from app.jobs.errors import cut, shown  # cut: the schedule in Go's words, which repeat it

__all__ = ["CronSchedule", "EverySchedule", "Schedule", "parse_cron"]

_STAR = 1 << 63  # robfig's starBit: the field was `*` or `?` (no step > 1)
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {m: i + 1 for i, m in enumerate(_MONTH_NAMES)}
_DOWS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, min, max, names) per field, in spec order.
_FIELDS: tuple[tuple[str, int, int, dict[str, int] | None], ...] = (
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DOWS),
)
_UTC: _dt.tzinfo = _dt.UTC


def _bits(lo: int, hi: int, step: int) -> int:
    return sum(1 << i for i in range(lo, hi + 1, step))


_ALL_DOM = _bits(1, 31, 1) | _STAR
_ALL_MONTHS = _bits(1, 12, 1) | _STAR
_ALL_DOW = _bits(0, 6, 1) | _STAR
_ALL_HOURS = _bits(0, 23, 1) | _STAR
# Descriptors as (sec, min, hour, dom, month, dow) bit sets, as parseDescriptor builds them.
_DESCRIPTORS = {
    "@yearly": (1, 1, 1, 1 << 1, 1 << 1, _ALL_DOW),
    "@annually": (1, 1, 1, 1 << 1, 1 << 1, _ALL_DOW),
    "@monthly": (1, 1, 1, 1 << 1, _ALL_MONTHS, _ALL_DOW),
    "@weekly": (1, 1, 1, _ALL_DOM, _ALL_MONTHS, 1 << 0),
    "@daily": (1, 1, 1, _ALL_DOM, _ALL_MONTHS, _ALL_DOW),
    "@midnight": (1, 1, 1, _ALL_DOM, _ALL_MONTHS, _ALL_DOW),
    "@hourly": (1, 1, _ALL_HOURS, _ALL_DOM, _ALL_MONTHS, _ALL_DOW),
}


class Schedule:
    """A parsed schedule. `next_after(t)`: first fire time strictly after t (epoch ms)."""

    __slots__ = ("expr",)
    expr: str

    def __init__(self, expr: str) -> None:
        self.expr = expr

    def next_after(self, after_ms: int) -> int | None:
        """First fire time STRICTLY after `after_ms` (epoch ms); None if none ever."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.expr!r})"


class EverySchedule(Schedule):
    """`@every d`: fires every `interval_ms` counted from the previous fire. With
    `@every 0s` (interval 0) `next_after(t)` is t itself: back to back."""

    __slots__ = ("interval_ms",)

    def __init__(self, expr: str, interval_ms: int) -> None:
        super().__init__(expr)
        self.interval_ms = interval_ms

    def next_after(self, after_ms: int) -> int:
        return after_ms + self.interval_ms


class CronSchedule(Schedule):
    """A cron spec as six bit sets plus a zone; `next_after` is robfig's `SpecSchedule.Next`."""

    __slots__ = ("day", "dom", "dow", "hour", "minute", "month", "second", "tz")

    def __init__(self, expr: str, fields: tuple[int, ...], tz: _dt.tzinfo) -> None:
        super().__init__(expr)
        self.second, self.minute, self.hour, self.dom, self.month, self.dow = fields
        self.tz = tz

    def _day_matches(self, d: _dt.datetime) -> bool:
        dom_ok = bool(1 << d.day & self.dom)
        dow_ok = bool(1 << d.isoweekday() % 7 & self.dow)  # Go: Sunday = 0
        if (self.dom | self.dow) & _STAR:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def _local(self, t: int) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(t, self.tz)

    def _date(self, y: int, mo: int, d: int, h: int, mi: int, s: int) -> int:
        """Go's time.Date(y, mo, d, h, mi, s, 0, loc) as epoch seconds: fields may
        overflow and are normalised; a wall time in a DST gap or overlap gets
        the offset Go's algorithm picks (not Python's fold rule)."""
        wall = days_since_epoch(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
        if self.tz is _UTC:
            return wall
        offset = self._offset(wall)  # guess: the offset at `wall` read as UTC
        fixed = self._offset(wall - offset)
        return wall - (fixed if fixed != offset else offset)

    def _offset(self, t: int) -> int:
        delta = self._local(t).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    def next_after(self, after_ms: int) -> int | None:
        try:
            found = self._next(after_ms // 1000 + 1)  # the upcoming whole second
        except (OverflowError, ValueError, OSError):  # past year 9999 or before year 1
            return None
        return None if found is None else found * 1000

    def _next(self, t: int) -> int | None:
        # A line-by-line port of robfig/cron SpecSchedule.Next (dapr/kit cron/spec.go),
        # keeping its loop structure so that even its DST quirks match: walk month,
        # day, hour, minute, second forward until each matches; where Go does
        # `goto WRAP` we restart. Times are epoch seconds: `t += n` is Go's t.Add
        # (absolute time), `self._date(...)` is Go's time.Date (wall clock).
        d = self._local(t)
        added = False
        year_limit = d.year + 5
        for _ in range(100_000):  # WRAP; the bound only guards against a pathological zone
            if d.year > year_limit:
                return None
            wrap = False
            while not 1 << d.month & self.month:
                if not added:
                    added = True
                    t = self._date(d.year, d.month, 1, 0, 0, 0)
                    d = self._local(t)
                t = self._date(d.year, d.month + 1, d.day, d.hour, d.minute, d.second)
                d = self._local(t)
                if d.month == 1:
                    wrap = True
                    break
            if wrap:
                continue
            while not self._day_matches(d):
                if not added:
                    added = True
                    t = self._date(d.year, d.month, d.day, 0, 0, 0)
                    d = self._local(t)
                was, t = t, self._date(d.year, d.month, d.day + 1, d.hour, d.minute, d.second)
                if t <= was:  # a day the zone skipped (Samoa's 2011-12-30): Go loops for ever
                    t = was + 86400
                d = self._local(t)
                if d.hour:  # midnight skipped or repeated by DST: back onto a day boundary
                    t += (24 - d.hour) * 3600 if d.hour > 12 else -d.hour * 3600
                    d = self._local(t)
                if d.day == 1:
                    wrap = True
                    break
            if wrap:
                continue
            while not 1 << d.hour & self.hour:
                if not added:
                    added = True
                    t = self._date(d.year, d.month, d.day, d.hour, 0, 0)
                t += 3600
                d = self._local(t)
                if d.hour == 0:
                    wrap = True
                    break
            if wrap:
                continue
            while not 1 << d.minute & self.minute:
                if not added:
                    added = True
                    t -= t % 60  # Go's Truncate(time.Minute) works on absolute time
                t += 60
                d = self._local(t)
                if d.minute == 0:
                    wrap = True
                    break
            if wrap:
                continue
            while not 1 << d.second & self.second:
                added = True  # Truncate(time.Second) is a no-op on whole seconds
                t += 1
                d = self._local(t)
                if d.second == 0:
                    wrap = True
                    break
            if wrap:
                continue
            return t
        return None


_INT64_DIGITS = len(str(1 << 63))


def _int(text: str) -> int:
    """Go's strconv.Atoi plus robfig's non-negative check (ASCII digits only)."""
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body or not body.isascii() or not body.isdigit():
        raise ValueError(f"failed to parse int from {shown(text)}")
    if len(body) > _INT64_DIGITS:  # int() of a very long text costs time; Atoi refuses it
        raise ValueError(f"failed to parse int from {text[:40]!r}: value out of range")
    value = int(text)
    if not -(1 << 63) <= value < 1 << 63:  # Go's int, 64 bits
        raise ValueError(f"failed to parse int from {shown(text)}: value out of range")
    if value < 0:
        raise ValueError(f"negative number ({value}) not allowed: {text}")
    return value


def _int_or_name(text: str, names: dict[str, int] | None) -> int:
    if names is not None and text.lower() in names:
        return names[text.lower()]
    return _int(text)


def _range_bits(expr: str, lo: int, hi: int, names: dict[str, int] | None) -> int:
    """robfig getRange: `*`|`?`|a|a-b, optionally /step; `a/step` means a-max/step."""
    range_and_step = expr.split("/")
    low_high = range_and_step[0].split("-")
    extra = 0
    if low_high[0] in ("*", "?"):
        start, end, extra = lo, hi, _STAR
    else:
        start = _int_or_name(low_high[0], names)
        if len(low_high) == 1:
            end = start
        elif len(low_high) == 2:
            end = _int_or_name(low_high[1], names)
        else:
            raise ValueError(f"too many hyphens: {expr}")
    if len(range_and_step) == 1:
        step = 1
    elif len(range_and_step) == 2:
        step = _int(range_and_step[1])
        if len(low_high) == 1:
            end = hi
        if step > 1:
            extra = 0
    else:
        raise ValueError(f"too many slashes: {expr}")
    if start < lo:
        raise ValueError(f"beginning of range ({start}) below minimum ({lo}): {expr}")
    if end > hi:
        raise ValueError(f"end of range ({end}) above maximum ({hi}): {expr}")
    if start > end:
        raise ValueError(f"beginning of range ({start}) beyond end of range ({end}): {expr}")
    if step == 0:
        raise ValueError(f"step of range should be a positive number: {expr}")
    return _bits(start, end, step) | extra


# IANA zone names are at most 38 characters in 4 parts (`right/America/Argentina/
# ComodRivadavia`). Longer names are refused before zoneinfo sees them: its look-up of a
# name of a few hundred parts recurses past Python's limit.
MAX_ZONE_NAME_LENGTH = 64
MAX_ZONE_NAME_PARTS = 5


def _load_zone(name: str) -> _dt.tzinfo:
    if name in ("", "UTC", "Local"):  # Go: "" is UTC; Local is UTC in Dapr's scheduler
        return _UTC
    if len(name) > MAX_ZONE_NAME_LENGTH or name.count("/") >= MAX_ZONE_NAME_PARTS:
        shown = name if len(name) <= MAX_ZONE_NAME_LENGTH else name[:MAX_ZONE_NAME_LENGTH] + "..."
        raise ValueError(f"provided bad location {shown}: unknown time zone (a zone name has "
                         f"at most {MAX_ZONE_NAME_LENGTH} characters in {MAX_ZONE_NAME_PARTS} "
                         "parts)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, RecursionError):
        raise ValueError(f"provided bad location {name}: unknown time zone {name}") from None


# Go's unicode.IsSpace (strings.Fields and TrimSpace split and trim on these): Python's
# whitespace less \x1c-\x1f (str.split() split fields on them, and took schedules Dapr
# refuses).
_GO_SPACES = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007" \
             "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_GO_SPACE = re.compile(f"[{_GO_SPACES}]+")


def parse_cron(expr: str) -> Schedule:
    """robfig Parser.Parse with Second|Minute|Hour|Dom|Month|Dow|Descriptor.

    Raises ValueError with robfig's wording; app.jobs.schedule.parse_schedule wraps it.
    """
    if not expr:
        raise ValueError("empty spec string")
    spec, tz = expr, _UTC
    if spec.startswith(("TZ=", "CRON_TZ=")):
        space = spec.find(" ")
        if space < 0:
            raise ValueError("a time zone prefix must be followed by a space and a schedule")
        tz = _load_zone(spec[spec.index("=") + 1 : space])
        spec = spec[space:].strip(_GO_SPACES)
        if spec.startswith("@every "):
            raise ValueError(f"timezone is not supported for @every schedules: {cut(expr)}")
    if spec.startswith("@"):
        if spec.startswith("@every "):
            try:
                ns = go_duration_ns(spec[len("@every ") :])
            except ScheduleError as e:
                raise ValueError(f"failed to parse duration {cut(spec)}: {cut(str(e))}") from None
            if ns < 0:
                raise ValueError(f"@every needs a duration of 0 or more, got {shown(spec[7:])}")
            return EverySchedule(expr, ceil_ms(ns))
        if spec not in _DESCRIPTORS:
            raise ValueError(
                f"unrecognized descriptor: {cut(spec)} (expected @yearly, @annually, @monthly,"
                " @weekly, @daily, @midnight, @hourly or @every <duration>)"
            )
        return CronSchedule(expr, _DESCRIPTORS[spec], tz)
    fields = [field for field in _GO_SPACE.split(spec) if field]  # strings.Fields
    if len(fields) != 6:
        raise ValueError(
            f"expected exactly 6 fields (second minute hour day-of-month month day-of-week),"
            f" found {len(fields)}: [{cut(' '.join(fields))}]"
        )
    bits = []
    for text, (name, lo, hi, names) in zip(fields, _FIELDS, strict=True):
        value = 0
        try:
            for part in text.split(","):
                if part:  # strings.FieldsFunc drops empty list items
                    value |= _range_bits(part, lo, hi, names)
        except ValueError as e:
            raise ValueError(f"{name} field {shown(text)}: {e}") from None
        bits.append(value)
    return CronSchedule(expr, tuple(bits), tz)
