"""The receiver's own ceiling: how many deliveries a second it can take on its core.

A load generator pinned to the other core fires keep-alive POSTs at it. Both run in
Python, so the generator may saturate first; the receiver's CPU time over the run
gives its cost per request, hence the rate it could take at 100% of its core.
"""

from __future__ import annotations

from typing import Any

from benchmarks.loadgen import run_load
from benchmarks.receiver import ReceiverClient


def measure_ceiling(
    receiver: ReceiverClient, duration: float, concurrency: int = 64, core: int | None = 0
) -> dict[str, Any]:
    before = receiver.stats()
    load = run_load(receiver.port, "ceiling", 10**9, duration, concurrency, core,
                    label="receiver ceiling")
    after = receiver.stats()
    receiver.take()  # forget the ceiling's requests
    seconds = float(load["seconds"])  # type: ignore[arg-type]
    requests = int(load["requests"])  # type: ignore[call-overload]
    receiver_cpu = after["cpu"] - before["cpu"]
    busy = receiver_cpu / seconds if seconds > 0 else 0.0
    rate = requests / seconds if seconds > 0 else 0.0
    return {
        "requests": requests,
        "seconds": seconds,
        "rate": rate,
        "receiver_busy": busy,
        "generator_busy": float(load["cpu_s"]) / seconds if seconds > 0 else 0.0,  # type: ignore[arg-type]
        # What the receiver could take at 100% of its one core.
        "capacity": requests / receiver_cpu if receiver_cpu > 0 else rate,
        "errors": load["errors"],
        "concurrency": concurrency,
    }
