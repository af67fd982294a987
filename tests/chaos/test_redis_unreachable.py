"""Redis unreachable for 10 s: the API answers 503 with a clear error body (no 500, no
hang beyond a bounded timeout); the workers back off and resume; afterwards every due
trigger is delivered.

Two kinds of "unreachable", for `unreachable_s` (10 s) each, Redis keeping its
data throughout:

- blackhole: redis-server is SIGSTOPped, so connections are still accepted by
  the kernel but nothing ever answers (a network partition that drops
  packets; the hard case for clients); SIGCONT ends it.
- refused: the API and the workers reach Redis through a TCP proxy
  (support/tcp_proxy.py) that aborts every connection and stops listening,
  so clients get resets, then connection refused. Here the workers must back
  off: each may log "redis unavailable" at most MAX_BACKOFF_LINES_PER_S times
  per second of outage (a tight retry loop logs thousands).

Jobs (loaded before, through the store) are due before, during and after the
outage. Throughout the outage the API is probed: every PROBE_EVERY_S a request
to schedule a job, one to get a job and one to /healthz, each on its own
connection. Every probe must be answered within API_BOUND_S: the API's
Redis client is set up with a 2 s connect and a 5 s read timeout so that a
request fails fast, and the bound leaves 3 s of slack over that. A probe sent
and answered while Redis is away must get 503 with errorCode
ERR_REDIS_UNAVAILABLE.

Duplicates are asserted to be 0 as well: leases go by Redis's own clock.

Size `ci`: 4,000 jobs; `large`: 30,000. The outage is 10 s in both sizes.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import pytest

from app.jobs.clock import now_ms
from tests.chaos.conftest import APP_ID, ChaosEnv
from tests.chaos.support.api_load import Call, Client
from tests.chaos.support.ledger import history, lateness, tally
from tests.chaos.support.procs import ChaosRedis, RedisProxy
from tests.chaos.support.store_ops import drain, every, expected_triggers, leftovers, load, one_shot
from tests.support.waiting import wait_for

API_BOUND_S = 8.0
# 3 probes per period, each holding one of the API's 16 threads (2 processes x 8) for up
# to 5 s while Redis is away: well below what the API can serve at once.
PROBE_EVERY_S = 1.5
PROBE_CLIENT_TIMEOUT_S = 40.0
MAX_BACKOFF_LINES_PER_S = 10


class Outage:
    """Makes Redis unreachable for the API and the workers, and back."""

    def __init__(self, chaos: ChaosEnv, kind: str, redis: ChaosRedis) -> None:
        self.kind, self.redis = kind, redis
        self.proxy = RedisProxy(chaos.procs, chaos.tmp, redis).start() if kind == "refused" \
            else None

    @property
    def url(self) -> str:
        """The Redis URL the API and workers use."""
        return self.proxy.url if self.proxy is not None else self.redis.url

    def begin(self) -> None:
        if self.proxy is not None:
            self.proxy.set_mode("refused")
        else:
            self.redis.pause()

    def end(self) -> None:
        if self.proxy is not None:
            self.proxy.set_mode("up")
        else:
            self.redis.resume()


@pytest.mark.parametrize("kind", ["blackhole", "refused"])
def test_redis_unreachable_for_10s(chaos: ChaosEnv, kind: str) -> None:
    size = chaos.size
    seed = int(os.environ.get("JOBRUNNER_CHAOS_SEED", "0")) or random.randrange(1, 1 << 30)
    rng = random.Random(seed)
    redis = chaos.redis()
    outage = Outage(chaos, kind, redis)
    receiver = chaos.receiver()
    direct = chaos.settings(redis, receiver)
    settings = direct.with_(redis_url=outage.url)
    api = chaos.api(settings)
    store = chaos.store(direct)
    workers = chaos.workers(settings, 4)

    outage_at = time.time() + 3.0
    now = now_ms()
    first, last = now + 1000, int((outage_at + size.unreachable_s + 3.0) * 1000)
    n_every = size.unreachable_jobs // 4
    jobs = [one_shot(APP_ID, f"o{i}", rng.randint(first, last), now)
            for i in range(size.unreachable_jobs - n_every)]
    jobs += [every(APP_ID, f"e{i}", rng.randint(first, last), now, "2s", 2)
             for i in range(n_every)]
    load(store, jobs)
    expected = expected_triggers(jobs)
    before = Client(api.url, timeout=10).request("schedule", "POST", "/v1.0-alpha1/jobs/before",
                                                 {"dueTime": "1s"}, "before", 1)
    assert before.status == 204, before

    time.sleep(max(0.0, outage_at - time.time()))
    stopped = time.time()
    outage.begin()
    probes: list[Call] = []
    prober = threading.Thread(target=_probe_all, args=(api.url, stopped + size.unreachable_s - 1.0,
                                                       probes), daemon=True)
    prober.start()
    time.sleep(max(0.0, stopped + size.unreachable_s - time.time()))
    outage.end()
    resumed = time.time()
    prober.join(PROBE_CLIENT_TIMEOUT_S + 5)
    assert not prober.is_alive(), "a probe never got an answer"

    after: list[Call] = []

    def schedules_again() -> bool:
        call = Client(api.url, timeout=10).request(
            "schedule", "POST", f"/v1.0-alpha1/jobs/after{len(after)}", {"dueTime": "1s"},
            f"after{len(after)}", 1)
        after.append(call)
        return call.status == 204

    wait_for(schedules_again, 20, interval=0.1, what="the API to schedule again after the outage")
    expected.update({c.name: 1 for c in after if c.status == 204})
    expected["before"] = 1

    settled, left, records = drain(store, receiver, settle_timeout=60,
                                   grace_s=settings.delivery_timeout_s + 0.5)
    result = tally(expected, records)
    # Handled while Redis was away from start to end: must be a clear 503.
    inside = [p for p in probes if p.sent >= stopped and p.done < resumed]
    not_503 = [p for p in inside if p.status != 503 or not _redis_error(p.body)]
    bad = [p for p in probes if p.status is None or (p.status >= 500 and p.status != 503)]
    slowest = max((p.took for p in probes), default=0.0)
    backoff_lines = [w.log().count("redis unavailable") for w in workers.all]
    chaos.report(
        result, seed=seed, probes=len(probes), probes_during_outage=len(inside),
        probe_statuses=_statuses(probes), slowest_probe_s=round(slowest, 2),
        api_back_after_s=round(after[-1].done - resumed, 2),
        worker_backoff_log_lines=backoff_lines, lateness=lateness(records),
        outage_ms=[0, round((resumed - stopped) * 1000)],
        duplicate_history=history(records, result.duplicated, stopped * 1000),
    )

    assert inside, "no probe was sent during the outage"
    assert not bad, f"500s or no answer: {_sample(bad)}"
    assert slowest <= API_BOUND_S, (
        f"the API took {slowest:.1f}s to answer (bound {API_BOUND_S}s): "
        f"{_sample(sorted(probes, key=lambda p: -p.took))}")
    assert not not_503, f"not a clear 503 while Redis was away: {_sample(not_503)}"
    assert not workers.dead(), f"a worker died; logs in {chaos.logdir}"
    assert max(backoff_lines) <= MAX_BACKOFF_LINES_PER_S * size.unreachable_s, (
        f"workers retry Redis in a tight loop: {backoff_lines} 'redis unavailable' lines")
    assert result.lost == 0, result.describe()
    # Leases go by Redis's clock (claim.lua), so claims that queued up while Redis was
    # away cannot hand one trigger to two workers when it comes back.
    assert result.duplicates == 0, result.describe()
    assert (result.extra, result.early, result.id_mismatch) == (0, 0, 0), result.describe()
    assert settled, f"jobs left in Redis: {left}\n{leftovers(store, settings.app_id)}"


def _probe_all(base_url: str, until: float, out: list[Call]) -> None:
    """Every PROBE_EVERY_S, one request of each kind, each on its own connection and
    thread (so a slow answer does not hold the next probe back)."""
    threads: list[threading.Thread] = []
    n = 0
    while time.time() < until:
        n += 1
        for kind, method, path, body in (
            ("schedule", "POST", f"/v1.0-alpha1/jobs/probe{n}", {"dueTime": "1s"}),
            ("get", "GET", "/v1.0-alpha1/jobs/before", None),
            ("healthz", "GET", "/healthz", None),
        ):
            t = threading.Thread(target=_probe_one, args=(base_url, kind, method, path, body, out),
                                 daemon=True)
            t.start()
            threads.append(t)
        time.sleep(PROBE_EVERY_S)
    for t in threads:
        t.join(PROBE_CLIENT_TIMEOUT_S + 1)


def _probe_one(base_url: str, kind: str, method: str, path: str, body: Any,
               out: list[Call]) -> None:
    client = Client(base_url, timeout=PROBE_CLIENT_TIMEOUT_S)
    out.append(client.request(kind, method, path, body, path.rsplit("/", 1)[-1]))
    client.close()


def _redis_error(body: Any) -> bool:
    return (isinstance(body, dict) and body.get("errorCode") == "ERR_REDIS_UNAVAILABLE"
            and "Redis" in str(body.get("message", "")))


def _statuses(calls: list[Call]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in calls:
        key = f"{c.kind}:{c.status}"
        out[key] = out.get(key, 0) + 1
    return out


def _sample(calls: list[Call]) -> list[tuple[str, int | None, float, float, Any, str]]:
    return [(c.kind, c.status, round(c.sent % 1000, 2), round(c.took, 2), c.body, c.error)
            for c in calls[:8]]
