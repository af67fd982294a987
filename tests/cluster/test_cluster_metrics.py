"""The metrics view on Redis Cluster: the workers' counters (HINCRBY over keys of many
slots, pipelined) and their heartbeats reach /metrics and /v1.0/stats (README: Metrics)."""

from __future__ import annotations

import re
from typing import Any

from app.api.factory import create_app
from app.settings import Settings
from tests.support.receiver import Delivery, Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker


def _fails_for_bad(d: Delivery) -> int:
    return 500 if d.path == "/job/bad" else 200


def test_worker_counters_on_the_cluster(csettings: Settings, receiver: Receiver) -> None:
    receiver.responder = _fails_for_bad
    client = create_app(csettings).test_client()
    for name, extra in (("ok-1", {}), ("ok-2", {}), ("bad", {"failurePolicy": {
            "constant": {"interval": "0s", "maxRetries": 1}}})):
        response = client.post(f"/v1.0/jobs/{name}", json={"dueTime": "0s", **extra})
        assert response.status_code == 204, response.get_data(as_text=True)
    expected = {"delivered": 2, "failed": 2, "retried": 1, "deadLettered": 1, "triggers": 3}
    with ThreadWorker(csettings):
        def counted() -> dict[str, Any] | None:
            response = client.get("/v1.0/stats")
            assert response.status_code == 200, response.get_data(as_text=True)
            doc: dict[str, Any] = response.get_json()
            [app] = doc["apps"]
            window = {k: v for k, v in app["lastMinute"].items() if k != "latenessMs"}
            return doc if window == expected and doc["workersAlive"] == 1 else None

        wait_for(counted, 20, interval=0.05, what="the counters on the cluster")
        text = client.get("/metrics").get_data(as_text=True)
    assert re.search(r'^jobrunner_delivery_attempts_total\{app_id="job-service",'
                     r'result="delivered"\} 2\.0$', text, re.MULTILINE), text
    assert re.search(r"^jobrunner_redis_up 1\.0$", text, re.MULTILINE)
    assert re.search(r'^jobrunner_trigger_lateness_seconds_count\{app_id="job-service"\} 3\.0$',
                     text, re.MULTILINE)
