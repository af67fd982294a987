"""The dead-letter queue over HTTP: list, inspect, replay, purge (this API's app only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from flask import Blueprint, Response, g, jsonify, request

from app.api.query import bool_arg, int_arg, prefix_arg
from app.jobs import errors
from app.jobs.validation import MAX_NAME_LENGTH, too_long_prefix
from app.store.deadletters import MAX_OFFSET, DeadLetters, Selection, letter_to_api

deadletters_bp = Blueprint("deadletters", __name__)

MAX_PAGE = 1000


def _selection(ids: Any, prefix: Any, everything: Any,
               bad: Callable[[str], errors.ApiError] = errors.malformed) -> Selection:
    """Exactly one of a non-empty `ids`, a non-empty `prefix`, or `all` true; an empty
    list or prefix selects nothing, so it is a 400, never "everything". `bad`: the error
    of the body's fields, or of the query's."""
    if ids is not None and (not isinstance(ids, list)
                            or not all(isinstance(i, str) and i for i in ids)):
        raise bad("ids must be a list of dead-letter ids (non-empty strings)")
    if prefix is not None and not isinstance(prefix, str):
        raise bad("prefix must be a string")
    if prefix is not None and len(prefix) > MAX_NAME_LENGTH:
        raise bad(too_long_prefix())
    if everything is not None and not isinstance(everything, bool):
        raise bad("all must be true or false")
    try:
        return Selection.of(ids, prefix, bool(everything), g.settings.max_replay_ids)
    except ValueError as exc:
        raise bad(str(exc)) from None


def list_letters() -> Response:
    try:
        letters, token = DeadLetters(g.store).page(
            g.settings.app_id, prefix_arg() or "",
            limit=int_arg("limit", 100, 1, MAX_PAGE),
            offset=int_arg("offset", 0, 0, MAX_OFFSET),
            token=request.args.get("pageToken", ""))
    except ValueError as exc:
        raise errors.bad_query(str(exc)) from None
    return jsonify({"deadLetters": [letter_to_api(d) for d in letters],
                    "nextPageToken": token})


def get_letter(letter_id: str) -> Response:
    letter = DeadLetters(g.store).get(letter_id, g.settings.app_id)
    if letter is None:
        raise errors.ApiError(404, errors.JOB_NOT_FOUND,
                              f"no dead letter {errors.shown(letter_id, 400)}")
    return jsonify(letter_to_api(letter, with_job=True, dapr_compat=g.settings.dapr_compat,
                                 max_data_bytes=g.settings.max_data_bytes))


def replay_letters() -> Response:
    try:
        body = orjson.loads(request.get_data() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise errors.malformed(str(exc)) from None
    if not isinstance(body, dict):
        raise errors.malformed("the body must be a JSON object")
    selection = _selection(body.get("ids"), body.get("prefix"), body.get("all"))
    return jsonify(DeadLetters(g.store).replay(g.settings.app_id, selection).to_api())


def purge_letters() -> Response:
    selection = _selection(request.args.getlist("id") or None, request.args.get("prefix"),
                           bool_arg("all"), errors.bad_query)
    not_found: list[str] = []
    purged = DeadLetters(g.store).purge(g.settings.app_id, selection, not_found)
    # Of the ids given, those that named no dead letter of the app: said, not a silent 0.
    return jsonify({"purged": purged} | ({"notFound": not_found} if not_found else {}))


for _version, _base in enumerate(("/v1.0-alpha1/deadletters", "/v1.0/deadletters")):
    deadletters_bp.add_url_rule(_base, view_func=list_letters, methods=["GET"],
                                endpoint=f"list_{_version}")
    deadletters_bp.add_url_rule(_base, view_func=purge_letters, methods=["DELETE"],
                                endpoint=f"purge_{_version}")
    deadletters_bp.add_url_rule(f"{_base}/replay", view_func=replay_letters, methods=["POST"],
                                endpoint=f"replay_{_version}")
    deadletters_bp.add_url_rule(f"{_base}/<anything:letter_id>", view_func=get_letter,
                                methods=["GET"], endpoint=f"get_{_version}")
