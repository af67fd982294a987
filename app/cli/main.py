"""The `jobrunner` command line (click; console script `jobrunner = app.cli:main`).

- `up`: Redis (embedded unless REDIS_URL), workers and the API, in the foreground.
- `run`: the `dapr run` of this project: the shared service in the background,
  this app's API process, and the app's command.
- `api`, `worker`: one part each, for a Procfile or to scale.
- `stop`, `status`, `logs`: the shared background service.
- `dlq`: the dead-letter queue (list, show, replay, purge).
- `jobs`: the jobs of an app through its HTTP API (schedule, get, list, delete,
  export, import), locally or at --url.
- `signing-key`: the keys an app verifies its deliveries with.
- `bench`: the benchmark harness.

Shared options: app/cli/options.py; `up` and the background service: app/cli/up.py;
`run`, `stop`, `status`, `logs`: app/cli/run.py (each imported only when its command runs).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from typing import Any, NoReturn

import click

from app.cli.options import (
    api_tuning,
    app_env,
    app_options,
    concurrency_option,
    ensure_api_addresses,
    host_option,
    log_options,
    redis_option,
    settings_from,
    wait_redis,
)
from app.jobs.errors import JobrunnerError
from app.processes.procs import PROJECT_ROOT, child_env, python_module
from app.settings import SettingsError

# The commands defined in modules of their own, imported only when run (or listed by --help):
# each process imports what its own command needs, not the store and client code of the
# others (`jobrunner up`, `run` and the API process they start are on start-up's clock).
_LAZY_COMMANDS = {
    "up": "app.cli.up:up",
    "service": "app.cli.up:service",
    "run": "app.cli.run:run",
    "stop": "app.cli.run:stop",
    "status": "app.cli.run:status",
    "logs": "app.cli.run:logs",
    "dlq": "app.cli.dlq:dlq",
    "jobs": "app.cli.jobs:jobs",
    "stats": "app.cli.stats:stats",
}


class _Group(click.Group):
    """Turns the errors a user can cause or fix into one clear line, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS and cmd_name not in self.commands:
            module, name = _LAZY_COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module), name)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as e:  # one line, exit 2: the command's usage would not help
            raise click.UsageError(str(e)) from None
        except JobrunnerError as e:
            raise click.ClickException(str(e)) from None
        except BrokenPipeError:  # the reader of our output left (`| head`): so do we, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
            raise SystemExit(0) from None
        except OSError as e:  # a folder we cannot write, a file we cannot read, ...
            raise click.ClickException(str(e)) from None


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="jobrunner", prog_name="jobrunner")
def main() -> None:
    """jobrunner: the Dapr Jobs API on Redis."""


# --- one part each: api, worker --------------------------------------------------------------


@main.command()
@app_options
@host_option
@api_tuning
@click.option("--access-log/--no-access-log", default=False, show_default=True)
@log_options
@click.pass_context
def api(ctx: click.Context, /, **params: Any) -> None:
    """Serve the jobs API for one app: HTTP (granian: slow clients hold no thread), and Dapr's gRPC
    API on --grpc-port from each worker process."""
    from app.processes.metrics_dir import metrics_dir
    from app.processes.serve import DEFAULT_LOG_LEVEL, ServeOptions, serve

    settings = settings_from(app_env(ctx, params))
    # For anything in the API that reads the environment itself.
    os.environ.update(settings.to_env())
    ensure_api_addresses(settings)
    wait_redis(settings)
    options = ServeOptions(
        host=settings.http_host,
        processes=params["processes"],
        threads=params["threads"],
        log_level=settings.log_level or DEFAULT_LOG_LEVEL,
        log_format=settings.log_format,
        access_log=params["access_log"],
    )
    # Its processes add up their request counters in a folder of this instance's own.
    with metrics_dir():
        code = serve(settings, options)
    sys.exit(code)


@main.command()
@concurrency_option
@redis_option
@log_options
@click.pass_context
def worker(ctx: click.Context, /, **params: Any) -> None:
    """Run one worker process: claim due jobs, deliver them, until SIGTERM."""
    settings = settings_from(app_env(ctx, params))
    wait_redis(settings)
    from workers.main import run_worker

    sys.exit(run_worker(settings))


# --- jobrunner signing-key -------------------------------------------------------------------


@main.command("signing-key")
@click.argument("app_id")
def signing_key(app_id: str) -> None:
    """Print the keys APP_ID verifies its deliveries with, one per line.

    \b
      JOBS_SIGNING_KEY=$(jobrunner signing-key job-service | head -n 1)

    Standard Webhooks secrets (whsec_...), one for each key of JOBRUNNER_SIGNING_KEYS, in its
    order. With JOBRUNNER_SIGNING_PER_APP, the app's own keys: they verify no other app's
    deliveries, and another app's keys cannot sign one that these verify. Without it,
    JOBRUNNER_SIGNING_KEYS itself, which every app shares.
    """
    from app.jobs.validation import validate_app_id
    from app.settings import signing_key_text
    from workers.signing import delivery_keys

    settings = settings_from({})
    app_id = validate_app_id(app_id)
    if not settings.signing_keys:
        raise click.ClickException(
            "JOBRUNNER_SIGNING_KEYS is not set: deliveries are not signed, so there is no key")
    if not settings.signing_per_app:
        click.echo("note: JOBRUNNER_SIGNING_PER_APP is off: every app verifies with these "
                   "same keys, JOBRUNNER_SIGNING_KEYS' own", err=True)
    for key in delivery_keys(settings, app_id):
        click.echo(signing_key_text(key))


# --- jobrunner bench -------------------------------------------------------------------------


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def bench(ctx: click.Context) -> NoReturn:
    """The benchmark harness (`jobrunner bench --help`), from a source checkout."""
    # benchmarks/ is not installed (it is no package of ours to put on a user's import
    # path): it runs from the checkout an editable install points at.
    if not (PROJECT_ROOT / "benchmarks" / "__main__.py").is_file():
        raise click.ClickException(
            "the benchmark harness runs from a source checkout of jobrunner "
            "(pip install -e '.[bench]' there); this installation has none"
        )
    argv = python_module("benchmarks", *ctx.args)
    sys.exit(subprocess.call(argv, env=child_env(), cwd=PROJECT_ROOT))


if __name__ == "__main__":
    main(prog_name="jobrunner")
