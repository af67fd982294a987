"""Schedule maths: grammars, Dapr's cron semantics (DST included), planning, next trigger.

Pure unit and property tests, no Redis. The brute-force cron oracle below is
written from the spec (every instant whose wall-clock fields match), not from
the implementation, and shares no code with it.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.jobs.errors import MALFORMED_REQUEST, SCHEDULE_EMPTY, SCHEDULE_JOB
from app.jobs.schedule import (
    CronSchedule,
    EverySchedule,
    Plan,
    ScheduleError,
    go_duration_ns,
    next_fire_ms,
    parse_go_duration,
    parse_iso8601_duration,
    parse_point_in_time,
    parse_schedule,
    plan,
)

UTC = dt.UTC
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ms(text: str) -> int:
    """An ISO timestamp (offset required) as epoch ms."""
    moment = dt.datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return (moment - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(milliseconds=1)


def fires(expr: str, after: str, count: int) -> list[str]:
    """The next `count` fire times after `after`, as UTC ISO strings."""
    schedule = parse_schedule(expr)
    out: list[str] = []
    t: int | None = ms(after)
    for _ in range(count):
        assert t is not None
        t = schedule.next_after(t)
        if t is None:
            out.append("never")
            break
        out.append(dt.datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="milliseconds"))
    return out


# --- Go durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("300ms", 300_000_000),
        ("-1.5h", -5_400_000_000_000),
        ("2h45m", 9_900_000_000_000),
        ("1h30m", 5_400_000_000_000),
        ("500ms", 500_000_000),
        ("1us", 1_000),
        ("1\u00b5s", 1_000),  # micro sign
        ("1\u03bcs", 1_000),  # Greek mu
        ("1ns", 1),
        ("0", 0),
        ("+0", 0),
        ("-0", 0),
        ("0s", 0),
        (".5s", 500_000_000),
        ("5.s", 5_000_000_000),
        ("1.5m", 90_000_000_000),
        ("1h1m1s1ms1us1ns", 3_661_001_001_001),
        ("1s1s", 2_000_000_000),  # Go allows repeated units
        ("1.0000000001s", 1_000_000_000),  # truncated at the ns, as Go does
        ("2562047h47m16.854775807s", (1 << 63) - 1),
        ("-2562047h47m16.854775808s", -(1 << 63)),
    ],
)
def test_go_duration_valid(text: str, ns: int) -> None:
    assert go_duration_ns(text) == ns
    assert parse_go_duration(text) == dt.timedelta(microseconds=-(-ns // 1000))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-",
        "+",
        ".",
        "1",
        "00",
        "s",
        "1 s",
        " 1s",
        "1s ",
        "1hh",
        "1.5.5s",
        "1S",
        "1sec",
        "1d",
        "1h-30m",
        "1e3s",
        "9223372036854775808ns",
        "2562047h47m16.854775808s",
        "PT2S",
    ],
)
def test_go_duration_invalid(text: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_go_duration(text)
    assert "duration" in str(info.value)
    assert info.value.code == MALFORMED_REQUEST


def test_go_duration_sub_microsecond_rounds_up_in_timedelta() -> None:
    assert parse_go_duration("1ns") == dt.timedelta(microseconds=1)
    assert parse_go_duration("1001ns") == dt.timedelta(microseconds=2)
    assert parse_go_duration("-1ns") == dt.timedelta(0)


@st.composite
def go_duration_texts(draw: st.DrawFn) -> tuple[str, int]:
    """A Go duration string and its value, computed independently of the parser."""
    units = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "ms": 10**6, "s": 10**9, "m": 6 * 10**10}
    units["h"] = 36 * 10**11
    sign = draw(st.sampled_from(["", "+", "-"]))
    text, total = sign, 0
    for _ in range(draw(st.integers(1, 4))):
        whole = draw(st.integers(0, 10_000))
        frac = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=12)))
        unit = draw(st.sampled_from(sorted(units)))
        text += f"{whole}.{frac}{unit}" if frac else f"{whole}{unit}"
        total += whole * units[unit] + (int(frac) * units[unit] // 10 ** len(frac) if frac else 0)
    return text, -total if sign == "-" else total


@FAST
@given(go_duration_texts())
def test_go_duration_matches_reference(case: tuple[str, int]) -> None:
    text, expected = case
    assert go_duration_ns(text) == expected


# --- ISO 8601 durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT2S", dt.timedelta(seconds=2)),
        ("P1DT2H", dt.timedelta(days=1, hours=2)),
        ("PT0.5S", dt.timedelta(milliseconds=500)),
        ("PT0,25S", dt.timedelta(milliseconds=250)),
        ("P1W", dt.timedelta(days=7)),
        ("P1W2D", dt.timedelta(days=9)),
        ("PT1H30M", dt.timedelta(minutes=90)),
        ("PT90M", dt.timedelta(minutes=90)),
        ("P0D", dt.timedelta(0)),
        ("PT", dt.timedelta(0)),  # Dapr accepts an empty time part
        ("P2DT", dt.timedelta(days=2)),
        ("P0Y0M1D", dt.timedelta(days=1)),
        ("PT0.0000001S", dt.timedelta(microseconds=1)),  # 100 ns, rounded up to a microsecond
    ],
)
def test_iso8601_valid(text: str, expected: dt.timedelta) -> None:
    assert parse_iso8601_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("R5/PT2S", "non-repeating ISO8601 expected"),
        ("R/PT2S", "non-repeating ISO8601 expected"),
        ("R0/PT2S", "non-repeating ISO8601 expected"),
        ("P1Y", "years or months"),
        ("P1M", "years or months"),
        ("P", "unsupported ISO8601"),
        ("", "unsupported ISO8601"),
        ("pt2s", "unsupported ISO8601"),
        ("PT1S2H", "unsupported ISO8601"),  # out of order
        ("PT-5S", "unsupported ISO8601"),
        ("P1.5D", "unsupported ISO8601"),
        ("PT2", "unsupported ISO8601"),
        ("P1H", "unsupported ISO8601"),  # H needs T
        ("2s", "unsupported ISO8601"),
        ("PT2S ", "unsupported ISO8601"),
    ],
)
def test_iso8601_invalid(text: str, fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment):
        parse_iso8601_duration(text)


# --- points in time (dueTime, ttl) -----------------------------------------------------------

BASE = ms("2024-01-31T10:00:00+00:00")


@pytest.mark.parametrize(
    ("text", "base", "expected"),
    [
        ("2024-04-24T11:42:22Z", BASE, ms("2024-04-24T11:42:22+00:00")),
        ("2024-04-24T11:42:22+02:00", BASE, ms("2024-04-24T09:42:22+00:00")),
        ("2024-04-24T11:42:22-05:30", BASE, ms("2024-04-24T17:12:22+00:00")),
        ("2024-04-24T11:42:22.5Z", BASE, ms("2024-04-24T11:42:22.500+00:00")),
        ("2024-04-24T11:42:22,25Z", BASE, ms("2024-04-24T11:42:22.250+00:00")),
        ("2024-04-24t11:42:22z", BASE, ms("2024-04-24T11:42:22+00:00")),
        # sub-millisecond remainders round UP: a trigger is never early
        ("2024-04-24T11:42:22.0001Z", BASE, ms("2024-04-24T11:42:22.001+00:00")),
        ("2024-04-24T11:42:22.999999999Z", BASE, ms("2024-04-24T11:42:23+00:00")),
        ("2024-04-24T11:42:22.0000000001Z", BASE, ms("2024-04-24T11:42:22+00:00")),  # < 1 ns
        ("1969-12-31T23:59:59.9995Z", BASE, 0),
        ("2s", BASE, BASE + 2000),
        ("0s", BASE, BASE),
        ("0", BASE, BASE),
        ("-5s", BASE, BASE - 5000),
        ("1h30m", BASE, BASE + 5_400_000),
        ("500ms", BASE, BASE + 500),
        ("1us", BASE, BASE + 1),
        ("1.000001ms", BASE, BASE + 2),
        ("1.0000001ms", BASE, BASE + 1),  # 1000000.1 ns: Go keeps whole ns
        ("-1.5ms", BASE, BASE - 1),
        ("PT2S", BASE, BASE + 2000),
        ("PT0.5S", BASE, BASE + 500),
        ("P1DT2H", BASE, BASE + 26 * 3_600_000),
        ("P1W", BASE, BASE + 7 * 86_400_000),
        # years/months: Go's AddDate on the UTC date (31 Jan 2024 + 1 month = 31 Feb = 2 Mar)
        ("P1M", BASE, ms("2024-03-02T10:00:00+00:00")),
        ("P1M", ms("2023-01-31T10:00:00+00:00"), ms("2023-03-03T10:00:00+00:00")),
        ("P1Y", ms("2024-02-29T00:00:00+00:00"), ms("2025-03-01T00:00:00+00:00")),
        ("P1Y2M3DT4H5M6S", BASE, ms("2025-04-03T14:05:06+00:00")),
        ("P12M", BASE, ms("2025-01-31T10:00:00+00:00")),
    ],
)
def test_point_in_time(text: str, base: int, expected: int) -> None:
    assert parse_point_in_time(text, base) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("garbage", "unrecognized time or duration"),
        ("", "unrecognized time or duration"),
        ("2024-02-30T00:00:00Z", "unrecognized"),  # no such day
        ("2024-04-24T24:00:00Z", "unrecognized"),
        ("2024-04-24T11:42:60Z", "unrecognized"),  # Go has no leap seconds either
        ("2024-04-24T11:42:22", "unrecognized"),  # zone required
        ("2024-04-24 11:42:22Z", "unrecognized"),
        ("2024-04-24T11:42:22+0200", "unrecognized"),
        ("2024-04-24", "unrecognized"),
        ("R3/PT1S", "non-repeating ISO8601 expected"),
        ("P9999Y", "out of the supported date range"),
        ("x" * 300, "unrecognized"),
    ],
)
def test_point_in_time_invalid(text: str, fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment) as info:
        parse_point_in_time(text, BASE)
    assert info.value.code == SCHEDULE_JOB


@FAST
@given(st.integers(0, 4_102_444_800_000), st.integers(-(10**15), 10**15))
def test_point_in_time_never_early_from_durations(base: int, ns: int) -> None:
    got = parse_point_in_time(f"{ns}ns", base)
    exact = base * 1_000_000 + ns
    assert got * 1_000_000 >= exact  # never earlier than the exact instant
    assert got * 1_000_000 - exact < 1_000_000  # and less than a millisecond later


@FAST
@given(
    st.datetimes(dt.datetime(1971, 1, 1), dt.datetime(2999, 12, 31)),
    st.integers(-23 * 60, 23 * 60),
    st.text("0123456789", min_size=0, max_size=12),
)
def test_point_in_time_rfc3339_matches_reference(
    moment: dt.datetime, offset_min: int, frac: str
) -> None:
    sign = "-" if offset_min < 0 else "+"
    zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + zone
    wall = moment.replace(microsecond=0, tzinfo=UTC) - dt.timedelta(minutes=offset_min)
    exact_ns = (wall - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1) * 1000
    exact_ns += int(frac[:9].ljust(9, "0")) if frac else 0
    assert parse_point_in_time(text, 0) == -(-exact_ns // 1_000_000)


# --- cron grammar ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("* * * * * *", "2024-01-01T00:00:00+00:00", ["2024-01-01T00:00:01.000+00:00"]),
        # strictly after, from a fractional ms: the upcoming whole second
        ("* * * * * *", "2024-01-01T00:00:00.999+00:00", ["2024-01-01T00:00:01.000+00:00"]),
        (
            "*/20 * * * * *",
            "2024-01-01T00:00:00+00:00",
            ["2024-01-01T00:00:20.000+00:00", "2024-01-01T00:00:40.000+00:00"],
        ),
        (
            "10-40/10 * * * * *",
            "2024-01-01T00:00:00+00:00",
            [f"2024-01-01T00:00:{s}.000+00:00" for s in (10, 20, 30, 40)]
            + ["2024-01-01T00:01:10.000+00:00"],
        ),
        (
            "5/20 * * * * *",  # a/n means a-max/n
            "2024-01-01T00:00:00+00:00",
            [f"2024-01-01T00:00:{s}.000+00:00" for s in ("05", 25, 45)],
        ),
        (
            "0 0,30 9,17 * * *",
            "2024-01-01T08:00:00+00:00",
            [
                "2024-01-01T09:00:00.000+00:00",
                "2024-01-01T09:30:00.000+00:00",
                "2024-01-01T17:00:00.000+00:00",
                "2024-01-01T17:30:00.000+00:00",
                "2024-01-02T09:00:00.000+00:00",
            ],
        ),
        (
            "0 0 9 * * MON-FRI",  # 2024-01-05 is a Friday
            "2024-01-05T10:00:00+00:00",
            ["2024-01-08T09:00:00.000+00:00", "2024-01-09T09:00:00.000+00:00"],
        ),
        (
            "0 0 9 * * sat,Sun",
            "2024-01-01T00:00:00+00:00",
            ["2024-01-06T09:00:00.000+00:00", "2024-01-07T09:00:00.000+00:00"],
        ),
        ("0 0 0 1 jan-MAR/2 ?", "2024-01-15T00:00:00+00:00", ["2024-03-01T00:00:00.000+00:00"]),
        ("0 0 0 ? FEB *", "2024-01-15T00:00:00+00:00", ["2024-02-01T00:00:00.000+00:00"]),
        # dom and dow both restricted: either matches (2024-01-01 is a Monday)
        (
            "0 0 0 15 * MON",
            "2024-01-02T00:00:00+00:00",
            [
                "2024-01-08T00:00:00.000+00:00",
                "2024-01-15T00:00:00.000+00:00",
                "2024-01-22T00:00:00.000+00:00",
            ],
        ),
        # one of them `*` or `?`: both must match
        ("0 0 0 15 * ?", "2024-01-02T00:00:00+00:00", ["2024-01-15T00:00:00.000+00:00"]),
        ("0 0 0 */1 * MON", "2024-01-02T00:00:00+00:00", ["2024-01-08T00:00:00.000+00:00"]),
        ("0 0 0 31 * *", "2024-04-01T00:00:00+00:00", ["2024-05-31T00:00:00.000+00:00"]),
        ("0 0 0 29 2 *", "2024-03-01T00:00:00+00:00", ["2028-02-29T00:00:00.000+00:00"]),
        # robfig gives up after five years: Feb 29 2104 is eight years after 2096
        ("0 0 0 29 2 *", "2096-03-01T00:00:00+00:00", ["never"]),
        ("0 0 0 30 2 *", "2024-01-01T00:00:00+00:00", ["never"]),
        ("0 0 12 * * *", "2024-01-01T12:00:00+00:00", ["2024-01-02T12:00:00.000+00:00"]),
        ("00 05 +3 * * *", "2024-01-01T00:00:00+00:00", ["2024-01-01T03:05:00.000+00:00"]),
        ("0 0 0 1,,15 * *", "2024-01-02T00:00:00+00:00", ["2024-01-15T00:00:00.000+00:00"]),
        ("  0  0 12   * *\t* ", "2024-01-01T00:00:00+00:00", ["2024-01-01T12:00:00.000+00:00"]),
        # descriptors
        ("@yearly", "2024-03-01T00:00:00+00:00", ["2025-01-01T00:00:00.000+00:00"]),
        ("@annually", "2024-03-01T00:00:00+00:00", ["2025-01-01T00:00:00.000+00:00"]),
        ("@monthly", "2024-03-01T00:00:00+00:00", ["2024-04-01T00:00:00.000+00:00"]),
        ("@weekly", "2024-01-01T00:00:00+00:00", ["2024-01-07T00:00:00.000+00:00"]),
        ("@daily", "2024-01-01T00:00:00+00:00", ["2024-01-02T00:00:00.000+00:00"]),
        ("@midnight", "2024-01-01T23:59:59.999+00:00", ["2024-01-02T00:00:00.000+00:00"]),
        ("@hourly", "2024-01-01T00:30:00+00:00", ["2024-01-01T01:00:00.000+00:00"]),
        # @every counts from the previous fire, to the millisecond
        (
            "@every 1500ms",
            "2024-01-01T00:00:00.123+00:00",
            ["2024-01-01T00:00:01.623+00:00", "2024-01-01T00:00:03.123+00:00"],
        ),
        ("@every 1h30m", "2024-01-01T00:00:00+00:00", ["2024-01-01T01:30:00.000+00:00"]),
        ("@every 1us", "2024-01-01T00:00:00+00:00", ["2024-01-01T00:00:00.001+00:00"]),
        # @every 0s (only with repeats: plan): back to back
        ("@every 0s", "2024-01-01T00:00:00+00:00", ["2024-01-01T00:00:00.000+00:00"]),
        # time zones
        (
            "TZ=Asia/Tokyo 0 0 9 * * *",
            "2024-01-01T00:00:00+00:00",
            ["2024-01-02T00:00:00.000+00:00"],
        ),
        (
            "CRON_TZ=Asia/Kolkata 0 0 9 * * *",
            "2024-01-01T00:00:00+00:00",
            ["2024-01-01T03:30:00.000+00:00"],
        ),
        ("TZ=UTC 0 0 9 * * *", "2024-01-01T00:00:00+00:00", ["2024-01-01T09:00:00.000+00:00"]),
        ("TZ=Local 0 0 9 * * *", "2024-01-01T00:00:00+00:00", ["2024-01-01T09:00:00.000+00:00"]),
        (
            "TZ=Europe/Paris   @daily",
            "2024-01-01T12:00:00+00:00",
            ["2024-01-01T23:00:00.000+00:00"],
        ),
    ],
)
def test_cron_next(expr: str, after: str, expected: list[str]) -> None:
    assert fires(expr, after, len(expected)) == expected


NY = "TZ=America/New_York "


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # spring forward (2024-03-10, 02:00 EST -> 03:00 EDT): 02:30 does not exist that day
        (
            NY + "0 30 2 * * *",
            "2024-03-09T12:00:00-05:00",
            ["2024-03-11T06:30:00.000+00:00", "2024-03-12T06:30:00.000+00:00"],
        ),
        (
            NY + "0 0 * * * *",
            "2024-03-10T00:30:00-05:00",
            [
                "2024-03-10T06:00:00.000+00:00",  # 01:00 EST
                "2024-03-10T07:00:00.000+00:00",  # 03:00 EDT
                "2024-03-10T08:00:00.000+00:00",
            ],
        ),
        # fall back (2024-11-03, 02:00 EDT -> 01:00 EST): 01:30 happens twice, fires twice
        (
            NY + "0 30 1 * * *",
            "2024-11-03T00:00:00-04:00",
            [
                "2024-11-03T05:30:00.000+00:00",
                "2024-11-03T06:30:00.000+00:00",
                "2024-11-04T06:30:00.000+00:00",
            ],
        ),
        # daily midnight keeps to the wall clock across both changes
        (
            NY + "@daily",
            "2024-03-09T12:00:00-05:00",
            [
                "2024-03-10T05:00:00.000+00:00",
                "2024-03-11T04:00:00.000+00:00",
                "2024-03-12T04:00:00.000+00:00",
            ],
        ),
        (
            "CRON_TZ=America/New_York 0 0 9 * * MON-FRI",
            "2024-11-01T14:00:00-04:00",
            ["2024-11-04T14:00:00.000+00:00"],
        ),
        # Dapr's own quirk, kept: on Lord Howe's 30-minute DST change robfig's minute walk
        # crosses 02:00 -> 02:30 without re-checking the hour, so it fires at 02:45 local.
        # (Checked against dapr/kit cron compiled with Go.)
        (
            "TZ=Australia/Lord_Howe 0 45 1 * * *",
            "2024-10-05T13:00:00+00:00",
            [
                "2024-10-05T15:15:00.000+00:00",
                "2024-10-05T15:45:00.000+00:00",
                "2024-10-06T14:45:00.000+00:00",
            ],
        ),
    ],
)
def test_cron_dst(expr: str, after: str, expected: list[str]) -> None:
    assert fires(expr, after, len(expected)) == expected


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # Samoa skipped 2011-12-30: the day walk stepped onto it and back for ever (as
        # robfig's does), and the worker that asked stopped delivering for every app.
        ("TZ=Pacific/Apia 0 0 9 * * MON", "2011-12-29T00:00:00+00:00",
         ["2012-01-01T19:00:00.000+00:00", "2012-01-08T19:00:00.000+00:00"]),
        ("TZ=Pacific/Apia 0 0 9 30 * *", "2011-12-01T00:00:00+00:00",
         ["2012-01-29T19:00:00.000+00:00", "2012-03-29T19:00:00.000+00:00"]),
        ("TZ=Pacific/Apia 0 0 0 * * *", "2011-12-29T09:00:00+00:00",
         ["2011-12-29T10:00:00.000+00:00", "2011-12-30T10:00:00.000+00:00",
          "2011-12-31T10:00:00.000+00:00"]),
        ("TZ=Pacific/Kiritimati 0 30 1 21-26 * 1-3", "1994-12-30T00:00:00+00:00",
         ["1995-01-01T11:30:00.000+00:00", "1995-01-02T11:30:00.000+00:00"]),
    ],
)
def test_cron_steps_over_a_day_its_zone_skipped(expr: str, after: str,
                                               expected: list[str]) -> None:
    assert fires(expr, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("", "empty spec string"),
        ("0 * * * *", "expected exactly 6 fields"),  # 5-field Unix cron
        ("0 0 * * * * 2024", "expected exactly 6 fields"),  # croniter's 7-field year form
        ("* * * * * * *", "found 7"),
        ("60 * * * * *", "second field '60': end of range (60) above maximum (59)"),
        ("* 60 * * * *", "minute field"),
        ("* * 24 * * *", "hour field"),
        ("* * * 0 * *", "day-of-month field '0': beginning of range (0) below minimum (1)"),
        ("* * * 32 * *", "day-of-month field"),
        ("* * * * 13 *", "month field"),
        ("* * * * 0 *", "month field"),
        ("* * * * * 7", "day-of-week field '7'"),  # Dapr's dow is 0-6
        ("* * * * * 1-7", "day-of-week field"),
        ("*/0 * * * * *", "step of range should be a positive number"),
        ("5-2 * * * * *", "beginning of range (5) beyond end of range (2)"),
        ("1-2-3 * * * * *", "too many hyphens"),
        ("1/2/3 * * * * *", "too many slashes"),
        ("-1 * * * * *", "failed to parse int"),
        ("*/-1 * * * * *", "negative number (-1) not allowed"),
        ("x * * * * *", "failed to parse int"),
        ("1_0 * * * * *", "failed to parse int"),
        ("0-59/9223372036854775808 * * * * *", "value out of range"),  # past Go's int
        ("0-59/1000000000000000000000 * * * * *", "value out of range"),
        ("\uff11 * * * * *", "failed to parse int"),  # fullwidth digit
        ("* * * L * *", "day-of-month field"),
        ("* * * * * 1#2", "day-of-week field"),
        ("* * * * JAN-FOO *", "month field"),
        ("* * * * * MONDAY", "day-of-week field"),
        ("* * * JAN * *", "day-of-month field"),  # names only where they belong
        ("@foo", "unrecognized descriptor: @foo"),
        ("@Daily", "unrecognized descriptor"),
        ("@daily ", "unrecognized descriptor"),
        (" @daily", "expected exactly 6 fields"),
        ("@every", "unrecognized descriptor"),
        ("@every -1s", "@every needs a duration of 0 or more"),
        ("@every -0.5ms", "@every needs a duration of 0 or more"),
        ("@every 5", "missing unit"),
        ("@every  5s", "failed to parse duration"),
        ("TZ=Nowhere/Special 0 * * * * *", "provided bad location Nowhere/Special"),
        ("TZ=../../etc/passwd 0 * * * * *", "provided bad location"),
        ("TZ=America/New_York", "must be followed by a space"),
        ("TZ=America/New_York ", "found 0"),
        ("CRON_TZ=Mars/Olympus @daily", "provided bad location"),
        # dapr/kit's parser since kit#161: an interval has no wall clock for a zone
        ("TZ=Asia/Tokyo @every 2s", "timezone is not supported for @every schedules"),
        ("CRON_TZ=Europe/Rome @every 1h", "timezone is not supported for @every schedules"),
        ("TZ=UTC @every 0s", "timezone is not supported for @every schedules"),
        ("CRON_TZ=UTC   @every 5m", "timezone is not supported for @every schedules"),
    ],
)
def test_schedule_invalid(expr: str, fragment: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(expr)
    assert fragment in str(info.value)
    assert expr in str(info.value)  # the message names the offending schedule
    assert info.value.code == SCHEDULE_JOB


@pytest.mark.parametrize("expr", ["@every 0s", "@every 0", "@every 0ms", "@every 0h0m0s"])
def test_every_zero_parses_as_a_zero_interval(expr: str) -> None:
    every = parse_schedule(expr)
    assert isinstance(every, EverySchedule) and every.interval_ms == 0


@pytest.mark.parametrize("expr", ["TZ=Europe/Paris @daily", "CRON_TZ=Asia/Tokyo @hourly",
                                  "TZ=UTC 0 0 9 * * *"])
def test_a_zone_still_goes_with_cron_and_the_other_descriptors(expr: str) -> None:
    assert isinstance(parse_schedule(expr), CronSchedule)


def test_schedule_kinds_and_cache() -> None:
    every = parse_schedule("@every 2.5s")
    assert isinstance(every, EverySchedule)
    assert every.interval_ms == 2500
    assert every.expr == "@every 2.5s"
    cron = parse_schedule("CRON_TZ=Europe/Berlin 0 0 * * * *")
    assert isinstance(cron, CronSchedule)
    assert cron.expr == "CRON_TZ=Europe/Berlin 0 0 * * * *"
    assert parse_schedule("0 0 * * * *") is parse_schedule("0 0 * * * *")
    assert "CronSchedule" in repr(cron)


def test_far_future_is_none_not_an_error() -> None:
    assert parse_schedule("@yearly").next_after(ms("9998-06-01T00:00:00+00:00")) == ms(
        "9999-01-01T00:00:00+00:00"
    )
    assert parse_schedule("@yearly").next_after(ms("9999-06-01T00:00:00+00:00")) is None


# --- brute-force cron oracle -------------------------------------------------------------------

_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
_NAMES = [
    {},
    {},
    {},
    {},
    {m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug"))}
    | {"sep": 9, "oct": 10, "nov": 11, "dec": 12},
    {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
]


def _expand(field: str, index: int) -> tuple[set[int], bool]:
    """The values a field allows, and whether it counts as `*` for the dom/dow rule."""
    lo, hi = _RANGES[index]

    def num(text: str) -> int:
        named = _NAMES[index].get(text.lower())
        return int(text) if named is None else named

    values: set[int] = set()
    star = False
    for part in filter(None, field.split(",")):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base in ("*", "?"):
            first, last = lo, hi
            star = star or step == 1
        elif "-" in base:
            first, last = (num(x) for x in base.split("-"))
        else:
            first = num(base)
            last = hi if step_text else first
        values.update(range(first, last + 1, step))
    return values, star


def brute_next(expr: str, after_ms: int) -> int | None:
    """First instant (whole second) strictly after `after_ms` whose wall-clock time in the
    schedule's zone matches every field, searching up to the end of the fifth year after."""
    zone: dt.tzinfo = UTC
    if expr.startswith(("TZ=", "CRON_TZ=")):
        name, expr = expr.split("=", 1)[1].split(" ", 1)
        zone = ZoneInfo(name)
    fields = [_expand(f, i) for i, f in enumerate(expr.split())]
    (secs, _), (mins, _), (hours, _), (doms, dom_star), (months, _), (dows, dow_star) = fields
    start = after_ms // 1000 + 1

    def instants(day: dt.date, h: int, mi: int, s: int) -> list[int]:
        found = []
        for fold in (0, 1):
            wall = dt.datetime(day.year, day.month, day.day, h, mi, s, fold=fold, tzinfo=zone)
            t = int(wall.timestamp())
            back = dt.datetime.fromtimestamp(t, zone)
            if back.replace(tzinfo=None, fold=0) == wall.replace(tzinfo=None, fold=0):
                found.append(t)  # exists (a wall time in a DST gap does not)
        return found

    def latest(day: dt.date, h: int, mi: int) -> int:
        wall = dt.datetime(day.year, day.month, day.day, h, mi, 59, tzinfo=zone)
        return max(int(wall.replace(fold=f).timestamp()) for f in (0, 1)) + 3600

    first_local = dt.datetime.fromtimestamp(start, zone)
    day = first_local.date()
    while day.year <= first_local.year + 5:
        dom_ok, dow_ok = day.day in doms, day.isoweekday() % 7 in dows
        if day.month in months and (
            (dom_ok and dow_ok) if (dom_star or dow_star) else (dom_ok or dow_ok)
        ):
            best = None
            for h in sorted(hours):
                if latest(day, h, 59) < start:
                    continue
                for mi in sorted(mins):
                    if latest(day, h, mi) < start:
                        continue
                    for s in sorted(secs):
                        found = [t for t in instants(day, h, mi, s) if t >= start]
                        best = min([*found, best]) if best is not None else min(found, default=None)
                        if found and found[0] == instants(day, h, mi, s)[0]:
                            # Its first (fold=0) instant is not early: every later wall time
                            # maps to later instants, so nothing further can beat `best`.
                            return None if best is None else best * 1000
            if best is not None:
                return best * 1000
        day += dt.timedelta(days=1)
    return None


@st.composite
def cron_fields(draw: st.DrawFn, index: int) -> str:
    lo, hi = _RANGES[index]
    names = list(_NAMES[index])

    def value() -> str:
        v = draw(st.integers(lo, hi))
        use_name = draw(st.booleans())
        if names and use_name:
            name = names[v - lo]
            return draw(st.sampled_from([name, name.upper(), name.title()]))
        return str(v)

    parts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["*", "?", "*/n", "a", "a-b", "a/n", "a-b/n"]))
        if kind in ("*", "?"):
            parts.append(kind)
        elif kind == "*/n":
            parts.append(f"*/{draw(st.integers(1, hi - lo + 1))}")
        elif kind == "a":
            parts.append(value())
        else:
            a, b = sorted((draw(st.integers(lo, hi)), draw(st.integers(lo, hi))))
            use_name = draw(st.booleans())
            start = names[a - lo] if names and use_name else str(a)
            step = draw(st.integers(1, 12))
            parts.append(
                {"a-b": f"{start}-{b}", "a/n": f"{start}/{step}", "a-b/n": f"{start}-{b}/{step}"}[
                    kind
                ]
            )
    return ",".join(parts)


# Instants around the 2024 DST changes of the zones tested (UTC), to make sure they are hit.
_TRANSITIONS = [ms(t) for t in ("2024-03-10T07:00:00+00:00", "2024-11-03T06:00:00+00:00")]
_TRANSITIONS += [ms(t) for t in ("2024-03-31T01:00:00+00:00", "2024-10-27T01:00:00+00:00")]
_AFTERS = st.one_of(
    st.integers(ms("2020-01-01T00:00:00+00:00"), ms("2030-01-01T00:00:00+00:00")),
    st.builds(
        lambda base, delta: base + delta,
        st.sampled_from(_TRANSITIONS),
        st.integers(-30 * 3_600_000, 30 * 3_600_000),
    ),
)
_ZONES = st.sampled_from(["", "TZ=America/New_York ", "CRON_TZ=Europe/Berlin ", "TZ=Asia/Kolkata "])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _ZONES,
    st.tuples(*(cron_fields(i) for i in range(6))),
    _AFTERS,
    st.data(),
)
def test_cron_matches_brute_force(
    zone: str, fields: tuple[str, ...], after: int, data: st.DataObject
) -> None:
    # Make seconds and minutes sparse often, so the next time is far enough to be interesting.
    fields = (
        data.draw(st.one_of(st.just(fields[0]), st.sampled_from(["0", "30", "*/15"]))),
        data.draw(st.one_of(st.just(fields[1]), st.sampled_from(["0", "*/20"]))),
        *fields[2:],
    )
    expr = zone + " ".join(fields)
    schedule = parse_schedule(expr)
    t: int | None = after
    for _ in range(3):  # a few steps, so fire-from-a-fire is covered too
        assert t is not None
        expected = brute_next(expr, t)
        assert schedule.next_after(t) == expected, (expr, t)
        t = expected
        if t is None:
            break


# --- plan ------------------------------------------------------------------------------------

NOW = ms("2024-04-24T11:00:00+00:00")


@pytest.mark.parametrize(
    ("schedule", "due_time", "ttl", "repeats", "expected"),
    [
        (None, "2s", None, None, Plan(NOW + 2000, None)),
        (None, "2s", None, 1, Plan(NOW + 2000, None)),
        (None, "2s", None, 0, Plan(NOW + 2000, None)),
        (None, "2024-04-24T10:00:00Z", None, None, Plan(ms("2024-04-24T10:00:00+00:00"), None)),
        (None, "PT2S", None, None, Plan(NOW + 2000, None)),
        ("@every 5s", None, None, None, Plan(NOW + 5000, None)),
        ("0 30 * * * *", None, None, 3, Plan(ms("2024-04-24T11:30:00+00:00"), None)),
        ("@daily", "10s", "11s", 3, Plan(NOW + 10_000, NOW + 21_000)),  # ttl from dueTime
        ("@daily", None, "48h", None, Plan(ms("2024-04-25T00:00:00+00:00"), NOW + 172_800_000)),
        ("@every 1h", "2024-04-24T11:42:22Z", "2024-04-24T11:42:22Z", None,
         Plan(ms("2024-04-24T11:42:22+00:00"), ms("2024-04-24T11:42:22+00:00"))),
        ("@every 1h", "1s", "2024-05-01T00:00:00Z", None,
         Plan(NOW + 1000, ms("2024-05-01T00:00:00+00:00"))),
        ("@every 1h", "-1h", None, None, Plan(NOW - 3_600_000, None)),  # past: due at once
        # @every 0s with repeats (Dapr's own test body): due at once, then back to back
        ("@every 0s", "0s", None, 3, Plan(NOW, None)),
        ("@every 0s", None, None, 1, Plan(NOW, None)),
        ("@every 0s", "5s", "1h", 2, Plan(NOW + 5000, NOW + 3_605_000)),
        ("0 0 0 30 2 *", "1s", None, None, Plan(NOW + 1000, None)),  # fires once, by dueTime
        # A ttl is an end: rounded down (up, a trigger at 5 s fired past a 4.9995 s ttl)
        ("@every 1s", "0s", "4.9995s", None, Plan(NOW, NOW + 4999)),
        ("@every 1s", "0s", "2024-04-24T11:00:04.9995Z", None, Plan(NOW, NOW + 4999)),
        # ... but a ttl after the dueTime in its millisecond is the dueTime's: one trigger
        ("@every 1s", "2030-01-01T00:00:00.0001Z", "2030-01-01T00:00:00.0005Z", None,
         Plan(ms("2030-01-01T00:00:00+00:00") + 1, ms("2030-01-01T00:00:00+00:00") + 1)),
        ("@every 1s", "2030-01-01T00:00:00.0001Z", "2030-01-01T00:00:00.0001Z", None,
         Plan(ms("2030-01-01T00:00:00+00:00") + 1, ms("2030-01-01T00:00:00+00:00") + 1)),
        # a ttl in the last millisecond of year 9999 is kept (rounded down, it is in it)
        ("@every 1s", "1s", "9999-12-31T23:59:59.9995Z", None,
         Plan(NOW + 1000, 253_402_300_799_999)),
        # Before 1970 is 1970, the expiry too (it ended the job before its first trigger)
        ("* * * * * *", "1969-12-31T23:59:00Z", "30s", None, Plan(0, 0)),
        ("* * * * * *", "1969-12-31T23:59:00Z", "2m", None, Plan(0, 60_000)),
    ],
)  # fmt: skip
def test_plan(
    schedule: str | None, due_time: str | None, ttl: str | None, repeats: int | None, expected: Plan
) -> None:
    assert plan(schedule, due_time, ttl, repeats, NOW) == expected


@pytest.mark.parametrize(
    ("schedule", "due_time", "ttl", "repeats", "code", "fragment"),
    [
        (None, None, None, None, SCHEDULE_EMPTY, "Schedule is empty"),
        (None, None, "1h", 3, SCHEDULE_EMPTY, "Schedule is empty"),
        ("@daily", None, None, -1, MALFORMED_REQUEST, "repeats"),
        ("@daily", None, None, 2**32, MALFORMED_REQUEST, "repeats"),
        ("@daily", None, None, True, MALFORMED_REQUEST, "repeats"),
        (None, "1s", None, 2, SCHEDULE_JOB, "job must have a schedule to repeat"),
        (None, "1s", "1h", None, SCHEDULE_JOB, "job must have a schedule to have a ttl"),
        ("0 * * * *", None, None, None, SCHEDULE_JOB, "expected exactly 6 fields"),
        ("", "1s", None, None, SCHEDULE_JOB, "empty spec string"),
        ("@daily", "bad", None, None, SCHEDULE_JOB, "invalid dueTime"),
        ("@daily", "1s", "bad", None, SCHEDULE_JOB, "invalid ttl"),
        ("@daily", "R2/PT1S", None, None, SCHEDULE_JOB, "non-repeating ISO8601 expected"),
        ("@every 1h", "2024-04-24T11:42:22Z", "2024-04-24T11:42:21Z", None, SCHEDULE_JOB,
         "ttl must be greater than due time"),
        ("@every 1h", "10s", "-1s", None, SCHEDULE_JOB, "ttl must be greater than due time"),
        # rounded up, these passed: the ttl ends before the dueTime
        ("@every 1h", "10s", "-1ns", None, SCHEDULE_JOB, "ttl must be greater than due time"),
        # a duration counts from the dueTime's millisecond: negative is before it
        ("@every 1h", "2030-01-01T00:00:00.0001Z", "-900us", None, SCHEDULE_JOB,
         "ttl must be greater than due time"),
        ("@every 1h", "2030-01-01T00:00:00.0009Z", "2030-01-01T00:00:00.0002Z", None,
         SCHEDULE_JOB, "ttl must be greater than due time"),
        # Go's strings.Fields: \x1f is no space (str.split() split the fields on it)
        ("0-0 */60 ,,1\x1f5\xa0\x85*/60 *", None, None, None, SCHEDULE_JOB,
         "expected exactly 6 fields"),
        ("@daily", None, "1h", None, SCHEDULE_JOB, "job would never fire"),
        ("@every 1h", None, "2024-01-01T00:00:00Z", None, SCHEDULE_JOB,
         "job would never fire"),
        ("0 0 0 30 2 *", None, None, None, SCHEDULE_JOB, "job would never fire"),
        # @every 0s without repeats would fire without end (0 means unlimited)
        ("@every 0s", None, None, None, SCHEDULE_JOB, "back to back without end"),
        ("@every 0s", "1s", None, 0, SCHEDULE_JOB, "give repeats"),
        ("@every 0s", "1s", "1h", None, SCHEDULE_JOB, "give repeats"),
        ("TZ=Europe/Rome @every 1h", None, None, None, SCHEDULE_JOB,
         "timezone is not supported for @every"),
    ],
)  # fmt: skip
def test_plan_errors(
    schedule: str | None,
    due_time: str | None,
    ttl: str | None,
    repeats: int | None,
    code: str,
    fragment: str,
) -> None:
    with pytest.raises(ScheduleError, match=fragment) as info:
        plan(schedule, due_time, ttl, repeats, NOW)
    assert info.value.code == code


@FAST
@given(
    st.sampled_from(["@every 1s", "@every 250ms", "*/7 * * * * *", "0 */5 * * * *", "@hourly"]),
    st.one_of(st.none(), st.integers(-(10**6), 10**9).map(lambda n: f"{n}us")),
    st.integers(0, 4_102_444_800_000),
)
def test_plan_first_fire_never_early(schedule: str, due_time: str | None, now: int) -> None:
    result = plan(schedule, due_time, None, None, now)
    if due_time is None:
        assert result.first_ms > now
        assert result.first_ms == parse_schedule(schedule).next_after(now)
    else:
        assert result.first_ms * 1000 >= now * 1000 + int(due_time[:-2])


# --- next_fire_ms ----------------------------------------------------------------------------

T0 = ms("2024-04-24T11:00:00+00:00")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # one-shot: over after its trigger
        ((None, T0, 1, None, None, T0), None),
        # no repeats cap: the next occurrence
        (("@every 5s", T0, 1, None, None, T0 + 10), T0 + 5000),
        (("@every 5s", T0, 1, 0, None, T0 + 10), T0 + 5000),  # 0 = unlimited
        (("0 * * * * *", T0, 1, None, None, T0 + 10), T0 + 60_000),
        # repeats reached
        (("@every 5s", T0, 3, 3, None, T0), None),
        (("@every 5s", T0, 2, 3, None, T0), T0 + 5000),
        # expiry: equal still fires, later does not
        (("@every 5s", T0, 1, None, T0 + 5000, T0), T0 + 5000),
        (("@every 5s", T0, 1, None, T0 + 4999, T0), None),
        # worker was down: missed occurrences are coalesced, @every keeps its phase
        (("@every 5s", T0, 1, None, None, T0 + 12_000), T0 + 15_000),
        (("@every 5s", T0, 1, None, None, T0 + 15_000), T0 + 15_000),  # due now: fires now
        (("@every 5s", T0, 1, None, None, T0 + 15_001), T0 + 20_000),
        (("0 0 * * * *", T0, 1, None, None, T0 + 3 * 3_600_000 + 1), T0 + 4 * 3_600_000),
        (("0 0 * * * *", T0, 1, None, None, T0 + 3 * 3_600_000), T0 + 3 * 3_600_000),
        # a clock behind the last due time never makes the next one earlier
        (("@every 5s", T0, 1, None, None, T0 - 60_000), T0 + 5000),
        # the schedule has no further occurrence within five years
        (("0 0 0 30 2 *", T0, 1, None, None, T0), None),
        # @every 0s: due at once after the last, but at least 1 ms later (own trigger id)
        (("@every 0s", T0, 1, 3, None, T0), T0 + 1),
        (("@every 0s", T0, 2, 3, None, T0 + 7), T0 + 7),
        (("@every 0s", T0, 3, 3, None, T0 + 9), None),  # the third was the last
        (("@every 0s", T0, 1, 3, None, T0 - 50), T0 + 1),  # a clock behind changes nothing
        (("@every 0s", T0, 1, 3, T0, T0 + 1), None),  # past the ttl
    ],
)
def test_next_fire_ms(
    args: tuple[str | None, int, int, int | None, int | None, int], expected: int | None
) -> None:
    assert next_fire_ms(*args) == expected


@FAST
@given(
    st.sampled_from(
        ["@every 1s", "@every 1500ms", "@every 1h", "*/7 * * * * *", "0 0 */2 * * *",
         "TZ=America/New_York 0 30 1 * * *", "@every 0s", None]
    ),
    st.integers(1_700_000_000_000, 1_800_000_000_000),
    st.integers(1, 50),
    st.one_of(st.none(), st.integers(0, 50)),
    st.one_of(st.none(), st.integers(0, 10 * 86_400_000)),
    st.integers(-86_400_000, 30 * 86_400_000),
)  # fmt: skip
def test_next_fire_ms_properties(
    schedule: str | None,
    last: int,
    fired: int,
    repeats: int | None,
    expires_in: int | None,
    now_offset: int,
) -> None:
    expires = None if expires_in is None else last + expires_in
    now = last + now_offset
    got = next_fire_ms(schedule, last, fired, repeats, expires, now)
    if schedule is None or (repeats and fired >= repeats):
        assert got is None
        return
    parsed = parse_schedule(schedule)
    floor = max(last, now - 1)
    zero = isinstance(parsed, EverySchedule) and parsed.interval_ms == 0
    if got is None:  # only because the next occurrence is after the expiry
        assert expires is not None
        following = max(last + 1, now) if zero else parsed.next_after(floor)
        assert (following or expires + 1) > expires
        return
    assert got > last  # never at or before the trigger just done
    assert got >= now  # never in the past: missed occurrences coalesced
    assert expires is None or got <= expires
    if zero:
        assert got == max(last + 1, now)  # back to back
    elif isinstance(parsed, EverySchedule):
        step = parsed.interval_ms
        assert (got - last) % step == 0  # phase kept
        assert got - step <= floor  # and it is the first such time not in the past
    else:
        assert got == parsed.next_after(floor)  # the first occurrence, none skipped
