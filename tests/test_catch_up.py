"""Catch-up policies (a job's `catchUp`: coalesce, all, skip): the pure maths of
app/jobs/schedule.py here; their effect after a downtime and after a pause, with a real
worker and receiver, in the second half of this module."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st

from app.jobs.clock import now_ms
from app.jobs.cron import Schedule
from app.jobs.durations import format_ms
from app.jobs.model import CatchUp
from app.jobs.schedule import _nth_latest, catch_up_due, next_fire_ms, parse_schedule
from app.settings import Settings
from app.store.store import Store
from tests.support.jobs import APP, make_job
from tests.support.receiver import Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker

pytestmark = pytest.mark.usefixtures("reap_workers")

S = 1000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


# -- next_fire_ms: the occurrence after a finished trigger ----------------------------


def test_coalesce_is_the_default_and_skips_to_the_first_occurrence_not_past() -> None:
    # Ten seconds down: one trigger stands for the missed ones, then on schedule.
    assert next_fire_ms("@every 1s", T0, 1, None, None, T0 + 10_500) == T0 + 11 * S
    assert next_fire_ms("@every 1s", T0, 1, None, None, T0 + 10_500,
                        CatchUp.COALESCE) == T0 + 11 * S
    assert next_fire_ms("@every 1s", T0, 1, None, None, T0 + 10_500,
                        CatchUp.SKIP) == T0 + 11 * S


def test_all_gives_each_missed_occurrence_in_turn() -> None:
    assert next_fire_ms("@every 1s", T0, 1, None, None, T0 + 10_500, CatchUp.ALL) == T0 + S
    assert next_fire_ms("@every 1s", T0 + 9 * S, 10, None, None, T0 + 10_500,
                        CatchUp.ALL) == T0 + 10 * S
    # Caught up: the next one is ahead, as with coalesce.
    assert next_fire_ms("@every 1s", T0 + 10 * S, 11, None, None, T0 + 10_500,
                        CatchUp.ALL) == T0 + 11 * S
    cron = "*/10 * * * * *"
    assert next_fire_ms(cron, T0, 1, None, None, T0 + 60 * S, CatchUp.ALL) == T0 + 10 * S


def test_all_keeps_only_the_latest_max_catch_up_missed_occurrences() -> None:
    # Missed: T0+1s .. T0+10s (10); at most 3: T0+8s, T0+9s, T0+10s.
    assert next_fire_ms("@every 1s", T0, 1, None, None, T0 + 10_500, CatchUp.ALL,
                        max_catch_up=3) == T0 + 8 * S
    assert next_fire_ms("*/10 * * * * *", T0, 1, None, None, T0 + 3600 * S, CatchUp.ALL,
                        max_catch_up=5) == T0 + 3550 * S


def test_all_stops_at_the_expiry_and_the_repeats() -> None:
    # ttl ended at T0+5s while nobody ran: T0+1s .. T0+5s are the missed ones.
    assert next_fire_ms("@every 1s", T0, 1, None, T0 + 5 * S, T0 + 10_500, CatchUp.ALL,
                        max_catch_up=3) == T0 + 3 * S
    assert next_fire_ms("@every 1s", T0 + 5 * S, 6, None, T0 + 5 * S, T0 + 10_500,
                        CatchUp.ALL) is None
    assert next_fire_ms("@every 1s", T0, 3, 3, None, T0 + 10_500, CatchUp.ALL) is None


def test_all_fires_at_every_0s_back_to_back_as_before() -> None:
    assert next_fire_ms("@every 0s", T0, 1, 5, None, T0 + 7, CatchUp.ALL) == T0 + 7


# -- catch_up_due: a trigger taken late ------------------------------------------------


def _due(schedule: str | None, sched: int, now: int, mode: CatchUp, *, count: int = 1,
         has_due_time: bool = False, repeats: int | None = None,
         expires: int | None = None, most: int = 100, grace: int = 0) -> int | None:
    return catch_up_due(schedule, has_due_time, sched, count, repeats, expires, now, mode,
                        most, grace)


def test_coalesce_delivers_the_late_trigger() -> None:
    assert _due("@every 1s", T0, T0 + 3600 * S, CatchUp.COALESCE) == T0


def test_an_on_time_trigger_is_delivered_whatever_the_policy() -> None:
    for mode in CatchUp:
        assert _due("@every 1s", T0, T0, mode) == T0
        assert _due("@every 1s", T0, T0 - 5, mode) == T0


def test_skip_passes_over_a_trigger_later_than_the_grace() -> None:
    assert _due("@every 1s", T0, T0 + 400, CatchUp.SKIP, grace=500) == T0
    assert _due("@every 1s", T0, T0 + 10_500, CatchUp.SKIP, grace=500) == T0 + 11 * S
    assert _due("0 0 * * * *", T0, T0 + 3600 * S + 1, CatchUp.SKIP) == T0 + 7200 * S
    # After a pause (grace 0) even a moment late is missed.
    assert _due("@every 1s", T0, T0 + 1, CatchUp.SKIP) == T0 + S


def test_skip_can_end_the_job() -> None:
    assert _due("@every 1s", T0, T0 + 10_500, CatchUp.SKIP, expires=T0 + 5 * S) is None


def test_all_delivers_while_few_are_missed_and_jumps_past_older_ones() -> None:
    # From T0 to T0+10.5s: 11 occurrences (T0 .. T0+10s) are past.
    assert _due("@every 1s", T0, T0 + 10_500, CatchUp.ALL, most=11) == T0
    assert _due("@every 1s", T0, T0 + 10_500, CatchUp.ALL, most=4) == T0 + 7 * S
    assert _due("@every 1s", T0, T0 + 10_500, CatchUp.ALL, most=1) == T0 + 10 * S
    # Not past the expiry: T0 .. T0+3s are the ones that could still fire.
    assert _due("@every 1s", T0, T0 + 10_500, CatchUp.ALL, most=2,
                expires=T0 + 3 * S) == T0 + 2 * S


def test_a_due_time_a_one_shot_job_and_every_0s_always_fire() -> None:
    late = T0 + 3600 * S
    for mode in CatchUp:
        assert _due(None, T0, late, mode, count=0) == T0
        assert _due("@every 1s", T0, late, mode, count=0, has_due_time=True, most=1) == T0
        assert _due("@every 0s", T0, late, mode, repeats=5, most=1) == T0
    # After the first trigger, a job with a dueTime is on its schedule like any other.
    assert _due("@every 1s", T0, late + 500, CatchUp.SKIP, count=1,
                has_due_time=True) == late + S


# -- the search for the latest occurrences -------------------------------------------


class _Counting(Schedule):
    """A schedule that counts the next_after calls made of it."""

    def __init__(self, inner: Schedule) -> None:
        super().__init__(inner.expr)
        self.inner, self.calls = inner, 0

    def next_after(self, after_ms: int) -> int | None:
        self.calls += 1
        return self.inner.next_after(after_ms)


def _brute(parsed: Schedule, first: int, end: int, n: int) -> int:
    found = [first]
    t = parsed.next_after(first)
    while t is not None and t < end:
        found.append(t)
        t = parsed.next_after(t)
    return found[-n] if len(found) >= n else first


# Schedules, each with the longest window the brute force below walks in a moment.
_SCHEDULES = {"*/7 * * * * *": 2, "0 */5 * * * *": 20, "30 0 9 * * MON-FRI": 90,
              "TZ=Europe/Berlin 0 30 2 * * *": 90, "* * 9 * * *": 2, "0 0 0 1 * *": 400}


@settings(max_examples=120, deadline=None)
@given(expr=st.sampled_from(sorted(_SCHEDULES)), start=st.integers(0, 86400 * 400),
       share=st.floats(0.0, 1.0), n=st.integers(1, 60))
def test_the_nth_latest_occurrence_is_the_one_counting_gives(expr: str, start: int,
                                                             share: float, n: int) -> None:
    parsed = parse_schedule(expr)
    first = parsed.next_after(T0 + start * S)
    assert first is not None
    end = first + 1 + int(share * _SCHEDULES[expr] * 86400) * S
    assert _nth_latest(parsed, first, end, n) == _brute(parsed, first, end, n)


def test_the_search_costs_in_proportion_to_n_not_to_what_was_missed() -> None:
    # A per-second cron missed for a year: 31.5 million occurrences, never walked.
    parsed = _Counting(parse_schedule("* * * * * *"))
    end = T0 + 365 * 86400 * S
    assert _nth_latest(parsed, T0, end, 100) == end - 100 * S
    assert parsed.calls < 400
    # A daily one missed for five years, as for a zone with DST.
    daily = _Counting(parse_schedule("TZ=Europe/Berlin 0 30 9 * * *"))
    first = daily.inner.next_after(T0)
    assert first is not None
    found = _nth_latest(daily, first, first + 5 * 365 * 86400 * S, 100)
    assert found == _brute(daily.inner, first, first + 5 * 365 * 86400 * S, 100)
    assert daily.calls < 400


# -- the request field ---------------------------------------------------------------------


def test_catch_up_is_a_field_of_the_schedule_request(api: FlaskClient) -> None:
    for spelling in ("catchUp", "catch_up"):
        answer = api.post(f"/v1.0/jobs/all-{spelling}",
                          json={"schedule": "@every 1h", spelling: "all"})
        assert answer.status_code == 204, answer.get_json()
        assert api.get(f"/v1.0/jobs/all-{spelling}").get_json()["catchUp"] == "all"
    # The default is not shown, whether given or not (GET stays Dapr's shape).
    for body in ({"schedule": "@every 1h"}, {"schedule": "@every 1h", "catchUp": "coalesce"},
                 {"schedule": "@every 1h", "catchUp": None}, {"dueTime": "1h", "catchUp": ""}):
        assert api.post("/v1.0/jobs/plain", json={**body, "overwrite": True}).status_code == 204
        assert "catchUp" not in api.get("/v1.0/jobs/plain").get_json()


@pytest.mark.parametrize(("body", "said"), [
    ({"schedule": "@every 1h", "catchUp": "every"}, "catchUp must be one of coalesce, all, skip"),
    ({"schedule": "@every 1h", "catchUp": "ALL"}, "catchUp must be one of"),
    ({"schedule": "@every 1h", "catchUp": 1}, "catchUp must be one of"),
    ({"schedule": "@every 1h", "catchUp": "x" * 10_000}, "catchUp must be one of"),
    ({"dueTime": "1h", "catchUp": "skip"}, "needs a schedule"),
    ({"schedule": "@every 1h", "catchUp": "all", "catch_up": "all"}, "both catchUp and catch_up"),
])
def test_a_bad_catch_up_is_a_400(api: FlaskClient, body: dict[str, Any], said: str) -> None:
    answer = api.post("/v1.0/jobs/bad", json=body)
    assert answer.status_code == 400
    error = answer.get_json()
    assert error["errorCode"] == "ERR_MALFORMED_REQUEST" and said in error["message"]
    assert len(error["message"]) < 300
    assert api.get("/v1.0/jobs/bad").status_code == 404


# -- with a real worker and receiver -------------------------------------------------------
#
# Every second, from T: what fell due while no worker ran, or while the job was paused, is
# known exactly, and a worker started (or a job resumed) half a second after an occurrence
# has half a second before the next one.

PERIOD = 1000


def _scheds(receiver: Receiver, name: str) -> list[int]:
    """The due times of the deliveries of `name`, in the order they came."""
    return [int(d.headers["jobrunner-scheduled-ms"]) for d in receiver.received(f"/job/{name}")]


def _at(ms: int) -> None:
    """Wait until the clock has passed `ms` (the condition is the time itself)."""
    wait_for(lambda: now_ms() > ms, timeout=(ms - now_ms()) / 1000 + 10, interval=0.005,
             what=f"the clock to pass {ms}")


def _every_second(store: Store, name: str, first: int, mode: CatchUp, *, due_time: bool = True,
                  repeats: int = 10) -> None:
    store.schedule(make_job(name, first, schedule="@every 1s", repeats=repeats,
                            due_time=format_ms(first) if due_time else None, catch_up=mode))


@pytest.fixture
def catching(settings: Settings) -> Settings:
    """A worker (and API) that fires at most 2 missed occurrences of an `all` job, and takes
    a trigger more than 100 ms late as missed."""
    return settings.with_(max_catch_up=2, catch_up_grace_s=0.1)


def test_after_a_downtime_each_policy_does_what_it_says(catching: Settings, receiver: Receiver,
                                                        store: Store) -> None:
    t = now_ms() + 300
    _every_second(store, "coalesce", t, CatchUp.COALESCE)
    _every_second(store, "all-3", t, CatchUp.ALL, due_time=False)  # 3 missed: more than 2
    _every_second(store, "all-2", t + PERIOD, CatchUp.ALL)  # T+1s, T+2s: within the bound
    _every_second(store, "skip", t + PERIOD, CatchUp.SKIP, due_time=False)
    _every_second(store, "skip-due", t, CatchUp.SKIP)  # its dueTime fires, however late
    store.schedule(make_job("once", t, due_time=format_ms(t)))
    _at(t + 2 * PERIOD + PERIOD // 2)  # nobody ran while T, T+1s and T+2s fell due
    started = now_ms()
    with ThreadWorker(catching):
        # Caught up, and then on schedule: each has had its trigger of T+3s.
        for name in ("coalesce", "all-3", "all-2", "skip", "skip-due"):
            wait_for(lambda n=name: t + 3 * PERIOD in _scheds(receiver, n),  # type: ignore[misc]
                     what=f"{name} to fire on schedule again")
        wait_for(lambda: _scheds(receiver, "once"), what="the one-shot job")
    missed = {name: [s for s in _scheds(receiver, name) if s < started]
              for name in ("coalesce", "all-3", "all-2", "skip", "skip-due", "once")}
    assert missed == {
        "coalesce": [t],  # one trigger for the three
        "all-3": [t + PERIOD, t + 2 * PERIOD],  # the latest 2 (JOBRUNNER_MAX_CATCH_UP)
        "all-2": [t + PERIOD, t + 2 * PERIOD],  # each of them, oldest first
        "skip": [],  # none
        "skip-due": [t],  # the dueTime, then none
        "once": [t],
    }
    for name in ("coalesce", "all-3", "all-2", "skip", "skip-due"):
        later = [s for s in _scheds(receiver, name) if s >= started]
        assert later[:1] == [t + 3 * PERIOD], name  # then on schedule, phase kept
    # Passed over, not fired: skipped occurrences do not count against repeats. (The app
    # gets a delivery before the worker settles it: the count follows.)
    def counted_as_delivered() -> bool:
        view = store.get(APP, "skip")
        return view is not None and view.count == len(_scheds(receiver, "skip"))

    wait_for(counted_as_delivered, what="skip's count to be its deliveries")


def test_after_a_pause_each_policy_does_what_it_says(catching: Settings, receiver: Receiver,
                                                     store: Store) -> None:
    from app.api.factory import create_app

    api = create_app(catching).test_client()
    t = now_ms() + 300
    names = {"coalesce": CatchUp.COALESCE, "all": CatchUp.ALL, "skip": CatchUp.SKIP}
    for name, mode in names.items():
        _every_second(store, name, t, mode)
    with ThreadWorker(catching):
        for name in names:
            wait_for(lambda n=name: _scheds(receiver, n) == [t],  # type: ignore[misc]
                     what=f"{name}'s first trigger")
            assert api.post(f"/v1.0/jobs/{name}/pause").status_code == 200
        _at(t + 3 * PERIOD + PERIOD // 2)  # T+1s, T+2s and T+3s fall due while paused
        assert all(_scheds(receiver, name) == [t] for name in names)  # nothing fired
        resumed = now_ms()
        for name in names:
            assert api.post(f"/v1.0/jobs/{name}/resume").status_code == 200
        for name in names:
            wait_for(lambda n=name: t + 4 * PERIOD in _scheds(receiver, n),  # type: ignore[misc]
                     what=f"{name} to fire on schedule again")
    missed = {name: [s for s in _scheds(receiver, name) if t < s < resumed] for name in names}
    assert missed == {
        "coalesce": [t + PERIOD],  # one trigger for the three
        "all": [t + 2 * PERIOD, t + 3 * PERIOD],  # the latest 2 (JOBRUNNER_MAX_CATCH_UP)
        "skip": [],
    }
    for name in names:
        assert [s for s in _scheds(receiver, name) if s >= resumed][:1] == [t + 4 * PERIOD]
