"""The gRPC server of an API process: the Dapr service (service.py) with Dapr's token
check and bounded messages. Built here, started by app.processes (serve.py), which runs
one in each API process beside the HTTP app; those processes share the port through
SO_REUSEPORT (grpc's default on Linux), and the kernel spreads connections over them.
"""

from __future__ import annotations

import hmac
from concurrent import futures
from typing import Any

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from app.grpc.service import UNIMPLEMENTED_MESSAGE, JobsServicer
from app.settings import Settings
from app.store.store import Store

TOKEN_HEADER = "dapr-api-token"
# Room for the job's other fields (name, schedule strings, policy) beside its data;
# data itself is bounded by validation (413 -> RESOURCE_EXHAUSTED with a clear message).
_ENVELOPE_BYTES = 64 * 1024
# RPCs one process holds at once (running or queued for a thread); more are refused
# with RESOURCE_EXHAUSTED by grpc rather than queued without bound.
MAX_CONCURRENT_RPCS = 1024


def max_message_bytes(settings: Settings) -> int:
    return settings.max_data_bytes + _ENVELOPE_BYTES


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def create_server(settings: Settings, store: Store, threads: int) -> grpc.Server:
    """A server for the Dapr service on settings.http_host:settings.grpc_port, bound but
    not started. Raises RuntimeError when the port cannot be bound."""
    interceptors = [_TokenCheck(settings.api_token)] if settings.api_token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes(settings)),
            ("grpc.so_reuseport", 1),  # the API processes share the port
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    dapr_pb2_grpc.add_DaprServicer_to_server(  # type: ignore[no-untyped-call]
        JobsServicer(settings, store), server
    )
    server.add_generic_rpc_handlers((_OtherServices(),))  # after Dapr's: only the rest
    server.add_insecure_port(bind_address(settings.http_host, settings.grpc_port))
    return server


def _refuse(code: grpc.StatusCode, message: str) -> Any:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    # Unary whatever the method is: the call ends with the status before any message.
    return grpc.unary_unary_rpc_method_handler(handler)


class _TokenCheck(grpc.ServerInterceptor):  # type: ignore[misc]
    """DAPR_API_TOKEN as Dapr checks it (pkg/api/grpc/auth.go): the `dapr-api-token`
    metadata on every call, else UNAUTHENTICATED with Dapr's messages."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        given = next((v for k, v in details.invocation_metadata or () if k == TOKEN_HEADER),
                     None)
        if given is None:
            return _refuse(grpc.StatusCode.UNAUTHENTICATED,
                           "missing api token in request metadata")
        raw = given if isinstance(given, bytes) else given.encode()
        if not hmac.compare_digest(raw, self._token):
            return _refuse(grpc.StatusCode.UNAUTHENTICATED,
                           "authentication error: api token mismatch")
        return continuation(details)


class _OtherServices(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Any method of any other service (AppCallback, health, reflection...): UNIMPLEMENTED
    with the same clear message as the Dapr methods that are not served."""

    def service(self, details: Any) -> Any:
        return _refuse(grpc.StatusCode.UNIMPLEMENTED,
                       UNIMPLEMENTED_MESSAGE.format(method=details.method))
