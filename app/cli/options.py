"""The options and helpers that the `jobrunner` commands share.

Flags set the same environment variables that `Settings.from_env()` reads, so
every child process sees exactly what its parent was given.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from app.jobs.errors import shown
from app.logs import LOG_FORMATS, LOG_LEVELS
from app.logs import setup as setup_logging
from app.processes.procs import ensure_port_free, http_url
from app.processes.redis_server import require_redis
from app.processes.serve import DEFAULT_PROCESSES, DEFAULT_THREADS
from app.processes.supervisor import Child, StopSignals, Supervisor, describe_exit
from app.settings import APP_PROTOCOLS, Settings, SettingsError

F = TypeVar("F", bound=Callable[..., Any])

# Waiting for a fresh API process: granian starts its workers, each builds the app.
API_READY_TIMEOUT_S = 60.0


def check_app_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value.strip())  # raises on a bad IPv6 literal ("http://[::1")
        hostname = parts.hostname
        parts.port  # noqa: B018  # raises on a bad port
    except ValueError as e:
        raise click.BadParameter(f"{e}: {shown(value)}") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise click.BadParameter(f"must be an http(s) URL like http://127.0.0.1:6200: "
                                 f"{shown(value)}")
    return value.strip().rstrip("/")


def check_app_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from app.jobs.errors import ApiError
    from app.jobs.validation import validate_app_id

    try:
        return validate_app_id(value)
    except ApiError as e:
        raise click.BadParameter(e.message) from None


PORT = click.IntRange(1, 65535)


class _PortOrOff(click.ParamType[int]):
    """A port, or 0 / `off` for none."""

    name = "PORT|off"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip().lower()
        if text == "off":
            return 0
        try:
            port = int(text)
        except ValueError:
            self.fail(f"{value!r} is not a port number or off", param, ctx)
        if not 0 <= port <= 65535:
            self.fail(f"{port} is not a port number (1-65535), or 0 or off", param, ctx)
        return port


GRPC_PORT = _PortOrOff()


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


redis_option = click.option(
    "--redis-url", envvar="REDIS_URL", show_envvar=True, metavar="URL",
    help="The Redis to use; `up` and `run` start their own when none is given.",
)  # fmt: skip

app_options = _options(
    click.option(
        "--app-id", envvar="APP_ID", show_envvar=True, callback=check_app_id,
        help="The app this API serves; jobs are namespaced by it.  [default: job-service]",
    ),
    click.option(
        "--app-port", type=PORT, envvar="APP_PORT", show_envvar=True,
        help="Port of the app on 127.0.0.1; jobs are POSTed to /job/<name>.  [default: 6200]",
    ),
    click.option(
        "--app-url", envvar="APP_URL", show_envvar=True, callback=check_app_url, metavar="URL",
        help="Full address of the app, instead of --app-port.",
    ),
    click.option(
        "--app-protocol", type=click.Choice(APP_PROTOCOLS, case_sensitive=False),
        envvar="APP_PROTOCOL", show_envvar=True,
        help="How jobs reach the app: POST /job/<name>, or Dapr's gRPC "
             "AppCallback.OnJobEvent.  [default: http]",
    ),
    click.option(
        "--dapr-compat", is_flag=True, default=None, envvar="JOBRUNNER_DAPR_COMPAT",
        show_envvar=True,
        help="Behave as Dapr 1.14.3+ for this app: data delivered and kept as scheduled, any "
             "@type, GET data in Dapr's shape (today's Dapr quickstarts need it; the seed's "
             "programs need it off).",
    ),
    click.option(
        "--http-port", "--dapr-http-port", "http_port", type=PORT, envvar="DAPR_HTTP_PORT",
        show_envvar=True, help="Port of the jobs API.  [default: 6280]",
    ),
    click.option(
        "--grpc-port", "--dapr-grpc-port", "grpc_port", type=GRPC_PORT, envvar="DAPR_GRPC_PORT",
        show_envvar=True,
        help="Port of Dapr's gRPC jobs API (the SDKs' clients), on the same host; 0 or off: "
             "none.  [default: 50001; run: a free port, as dapr run]",
    ),
    redis_option,
)  # fmt: skip

def check_host(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An IP address (granian binds only an address): a usage error, as other settings'."""
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        raise click.BadParameter(f"must be an IP address such as 127.0.0.1, ::1 or 0.0.0.0, "
                                 f"got {shown(value)}") from None
    return value.strip()


host_option = click.option(
    "--host", envvar="JOBRUNNER_HTTP_HOST", show_envvar=True, default="127.0.0.1",
    show_default=True, callback=check_host, help="Address the API listens on.",
)  # fmt: skip

api_tuning = _options(
    click.option(
        "--processes", type=click.IntRange(1, 256), default=DEFAULT_PROCESSES, show_default=True,
        envvar=["JOBRUNNER_API_PROCESSES", "WEB_CONCURRENCY"], show_envvar=True,
        help="API processes (granian workers), each reading requests on an event loop.",
    ),
    click.option(
        "--threads", type=click.IntRange(1, 1024), default=DEFAULT_THREADS, show_default=True,
        envvar="JOBRUNNER_API_THREADS", show_envvar=True,
        help="Threads per API process that run requests once they have arrived whole.",
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


# This process's log level when JOBRUNNER_LOG_LEVEL is not set (workers: workers/main.py).
CLI_LOG_LEVEL = "info"


def log_options(f: F) -> F:
    """--log-format and --log-level: for this command and every process it starts (through
    JOBRUNNER_LOG_FORMAT / JOBRUNNER_LOG_LEVEL), and this process's logging set up."""

    @functools.wraps(f)
    def command(*args: Any, log_format: str | None, log_level: str | None, **kwargs: Any) -> Any:
        for name, value in (("JOBRUNNER_LOG_FORMAT", log_format),
                            ("JOBRUNNER_LOG_LEVEL", log_level)):
            if value:
                os.environ[name] = value.lower()
        setup_logging(os.environ.get("JOBRUNNER_LOG_FORMAT") or "plain",
                      os.environ.get("JOBRUNNER_LOG_LEVEL") or CLI_LOG_LEVEL)
        return f(*args, **kwargs)

    with_options = _options(
        click.option(
            "--log-format", type=click.Choice(LOG_FORMATS, case_sensitive=False),
            envvar="JOBRUNNER_LOG_FORMAT", show_envvar=True,
            help="Logs as plain text lines or as JSON objects, one a line.  [default: plain]",
        ),
        click.option(
            "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
            envvar="JOBRUNNER_LOG_LEVEL", show_envvar=True,
            help="The least level logged; info shows a line per delivery.  [default: info]",
        ),
    )(command)
    return with_options  # type: ignore[return-value]  # the same command, two more options


def from_command_line(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def app_env(ctx: click.Context, params: dict[str, Any]) -> dict[str, str]:
    """The environment variables for the app options that were given."""
    app_port, app_url = params.get("app_port"), params.get("app_url")
    port_given, url_given = from_command_line(ctx, "app_port"), from_command_line(ctx, "app_url")
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
    if params.get("app_protocol"):
        env["APP_PROTOCOL"] = params["app_protocol"].lower()
    if params.get("dapr_compat"):
        env["JOBRUNNER_DAPR_COMPAT"] = "1"
    if params.get("http_port") is not None:
        env["DAPR_HTTP_PORT"] = str(params["http_port"])
    if params.get("grpc_port") is not None:
        env["DAPR_GRPC_PORT"] = str(params["grpc_port"])
    if params.get("redis_url"):
        env["REDIS_URL"] = params["redis_url"]
    if params.get("host"):
        env["JOBRUNNER_HTTP_HOST"] = params["host"]
    if params.get("concurrency") is not None:
        env["JOBRUNNER_CONCURRENCY"] = str(params["concurrency"])
    return env


def settings_from(overrides: dict[str, str]) -> Settings:
    return Settings.from_env({**os.environ, **overrides})


def _reached(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address | str]:
    """The addresses a connection to `host` reaches on this machine (a name: itself)."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return {host}
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:  # connecting to 0.0.0.0 or :: reaches this machine
        return {ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")}
    return {ip}


def _takes(bound: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> bool:
    """Whether a listener bound to `bound` takes connections to `address`."""
    try:
        wildcard = ipaddress.ip_address(bound.lower().rstrip("."))
    except ValueError:
        return address in _reached(bound)
    if wildcard.is_unspecified:
        # 0.0.0.0 takes this machine's IPv4 addresses, :: (dual stack) both families': of
        # those, the loopback ones are what an app URL on this machine names.
        return not isinstance(address, str) and address.is_loopback and (
            wildcard.version == 6 or address.version == 4)
    return address in _reached(bound)


def ensure_app_elsewhere(settings: Settings) -> None:
    """The app's address is not one of the API's own ports on this host: its jobs were
    delivered to the API itself, as requests it does not serve."""
    app = urlsplit(settings.app_url)
    port = app.port or (443 if app.scheme == "https" else 80)
    if port in (settings.http_port, settings.grpc_port) and any(
            _takes(settings.http_host, address) for address in _reached(app.hostname or "")):
        raise SettingsError(f"the app's address {settings.app_url} is the jobs API's own "
                            f"(port {port}): give the app a port of its own (--app-port)")


def ensure_grpc_port_free(settings: Settings) -> None:
    """Refuse a gRPC port in use: the API processes bind it with SO_REUSEPORT, which would
    otherwise share it silently with another jobrunner (another app's jobs API)."""
    if settings.grpc_port:
        ensure_port_free(settings.http_host, settings.grpc_port, "the gRPC API's (--grpc-port)")


def ensure_api_addresses(settings: Settings) -> None:
    """The checks of `api`, `up` and `run` before they start an API: its ports free, and
    the app elsewhere."""
    ensure_port_free(settings.http_host, settings.http_port, "the API's (--http-port)")
    ensure_grpc_port_free(settings)
    ensure_app_elsewhere(settings)


def wait_redis(settings: Settings, signals: StopSignals | None = None) -> None:
    require_redis(
        settings.redis_url,
        settings.redis_cluster,
        settings.redis_wait_s,
        give_up=(lambda: signals.requested) if signals else (lambda: False),
    )


def healthz_url(settings: Settings) -> str:
    return f"{http_url(settings.http_host, settings.http_port)}/healthz"


def wait_api(sup: Supervisor, api: Child, settings: Settings) -> None:
    """Wait for the API to answer /healthz; raise if it dies or never answers."""
    if sup.wait_http(healthz_url(settings), api, API_READY_TIMEOUT_S) or sup.signals.requested:
        return
    if api.proc.poll() is not None:
        raise click.ClickException(f"the API process did not start: {describe_exit(api)}")
    raise click.ClickException(
        f"the API did not answer {healthz_url(settings)} within {API_READY_TIMEOUT_S:.0f}s"
    )
