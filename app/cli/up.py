"""`jobrunner up`, and the shared background service that `jobrunner run` starts.

Both run Redis (embedded unless REDIS_URL is set) and workers as children and
stop them in order; `up` also runs the API in the foreground.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from app.cli.options import (
    PORT,
    api_tuning,
    app_env,
    app_options,
    concurrency_option,
    ensure_api_addresses,
    home_option,
    host_option,
    log_options,
    settings_from,
    wait_api,
    wait_redis,
    workers_option,
)
from app.processes.procs import (
    connect_host,
    http_url,
    process_start_time,
)
from app.processes.redis_server import START_TIMEOUT_S as REDIS_START_TIMEOUT_S
from app.processes.redis_server import EmbeddedRedis, StartInterrupted, version_text
from app.processes.service_state import (
    DATA_DIR,
    LOCK_FILE,
    LOG_DIR,
    Interrupted,
    LockBusy,
    ProcInfo,
    ServiceError,
    ServiceState,
    jobrunner_home,
    register_foreground,
    remove_state,
    write_state,
)
from app.processes.supervisor import (
    REDIS_GRACE_S,
    TIER_REDIS,
    Child,
    StopSignals,
    Supervisor,
    describe_exit,
    say,
    start_api,
    start_worker,
    start_workers,
)
from app.settings import Settings, redact_url

# How often an `up` that yielded to another service offers itself again.
REGISTER_RETRY_S = 1.0


@click.command()
@app_options
@host_option
@workers_option
@concurrency_option
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".jobrunner"),
    envvar="JOBRUNNER_DATA_DIR", show_envvar=True, show_default=True,
    help="Where the embedded Redis keeps its data (AOF).",
)  # fmt: skip
@click.option(
    "--redis-port", type=PORT, envvar="JOBRUNNER_REDIS_PORT", show_envvar=True,
    help="Port of the embedded Redis.  [default: the last one used, else a free one]",
)  # fmt: skip
@api_tuning
@home_option
@log_options
@click.pass_context
def up(ctx: click.Context, /, **params: Any) -> None:
    """Run Redis, the workers and the API until Ctrl-C or SIGTERM.

    Redis is started in DATA_DIR unless REDIS_URL is set. While it runs, `jobrunner run`
    uses its Redis and workers and `jobrunner stop` stops it.
    """
    redis_url: str | None = params["redis_url"]
    if redis_url and params["redis_port"]:
        raise click.UsageError("--redis-port is for the embedded Redis; REDIS_URL is set", ctx)
    settings = settings_from(app_env(ctx, params))
    ensure_api_addresses(settings)
    home = jobrunner_home(params["home"])
    data_dir: Path = params["data_dir"].expanduser().resolve()

    signals = StopSignals().install()
    sup = Supervisor(signals)
    embedded: EmbeddedRedis | None = None
    registered = False
    dead: Child | None = None
    workers: list[Child] = []
    api: Child | None = None

    def start_children(url: str) -> None:
        """The workers and the API, on the Redis at `url`: started as soon as that Redis
        process runs, so that their start (the interpreter, their imports: most of `up`'s
        time) overlaps with its own; each waits for Redis to answer before using it."""
        nonlocal settings, workers, api
        if sup.children:  # the port was taken after all: Redis runs elsewhere, start again
            sup.stop_all()
        settings = settings.with_(redis_url=url)
        children = _for_children(settings)
        workers = start_workers(sup, children, params["workers"])
        api = start_api(sup, children, settings.http_host, params["processes"], params["threads"])

    try:
        if redis_url:
            wait_redis(settings, signals)
            start_children(settings.redis_url)
        else:
            embedded = EmbeddedRedis(data_dir, params["redis_port"],
                                     binary=settings.redis_server or None)
            embedded.start(give_up=lambda: signals.requested, on_launch=start_children)
            assert embedded.proc is not None
            sup.adopt("redis", embedded.proc, TIER_REDIS, REDIS_GRACE_S,
                      before_stop=_unsaved_writes_said(embedded))
        assert api is not None
        wait_api(sup, api, settings)
        if not signals.requested:
            _print_banner(settings, embedded, data_dir, workers, api)
            state = _this_service("up", settings, sup,
                                  data_dir=str(data_dir) if embedded else None)
            dead, registered = _record_this_service(sup, home, state)
            if dead is None and not signals.requested:
                dead = sup.watch()
            if dead is not None:
                say(f"{describe_exit(dead)}; stopping the rest", logging.ERROR)
    except StartInterrupted:
        pass  # Ctrl-C or SIGTERM while Redis was starting: a stop as any other
    finally:
        if sup.children:
            say("stopping: API, then workers, then Redis")
        sup.stop_all()
        if embedded is not None:
            embedded.close()
        if registered:
            remove_state(home, os.getpid())
        signals.restore()
    if dead is not None:
        sys.exit(1)
    say("stopped")


def _record_this_service(
    sup: Supervisor, home: Path, state: ServiceState
) -> tuple[Child | None, bool]:
    """Record this `up` in `home` as the shared service, so that `run`, `status` and
    `stop` find it. While another service runs there, or another command holds its lock
    (a `stop` can for a minute), offer again each REGISTER_RETRY_S. Returns early on a
    stop signal or a dead child: (that child or None, whether recorded)."""
    def stopping() -> bool:
        return sup.signals.requested

    said: set[str] = set()
    while not stopping():
        dead = sup.first_dead()
        if dead is not None:
            return dead, False
        try:
            if register_foreground(home, state, timeout=REGISTER_RETRY_S, give_up=stopping):
                if said:
                    say(f"this one is now the shared service for {home}")
                return None, True
            why = (f"another jobrunner service runs for {home}; `jobrunner run` uses that "
                   "one, and this one once it stops")
        except LockBusy:
            why = (f"another jobrunner command holds {home / LOCK_FILE}; this one is "
                   "recorded for `jobrunner run` once it is free")
        except Interrupted:
            continue  # a stop was asked: the loop ends
        except (OSError, ServiceError) as e:
            say(f"`jobrunner run` will not find this one: {e}")
            return None, False
        if why not in said:
            said.add(why)
            say(why)
        sup.signals.event.wait(REGISTER_RETRY_S)
    return None, False


def _grpc_line(settings: Settings) -> str:
    if not settings.grpc_port:
        return ""
    host = connect_host(settings.http_host)
    address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
    return f"  gRPC     {address}  (Dapr's gRPC jobs API, for the SDKs: DAPR_GRPC_PORT)\n"


def _print_banner(
    settings: Settings,
    embedded: EmbeddedRedis | None,
    data_dir: Path,
    workers: list[Child],
    api: Child,
) -> None:
    if embedded is not None:
        assert embedded.proc is not None
        server = embedded.server
        which = f", {server.path}, Redis {version_text(server.version)}" if server else ""
        redis_line = f"{settings.redis_url}  (embedded, pid {embedded.proc.pid}{which})"
        data_line = f"  data     {data_dir}  (AOF, appendfsync everysec)\n"
    else:
        redis_line, data_line = redact_url(settings.redis_url), ""
    pids = ", ".join(str(w.pid) for w in workers) or "none"
    click.echo(
        "jobrunner is up\n"
        f"  API      {http_url(settings.http_host, settings.http_port)}"
        f"  (app id {settings.app_id!r}, pid {api.pid})\n"
        f"{_grpc_line(settings)}"
        f"  app      {settings.app_url}  (jobs arrive as POST /job/<name>)\n"
        f"  Redis    {redis_line}\n"
        f"{data_line}"
        f"  workers  {len(workers)}  (pids {pids})\n"
        "Stop with Ctrl-C.",
    )


@click.command(hidden=True)
@click.option("--home", required=True, metavar="DIR")
@click.option("--workers", type=click.IntRange(1, 256), default=2)
@log_options
def service(home: str, workers: int) -> None:
    """The shared background service (started by `jobrunner run`)."""
    home_dir = Path(home)
    log_dir = home_dir / LOG_DIR
    settings = Settings.from_env()
    external = bool(os.environ.get("REDIS_URL", "").strip())
    signals = StopSignals().install()
    sup = Supervisor(signals)
    embedded: EmbeddedRedis | None = None
    dead: Child | None = None
    started_at = time.time()  # its record is written again at each worker's restart

    def start_children(url: str) -> None:
        """The workers, as soon as the Redis process at `url` runs (as in `up`)."""
        nonlocal settings
        if sup.children:  # the port was taken after all: Redis runs elsewhere, start again
            sup.stop_all()
        settings = settings.with_(redis_url=url)
        start_workers(sup, _for_children(settings), workers, log_dir=log_dir)

    def record() -> None:
        logs = {c.name: str(log_dir / f"{c.name}.log") for c in sup.children}
        logs["service"] = str(log_dir / "service.log")
        write_state(
            home_dir,
            _this_service("background", settings, sup,
                          data_dir=str(embedded.data_dir) if embedded else None, logs=logs,
                          started_at=started_at),
        )

    try:
        if external:
            wait_redis(settings, signals)
            start_children(settings.redis_url)
        else:
            embedded = EmbeddedRedis(home_dir / DATA_DIR, log_file=log_dir / "redis.log",
                                     binary=settings.redis_server or None, keep_port=True)
            embedded.start(give_up=lambda: signals.requested, on_launch=start_children)
            assert embedded.proc is not None
            sup.adopt("redis", embedded.proc, TIER_REDIS, REDIS_GRACE_S,
                      before_stop=_unsaved_writes_said(embedded))
        record()
        say(f"service ready: Redis at {redact_url(settings.redis_url)}, {workers} workers")
        # Nobody watches this service but the `run`s that use it, and they cannot tell: a
        # worker gone (the OOM killer's pick, say) is started again, unless it died soon
        # after its start (a crash at start would only repeat). Anything else stops it.
        while (dead := sup.watch()) is not None and dead.name.startswith("worker-") and \
                time.monotonic() - dead.started >= WORKER_RESTART_AFTER_S:
            say(f"{describe_exit(dead)}; starting it again", logging.WARNING)
            sup.children.remove(dead)
            start_worker(sup, _for_children(settings), int(dead.name.removeprefix("worker-")),
                         log_dir=log_dir)
            record()
        if dead is not None:
            say(f"{describe_exit(dead)}; stopping the service", logging.ERROR)
    except StartInterrupted:
        pass  # stopped while Redis was starting
    finally:
        sup.stop_all()
        if embedded is not None:
            embedded.close()
        remove_state(home_dir, os.getpid())
        signals.restore()
    say("service stopped")
    sys.exit(1 if dead is not None else 0)


# A worker of the background service that exits this long after its start or later is
# started again (sooner: it crashes at start, and the service stops).
WORKER_RESTART_AFTER_S = 5.0


def _unsaved_writes_said(embedded: EmbeddedRedis) -> Callable[[], None]:
    """Before Redis is stopped: an ERROR line when writes it answered may be lost (its
    append-only file cannot be written), which nothing else would tell."""

    def check() -> None:
        if (problem := embedded.unsaved_writes()) is not None:
            say(problem, logging.ERROR)

    return check


def _for_children(settings: Settings) -> Settings:
    """What the workers of the background service run with (they wait for its Redis)."""
    return settings.with_(redis_wait_s=max(settings.redis_wait_s, REDIS_START_TIMEOUT_S))


def _this_service(kind: str, settings: Settings, sup: Supervisor, data_dir: str | None,
                  logs: dict[str, str] | None = None,
                  started_at: float | None = None) -> ServiceState:
    """The state file's record of the service this process runs (`up` or background);
    `started_at`: when it started (default: now)."""
    return ServiceState(
        started_at=time.time() if started_at is None else started_at,
        kind=kind,
        pid=os.getpid(),
        start=process_start_time(os.getpid()),
        redis_url=settings.redis_url,
        redis_embedded=data_dir is not None,
        prefix=settings.prefix,
        partitions=settings.partitions,
        data_dir=data_dir,
        children=[ProcInfo.of(c.name, c.pid) for c in sup.children],
        logs=logs or {},
    )
