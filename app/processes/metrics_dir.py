"""The folder where the processes of one API instance keep their request counters.

An API instance is several processes (gunicorn's workers, or those of any pre-fork
server); prometheus_client's multiprocess mode adds up their counters at each scrape from
one file per process, in the folder PROMETHEUS_MULTIPROC_DIR names (app/api/metrics.py).
`jobrunner api` makes a new, empty folder for each instance, so that two instances on
one machine never add up each other's counts nor a previous run's, and removes it when
the instance stops. The variable must be set before prometheus_client is first imported
(it chooses how to keep values then), so before the server imports the app.

The folder's name holds the pid of the process that made it: the folders of instances
that could not remove theirs (killed with SIGKILL) are removed by the next one to start.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "jobrunner-api-metrics-"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-")


@contextmanager
def metrics_dir() -> Iterator[str]:
    """A fresh folder in the temporary folder (TMPDIR), named in PROMETHEUS_MULTIPROC_DIR
    while the instance runs (replacing one set outside: it may be another instance's);
    removed afterwards."""
    remove_orphans(Path(tempfile.gettempdir()))
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    before = os.environ.get(VARIABLE)
    os.environ[VARIABLE] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(VARIABLE, None)
        else:
            os.environ[VARIABLE] = before
        shutil.rmtree(path, ignore_errors=True)


def remove_orphans(folder: Path) -> list[Path]:
    """Remove the metrics folders in `folder` whose maker is gone; returns them."""
    removed = []
    for path in folder.glob(f"{PREFIX}*"):
        match = _NAME.match(path.name)
        if match is None or not path.is_dir() or path.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # its maker runs (or the pid was reused: the folder waits)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # a process of another user: not ours
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
