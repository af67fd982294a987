"""Deliveries to apps that speak gRPC: Dapr's `AppCallback.OnJobEvent`, on grpc.aio.

The messages are the ones the `dapr` package ships (its generated appcallback_pb2),
and the methods those its stubs call, so the app sees exactly what a Dapr sidecar
sends. The request is built as daprd builds it (pkg/channel/grpc/grpc_channel.go,
`sendJob`): the job's name, its data as an Any, method `job/<name>`, the Any's
type URL as the content type, and an HTTP extension saying POST.

One channel per app (its address and its id: Origin), kept for the worker's life: a
channel is an HTTP/2 connection that carries all the calls to that app at once, so it
does what the keep-alive pool of workers/http_client.py does for HTTP.

Apps built on an older SDK only have `AppCallbackAlpha.OnJobEventAlpha1`. Like
daprd, a call that the app answers UNIMPLEMENTED is tried once on the other
method; unlike daprd, which method answered is remembered per app address, so
such an app costs one extra call once, not one per delivery. The memory corrects
itself: whichever method the app stops implementing is tried on the other again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from grpc import aio

from workers.http_client import Origin

log = logging.getLogger("jobrunner.worker")

Metadata = tuple[tuple[str, str], ...]

# gRPC's own reconnect backoff grows to 120 s by default, and while it lasts every
# call fails at once without trying to connect: an app back from an outage would
# fail retries for up to two minutes. The failure policy paces retries instead.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

_POST = common_pb2.HTTPExtension(verb=common_pb2.HTTPExtension.Verb.POST)
# The methods, as the dapr package's stubs call them, but answered in bytes: grpc's own
# decoding of an answer that is no JobEventResponse logs a traceback and gives None,
# which read as a delivery (grpc-go, as daprd uses it, fails such a call INTERNAL).
_STABLE = "/dapr.proto.runtime.v1.AppCallback/OnJobEvent"
_ALPHA = "/dapr.proto.runtime.v1.AppCallbackAlpha/OnJobEventAlpha1"


def job_event_request(name: str, data: any_pb2.Any | None) -> Any:
    """The JobEventRequest daprd sends for a trigger of job `name` (no data: no Any,
    and an empty content type, as daprd's nil Any gives)."""
    return appcallback_pb2.JobEventRequest(
        name=name,
        data=data,
        method=f"job/{name}",
        content_type=data.type_url if data is not None else "",
        http_extension=_POST,
    )


@dataclass(frozen=True)
class Reply:
    code: grpc.StatusCode
    details: str = ""
    timed_out: bool = False  # our deadline passed (not a DEADLINE_EXCEEDED the app sent)


class _AppChannel:
    """The channel to one app address and the stub methods on it."""

    def __init__(self, origin: Origin) -> None:
        host = f"[{origin.host}]" if ":" in origin.host else origin.host  # IPv6 literal
        target = f"{host}:{origin.port}"
        if origin.tls:
            self.channel = aio.secure_channel(target, grpc.ssl_channel_credentials(),
                                              options=_CHANNEL_OPTIONS)
        else:
            self.channel = aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.stable, self.alpha = (self.channel.unary_unary(
            path, request_serializer=appcallback_pb2.JobEventRequest.SerializeToString,
            response_deserializer=None, _registered_method=True) for path in (_STABLE, _ALPHA))
        self.use_alpha = False  # set once the app answered only OnJobEventAlpha1


class GrpcClient:
    def __init__(self) -> None:
        self._apps: dict[Origin, _AppChannel] = {}

    def _app(self, origin: Origin) -> _AppChannel:
        app = self._apps.get(origin)
        if app is None:
            app = self._apps[origin] = _AppChannel(origin)  # connects on the first call
        return app

    def uses_alpha(self, origin: Origin) -> bool:
        app = self._apps.get(origin)
        return app is not None and app.use_alpha

    async def on_job_event(self, origin: Origin, request: Any, metadata: Metadata,
                           timeout: float) -> Reply:
        """Call OnJobEvent (or OnJobEventAlpha1, see the module doc) within `timeout`
        seconds in all; the app's answer as a status code."""
        app = self._app(origin)
        deadline = asyncio.get_running_loop().time() + timeout
        alpha_first = app.use_alpha
        first, second = (app.alpha, app.stable) if alpha_first else (app.stable, app.alpha)
        reply = await self._call(first, request, metadata, deadline)
        if reply.code is not grpc.StatusCode.UNIMPLEMENTED:
            return reply
        other = await self._call(second, request, metadata, deadline)
        if other.code is grpc.StatusCode.UNIMPLEMENTED:
            return reply  # neither: the app's first answer stands
        # The method that answered, not a toggle: calls at once, each finding the other
        # method, undid each other's (an alpha-only app paid the extra call every time).
        if app.use_alpha == alpha_first:
            app.use_alpha = not alpha_first
            log.info("app at %s:%d answers %s", origin.host, origin.port,
                     "OnJobEventAlpha1 only" if app.use_alpha else "OnJobEvent again")
        return other

    @staticmethod
    async def _call(method: Any, request: Any, metadata: Metadata, deadline: float) -> Reply:
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            return Reply(grpc.StatusCode.DEADLINE_EXCEEDED, "", timed_out=True)
        try:
            answer = await method(request, timeout=remaining, metadata=metadata)
        except aio.AioRpcError as exc:
            code = exc.code()
            timed_out = code is grpc.StatusCode.DEADLINE_EXCEEDED and loop.time() >= deadline
            return Reply(code, exc.details() or "", timed_out)
        try:
            appcallback_pb2.JobEventResponse.FromString(answer)
        except DecodeError as exc:
            return Reply(grpc.StatusCode.INTERNAL,
                         f"the app's answer is not a JobEventResponse: {exc}")
        return Reply(grpc.StatusCode.OK)

    async def close(self) -> None:
        apps, self._apps = list(self._apps.values()), {}
        await asyncio.gather(*(a.channel.close() for a in apps), return_exceptions=True)
