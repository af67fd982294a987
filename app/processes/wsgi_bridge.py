"""A WSGI app (the Flask API) behind granian's RSGI interface: a thread is spent only on a
request that has fully arrived.

granian reads request heads in Rust, within its header read timeout. Its own WSGI
interface then reads the body from the handler thread, with no timeout (granian declines
one: emmett-framework/granian#728), so a few clients trickling bodies would hold every
thread. Here the body is read on the worker's event loop, at most `max_body_bytes` of it
and within `body_timeout_s` in all (else 408 and the connection is closed), and only then
does the app run, on a pool of `threads` threads. The answer is built whole in the
thread and sent from the loop, so a client that reads it slowly holds no thread either.
`fast`, when given, sees each complete request first, on the loop: the answer it gives is
sent as it stands, and a request it declines (None) goes to the pool. The schedule
shortcut answers so (app/api/fast_schedule.py, `on_loop`): no thread switch at all.

Mapping, as gunicorn's (the server the API ran on before): PATH_INFO percent-decoded,
QUERY_STRING raw, both as WSGI's latin-1 text; repeated headers joined with ","; headers
with "_" in their name dropped (each would pose as its "-" twin to the app).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from io import BytesIO
from typing import Any

import orjson

log = logging.getLogger("jobrunner.api")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Answer = tuple[int, list[tuple[str, str]], bytes]
# The loop's own answer to a complete request (environ, body), or None: the pool's.
FastPath = Callable[[dict[str, Any], bytes], Awaitable[Answer | None]]
# A request for the pool: environ, granian's protocol object, whether the body was read
# to its end, and the loop and future that learn when it has been answered.
_Work = tuple[dict[str, Any], Any, bool, asyncio.AbstractEventLoop, "asyncio.Future[None]"]

_PROTOCOLS = {"1": "HTTP/1.0", "1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2"}
_CLOSE = ("connection", "close")


def _wsgi_text(text: str) -> str:
    """granian gives the path decoded as UTF-8 (and the query's raw bytes so); WSGI wants
    the bytes as latin-1 text, which the app decodes as UTF-8 again."""
    return text if text.isascii() else text.encode("utf-8", "surrogateescape").decode("latin-1")


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def error_answer(status: int, code: str, message: str, close: bool = False) -> Answer:
    """A Dapr-style error body, `{"errorCode", "message"}`, as the API's own."""
    body = orjson.dumps({"errorCode": code, "message": message})
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    return status, [*headers, _CLOSE] if close else headers, body


class WsgiOnRsgi:
    """The RSGI application granian runs in each worker process.

    `on_start` and `on_stop` run in the worker: before it serves, and after its last
    request is answered (granian waits for those in flight)."""

    def __init__(self, app: WsgiApp, *, threads: int, body_timeout_s: float,
                 max_body_bytes: int, larger_bodies: Mapping[tuple[str, str], int] | None = None,
                 multiprocess: bool = True,
                 on_start: Callable[[], None] | None = None,
                 on_stop: Callable[[], None] | None = None,
                 fast: FastPath | None = None) -> None:
        self.app = app
        self.fast = fast
        self.threads = threads
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        # (method, path) -> the body limit of a route that takes more (the bulk route).
        self.larger_bodies = dict(larger_bodies or {})
        self._on_start = on_start
        self._on_stop = on_stop
        # The pool: plain threads on a queue (each hand-over costs a thread switch, the
        # dearest part of a request on a small VM; concurrent.futures adds to it).
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._base: dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            # The whole body is in wsgi.input: read to its end, whatever CONTENT_LENGTH says.
            "wsgi.input_terminated": True,
            "SCRIPT_NAME": "",
            "SERVER_SOFTWARE": "jobrunner (granian)",
        }
        # Per name: its environ key, or None to drop it (names repeat on every request).
        self._keys: dict[str, str | None] = {
            "content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
        self._addresses: dict[str, tuple[str, str]] = {}

    # --- granian's hooks ---------------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        for n in range(self.threads):
            thread = threading.Thread(target=self._serve_work, name=f"api-{n + 1}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self._on_start is not None:
            self._on_start()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if self._on_stop is not None:
                self._on_stop()
        finally:
            for _ in self._threads:
                self._work.put(None)
            for thread in self._threads:
                thread.join()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":  # websockets are off; nothing else is served
            return
        environ = self._environ(scope)
        body, whole = b"", True
        if "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    body, whole = await self._read_body(environ, proto)
            except TimeoutError:
                proto.response_bytes(*error_answer(
                    408, "ERR_BODY_READ",
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    close=True))
                return
            except Exception:
                # The body ended before its Content-Length (the client closed its side,
                # or went away): said, if it still reads (granian's own answer is an
                # empty 500).
                with contextlib.suppress(Exception):
                    proto.response_bytes(*error_answer(
                        400, "ERR_BODY_READ",
                        "the request body ended before all of it arrived", close=True))
                return
        if self.fast is not None and whole:
            answer = await self.fast(environ, body)
            if answer is not None:
                with contextlib.suppress(Exception):  # the client is gone: no one to answer
                    proto.response_bytes(*answer)
                return
        environ["wsgi.input"] = BytesIO(body)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._work.put((environ, proto, whole, loop, done))
        # The thread answers the client itself; the request ends here once it has.
        await done

    def _serve_work(self) -> None:
        """A pool thread: run the app for each request handed over, and answer it."""
        while (work := self._work.get()) is not None:
            environ, proto, whole, loop, done = work
            try:
                status, headers, payload = self._call(environ)
                if not whole:
                    # The rest of the body is never read: the connection cannot carry
                    # another request.
                    headers.append(_CLOSE)
                proto.response_bytes(status, headers, payload)
            except Exception:  # the client is gone: nothing to answer
                pass
            finally:
                loop.call_soon_threadsafe(_finish, done)

    # --- the request -------------------------------------------------------------------

    def _environ(self, scope: Any) -> dict[str, Any]:
        environ = self._base.copy()
        environ["REQUEST_METHOD"] = scope.method
        environ["PATH_INFO"] = _wsgi_text(scope.path)
        environ["QUERY_STRING"] = _wsgi_text(scope.query_string)
        environ["SERVER_PROTOCOL"] = _PROTOCOLS.get(scope.http_version, "HTTP/1.1")
        environ["wsgi.url_scheme"] = scope.scheme
        environ["SERVER_NAME"], environ["SERVER_PORT"] = self._address(scope.server)
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = self._address(scope.client)
        keys = self._keys
        for name, value in scope.headers.items():
            key = keys.get(name, "")
            if key == "":
                key = keys[name] = None if "_" in name else (
                    "HTTP_" + name.upper().replace("-", "_"))
            if key is None:
                continue
            if key in environ:
                environ[key] += "," + value
            else:
                environ[key] = value
        return environ

    def _address(self, text: str) -> tuple[str, str]:
        """`host:port` (`[v6]:port`) as (host, port), cached: a worker sees few of them
        (the client's port varies, so client addresses are not cached past a bound)."""
        found = self._addresses.get(text)
        if found is None:
            host, _, port = text.rpartition(":")
            found = (host.strip("[]"), port)
            if len(self._addresses) < 64:
                self._addresses[text] = found
        return found

    async def _read_body(self, environ: dict[str, Any], proto: Any) -> tuple[bytes, bool]:
        """The body, at most its route's limit + 1 of it (one byte over the limit is enough
        for the app to answer 413), and whether it was read to its end."""
        limit = self.larger_bodies.get((environ["REQUEST_METHOD"], environ["PATH_INFO"]),
                                       self.max_body_bytes)
        length = environ.get("CONTENT_LENGTH")
        if length is not None and "HTTP_TRANSFER_ENCODING" not in environ:
            if length == "0":
                return b"", True
            if length.isdigit() and int(length) <= limit:
                return await proto(), True
            return b"", False  # the app refuses it (413) by its CONTENT_LENGTH alone
        chunks, size = [], 0
        async for chunk in proto:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks)[: limit + 1], False
        return b"".join(chunks), True

    def _call(self, environ: dict[str, Any]) -> Answer:
        """Run the app in this (pool) thread; its whole answer."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            # Nothing is sent before the app returns, so a later call (an error handler's,
            # with exc_info) simply replaces the first.
            started[:] = [status, headers]
            return chunks.append

        try:
            result = self.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            status, headers = started
            return int(status[:3]), list(headers), b"".join(chunks)
        except Exception:
            log.exception("unexpected error on %s %s", environ["REQUEST_METHOD"],
                          environ["PATH_INFO"])
            return error_answer(500, "ERR_INTERNAL", "internal error; see the API log")
