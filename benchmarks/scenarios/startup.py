"""startup: how long `jobrunner up` takes to be ready, and `jobrunner run` to start its
command, as a user sees them (issue 12: up ready within 1 s; run adds at most 1.5 s).

- `up`: spawned in a fresh temporary folder (its own embedded Redis, free ports given by
  its flags, its own JOBRUNNER_HOME). Figures from the spawn: the "jobrunner is up" banner
  on its stdout; `GET /v1.0/healthz` answering 204; and "ready": a job scheduled (due at
  once) as soon as healthz answered, delivered to the receiver. Then SIGTERM (Ctrl-C).
- `run`: `jobrunner run ... -- sh -c 'date +%s.%N > FILE'` with a temporary
  JOBRUNNER_HOME: from the spawn to the time the command wrote. Cold: no shared service
  yet (this run starts it); warm: the service a cold run left. `jobrunner stop` after.
- References: `sh -c 'date ...'` alone (the command's own start) and `python -c pass`
  (the interpreter's own start), and `jobrunner --help` (the CLI's imports).

Each figure is the median of a few tries (one with --quick). Every process is stopped at
the end; the environment's REDIS_URL and jobrunner settings are not passed on.
"""

from __future__ import annotations

import http.client
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from app.processes.procs import python_module
from benchmarks.context import JOBRUNNER, Context
from benchmarks.jobrunner_side import APP_ID
from benchmarks.procs import LOOPBACK, BenchError, child_env, free_port, wait_until
from benchmarks.report import Metric, Target
from benchmarks.systems import job_name, rfc3339_ms

TRIES, QUICK_TRIES = 3, 1
TARGET_UP_S = 1.0
TARGET_RUN_S = 1.5
BANNER = "jobrunner is up"
DEADLINE_S = 60.0
# Settings a user's shell may hold that would point the runs elsewhere.
_DROP = ("REDIS_URL", "REDIS_CLUSTER", "APP_ID", "APP_PORT", "APP_URL", "DAPR_HTTP_PORT",
         "DAPR_GRPC_PORT", "PORT", "WEB_CONCURRENCY")

METRICS = [
    Metric("up: banner printed (s)", "up.banner_s", "{:.3f}", "lower"),
    Metric("up: GET /v1.0/healthz 204 (s)", "up.healthz_s", "{:.3f}", "lower"),
    Metric("up: ready, a job scheduled then delivered (s)", "up.ready_s", "{:.3f}", "lower"),
    Metric("run, cold (starts the service): command started (s)", "run.cold_s", "{:.3f}",
           "lower"),
    Metric("run, warm (service up): command started (s)", "run.warm_s", "{:.3f}", "lower"),
    Metric("reference: sh -c 'date' started (s)", "reference.sh_s", "{:.4f}"),
    Metric("reference: python -c pass, whole run (s)", "reference.python_s", "{:.3f}"),
    Metric("reference: jobrunner --help, whole run (s)", "reference.cli_help_s", "{:.3f}"),
]


def jobrunner_cmd() -> list[str]:
    """The `jobrunner` console script beside this interpreter, else `python -P -m app.cli`."""
    script = Path(sys.executable).parent / "jobrunner"
    return [str(script)] if script.exists() else python_module("app.cli")


def _env(home: Path) -> dict[str, str]:
    env = child_env({"JOBRUNNER_HOME": str(home)})
    for key in list(env):
        if key in _DROP or (key.startswith("JOBRUNNER_") and key != "JOBRUNNER_HOME"):
            del env[key]
    return env


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class _Lines:
    """A child's stdout lines, each with the time.time() it was read."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append((time.time(), raw.decode(errors="replace").rstrip()))

    def first(self, text: str) -> float | None:
        return next((t for t, line in self.lines if text in line), None)


def _http(port: int, method: str, path: str, body: bytes = b"") -> int:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2.0)
    try:
        conn.request(method, path, body=body or None,
                     headers={"Content-Type": "application/json"} if body else {})
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def up_once(ctx: Context, folder: Path, tag: str) -> dict[str, float]:
    folder.mkdir(parents=True)
    http_port, grpc_port, redis_port = free_port(), free_port(), free_port()
    cmd = [*jobrunner_cmd(), "up", "--app-id", APP_ID, "--app-url", ctx.receiver.url,
           "--http-port", str(http_port), "--grpc-port", str(grpc_port),
           "--redis-port", str(redis_port), "--data-dir", str(folder / "data"),
           "--home", str(folder / "home")]
    ctx.receiver.take()
    t0 = time.time()
    proc = ctx.procs.start("startup-up", cmd, env=_env(folder / "home"), cwd=folder,
                           stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines = _Lines(proc.stdout)

        def banner() -> float | None:
            if proc.poll() is not None:
                raise BenchError(f"jobrunner up exited with code {proc.returncode}")
            return lines.first(BANNER)

        banner_at: float = wait_until(banner, DEADLINE_S, "the `jobrunner up` banner",
                                      0.005) or 0.0
        wait_until(lambda: _http(http_port, "GET", "/v1.0/healthz") == 204, DEADLINE_S,
                   "jobrunner up's /v1.0/healthz", 0.005)
        healthz_at = time.time()
        due_ms = int(time.time() * 1000)
        name = job_name(tag, 0, due_ms)
        body = orjson.dumps({"dueTime": rfc3339_ms(due_ms), "data": {"up": True}})
        status = _http(http_port, "POST", f"/v1.0-alpha1/jobs/{name}", body)
        if status not in (200, 204):
            raise BenchError(f"jobrunner up's API answered {status} to a schedule")
        wait_until(lambda: ctx.receiver.count() >= 1, DEADLINE_S, "the job from jobrunner up",
                   0.005)
        arrived = min(r.arrived for r in ctx.receiver.take() if r.name == name)
    finally:
        ctx.procs.stop(proc, grace=15.0)
    return {"banner_s": banner_at - t0, "healthz_s": healthz_at - t0,
            "ready_s": max(arrived, healthz_at) - t0}


def run_once(ctx: Context, folder: Path, home: Path, i: int) -> float:
    """Seconds from spawning `jobrunner run -- sh -c ...` to the command's start."""
    out = folder / f"run-{i}.txt"
    cmd = [*jobrunner_cmd(), "run", "--app-id", f"{APP_ID}{i}", "--app-url", ctx.receiver.url,
           "--http-port", str(free_port()), "--home", str(home),
           "--", "sh", "-c", f"date +%s.%N > {out}"]
    t0 = time.time()
    proc = ctx.procs.start(f"startup-run-{i}", cmd, env=_env(home), cwd=folder)
    try:
        proc.wait(DEADLINE_S)
    except subprocess.TimeoutExpired:
        raise BenchError("jobrunner run did not end in time") from None
    finally:
        ctx.procs.stop(proc)
    if proc.returncode != 0 or not out.exists():
        raise BenchError(f"jobrunner run exited with code {proc.returncode}, its command "
                         f"{'ran' if out.exists() else 'did not run'}")
    return float(out.read_text().strip()) - t0


def stop_service(home: Path) -> None:
    subprocess.run([*jobrunner_cmd(), "stop", "--home", str(home)], env=_env(home),
                   capture_output=True, timeout=DEADLINE_S, check=False)


def _whole_run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, timeout=DEADLINE_S, check=False, env=env)
    return time.perf_counter() - t0


def _sh_start(folder: Path, i: int) -> float:
    out = folder / f"sh-{i}.txt"
    t0 = time.time()
    subprocess.run(["sh", "-c", f"date +%s.%N > {out}"], timeout=DEADLINE_S, check=True)
    return float(out.read_text().strip()) - t0


def run(ctx: Context) -> dict[str, Any]:
    tries = QUICK_TRIES if ctx.options.quick else TRIES
    ups: list[dict[str, float]] = []
    colds: list[float] = []
    warms: list[float] = []
    ref: dict[str, list[float]] = {"sh_s": [], "python_s": [], "cli_help_s": []}
    with tempfile.TemporaryDirectory(prefix="jobrunner-bench-startup-") as tmp:
        root = Path(tmp)
        for i in range(tries):
            ups.append(up_once(ctx, root / f"up{i}", f"startup{i}"))
        home = root / "home"
        home.mkdir()
        try:
            for i in range(tries):
                stop_service(home)  # cold: no shared service
                colds.append(run_once(ctx, root, home, 2 * i))
                warms.append(run_once(ctx, root, home, 2 * i + 1))
        finally:
            stop_service(home)
        env = _env(root / "home-help")
        for i in range(tries):
            ref["sh_s"].append(_sh_start(root, i))
            ref["python_s"].append(_whole_run([sys.executable, "-c", "pass"]))
            ref["cli_help_s"].append(_whole_run([*jobrunner_cmd(), "--help"], env))
    up = {k: _median([u[k] for u in ups]) for k in ("banner_s", "healthz_s", "ready_s")}
    figures: dict[str, Any] = {
        "tries": tries,
        "up": {**up, "all": ups},
        "run": {"cold_s": _median(colds), "warm_s": _median(warms), "cold_all": colds,
                "warm_all": warms},
        "reference": {**{k: _median(v) for k, v in ref.items()}, "all": ref},
    }
    sh_s, python_s = figures["reference"]["sh_s"], figures["reference"]["python_s"]
    targets = [
        Target("jobrunner up ready: healthz 204 and a job scheduled then delivered (s)",
               f"<= {TARGET_UP_S:g} s", up["ready_s"], up["ready_s"] <= TARGET_UP_S,
               baseline=python_s, issue=12),
        Target("jobrunner run, cold: its command started (s)", f"<= {TARGET_RUN_S:g} s",
               figures["run"]["cold_s"], figures["run"]["cold_s"] <= TARGET_RUN_S,
               baseline=sh_s, issue=12),
        Target("jobrunner run, warm: its command started (s)", f"<= {TARGET_RUN_S:g} s",
               figures["run"]["warm_s"], figures["run"]["warm_s"] <= TARGET_RUN_S,
               baseline=sh_s, issue=12),
    ]
    return {
        "scenario": "startup",
        "title": (f"jobrunner up and jobrunner run from their spawn, the median of {tries} "
                  f"tr{'y' if tries == 1 else 'ies'}"),
        "params": {"tries": tries},
        "systems": {JOBRUNNER: figures},
        "metrics": METRICS,
        "targets": targets,
        "notes": ["baselines: `python -c pass` for up, `sh -c 'date'` alone for run"],
    }
