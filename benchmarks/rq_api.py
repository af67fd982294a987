"""The schedule-over-HTTP baseline: the same route as jobrunner's API, in Flask, that
schedules with RQ (`Queue.enqueue_at`) or rq-scheduler (`Scheduler.enqueue_at`).

Served by gunicorn with the Procfile's own `web` options:
    gunicorn "benchmarks.rq_api:create_app()"   (env REDIS_URL, BENCH_RQ_KIND)
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Flask, Response, request

from benchmarks.rq_jobs import deliver

QUEUE = "bench"


def _parse_due(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def create_app() -> Flask:
    kind = os.environ.get("BENCH_RQ_KIND", "rq")
    conn = redis.Redis.from_url(os.environ["REDIS_URL"])
    receiver_url = os.environ.get("APP_URL", "http://127.0.0.1:6200")
    enqueue_at: Any
    if kind == "rq-scheduler":
        from rq_scheduler import Scheduler

        enqueue_at = Scheduler(queue_name=QUEUE, connection=conn).enqueue_at
    else:
        from rq import Queue

        enqueue_at = Queue(QUEUE, connection=conn).enqueue_at
    app = Flask("rq-baseline")

    @app.post("/v1.0-alpha1/jobs/<name>")
    def schedule(name: str) -> Response | tuple[dict[str, str], int]:
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict) or "dueTime" not in body:
            return {"errorCode": "ERR_MALFORMED_REQUEST", "message": "dueTime missing"}, 400
        due = _parse_due(str(body["dueTime"]))
        due_ms = int(due.timestamp() * 1000)
        enqueue_at(due, deliver, receiver_url, name, due_ms)
        return Response(status=204)

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return "ok", 200

    return app
