"""The query-string arguments of the routes, read alike: a whole number in ASCII digits
within its bounds, a true/false; anything else a 400 that names the argument as part of
the query (not of the body, as Dapr's malformed-request text would say); a name prefix
no longer than a name."""

from __future__ import annotations

from flask import request

from app.jobs import errors
from app.jobs.validation import MAX_NAME_LENGTH, too_long_prefix


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    """`?name=` as a whole number from `lo` to `hi`; `default` when absent. Only ASCII
    digits (int() also takes `1_0`, `+5` and other scripts' digits)."""
    text = request.args.get(name)
    if text is None:
        return default
    short_digits = text.isascii() and text.isdigit() and len(text) <= len(str(hi))
    value = int(text) if short_digits else None
    if value is None or not lo <= value <= hi:
        raise errors.bad_query(f"{name} must be a whole number from {lo} to {hi}")
    return value


def bool_arg(name: str) -> bool | None:
    """`?name=true` or `false`; None when absent."""
    text = request.args.get(name)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise errors.bad_query(f"{name} must be true or false")
    return text == "true"


def prefix_arg(name: str = "prefix") -> str | None:
    """`?name=`, a job name prefix; None when absent."""
    text = request.args.get(name)
    if text is not None and len(text) > MAX_NAME_LENGTH:
        raise errors.bad_query(too_long_prefix(name))
    return text


