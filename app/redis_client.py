"""Redis connections, single node or cluster, sync (API) or asyncio (workers)."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from app.settings import Settings

# Fail fast instead of hanging a request: the API answers 503 when Redis is away.
_TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "health_check_interval": 15,
}


def sync_client(settings: Settings) -> Any:
    """A redis-py client (redis.Redis or redis.cluster.RedisCluster)."""
    if settings.redis_cluster:
        return redis.cluster.RedisCluster.from_url(settings.redis_url, **_TIMEOUTS)
    return redis.Redis.from_url(settings.redis_url, **_TIMEOUTS)


def async_client(settings: Settings) -> Any:
    """An asyncio client (redis.asyncio.Redis or its RedisCluster)."""
    if settings.redis_cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(settings.redis_url, **_TIMEOUTS)
    return redis.asyncio.Redis.from_url(settings.redis_url, **_TIMEOUTS)


# The errors that mean "Redis is not there right now" rather than "bad request".
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError)
