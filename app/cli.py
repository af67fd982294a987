"""The `jobrunner` command line.

    jobrunner up       Redis (embedded unless REDIS_URL), workers and the API, in the foreground
    jobrunner run      `dapr run`: the shared service in the background + this app's API + CMD
    jobrunner api      one API process (gunicorn), for a Procfile or to scale
    jobrunner worker   one worker process
    jobrunner stop | status | logs   the shared background service
    jobrunner bench    the benchmark harness

Flags set the same environment variables that `Settings.from_env()` reads, so
every child process sees exactly what its parent was given.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from app.procs import PortInUseError, ensure_port_free, http_url, process_start_time, redact_url
from app.redis_server import EmbeddedRedis, RedisServerError, require_redis
from app.serve import DEFAULT_PROCESSES, DEFAULT_THREADS
from app.service_state import (
    DATA_DIR,
    LOG_DIR,
    ProcInfo,
    ServiceError,
    ServiceState,
    ensure_service,
    jobrunner_home,
    live_state,
    register_foreground,
    remove_state,
    stop_service,
    write_state,
)
from app.settings import Settings, SettingsError
from app.supervisor import (
    REDIS_GRACE_S,
    TIER_REDIS,
    Child,
    StopSignals,
    Supervisor,
    describe_exit,
    say,
    start_api,
    start_workers,
)

F = TypeVar("F", bound=Callable[..., Any])

# Waiting for a fresh API process: gunicorn boots its workers, each builds the app.
API_READY_TIMEOUT_S = 60.0
# How long a command waits for Redis to answer before it gives up (a Procfile starts
# Redis, API and workers at once); JOBRUNNER_REDIS_WAIT changes it.
REDIS_WAIT_S = 10.0


class _Group(click.Group):
    """Turns the errors a user can cause or fix into one clear line, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as e:
            raise click.UsageError(str(e), ctx) from None
        except (RedisServerError, ServiceError, PortInUseError) as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # a folder we cannot write, a file we cannot read, ...
            raise click.ClickException(str(e)) from None


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def main() -> None:
    """jobrunner: the Dapr Jobs API on Redis."""


# --- shared options --------------------------------------------------------------------------


def _check_app_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"must be an http(s) URL like http://127.0.0.1:6200: {value!r}")
    try:
        parts.port  # noqa: B018  # raises on a bad port
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value.strip().rstrip("/")


def _check_app_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from app.errors import ApiError
    from app.validation import validate_app_id

    try:
        return validate_app_id(value)
    except ApiError as e:
        raise click.BadParameter(e.message) from None


PORT = click.IntRange(1, 65535)


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


redis_option = click.option(
    "--redis-url", envvar="REDIS_URL", show_envvar=True, metavar="URL",
    help="Use this Redis instead of starting one.",
)  # fmt: skip

app_options = _options(
    click.option(
        "--app-id", envvar="APP_ID", show_envvar=True, callback=_check_app_id,
        help="The app this API serves; jobs are namespaced by it.  [default: job-service]",
    ),
    click.option(
        "--app-port", type=PORT, envvar="APP_PORT", show_envvar=True,
        help="Port of the app on 127.0.0.1; jobs are POSTed to /job/<name>.  [default: 6200]",
    ),
    click.option(
        "--app-url", envvar="APP_URL", show_envvar=True, callback=_check_app_url, metavar="URL",
        help="Full address of the app, instead of --app-port.",
    ),
    click.option(
        "--http-port", "--dapr-http-port", "http_port", type=PORT, envvar="DAPR_HTTP_PORT",
        show_envvar=True, help="Port of the jobs API.  [default: 6280]",
    ),
    redis_option,
)  # fmt: skip

host_option = click.option(
    "--host", envvar="JOBRUNNER_HTTP_HOST", show_envvar=True, default="127.0.0.1",
    show_default=True, help="Address the API listens on.",
)  # fmt: skip

api_tuning = _options(
    click.option(
        "--processes", type=click.IntRange(1, 256), default=DEFAULT_PROCESSES, show_default=True,
        envvar=["JOBRUNNER_API_PROCESSES", "WEB_CONCURRENCY"], show_envvar=True,
        help="API worker processes (gunicorn workers).",
    ),
    click.option(
        "--threads", type=click.IntRange(1, 1024), default=DEFAULT_THREADS, show_default=True,
        envvar="JOBRUNNER_API_THREADS", show_envvar=True, help="Threads per API process.",
    ),
)  # fmt: skip

home_option = click.option(
    "--home", envvar="JOBRUNNER_HOME", show_envvar=True, metavar="DIR",
    help="Where the shared service keeps its state and logs.  [default: ~/.jobrunner]",
)  # fmt: skip

workers_option = click.option(
    "--workers", type=click.IntRange(0, 256), default=2, show_default=True,
    envvar="JOBRUNNER_WORKERS", show_envvar=True, help="Worker processes.",
)  # fmt: skip

concurrency_option = click.option(
    "--concurrency", type=click.IntRange(min=1), envvar="JOBRUNNER_CONCURRENCY",
    show_envvar=True, help="Deliveries in flight per worker process.  [default: 256]",
)  # fmt: skip


def _from_command_line(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def _app_env(ctx: click.Context, params: dict[str, Any]) -> dict[str, str]:
    """The environment variables for the app options that were given."""
    app_port, app_url = params.get("app_port"), params.get("app_url")
    port_given, url_given = _from_command_line(ctx, "app_port"), _from_command_line(ctx, "app_url")
    if port_given and url_given:
        raise click.UsageError("--app-port and --app-url cannot be used together: give one", ctx)
    env: dict[str, str] = {}
    if params.get("app_id"):
        env["APP_ID"] = params["app_id"]
    if app_url and not port_given:
        env["APP_URL"] = app_url
    elif app_port is not None:
        # A port on the command line beats an APP_URL inherited from the environment.
        env["APP_PORT"], env["APP_URL"] = str(app_port), ""
    if params.get("http_port") is not None:
        env["DAPR_HTTP_PORT"] = str(params["http_port"])
    if params.get("redis_url"):
        env["REDIS_URL"] = params["redis_url"]
    if params.get("host"):
        env["JOBRUNNER_HTTP_HOST"] = params["host"]
    if params.get("concurrency") is not None:
        env["JOBRUNNER_CONCURRENCY"] = str(params["concurrency"])
    return env


def _settings(overrides: dict[str, str]) -> Settings:
    return Settings.from_env({**os.environ, **overrides})


def _wait_redis(settings: Settings, signals: StopSignals | None = None) -> None:
    raw = os.environ.get("JOBRUNNER_REDIS_WAIT", "").strip()
    try:
        wait_s = float(raw) if raw else REDIS_WAIT_S
    except ValueError:
        raise SettingsError(f"JOBRUNNER_REDIS_WAIT must be a number, got {raw!r}") from None
    require_redis(
        settings.redis_url,
        settings.redis_cluster,
        wait_s,
        give_up=(lambda: signals.requested) if signals else (lambda: False),
    )


def _healthz(settings: Settings) -> str:
    return f"{http_url(settings.http_host, settings.http_port)}/healthz"


def _wait_api(sup: Supervisor, api: Child, settings: Settings) -> None:
    """Wait for the API to answer /healthz; raise if it dies or never answers."""
    if sup.wait_http(_healthz(settings), api, API_READY_TIMEOUT_S) or sup.signals.requested:
        return
    if api.proc.poll() is not None:
        raise click.ClickException(f"the API process did not start: {describe_exit(api)}")
    raise click.ClickException(
        f"the API did not answer {_healthz(settings)} within {API_READY_TIMEOUT_S:.0f}s"
    )


# --- jobrunner up ----------------------------------------------------------------------------


@main.command()
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
@click.pass_context
def up(ctx: click.Context, /, **params: Any) -> None:
    """Run Redis, the workers and the API until Ctrl-C or SIGTERM.

    Redis is started in DATA_DIR unless REDIS_URL is set. While it runs, `jobrunner run`
    uses its Redis and workers and `jobrunner stop` stops it.
    """
    redis_url: str | None = params["redis_url"]
    if redis_url and params["redis_port"]:
        raise click.UsageError("--redis-port is for the embedded Redis; REDIS_URL is set", ctx)
    settings = _settings(_app_env(ctx, params))
    ensure_port_free(settings.http_host, settings.http_port, "the API's (--http-port)")
    home = jobrunner_home(params["home"])
    data_dir: Path = params["data_dir"].expanduser().resolve()

    signals = StopSignals().install()
    sup = Supervisor(signals)
    embedded: EmbeddedRedis | None = None
    registered = False
    dead: Child | None = None
    try:
        if redis_url:
            _wait_redis(settings, signals)
        else:
            embedded = EmbeddedRedis(data_dir, params["redis_port"])
            settings = settings.with_(redis_url=embedded.start(give_up=lambda: signals.requested))
            assert embedded.proc is not None
            sup.adopt("redis", embedded.proc, TIER_REDIS, REDIS_GRACE_S)
        workers = start_workers(sup, settings, params["workers"])
        api = start_api(sup, settings, settings.http_host, params["processes"], params["threads"])
        _wait_api(sup, api, settings)
        if not signals.requested:
            _print_banner(settings, embedded, data_dir, workers, api)
            state = ServiceState(
                kind="up",
                pid=os.getpid(),
                start=process_start_time(os.getpid()),
                redis_url=settings.redis_url,
                redis_embedded=embedded is not None,
                prefix=settings.prefix,
                partitions=settings.partitions,
                data_dir=str(data_dir) if embedded else None,
                children=[ProcInfo.of(c.name, c.pid) for c in sup.children],
            )
            try:
                registered = register_foreground(home, state)
                if not registered:
                    say(f"another jobrunner service runs for {home}; `jobrunner run` uses that one")
            except (OSError, ServiceError) as e:
                say(f"`jobrunner run` will not find this one: {e}")
            dead = sup.watch()
            if dead is not None:
                say(f"{describe_exit(dead)}; stopping the rest")
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


def _print_banner(
    settings: Settings,
    embedded: EmbeddedRedis | None,
    data_dir: Path,
    workers: list[Child],
    api: Child,
) -> None:
    if embedded is not None:
        assert embedded.proc is not None
        redis_line = f"{settings.redis_url}  (embedded, pid {embedded.proc.pid})"
        data_line = f"  data     {data_dir}  (AOF, appendfsync everysec)\n"
    else:
        redis_line, data_line = redact_url(settings.redis_url), ""
    pids = ", ".join(str(w.pid) for w in workers) or "none"
    click.echo(
        "jobrunner is up\n"
        f"  API      {http_url(settings.http_host, settings.http_port)}"
        f"  (app id {settings.app_id!r}, pid {api.pid})\n"
        f"  app      {settings.app_url}  (jobs arrive as POST /job/<name>)\n"
        f"  Redis    {redis_line}\n"
        f"{data_line}"
        f"  workers  {len(workers)}  (pids {pids})\n"
        "Stop with Ctrl-C.",
    )


# --- the shared service: run, stop, status, logs ---------------------------------------------


@main.command(context_settings={"allow_interspersed_args": False})
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
@click.pass_context
def run(ctx: click.Context, /, command: tuple[str, ...], **params: Any) -> None:
    """Run COMMAND beside its own jobs API, like `dapr run`.

    \b
      jobrunner run --app-id job-service --app-port 6200 --dapr-http-port 6280 -- go run .

    The shared service (Redis and workers) is started in the background by the first
    `run` and used by the next ones, until `jobrunner stop`. COMMAND gets APP_ID,
    APP_PORT and DAPR_HTTP_PORT; its output is shown with an `== APP ==` prefix. Without
    COMMAND, the API runs until Ctrl-C. Exits with COMMAND's exit code.
    """
    from app.app_runner import CommandNotFoundError, run_app

    redis_url: str | None = params["redis_url"]
    settings = _settings(_app_env(ctx, params))
    ensure_port_free(settings.http_host, settings.http_port, "the API's (--http-port)")
    home = jobrunner_home(params["home"])
    if redis_url:
        _wait_redis(settings)  # here, rather than in the background service's log
    state, started = ensure_service(home, settings, redis_url=redis_url, workers=params["workers"])
    what = "started the shared service" if started else "using the shared service"
    say(
        f"{what} (pid {state.pid}): Redis at {redact_url(state.redis_url)}, "
        f"{sum(c.name.startswith('worker') for c in state.children)} workers; "
        "`jobrunner stop` stops it"
    )
    settings = settings.with_(redis_url=state.redis_url)
    _wait_redis(settings)

    signals = StopSignals().install()
    sup = Supervisor(signals)
    code = 0
    try:
        api = start_api(sup, settings, settings.http_host, params["processes"], params["threads"])
        _wait_api(sup, api, settings)
        if signals.requested:
            code = 130
        elif command:
            code = run_app(command, _app_command_env(settings), signals, api)
        else:
            dead = sup.watch()
            if dead is not None:
                say(describe_exit(dead))
                code = 1
    except CommandNotFoundError as e:
        say(str(e))
        code = 127
    finally:
        sup.stop_all()
        signals.restore()
    sys.exit(code)


def _app_command_env(settings: Settings) -> dict[str, str]:
    """What `dapr run` gives the app: its id, its port and the sidecar's port."""
    parts = urlsplit(settings.app_url)
    app_port = parts.port or (443 if parts.scheme == "https" else 80)
    env = dict(os.environ)
    env.update(
        APP_ID=settings.app_id,
        APP_PORT=str(app_port),
        DAPR_HTTP_PORT=str(settings.http_port),
    )
    if settings.app_api_token:
        env["APP_API_TOKEN"] = settings.app_api_token
    return env


@main.command(hidden=True)
@click.option("--home", required=True, metavar="DIR")
@click.option("--workers", type=click.IntRange(1, 256), default=2)
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
    try:
        if external:
            _wait_redis(settings, signals)
        else:
            embedded = EmbeddedRedis(home_dir / DATA_DIR, log_file=log_dir / "redis.log")
            settings = settings.with_(redis_url=embedded.start(give_up=lambda: signals.requested))
            assert embedded.proc is not None
            sup.adopt("redis", embedded.proc, TIER_REDIS, REDIS_GRACE_S)
        start_workers(sup, settings, workers, log_dir=log_dir)
        logs = {c.name: str(log_dir / f"{c.name}.log") for c in sup.children}
        logs["service"] = str(log_dir / "service.log")
        write_state(
            home_dir,
            ServiceState(
                kind="background",
                pid=os.getpid(),
                start=process_start_time(os.getpid()),
                redis_url=settings.redis_url,
                redis_embedded=embedded is not None,
                prefix=settings.prefix,
                partitions=settings.partitions,
                data_dir=str(embedded.data_dir) if embedded else None,
                children=[ProcInfo.of(c.name, c.pid) for c in sup.children],
                logs=logs,
            ),
        )
        say(f"service ready: Redis at {redact_url(settings.redis_url)}, {workers} workers")
        dead = sup.watch()
        if dead is not None:
            say(f"{describe_exit(dead)}; stopping the service")
    finally:
        sup.stop_all()
        if embedded is not None:
            embedded.close()
        remove_state(home_dir, os.getpid())
        signals.restore()
    say("service stopped")
    sys.exit(1 if dead is not None else 0)


@main.command()
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


@main.command()
@home_option
def status(home: str | None) -> None:
    """Show the shared service. Exits 1 when none is running."""
    from app.redis_server import ping

    home_dir = jobrunner_home(home)
    state = live_state(home_dir)
    if state is None:
        click.echo("No jobrunner service is running.")
        sys.exit(1)
    uptime = int(time.time() - state.started_at)
    how = "started by `jobrunner run`" if state.kind == "background" else "a `jobrunner up`"
    problem = ping(state.redis_url)
    click.echo(f"jobrunner service: running ({how}, pid {state.pid}, up {uptime}s)")
    click.echo(
        f"  Redis    {redact_url(state.redis_url)}"
        f"{'  (embedded)' if state.redis_embedded else ''}"
        f"  {'answers PING' if problem is None else 'NOT ANSWERING: ' + problem}"
    )
    if state.data_dir:
        click.echo(f"  data     {state.data_dir}")
    for child in state.children:
        click.echo(f"  {child.name:<8} pid {child.pid}  {'running' if child.alive() else 'GONE'}")
    if state.logs:
        click.echo(f"  logs     {home_dir / LOG_DIR}  (`jobrunner logs`)")


@main.command()
@home_option
@click.option("-n", "--lines", type=click.IntRange(1), default=20, show_default=True)
@click.argument("names", nargs=-1)
def logs(home: str | None, lines: int, names: tuple[str, ...]) -> None:
    """Show the end of the shared service's logs (service, redis, worker-N)."""
    from app.procs import tail

    log_dir = jobrunner_home(home) / LOG_DIR
    files = sorted(log_dir.glob("*.log")) if log_dir.is_dir() else []
    if names:
        files = [f for f in files if f.stem in names]
    if not files:
        raise click.ClickException(f"no logs in {log_dir}")
    for path in files:
        click.echo(f"==> {path} <==")
        click.echo(tail(path, lines))


# --- one part each: api, worker --------------------------------------------------------------


@main.command()
@app_options
@host_option
@api_tuning
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
    envvar="JOBRUNNER_API_LOG_LEVEL", show_default=True, help="gunicorn's log level.",
)  # fmt: skip
@click.option("--access-log/--no-access-log", default=False, show_default=True)
@click.pass_context
def api(ctx: click.Context, /, **params: Any) -> None:
    """Serve the jobs API (gunicorn, gthread workers) for one app."""
    from app.serve import ServeOptions, serve

    settings = _settings(_app_env(ctx, params))
    # For anything in the API that reads the environment itself.
    os.environ.update(settings.to_env())
    ensure_port_free(settings.http_host, settings.http_port, "the API's (--http-port)")
    _wait_redis(settings)
    options = ServeOptions(
        host=settings.http_host,
        processes=params["processes"],
        threads=params["threads"],
        log_level=params["log_level"],
        access_log=params["access_log"],
    )
    sys.exit(serve(settings, options))


@main.command()
@concurrency_option
@redis_option
@click.pass_context
def worker(ctx: click.Context, /, **params: Any) -> None:
    """Run one worker process: claim due jobs, deliver them, until SIGTERM."""
    settings = _settings(_app_env(ctx, params))
    _wait_redis(settings)
    from workers.main import run_worker

    sys.exit(run_worker(settings))


# --- jobrunner bench -------------------------------------------------------------------------


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def bench(ctx: click.Context) -> NoReturn:
    """The benchmark harness (`jobrunner bench --help`)."""
    try:
        from benchmarks.cli import main as bench_main
    except ImportError as e:
        raise click.ClickException(f"the benchmark harness is not available: {e}") from None
    sys.exit(bench_main(list(ctx.args)))


if __name__ == "__main__":
    main(prog_name="jobrunner")
