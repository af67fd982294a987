"""Pause, resume and trigger now (extensions; README, "Pause, resume and catch-up").

    POST .../jobs/{name}/pause     200, the job as GET answers it (`paused: true`)
    POST .../jobs/{name}/resume    200, the job as GET answers it
    POST .../jobs/{name}/trigger   202, {"name", "triggerId", "scheduledTime"}
    GET  .../app                   200, {"appId", "paused", "pausedTime"}
    POST .../app/pause             200, the same, with "jobs": how many it paused
    POST .../app/resume            200, the same, with "jobs": how many it resumed

`...` is /v1.0 or /v1.0-alpha1, as for the jobs API; only this API's app. A name cannot
hold '/', so `{name}/pause` never shadows a job. Each is idempotent but trigger: pausing a
paused job, or resuming one that is not paused, changes nothing.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from app.api.jobs import CONTROL_ACTIONS, view_to_api
from app.jobs import errors
from app.jobs.validation import validate_name
from app.store.pauses import Pauses
from app.store.store import rfc3339

controls_bp = Blueprint("controls", __name__)
ENDED = "ended"  # the status a resume that ended its job answers with

_VERSIONS = ("/v1.0-alpha1", "/v1.0")


def _job_answer(name: str) -> Response:
    view = g.store.get(g.settings.app_id, name)
    if view is None:
        raise errors.job_not_found(name)
    return jsonify(view_to_api(view))


def pause_job(name: str) -> Response:
    name = validate_name(name)
    if not Pauses(g.store).pause_job(g.settings.app_id, name):
        raise errors.job_not_found(name)
    return _job_answer(name)


def resume_job(name: str) -> Response:
    name = validate_name(name)
    before = g.store.get(g.settings.app_id, name)
    if before is None or not Pauses(g.store).resume_job(g.settings.app_id, name):
        raise errors.job_not_found(name)
    view = g.store.get(g.settings.app_id, name)
    if view is not None:
        return jsonify(view_to_api(view))
    # The resume ended it (a `skip` job whose ttl ran out while it was paused): the job as
    # it was, ended (a 404 said there was no job to resume).
    body = view_to_api(before)
    body.pop("paused", None)
    body.update(status=ENDED, nextTriggerTime=None)
    return jsonify(body)


def trigger_job(name: str) -> Response:
    name = validate_name(name)
    fired = Pauses(g.store).trigger(g.settings.app_id, name)
    if fired is None:
        raise errors.job_not_found(name)
    response = jsonify({"name": name, "triggerId": fired.trigger_id,
                        "scheduledTime": rfc3339(fired.due_ms)})
    response.status_code = 202
    return response


def _app_state(**more: Any) -> Response:
    since = Pauses(g.store).app_paused_since(g.settings.app_id)
    return jsonify({"appId": g.settings.app_id, "paused": since is not None,
                    "pausedTime": rfc3339(since), **more})


def get_app() -> Response:
    return _app_state()


def pause_app() -> Response:
    return _app_state(jobs=Pauses(g.store).pause_app(g.settings.app_id))


def resume_app() -> Response:
    return _app_state(jobs=Pauses(g.store).resume_app(g.settings.app_id))


for _version, _base in enumerate(_VERSIONS):
    for _action, _view in zip(CONTROL_ACTIONS, (pause_job, resume_job, trigger_job),
                              strict=True):
        controls_bp.add_url_rule(f"{_base}/jobs/<anything:name>/{_action}", view_func=_view,
                                 methods=["POST"], endpoint=f"{_action}_job_{_version}")
    controls_bp.add_url_rule(f"{_base}/app", view_func=get_app, methods=["GET"],
                             endpoint=f"app_{_version}")
    controls_bp.add_url_rule(f"{_base}/app/pause", view_func=pause_app, methods=["POST"],
                             endpoint=f"pause_app_{_version}")
    controls_bp.add_url_rule(f"{_base}/app/resume", view_func=resume_app, methods=["POST"],
                             endpoint=f"resume_app_{_version}")
