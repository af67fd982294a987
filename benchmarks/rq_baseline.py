"""The RQ baselines, delivering the same HTTP POST as jobrunner's workers.

- `rq`: RQ's built-in scheduler: `Queue.enqueue_at` (pipelined) and SimpleWorkers
  started with `--with-scheduler` (one of them takes the scheduler lock and forks the
  scheduler, which moves due jobs to the queue every second).
- `rq-scheduler`: `rq_scheduler.Scheduler.enqueue_at`, one `rqscheduler` process
  polling every second (its default is 60 s), and plain SimpleWorkers.

Workers run with `--quiet` (WARNING logs), RQ's best case; every other job option
is RQ's default. The job function is benchmarks.rq_jobs.deliver.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import redis

from benchmarks.procs import Procs, child_env, wait_until
from benchmarks.rq_jobs import deliver
from benchmarks.systems import BenchJob, utc_datetime

QUEUE = "bench"
SCHEDULER_INTERVAL_S = 1.0


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _worker_cmd(redis_url: str, with_scheduler: bool) -> list[str]:
    cmd = [_bin("rq"), "worker", "-w", "rq.worker.SimpleWorker", "-u", redis_url, "--quiet"]
    if with_scheduler:
        cmd.append("--with-scheduler")
    return [*cmd, QUEUE]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("rq", "rq-scheduler", "redis"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class _RQBase:
    name = "rq"
    load_cost_s = 150e-6
    with_scheduler = True

    def __init__(self, redis_url: str, receiver_url: str) -> None:
        self.redis_url = redis_url
        self.receiver_url = receiver_url
        self._procs: list[subprocess.Popen[bytes]] = []

    def _connection(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def start(self, procs: Procs, workers: int) -> None:
        from rq import Worker

        env = child_env()
        for i in range(workers):
            cmd = _worker_cmd(self.redis_url, self.with_scheduler)
            self._procs.append(procs.start(f"{self.name}-worker-{i}", cmd, env=env))
        self._start_extra(procs, env)
        conn = self._connection()
        try:
            wait_until(lambda: len(Worker.all(connection=conn)) >= workers, 30.0,
                       f"{workers} {self.name} workers")
            self._wait_extra(conn)
        finally:
            conn.close()

    def _start_extra(self, procs: Procs, env: dict[str, str]) -> None:
        pass

    def _wait_extra(self, conn: redis.Redis) -> None:
        from rq.scheduler import RQScheduler

        wait_until(lambda: conn.exists(RQScheduler.get_locking_key(QUEUE)), 30.0,
                   "the RQ scheduler lock")

    def stop(self, procs: Procs) -> None:
        procs.stop_many(self._procs)
        self._procs = []

    def load(self, jobs: Sequence[BenchJob]) -> None:
        from rq import Queue

        conn = self._connection()
        try:
            queue = Queue(QUEUE, connection=conn)
            for start in range(0, len(jobs), 500):
                with conn.pipeline() as pipe:
                    for job in jobs[start : start + 500]:
                        queue.enqueue_at(
                            utc_datetime(job.due_ms), deliver, self.receiver_url, job.name,
                            job.due_ms, pipeline=pipe,
                        )
                    pipe.execute()
        finally:
            conn.close()


class RQBuiltin(_RQBase):
    """RQ's own scheduler (`enqueue_at` + `worker --with-scheduler`)."""

    name = "rq"


class RQSchedulerSystem(_RQBase):
    """rq-scheduler (`Scheduler.enqueue_at` + the `rqscheduler` process)."""

    name = "rq-scheduler"
    load_cost_s = 300e-6
    with_scheduler = False

    def _start_extra(self, procs: Procs, env: dict[str, str]) -> None:
        cmd = [_bin("rqscheduler"), "--url", self.redis_url, "--interval",
               str(SCHEDULER_INTERVAL_S), "--quiet"]
        self._procs.append(procs.start("rqscheduler", cmd, env=env))

    def _wait_extra(self, conn: redis.Redis) -> None:
        from rq_scheduler import Scheduler

        pattern = Scheduler.redis_scheduler_namespace_prefix + "*"
        wait_until(lambda: conn.keys(pattern), 30.0, "the rqscheduler process")

    def load(self, jobs: Sequence[BenchJob]) -> None:
        from rq_scheduler import Scheduler

        conn = self._connection()
        try:
            scheduler = Scheduler(queue_name=QUEUE, connection=conn)
            for job in jobs:  # rq-scheduler has no pipelined enqueue
                scheduler.enqueue_at(
                    utc_datetime(job.due_ms), deliver, self.receiver_url, job.name, job.due_ms
                )
        finally:
            conn.close()
