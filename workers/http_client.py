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
import functools
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httptools

from app.jobs.errors import JobrunnerError
from workers.resolve import Resolver


class ServerDisconnected(ConnectionError):
    """The connection closed before a whole response came."""


class PoolTimeout(JobrunnerError):
    """Every connection to the app stayed busy for the whole queue timeout."""


class Origin(NamedTuple):
    """Where an app listens, and whose connections these are. A tuple: it keys the pools,
    and a frozen dataclass's hash, in Python, came once per delivery."""

    host: str
    port: int
    tls: bool
    # The app the pool is for: apps at one address (paths of one server) have a pool each,
    # so one whose requests hang there cannot take another's connections.
    app_id: str = ""

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return host if self.port == default else f"{host}:{self.port}"


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


# The most bytes a response may take before its final headers are in, interim (1xx)
# responses included: llhttp builds header values by concatenation, so an endless header
# would cost the worker's loop quadratic time and unbounded memory (every app waits).
MAX_RESPONSE_HEAD = 64 * 1024
# The most bytes of a response read after its final headers (its body, its trailers): a
# delivery needs the status only. Past them, or past the deadline, the status is the
# answer and the connection goes: an endless body or trailer held the loop, and every
# app's deliveries with it, until the deadline.
MAX_RESPONSE_TAIL = 64 * 1024


# A kept-alive connection that closes this soon after a request was written on it was
# closed by the app while idle (the request crossed its FIN): the request is tried again
# on a new connection, within the same deadline.
STALE_CLOSE_S = 0.5


class Sent(asyncio.Future[tuple[int, str | None]]):
    """post_now's outcome: post()'s (status, Retry-After), or its exception, set in the
    callback of the connection that brought it; `on_done` follows one turn of the loop
    later (a request's two futures and their three turns cost 3.8 µs on uvloop where one
    costs 1.0). Not in the connection's callback itself: a worker's next delivery sent
    from there, with no turn between, kept a flooding app's slots full before the claim
    loop could run, and another app's median lateness beside the flood doubled
    (tests/test_fairness.py). Cancelling it drops its request at once (`drop`: its
    connection's, or its try again's)."""

    # Slots, and no __init__ of its own: a Python __init__ over the C future's doubled
    # the cost of making one, once per delivery.
    __slots__ = ("drop", "on_done")
    on_done: Callable[[Sent], None]
    drop: Callable[[], object] | None

    @classmethod
    def of(cls, on_done: Callable[[Sent], None]) -> Sent:
        sent = cls(loop=asyncio.get_running_loop())
        sent.on_done = on_done
        sent.drop = None
        return sent

    def set_result(self, result: tuple[int, str | None]) -> None:
        super().set_result(result)
        self._finished()

    def set_exception(self, exception: type | BaseException) -> None:
        super().set_exception(exception)
        self._finished()

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        if self.drop is not None:
            self.drop()
        self._finished()
        return True

    def _finished(self) -> None:
        self.get_loop().call_soon(self.on_done, self)  # its failure the loop reports


class _Answer:
    """What a connection awaits for post_now: the part of a future it uses, without the
    loop. The connection hands it on itself (_Connection._hand_on)."""

    __slots__ = ("error", "finished", "status")

    def __init__(self) -> None:
        self.status = 0
        self.error: BaseException | None = None
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, status: int) -> None:
        self.status = status
        self.finished = True

    def set_exception(self, exc: BaseException) -> None:
        self.error = exc
        self.finished = True


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        # post()'s answer (a future), or post_now's (handed on to `on_answer`)
        self.waiter: asyncio.Future[int] | _Answer | None = None
        self.on_answer: Callable[[], None] | None = None
        self.closed = False
        self.reusable = True
        self.got_bytes = False
        self.sent_at = 0.0  # loop time the current request was written
        self.head_bytes = 0  # of the current response, until its final headers are in
        self.tail_bytes = 0  # of the current response, in the reads after those headers
        self.framed = False  # the response says where it ends (Content-Length or chunked)
        self.status: int | None = None  # of the current response, once its headers are in
        self.retry_after: bytes | None = None  # its Retry-After header, if any
        self.deadline = 0.0  # loop time by which the current response must be in

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._receive(data)
        self._hand_on()

    def _receive(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            # Bytes while no request is out: the app's own (a stray or late response). They
            # would be read as the start of the next answer: the connection goes.
            self.close()
            return
        self.got_bytes = True
        if self.status is None:
            room = MAX_RESPONSE_HEAD - self.head_bytes
            self.head_bytes += len(data)
            if len(data) > room:  # the head must end within the bound, wherever reads split
                if not self._feed(data[:room]):
                    return
                if self.status is None:
                    self._fail(ServerDisconnected(
                        f"the response's headers are longer than {MAX_RESPONSE_HEAD} bytes"))
                    return
                data = data[room:]
        else:
            self.tail_bytes += len(data)
            if self.tail_bytes > MAX_RESPONSE_TAIL:
                self._answer_now()
                return
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; False when it is no valid answer (the request failed)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # not an HttpParserError
            self._fail(ServerDisconnected("the app answered with a protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(ServerDisconnected(f"invalid HTTP response: {exc}"))
        else:
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if (self.status is not None and not self.framed and self.waiter is not None
                and not self.waiter.done()):
            # A response without Content-Length ends when the server closes (HTTP/1.0
            # servers such as Python's http.server do this): the status is the answer. One
            # that said its length, or is chunked, and was cut short is no answer.
            self.reusable = False
            self.waiter.set_result(self.status)
        else:
            self._fail(ServerDisconnected("connection closed before the response ended"))
        self._hand_on()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.waiter is None or self.waiter.done():
            # A second response to one request, in the answer's packet: the app and this
            # client disagree, the connection goes.
            self.reusable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status is not None:
            return  # a trailer, or the headers of a second response: not the answer's
        size = len(name)
        if size == 11 and name.lower() == b"retry-after":
            self.retry_after = value
        elif size == 14 and name.lower() == b"content-length":
            self.framed = True
        elif size == 17 and name.lower() == b"transfer-encoding":
            # Chunked last, or the answer ends when the app closes (RFC 9112, 6.3).
            self.framed = value == b"chunked" or \
                value.rsplit(b",", 1)[-1].strip(b" ").lower() == b"chunked"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200:
            self.status = status
        else:  # an interim response: the real one's headers follow
            self.framed = False
            self.retry_after = None

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim response; the real one follows
        # Not the answer (its waiter done): on_message_begin retired the connection.
        if self.waiter is not None and not self.waiter.done():
            self.reusable = self.parser.should_keep_alive()
            self.waiter.set_result(status)

    def send(self, data: bytes) -> asyncio.Future[int]:
        waiter = asyncio.get_running_loop().create_future()
        self._write(data, waiter)
        return waiter

    def send_now(self, data: bytes, on_answer: Callable[[], None]) -> None:
        """send() for post_now: `on_answer` is called once `waiter` is done (never before
        this returns)."""
        self._write(data, _Answer())
        self.on_answer = on_answer

    def _write(self, data: bytes, waiter: asyncio.Future[int] | _Answer) -> None:
        self.got_bytes = self.framed = False
        self.head_bytes = self.tail_bytes = 0
        self.status = None
        self.retry_after = None
        self.on_answer = None
        if self.transport is None or self.transport.is_closing():
            raise ServerDisconnected("connection closed before the request was sent")
        self.waiter = waiter
        self.sent_at = asyncio.get_running_loop().time()
        self.transport.write(data)

    def _hand_on(self) -> None:
        """post_now's answer, once done, to its callback: at the end of the protocol's
        callback that finished it (data_received, connection_lost, time_out, abandon), once
        the parser is done with it: the callback gives the connection back to its pool."""
        on_answer = self.on_answer
        if on_answer is not None and self.waiter is not None and self.waiter.done():
            self.on_answer = None
            on_answer()

    def time_out(self) -> None:
        """No answer by the deadline (an answer already in is kept, with the connection;
        final headers already in are the answer, without it)."""
        if self.waiter is not None and not self.waiter.done():
            if self.status is not None:
                self._answer_now()
            else:
                self._fail(TimeoutError())
        self._hand_on()

    def closed_while_idle(self) -> bool:
        """Whether the close that failed the request was the app's close of an idle
        connection: at once after the request was written (it crossed the app's FIN), with
        no byte of an answer. Such a request may go again; a close that comes later came
        after the app took the request: that is its answer."""
        return (not self.got_bytes
                and asyncio.get_running_loop().time() - self.sent_at < STALE_CLOSE_S)

    def abandon(self) -> None:
        """The request's answer is nobody's (post_now's Sent was cancelled): the connection
        goes (a late answer would be read as the next one's)."""
        self._fail(ServerDisconnected("the request was abandoned"))
        self._hand_on()

    def _answer_now(self) -> None:
        """The final headers' status is the answer; the rest of the response is not read."""
        assert self.status is not None
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.status)
        self.close()

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        """At once, with whatever of the request is still unsent: a transport's close()
        waits for its buffer to drain, which an app that never reads never lets happen
        (each such connection held its socket and a copy of its request for good)."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


class _Pool:
    """The connections to one origin: at most `limit`, idle ones reused newest first."""

    def __init__(self, origin: Origin, limit: int, ssl: ssl_module.SSLContext | None) -> None:
        self.origin = origin
        self.limit = limit
        self.ssl = ssl
        self.idle: collections.deque[_Connection] = collections.deque()
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def idle_connection(self) -> _Connection | None:
        """An idle connection, newest first, if one is open."""
        while self.idle:
            conn = self.idle.pop()
            if conn.reusable and not conn.closed:
                return conn
            conn.close()
            self.open -= 1
        return None

    async def acquire_idle_or_slot(self, new: bool = False) -> tuple[_Connection | None, bool]:
        """An idle connection (reused: True), or None with a slot reserved for a new one
        (the caller connects: `connect`). Waits while the pool is full. `new`: a slot
        only, closing the oldest idle connection when the pool is full (a try again after
        the app closed an idle one: the others may be as stale)."""
        while True:
            conn = None if new else self.idle_connection()
            if conn is not None:
                return conn, True
            if self.open < self.limit:
                self.open += 1
                return None, False
            if new and self.idle:
                self.idle.popleft().close()
                self.open -= 1
                continue
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake_one()  # pass the wake-up on
                raise
            finally:
                # Only now: woken, it still waits to run (HttpClient.post_now lets it first).
                self.waiters.remove(waiter)

    async def connect(self, resolver: Resolver) -> _Connection:
        """A new connection in the slot acquire_idle_or_slot reserved: to the origin's
        addresses in turn, the first that takes it (as create_connection does, but with
        the lookup by `resolver`: see workers/resolve.py)."""
        loop = asyncio.get_running_loop()
        error: OSError | None = None
        for family, proto, address in await resolver.addresses(self.origin.host,
                                                                self.origin.port):
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            _, conn = await loop.create_connection(
                _Connection, sock=sock, ssl=self.ssl,
                server_hostname=self.origin.host if self.ssl is not None else None)
            return conn
        raise error if error is not None else OSError(f"{self.origin.host} has no address")

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
        for waiter in self.waiters:
            if not waiter.done():  # not one woken already
                waiter.set_result(None)
                return

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class HttpClient:
    """Answers must come within their timeout. Not a timer per request (uvloop's cost about
    4 us to start and stop: two per delivery were a tenth of a worker's CPU in a burst),
    but one for all: armed at the earliest deadline of the requests out, it fails those
    past theirs and arms itself at the next."""

    def __init__(self, connections_per_origin: int = 64) -> None:
        self.connections_per_origin = connections_per_origin
        self._pools: dict[Origin, _Pool] = {}
        self._ssl: ssl_module.SSLContext | None = None
        self._out: set[_Connection] = set()  # with a request whose answer is awaited
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._resolver = Resolver()

    def _watch(self, conn: _Connection, deadline: float) -> None:
        conn.deadline = deadline
        self._out.add(conn)
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._expire)

    def _expire(self) -> None:
        self._timer = None
        # A timer may fire up to a millisecond early (the loop's clock resolution).
        now = asyncio.get_running_loop().time() + 0.001
        expired = [conn for conn in self._out if conn.deadline <= now]
        self._out.difference_update(expired)
        if self._out:
            self._arm(min(conn.deadline for conn in self._out))
        # Armed first: a post_now's on_done, called by time_out, may send the next request,
        # whose deadline _watch then compares with the timer's.
        for conn in expired:
            conn.time_out()

    def _pool(self, origin: Origin) -> _Pool:
        pool = self._pools.get(origin)
        if pool is None:
            if origin.tls and self._ssl is None:
                self._ssl = ssl_module.create_default_context()
            pool = _Pool(origin, self.connections_per_origin, self._ssl if origin.tls else None)
            self._pools[origin] = pool
        return pool

    @staticmethod
    def _request(origin: Origin, path: str, body: bytes, headers: str) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
                f"Content-Length: {len(body)}\r\n{headers}\r\n").encode("latin-1") + body

    def post_now(self, origin: Origin, path: str, body: bytes, headers: str, timeout: float,
                 queue_timeout: float | None, on_done: Callable[[Sent], None]) -> Sent | None:
        """post()'s usual case without a coroutine: the request written now on an idle
        connection, its answer taken in the connection's callback (a task per delivery and
        its two steps were about 7 % of a worker's CPU in a burst). None: no connection is
        idle, or a post() waits for one (post() waits its turn, or connects). The outcome,
        the Sent's result or exception, is post()'s, its try again on a connection the app
        had closed while idle included; `on_done(sent)` is called the turn of the loop
        after it is done, cancelled included. Raises what framing the request
        raises, before taking a connection."""
        request = self._request(origin, path, body, headers)
        pool = self._pool(origin)
        # A post() that waits for a connection, or was woken to take the one just freed,
        # goes first: on_done callbacks sending their next requests would take every
        # connection freed before the waiter runs, and starve it to a PoolTimeout.
        conn = None if pool.waiters else pool.idle_connection()
        if conn is None:
            return None
        result = Sent.of(on_done)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            conn.send_now(request, functools.partial(
                self._answer_came, pool, conn, result,
                (request, timeout, queue_timeout, deadline)))
        except ServerDisconnected:
            pool.release(conn)
            return None
        self._watch(conn, deadline)
        result.drop = conn.abandon
        return result

    def _answer_came(self, pool: _Pool, conn: _Connection, result: Sent,
                     sent: tuple[bytes, float, float | None, float]) -> None:
        """post_now's answer; `sent`: its request, timeout, queue timeout and deadline."""
        self._out.discard(conn)
        answer = conn.waiter
        assert isinstance(answer, _Answer)  # send_now's
        if result.done():  # cancelled: its connection abandoned
            conn.close()
            pool.release(conn)
            return
        exc = answer.error
        if exc is None:
            retry_after = conn.retry_after
            pool.release(conn)
            result.set_result((answer.status,
                               None if retry_after is None else retry_after.decode("latin-1")))
            return
        if not isinstance(exc, ServerDisconnected):
            conn.close()  # a request may be half-way: the connection is unusable
        elif conn.closed_while_idle():
            # Tried once more, as post() does, the result
            # still pending meanwhile (a stop waits for it within its grace, or cancels it).
            pool.release(conn)
            request, timeout, queue_timeout, deadline = sent
            retry = asyncio.ensure_future(
                self._post(pool, request, timeout, queue_timeout, deadline, tries=1))
            retry.add_done_callback(functools.partial(self._passed_on, result))
            result.drop = retry.cancel
            return
        pool.release(conn)
        result.set_exception(exc)

    @staticmethod
    def _passed_on(result: Sent, retry: asyncio.Future[tuple[int, str | None]]) -> None:
        """The try again's outcome is post_now's."""
        if result.done():  # cancelled, and the try again with it
            if not retry.cancelled():
                retry.exception()  # looked at: no "never retrieved" warning
        elif retry.cancelled():
            result.cancel()
        elif (exc := retry.exception()) is not None:
            result.set_exception(exc)
        else:
            result.set_result(retry.result())

    async def post(self, origin: Origin, path: str, body: bytes, headers: str,
                   timeout: float, queue_timeout: float | None = None,
                   on_sent: Callable[[], None] | None = None) -> tuple[int, str | None]:
        """POST; the status code and the Retry-After header (None: none). `headers`: the
        header lines, each ending in CRLF (Host and Content-Length are added). `timeout`
        bounds the exchange with the app (connecting, sending, the answer);
        `queue_timeout` bounds the wait for one of the pool's connections before that
        (default: `timeout`); `on_sent` is called once the request is written (the app may
        have it from then on). Raises TimeoutError, PoolTimeout, OSError or
        ServerDisconnected."""
        return await self._post(self._pool(origin), self._request(origin, path, body, headers),
                                timeout, queue_timeout, on_sent=on_sent)

    async def _post(self, pool: _Pool, request: bytes, timeout: float,
                    queue_timeout: float | None, deadline: float | None = None,
                    tries: int = 2,
                    on_sent: Callable[[], None] | None = None) -> tuple[int, str | None]:
        """post() of a framed request; `deadline` and `tries`: those left to it (post_now's
        try again shares the first try's deadline, and is the last)."""
        loop = asyncio.get_running_loop()
        for _ in range(tries):
            if deadline is None:  # the first try
                conn, reused = pool.idle_connection(), True  # the usual case: no wait, no timer
                if conn is None:
                    wait = timeout if queue_timeout is None else max(0.0, queue_timeout)
                    try:
                        async with asyncio.timeout(wait):
                            conn, reused = await pool.acquire_idle_or_slot()
                    except TimeoutError:
                        raise PoolTimeout(f"no free connection to the app within "
                                          f"{round(wait, 3):g}s") from None
                deadline = loop.time() + timeout  # a second try shares it
            else:  # a try again: on a new connection, within the first try's deadline
                async with asyncio.timeout_at(deadline):
                    conn, reused = await pool.acquire_idle_or_slot(new=True)
                if loop.time() >= deadline:  # sent now, it would run past it (and the lease)
                    pool.release(conn)
                    raise TimeoutError
            try:
                if conn is None:
                    async with asyncio.timeout_at(deadline):
                        conn = await pool.connect(self._resolver)
                answer = conn.send(request)
                if on_sent is not None:
                    on_sent()
                self._watch(conn, deadline)
                try:
                    status = await answer
                finally:
                    self._out.discard(conn)
            except ServerDisconnected:
                pool.release(conn)
                # A kept-alive connection the app had closed while it was idle: try once
                # more on a new one.
                if reused and conn is not None and conn.closed_while_idle():
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._resolver.close()
