"""Redis connections, single node or cluster, sync (API) or asyncio (workers).

`sync_client`/`async_client` give redis-py clients (RedisCluster when
`Settings.redis_cluster`), with the fixes for Redis Cluster of app.store.redis_cluster
(scripts in cluster pipelines, pub/sub on a fresh client, ClusterUnreachable)
and the optional replica acknowledgement of app.store.redis_wait (`wait_replicas`:
a write fewer replicas acknowledged raises NotReplicated). UNAVAILABLE lists
the errors that mean Redis is away: the API answers 503 and workers back off.
The client classes and errors are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import redis
import redis.connection
import redis.exceptions
from redis._parsers.base import BaseParser

from app.settings import Settings
from app.store.redis_cluster import (
    AsyncClusterClient,
    ClusterClient,
    ClusterUnreachable,
    reraise_unreachable,
)
from app.store.redis_wait import (
    DEFAULT_WAIT_TIMEOUT_MS,
    AsyncWaitingRedis,
    NotReplicated,
    WaitingRedis,
    WaitPolicy,
    wait_policy,
)

__all__ = [
    "DEFAULT_WAIT_TIMEOUT_MS",
    "REFUSES_WRITES",
    "UNAVAILABLE",
    "AsyncClusterClient",
    "AsyncWaitingRedis",
    "ClusterClient",
    "ClusterUnreachable",
    "MisconfError",
    "NotReplicated",
    "OutOfMemoryError",
    "WaitPolicy",
    "WaitingRedis",
    "async_client",
    "read_together",
    "sync_client",
    "wait_policy",
]

# Fail fast instead of hanging a request: the API answers 503 when Redis is away.
_TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "health_check_interval": 15,
}

class MisconfError(redis.exceptions.ResponseError):
    """MISCONF: Redis cannot write its data to disk (the disk is full, or its folder gone:
    an AOF write or an RDB snapshot failed) and refuses writes until it can again."""


# redis-py has no class of its own for MISCONF (a plain ResponseError): it is given one,
# as it gives OOM and READONLY theirs, in the table every parser (sync, asyncio, hiredis)
# reads.
BaseParser.EXCEPTION_CLASSES.setdefault("MISCONF", MisconfError)

# The errors that mean "Redis is not there right now" rather than "bad request".
# During a cluster failover: ClusterDownError/MasterDownError (CLUSTERDOWN, MASTERDOWN),
# TryAgainError (TRYAGAIN while slots move), SlotNotCoveredError (the client's slot map
# has a hole until it is refreshed). A Redis that is there but refuses writes counts too:
# OutOfMemoryError (OOM: over maxmemory, with no eviction), ReadOnlyError (READONLY: a
# replica) and MisconfError (MISCONF: its disk full). Each passes once memory or disk is
# freed, or a master is back; meanwhile a script changes nothing (Redis refuses its first
# write, and a script that wrote may write on), the API answers 503 and the workers back
# off, as for an outage. (Before, such a write was a 500, and it ended the worker and the
# API's registration heartbeat.)
OutOfMemoryError = redis.exceptions.OutOfMemoryError
REFUSES_WRITES: tuple[type[Exception], ...] = (
    OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    MisconfError,
)
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    *REFUSES_WRITES,
)


def read_together(redis_client: Any, queue: Callable[[Any], None]) -> list[Any]:
    """The replies of the reads `queue(pipe)` adds, in one MULTI: read at one moment. Over
    maxmemory, Redis refuses every command inside a MULTI, reads too; the reads are then
    sent as one pipeline, so that a Redis that is full still answers them. Redis runs a
    client's commands that arrive together back to back, so another client's write falls
    between two of them only when the pipeline arrives in pieces (a few small reads
    rarely do)."""
    pipe = redis_client.pipeline(transaction=True)
    queue(pipe)
    try:
        return cast(list[Any], pipe.execute())
    except OutOfMemoryError:
        pipe = redis_client.pipeline(transaction=False)
        queue(pipe)
        return cast(list[Any], pipe.execute())


def sync_client(settings: Settings, *, wait_replicas: int | None = None,
                wait_timeout_ms: int | None = None) -> Any:
    """A sync client: ClusterClient (redis.cluster.RedisCluster) or WaitingRedis (redis.Redis).

    `wait_replicas`/`wait_timeout_ms` override the settings' wait policy
    (see app.store.redis_wait)."""
    policy = wait_policy(settings, wait_replicas, wait_timeout_ms)
    client: ClusterClient | WaitingRedis
    if settings.redis_cluster:
        try:  # connects at once, to learn the cluster's layout
            client = cast(ClusterClient, ClusterClient.from_url(settings.redis_url, **_TIMEOUTS))
        except redis.exceptions.RedisClusterException as exc:
            reraise_unreachable(exc)
            raise
    else:
        client = cast(WaitingRedis, WaitingRedis.from_url(settings.redis_url, **_TIMEOUTS))
    client.replica_wait = policy
    return client


def async_client(settings: Settings, *, wait_replicas: int | None = None,
                 wait_timeout_ms: int | None = None) -> Any:
    """An asyncio client: AsyncClusterClient or AsyncWaitingRedis (redis.asyncio.Redis)."""
    policy = wait_policy(settings, wait_replicas, wait_timeout_ms)
    if settings.redis_cluster:
        cluster = cast(AsyncClusterClient,
                       AsyncClusterClient.from_url(settings.redis_url, **_TIMEOUTS))
        # Its per-master clients for waited scripts connect as it does.
        cluster.replica_wait, cluster.url, cluster.timeouts = policy, settings.redis_url, _TIMEOUTS
        return cluster
    plain = cast(AsyncWaitingRedis, AsyncWaitingRedis.from_url(settings.redis_url, **_TIMEOUTS))
    plain.replica_wait = policy
    pool = plain.connection_pool
    if _HIREDIS_PACKER is not None:
        pool.connection_class = _packed_by_hiredis(pool.connection_class)  # before it connects
    return plain


# redis-py's own hiredis packer, its sync client's, where this redis-py has one and takes
# the hiredis installed (its asyncio client packs in Python whatever is installed).
_HIREDIS_PACKER: Any = (
    redis.connection.HiredisRespSerializer()
    if getattr(redis.connection, "HIREDIS_AVAILABLE", False)
    and hasattr(redis.connection, "HiredisRespSerializer") else None)


class _HiredisPacking:
    """Packs commands as redis-py's sync client does, with hiredis: the same bytes as its
    asyncio client's Python packer, and the same DataError for an argument Redis cannot
    take. Packing in Python was a twentieth of a worker's CPU per delivery while its claims
    and settlements went through redis-py (they take the loop connection where they can,
    workers/queue.py); it still packs everything else (metrics, registrations) and the
    claims of a client on TLS or a Unix socket."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return cast(list[bytes], _HIREDIS_PACKER.pack(*args))


def _packed_by_hiredis(connection_class: type[Any]) -> type[Any]:
    """`connection_class` (TCP, TLS or Unix socket, as the URL chose) with _HiredisPacking;
    one class per kind, not one per client."""
    packed = _PACKED.get(connection_class)
    if packed is None:
        packed = _PACKED[connection_class] = type(
            connection_class.__name__, (_HiredisPacking, connection_class), {})
    return packed


_PACKED: dict[type[Any], type[Any]] = {}
