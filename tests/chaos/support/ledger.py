"""Counting what came of the triggers: delivered, lost, duplicates.

A trigger is (job name, scheduled ms): every job of a test has a name of its
own, and its rev never changes (no overwrite), so this is the trigger id
`{app}/{name}@{rev}:{sched_ms}` without the parts that are the same for all.

- expected: per job, how many triggers it must produce: 1 for a one-shot,
  `repeats` for an `@every` job (missed occurrences are coalesced, so the
  scheduled times of a late recurring job are not known in advance; their
  number is).
- accepted delivery: a request the receiver answered 2xx in time (not a
  late answer of slow mode, which the worker had given up on).
- delivered: triggers with at least one accepted delivery.
- accounted: delivered, or in the dead-letter queue, or dropped by a `drop`
  failure policy (the test says which ones).
- lost = expected - accounted, per job (never negative; a job with more
  distinct triggers than expected counts them as `extra`).
- duplicates = accepted deliveries and dead letters beyond the first, per
  trigger, summed (a trigger delivered 3 times counts 2).
- early: requests that arrived before the trigger's scheduled time.
- id_mismatch: triggers whose requests did not all carry the same idempotency
  id, or an id not of the form `{app}/{name}@{rev}:{sched_ms}`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.chaos.support.receiver import Delivery

TriggerKey = tuple[str, int]


@dataclass
class Tally:
    expected: int
    delivered: int
    lost: int
    duplicates: int
    duplicate_triggers: int
    dead_lettered: int = 0
    dropped: int = 0
    extra: int = 0
    early: int = 0
    id_mismatch: int = 0
    requests: int = 0
    unexpected: int = 0
    lost_jobs: dict[str, int] = field(default_factory=dict)
    duplicated: dict[TriggerKey, int] = field(default_factory=dict)

    def line(self) -> str:
        return f"chaos: delivered={self.delivered} lost={self.lost} duplicates={self.duplicates}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lost_jobs"] = dict(list(self.lost_jobs.items())[:20])
        out["duplicated"] = [f"{n}:{s} x{c}" for (n, s), c in list(self.duplicated.items())[:20]]
        return out

    def describe(self) -> str:
        parts = [self.line(), f"expected={self.expected}", f"requests={self.requests}"]
        for name in ("dead_lettered", "dropped", "extra", "early", "id_mismatch", "unexpected"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value}")
        text = " ".join(parts)
        if self.lost_jobs:
            sample_lost = dict(list(self.lost_jobs.items())[:20])
            text += f"\n  lost (job: missing triggers), first 20: {sample_lost}"
        if self.duplicated:
            sample = [f"{n}@{s} x{c}" for (n, s), c in list(self.duplicated.items())[:20]]
            text += f"\n  duplicated triggers, first 20: {sample}"
        return text


def tally(expected: Mapping[str, int], deliveries: Iterable[Delivery],
          dead: Iterable[TriggerKey] = (), dropped: Iterable[TriggerKey] = ()) -> Tally:
    accepted: Counter[TriggerKey] = Counter()
    ids: dict[TriggerKey, set[str]] = defaultdict(set)
    requests = early = unexpected = 0
    for d in deliveries:
        requests += 1
        if d.name not in expected:
            unexpected += 1
            continue
        key = (d.name, d.sched_ms)
        ids[key].add(d.trigger_id)
        if d.arrival_ms < d.sched_ms:
            early += 1
        if d.accepted:
            accepted[key] += 1
    dead_count: Counter[TriggerKey] = Counter(k for k in dead if k[0] in expected)
    dropped_set = {k for k in dropped if k[0] in expected}

    per_job: dict[str, set[int]] = defaultdict(set)
    for key in (*accepted, *dead_count, *dropped_set):
        per_job[key[0]].add(key[1])
    lost_jobs: dict[str, int] = {}
    extra = 0
    for name, want in expected.items():
        got = len(per_job.get(name, ()))
        if got < want:
            lost_jobs[name] = want - got
        extra += max(0, got - want)

    duplicated: dict[TriggerKey, int] = {}
    for key in {*accepted, *dead_count}:
        n = accepted[key] + dead_count[key]
        if n > 1:
            duplicated[key] = n
    id_mismatch = sum(
        1 for (name, sched), seen in ids.items()
        if len(seen) != 1 or not _id_ok(next(iter(seen)), name, sched)
    )
    return Tally(
        expected=sum(expected.values()),
        delivered=len(accepted),
        lost=sum(lost_jobs.values()),
        duplicates=sum(n - 1 for n in duplicated.values()),
        duplicate_triggers=len(duplicated),
        dead_lettered=sum(dead_count.values()),
        dropped=len(dropped_set),
        extra=extra,
        early=early,
        id_mismatch=id_mismatch,
        requests=requests,
        unexpected=unexpected,
        lost_jobs=dict(sorted(lost_jobs.items())),
        duplicated=dict(sorted(duplicated.items())),
    )


def _id_ok(trigger_id: str, name: str, sched: int) -> bool:
    head, _, tail = trigger_id.rpartition(":")
    return tail == str(sched) and f"/{name}@" in head


def lateness(deliveries: Iterable[Delivery]) -> dict[str, float]:
    """Seconds from the scheduled time to the arrival of each trigger's first request."""
    first: dict[TriggerKey, float] = {}
    for d in deliveries:
        key = (d.name, d.sched_ms)
        late = (d.arrival_ms - d.sched_ms) / 1000
        if key not in first or late < first[key]:
            first[key] = late
    values = sorted(first.values())
    if not values:
        return {}

    def pct(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 3)

    return {"p50_s": pct(0.5), "p99_s": pct(0.99), "max_s": round(values[-1], 3)}


def history(deliveries: Iterable[Delivery], keys: Iterable[TriggerKey], origin_ms: float,
            limit: int = 10) -> list[str]:
    """For a few triggers: each request as (ms after `origin_ms`, attempt, status, late)."""
    wanted = list(keys)[:limit]
    seen: dict[TriggerKey, list[tuple[int, int, int, int]]] = {k: [] for k in wanted}
    for d in deliveries:
        key = (d.name, d.sched_ms)
        if key in seen:
            seen[key].append((round(d.arrival_ms - origin_ms), d.attempt, d.status, int(d.late)))
    return [f"{n}@{round(s - origin_ms)}: {v}" for (n, s), v in seen.items()]


def job_history(deliveries: Iterable[Delivery], names: Iterable[str], origin_ms: float,
                limit: int = 10) -> list[str]:
    """For a few jobs: each request as (scheduled, arrival ms after `origin_ms`, attempt,
    status, late)."""
    wanted = list(names)[:limit]
    seen: dict[str, list[tuple[int, int, int, int, int]]] = {n: [] for n in wanted}
    for d in deliveries:
        if d.name in seen:
            seen[d.name].append((round(d.sched_ms - origin_ms), round(d.arrival_ms - origin_ms),
                                 d.attempt, d.status, int(d.late)))
    return [f"{n}: {v}" for n, v in seen.items()]
