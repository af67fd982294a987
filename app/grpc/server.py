"""The gRPC server of an API process: the Dapr service (service.py) with Dapr's token
check and bounded messages. Built here, started by app.processes (serve.py), which runs
one in each API process beside the HTTP app; those processes share the port through
SO_REUSEPORT (grpc's default on Linux), and the kernel spreads connections over them.

It is a grpc.aio server on an event loop of its own thread (uvloop where installed):
ScheduleJob is served on that loop, its script written on the loop's own Redis
connection (service.py), and every other call's store work runs on `threads` threads.
grpc's thread-pool server handed each call from its polling thread to a pool thread
and back, which cost more CPU than the call's own work: about 300 of the 440 us a
ScheduleJob took (README, Performance).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent import futures
from typing import Any, TypeVar

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from app.grpc.service import JOB_METHODS, UNIMPLEMENTED_MESSAGE, JobsServicer
from app.settings import Settings
from app.store.store import Store

TOKEN_HEADER = "dapr-api-token"
# Room for the job's other fields (name, schedule strings, policy) beside its data;
# data itself is bounded by validation (413 -> RESOURCE_EXHAUSTED with a clear message).
_ENVELOPE_BYTES = 64 * 1024
# RPCs one process holds at once (running or queued for a thread); more are refused
# with RESOURCE_EXHAUSTED by grpc rather than queued without bound.
MAX_CONCURRENT_RPCS = 1024
# Calls one connection holds at once (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS; a client's
# further calls wait for a stream): grpc's own default is no bound, and one connection
# whose client never read its answers held all of the process's 1,024.
MAX_STREAMS_PER_CONNECTION = 100
# How long building the server (and binding its port) or starting it may take.
_SETUP_S = 30.0

T = TypeVar("T")


class _ClientFaults(logging.Filter):
    """grpc logs an ERROR with a traceback for what a client does: a metadata value that
    is not UTF-8 (read as Latin-1, and the call goes on), and a call the client reset
    before its answer could be sent (the answer goes nowhere: "ExecuteBatchError raised
    in core"). Lines any client could send by the thousand."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Invalid encoding on %s"
                    or str(record.msg).startswith("ExecuteBatchError raised in core"))


logging.getLogger("grpc._cython.cygrpc").addFilter(_ClientFaults())


def max_message_bytes(settings: Settings) -> int:
    return settings.max_data_bytes + _ENVELOPE_BYTES


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # about a third less CPU a call than asyncio's own loop


class Server:
    """A grpc.aio server on its own thread's event loop, with the part of grpc.Server's
    interface that app.processes uses: start(), and stop(grace).wait(timeout)."""

    def __init__(self, settings: Settings, store: Store, threads: int) -> None:
        self._pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc")
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop",
                                        daemon=True)
        self._thread.start()
        self._servicer = JobsServicer(settings, store, self._pool)
        try:
            self._server: grpc.aio.Server = self._on_loop(self._build(settings), _SETUP_S)
        except BaseException:
            self._close()
            raise

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _build(self, settings: Settings) -> grpc.aio.Server:
        # Built on the loop that serves it (grpc.aio binds a server to the running loop).
        interceptors = [_TokenCheck(settings.api_token)] if settings.api_token else []
        server = grpc.aio.server(
            self._pool,
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes(settings)),
                ("grpc.so_reuseport", 1),  # the API processes share the port
                # Connections are bounded as the HTTP port's are (README, "Slow clients"):
                # held open and idle, 20,000 of them took every file descriptor of the
                # process, and with it the HTTP API. Past the bound, a new connection is
                # refused (the client's call: UNAVAILABLE); one without a call for
                # grpc_idle_timeout_s is closed (GOAWAY: a client reconnects on its next
                # call), and one that has not said HTTP/2 within the header timeout.
                ("grpc.max_allowed_incoming_connections", settings.http_max_connections),
                ("grpc.max_connection_idle_ms", _ms(settings.grpc_idle_timeout_s)),
                ("grpc.server_handshake_timeout_ms", _ms(settings.http_header_timeout_s)),
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            ],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        generic = _GenericOnly()
        dapr_pb2_grpc.add_DaprServicer_to_server(  # type: ignore[no-untyped-call]
            self._servicer, generic
        )
        server.add_generic_rpc_handlers(
            (_Decoding(generic.handlers, FirstMessages(settings.http_body_timeout_s)),
             _OtherServices()))  # the rest last
        server.add_insecure_port(bind_address(settings.http_host, settings.grpc_port))
        return server

    def start(self) -> None:
        self._on_loop(self._server.start(), _SETUP_S)

    def stop(self, grace: float | None) -> _Stopping:
        """Refuses new calls at once; calls in flight get `grace` seconds (None: all the
        time they take) before they are cancelled."""
        return _Stopping(asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop),
                         self._close)

    async def _stop(self, grace: float | None) -> None:
        await self._server.stop(grace)
        self._servicer.close()

    def _close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()
        self._pool.shutdown(wait=False)


class _Stopping:
    def __init__(self, stopped: futures.Future[None], close: Callable[[], None]) -> None:
        self._stopped = stopped
        self._close = close

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the server has stopped within `timeout`; its thread ends with it."""
        try:
            self._stopped.result(timeout)
        except futures.TimeoutError:
            return False
        self._close()
        return True


class _GenericOnly:
    """Takes the Dapr service's handlers as generic ones only. The generated code also
    registers each of its ~100 methods with the server, and grpc.aio's accept loop then
    waits on a pending call per registered method: every call it accepts adds and removes
    a callback on each (asyncio.wait), which cost more than the call's own work."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        pass  # served by the generic handler above, looked up by its method name


def create_server(settings: Settings, store: Store, threads: int) -> Server:
    """A server for the Dapr service on settings.http_host:settings.grpc_port, bound but
    not started. Raises RuntimeError when the port cannot be bound."""
    return Server(settings, store, threads)


def _refuse(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def handler(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    # Stream-unary whatever the method is: refused at once, not after a request message
    # (a unary handler waits for it, and a caller that never sends one holds a slot of
    # the server's MAX_CONCURRENT_RPCS for ever, token or not).
    return grpc.stream_unary_rpc_method_handler(handler)


class _TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """DAPR_API_TOKEN as Dapr checks it (pkg/api/grpc/auth.go): the `dapr-api-token`
    metadata on every call, else UNAUTHENTICATED with Dapr's messages."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        given = next((v for k, v in details.invocation_metadata or () if k == TOKEN_HEADER),
                     None)
        if given is None:
            return _refuse(grpc.StatusCode.UNAUTHENTICATED,
                           "missing api token in request metadata")
        raw = given if isinstance(given, bytes) else given.encode()
        if not hmac.compare_digest(raw, self._token):
            return _refuse(grpc.StatusCode.UNAUTHENTICATED,
                           "authentication error: api token mismatch")
        return await continuation(details)


class _Undecodable:
    """A request whose bytes are not its message: the method answers INVALID_ARGUMENT."""

    def __init__(self, message: str) -> None:
        self.message = message


class FirstMessages:
    """Reads a call's request message within `timeout_s` (JOBRUNNER_HTTP_BODY_TIMEOUT, as
    an HTTP request's body), else ends the call with DEADLINE_EXCEEDED: calls that never
    send their message would otherwise hold the server's MAX_CONCURRENT_RPCS slots and
    lock every client out. One timer sweeps every waiting call (a timer each would cost
    uvloop a few us a call)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._late: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def read(self, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._waiting[task] = loop.time() + self.timeout_s
        if self._timer is None:
            self._timer = loop.call_later(self.timeout_s, self._sweep)
        try:
            request = await context.read()
        except asyncio.CancelledError:
            if task not in self._late:
                raise  # the call was cancelled, not swept
            self._late.discard(task)
            task.uncancel()
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"the request message did not arrive within "
                                f"{self.timeout_s:g}s (JOBRUNNER_HTTP_BODY_TIMEOUT)")
            raise AssertionError("abort returns only by raising") from None
        finally:
            self._waiting.pop(task, None)
        if request is grpc.aio.EOF:
            try:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "the call ended without its request message")
            except grpc.aio.AbortError:
                raise
            except Exception:
                # grpc had ended the call and sent its status (a message it could not
                # decompress, or past the size limit): no second one, and no traceback
                # in the log for it (any client could fill the log so).
                raise asyncio.CancelledError from None
        return request

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + 0.001  # a timer may fire up to a millisecond early
        earliest: float | None = None
        for task, deadline in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[task]
                self._late.add(task)
                task.cancel()
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._timer = loop.call_at(earliest, self._sweep)


_DAPR_SERVICE = "/dapr.proto.runtime.v1.Dapr/"


class _Decoding(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The jobs methods of the Dapr service, each request read within its deadline
    (FirstMessages) and decoded so that bytes that are not its message (truncated, bad
    UTF-8 in a string) are INVALID_ARGUMENT, as Dapr answers them: a deserializer that
    raises makes grpc.aio answer UNKNOWN and log a traceback, a log any client could
    fill. The Dapr methods not served are left to _OtherServices, before any decoding.
    Each method's handler is made once."""

    def __init__(self, handlers: list[grpc.GenericRpcHandler], first: FirstMessages) -> None:
        self._handlers = handlers
        self._first = first
        self._wrapped: dict[str, Any] = {}

    def service(self, details: Any) -> Any:
        handler = self._wrapped.get(details.method)
        if handler is None:
            if (not details.method.startswith(_DAPR_SERVICE)
                    or details.method[len(_DAPR_SERVICE):] not in JOB_METHODS):
                return None
            handler = next((h for g in self._handlers
                            if (h := g.service(details)) is not None), None)
            if handler is None:
                return None
            handler = self._wrapped[details.method] = _decoding(handler, self._first)
        return handler


def _decoding(handler: Any, first: FirstMessages) -> Any:
    """A jobs method's unary handler as a stream-unary one that reads its one message by
    its deadline (a unary handler is called only once the message is in)."""
    decode, behavior = handler.request_deserializer, handler.unary_unary
    assert asyncio.iscoroutinefunction(behavior), "the jobs methods are served on the loop"

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:  # DecodeError, or a message past its limits
            return _Undecodable(f"the request is not a valid message: {exc}")

    async def checked(requests: Any, context: Any) -> Any:
        request = await first.read(context)
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return grpc.stream_unary_rpc_method_handler(
        checked, request_deserializer=deserialize,
        response_serializer=handler.response_serializer)


class _OtherServices(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Any method of any other service (AppCallback, health, reflection...): UNIMPLEMENTED
    with the same clear message as the Dapr methods that are not served."""

    def service(self, details: Any) -> Any:
        method = details.method.removeprefix(_DAPR_SERVICE)  # a Dapr method by its name
        return _refuse(grpc.StatusCode.UNIMPLEMENTED, UNIMPLEMENTED_MESSAGE.format(method=method))
