"""The dead-letter queue over HTTP: list, inspect, replay, purge (this API's app only)."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, g, jsonify, request

from app.api.jobs import ms_to_rfc3339
from app.jobs import errors
from app.jobs.model import DeadLetter
from app.jobs.validation import job_to_api
from app.store.deadletters import DeadLetters

deadletters_bp = Blueprint("deadletters", __name__)


def letter_to_api(letter: DeadLetter, with_job: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": letter.id,
        "name": letter.name,
        "scheduledTime": ms_to_rfc3339(letter.sched_ms),
        "deadLetteredTime": ms_to_rfc3339(letter.dead_ms),
        "attempts": letter.attempts,
        "error": letter.error,
    }
    if with_job:
        body["job"] = job_to_api(letter.job, dapr_compat=g.settings.dapr_compat)
    return body


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(request.args.get(name, str(default)))
    except ValueError:
        raise errors.malformed(f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise errors.malformed(f"{name} must be between {lo} and {hi}")
    return value


def _selection(source: dict[str, Any]) -> list[DeadLetter]:
    """Letters named by `ids`, by name `prefix`, or `all`; one of them is required."""
    ids = source.get("ids")
    if ids is not None and (not isinstance(ids, list)
                            or not all(isinstance(i, str) for i in ids)):
        raise errors.malformed("ids must be a list of dead-letter ids")
    prefix = source.get("prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise errors.malformed("prefix must be a string")
    everything = source.get("all") in (True, "true", "1")
    if not ids and prefix is None and not everything:
        raise errors.malformed("say which dead letters: ids, prefix, or all=true")
    return DeadLetters(g.store).select(g.settings.app_id, ids, prefix, everything)


def list_letters() -> Response:
    letters = DeadLetters(g.store).list_letters(
        g.settings.app_id, request.args.get("prefix", ""),
        limit=_int_arg("limit", 100, 1, 1000), offset=_int_arg("offset", 0, 0, 10**9))
    return jsonify({"deadLetters": [letter_to_api(d) for d in letters]})


def get_letter(letter_id: str) -> Response:
    letter = DeadLetters(g.store).get(letter_id)
    if letter is None or letter.app_id != g.settings.app_id:
        raise errors.ApiError(404, errors.JOB_NOT_FOUND, f"no dead letter {letter_id!r}")
    return jsonify(letter_to_api(letter, with_job=True))


def replay_letters() -> Response:
    try:
        body = orjson.loads(request.get_data() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise errors.malformed(str(exc)) from None
    if not isinstance(body, dict):
        raise errors.malformed("the body must be a JSON object")
    return jsonify({"replayed": DeadLetters(g.store).replay(_selection(body))})


def purge_letters() -> Response:
    source: dict[str, Any] = {"ids": request.args.getlist("id") or None,
                              "prefix": request.args.get("prefix"),
                              "all": request.args.get("all")}
    return jsonify({"purged": DeadLetters(g.store).purge(_selection(source))})


for _version, _base in enumerate(("/v1.0-alpha1/deadletters", "/v1.0/deadletters")):
    deadletters_bp.add_url_rule(_base, view_func=list_letters, methods=["GET"],
                                endpoint=f"list_{_version}")
    deadletters_bp.add_url_rule(_base, view_func=purge_letters, methods=["DELETE"],
                                endpoint=f"purge_{_version}")
    deadletters_bp.add_url_rule(f"{_base}/replay", view_func=replay_letters, methods=["POST"],
                                endpoint=f"replay_{_version}")
    deadletters_bp.add_url_rule(f"{_base}/<anything:letter_id>", view_func=get_letter,
                                methods=["GET"], endpoint=f"get_{_version}")
