"""Redis Cluster clients: redis-py's, with these fixes and additions:

- Scripts in cluster pipelines. redis-py refuses EVALSHA in a cluster pipeline;
  `Store.schedule_many` pipelines the schedule script. Our cluster client's
  pipeline sends a script call as EVAL with the script's source (each node
  caches it like SCRIPT LOAD would), routed by the script's first key.
- Pub/sub on a fresh asyncio cluster client: redis-py chooses the node from a
  slot map that is empty before the first command (a bare KeyError); ours loads
  it first, and relearns the layout when the node it listened to died.
- "Unavailable" errors: redis-py reports a cluster it cannot reach at all as a
  RedisClusterException; ours raise ClusterUnreachable (a ConnectionError), and
  app.store.redis_client's UNAVAILABLE covers the errors of a failover (CLUSTERDOWN,
  TRYAGAIN, a slot missing from the map), so the API answers 503 and workers
  back off.
- The replica acknowledgement of app.store.redis_wait, each script call and its WAIT
  sent on one connection to the master of the script's slot.
- Connections closed under a call: redis-py's asyncio client closes itself to relearn the
  layout while other calls use its nodes' connections; ours closes each busy connection
  when its call is over, and a write on a connection closed meanwhile anyway (a failed
  relearning closes them all) fails as ConnectionError, not AttributeError.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.cluster
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.store.redis_wait import READ_ONLY_SHAS, WaitPolicy


class ClusterUnreachable(redis.ConnectionError):
    """No node of the cluster answered (redis-py reports it as RedisClusterException)."""


def reraise_unreachable(exc: redis.exceptions.RedisClusterException) -> None:
    """Raise ClusterUnreachable for redis-py's "Redis Cluster cannot be connected" (its cause
    is the ConnectionError or TimeoutError of the last node tried); return otherwise."""
    if isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError)):
        raise ClusterUnreachable(str(exc)) from exc


# Server replies that prove a command did not run on that node: safe to send it again.
_REDIRECTS: tuple[type[Exception], ...] = (
    redis.exceptions.MovedError,  # (AskError is its base)
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)
_ATTEMPTS = 4

# Script sources by SHA1, for cluster pipelines (EVAL instead of EVALSHA).
_SOURCES: dict[str, str] = {}


def _remember(source: Any) -> None:
    if isinstance(source, str):
        _SOURCES[hashlib.sha1(source.encode()).hexdigest()] = source


def _loaded_here(sha: str, reply: Any) -> tuple[str, str] | None:
    """("EVAL", source) to send again a script call that met NOSCRIPT (its node does not
    have it yet: a replica promoted since, a restarted master). redis-py answers NOSCRIPT
    with SCRIPT LOAD on every master, which waits for a master that does not answer: a
    stalled one held up every call of a script some master had not run yet. EVAL caches
    the script on the key's node only."""
    source = _SOURCES.get(sha)
    if isinstance(reply, redis.exceptions.NoScriptError) and source is not None:
        return "EVAL", source
    return None


def _first_key(numkeys: int, keys_and_args: Sequence[Any]) -> Any:
    if numkeys < 1:
        raise redis.exceptions.RedisClusterException(
            "a script run with WAIT needs a key to find its node")
    return keys_and_args[0]


# -- sync, cluster ------------------------------------------------------------


class _ScriptingClusterPipeline(redis.cluster.ClusterPipeline):
    """A cluster pipeline that runs scripts (EVAL with the source, routed by the first key).

    With a wait policy, a pipeline of scripts runs node by node instead, each node's
    scripts and their WAIT on one connection (mixing other commands in is refused)."""

    client: ClusterClient
    queued: list[tuple[str, int, tuple[Any, ...]]]

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        if self.client.replica_wait is not None and sha not in READ_ONLY_SHAS:
            self.queued.append((sha, numkeys, keys_and_args))
            return self
        queue: Any = self  # redis-py leaves execute_command untyped
        source = _SOURCES.get(sha)
        if source is None:
            return queue.execute_command("EVALSHA", sha, numkeys, *keys_and_args)
        return queue.execute_command("EVAL", source, numkeys, *keys_and_args)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        queued, self.queued = self.queued, []
        if not queued:
            try:
                return list(super().execute(raise_on_error))
            except redis.exceptions.RedisClusterException as exc:
                reraise_unreachable(exc)
                raise
        if len(self):  # other commands queued beside the waited scripts
            self.reset()  # type: ignore[no-untyped-call]
            raise redis.exceptions.RedisClusterException(
                "with wait_replicas, a cluster pipeline may hold scripts only")
        results = self.client.run_scripts_waiting(queued)
        if raise_on_error:
            for r in results:
                if isinstance(r, Exception):
                    raise r
        return results


class ClusterClient(redis.cluster.RedisCluster):
    """redis-py's RedisCluster with script pipelines and the optional wait policy."""

    replica_wait: WaitPolicy | None = None

    def register_script(self, script: Any) -> Any:
        _remember(script)
        return super().register_script(script)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        if type(pipe) is not redis.cluster.ClusterPipeline:
            return pipe
        # redis-py blocks EVALSHA on ClusterPipeline; same object, our subclass's methods.
        pipe.__class__ = _ScriptingClusterPipeline
        assert isinstance(pipe, _ScriptingClusterPipeline)
        pipe.client, pipe.queued = self, []
        return pipe

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.exceptions.RedisClusterException as exc:
            reraise_unreachable(exc)
            raise

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        if self.replica_wait is not None and sha not in READ_ONLY_SHAS:
            return self.run_scripts_waiting([(sha, numkeys, keys_and_args)], single=True)[0]
        try:
            return super().evalsha(sha, numkeys, *keys_and_args)
        except redis.exceptions.NoScriptError as exc:
            command = _loaded_here(sha, exc)
            if command is None:
                raise
            return self.execute_command(*command, numkeys, *keys_and_args)

    def run_scripts_waiting(self, calls: list[tuple[str, int, tuple[Any, ...]]],
                            single: bool = False) -> list[Any]:
        """Run script calls grouped by the master of their slot, each group followed by
        WAIT on the same connection. Returns results in order (exceptions in place,
        unless `single`, where the exception is raised)."""
        policy = self.replica_wait
        assert policy is not None
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        with_source: set[int] = set()  # calls whose node did not have their script
        for attempt in range(_ATTEMPTS):
            noscript: set[int] = set()  # this round's: sent again at once, as EVAL
            groups: dict[str, tuple[Any, list[int]]] = {}
            for i in todo:
                sha, numkeys, keys_and_args = calls[i]
                node = self.get_node_from_key(  # type: ignore[no-untyped-call]
                    _first_key(numkeys, keys_and_args))
                groups.setdefault(node.name, (node, []))[1].append(i)
            redirected: list[int] = []
            for name, (node, idxs) in groups.items():
                pipe = node.redis_connection.pipeline(transaction=False)
                for i in idxs:
                    sha, numkeys, keys_and_args = calls[i]
                    if single and i not in with_source:
                        pipe.execute_command("EVALSHA", sha, numkeys, *keys_and_args)
                    else:
                        source = _SOURCES.get(sha)
                        command = ("EVAL", source) if source is not None else ("EVALSHA", sha)
                        pipe.execute_command(*command, numkeys, *keys_and_args)
                pipe.execute_command("WAIT", policy.replicas, policy.timeout_ms)
                try:
                    out = pipe.execute(raise_on_error=False)
                except (redis.ConnectionError, redis.TimeoutError):
                    # The node is gone (a dead master): learn the new owners for the next
                    # call; this one may or may not have run, so it is not sent again.
                    self._refresh()
                    raise
                *replies, acked = out
                for i, reply in zip(idxs, replies, strict=True):
                    if isinstance(reply, _REDIRECTS):
                        redirected.append(i)
                    elif i not in with_source and _loaded_here(calls[i][0], reply):
                        with_source.add(i)
                        noscript.add(i)
                        redirected.append(i)
                    else:
                        try:
                            results[i] = policy.check(reply, acked, name)
                        except Exception as exc:
                            if single:
                                raise
                            results[i] = exc
            if not redirected:
                return results
            todo = redirected
            if not noscript.issuperset(redirected):  # (a slot moved: learn where to)
                self._refresh()
                time.sleep(0.05 * 2 ** attempt)
        raise redis.exceptions.ClusterDownError(
            f"{len(todo)} script call(s) still redirected after {_ATTEMPTS} attempts")

    def _refresh(self) -> None:
        with contextlib.suppress(Exception):  # the next call will try again
            self.nodes_manager.initialize()


# -- asyncio ------------------------------------------------------------------


class _AsyncClusterPubSub(redis.asyncio.cluster.ClusterPubSub):
    """ClusterPubSub that works on a client which has not run a command yet.

    redis-py picks the pub/sub node from the client's slot map, which is empty until
    the client's first command: a SUBSCRIBE racing the worker's first claim failed
    with a bare KeyError (and the worker's wake-up listener died). Load the map
    first; a slot missing from it is reported as SlotNotCoveredError (unavailable:
    try again), and a dead node makes the client relearn the cluster's layout."""

    cluster: AsyncClusterClient

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.cluster.initialize()  # the node is chosen from its slot map
        try:
            return await super().execute_command(*args, **kwargs)
        except KeyError as exc:
            raise redis.exceptions.SlotNotCoveredError(
                f"pub/sub channel slot {exc} is not covered yet") from None
        except (redis.ConnectionError, redis.TimeoutError):
            with contextlib.suppress(Exception):
                await self.cluster.nodes_manager.initialize()
            raise


class _AsyncClusterPipeline(redis.asyncio.cluster.ClusterPipeline):
    """The asyncio cluster pipeline, reporting an unreachable cluster as ClusterUnreachable."""

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        try:
            return list(await super().execute(raise_on_error, allow_redirections))
        except redis.exceptions.RedisClusterException as exc:
            reraise_unreachable(exc)
            raise


class _SafeWrites(redis.asyncio.connection.Connection):
    """A connection whose write, once another call has closed it, fails as a lost connection.

    To relearn the cluster's layout after a call fails, redis-py's asyncio cluster client
    closes every connection of its nodes, those other calls are using too. A call that was
    awaiting meanwhile (its connect's handshake, a health check) then wrote to no writer:
    AttributeError, which neither redis-py's retries nor a caller take for Redis being away
    (a worker died of it while the cluster failed over). ConnectionResetError here comes out
    as redis-py's ConnectionError. (redis-py's main branch does the same since 8.1.0:
    redis/redis-py#4288.) Reading needs no such guard: a closed stream reads as closed."""

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionResetError("the connection was closed by another call meanwhile")
        writer.writelines(command)
        await writer.drain()


class _SafeWritesSSL(_SafeWrites, redis.asyncio.connection.SSLConnection):
    pass


_SAFE_WRITES: dict[type[redis.asyncio.connection.AbstractConnection],
                   type[redis.asyncio.connection.AbstractConnection]] = {
    redis.asyncio.connection.Connection: _SafeWrites,
    redis.asyncio.connection.SSLConnection: _SafeWritesSSL,
}

# A node client forgotten after a failed call is closed this long after, when any call
# it had in flight is over (each is bounded by the socket timeout, 5 s).
_RETIRED_FOR_S = 30.0


class AsyncClusterClient(redis.asyncio.cluster.RedisCluster):
    """redis-py's asyncio RedisCluster with the optional wait policy.

    A script call and its WAIT must share a connection; the cluster client picks
    connections per command, so waited calls go through one plain client per master,
    made from `url` and `timeouts` (set by app.store.redis_client, as the cluster was made)."""

    replica_wait: WaitPolicy | None = None
    url: str = ""
    timeouts: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # redis-py picks the connection class itself; every node, the ones learnt later
        # too, is made from these connection_kwargs (the nodes manager's own).
        kind = self.connection_kwargs["connection_class"]
        safe = _SAFE_WRITES.get(kind, kind)
        self.connection_kwargs["connection_class"] = safe
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = safe
        self._node_clients: dict[str, redis.asyncio.Redis] = {}
        # Forgotten node clients, with the loop time they were: calls may be in flight.
        self._retired: list[tuple[float, redis.asyncio.Redis]] = []

    def register_script(self, script: Any) -> Any:
        _remember(script)
        return super().register_script(script)

    async def initialize(self, *args: Any, **kwargs: Any) -> AsyncClusterClient:
        try:
            await super().initialize(*args, **kwargs)
        except redis.exceptions.RedisClusterException as exc:
            reraise_unreachable(exc)
            raise
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except redis.exceptions.RedisClusterException as exc:
            reraise_unreachable(exc)
            raise

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        if shard_hint:
            raise redis.exceptions.RedisClusterException("shard_hint is deprecated in cluster mode")
        return _AsyncClusterPipeline(self, transaction)  # type: ignore[abstract]

    def pubsub(self, node: Any = None, host: str | None = None, port: int | None = None,
               **kwargs: Any) -> Any:
        return _AsyncClusterPubSub(self, node=node, host=host, port=port, **kwargs)

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        policy = self.replica_wait
        if policy is None or sha in READ_ONLY_SHAS:
            try:
                return await super().evalsha(sha, numkeys, *keys_and_args)
            except redis.exceptions.NoScriptError as exc:
                loaded = _loaded_here(sha, exc)
                if loaded is None:
                    raise
                return await self.execute_command(*loaded, numkeys, *keys_and_args)
        key = _first_key(numkeys, keys_and_args)
        command: tuple[str, str] = ("EVALSHA", sha)
        for attempt in range(_ATTEMPTS):
            await self.initialize()
            node = self.get_node_from_key(key)
            assert node is not None
            plain = self._node_client(node.name, node.host, int(node.port))
            pipe = plain.pipeline(transaction=False)
            pipe.execute_command(*command, numkeys, *keys_and_args)
            pipe.execute_command("WAIT", policy.replicas, policy.timeout_ms)
            try:
                result, acked = await pipe.execute(raise_on_error=False)
            except (redis.ConnectionError, redis.TimeoutError):
                # Not sent again (it may have run); learn the new owners for the next call.
                await self._forget(node.name, plain)
                raise
            loaded = _loaded_here(sha, result) if command[0] == "EVALSHA" else None
            if loaded is not None:
                command = loaded
                continue
            if not isinstance(result, _REDIRECTS):
                return policy.check(result, acked, node.name)
            await self._forget(node.name, plain)
            await asyncio.sleep(0.05 * 2 ** attempt)
        raise redis.exceptions.ClusterDownError(
            f"script call still redirected after {_ATTEMPTS} attempts")

    def _node_client(self, name: str, host: str, port: int) -> redis.asyncio.Redis:
        client = self._node_clients.get(name)
        if client is None:
            # Same URL (credentials, TLS, options), this node's address; no retries
            # of its own: a script is never sent twice by the client.
            client = redis.asyncio.Redis.from_url(
                _with_address(self.url, host, port), retry=Retry(NoBackoff(), 0), **self.timeouts)
            pool = client.connection_pool  # (from_url takes the class from the URL's scheme)
            pool.connection_class = _SAFE_WRITES.get(pool.connection_class, pool.connection_class)
            self._node_clients[name] = client
        return client

    async def _forget(self, name: str, client: redis.asyncio.Redis) -> None:
        """Forget `client`, the node client of `name` a call failed on (not the one another
        call may have made since), and learn the cluster's owners again."""
        if self._node_clients.get(name) is client:
            del self._node_clients[name]
            await self._retire([client])
        with contextlib.suppress(Exception):  # the next call will try again
            await self.nodes_manager.initialize()

    async def _retire(self, clients: list[redis.asyncio.Redis]) -> None:
        """Close the idle connections of `clients` and of those retired before; the rest
        close _RETIRED_FOR_S later, their calls over. Other calls may be using them, and
        closing a connection under a call made redis-py fail it with AttributeError (its
        writer gone), not ConnectionError (redis-py issue 4287): a worker took that for a
        bad record and dead-lettered a trigger in tests/cluster/test_failover.py."""
        now = asyncio.get_running_loop().time()
        self._retired += ((now, c) for c in clients)
        while self._retired and self._retired[0][0] < now - _RETIRED_FOR_S:
            await self._retired.pop(0)[1].aclose()
        for _, client in self._retired:
            await client.connection_pool.disconnect(inuse_connections=False)

    async def aclose(self) -> None:
        """Close the connections: the idle ones now, each busy one when its call is over.

        redis-py closes the client to relearn the cluster's layout when a pipeline meets an
        unreachable node (and on CLUSTERDOWN or a run of MOVED), while other calls are
        using the nodes' connections. Closed under them, calls to healthy masters failed
        and were sent again: a claim's reply lost, its triggers waited for their lease to
        run out (up to 5 s late in tests/cluster/test_failover.py), and a failover of one
        master held up every partition. redis-py's single commands already close so after
        a connection error (8.1: mark the busy ones for reconnect, close the idle ones)."""
        clients, self._node_clients = list(self._node_clients.values()), {}
        await self._retire(clients)  # (the node clients of waited script calls)
        self._initialize = True  # the next call learns the layout again
        manager = self.nodes_manager
        nodes = {id(n): n for n in (*manager.nodes_cache.values(), *manager.startup_nodes.values())}
        for node in nodes.values():
            node.update_active_connections_for_reconnect()
            await node.disconnect_free_connections()


def _with_address(url: str, host: str, port: int) -> str:
    """`url` with its host and port replaced (user, password, path and query kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
