"""A job's trigger history (extension): `GET .../jobs/{name}/history`.

The last outcomes the workers settled for the job (app/store/history.py), newest first;
also after a one-shot job has fired and is gone (GET of the job is then a 404), for as
long as the workers' JOBRUNNER_HISTORY_TTL keeps it. A 404 only when there is neither a
job nor a history of that name. Only this API's app: the key is built from its app id.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from app.jobs import errors
from app.jobs.errors import ApiError
from app.jobs.validation import validate_name
from app.store.history import History

history_bp = Blueprint("history", __name__)

_PREFIXES = ("/v1.0-alpha1/jobs", "/v1.0/jobs")


def job_history(name: str) -> Response:
    name = validate_name(name)
    history = History(g.store).read(g.settings.app_id, name)
    if history is None:
        raise ApiError(404, errors.JOB_NOT_FOUND,
                       f"no job and no trigger history of that name: {name}")
    return jsonify(history.to_api())


for _version, _base in enumerate(_PREFIXES):
    # A name cannot hold '/', so `<name>/history` never shadows a job.
    history_bp.add_url_rule(f"{_base}/<anything:name>/history", view_func=job_history,
                            methods=["GET"], endpoint=f"history_{_version}")
