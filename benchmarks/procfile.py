"""The API as the Procfile runs it: its `web` line, with PORT set and bound to loopback."""

from __future__ import annotations

import re
import sys

from benchmarks.procs import REPO_ROOT, BenchError

JOBRUNNER_TARGET = '"app.api:create_app()"'
FALLBACK_WEB = (
    'gunicorn "app.api:create_app()" --bind 0.0.0.0:${PORT:-6280} --worker-class gthread '
    "--workers ${WEB_CONCURRENCY:-2} --threads ${JOBRUNNER_API_THREADS:-4} --graceful-timeout 10"
)


def web_line() -> str:
    path = REPO_ROOT / "Procfile"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("web:"):
                return line.split(":", 1)[1].strip()
    return FALLBACK_WEB


def web_command(target: str | None = None) -> list[str]:
    """`sh -c 'exec <web line>'` bound to 127.0.0.1; `target` replaces the WSGI app."""
    line = web_line()
    line = re.sub(r"--bind\s+0\.0\.0\.0:", "--bind 127.0.0.1:", line)
    if "127.0.0.1" not in line:
        raise BenchError(f"cannot bind the Procfile's web line to 127.0.0.1: {line}")
    if target is not None:
        if JOBRUNNER_TARGET not in line:
            raise BenchError(f"cannot find {JOBRUNNER_TARGET} in the Procfile's web line")
        line = line.replace(JOBRUNNER_TARGET, f'"{target}"')
    return ["/bin/sh", "-c", f"exec {line}"]


def venv_path_env(path: str) -> str:
    """PATH with this interpreter's bin directory first (gunicorn, rq, jobrunner)."""
    from pathlib import Path

    return str(Path(sys.executable).parent) + (":" + path if path else "")
