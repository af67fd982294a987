"""The app down (connection refused), then answering 500, then slower than the delivery
timeout, then healthy: every trigger follows its failure policy; those whose policy is
spent are in the dead-letter queue with their last error; the rest are delivered after
the app returns; none vanish (lost = 0) and none is delivered twice.

Phases (size `ci` SHORTENS the issue's 60 s outage to 8 s; `large` has 60 s):

    down   outage_down_s   the receiver closes its listening socket and aborts
                           its connections: every connection is refused
    error  outage_error_s  every request answered 500
    slow   outage_slow_s   every request answered after 2 s (delivery timeout 1 s)
    healthy                200 at once

Every trigger must follow its failure policy (all groups): no attempt beyond
what the policy allows; dead-lettered only with the policy spent (exactly its
number of attempts; never under `drop` or unlimited retries); never both
delivered and dead-lettered; accepted only once the app is healthy. Every dead
letter's error must be the one of its last attempt as the receiver saw it
(500, or a late answer = the timeout), or a connection/timeout error when that
attempt never reached the app.

Job groups (`outage_group` jobs each), and what must come of them:

    spent_down   default policy (1 s x 3 retries), due 1 s into `down`: all
                 dead-lettered, error "cannot connect to the app", none reached
                 the app
    unlimited    constant 1 s, no retry limit, due in `down`: delivered after
    generous     constant 1 s, enough retries to outlast the outage: delivered after
    spent_500    constant 0.5 s x 2 retries, due in `error`: dead-lettered with
                 "app answered HTTP 500"
    dropped      drop policy, due in `error`: one attempt (answered 500, unless it
                 ran late), then nothing: never dead-lettered
    spent_slow   constant 0.5 s x 1 retry, due in `slow`: dead-lettered with "no
                 answer within 1s" (or "no free connection to the app" when the
                 slow app kept all the worker's connections busy)
    recurring    `@every 2s` x R, default policy, from the start of `down` on:
                 each of its R triggers delivered or dead-lettered
    after        one-shots due once the app is back: delivered

In spent_500, spent_slow and dropped, a trigger whose attempts were held back
by the load (the large size puts thousands of retries on the workers at once)
past its phase may end up delivered after the app returns, within its
policy's attempts: that is its policy followed too. Each of these groups must
still have dead-lettered (or dropped) at least one trigger.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import defaultdict

from app.jobs.clock import now_ms
from app.jobs.model import DeadLetter, FailureKind, Job
from tests.chaos.conftest import APP_ID, ChaosEnv
from tests.chaos.support.ledger import Tally, TriggerKey, history, job_history, tally
from tests.chaos.support.receiver import Delivery
from tests.chaos.support.store_ops import (
    DROP,
    constant,
    dead_letters,
    drain,
    every,
    expected_triggers,
    leftovers,
    load,
    one_shot,
)

SLOW_DELAY_S = 2.0
# The errors of an attempt that never got an answer from the app.
CONNECT_ERRORS = ("cannot connect to the app", "no answer within", "delivery failed",
                  "no free connection to the app")
SLOW_ERRORS = ("no answer within", "no free connection to the app")


def test_app_down_then_500_then_slow_then_healthy(chaos: ChaosEnv) -> None:
    size = chaos.size
    seed = int(os.environ.get("JOBRUNNER_CHAOS_SEED", "0")) or random.randrange(1, 1 << 30)
    rng = random.Random(seed)
    redis = chaos.redis()
    receiver = chaos.receiver()
    settings = chaos.settings(redis, receiver)
    chaos.register(settings)
    store = chaos.store(settings)
    workers = chaos.workers(settings, 4)

    down_s, error_s, slow_s = size.outage_down_s, size.outage_error_s, size.outage_slow_s
    receiver.set_mode("down")
    t0 = now_ms()
    t_error, t_slow = t0 + int(down_s * 1000), t0 + int((down_s + error_s) * 1000)
    t_healthy = t_slow + int(slow_s * 1000)
    outage_s = down_s + error_s + slow_s
    repeats = math.ceil(outage_s / 4) + 2  # a failing trigger takes ~4 s, a good one 2 s

    def at(base: int, lo: float, hi: float) -> int:
        return base + int(rng.uniform(lo, hi) * 1000)

    n = size.outage_group
    groups: dict[str, list[Job]] = {
        "spent_down": [one_shot(APP_ID, f"sd{i}", at(t0, 1.0, 1.5), t0) for i in range(n)],
        "unlimited": [one_shot(APP_ID, f"un{i}", at(t0, 1.0, 2.0), t0,
                               failure_policy=constant(1000, None)) for i in range(n)],
        "generous": [one_shot(APP_ID, f"ge{i}", at(t0, 1.0, 2.0), t0,
                              failure_policy=constant(1000, math.ceil(outage_s) + 10))
                     for i in range(n)],
        "spent_500": [one_shot(APP_ID, f"s5{i}", at(t_error, 0.8, 1.2), t0,
                               failure_policy=constant(500, 2)) for i in range(n)],
        "dropped": [one_shot(APP_ID, f"dr{i}", at(t_error, 0.8, 1.6), t0, failure_policy=DROP)
                    for i in range(n)],
        "spent_slow": [one_shot(APP_ID, f"ss{i}", at(t_slow, 0.5, 0.8), t0,
                                failure_policy=constant(500, 1)) for i in range(n)],
        "recurring": [every(APP_ID, f"re{i}", at(t0, 1.0, 3.0), t0, "2s", repeats)
                      for i in range(n)],
        "after": [one_shot(APP_ID, f"af{i}", at(t_healthy, 1.0, 2.0), t0) for i in range(n)],
    }
    jobs = [j for js in groups.values() for j in js]
    load(store, jobs)
    expected = expected_triggers(jobs)

    _sleep_until(t_error)
    receiver.set_mode("error", status=500)
    _sleep_until(t_slow)
    receiver.set_mode("slow", delay=SLOW_DELAY_S)
    _sleep_until(t_healthy)
    healthy_at = receiver.set_mode("healthy")

    settled, left, records = drain(store, receiver, settle_timeout=60 + outage_s,
                                   grace_s=settings.delivery_timeout_s + SLOW_DELAY_S)
    dead = dead_letters(store)
    drop_names = {j.name for j in groups["dropped"]}
    dropped = {(d.name, d.sched_ms) for d in records if d.name in drop_names and not d.accepted}
    result = tally(expected, records, dead=[(d.name, d.sched_ms) for d in dead], dropped=dropped)

    problems = _check_policies(jobs, records, dead, healthy_at)
    problems += _check_groups(groups, records, dead)
    problems += _check_last_errors(records, dead)
    chaos.report(
        result, seed=seed, phases_s=[down_s, error_s, slow_s], recurring_repeats=repeats,
        per_group=_per_group(groups, records, dead), problems=len(problems),
        lost_history=job_history(records, result.lost_jobs, t0),
    )

    assert not workers.dead(), f"a worker died; logs in {chaos.logdir}"
    assert result.lost == 0, _describe(result, records, t0)
    assert result.duplicates == 0, _describe(result, records, t0)
    assert (result.extra, result.early, result.id_mismatch) == (0, 0, 0), result.describe()
    assert not problems, "\n".join(problems[:30])
    assert settled, f"jobs left in Redis: {left}\n{leftovers(store, settings.app_id)}"


def _sleep_until(ms: int) -> None:
    time.sleep(max(0.0, ms / 1000 - time.time()))


def _by_job(records: list[Delivery]) -> dict[str, list[Delivery]]:
    out: dict[str, list[Delivery]] = defaultdict(list)
    for d in records:
        out[d.name].append(d)
    return out


def _max_attempts(job: Job) -> float:
    policy = job.failure_policy
    if policy.kind is FailureKind.DROP:
        return 1
    return math.inf if policy.max_retries is None else policy.max_retries + 1


def _check_policies(jobs: list[Job], records: list[Delivery],
                    dead: list[DeadLetter], healthy_at: float) -> list[str]:
    """Every trigger followed its failure policy: no attempt beyond the policy's; a dead
    letter only once the policy is spent (and never for `drop` or unlimited retries);
    never both delivered and dead-lettered; accepted only once the app was back."""
    problems: list[str] = []
    limit = {j.name: _max_attempts(j) for j in jobs}
    accepted: set[TriggerKey] = set()
    for d in records:
        if d.attempt > limit[d.name]:
            problems.append(f"{d.name}@{d.sched_ms}: attempt {d.attempt}, policy allows "
                            f"{limit[d.name]}")
        if d.accepted:
            accepted.add((d.name, d.sched_ms))
            if d.arrival_ms < healthy_at:
                problems.append(f"{d.name}: accepted while the app was not healthy: {d}")
    for letter in dead:
        if letter.attempts != limit[letter.name]:
            problems.append(f"{letter.name}@{letter.sched_ms}: dead-lettered after "
                            f"{letter.attempts} attempts, policy allows {limit[letter.name]}")
        if (letter.name, letter.sched_ms) in accepted:
            problems.append(f"{letter.name}@{letter.sched_ms}: delivered and dead-lettered")
    return problems


def _check_groups(groups: dict[str, list[Job]], records: list[Delivery],
                  dead: list[DeadLetter]) -> list[str]:
    """What each group must come to (see the module docstring)."""
    problems: list[str] = []
    seen = _by_job(records)
    dead_of: dict[str, list[DeadLetter]] = defaultdict(list)
    for letter in dead:
        dead_of[letter.name].append(letter)

    def delivered(name: str) -> int:
        return sum(r.accepted for r in seen[name])

    def spent(group: str, errors: tuple[str, ...], strict: bool) -> None:
        """Dead-lettered with the error of its phase; unless `strict`, a trigger whose
        attempts ran late under load (past the phase, into `healthy`) may be delivered."""
        n_dead = 0
        for job in groups[group]:
            letters = dead_of[job.name]
            if len(letters) == 1 and letters[0].error.startswith(errors):
                n_dead += 1
            elif strict or letters or delivered(job.name) != 1:
                problems.append(f"{group} {job.name}: dead letters "
                                f"{[(x.attempts, x.error) for x in letters]}, "
                                f"{delivered(job.name)} deliveries; want 1 dead letter "
                                f"with {errors}")
        if not n_dead:
            problems.append(f"{group}: not one trigger dead-lettered")

    spent("spent_down", ("cannot connect to the app",), strict=True)
    spent("spent_500", ("app answered HTTP 500",), strict=False)
    spent("spent_slow", SLOW_ERRORS, strict=False)
    for job in groups["spent_down"]:
        if seen[job.name]:
            problems.append(f"spent_down {job.name}: reached the app that was down")
    for group in ("unlimited", "generous", "after"):
        for job in groups[group]:
            if dead_of[job.name] or delivered(job.name) != 1:
                problems.append(f"{group} {job.name}: {len(dead_of[job.name])} dead letters, "
                                f"{delivered(job.name)} deliveries; want 0 and 1")
    n_dropped = 0
    for job in groups["dropped"]:
        reqs = seen[job.name]
        if dead_of[job.name] or [r.attempt for r in reqs] != [1]:
            problems.append(f"dropped {job.name}: requests {[(r.attempt, r.status) for r in reqs]}"
                            f", {len(dead_of[job.name])} dead letters; want one attempt, "
                            f"no dead letter")
        n_dropped += [(r.attempt, r.status) for r in reqs] == [(1, 500)]
    if not n_dropped:
        problems.append("dropped: not one trigger dropped after a 500")
    return problems


def _check_last_errors(records: list[Delivery], dead: list[DeadLetter]) -> list[str]:
    """A dead letter's error is what happened to its last attempt."""
    last: dict[tuple[str, int, int], Delivery] = {}
    for d in records:
        last[(d.name, d.sched_ms, d.attempt)] = d
    problems = []
    for letter in dead:
        if not letter.error:
            problems.append(f"{letter.name}@{letter.sched_ms}: dead letter without an error")
            continue
        seen = last.get((letter.name, letter.sched_ms, letter.attempts))
        if seen is None:
            ok = letter.error.startswith(CONNECT_ERRORS)
        elif seen.late:
            ok = letter.error.startswith(SLOW_ERRORS)
        else:
            ok = letter.error == f"app answered HTTP {seen.status}"
        if not ok:
            problems.append(f"{letter.name}@{letter.sched_ms}: error {letter.error!r} but its "
                            f"last attempt was {seen}")
    return problems


def _per_group(groups: dict[str, list[Job]], records: list[Delivery],
               dead: list[DeadLetter]) -> dict[str, dict[str, int]]:
    group_of = {j.name: g for g, js in groups.items() for j in js}
    out: dict[str, dict[str, int]] = {g: {"delivered": 0, "dead": 0, "requests": 0}
                                      for g in groups}
    for d in records:
        g = out[group_of[d.name]]
        g["requests"] += 1
        g["delivered"] += d.accepted
    for letter in dead:
        out[group_of[letter.name]]["dead"] += 1
    return out


def _describe(result: Tally, records: list[Delivery], t0: int) -> str:
    keys: list[TriggerKey] = list(result.duplicated)
    return result.describe() + "\n" + "\n".join(history(records, keys, t0))
