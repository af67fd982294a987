"""The "schedule a job" form, turned into the body the HTTP API takes, so that a job
scheduled from the dashboard goes through the API's own validation
(app.jobs.validation.parse_job_request) and means exactly what the same POST would."""

from __future__ import annotations

import json
from collections.abc import Mapping

import orjson

from app.jobs import errors
from app.jobs.errors import ApiError

# The form's fields, and the most characters each takes (data: the data limit applies).
TEXT_FIELDS = {"name": 1024, "schedule": 1024, "dueTime": 256, "ttl": 256, "repeats": 32,
               "policy": 16, "interval": 256, "maxRetries": 32}
POLICIES = ("default", "drop", "constant")


def form_values(form: Mapping[str, str]) -> dict[str, str]:
    """The form as sent, each field cut to its bound (to show it again with an error)."""
    values = {k: form.get(k, "")[:bound] for k, bound in TEXT_FIELDS.items()}
    values["data"] = form.get("data", "")
    values["overwrite"] = "on" if form.get("overwrite") else ""
    return values


def to_request(values: Mapping[str, str], max_data_bytes: int) -> tuple[str, bytes]:
    """(job name, JSON body of the schedule request). Raises ApiError for what the form
    itself gets wrong; the API's validation checks the rest."""
    for key, bound in TEXT_FIELDS.items():
        if len(values.get(key, "")) > bound:
            raise errors.malformed(f"{key} is longer than {bound} characters")
    fields: list[tuple[str, bytes]] = []
    for key in ("schedule", "dueTime", "ttl"):
        if text := values.get(key, "").strip():
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
    if values.get("overwrite"):
        fields.append(("overwrite", b"true"))
    data = values.get("data", "")
    if data.strip():
        if len(data.encode()) > max_data_bytes:
            raise ApiError(413, errors.PAYLOAD_TOO_LARGE,
                           f"data is larger than {max_data_bytes} bytes")
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
