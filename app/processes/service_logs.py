"""The log files of the shared service, and reading them back for `jobrunner logs`.

Every part writes its own file in $JOBRUNNER_HOME/logs: service.log (the background
service itself), redis.log (its embedded Redis), worker-N.log (its workers), and
api-<app id>.log (the API process of each `jobrunner run`, appended to by every run of
that app). Reading merges them in time order by the timestamp each line starts with
(jobrunner's plain or JSON format, or redis-server's own); a line without one (a
traceback) stays after the line before it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

API_LOG_PREFIX = "api-"
_BLOCK = 64 * 1024
_PLAIN_TS = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ")
_JSON_TS = re.compile(rb'^\{"ts":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"')
# redis-server: `pid:role 29 Nov 2026 05:57:09.123 * message`, in local time.
_REDIS_TS = re.compile(rb"^\d+:[A-Z] (\d\d? \w{3} \d{4} \d\d:\d\d:\d\d\.\d{3}) ")


def api_log_name(app_id: str) -> str:
    """The log file of an app's API processes (app ids are safe file names)."""
    return f"{API_LOG_PREFIX}{app_id}.log"


def log_files(log_dir: Path, names: Iterable[str] = ()) -> list[Path]:
    """The log files, all or those of `names`: a part (`worker-1`) or a kind (`worker`)."""
    wanted = tuple(names)
    try:
        files = sorted(p for p in log_dir.glob("*.log") if p.is_file())
    except OSError:
        return []
    if not wanted:
        return files
    # A kind is one word: `api-job` names that app's log, not `api-job-service`'s too.
    return [p for p in files
            if any(p.stem == n or ("-" not in n and p.stem.startswith(n + "-")) for n in wanted)]


def line_time(line: bytes) -> str | None:
    """The line's UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ` (which sorts as text), if it has one."""
    found = _PLAIN_TS.match(line) or _JSON_TS.match(line)
    if found:
        return found.group(1).decode()
    found = _REDIS_TS.match(line)
    if found:
        try:
            local = datetime.strptime(found.group(1).decode(), "%d %b %Y %H:%M:%S.%f")
        except ValueError:
            return None
        utc = local.astimezone(UTC)  # a naive time is taken as local time
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    return None


def last_lines(path: Path, count: int) -> tuple[list[bytes], int]:
    """The last `count` complete lines of a file, read from its end, and the offset they end
    at (where following starts). A line still being written is left for later."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos, blocks, newlines = end, [], 0
        while pos > 0 and newlines <= count:
            step = min(_BLOCK, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            blocks.append(block)
            newlines += block.count(b"\n")
    data = b"".join(reversed(blocks))
    complete = data.rfind(b"\n") + 1
    lines = _split(data[:complete])
    if pos > 0:
        lines = lines[1:]  # the first one may be cut
    return lines[-count:], end - (len(data) - complete)


def _split(complete: bytes) -> list[bytes]:
    """Complete lines (`complete` ends with a newline, or is empty) without their newlines."""
    return complete[:-1].split(b"\n") if complete else []


@dataclass
class _Source:
    path: Path
    part: str
    offset: int = 0
    last_time: str = ""  # for the lines that carry no time of their own
    lines: list[tuple[str, bytes]] = field(default_factory=list)

    def take(self, raw: list[bytes]) -> None:
        for line in raw:
            self.last_time = line_time(line) or self.last_time
            self.lines.append((self.last_time, line))

    def read_new(self) -> None:
        """The complete lines written since the last read (from the start if it shrank)."""
        try:
            size = self.path.stat().st_size
            if size < self.offset:
                self.offset = 0  # truncated or replaced
            if size == self.offset:
                return
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except OSError:
            return
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        self.take(_split(data[:complete]))


def _merged(sources: list[_Source]) -> list[tuple[str, bytes]]:
    """The lines of all sources by time; equal times keep file order, then line order."""
    keyed = [
        (time_key, i, j, src.part, line)
        for i, src in enumerate(sources)
        for j, (time_key, line) in enumerate(src.lines)
    ]
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    for src in sources:
        src.lines.clear()
    return [(part, line) for _, _, _, part, line in keyed]


class LogReader:
    """The last lines of a set of log files, merged; then, when following, the new ones."""

    def __init__(self, log_dir: Path, names: Iterable[str] = ()) -> None:
        self.log_dir = log_dir
        self.names = tuple(names)
        self.sources: dict[Path, _Source] = {}

    def _add(self, path: Path, offset: int) -> _Source:
        src = self.sources[path] = _Source(path, path.stem, offset)
        return src

    def tail(self, count: int) -> list[tuple[str, bytes]]:
        for path in log_files(self.log_dir, self.names):
            try:
                lines, end = last_lines(path, count)
            except OSError:
                continue
            self._add(path, end).take(lines)
        return _merged(list(self.sources.values()))[-count:]

    def new_lines(self) -> list[tuple[str, bytes]]:
        """What was written since the last call; a file that appeared is read from its start."""
        for path in log_files(self.log_dir, self.names):
            if path not in self.sources:
                self._add(path, 0)
        for src in self.sources.values():
            src.read_new()
        return _merged(list(self.sources.values()))

    def follow(self, show: Callable[[list[tuple[str, bytes]]], None], poll_s: float = 0.25,
               stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            time.sleep(poll_s)
            lines = self.new_lines()
            if lines:
                show(lines)
