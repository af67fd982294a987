"""A lean HTTP/1.1 client for deliveries: keep-alive pools per origin, httptools parsing.

Why not aiohttp's client: profiled in a burst it spent ~150 us of CPU per POST
in the worker (request/response objects, timers, header multidicts), which
capped two workers at ~9k deliveries/s. A delivery needs much less: one POST
with a small body, the status code back, the connection kept for the next.
httptools (llhttp, the parser uvicorn uses) parses the responses; this module
only pools connections and frames requests.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as ssl_module
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from app.jobs.errors import JobrunnerError


class ServerDisconnected(ConnectionError):
    """The connection closed before a whole response came."""


class PoolTimeout(JobrunnerError):
    """Every connection to the app stayed busy for the whole queue timeout."""


@dataclass(frozen=True)
class Origin:
    host: str
    port: int
    tls: bool

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """`http://h:p/a/b?q` -> (Origin, "/a/b?q"). The path must already be percent-encoded."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    origin = Origin(parts.hostname, parts.port or (443 if tls else 80), tls)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return origin, path


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False
        self.reusable = True
        self.got_bytes = False
        self.status: int | None = None  # of the current response, once its headers are in
        self.retry_after: bytes | None = None  # its Retry-After header, if any

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ServerDisconnected(f"invalid HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.status is not None and self.waiter is not None and not self.waiter.done():
            # A response without Content-Length ends when the server closes (HTTP/1.0
            # servers such as Python's http.server do this): the status is the answer.
            self.reusable = False
            self.waiter.set_result(self.status)
            return
        self._fail(ServerDisconnected("connection closed before the response ended"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self.retry_after = value

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200:
            self.status = status

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim response; the real one follows
        self.reusable = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def send(self, data: bytes) -> asyncio.Future[int]:
        self.got_bytes = False
        self.status = None
        self.retry_after = None
        if self.transport is None or self.transport.is_closing():
            raise ServerDisconnected("connection closed before the request was sent")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """The connections to one origin: at most `limit`, idle ones reused newest first."""

    def __init__(self, origin: Origin, limit: int, ssl: ssl_module.SSLContext | None) -> None:
        self.origin = origin
        self.limit = limit
        self.ssl = ssl
        self.idle: collections.deque[_Connection] = collections.deque()
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire_idle_or_slot(self) -> tuple[_Connection | None, bool]:
        """An idle connection (reused: True), or None with a slot reserved for a new one
        (the caller connects: `connect`). Waits while the pool is full."""
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn, True
                self.open -= 1
            if self.open < self.limit:
                self.open += 1
                return None, False
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake_one()  # pass the wake-up on
                raise

    async def connect(self) -> _Connection:
        """A new connection in the slot acquire_idle_or_slot reserved."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            _Connection, self.origin.host, self.origin.port, ssl=self.ssl)
        return conn

    def release(self, conn: _Connection | None) -> None:
        """Give back a connection, or (None) the slot of one that was never made."""
        if conn is not None and conn.reusable and not conn.closed:
            self.idle.append(conn)
        else:
            if conn is not None:
                conn.close()
            self.open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class HttpClient:
    def __init__(self, connections_per_origin: int = 64) -> None:
        self.connections_per_origin = connections_per_origin
        self._pools: dict[Origin, _Pool] = {}
        self._ssl: ssl_module.SSLContext | None = None

    def _pool(self, origin: Origin) -> _Pool:
        pool = self._pools.get(origin)
        if pool is None:
            if origin.tls and self._ssl is None:
                self._ssl = ssl_module.create_default_context()
            pool = _Pool(origin, self.connections_per_origin, self._ssl if origin.tls else None)
            self._pools[origin] = pool
        return pool

    async def post(self, origin: Origin, path: str, body: bytes, headers: dict[str, str],
                   timeout: float, queue_timeout: float | None = None) -> tuple[int, str | None]:
        """POST; the status code and the Retry-After header (None: none). `timeout`
        bounds the exchange with the app (connecting, sending, the answer);
        `queue_timeout` bounds the wait for one of the pool's connections before that
        (default: `timeout`). Raises TimeoutError, PoolTimeout, OSError or
        ServerDisconnected."""
        pool = self._pool(origin)
        head = [f"POST {path} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
                f"Content-Length: {len(body)}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers.items()]
        head.append("\r\n")
        request = "".join(head).encode("latin-1") + body
        for _ in range(2):
            try:
                async with asyncio.timeout(timeout if queue_timeout is None else queue_timeout):
                    conn, reused = await pool.acquire_idle_or_slot()
            except TimeoutError:
                raise PoolTimeout(f"no free connection to the app within "
                                  f"{queue_timeout or timeout:g}s") from None
            try:
                async with asyncio.timeout(timeout):
                    if conn is None:
                        conn = await pool.connect()
                    status = await conn.send(request)
            except ServerDisconnected:
                pool.release(conn)
                # A kept-alive connection the app closed while idle: try once on a new one.
                if reused and conn is not None and not conn.got_bytes:
                    continue
                raise
            except BaseException:
                if conn is not None:
                    conn.close()  # a request may be half-way: the connection is unusable
                pool.release(conn)
                raise
            retry_after = conn.retry_after
            pool.release(conn)
            return status, None if retry_after is None else retry_after.decode("latin-1")
        raise ServerDisconnected("connection closed before the response")

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
