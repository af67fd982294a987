"""The Dapr jobs API (schedule, get, delete) and its list/prefix extensions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from app.api.query import int_arg, prefix_arg
from app.jobs import errors
from app.jobs.clock import now_ms
from app.jobs.errors import ApiError
from app.jobs.model import Job, RunState
from app.jobs.restore import restore
from app.jobs.validation import (
    parse_job_request,
    same_request,
    validate_name,
)
from app.settings import Settings
from app.store.store import JobExists, JobView, Store

jobs_bp = Blueprint("jobs", __name__)

_PREFIXES = ("/v1.0-alpha1/jobs", "/v1.0/jobs")
# POST .../jobs/{name}/{action} (app/api/controls.py); a name cannot hold '/'.
CONTROL_ACTIONS = ("pause", "resume", "trigger")
# The environ entry where app/api/fast_schedule.py leaves an error for schedule_job.
HANDED_OVER = "jobrunner.schedule_error"
MAX_PAGE = 1000


def _empty(status: int = 204) -> Response:
    response = Response(status=status)
    del response.headers["Content-Type"]  # no body, so no type (Flask would say text/html)
    return response


def view_to_api(view: JobView) -> dict[str, Any]:
    return view.to_api(dapr_compat=g.settings.dapr_compat,
                       max_data_bytes=g.settings.max_data_bytes)


def prepare(settings: Settings, name: str, body: bytes, content_type: str | None,
            now: int | None = None, *,
            check_data: bool = True) -> tuple[Job, bool, RunState | None]:
    """(the job, overwrite, the run state to start it from) of a schedule request for
    the job `name` (validated), read at `now` (epoch ms; default the clock's); raises
    ApiError. `check_data=False`: the caller checks that the data can be delivered
    (anydata.renders_value), off its event loop."""
    now = now_ms() if now is None else now
    job, overwrite = parse_job_request(
        name, body, content_type, settings.app_id, now, settings.max_data_bytes,
        dapr_compat=settings.dapr_compat,
        max_delivery_timeout_ms=int(settings.max_job_delivery_timeout_s * 1000),
        delivery_format=settings.body_format if check_data else None,
    )
    # A job put back where it stood (nextTriggerTime...: jobrunner jobs import).
    job, run = restore(body, job, now)
    return job, overwrite, run


def schedule(settings: Settings, store: Store, name: str, body: bytes,
             content_type: str | None) -> None:
    """Schedule the job `name` (validated) from a request's body: the work of POST
    .../jobs/{name}, for the view below and its shortcut (app/api/fast_schedule.py)."""
    job, overwrite, run = prepare(settings, name, body, content_type)
    try:
        store.schedule(job, overwrite=overwrite, run=run)
    except JobExists:
        # A retry of a request whose answer was lost (a 503 or a timeout while Redis
        # stalled may still have stored it) finds its own job: answered as stored.
        stored = store.get(job.app_id, job.name)
        if stored is None or not same_request(stored.job, job):
            raise errors.job_exists(name) from None


def _name(name: str) -> str:
    """The job name of a job route's path; a job's pause, resume or trigger path, which
    the router gives these routes for methods other than POST, is a 405."""
    job, slash, action = name.rpartition("/")
    if slash and job and action in CONTROL_ACTIONS:
        raise MethodNotAllowed(valid_methods=["POST"])
    return validate_name(name)


def schedule_job(name: str) -> Response:
    name = _name(name)
    # An error the shortcut met on this very request, raised here for Flask to answer.
    handed_over = request.environ.pop(HANDED_OVER, None)
    if handed_over is not None:
        raise handed_over
    schedule(g.settings, g.store, name, request.get_data(cache=False),
             request.headers.get("Content-Type"))
    return _empty()


def get_job(name: str) -> Response:
    name = _name(name)
    view = g.store.get(g.settings.app_id, name)
    if view is None:
        raise errors.job_not_found(name)
    return _json(view_to_api(view))


def delete_job(name: str) -> Response:
    name = _name(name)
    g.store.delete(g.settings.app_id, name)
    return _empty()


def list_jobs() -> Response:
    prefix = prefix_arg() or ""
    limit = int_arg("limit", 100, 1, MAX_PAGE)
    try:
        views, token = g.store.list_jobs(g.settings.app_id, prefix,
                                    request.args.get("pageToken", ""), limit)
    except ValueError as exc:
        raise errors.bad_query(str(exc)) from None
    return _json({"jobs": [view_to_api(v) for v in views], "nextPageToken": token})


def delete_jobs_by_prefix() -> Response:
    prefix = prefix_arg()
    if prefix is None:
        raise ApiError(400, errors.MALFORMED_REQUEST,
                       "deleting by prefix needs ?prefix= (an empty prefix deletes every job)")
    deleted = g.store.delete_prefix(g.settings.app_id, prefix)
    return _json({"deleted": deleted})


def _json(payload: Any) -> Response:
    return jsonify(payload)


def blank_name() -> Response:
    validate_name("")  # raises the blank-name error
    return _empty()


for _version, _base in enumerate(_PREFIXES):
    jobs_bp.add_url_rule(f"{_base}/", view_func=blank_name,
                         methods=["POST", "PUT", "GET", "DELETE"], endpoint=f"blank_{_version}")
    # `anything:` so that a name with '/' or a newline reaches validation (a clear 400).
    jobs_bp.add_url_rule(f"{_base}/<anything:name>", view_func=schedule_job,
                         methods=["POST", "PUT"], endpoint=f"schedule_{_version}")
    jobs_bp.add_url_rule(f"{_base}/<anything:name>", view_func=get_job, methods=["GET"],
                         endpoint=f"get_{_version}")
    jobs_bp.add_url_rule(f"{_base}/<anything:name>", view_func=delete_job, methods=["DELETE"],
                         endpoint=f"delete_{_version}")
    jobs_bp.add_url_rule(_base, view_func=list_jobs, methods=["GET"], endpoint=f"list_{_version}")
    jobs_bp.add_url_rule(_base, view_func=delete_jobs_by_prefix, methods=["DELETE"],
                         endpoint=f"deleteprefix_{_version}")
