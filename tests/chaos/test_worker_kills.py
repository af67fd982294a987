"""SIGKILL of random workers while triggers fire: 0 lost; duplicates only for triggers
that were in flight at a kill, and counted.

"In flight at a kill" is read from Redis right after the SIGKILL: the triggers
whose run state still carries a lease token of the dead worker (tokens are
`{pid}-{random}:{n}`). It held those leases, so it may have delivered them
without acknowledging; another worker delivers them again once the lease
(3 s here) runs out. A trigger may be delivered again at most once per kill
it was held at; any other duplicate fails the test.

Each killed worker is replaced at once, so 4 workers run most of the time.
Kills happen when given fractions of the triggers have arrived (so always
while triggers fire), on a randomly chosen live worker.

Size `ci`: 20,000 triggers (14,000 one-shots + 2,000 `@every 1s` x 3) due over
8 s, 3 kills. Size `large`: 100,000 triggers over 30 s, 8 kills.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from typing import Any

from app.jobs.clock import now_ms
from tests.chaos.conftest import APP_ID, ChaosEnv
from tests.chaos.support.ledger import TriggerKey, lateness, tally
from tests.chaos.support.store_ops import (
    drain,
    every,
    expected_triggers,
    leases_held_by,
    leftovers,
    load,
    one_shot,
)
from tests.support.waiting import wait_for


def test_sigkill_of_random_workers_loses_nothing(chaos: ChaosEnv) -> None:
    size = chaos.size
    seed = int(os.environ.get("JOBRUNNER_CHAOS_SEED", "0")) or random.randrange(1, 1 << 30)
    rng = random.Random(seed)
    redis = chaos.redis()
    receiver = chaos.receiver()
    settings = chaos.settings(redis, receiver, partitions=2)
    chaos.register(settings)
    store = chaos.store(settings)
    workers = chaos.workers(settings, 4)

    now = now_ms()
    start = now + 3000
    window = int(size.kill_window_s * 1000)
    jobs = [one_shot(APP_ID, f"o{i}", start + rng.randrange(window), now)
            for i in range(size.kill_one_shots)]
    jobs += [every(APP_ID, f"e{i}", start + rng.randrange(window), now, "1s", size.kill_repeats)
             for i in range(size.kill_every)]
    rng.shuffle(jobs)
    load_s = load(store, jobs)
    expected = expected_triggers(jobs)
    total = sum(expected.values())

    # Kill when these numbers of requests have arrived: spread over 5%..85% of the run.
    marks = sorted(int(total * (0.05 + 0.8 * (i + rng.uniform(0.2, 0.8)) / size.kills))
                   for i in range(size.kills))
    kills: list[dict[str, Any]] = []
    held_at_kills: Counter[TriggerKey] = Counter()
    run_deadline = time.monotonic() + size.kill_window_s + size.kill_repeats + 90
    for mark in marks:
        wait_for(lambda m=mark: receiver.count() >= m,
                 max(1.0, run_deadline - time.monotonic()), what=f"{mark} requests before a kill")
        victim = rng.choice(workers.alive)
        workers.kill(victim)
        at = time.time() * 1000
        held = leases_held_by(store, victim.pid)
        held_at_kills.update(held)
        kills.append({"pid": victim.pid, "after_requests": mark, "at_ms": at,
                      "held": len(held)})
        workers.start(1, wait_ready=False)  # a replacement, as a supervisor would start

    receiver.wait_count(total, timeout=max(1.0, run_deadline - time.monotonic()))
    settled, left, records = drain(store, receiver, settle_timeout=30,
                                   grace_s=settings.delivery_timeout_s + 0.5)
    result = tally(expected, records)
    unexplained = {key: n for key, n in result.duplicated.items()
                   if n - 1 > held_at_kills[key]}
    chaos.report(result, seed=seed, load_s=round(load_s, 2), kills=kills,
                 in_flight_at_kills=sum(held_at_kills.values()),
                 duplicates_unexplained=len(unexplained), lateness=lateness(records))

    assert len(kills) >= 3
    assert result.lost == 0, result.describe()
    assert not unexplained, _explain(unexplained, records, kills, result.describe())
    assert (result.extra, result.early, result.id_mismatch) == (0, 0, 0), result.describe()
    assert sum(k["held"] for k in kills) > 0, f"no kill hit a worker holding triggers: {kills}"
    assert settled, f"jobs left in Redis: {left}\n{leftovers(store, settings.app_id)}"


def _explain(unexplained: dict[TriggerKey, int], records: list[Any],
             kills: list[dict[str, Any]], summary: str) -> str:
    lines = [f"{len(unexplained)} triggers delivered more often than kills explain; "
             f"kills at {[round(k['at_ms']) for k in kills]}", summary]
    for key in list(unexplained)[:10]:
        seen = [(round(d.arrival_ms), d.attempt, d.status) for d in records
                if (d.name, d.sched_ms) == key]
        lines.append(f"  {key}: (arrival ms, attempt, status) {seen}")
    return "\n".join(lines)
