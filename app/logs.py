"""One log format for every jobrunner process: the CLI, the API (gunicorn's own loggers
too), the workers and the background service.

    plain  2026-11-29T05:57:09.123Z INFO jobrunner.worker delivered app=a job=j attempt=1
    json   {"ts":"2026-11-29T05:57:09.123Z","level":"INFO","logger":"jobrunner.worker",
            "msg":"delivered","app":"a","job":"j","attempt":1}

Structured fields are the `extra={...}` of a logging call. A leaf module: the standard
library and orjson only, so that every layer may use it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import IO, Any

import orjson

# grpc's core writes lines of its own to stderr, in a format of its own (an app's GOAWAY
# put an INFO line inside the JSON log): none unless GRPC_VERBOSITY asks for them. grpc
# reads it when first imported: every process imports this module before grpc. Ours, not
# the user's, is not passed on to the app `jobrunner run` starts (GRPC_VERBOSITY_OURS).
GRPC_VERBOSITY_OURS = "GRPC_VERBOSITY" not in os.environ
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

LOG_FORMATS = ("plain", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

# What a LogRecord carries by itself; anything else on a record came from `extra`.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_HANDLER_MARK = "_jobrunner"


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record (its `extra`), in the order given."""
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


class _Timestamps:
    """RFC 3339 UTC with milliseconds; the part up to the second is cached."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        cached_second, prefix = self._cached  # one object: threads see the old pair or the new
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        return f"{prefix}.{int((created - second) * 1000):03d}Z"


# What must not reach a terminal as it is: line breaks would forge lines, escapes (ESC, CSI)
# would drive the terminal of whoever reads the log (`jobrunner run` shows the API's lines).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(match[0], f"\\x{ord(match[0]):02x}")


_C1 = re.compile(r"[\x7f-\x9f]")


def _json_escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


def _plain_value(value: Any) -> str:
    """logfmt: a bare word when it is one, else a JSON string (orjson escapes every C0
    control character; C1 ones are escaped here)."""
    text = value if isinstance(value, str) else str(value)
    if text and not any(c in text for c in ' ="\\') and not _CONTROL.search(text):
        return text
    return _C1.sub(_json_escaped, orjson.dumps(text).decode())


class PlainFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger> <message> key=value ...`, a traceback on the lines below."""

    def __init__(self) -> None:
        super().__init__()
        self._ts = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if _CONTROL.search(message):
            # One record, one line, and no terminal escapes: a message may carry a caller's
            # text (the access log's decoded path).
            message = _CONTROL.sub(_escaped, message)
        line = f"{self._ts(record.created)} {record.levelname} {record.name} {message}"
        fields = fields_of(record)
        if fields:
            line += " " + " ".join(f"{k}={_plain_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the fields, and exc when there is one."""

    def __init__(self) -> None:
        super().__init__()
        self._ts = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._ts(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            entry.setdefault(key, value)  # a field never hides the four above
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = orjson.dumps(entry, default=str).decode()
        # orjson escapes C0 controls; a C1 one (U+009B: CSI) would reach a terminal as is.
        return _C1.sub(_json_escaped, line) if _C1.search(line) else line


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "plain":
        return PlainFormatter()
    if log_format == "json":
        return JsonFormatter()
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")


def level_number(level: str) -> int:
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return int(logging.getLevelName(level.upper()))


def setup(log_format: str, level: str, stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records to `stream` (stderr) in `log_format`, from `level` up.

    Replaces the handler an earlier call installed, and only that one (a test
    runner's own handlers stay).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number(level))
    return handler
