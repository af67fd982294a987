"""Who used the cores during a measurement: CPU seconds per group of our child processes
(by process group, so gunicorn's workers count for their API), this harness, and the
machine as a whole (the rest is other processes: a busy machine makes figures low)."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from benchmarks.procs import Procs

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _group(name: str) -> str:
    """jobrunner-worker-1 -> jobrunner-worker"""
    return re.sub(r"-\d+$", "", name)


def _by_group(procs: Procs) -> dict[str, float]:
    groups = {proc.pid: _group(name) for name, proc in procs.named()}
    out: dict[str, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        group = groups.get(int(fields[2]))
        if group is not None:
            out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def _machine_busy() -> float:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / _TICKS


@dataclass
class CpuSnapshot:
    wall: float
    groups: dict[str, float]
    harness: float
    machine: float


def snapshot(procs: Procs) -> CpuSnapshot:
    return CpuSnapshot(time.monotonic(), _by_group(procs), time.process_time(), _machine_busy())


def cores_used(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Cores each group kept busy between the snapshots (1.0 = one core all the time)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return {}
    out = {
        g: max(0.0, cpu - before.groups.get(g, 0.0)) / wall for g, cpu in after.groups.items()
    }
    out["harness"] = (after.harness - before.harness) / wall
    machine = (after.machine - before.machine) / wall
    out["other processes"] = max(0.0, machine - sum(out.values()))
    out["machine"] = machine
    return {k: round(v, 3) for k, v in sorted(out.items())}
