"""`jobrunner run` (the `dapr run` of this project) and the commands that manage the
shared service it uses: `stop`, `status`, `logs`."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import click

from app.cli.options import (
    api_tuning,
    app_env,
    app_options,
    ensure_api_addresses,
    home_option,
    host_option,
    log_options,
    settings_from,
    wait_api,
    wait_redis,
)
from app.logs import GRPC_VERBOSITY_OURS
from app.processes.procs import free_port
from app.processes.service_logs import LogReader, api_log_name
from app.processes.service_state import (
    LOG_DIR,
    ensure_service,
    jobrunner_home,
    read_state,
    stop_service,
)
from app.processes.supervisor import (
    StopSignals,
    Supervisor,
    describe_exit,
    say,
    start_api,
    warn,
)
from app.settings import Settings, redact_url


@click.command(context_settings={"allow_interspersed_args": False})
@app_options
@host_option
@click.option(
    "--workers", type=click.IntRange(1, 256), default=2, show_default=True,
    envvar="JOBRUNNER_WORKERS", show_envvar=True,
    help="Worker processes of the shared service, when this command starts it.",
)  # fmt: skip
@api_tuning
@home_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@log_options
@click.pass_context
def run(ctx: click.Context, /, command: tuple[str, ...], **params: Any) -> None:
    """Run COMMAND beside its own jobs API, like `dapr run`.

    \b
      jobrunner run --app-id job-service --app-port 6200 --dapr-http-port 6280 -- go run .

    The shared service (Redis and workers) is started in the background by the first
    `run` and used by the next ones, until `jobrunner stop`. COMMAND gets APP_ID,
    APP_PORT, DAPR_HTTP_PORT and DAPR_GRPC_PORT (a free port unless --grpc-port is
    given); its output is shown with an `== APP ==` prefix. The API's log is shown
    too, and kept with the service's logs (`jobrunner logs`). Without
    COMMAND, the API runs until Ctrl-C. Exits with COMMAND's exit code (127: not
    found, 126: not runnable); a COMMAND that ignores Ctrl-C/SIGTERM is killed 10 s
    after it.
    """
    from app.processes.app_runner import CommandNotFoundError, run_app

    redis_url: str | None = params["redis_url"]
    settings = settings_from(app_env(ctx, params))
    if params["grpc_port"] is None:
        # As `dapr run`: a free port for the gRPC API unless one is given, so that several
        # `jobrunner run` side by side (the seed's two programs) need no more flags.
        settings = settings.with_(grpc_port=free_port(settings.http_host))
    ensure_api_addresses(settings)
    home = jobrunner_home(params["home"])
    if redis_url:
        wait_redis(settings)  # here, rather than in the background service's log
    state, started = ensure_service(home, settings, redis_url=redis_url, workers=params["workers"])
    what = "started the shared service" if started else "using the shared service"
    say(
        f"{what} (pid {state.pid}): Redis at {redact_url(state.redis_url)}, "
        f"{sum(c.name.startswith('worker') for c in state.children)} workers; "
        "`jobrunner stop` stops it"
    )
    settings = settings.with_(redis_url=state.redis_url)
    wait_redis(settings)

    signals = StopSignals().install()
    sup = Supervisor(signals)
    code = 0
    try:
        api_log = home / LOG_DIR / api_log_name(settings.app_id)
        api = start_api(sup, settings, settings.http_host, params["processes"], params["threads"],
                        log_file=api_log)
        wait_api(sup, api, settings)
        if signals.requested:
            code = 130
        elif command:
            code = run_app(command, _app_command_env(settings), signals, api)
        else:
            dead = sup.watch()
            if dead is not None:
                warn(describe_exit(dead))
                code = 1
    except CommandNotFoundError as e:
        warn(str(e))
        code = e.code
    finally:
        sup.stop_all()
        signals.restore()
    sys.exit(code)


def _app_command_env(settings: Settings) -> dict[str, str]:
    """What `dapr run` gives the app: its id, its port and the sidecar's ports."""
    parts = urlsplit(settings.app_url)
    app_port = parts.port or (443 if parts.scheme == "https" else 80)
    env = dict(os.environ)
    if GRPC_VERBOSITY_OURS:  # jobrunner's own setting (app/logs.py), not the user's
        env.pop("GRPC_VERBOSITY", None)
    env.update(
        APP_ID=settings.app_id,
        APP_PORT=str(app_port),
        DAPR_HTTP_PORT=str(settings.http_port),
    )
    # As `dapr run`: where the SDKs' clients find the gRPC API.
    if settings.grpc_port:
        env["DAPR_GRPC_PORT"] = str(settings.grpc_port)
    else:
        env.pop("DAPR_GRPC_PORT", None)
    if settings.app_api_token:
        env["APP_API_TOKEN"] = settings.app_api_token
    return env


@click.command()
@home_option
def stop(home: str | None) -> None:
    """Stop the shared service: its workers, then its Redis."""
    state = stop_service(jobrunner_home(home))
    if state is None:
        click.echo("No jobrunner service is running.")
        return
    workers = sum(c.name.startswith("worker") for c in state.children)
    what = "`jobrunner up`" if state.kind == "up" else "the jobrunner service"
    redis = "embedded Redis" if state.redis_embedded else "Redis"
    click.echo(
        f"Stopped {what} (pid {state.pid}): {workers} workers and "
        f"{redis} at {redact_url(state.redis_url)}."
    )


@click.command()
@home_option
def status(home: str | None) -> None:
    """Show the shared service. Exits 1 when none is running."""
    from app.processes.redis_server import answers, ping

    home_dir = jobrunner_home(home)
    # Read only: cleaning up a stale state is for the commands that hold the lock.
    state = read_state(home_dir)
    if state is None or not state.alive():
        click.echo("No jobrunner service is running.")
        sys.exit(1)
    uptime = int(time.time() - state.started_at)
    how = "started by `jobrunner run`" if state.kind == "background" else "a `jobrunner up`"
    problem = ping(state.redis_url)
    shown = ("answers PING" if problem is None
             else problem if answers(problem)  # (there, but refusing writes: why)
             else f"NOT ANSWERING: {problem}")
    click.echo(f"jobrunner service: running ({how}, pid {state.pid}, up {uptime}s)")
    click.echo(
        f"  Redis    {redact_url(state.redis_url)}"
        f"{'  (embedded)' if state.redis_embedded else ''}"
        f"  {shown}"
    )
    if state.data_dir:
        click.echo(f"  data     {state.data_dir}")
    for child in state.children:
        click.echo(f"  {child.name:<8} pid {child.pid}  {'running' if child.alive() else 'GONE'}")
    if state.logs:
        click.echo(f"  logs     {home_dir / LOG_DIR}  (`jobrunner logs`)")


@click.command()
@home_option
@click.option(
    "-n", "--lines", type=click.IntRange(1, 100_000), default=20, show_default=True,
    help="How many of the last lines to show.",
)  # fmt: skip
@click.option("-f", "--follow", is_flag=True, help="Then show new lines as they come.")
@click.argument("names", nargs=-1)
def logs(home: str | None, lines: int, follow: bool, names: tuple[str, ...]) -> None:
    """Show the shared service's logs, merged in time order, each line after its part's name.

    \b
    The parts: api-APP_ID (the API of each `jobrunner run`), worker-N, service, redis.
    NAMES picks some: a part (worker-1) or a kind (worker, api).
    """
    log_dir = jobrunner_home(home) / LOG_DIR
    reader = LogReader(log_dir, names)
    shown = reader.tail(lines)
    if not reader.sources and not follow:
        which = f" of {', '.join(names)}" if names else ""
        raise click.ClickException(f"no logs{which} in {log_dir}")
    # Parts' names padded to one width, so that the lines start in one column.
    width = max([8, *(len(src.part) for src in reader.sources.values())])
    out = sys.stdout.buffer

    def show(batch: list[tuple[str, bytes]]) -> None:
        nonlocal width
        width = max([width, *(len(part) for part, _ in batch)])
        out.write(b"".join(f"{part:<{width}} | ".encode() + line + b"\n" for part, line in batch))
        out.flush()

    # Ctrl-C while following, or a pager that stopped reading: done, quietly.
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        show(shown)
        if follow:
            reader.follow(show)
