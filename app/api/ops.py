"""Operations endpoints: health, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, g, jsonify, request

from app.api.metrics import attach as attach_metrics
from app.api.metrics import exposition
from app.jobs import errors
from app.jobs.errors import ApiError
from app.store.redis_client import UNAVAILABLE

ops_bp = Blueprint("ops", __name__)
# Counts the requests of every route of the app, and serves GET /v1.0/stats (app/api/metrics.py).
attach_metrics(ops_bp)


@ops_bp.get("/healthz")
def healthz() -> Response:
    try:
        g.store.ping()
    except UNAVAILABLE as exc:
        raise errors.redis_unavailable(str(exc)) from None
    return jsonify({"status": "ok", "appId": g.settings.app_id})


# Dapr's health endpoints (pkg/api/http/healthz.go), which the SDKs wait on at start-up
# (the Python DaprClient polls /v1.0/healthz/outbound for up to 60 s). 204 as Dapr; no
# token needed, as in Dapr.
HEALTH_NOT_READY = "ERR_HEALTH_NOT_READY"
HEALTH_APPID_NOT_MATCH = "ERR_HEALTH_APPID_NOT_MATCH"


@ops_bp.get("/v1.0/healthz")
def dapr_healthz() -> Response:
    """Ready when the store answers; `?appid=` must name this API's app, as in Dapr (a
    service registry checks that the app behind an address is still the same)."""
    appid = request.args.get("appid")
    if appid is not None and appid != g.settings.app_id:
        raise ApiError(503, HEALTH_APPID_NOT_MATCH, "dapr app-id does not match")
    try:
        g.store.ping()
    except UNAVAILABLE as exc:
        raise ApiError(503, HEALTH_NOT_READY,
                       f"dapr is not ready: the job store (Redis) is unavailable: {exc}") from None
    return Response(status=204)


@ops_bp.get("/v1.0/healthz/outbound")
def dapr_healthz_outbound() -> Response:
    """The process is up and can take calls: 204 at once. Not tied to Redis, so that a
    client starts at once and meets a Redis outage as a clear 503 (UNAVAILABLE) per call
    rather than as a minute-long start-up wait."""
    return Response(status=204)


@ops_bp.get("/metrics")
def metrics() -> Response:
    # With Redis unreachable, the API's own metrics are still served (jobrunner_redis_up 0).
    return exposition(g.store)


@ops_bp.get("/openapi.json")
def openapi() -> Response:
    text = resources.files("app.api").joinpath("openapi.json").read_text("utf-8")
    return Response(text, mimetype="application/json")
