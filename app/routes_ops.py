"""Operations endpoints: health, Prometheus metrics, the OpenAPI document, dead letters."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from app import errors
from app.redis_client import UNAVAILABLE

ops_bp = Blueprint("ops", __name__)

STORED = Gauge("jobrunner_store_size", "Sizes of the store", ["what"])


@ops_bp.get("/healthz")
def healthz() -> Response:
    try:
        g.store.ping()
    except UNAVAILABLE as exc:
        raise errors.redis_unavailable(str(exc)) from None
    return jsonify({"status": "ok", "appId": g.settings.app_id})


@ops_bp.get("/metrics")
def metrics() -> Response:
    try:
        for what, value in g.store.counts().items():
            STORED.labels(what).set(value)
    except UNAVAILABLE:
        pass  # the process metrics are still worth serving
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


@ops_bp.get("/openapi.json")
def openapi() -> Response:
    text = resources.files("app").joinpath("openapi.json").read_text("utf-8")
    return Response(text, mimetype="application/json")


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(request.args.get(name, str(default)))
    except ValueError:
        raise errors.malformed(f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise errors.malformed(f"{name} must be between {lo} and {hi}")
    return value


@ops_bp.get("/v1.0-alpha1/deadletters")
def list_dead_letters() -> Response:
    limit = _int_arg("limit", 100, 1, 1000)
    offset = _int_arg("offset", 0, 0, 10**9)
    letters = g.store.dead_letters(g.settings.app_id, limit=limit, offset=offset)
    return jsonify({"deadLetters": [
        {"id": d.id, "name": d.name, "scheduledMs": d.sched_ms, "attempts": d.attempts,
         "error": d.error, "deadMs": d.dead_ms}
        for d in letters
    ]})
