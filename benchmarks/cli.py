"""`jobrunner bench SCENARIO` / `python -m benchmarks SCENARIO`.

Starts a private redis-server and the receiver (pinned to one core), measures the
receiver's ceiling, then runs the scenario for jobrunner and the RQ baselines in
turn, prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.ceiling import measure_ceiling
from benchmarks.context import BASELINES, JOBRUNNER, Context, Options
from benchmarks.machine import describe
from benchmarks.procs import REPO_ROOT, BenchError, Procs, RedisServer
from benchmarks.receiver import start_receiver

SCENARIOS = ("burst", "steady", "scale", "schedule", "bulk-schedule", "grpc-schedule", "workers",
             "startup", "capacity")
RECEIVER_CORE = 1
CEILING_S, QUICK_CEILING_S = 3.0, 0.5


def _scenario(name: str) -> Callable[[Context], dict[str, Any]]:
    """The scenario's module, benchmarks/scenarios/<name with _ for ->.py: its run()."""
    module = importlib.import_module(f"benchmarks.scenarios.{name.replace('-', '_')}")
    return module.run  # type: ignore[no-any-return]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jobrunner bench",
        description="Benchmark jobrunner against RQ and rq-scheduler on this machine.",
    )
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: proves the harness works (all: a few minutes)")
    parser.add_argument("--jobs", type=int, help="jobs (burst, workers, scale) or request cap "
                        "(schedule); default 20,000 (burst/workers), 1,000,000 (scale)")
    parser.add_argument("--rate", type=float, help="steady: triggers due per second (200)")
    parser.add_argument("--duration", type=float,
                        help="steady: seconds of arrivals (30); schedule: seconds of load (10)")
    parser.add_argument("--workers", type=int,
                        help="worker processes (2; workers scenario: only this count)")
    parser.add_argument("--concurrency", type=int,
                        help="schedule: connections; grpc-schedule: calls in flight (32)")
    parser.add_argument("--no-baselines", action="store_true", help="jobrunner only")
    parser.add_argument("--protocol", action="append", choices=["http", "grpc"],
                        help="burst: how jobrunner delivers, a row each (repeatable; "
                        "default both: HTTP POST, and gRPC OnJobEvent to a gRPC receiver)")
    parser.add_argument("--server", action="append", choices=["granian", "gthread", "gevent"],
                        help="schedule: the HTTP server of jobrunner's API, a row each "
                        "(repeatable; default granian, the Procfile's `jobrunner api`; "
                        "gthread and gevent: gunicorn with that worker class, as before)")
    parser.add_argument("--rounds", type=int,
                        help="schedule, burst: run the rows in turn this many times and show "
                        "each row's median run (1): steadier figures on a busy machine")
    parser.add_argument("--only", action="append", choices=[JOBRUNNER, *BASELINES],
                        help="run only this system (repeatable)")
    parser.add_argument("--out", type=Path,
                        help="JSON file (default benchmarks/results/<scenario>-<timestamp>.json)")
    parser.add_argument("--logs", type=Path,
                        help="keep the child processes' logs in this folder")
    args = parser.parse_args(argv)
    for flag in ("jobs", "rate", "duration", "workers", "concurrency", "rounds"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag} must be positive")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    options = Options(
        quick=args.quick, jobs=args.jobs, rate=args.rate, duration=args.duration,
        workers=args.workers, concurrency=args.concurrency, baselines=not args.no_baselines,
        only=tuple(args.only or ()), protocols=tuple(args.protocol or ("http", "grpc")),
        servers=tuple(dict.fromkeys(args.server or ("granian",))), rounds=args.rounds,
    )
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    with tempfile.TemporaryDirectory(prefix="jobrunner-bench-") as tmp, \
            Procs(args.logs or Path(tmp) / "logs") as procs:
        redis_server = RedisServer(procs, Path(tmp) / "redis").start()
        receiver = start_receiver(procs, core=RECEIVER_CORE)
        ctx = Context(options, procs, redis_server, receiver)
        started = time.time()
        result: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "command": ["jobrunner", "bench", *args.argv],
            "machine": describe(redis_server.version()),
            "options": vars(options),
            "receiver_ceiling": measure_ceiling(
                receiver, QUICK_CEILING_S if args.quick else CEILING_S, core=0
            ),
            "scenarios": {},
        }
        print(report.render_header(result), flush=True)
        for name in names:
            scenario = _scenario(name)(ctx)
            report.add_ratios(scenario)
            report.report_targets(name, scenario)
            result["scenarios"][name] = scenario
            print("\n" + report.render(scenario), flush=True)
        result["targets"] = report.summary(result)
        if result["targets"]:
            print("\n" + report.render_summary(result["targets"]), flush=True)
        result["seconds"] = time.time() - started
    return result


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_on_signals() -> dict[int, Any]:
    """SIGTERM and SIGHUP (a closed terminal) end the run like Ctrl-C: children stopped."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, _interrupt)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def default_out(scenario: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # In a checkout, beside the harness; when installed elsewhere, under the current folder.
    root = REPO_ROOT if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd()
    return root / "benchmarks" / "results" / f"{scenario}-{stamp}.json"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.argv = list(argv)
    previous = _stop_on_signals()
    try:
        result = run(args)
    except BenchError as exc:
        print(f"jobrunner bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jobrunner bench: interrupted; every process it started was stopped",
              file=sys.stderr)
        return 130
    finally:
        _restore_signals(previous)
    out = args.out or default_out(args.scenario)
    report.write_json(result, out)
    print(f"\nresults: {out}")
    return 0
