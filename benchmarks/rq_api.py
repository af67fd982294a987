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
    queue: Any = None
    if kind == "rq-scheduler":
        from rq_scheduler import Scheduler

        enqueue_at = Scheduler(queue_name=QUEUE, connection=conn).enqueue_at
    else:
        from rq import Queue

        queue = Queue(QUEUE, connection=conn)
        enqueue_at = queue.enqueue_at
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

    @app.post("/v1.0-alpha1/jobs")
    def schedule_many() -> tuple[dict[str, Any], int]:
        """The bulk route's baseline (RQ only): `enqueue_at` of every job in one pipeline,
        as RQ batches its own writes (Queue.enqueue_many does it for jobs queued at once)."""
        body = request.get_json(force=True, silent=True)
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if queue is None or not isinstance(jobs, list):
            return {"errorCode": "ERR_MALFORMED_REQUEST", "message": "no jobs list"}, 400
        results = []
        with conn.pipeline() as pipe:
            for item in jobs:
                due = _parse_due(str(item["dueTime"]))
                due_ms = int(due.timestamp() * 1000)
                queue.enqueue_at(due, deliver, receiver_url, item["name"], due_ms,
                                 pipeline=pipe)
                results.append({"name": item["name"], "status": 204})
            pipe.execute()
        return {"results": results}, 200

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return "ok", 200

    return app
