"""What the figures were measured on: CPU, cores, memory, Python, Redis, packages."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from benchmarks.procs import REPO_ROOT

PACKAGES = ("redis", "hiredis", "aiohttp", "uvloop", "flask", "gunicorn", "rq", "rq-scheduler")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=5, check=False,
        )
        return out.stdout.strip() or "none"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat", encoding="utf-8") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields)


def cpu_idle(sample_s: float = 0.5) -> float | None:
    """Fraction of all cores idle over `sample_s`: a busy machine makes figures worthless."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(sample_s)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return (idle1 - idle0) / total if total > 0 else None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe(redis_version: str) -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            packages[pkg] = version(pkg)
        except PackageNotFoundError:
            packages[pkg] = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "packages": packages,
        "commit": _git_commit(),
        "load_average_before": load_average(),
        "cpu_idle_before": cpu_idle(),
    }


def busy_warning(machine: dict[str, Any]) -> str | None:
    idle = machine.get("cpu_idle_before")
    if idle is not None and idle < 0.9:
        return (f"WARNING: the machine was only {idle:.0%} idle before the run "
                f"(load average {machine.get('load_average_before')}): other processes "
                "compete for the cores and the figures are low")
    return None


def one_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
        f"Python {machine['python']}, redis-server {machine['redis_server']}, "
        f"rq {machine['packages'].get('rq')}, "
        f"rq-scheduler {machine['packages'].get('rq-scheduler')}"
    )
