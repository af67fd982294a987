"""Fixtures for the Redis Cluster tests: a private 3-master, 3-replica cluster.

`cluster` is shared by the whole session (tests only add keys under their own
prefix); `failover_cluster` is a second one for the tests that kill masters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import pytest

from app.settings import Settings
from tests.support.cluster import RedisCluster, cluster_binaries
from tests.support.receiver import Receiver

PARTITIONS = 12

@dataclass(frozen=True)
class WaitSettings(Settings):
    """Settings with the replica-acknowledgement fields that app/settings.py does not have
    yet (JOBRUNNER_WAIT_REPLICAS, JOBRUNNER_WAIT_TIMEOUT_MS); app/redis_wait.py reads
    them from any Settings that has them."""

    wait_replicas: int = 1
    wait_timeout_ms: int = 500


def cluster_settings(cluster: RedisCluster, receiver: Receiver, wait_replicas: int = 0,
                     **overrides: Any) -> Settings:
    """Settings on `cluster` (one master's URL: the client discovers the rest), with
    12 partitions and a key prefix of this test's own."""
    values: dict[str, Any] = {
        "redis_url": cluster.url,
        "redis_cluster": True,
        "partitions": PARTITIONS,
        "prefix": f"c{uuid.uuid4().hex[:10]}",
        "app_url": receiver.url,
        "delivery_timeout_s": 2.0,
        "lease_s": 5.0,
        "idle_poll_s": 0.2,
        **overrides,
    }
    if wait_replicas or "wait_timeout_ms" in values:
        values["wait_replicas"] = wait_replicas
        return WaitSettings(**values)
    return Settings(**{k: v for k, v in values.items()
                       if k in {f.name for f in fields(Settings)}})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cluster_binaries() is not None:
        return
    skip = pytest.mark.skip(reason="Redis Cluster tests need a redis-server and its redis-cli")
    for item in items:
        if "tests/cluster/" in str(item.path).replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    c = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def failover_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A cluster of its own for tests that kill masters (each restarts its victim)."""
    c = RedisCluster(tmp_path_factory.mktemp("failover-cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def csettings(cluster: RedisCluster, receiver: Receiver) -> Settings:
    return cluster_settings(cluster, receiver)
