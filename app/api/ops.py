"""Operations endpoints: health, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, g, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from app.jobs import errors
from app.store.redis_client import UNAVAILABLE

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
    text = resources.files("app.api").joinpath("openapi.json").read_text("utf-8")
    return Response(text, mimetype="application/json")
