"""Run the user's command for `jobrunner run`, the way `dapr run` runs an app.

The command gets its own process group (and SIGTERM if we are killed outright; then
app_guard.py stops the rest of its group).
We forward Ctrl-C/SIGTERM to the whole group once (`go run .` waits for the
binary it starts, which must get the signal too), and a terminal's Ctrl-C
reaches only us. Its output is forwarded line by line with the `== APP == `
prefix that dapr uses.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from app.jobs.errors import JobrunnerError
from app.processes.procs import child_env, popen_kwargs, python_module, signal_group
from app.processes.supervisor import Child, StopSignals, describe_exit, say

PREFIX = b"== APP == "
STOP_GRACE_S = 10.0


class CommandNotFoundError(JobrunnerError, RuntimeError):
    """The command did not start: `code` is a shell's exit code for it (127: not found,
    126: found but not runnable)."""

    def __init__(self, message: str, code: int = 127) -> None:
        super().__init__(message)
        self.code = code


def _pump(src: IO[bytes], dst: IO[bytes]) -> None:
    broken = False
    for line in iter(src.readline, b""):
        if broken:
            continue  # keep draining, or the app would block on a full pipe
        try:
            dst.write(PREFIX + (line if line.endswith(b"\n") else line + b"\n"))
            dst.flush()
        except (BrokenPipeError, ValueError):
            broken = True
    src.close()


def exit_code(returncode: int) -> int:
    """A shell's convention: killed by signal N gives 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def run_app(argv: Sequence[str], env: dict[str, str], signals: StopSignals, api: Child) -> int:
    """Run `argv` to its end and return its exit code; stop it if the API process dies."""
    # A command in a background process group that reads the terminal would be stopped
    # (SIGTTIN): give it no terminal input; piped input is passed on.
    stdin = subprocess.DEVNULL if sys.stdin is None or sys.stdin.isatty() else None
    # A stream our caller closed (`>&-`: Python has None for it) is the app's /dev/null.
    out = None if sys.stdout is None else sys.stdout.buffer
    err = None if sys.stderr is None else sys.stderr.buffer
    try:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=stdin,
            stdout=subprocess.DEVNULL if out is None else subprocess.PIPE,
            stderr=subprocess.DEVNULL if err is None else subprocess.PIPE,
            **popen_kwargs(die_with_parent=True),
        )
    except FileNotFoundError:
        raise CommandNotFoundError(f"command not found: {argv[0]}") from None
    except OSError as exc:  # not executable, not a program (no #! line), ...
        raise CommandNotFoundError(f"command cannot be run: {argv[0]}: {exc.strerror or exc}",
                                   126) from None
    guard = _start_guard(proc.pid)
    pumps = [threading.Thread(target=_pump, args=(source, sink), daemon=True)
             for source, sink in ((proc.stdout, out), (proc.stderr, err))
             if source is not None and sink is not None]
    for pump in pumps:
        pump.start()
    stopped = True  # (an error: what is left of the group goes too)
    try:
        code, stopped = _wait_for_app(proc, signals, api)
    finally:
        if guard is not None:
            _end_guard(guard, stop_group=stopped)
    # A grandchild may keep the pipes open; do not wait for it forever.
    for pump in pumps:
        pump.join(2.0)
    return code


def _start_guard(pgid: int) -> subprocess.Popen[bytes] | None:
    """app_guard.py for the app's process group; None if it cannot start (we go on
    without: only a `kill -9` of `run` needs it)."""
    try:
        return subprocess.Popen(
            python_module("app.processes.app_guard", str(pgid), f"{STOP_GRACE_S:g}"),
            # Its stdin a pipe we hold the other end of: the pipe's end tells it ours.
            # No parent-death signal: one that came while it started would end it.
            env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, **popen_kwargs(die_with_parent=False))
    except OSError as exc:
        say(f"cannot start the guard of the app's processes: {exc.strerror or exc}",
            logging.WARNING)
        return None


def _end_guard(guard: subprocess.Popen[bytes], stop_group: bool) -> None:
    """After a stop (a signal, the API's end), what the command left of its group goes too,
    as after a `kill -9` of `run`: a shell's background jobs ignore the SIGINT it passed
    on. Else the guard goes, and what the command left behind on purpose runs on."""
    assert guard.stdin is not None
    if stop_group:
        guard.stdin.close()  # its end of the pipe: the guard stops the group, then ends
        try:
            guard.wait(STOP_GRACE_S + 5)
            return
        except subprocess.TimeoutExpired:
            pass
    guard.kill()
    guard.wait()
    guard.stdin.close()


def _wait_for_app(proc: subprocess.Popen[bytes], signals: StopSignals,
                  api: Child) -> tuple[int, bool]:
    """run_app's wait for the app's end, stops forwarded: (its exit code, whether a stop
    was asked or the API ended)."""
    forwarded = 0
    api_died = False
    kill_at: float | None = None  # when a stop asked for goes SIGKILL (an app ignoring it)
    while True:
        try:
            proc.wait(0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        if signals.count > forwarded:
            forwarded = signals.count
            # Third time: the user means it.
            sig = signal.SIGKILL if forwarded >= 3 else (signals.last or signal.SIGINT)
            signal_group(proc.pid, sig)
            if kill_at is None:
                kill_at = time.monotonic() + STOP_GRACE_S
        if kill_at is not None and time.monotonic() > kill_at:
            say(f"the app did not stop within {STOP_GRACE_S:g}s of the signal; killing it")
            signal_group(proc.pid, signal.SIGKILL)
            kill_at = float("inf")
        if not api_died and api.proc.poll() is not None:
            api_died = True
            say(f"{describe_exit(api)}; stopping the app")
            signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            break
    code = exit_code(proc.returncode)
    return ((code or 1) if api_died else code), api_died or signals.count > 0
