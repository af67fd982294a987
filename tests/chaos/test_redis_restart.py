"""redis-server with AOF (`appendfsync everysec`) killed with SIGKILL and restarted
mid-run, on the same port and directory: 0 lost among the jobs the API acknowledged
(204) more than 1 s before the kill; the workers and the API reconnect by themselves.

Jobs come in through a real `jobrunner api` process, `restart_clients` client
threads scheduling back to back (one-shots due in 1-3 s, and `@every 1s` x 2),
while 4 workers deliver. Half-way through the load Redis is SIGKILLed; it is
restarted 1.5 s later. Expected to be delivered: every job acknowledged (204)
more than 1 s before the kill, and every job acknowledged after the restart.
Jobs acknowledged within the last second before the kill may be lost (AOF
everysec); how many were is reported (`at_risk_lost`), not asserted.
Duplicates are counted, not asserted: an acknowledgement of a delivery that
was not yet fsynced is lost with the crash, so that trigger is delivered again
(at-least-once).

The API must answer every request meanwhile with 204 or 503 (with the
`ERR_REDIS_UNAVAILABLE` body), never a 500, and each within API_BOUND_S.

Size `ci`: 6 s of load; `large`: 20 s.
"""

from __future__ import annotations

import time
from typing import Any

from tests.chaos.conftest import ChaosEnv
from tests.chaos.support.api_load import JobSpec, ScheduleLoad
from tests.chaos.support.ledger import lateness, tally
from tests.chaos.support.store_ops import drain, leftovers
from tests.support.waiting import wait_for

DOWN_S = 1.5
# The API's Redis client has a 2 s connect and 5 s read timeout; with Redis refusing
# connections an answer (503) must come well within this.
API_BOUND_S = 8.0


def make_job(i: int) -> JobSpec:
    if i % 4 == 3:
        return f"r{i}", {"schedule": "@every 1s", "repeats": 2, "dueTime": "1s",
                         "data": {"i": i}}, 2
    return f"r{i}", {"dueTime": f"{1 + i % 3}s", "data": {"i": i}}, 1


def test_redis_sigkill_and_restart_with_aof_loses_no_acknowledged_job(chaos: ChaosEnv) -> None:
    size = chaos.size
    redis = chaos.redis(aof=True)
    receiver = chaos.receiver()
    settings = chaos.settings(redis, receiver)
    api = chaos.api(settings)
    store = chaos.store(settings)
    workers = chaos.workers(settings, 4)

    load = ScheduleLoad(api.url, size.restart_clients, make_job, timeout=30.0).start()
    began = time.time()
    time.sleep(size.restart_load_s * 0.45)
    killed = time.time()
    redis.crash()
    time.sleep(DOWN_S)
    redis.restart()
    up = time.time()

    def scheduled_since_restart() -> bool:
        return any(c.status == 204 and c.sent > up for c in load.snapshot())

    wait_for(scheduled_since_restart, 20, interval=0.05,
             what="the API to schedule again after the restart")
    rescheduled_after = min(c.done for c in load.snapshot()
                            if c.status == 204 and c.sent > up) - up
    time.sleep(max(0.0, began + size.restart_load_s - time.time()))
    load.stop()
    calls = load.snapshot()

    acked = [c for c in calls if c.status == 204]
    must = [c for c in acked if c.done < killed - 1.0 or c.done > up]
    at_risk = [c for c in acked if killed - 1.0 <= c.done <= up]
    expected = {c.name: c.expected for c in must}
    settled, left, records = drain(store, receiver, settle_timeout=60,
                                   grace_s=settings.delivery_timeout_s + 0.5)
    result = tally(expected, records)
    risk = tally({c.name: c.expected for c in at_risk}, records)
    bad = [c for c in calls if c.status not in (204, 503)]
    unclear_503 = [c for c in calls if c.status == 503 and not _redis_503(c.body)]
    slowest = max((c.took for c in calls), default=0.0)
    refused = {c.name for c in calls if c.status == 503}
    chaos.report(
        result, api_calls=len(calls), acked=len(acked), expected_jobs=len(must),
        at_risk_jobs=len(at_risk), at_risk_lost=risk.lost, at_risk_duplicates=risk.duplicates,
        answered_503=len(refused), other_answers=len(bad),
        answered_503_but_delivered=len(refused & {d.name for d in records}),
        slowest_answer_s=round(slowest, 2), api_back_after_s=round(rescheduled_after, 2),
        lateness=lateness(records),
    )

    assert not bad, f"answers other than 204/503: {_sample(bad)}"
    assert not unclear_503, f"503 without the Redis error body: {_sample(unclear_503)}"
    assert slowest <= API_BOUND_S, f"an API answer took {slowest:.1f}s"
    assert not workers.dead(), f"a worker died; logs in {chaos.logdir}"
    assert result.lost == 0, result.describe()
    assert (result.extra, result.early, result.id_mismatch) == (0, 0, 0), result.describe()
    assert settled, f"jobs left in Redis: {left}\n{leftovers(store, settings.app_id)}"


def _redis_503(body: Any) -> bool:
    return (isinstance(body, dict) and body.get("errorCode") == "ERR_REDIS_UNAVAILABLE"
            and "Redis" in str(body.get("message", "")))


def _sample(calls: list[Any]) -> list[tuple[str, int | None, float, Any, str]]:
    return [(c.name, c.status, round(c.took, 2), c.body, c.error) for c in calls[:10]]
