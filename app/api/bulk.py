"""`POST .../jobs`: many jobs scheduled in one request (beyond Dapr; README, "Scheduling
many jobs in one request").

The body is `{"jobs": [{"name": ..., <the body of POST .../jobs/{name}>}, ...]}`; the
answer, `200 {"results": [...]}`, has one result per job in the order given: the status
that job alone would have got from `POST .../jobs/{name}` (204 stored, 409 exists, 400 or
413 refused, 429 past the app's JOBRUNNER_APP_MAX_JOBS) with that route's `errorCode` and
`message` when it failed. Each job goes through the single route's own steps
(app/api/jobs.py `schedule`): the name first, then `prepare` (`parse_job_request` and
`restore`) on the rest of the job as the body, then the store, whose answer to an
existing name is a 204 when it holds this very job (a retry) and a 409 otherwise. The
jobs are taken one after another in order, so a name given twice meets its own earlier
entry: the later is a 409 unless it has `overwrite` (or is the same job).

What is shared is done once: one clock reading, one Redis round trip (Store.schedule_batch:
one schedule_many.lua call per partition), and jobs with the same body but their name
(a batch of alike jobs) are read once, the name being checked on its own (the result
of reading a body does not depend on the name, which is checked before it).

The request itself is refused (4xx, Dapr-style error body) when it is not a JSON object
with a `jobs` list, has more than JOBRUNNER_BULK_MAX_JOBS jobs, or a body over
JOBRUNNER_BULK_MAX_BYTES.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import orjson
from flask import Blueprint, Response, g, request

from app.api.jobs import prepare
from app.jobs import errors
from app.jobs.clock import now_ms
from app.jobs.errors import ApiError, malformed
from app.jobs.model import Job
from app.jobs.validation import (
    TOO_DEEP,
    json_kind,
    raw_member,
    same_request,
    validate_name,
)
from app.settings import Settings

log = logging.getLogger("jobrunner.api")

bulk_bp = Blueprint("bulk", __name__)

# The route's paths (POST), as app/api/jobs.py's collections; the API server reads
# bodies up to JOBRUNNER_BULK_MAX_BYTES on these only (app/processes/serve.py).
PATHS = ("/v1.0-alpha1/jobs", "/v1.0/jobs")
_STORED = 204

# A job read from its body: (the job, overwrite, its record, its run state or "").
_Read = tuple[Job, bool, bytes, str]


def schedule_jobs() -> Response:
    settings: Settings = g.settings
    # The bulk body may be larger than any other route's (app.config's limit).
    request.max_content_length = settings.bulk_max_bytes
    body = request.get_data(cache=False)
    items = _items(body, settings.bulk_max_jobs)
    texts = _item_texts(body) if settings.dapr_compat else None
    now = now_ms()
    reads: dict[bytes, _Read | ApiError] = {}
    results: list[dict[str, Any]] = []
    # Per job to store: (its index in results, name, the job, overwrite, record, run).
    accepted: list[tuple[int, str, Job, bool, bytes, str]] = []
    for n, item in enumerate(items):
        given = item.get("name") if isinstance(item, dict) else None
        # Only a string is given back: a name nested deep could not be written in the
        # answer (orjson stops at 255 levels), once the other jobs were stored.
        results.append({"name": given if isinstance(given, str) else None,
                        "status": _STORED})
        try:
            name, job_body = _split(item, None if texts is None else texts[n])
        except ApiError as exc:
            _refuse(results[n], exc)
            continue
        read = reads.get(job_body)
        if read is None:
            read = reads[job_body] = _read(settings, name, job_body, now)
        if isinstance(read, ApiError):  # kept, not raised again: its traceback would grow
            _refuse(results[n], read)
            continue
        job, overwrite, record, run = read
        accepted.append((n, name, job, overwrite, record, run))
    existing = g.store.schedule_batch(
        settings.app_id, [(name, record, job.first_ms, overwrite, run)
                          for _, name, job, overwrite, record, run in accepted])
    for (n, name, job, _, _, _), stored in zip(accepted, existing, strict=True):
        if stored is None:
            continue
        if isinstance(stored, ApiError):  # the app holds as many jobs as it may
            _refuse(results[n], stored)
            continue
        # A retry of a request whose answer was lost finds its own job (jobs.schedule).
        try:
            if not same_request(Job.decode(job.app_id, name, stored),
                                dataclasses.replace(job, name=name)):
                _refuse(results[n], errors.job_exists(name))
        except ApiError as exc:  # the stored one cannot be read: said for this job alone
            _refuse(results[n], exc)
    if log.isEnabledFor(logging.DEBUG):
        refused = sum(1 for r in results if r["status"] != _STORED)
        log.debug("scheduled %d of %d jobs in one request (%d refused)",
                  len(results) - refused, len(results), refused)
    return Response(orjson.dumps({"results": results}), mimetype="application/json")


def _refuse(result: dict[str, Any], error: ApiError) -> None:
    result.update(status=error.status, errorCode=error.code, message=error.message)
    if error.status == 500:  # a stored job this version cannot read: the operator's, logged
        log.error("%s %s: %s", request.method, request.path, error.message)  # as the API's


def _items(body: bytes, max_jobs: int) -> list[Any]:
    """The request's `jobs` list; ApiError when the request is not one."""
    try:
        decoded = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as exc:
        raise malformed(f"invalid JSON: {exc}") from None
    jobs = decoded.get("jobs") if isinstance(decoded, dict) else None
    if not isinstance(jobs, list):
        raise malformed('the body must be a JSON object with a "jobs" list: '
                        '{"jobs": [{"name": "...", "dueTime": "..."}, ...]}')
    if len(jobs) > max_jobs:
        raise ApiError(400, errors.MALFORMED_REQUEST,
                       f"at most {max_jobs} jobs per request (JOBRUNNER_BULK_MAX_JOBS), "
                       f"got {len(jobs)}: send several requests")
    return jobs


def _split(item: Any, text: str | None) -> tuple[str, bytes]:
    """(the job's name, validated; the rest of it as the body of POST .../jobs/{name}).
    `text`: the item's JSON text as given (an app in Dapr compatibility mode keeps its
    data's text as given, app/jobs/validation.py)."""
    if not isinstance(item, dict):
        raise malformed(f"each job must be a JSON object, got {json_kind(item)}")
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise malformed(f"name must be a string, got {json_kind(name)}")
    name = validate_name(name or "")  # first, as the single route checks its URL's
    rest = {k: v for k, v in item.items() if k != "name" and (text is None or k != "data")}
    try:
        body = orjson.dumps(rest)
    except orjson.JSONEncodeError:  # nested past the 254 levels orjson writes
        try:  # written as the single route's body would be, for the same answer
            body = json.dumps(rest, ensure_ascii=False).encode()
        except RecursionError:
            raise malformed(TOO_DEEP) from None
    if text is not None and "data" in item:
        data = raw_member(text, "data").encode()
        body = b'{"data":' + data + (b"," + body[1:] if len(body) > 2 else b"}")
    return name, body


def _read(settings: Settings, name: str, body: bytes, now: int) -> _Read | ApiError:
    """The job of `body` (as app/api/jobs.py `schedule` reads it), or the error that
    refuses it; the same for any valid name but the job's `name`."""
    try:
        job, overwrite, run = prepare(settings, name, body, None, now)
    except ApiError as exc:
        return exc
    return job, overwrite, job.encode(), "" if run is None else run.encode()


_SCAN = json.JSONDecoder()


def _item_texts(body: bytes) -> list[str]:
    """The JSON text of each entry of the body's `jobs` list, as given (the last `jobs`
    when the key repeats, as orjson reads it). The body is known to be such a list."""
    try:
        return _texts(body)
    except RecursionError:  # Python's scanner stops near 1,000 levels, orjson's at 1,024
        raise malformed(TOO_DEEP) from None


def _texts(body: bytes) -> list[str]:
    text = raw_member(body.decode("utf-8"), "jobs")
    texts: list[str] = []
    pos = _skip_space(text, 1)
    while text[pos] != "]":
        start = pos
        _, pos = _SCAN.raw_decode(text, pos)
        texts.append(text[start:pos])
        pos = _skip_space(text, pos)
        if text[pos] == ",":
            pos = _skip_space(text, pos + 1)
    return texts


def _skip_space(text: str, pos: int) -> int:
    while text[pos] in " \t\n\r":  # JSON's whitespace
        pos += 1
    return pos


for _version, _base in enumerate(PATHS):
    bulk_bp.add_url_rule(_base, view_func=schedule_jobs, methods=["POST"],
                         endpoint=f"schedule_many_{_version}")
