"""One pipelined Redis connection on the running asyncio loop, for the busiest calls: the
API's schedule request and a worker's claims and settlements (workers/queue.py).

The API's schedule request (app/api/fast_schedule.py) would otherwise cross to a pool
thread for its one script call and back: two thread switches and a fight for the GIL,
more CPU than the request's own work. Here the call is written on the worker's event loop
and the request waits for its reply there, so the loop serves other requests meanwhile;
the commands of the requests in flight share one connection (their replies come back in
order), written together once per loop turn.

It covers a single Redis node reached over TCP, as redis-py's plain `Connection` reaches
it (`LoopRedis.for_client`, None for anything else: Redis Cluster, a replica wait, TLS, a
Unix socket, RESP3...). It never retries: a caller that gets an error (Redis away, an
error reply) falls back to its synchronous path, which does the whole call again with
redis-py's retries and answers as it always did; no reply within the client's socket
timeout is redis-py's TimeoutError (ReplyTimeout), as the synchronous path would meet it.
After a failed connect the client stays down for DOWN_S, so that a Redis that is away
costs each request nothing here.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, cast

import hiredis
import redis
import redis.asyncio
import redis.connection

# After a connect that failed: seconds during which `call` fails at once.
DOWN_S = 1.0
# redis-py connection settings this client does not do; any of them set: no client.
_UNSUPPORTED = ("credential_provider", "client_name", "lib_name", "lib_version",
                "redis_connect_func", "driver_info")


def _pack(*parts: Any) -> bytes:
    """A command in RESP, as redis-py writes it (with hiredis)."""
    return cast(bytes, hiredis.pack_command(parts))


class Unavailable(Exception):
    """No reply: not connected, the connection broke, or the reply took too long."""


class ReplyTimeout(Unavailable, redis.TimeoutError):
    """No reply within the socket timeout: what redis-py raises then (its message too), so
    that a caller can answer as it would have (trying again would wait as long again)."""


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, reply_timeout_s: float,
                 where: str) -> None:
        self.loop = loop
        self.where = where  # host:port, for messages
        self.reply_timeout_s = reply_timeout_s
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        # The requests waiting, in the order their commands were written: (future, deadline).
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(command)
        self.waiting.append((future, time.monotonic() + self.reply_timeout_s))
        if self.timer is None:
            self.timer = self.loop.call_later(self.reply_timeout_s, self._check_late)
        return future

    def _flush(self) -> None:
        if self.transport is not None and not self.lost and self.out:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _check_late(self) -> None:
        """No reply within the socket timeout: the connection is given up (as redis-py
        gives up a connection that timed out), and every request on it falls back."""
        self.timer = None
        if not self.waiting:
            return
        late_by = time.monotonic() - self.waiting[0][1]
        if late_by >= 0:
            self.close(ReplyTimeout(f"Timeout reading from {self.where}"))
        else:
            self.timer = self.loop.call_later(-late_by, self._check_late)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := self.reader.gets()) is not False:
                future = waiting.popleft()[0]
                if not future.done():  # its request may have been cancelled
                    future.set_result(reply)
        except Exception as exc:  # a protocol error, or a reply nobody waits for
            self.close(Unavailable(f"unreadable reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(Unavailable(f"the connection to Redis was lost: {exc or 'closed'}"))

    def close(self, error: Exception) -> None:
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class LoopRedis:
    """Commands to one Redis node from the running event loop, pipelined (module doc).

    Built in the process that uses it; used from one event loop only."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, connect_timeout_s: float = 2.0,
                 reply_timeout_s: float = 5.0) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._down_until = 0.0

    @classmethod
    def for_client(cls, client: Any) -> LoopRedis | None:
        """A LoopRedis to the node of redis-py's `client`, with its address, database,
        credentials and timeouts; None when it is not a plain TCP client of one node."""
        if not isinstance(client, (redis.Redis, redis.asyncio.Redis)) or getattr(
                client, "replica_wait", None):
            return None  # Redis Cluster, or every write followed by WAIT (redis_wait.py)
        pool = client.connection_pool
        # redis-py's own class, under any mixin of ours (redis_client._HiredisPacking)
        kind = next((c for c in pool.connection_class.__mro__
                     if c.__module__.startswith("redis.")), None)
        if kind not in (redis.connection.Connection, redis.asyncio.Connection):
            return None  # TLS, a Unix socket...
        kwargs = pool.connection_kwargs
        if kwargs.get("protocol", 2) not in (2, "2", None) or any(
                kwargs.get(name) for name in _UNSUPPORTED):
            return None
        return cls(kwargs.get("host", "localhost"), int(kwargs.get("port", 6379)),
                   db=int(kwargs.get("db", 0) or 0), username=kwargs.get("username"),
                   password=kwargs.get("password"),
                   connect_timeout_s=float(kwargs.get("socket_connect_timeout") or 2.0),
                   reply_timeout_s=float(kwargs.get("socket_timeout") or 5.0))

    async def call(self, command: bytes) -> Any:
        """The reply to `command` (a packed RESP command, hiredis.pack_command): an error
        reply as a hiredis.ReplyError value, not raised. Raises Unavailable."""
        conn = self._conn
        if conn is None or conn.lost:
            conn = await self._connected()
        return await conn.send(command)

    async def evalsha(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA of a script Redis has loaded (else a NOSCRIPT error reply), as `call`."""
        return await self.call(_pack("EVALSHA", sha, len(keys), *keys, *args))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close(Unavailable("closed"))
            self._conn = None

    async def _connected(self) -> _Connection:
        if time.monotonic() < self._down_until:
            raise Unavailable("Redis was unreachable a moment ago")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            # Shielded: a request that goes away does not cancel the others' connect.
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self.reply_timeout_s, f"{self.host}:{self.port}"),
                    self.host, self.port)
                setup = []
                if self.password is not None:
                    auth = (self.username, self.password) if self.username else (self.password,)
                    setup.append(conn.send(_pack("AUTH", *auth)))
                if self.db:
                    setup.append(conn.send(_pack("SELECT", self.db)))
                for reply in await asyncio.gather(*setup):
                    if isinstance(reply, Exception):
                        conn.close(Unavailable(f"Redis refused the connection: {reply}"))
                        raise Unavailable(str(reply))
        except (OSError, TimeoutError, Unavailable) as exc:
            self._down_until = time.monotonic() + DOWN_S
            raise Unavailable(f"cannot connect to Redis: {exc}") from None
        self._conn = conn
        return conn
