"""The API as the Procfile runs it: its `web` line (`jobrunner api`), with PORT set and
bound to loopback.

The RQ baselines serve their Flask app with gunicorn, gthread workers, with the processes
and threads of `jobrunner api` (app/processes/serve.py; tests/test_procfile.py checks that
they agree), as `jobrunner api` itself ran before it moved to granian: a Flask app as it is
usually deployed.
"""

from __future__ import annotations

import sys

from benchmarks.procs import REPO_ROOT, BenchError

FALLBACK_WEB = (
    ': "${REDIS_URL:-${REDIS_PORT:?set REDIS_URL}}" && '
    'exec jobrunner api --host "${JOBRUNNER_HTTP_HOST:-127.0.0.1}" --http-port "${PORT:-6280}"'
)
JOBRUNNER_API = "exec jobrunner api"
# gunicorn with `jobrunner api`'s options, as a command line: the same processes (the same
# environment variables, in click's order), threads and graceful timeout.
BASELINE_WEB = (
    'exec gunicorn "{target}" --bind 127.0.0.1:${PORT:-6280} --worker-class gthread '
    "--workers ${JOBRUNNER_API_PROCESSES:-${WEB_CONCURRENCY:-2}} "
    "--threads ${JOBRUNNER_API_THREADS:-8} --graceful-timeout 10"
)


def web_line() -> str:
    path = REPO_ROOT / "Procfile"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("web:"):
                return line.split(":", 1)[1].strip()
    return FALLBACK_WEB


def web_command(target: str | None = None) -> list[str]:
    """`sh -c` running the web line bound to 127.0.0.1; with `target` (a WSGI app of a
    baseline), gunicorn serving it with the web line's gunicorn options instead."""
    if target is not None:
        return ["/bin/sh", "-c", BASELINE_WEB.replace("{target}", target)]
    line = web_line()
    if JOBRUNNER_API not in line:
        raise BenchError(f"the Procfile's web line does not run `{JOBRUNNER_API}`: {line}")
    # The web line binds JOBRUNNER_HTTP_HOST: loopback, whatever the caller's environment says.
    return ["/bin/sh", "-c", f"export JOBRUNNER_HTTP_HOST=127.0.0.1; {line}"]


def venv_path_env(path: str) -> str:
    """PATH with this interpreter's bin directory first (gunicorn, rq, jobrunner)."""
    from pathlib import Path

    return str(Path(sys.executable).parent) + (":" + path if path else "")
