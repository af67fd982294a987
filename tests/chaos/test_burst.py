"""4 worker processes, 20,000 triggers (one-shot and `@every` mixed) due within a few
seconds: every trigger delivered exactly once (0 lost, 0 duplicates), none early.

Size `ci`: 14,000 one-shots + 2,000 `@every 1s` x 3 = 20,000 triggers, first due
times spread over 3 s. Size `large`: 70,000 + 10,000 x 3 = 100,000 over 10 s.
"""

from __future__ import annotations

import os
import random
import time

from app.jobs.clock import now_ms
from tests.chaos.conftest import APP_ID, ChaosEnv
from tests.chaos.support.ledger import lateness, tally
from tests.chaos.support.store_ops import drain, every, expected_triggers, leftovers, load, one_shot


def test_burst_of_triggers_on_four_workers_is_delivered_exactly_once(chaos: ChaosEnv) -> None:
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
    start = now + 2500  # after the load
    window = int(size.burst_window_s * 1000)
    jobs = [one_shot(APP_ID, f"o{i}", start + rng.randrange(window), now)
            for i in range(size.burst_one_shots)]
    jobs += [every(APP_ID, f"e{i}", start + rng.randrange(window), now, "1s", size.burst_repeats)
             for i in range(size.burst_every)]
    rng.shuffle(jobs)
    load_s = load(store, jobs)
    expected = expected_triggers(jobs)
    total = sum(expected.values())

    receiver.wait_count(total, timeout=size.burst_window_s + size.burst_repeats + 60)
    done_at = time.time() * 1000
    settled, left, records = drain(store, receiver, settle_timeout=30,
                                   grace_s=settings.delivery_timeout_s + 0.5)
    result = tally(expected, records)
    chaos.report(result, seed=seed, load_s=round(load_s, 2),
                 drain_s=round((done_at - start) / 1000, 2), lateness=lateness(records))

    assert not workers.dead(), f"a worker died; logs in {chaos.logdir}"
    assert result.lost == 0, result.describe()
    assert result.duplicates == 0, result.describe()
    assert (result.extra, result.early, result.id_mismatch) == (0, 0, 0), result.describe()
    assert settled, f"jobs left in Redis: {left}\n{leftovers(store, settings.app_id)}"
