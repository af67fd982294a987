"""Pause, resume and trigger now on a Redis Cluster (3 masters, 12 partitions): an app's
pause and resume go partition by partition, each script on one slot; a real worker and
receiver show that nothing of a paused app fires and everything comes back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from app.api.factory import create_app
from app.settings import Settings
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


@pytest.fixture
def worker(csettings: Settings) -> Iterator[ThreadWorker]:
    with ThreadWorker(csettings) as w:
        yield w


def test_an_app_pauses_and_resumes_over_every_partition(api: FlaskClient, csettings: Settings,
                                                        receiver: Receiver,
                                                        worker: ThreadWorker) -> None:
    assert csettings.partitions == PARTITIONS
    names = [f"job-{i}" for i in range(40)]
    store = Store(csettings)
    assert len({store.keys.partition_of(f"{csettings.app_id}/{n}") for n in names}) > 1
    paused = api.post("/v1.0/app/pause").get_json()
    assert paused["paused"] is True and paused["jobs"] == 0
    for name in names:  # scheduled while the app is paused: each is stored paused
        assert api.post(f"{JOBS}/{name}", json={"dueTime": "0s"}).status_code == 204
    assert api.get(f"{JOBS}/job-0").get_json()["status"] == "paused"
    fired = api.post(f"{JOBS}/job-1/trigger")  # trigger now goes out all the same
    assert fired.status_code == 202
    wait_for(lambda: receiver.received("/job/job-1"), what="the triggered job")
    assert {d.path for d in receiver.received()} == {"/job/job-1"}
    assert sum(store.redis.hlen(pk.paused) for pk in store.keys.all_partitions()) == 40
    assert api.post(f"{JOBS}/job-2/pause").status_code == 200  # and by itself

    resumed = api.post("/v1.0/app/resume").get_json()
    assert resumed == {"appId": csettings.app_id, "paused": False, "pausedTime": None,
                       "jobs": 39}
    wait_for(lambda: {d.path for d in receiver.received()} >= {
        f"/job/{n}" for n in names if n != "job-2"}, what="every job but job-2")
    assert receiver.received("/job/job-2") == []
    assert api.post(f"{JOBS}/job-2/resume").get_json()["status"] in ("scheduled", "in_flight")
    wait_for(lambda: receiver.received("/job/job-2"), what="job-2 once resumed")
    assert len(receiver.received("/job/job-1")) == 2  # the trigger, then its own due time
    store.close()
