"""Pause, resume and trigger now (app/store/pauses.py, app/api/controls.py): per job and
per app, over HTTP, with a real worker and receiver where deliveries are involved."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import unquote

import pytest
from flask.testing import FlaskClient

from app.jobs.clock import now_ms
from app.jobs.durations import format_ms, rfc3339_ns
from app.jobs.errors import ApiError
from app.settings import Settings
from app.store.keys import is_replay
from app.store.pauses import BATCH, Pauses
from app.store.store import Store
from tests.support.far import all_due
from tests.support.jobs import APP, QueueDriver
from tests.support.names_index import index_ids
from tests.support.receiver import Delivery, Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from workers.worker import RECHECK_AFTER_WAIT_S

pytestmark = pytest.mark.usefixtures("reap_workers")

V1 = "/v1.0/jobs"
HOUR_MS = 3_600_000


def _schedule(api: FlaskClient, name: str, base: str = V1, **body: Any) -> None:
    answer = api.post(f"{base}/{name}", json=body)
    assert answer.status_code == 204, answer.get_data(as_text=True)


def _get(api: FlaskClient, name: str) -> dict[str, Any]:
    answer = api.get(f"{V1}/{name}")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body: dict[str, Any] = answer.get_json()
    return body


def _ms(text: str) -> int:
    ns = rfc3339_ns(text)
    assert ns is not None, text
    return ns // 1_000_000


def _post(api: FlaskClient, path: str, status: int = 200) -> Any:
    answer = api.post(path)
    assert answer.status_code == status, answer.get_data(as_text=True)
    return answer.get_json()


def _claimable(settings: Settings, at_ms: int) -> list[str]:
    """The names a worker could claim at `at_ms` (claims them: only for jobs that are
    never delivered afterwards)."""
    driver = QueueDriver(settings, at_ms)
    try:
        return [t.job.name for t in driver.claim(1000)]
    finally:
        driver.close()


# -- one job, without a worker ------------------------------------------------------------


def test_a_paused_job_keeps_its_schedule_and_cannot_be_claimed(api: FlaskClient,
                                                               settings: Settings) -> None:
    _schedule(api, "report", schedule="@every 1h", dueTime="1h")
    _schedule(api, "other", dueTime="1h")
    before = _get(api, "report")
    paused = _post(api, f"{V1}/report/pause")
    assert paused["paused"] is True and paused["status"] == "paused"
    assert "appPaused" not in paused
    assert paused["nextTriggerTime"] == before["nextTriggerTime"]  # its schedule stands
    assert _ms(paused["pausedTime"]) <= now_ms()
    assert {k: v for k, v in _get(api, "report").items()} == paused
    # Nothing of it is due, whatever the time: only the other job can be claimed.
    assert _claimable(settings, now_ms() + 10 * HOUR_MS) == ["other"]


def test_resume_puts_the_trigger_back_where_it_was(api: FlaskClient) -> None:
    _schedule(api, "report", schedule="@every 1h", dueTime="1h")
    before = _get(api, "report")
    _post(api, f"{V1}/report/pause")
    resumed = _post(api, f"{V1}/report/resume")
    assert resumed == before  # not paused, nothing missed: as it was


def test_pause_and_resume_are_idempotent_and_404_for_no_job(api: FlaskClient) -> None:
    _schedule(api, "report", dueTime="1h")
    first = _post(api, f"{V1}/report/pause")
    assert _post(api, f"{V1}/report/pause") == first  # paused since the first time
    assert _post(api, f"{V1}/report/resume") == _post(api, f"{V1}/report/resume")
    for action in ("pause", "resume", "trigger"):
        for base in ("/v1.0/jobs", "/v1.0-alpha1/jobs"):
            gone = api.post(f"{base}/nope/{action}")
            assert gone.status_code == 404
            assert gone.get_json()["errorCode"] == "DAPR_SCHEDULER_JOB_NOT_FOUND"


def test_a_bad_name_is_a_400_not_a_job_named_with_a_slash(api: FlaskClient) -> None:
    for path in (f"{V1}/%20/pause", f"{V1}/a%3Fb/trigger", f"{V1}/{'x' * 254}/resume"):
        answer = api.post(path)
        assert answer.status_code == 400, path
        assert "errorCode" in answer.get_json()
    # The schedule route still takes POST .../jobs/{name} (the action routes are
    # .../{name}/{action}, and no name holds '/').
    _schedule(api, "pause", dueTime="1h")
    _schedule(api, "trigger", dueTime="1h")
    assert "paused" not in _get(api, "pause")


def test_a_paused_job_overwritten_stays_paused_with_its_new_timing(api: FlaskClient,
                                                                    settings: Settings) -> None:
    _schedule(api, "report", dueTime="1h")
    _post(api, f"{V1}/report/pause")
    _schedule(api, "report", dueTime="2h", overwrite=True, data={"v": 2})
    got = _get(api, "report")
    assert got["paused"] is True and got["data"] == {"v": 2}
    assert _ms(got["nextTriggerTime"]) > now_ms() + HOUR_MS
    assert _claimable(settings, now_ms() + 10 * HOUR_MS) == []


def test_a_job_deleted_while_paused_comes_back_unpaused(api: FlaskClient) -> None:
    _schedule(api, "report", dueTime="1h")
    _post(api, f"{V1}/report/pause")
    assert api.delete(f"{V1}/report").status_code == 204
    _schedule(api, "report", dueTime="1h")
    assert "paused" not in _get(api, "report")


def test_a_skip_job_whose_ttl_ran_out_while_paused_ends_at_its_resume(store: Store) -> None:
    from app.jobs.model import CatchUp
    from tests.support.jobs import make_job

    now = now_ms()
    store.schedule(make_job("ending", now - 5000, schedule="@every 1s",
                            expires_ms=now - 1000, catch_up=CatchUp.SKIP))
    hist = store.keys.partition(0).history(f"{APP}/ending")
    store.redis.lpush(hist, "an earlier outcome")
    pauses = Pauses(store)
    assert pauses.pause_job(APP, "ending")
    assert pauses.resume_job(APP, "ending")
    assert store.get(APP, "ending") is None  # over: nothing of it was left to fire
    assert 0 < store.redis.pttl(hist) <= int(store.settings.history_ttl_s * 1000)
    assert not any(index_ids(store.redis, pk) for pk in store.keys.all_partitions())


def test_a_resume_that_ends_its_job_answers_the_job_ended_not_404(
        api: FlaskClient, store: Store) -> None:
    from app.jobs.model import CatchUp
    from tests.support.jobs import make_job

    now = now_ms()  # its ttl ran out while it was paused (as in the test above)
    store.schedule(make_job("ending", now - 5000, schedule="@every 1s",
                            expires_ms=now - 1000, catch_up=CatchUp.SKIP))
    _post(api, f"{V1}/ending/pause")
    answer = _post(api, f"{V1}/ending/resume")
    assert (answer["name"], answer["status"], answer["nextTriggerTime"]) == (
        "ending", "ended", None)
    assert "paused" not in answer
    assert api.get(f"{V1}/ending").status_code == 404
    assert api.post(f"{V1}/ending/resume").status_code == 404  # now there is none


def test_a_trigger_handed_back_or_staged_while_paused_waits_for_the_resume(
        settings: Settings, store: Store) -> None:
    from tests.support.jobs import make_job

    due = now_ms() - 10
    for name in ("released", "staged"):
        store.schedule(make_job(name, due, schedule="@every 1h"))
    driver = QueueDriver(settings)
    try:
        claimed = {t.job.name: t for t in driver.claim(10)}
        pauses = Pauses(store)
        for name in claimed:  # in flight: the entry waits for the worker's word
            assert pauses.pause_job(APP, name)
            assert store.get(APP, name).status.value == "in_flight"  # type: ignore[union-attr]
        assert driver.release([claimed["released"]]) == 1
        assert driver.stage([claimed["staged"]]) == 1
    finally:
        driver.close()
    assert _claimable(settings, now_ms() + 10 * HOUR_MS) == []
    for name in claimed:
        view = store.get(APP, name)
        assert view is not None and view.status.value == "paused" and view.next_ms == due
        assert pauses.resume_job(APP, name)
    assert sorted(_claimable(settings, now_ms())) == ["released", "staged"]


# -- the app, without a worker --------------------------------------------------------------


def test_pausing_the_app_pauses_every_job_and_the_new_ones(api: FlaskClient,
                                                           settings: Settings) -> None:
    for i in range(3):
        _schedule(api, f"job-{i}", dueTime="1h")
    assert api.get("/v1.0/app").get_json() == {"appId": APP, "paused": False, "pausedTime": None}
    paused = _post(api, "/v1.0/app/pause")
    assert paused["paused"] is True and paused["jobs"] == 3
    assert api.get("/v1.0-alpha1/app").get_json()["pausedTime"] == paused["pausedTime"]
    _schedule(api, "late", dueTime="0s")  # scheduled while the app is paused
    for name in ("job-0", "job-1", "job-2", "late"):
        got = _get(api, name)
        assert got["appPaused"] is True and got["status"] == "paused"
        assert "paused" not in got  # not paused by itself
    listed = api.get(f"{V1}?limit=10").get_json()["jobs"]
    assert {j["name"]: j["status"] for j in listed} == dict.fromkeys(
        ("job-0", "job-1", "job-2", "late"), "paused")
    assert _claimable(settings, now_ms() + 10 * HOUR_MS) == []


def test_resuming_the_app_leaves_a_job_paused_by_itself_paused(api: FlaskClient) -> None:
    _schedule(api, "mine", dueTime="1h")
    _schedule(api, "theirs", dueTime="1h")
    _post(api, f"{V1}/mine/pause")
    _post(api, "/v1.0/app/pause")
    # Resuming the job while its app is paused lifts only its own pause.
    still = _post(api, f"{V1}/theirs/resume")
    assert still["appPaused"] is True and still["status"] == "paused"
    resumed = _post(api, "/v1.0/app/resume")
    assert resumed == {"appId": APP, "paused": False, "pausedTime": None, "jobs": 1}
    assert "appPaused" not in _get(api, "theirs") and _get(api, "theirs")["status"] == "scheduled"
    mine = _get(api, "mine")
    assert mine["paused"] is True and "appPaused" not in mine and mine["status"] == "paused"


@pytest.mark.parametrize("record", [
    b"not json",
    b'{"f1": 1, "s": "@every 1h", "cu": "skip", "x": "later"}',  # reads; a field unusable
], ids=["unreadable", "unusable"])
def test_resuming_an_app_with_a_job_it_cannot_read_resumes_every_job(
        api: FlaskClient, settings: Settings, record: bytes) -> None:
    """A job whose stored record this version cannot read (or use) has no catch-up to work
    out: the resume puts its trigger back at its own time and goes on. (It raised there: the
    app read as resumed, its other jobs were left paused.) The unreadable one's own resume
    and pause are refused and change nothing: answered after acting, they said the job was
    not resumed when it was."""
    _post(api, "/v1.0/app/pause")
    late = format_ms(now_ms() - 60_000)  # taken late: its catch-up policy is asked
    for name in ("a", "broken", "z"):
        _schedule(api, name, schedule="@every 1h", dueTime=late, catchUp="skip")
    store = Store(settings)
    jid = f"{APP}/broken"
    pk = store.keys.for_job(jid)
    paused = store.redis.hget(pk.paused, jid)
    store.redis.hset(pk.jobs, jid, record)
    if record == b"not json":
        for action in ("pause", "resume"):
            _post(api, f"{V1}/broken/{action}", status=500)
            assert store.redis.hget(pk.paused, jid) == paused, action
    resumed = _post(api, "/v1.0/app/resume")
    assert resumed == {"appId": APP, "paused": False, "pausedTime": None, "jobs": 3}
    assert [_get(api, n)["status"] for n in ("a", "z")] == ["scheduled", "scheduled"]
    assert store.redis.hget(pk.paused, jid) is None
    assert store.redis.zscore(pk.due, jid) is not None  # its trigger back at its own time


def test_an_app_pause_walks_its_jobs_in_batches_and_touches_no_other_app(
        settings: Settings) -> None:
    from tests.support.jobs import make_job

    store = Store(settings.with_(partitions=3))  # partition by partition, as on a Cluster
    due = now_ms() + HOUR_MS
    n = BATCH * 2 + 7
    store.schedule_many(make_job(f"j{i:04d}", due) for i in range(n))
    store.schedule_many(make_job(f"j{i:04d}", due, app_id="other") for i in range(5))

    def due_index() -> dict[str, int]:
        counts: dict[str, int] = {}
        for pk in store.keys.all_partitions():
            for member in all_due(store.redis, pk):  # near or far
                app = member.partition("/")[0]
                counts[app] = counts.get(app, 0) + 1
        return counts

    pauses = Pauses(store)
    assert pauses.pause_app(APP) == n
    assert due_index() == {"other": 5}
    assert store.get("other", "j0000") is not None and "paused" not in repr(
        store.get("other", "j0000").status)
    assert pauses.resume_app(APP) == n
    assert due_index() == {APP: n, "other": 5}
    store.close()


class _Overtaken(Pauses):
    """Its walk over the app's jobs lets `between` run whole after the first batch: another
    operator's request overtaking it."""

    def __init__(self, store: Store, between: Any) -> None:
        super().__init__(store)
        self.between = between
        self.batches = 0

    def _app_jobs(self, pk: Any, app_id: str) -> Any:
        for ids in super()._app_jobs(pk, app_id):
            self.batches += 1
            if self.batches == 2:  # (with several partitions: the second one's first)
                self.between()
            yield ids


@pytest.mark.parametrize("partitions", [1, 4])
@pytest.mark.parametrize("last", ["pause", "resume"])
def test_a_pause_and_a_resume_of_the_app_at_once_end_as_the_later_one_says(
        settings: Settings, last: str, partitions: int) -> None:
    """With several partitions the flag of each was the last one's to reach it: a resume
    overtaking a pause left the first partition's jobs resumed and the rest paused."""
    from tests.support.jobs import make_job

    store = Store(settings.with_(partitions=partitions))
    n = BATCH * 2 + 7
    store.schedule_many(make_job(f"j{i:04d}", now_ms() + HOUR_MS) for i in range(n))
    other = Pauses(store)
    if last == "pause":  # a resume, overtaken by a pause after its first batch
        other.pause_app(APP)
        _Overtaken(store, lambda: other.pause_app(APP)).resume_app(APP)
    else:
        _Overtaken(store, lambda: other.resume_app(APP)).pause_app(APP)
    paused = {store.get(APP, f"j{i:04d}").status.value for i in range(n)}  # type: ignore[union-attr]
    in_due = sum(len(all_due(store.redis, pk)) for pk in store.keys.all_partitions())
    flags = {bool(store.redis.hexists(pk.pausedapps, APP)) for pk in store.keys.all_partitions()}
    if last == "pause":
        assert other.app_paused_since(APP) is not None
        assert paused == {"paused"} and in_due == 0 and flags == {True}
    else:
        assert other.app_paused_since(APP) is None
        assert "paused" not in paused and in_due == n and flags == {False}
    store.close()


def test_an_app_pause_after_its_count_was_lost_pauses_all_the_same(settings: Settings) -> None:
    """The count of the app's pauses and resumes lost (a failover, a delete): the next ones
    had numbers below those the partitions held, and changed nothing."""
    from tests.support.jobs import make_job

    store = Store(settings.with_(partitions=4))
    store.schedule_many(make_job(f"c{i:02d}", now_ms() + HOUR_MS) for i in range(20))
    pauses = Pauses(store)
    pauses.pause_app(APP)
    pauses.resume_app(APP)
    store.redis.delete(store.keys.app_pause_count(APP))
    assert pauses.pause_app(APP) == 20
    assert pauses.app_paused_since(APP) is not None
    assert {store.get(APP, f"c{i:02d}").status.value  # type: ignore[union-attr]
            for i in range(20)} == {"paused"}
    store.close()


class _Storm:
    """Store.script, with the job `name` overwritten (a new due time, so a new paused
    entry and record) before each call of the script `what`: an app that schedules its
    jobs again and again, each time just between a resume's or a trigger's read and its
    script."""

    def __init__(self, store: Store, what: str, name: str) -> None:
        self.store, self.what, self.name = store, what, name
        self.real = store.script
        self.calls = 0
        store.script = self.script  # type: ignore[method-assign]

    def script(self, name: str) -> Any:
        real = self.real(name)
        if name != self.what:
            return real

        def call(**kwargs: Any) -> Any:
            from tests.support.jobs import make_job

            self.calls += 1
            self.store.schedule(make_job(self.name, now_ms() + HOUR_MS + self.calls),
                                overwrite=True)
            return real(**kwargs)

        return call


def test_an_app_resume_under_an_overwrite_storm_resumes_every_job(
        api: FlaskClient, settings: Settings) -> None:
    """A job overwritten between each read of a resume and its script: after five tries
    the resume raised (a 500), leaving the app's flag cleared and its later jobs paused.
    The last try resumes it as its entry stands, at its own due time."""
    for name in ("a", "hot", "z"):
        _schedule(api, name, dueTime="1h")
    _post(api, "/v1.0/app/pause")
    store = Store(settings)
    storm = _Storm(store, "resume", "hot")
    assert Pauses(store).resume_app(APP) == 3
    assert storm.calls >= 5
    assert [_get(api, n).get("paused", False) for n in ("a", "hot", "z")] == [False] * 3
    pk = store.keys.for_job(f"{APP}/hot")
    assert store.redis.hget(pk.paused, f"{APP}/hot") is None
    assert store.redis.zscore(pk.due, f"{APP}/hot") is not None
    store.close()


def test_a_trigger_under_an_overwrite_storm_fires(api: FlaskClient, settings: Settings) -> None:
    """The same storm under "trigger now": it raised after five tries (a 500)."""
    _schedule(api, "hot", dueTime="1h", data={"n": 1})
    store = Store(settings)
    storm = _Storm(store, "trigger", "hot")
    fired = Pauses(store).trigger(APP, "hot")
    assert fired is not None and storm.calls == 5
    assert ":now-" in fired.trigger_id
    store.close()


# -- trigger now ----------------------------------------------------------------------------


def test_trigger_stores_a_one_shot_beside_the_job_and_leaves_it_as_it_was(
        api: FlaskClient, settings: Settings) -> None:
    _schedule(api, "report", schedule="@every 1h", dueTime="1h", data={"n": 1})
    before = _get(api, "report")
    fired = _post(api, f"{V1}/report/trigger", 202)
    assert fired["name"] == "report"
    assert fired["triggerId"].startswith(f"{APP}/report@")
    assert ":now-" in fired["triggerId"]
    assert _get(api, "report") == before
    # One trigger is due now: the one-shot, with the trigger's id.
    driver = QueueDriver(settings)
    try:
        claimed = driver.claim(10)
    finally:
        driver.close()
    assert [(t.job.name, t.trigger_id, t.job.data) for t in claimed] == [
        ("report", fired["triggerId"], {"n": 1})]
    assert is_replay(claimed[0].job_id) and claimed[0].job.schedule is None
    # It is not a job of the app's list.
    assert [j["name"] for j in api.get(V1).get_json()["jobs"]] == ["report"]


# -- the dashboard's buttons ----------------------------------------------------------------


def test_the_dashboard_pauses_resumes_and_triggers_a_job_and_the_app(api: FlaskClient) -> None:
    from tests.test_dashboard import press

    _schedule(api, "report", schedule="@every 1h", dueTime="1h")
    paused = press(api, "/ui/jobs/report", "Pause")
    assert paused.status_code == 303 and paused.headers["Location"] == "/ui/jobs/report"
    assert _get(api, "report")["paused"] is True
    page = api.get("/ui/jobs/report").get_data(as_text=True)
    assert "Paused" in page and 'class="badge paused"' in page and ">Pause<" not in page

    assert press(api, "/ui/jobs/report", "Resume").status_code == 303
    assert "paused" not in _get(api, "report")

    before = _get(api, "report")
    assert press(api, "/ui/jobs/report", "Trigger now").status_code == 303
    assert "Triggered &#39;report&#39; now (trigger job-service/report@" in api.get(
        "/ui/jobs/report").get_data(as_text=True)
    assert _get(api, "report") == before  # the schedule is not touched

    assert press(api, "/ui/jobs", "Pause the app").status_code == 303
    jobs_page = api.get("/ui/jobs").get_data(as_text=True)
    assert 'id="app-paused"' in jobs_page and ">Resume the app<" in jobs_page
    assert _get(api, "report")["appPaused"] is True
    assert press(api, "/ui/jobs", "Resume the app").status_code == 303
    assert "appPaused" not in _get(api, "report")


def test_the_dashboards_buttons_need_the_csrf_token(api: FlaskClient) -> None:
    _schedule(api, "report", dueTime="1h")
    for path in ("/ui/jobs/report/pause", "/ui/jobs/report/trigger", "/ui/app/pause"):
        assert api.post(path, data={}).status_code == 403
    assert "paused" not in _get(api, "report")
    assert api.get("/v1.0/app").get_json()["paused"] is False


# -- the CLI --------------------------------------------------------------------------------


def _cli(url: str, *args: str) -> Any:
    from click.testing import CliRunner

    from app.cli.main import main

    return CliRunner().invoke(main, ["jobs", *args, "--url", url], catch_exceptions=False)


def test_the_cli_pauses_resumes_and_triggers(settings: Settings) -> None:
    from app.api.factory import create_app
    from tests.test_dashboard import serving

    with serving(create_app(settings)) as url:
        done = _cli(url, "schedule", "report", "--schedule", "@every 1h", "--due-time", "1h",
                    "--catch-up", "skip")
        assert done.exit_code == 0, done.output
        got = json.loads(_cli(url, "get", "report", "--json").output)
        assert got["catchUp"] == "skip"
        nxt = got["nextTriggerTime"]

        paused = _cli(url, "pause", "report")
        assert paused.exit_code == 0
        assert paused.output == f"'report' is paused: its next trigger {nxt} waits\n"
        shown = _cli(url, "get", "report").output
        assert "status           paused\n" in shown and "paused           true\n" in shown
        assert "paused" in _cli(url, "list").output.splitlines()[1]
        resumed = _cli(url, "resume", "report")
        assert resumed.output == f"resumed 'report': next trigger {nxt}\n"

        fired = _cli(url, "trigger", "report", "--json")
        assert json.loads(fired.output)["triggerId"].startswith(f"{APP}/report@")
        assert _cli(url, "trigger", "report").output.startswith("triggered 'report': trigger ")

        app_paused = _cli(url, "pause", "--all")
        assert app_paused.output == f"paused app '{APP}' (1 job)\n"
        assert "(its app is paused)" in _cli(url, "resume", "report").output
        assert json.loads(_cli(url, "resume", "--all", "--json").output)["paused"] is False

        missing = _cli(url, "pause", "nope")
        assert missing.exit_code == 1
        assert "404 DAPR_SCHEDULER_JOB_NOT_FOUND" in missing.output
        for usage in (("pause",), ("pause", "report", "--all"), ("resume",)):
            assert _cli(url, *usage).exit_code == 2
        assert _cli(url, "schedule", "x", "--due-time", "1s", "--catch-up", "never").exit_code == 2


# -- with a real worker and receiver ---------------------------------------------------------


def _scheds(receiver: Receiver, name: str) -> list[int]:
    return [int(d.headers["jobrunner-scheduled-ms"]) for d in receiver.received(f"/job/{name}")]


def test_a_paused_job_fires_nothing_until_resumed(api: FlaskClient, receiver: Receiver,
                                                  worker: ThreadWorker) -> None:
    _schedule(api, "tick", schedule="@every 200ms", dueTime="0s")
    wait_for(lambda: _scheds(receiver, "tick"), what="the first tick")
    paused = _ms(_post(api, f"{V1}/tick/pause")["pausedTime"])
    # A probe due after three more ticks would have fallen due: once it is delivered, they
    # would have been too.
    _schedule(api, "probe", dueTime="700ms")
    wait_for(lambda: receiver.received("/job/probe"), what="the probe")
    assert [s for s in _scheds(receiver, "tick") if s > paused] == []
    got = _get(api, "tick")
    assert got["status"] == "paused" and _ms(got["nextTriggerTime"]) < now_ms()
    resumed = now_ms()
    _post(api, f"{V1}/tick/resume")
    # Coalesced (the default): one trigger for what fell due while paused, then on schedule.
    wait_for(lambda: [s for s in _scheds(receiver, "tick") if s > resumed],
             what="a tick on schedule after the resume")
    assert len([s for s in _scheds(receiver, "tick") if paused < s < resumed]) <= 1


def test_a_trigger_in_flight_is_finished_and_the_next_one_waits(
        api: FlaskClient, receiver: Receiver, worker: ThreadWorker) -> None:
    release = receiver.hold("/job/slow", timeout=10)
    _schedule(api, "slow", schedule="@every 1s", dueTime="0s")
    wait_for(lambda: receiver.received("/job/slow"), what="the delivery to start")
    paused = _post(api, f"{V1}/slow/pause")
    assert paused["paused"] is True and paused["status"] == "in_flight"
    first = _scheds(receiver, "slow")[0]
    release.set()
    # Settled: the next trigger is known, and waits.
    got = wait_for(lambda: (lambda j: j if j["status"] == "paused" else None)(
        _get(api, "slow")), what="the settlement")
    assert _ms(got["nextTriggerTime"]) == first + 1000 and got["triggerCount"] == 1
    _schedule(api, "probe", dueTime="1500ms")
    wait_for(lambda: receiver.received("/job/probe"), what="the probe")
    assert _scheds(receiver, "slow") == [first]
    _post(api, f"{V1}/slow/resume")
    wait_for(lambda: len(_scheds(receiver, "slow")) >= 2, what="the resumed trigger")
    assert _scheds(receiver, "slow")[1] == first + 1000  # what waited, coalesced


def test_trigger_now_delivers_once_with_its_own_id_and_leaves_the_job_as_it_was(
        api: FlaskClient, settings: Settings, receiver: Receiver, worker: ThreadWorker) -> None:
    _schedule(api, "report", schedule="@every 1h", dueTime="1h", data={"n": 1})
    _post(api, f"{V1}/report/pause")  # a paused job is triggered too
    before = _get(api, "report")
    fired = _post(api, f"{V1}/report/trigger", 202)
    [delivery] = wait_for(lambda: receiver.received("/job/report"), what="the trigger")
    assert delivery.body == b'{"n":1}'
    assert unquote(delivery.headers["jobrunner-trigger-id"]) == fired["triggerId"]
    assert int(delivery.headers["jobrunner-scheduled-ms"]) == _ms(fired["scheduledTime"])
    again = _post(api, f"{V1}/report/trigger", 202)
    assert again["triggerId"] != fired["triggerId"]
    wait_for(lambda: len(receiver.received("/job/report")) == 2, what="the second trigger")
    # Settled, and gone: the job is as it was (its count, next trigger and pause).
    wait_for(lambda: not _due_one_shots(settings), what="the one-shots to be settled")
    assert _get(api, "report") == before


def _one_shots(settings: Settings) -> list[str]:
    """The replays and "trigger now" one-shots stored (due, retrying or in flight)."""
    store = Store(settings)
    try:
        return [m.decode() for pk in store.keys.all_partitions()
                for m in store.redis.hkeys(pk.jobs) if is_replay(m.decode())]
    finally:
        store.close()


def test_a_trigger_now_of_a_job_deleted_since_is_dropped_not_retried(
        api: FlaskClient, settings: Settings, receiver: Receiver, worker: ThreadWorker) -> None:
    """The one-shot outlived a DELETE of its job: retried after it, dead-lettered, and its
    outcomes recreated the deleted job's history; later (checked by the job's name only)
    its retry still went out, with the deleted job's data, when the name was scheduled
    again at once. Now what is left of it goes with the job."""
    receiver.status = 500
    _schedule(api, "doomed", schedule="@every 1h", dueTime="1h", data="OLD",
              failurePolicy={"constant": {"interval": "300ms", "maxRetries": 5}})
    _post(api, f"{V1}/doomed/trigger", 202)
    wait_for(lambda: receiver.received("/job/doomed"), what="the first attempt")
    assert api.delete(f"{V1}/doomed").status_code == 204
    at_delete = len(receiver.received("/job/doomed"))
    _schedule(api, "doomed", dueTime="1h", data="NEW")
    assert _one_shots(settings) == []  # its retry went with the job, at once
    wait_for(lambda: not worker.worker.inflight, what="the worker idle")
    assert len(receiver.received("/job/doomed")) <= at_delete + 1  # one in flight, at most
    assert api.get(f"{V1}/doomed/history").get_json()["history"] == []
    assert api.get("/v1.0/deadletters").get_json()["deadLetters"] == []


def test_a_jobs_set_of_trigger_nows_drops_those_that_are_over_past_its_bound(
        store: Store) -> None:
    from app.store.keys import FIRED_NOW_KEEP_MS, FIRED_NOW_PRUNE_AT
    from tests.support.jobs import make_job

    store.schedule(make_job("often", now_ms() + 3_600_000, schedule="@every 1h"))
    pauses = Pauses(store)
    for _ in range(FIRED_NOW_PRUNE_AT):
        assert pauses.trigger(APP, "often") is not None
    pk = store.keys.for_job(f"{APP}/often")
    members = [m.decode() for m in store.redis.smembers(pk.fired_now(f"{APP}/often"))]
    assert len(members) == FIRED_NOW_PRUNE_AT
    assert 0 < store.redis.pttl(pk.fired_now(f"{APP}/often")) <= FIRED_NOW_KEEP_MS
    over = members[:FIRED_NOW_PRUNE_AT // 2]  # delivered meanwhile: their records gone
    store.redis.hdel(pk.jobs, *over)
    assert pauses.trigger(APP, "often") is not None
    left = {m.decode() for m in store.redis.smembers(pk.fired_now(f"{APP}/often"))}
    assert len(left) == FIRED_NOW_PRUNE_AT - len(over) + 1 and not left & set(over)


def test_a_trigger_now_looks_at_a_bounded_number_of_the_jobs_trigger_nows(
        store: Store) -> None:
    """The job's set holds a live one-shot for each trigger while its app is down: each
    trigger-now looks at 2 x FIRED_NOW_PRUNE_AT of them, not all (every trigger read the
    whole set, a Redis call growing with it that held up every app). A set this large
    (left by an older version) refuses the trigger: too many wait to go."""
    from app.store.keys import FIRED_NOW_PRUNE_AT
    from tests.support.jobs import make_job

    store.schedule(make_job("hammered", now_ms() + 3_600_000, schedule="@every 1h"))
    pk = store.keys.for_job(f"{APP}/hammered")
    live = [f"{APP}/hammered@live-{i}" for i in range(20 * FIRED_NOW_PRUNE_AT)]
    store.redis.sadd(pk.fired_now(f"{APP}/hammered"), *live)
    store.redis.hset(pk.jobs, mapping={m: "{}" for m in live})  # their one-shots pending

    def hexists_calls() -> int:
        stats = store.redis.info("commandstats").get("cmdstat_hexists", {})
        return int(stats.get("calls", 0))

    before = hexists_calls()
    with pytest.raises(ApiError) as refused:
        Pauses(store).trigger(APP, "hammered")
    assert refused.value.status == 429
    # (an earlier test's in-process worker may still be stopping, and call HEXISTS too)
    assert 2 * FIRED_NOW_PRUNE_AT <= hexists_calls() - before < 3 * FIRED_NOW_PRUNE_AT
    assert store.redis.scard(pk.fired_now(f"{APP}/hammered")) == len(live)


def test_a_job_has_at_most_its_bound_of_trigger_nows_waiting_to_go(api: FlaskClient,
                                                                    store: Store) -> None:
    """Each trigger-now is a copy of the job, data and all, waiting to go: an app whose
    receiver is down could fill Redis with them, whatever its JOBRUNNER_APP_MAX_JOBS."""
    from app.store.keys import FIRED_NOW_PRUNE_AT

    _schedule(api, "often", schedule="@every 1h", dueTime="1h", data={"n": 1})
    for _ in range(FIRED_NOW_PRUNE_AT):
        _post(api, f"{V1}/often/trigger", 202)
    refused = api.post(f"{V1}/often/trigger")
    assert refused.status_code == 429
    assert refused.get_json() == {
        "errorCode": "ERR_APP_JOB_LIMIT",
        "message": f"job 'often' has {FIRED_NOW_PRUNE_AT} triggers fired now waiting to go "
                   "(its app's receiver down or slow): each is a copy of the job; try again "
                   "once they have gone"}
    pk = store.keys.for_job(f"{APP}/often")
    waiting = sorted(m.decode() for m in store.redis.smembers(pk.fired_now(f"{APP}/often")))
    store.redis.hdel(pk.jobs, waiting[0])  # one of them delivered meanwhile: its record gone
    _post(api, f"{V1}/often/trigger", 202)


def test_a_trigger_now_retry_goes_on_after_its_job_ends(
        api: FlaskClient, receiver: Receiver, worker: ThreadWorker) -> None:
    """The job ended (its one trigger delivered) while a trigger-now of it waited for its
    retry: the retry was dropped as if the job had been deleted, no dead letter either."""
    tries: dict[str, int] = {}

    def answer(delivery: Delivery) -> int:
        trigger = delivery.headers["jobrunner-trigger-id"]
        tries[trigger] = tries.get(trigger, 0) + 1
        return 500 if ":now-" in trigger and tries[trigger] == 1 else 200

    receiver.responder = answer
    _schedule(api, "ends", dueTime="1s",
              failurePolicy={"constant": {"interval": "3s", "maxRetries": 3}})
    fired = _post(api, f"{V1}/ends/trigger", 202)["triggerId"]
    wait_for(lambda: api.get(f"{V1}/ends").status_code == 404, what="the job's own end")
    wait_for(lambda: tries.get(fired) == 2, timeout=20, what="the trigger-now's retry")


@pytest.mark.parametrize("action", ["delete", "pause-job", "pause-app"])
def test_a_trigger_waiting_for_its_apps_slot_is_not_sent_once_its_job_is_deleted_or_paused(
        settings: Settings, receiver: Receiver, api: FlaskClient, action: str) -> None:
    """One delivery at a time for the app: `second` waits in the worker while `first` is
    answered slowly, and is deleted or paused meanwhile. It was sent anyway, up to 19 s
    later (a pause took it for one in flight). Paused, it goes out once at the resume."""
    answered = receiver.hold("/job/first", timeout=10)
    _schedule(api, "first", dueTime="0s")
    paths = {"pause-job": (f"{V1}/second/pause", f"{V1}/second/resume"),
             "pause-app": ("/v1.0/app/pause", "/v1.0/app/resume")}
    with ThreadWorker(settings.with_(app_concurrency=1)) as running:
        wait_for(lambda: receiver.received("/job/first"), what="the first delivery")
        _schedule(api, "second", dueTime="0s")
        [(_, since)] = wait_for(lambda: running.worker.slots.waiting.get(APP),
                                what="second waiting")
        if action == "delete":
            assert api.delete(f"{V1}/second").status_code == 204
        else:
            _post(api, paths[action][0])
        # A wait this long is a slow app's, and checked (a burst's short waits are not).
        wait_for(lambda: time.monotonic() - since > RECHECK_AFTER_WAIT_S,
                 what="second waited past the recheck threshold")
        answered.set()
        wait_for(lambda: not running.worker.slots.waiting.get(APP)
                 and not running.worker.inflight, what="the worker idle")
        assert receiver.received("/job/second") == []
        if action != "delete":
            assert _get(api, "second")["status"] == "paused"
            _post(api, paths[action][1])
            wait_for(lambda: receiver.received("/job/second"), what="second after the resume")
            assert len(receiver.received("/job/second")) == 1


def _due_one_shots(settings: Settings) -> list[str]:
    store = Store(settings)
    try:
        return [m.decode() for pk in store.keys.all_partitions()
                for m in store.redis.zrange(pk.due, 0, -1) if is_replay(m.decode())]
    finally:
        store.close()


def test_a_paused_app_fires_nothing_and_other_apps_go_on(settings: Settings, receiver: Receiver,
                                                         api: FlaskClient,
                                                         worker: ThreadWorker) -> None:
    from tests.support.jobs import make_job, register

    _schedule(api, "tick", schedule="@every 200ms", dueTime="0s")
    wait_for(lambda: _scheds(receiver, "tick"), what="the first tick")
    paused = _ms(_post(api, "/v1.0/app/pause")["pausedTime"])
    _schedule(api, "new", dueTime="0s")  # scheduled while the app is paused
    other = register(settings, receiver.url, app_id="other")
    other.schedule(make_job("probe", now_ms() + 700, app_id="other"))
    wait_for(lambda: receiver.received("/job/probe"), what="the other app's job")
    assert [s for s in _scheds(receiver, "tick") if s > paused] == []
    assert receiver.received("/job/new") == []
    _post(api, "/v1.0/app/resume")
    wait_for(lambda: receiver.received("/job/new"), what="the new job after the resume")
    other.close()
