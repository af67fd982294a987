"""What every system under test offers a scenario: start N workers, load jobs, stop.

A scheduled job is `(name, due_ms)`; its delivery is `POST {receiver}/job/{name}`.
Names are `<tag>-<seq>-<due_ms>`, so a delivery tells its due time by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from benchmarks.procs import Procs


@dataclass(frozen=True)
class BenchJob:
    name: str
    due_ms: int


def job_name(tag: str, seq: int, due_ms: int) -> str:
    return f"{tag}-{seq:07d}-{due_ms}"


def due_of(name: str) -> int | None:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def rfc3339_ms(epoch_ms: int) -> str:
    stamp = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_datetime(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


class System(Protocol):
    """One scheduler under test, on its own Redis (flushed between systems)."""

    name: str
    # Rough seconds a job takes to load, to set the lead time before a burst is due.
    load_cost_s: float

    def start(self, procs: Procs, workers: int) -> None:
        """Start `workers` worker processes (and whatever else the system needs); wait
        until they are ready."""

    def load(self, jobs: Sequence[BenchJob]) -> None:
        """Schedule `jobs` directly in Redis, the fastest way the system offers."""

    def stop(self, procs: Procs) -> None:
        """End every process `start` began."""
