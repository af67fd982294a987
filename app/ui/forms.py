"""The "schedule a job" form, turned into the body the HTTP API takes, so that a job
scheduled from the dashboard goes through the API's own validation
(app.jobs.validation.parse_job_request) and means exactly what the same POST would."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import orjson

from app.jobs import errors
from app.jobs.errors import ApiError

# The form's fields, and the most characters each takes (data: the data limit applies).
TEXT_FIELDS = {"name": 1024, "schedule": 1024, "dueTime": 256, "ttl": 256, "repeats": 32,
               "policy": 16, "interval": 256, "maxRetries": 32, "maxInterval": 256,
               "multiplier": 32, "jitter": 32, "deliveryTimeout": 256, "catchUp": 16,
               "keep": 1024}
POLICIES = ("default", "drop", "constant", "exponential")
# Data is shown indented up to this many characters, and compact past it: indented, data
# well inside the data limit grew to many MB (two spaces a level on every line) and, sent
# back, past the form's size limit (413).
MAX_INDENTED_CHARS = 64 * 1024
_LINE_BREAK = re.compile(r"\r\n?")
_BREAKS_TO_SPACES = str.maketrans("\r\n", "  ")


def newlines(text: str) -> str:
    """`text` with its line breaks as a browser sends a text area's back, then made LF:
    CRLF and a lone CR are LF (the HTML parser reads both as one)."""
    return _LINE_BREAK.sub("\n", text)


def form_values(form: Mapping[str, str]) -> dict[str, str]:
    """The form as sent, each field cut one past its bound (to show it again with an
    error: to_request refuses a field that long, as the API would)."""
    values = {k: form.get(k, "")[:bound + 1] for k, bound in TEXT_FIELDS.items()}
    # Browsers send a text area's lines ended by CRLF: the data as typed has LF.
    values["data"] = newlines(form.get("data", ""))
    values["overwrite"] = "on" if form.get("overwrite") else ""
    return values


def to_request(values: Mapping[str, str]) -> tuple[str, bytes]:
    """(job name, JSON body of the schedule request). Raises ApiError for what the form
    itself gets wrong; the API's validation checks the rest."""
    for key, bound in TEXT_FIELDS.items():
        if len(values.get(key, "")) > bound:
            raise errors.malformed(f"{key} is longer than {bound} characters")
    fields: list[tuple[str, bytes]] = []
    for key in ("schedule", "dueTime", "ttl", "deliveryTimeout", "catchUp"):
        text = values.get(key, "")
        if text.strip():  # as typed: the API keeps these strings as given
            fields.append((key, orjson.dumps(text)))
    if repeats := values.get("repeats", "").strip():
        # As text: the API takes a decimal string and checks it as it checks a number
        # (int() here took `1_0` and other scripts' digits, which the API refuses).
        fields.append(("repeats", orjson.dumps(repeats)))
    policy = values.get("policy", "default") or "default"
    if policy not in POLICIES:
        raise errors.malformed(f"failure policy must be one of {', '.join(POLICIES)}")
    if policy == "drop":
        fields.append(("failurePolicy", b'{"drop":{}}'))
    elif policy == "constant":
        constant: dict[str, object] = {}
        if interval := values.get("interval", "").strip():
            constant["interval"] = interval
        if retries := values.get("maxRetries", "").strip():
            constant["maxRetries"] = retries  # as text, as repeats
        fields.append(("failurePolicy", orjson.dumps({"constant": constant})))
    elif policy == "exponential":
        exponential: dict[str, object] = {}
        for key, given in (("initialInterval", "interval"), ("maxInterval", "maxInterval"),
                           ("maxRetries", "maxRetries")):
            if text := values.get(given, "").strip():
                exponential[key] = text
        for key in ("multiplier", "jitter"):
            if text := values.get(key, "").strip():
                exponential[key] = _number(key, text)
        fields.append(("failurePolicy", orjson.dumps({"exponential": exponential})))
    if values.get("overwrite"):
        fields.append(("overwrite", b"true"))
    data = values.get("data", "")
    if data.strip():
        # The API measures the data as compact JSON (the form's is indented); the text
        # itself is bounded by the form's size limit (views: max_form_memory_size).
        try:
            # The standard library's parser: any JSON, big integers included, as the API.
            json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise ApiError(400, errors.MALFORMED_REQUEST_DATA,
                           f'data must be JSON (a text in double quotes: "text"): {exc}') from None
        # The text itself, not a re-encoding: the API keeps data as written (--dapr-compat).
        fields.append(("data", data.strip().encode()))
    body = b"{" + b",".join(orjson.dumps(k) + b":" + v for k, v in fields) + b"}"
    return values.get("name", ""), body


def _number(key: str, text: str) -> int | float:
    """A number field (the API takes JSON numbers there, not text)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.malformed(f"{key} must be a number, got {text[:40]!r}")
    return value


def values_of(job: Mapping[str, Any]) -> dict[str, str]:
    """The form filled in with a job as GET answers it (`job`), to change it: sent again
    unchanged, it schedules the same definition (views.schedule keeps the stored data
    while the form's is the text shown here)."""
    values = {k: "" for k in TEXT_FIELDS}
    values["keep"] = job["name"]
    for key in ("name", "schedule", "dueTime", "ttl", "deliveryTimeout", "catchUp"):
        if isinstance(job.get(key), str):
            # A text input drops line breaks (browsers strip them from its value): a
            # space instead, where the API reads both alike (a cron's field separator;
            # the other fields are trimmed or refuse both).
            values[key] = job[key].translate(_BREAKS_TO_SPACES)
    if job.get("repeats") is not None:
        values["repeats"] = str(job["repeats"])
    policy = job.get("failurePolicy") or {}
    kind = next(iter(policy), "default")
    values["policy"] = kind if kind in POLICIES else "default"
    chosen = policy.get(kind) or {}
    values["interval"] = str(chosen.get("interval", chosen.get("initialInterval", "")))
    for key in ("maxRetries", "maxInterval", "multiplier", "jitter"):
        if chosen.get(key) is not None:
            values[key] = str(chosen[key])
    values["data"] = "" if "data" not in job else shown_data(job["data"])
    values["overwrite"] = "on"
    return values


def shown_data(data: Any, text: str | None = None) -> str:
    """The data on the form: `text` (data kept as written) or indented JSON while short,
    else compact JSON (at most the data limit: the API measures data compact)."""
    if text is not None and len(text) <= MAX_INDENTED_CHARS:
        return text
    indented = json.dumps(data, indent=2, ensure_ascii=False)
    if len(indented) <= MAX_INDENTED_CHARS:
        return indented
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
