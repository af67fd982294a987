"""Trigger history on a Redis Cluster (3 masters, 12 partitions): each job's history key
is in its partition's slot, so ack.lua records an outcome in the call that settles it on
whichever master holds the job, and delete.lua removes it there; a real worker delivers
to a real receiver."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from redis.crc import key_slot

from app.api.factory import create_app
from app.settings import Settings
from app.store.keys import job_id
from app.store.store import Store
from tests.cluster.conftest import PARTITIONS
from tests.support.receiver import Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker

pytestmark = pytest.mark.usefixtures("reap_workers")

JOBS = "/v1.0/jobs"


@pytest.fixture
def api(csettings: Settings) -> FlaskClient:
    return create_app(csettings).test_client()


def test_history_over_every_partition(api: FlaskClient, csettings: Settings,
                                      receiver: Receiver) -> None:
    assert csettings.partitions == PARTITIONS
    store = Store(csettings)
    names = [f"h-{i}" for i in range(36)]
    parts = {store.keys.partition_of(job_id(csettings.app_id, n)) for n in names}
    assert len(parts) > 3  # over several masters
    for name in names:
        jid = job_id(csettings.app_id, name)
        pk = store.keys.for_job(jid)
        assert key_slot(pk.history(jid).encode()) == key_slot(pk.jobs.encode())
    with ThreadWorker(csettings):
        for name in names[:18]:  # one-shot: over once delivered
            assert api.post(f"{JOBS}/{name}", json={"dueTime": "0s"}).status_code == 204
        for name in names[18:]:  # recurring: the job and its history stay
            assert api.post(f"{JOBS}/{name}", json={"dueTime": "0s",
                                                    "schedule": "@every 1h"}).status_code == 204

        def recorded() -> bool:
            for name in names:
                body = api.get(f"{JOBS}/{name}/history").get_json()
                if not body or len(body.get("history", [])) != 1:
                    return False
            return True

        wait_for(recorded, 20, interval=0.1, what="an outcome in every job's history")
    over = api.get(f"{JOBS}/h-0/history").get_json()
    assert over["jobExists"] is False and over["keptUntil"] is not None
    assert over["history"][0]["result"] == "delivered"
    live = api.get(f"{JOBS}/h-20/history").get_json()
    assert live["jobExists"] is True and live["keptUntil"] is None

    assert api.delete(f"{JOBS}?prefix=h-").get_json() == {"deleted": 18}
    assert api.get(f"{JOBS}/h-20/history").status_code == 404  # deleted with its job
    assert api.get(f"{JOBS}/h-0/history").status_code == 200  # over already: it expires
    assert api.delete(f"{JOBS}/h-0").status_code == 204
    assert api.get(f"{JOBS}/h-0/history").status_code == 404
    store.close()
