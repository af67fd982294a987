"""What every scenario gets: the options, the processes, Redis, the receiver, the systems."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.procs import Procs, RedisServer
from benchmarks.receiver import ReceiverClient
from benchmarks.systems import System

JOBRUNNER = "jobrunner"
BASELINES = ("rq", "rq-scheduler")


@dataclass
class Options:
    quick: bool = False
    jobs: int | None = None
    rate: float | None = None
    duration: float | None = None
    workers: int | None = None
    concurrency: int | None = None
    baselines: bool = True
    only: tuple[str, ...] = ()  # restrict to these systems (tests, debugging)
    # burst: how jobrunner delivers, one row each ("grpc": the jobrunner-grpc row).
    protocols: tuple[str, ...] = ("http", "grpc")
    # schedule: the HTTP servers jobrunner's API runs under, a row each ("granian": the
    # Procfile's web line, `jobrunner api`; "gthread", "gevent": gunicorn serving
    # app.api:create_app() with that worker class).
    servers: tuple[str, ...] = ("granian",)
    rounds: int | None = None  # schedule, burst: rows run in turn this many times (median)


@dataclass
class Context:
    options: Options
    procs: Procs
    redis: RedisServer
    receiver: ReceiverClient
    notes: list[str] = field(default_factory=list)
    _grpc_receiver: ReceiverClient | None = None

    def grpc_receiver(self) -> ReceiverClient:
        """The gRPC receiver (benchmarks/grpc_receiver.py), started on first use."""
        if self._grpc_receiver is None:
            from benchmarks.grpc_receiver import start_grpc_receiver

            self._grpc_receiver = start_grpc_receiver(self.procs)
        return self._grpc_receiver

    @property
    def stall_s(self) -> float:
        """Give up on a run when no delivery arrived for this long after the last due time."""
        return 10.0 if self.options.quick else 30.0

    def system_names(self) -> list[str]:
        names = [JOBRUNNER, *(BASELINES if self.options.baselines else ())]
        if self.options.only:
            names = [n for n in names if n in self.options.only]
        return names

    def system(self, name: str, **kwargs: Any) -> System:
        from benchmarks.jobrunner_side import Jobrunner
        from benchmarks.rq_baseline import RQBuiltin, RQSchedulerSystem

        if name == JOBRUNNER:
            return Jobrunner(self.redis.url, self.receiver.url, **kwargs)
        if name == "rq":
            return RQBuiltin(self.redis.url, self.receiver.url)
        if name == "rq-scheduler":
            return RQSchedulerSystem(self.redis.url, self.receiver.url)
        raise ValueError(f"unknown system {name!r}")
