"""`python -m app.processes.app_guard PGID GRACE_S`: stops the process group of
`jobrunner run`'s command when `run` is killed outright (app/processes/app_runner.py).

The command's own process gets SIGTERM when `run` dies (the parent-death signal), but
that signal reaches no further: what it started (the binary `go run .` builds, a
shell's background jobs) went on, and a restarted `run` found the app's port taken.
This process holds the read end of a pipe only `run` writes to (its stdin): the end of
the pipe is the end of `run`, however it ended, even one that came while this process
was still starting (a signal would have found it without its handler). Then it stops the
whole group: SIGTERM, then SIGKILL past the grace `run` itself gives (GRACE_S). It ends
on its own once the group is gone; `run` kills it when it ends the usual way. Only the
standard library: it starts beside every `run`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

POLL_S = 0.5


def _signal(pgid: int, sig: int) -> bool:
    """Signal the group; False once it is gone (or no longer ours to signal)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _alive(pgid: int) -> bool:
    """Whether a process of the group runs: zombies answer a signal too, and a `run` that
    is a container's first process (or a subreaper) is left those of the group's orphans,
    which it never reaps: waiting for them to go took the whole grace."""
    if not _signal(pgid, 0):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:  # (no /proc: the signal's answer is all there is)
        return True
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if fields[2:3] == [str(pgid).encode()] and fields[:1] != [b"Z"]:
                return True
    return False


def _run_ended(fd: int) -> bool:
    """Whether `run`'s end of the pipe closed, waiting up to POLL_S for it."""
    readable, _, _ = select.select([fd], [], [], POLL_S)
    return bool(readable) and os.read(fd, 512) == b""


def guard(pgid: int, grace_s: float, fd: int = 0) -> None:
    while not _run_ended(fd):
        if not _signal(pgid, 0):  # (the cheap look while it waits)
            return
    if not _signal(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not _alive(pgid):
            return
    _signal(pgid, signal.SIGKILL)


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
