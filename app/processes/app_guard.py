"""`python -m app.processes.app_guard PGID GRACE_S`: stops the process group of
`jobrunner run`'s command when `run` is killed outright (app/processes/app_runner.py).

The command's own process gets SIGTERM when `run` dies (the parent-death signal), but
that signal reaches no further: what it started (the binary `go run .` builds, a
shell's background jobs) went on, and a restarted `run` found the app's port taken.
This process holds the read end of a pipe only `run` writes to (its stdin): the end of
the pipe is the end of `run`, however it ended, even one that came while this process
was still starting (a signal would have found it without its handler). Then it stops the
whole group: SIGTERM, then SIGKILL past the grace `run` itself gives (GRACE_S). It ends
on its own once the group is gone; `run` kills it when it ends the usual way. It starts
after the command, so its start (about 0.1 s) keeps no one waiting.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

from app.processes.procs import group_runs, signal_group

POLL_S = 0.5


def _run_ended(fd: int) -> bool:
    """Whether `run`'s end of the pipe closed, waiting up to POLL_S for it."""
    readable, _, _ = select.select([fd], [], [], POLL_S)
    return bool(readable) and os.read(fd, 512) == b""


def guard(pgid: int, grace_s: float, fd: int = 0) -> None:
    while not _run_ended(fd):
        if not signal_group(pgid, 0):  # (the cheap look while it waits)
            return
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not group_runs(pgid):
            return
    signal_group(pgid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    try:
        pgid, grace_s = int(argv[0]), float(argv[1])
    except (IndexError, ValueError):
        pgid, grace_s = 0, 0.0
    if len(argv) != 2 or pgid <= 1 or not grace_s >= 0:
        print("usage: python -m app.processes.app_guard PGID GRACE_S < pipe", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (its own group: a terminal's never comes)
    with contextlib.suppress(KeyboardInterrupt):
        guard(pgid, grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
