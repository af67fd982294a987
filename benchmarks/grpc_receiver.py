"""The gRPC delivery receiver: an app with `--app-protocol grpc`, as Dapr's SDKs serve
it: `dapr.proto.runtime.v1.AppCallback/OnJobEvent` on grpc.aio, answering OK.

Run as its own process (`python -m benchmarks.grpc_receiver --port P --control-port C
--core N`), pinned to one core like the HTTP receiver. Each call is recorded as the
HTTP receiver records a POST (arrival time, `/job/<name>`, the
`jobrunner-scheduled-ms` metadata), and the same control endpoints
(`/_ctl/stats`, `/_ctl/take`) are served over HTTP on the control port, so the
scenarios count and time gRPC deliveries with the code they use for HTTP ones.

Unlike the HTTP receiver (a raw asyncio protocol, a few microseconds a request),
this one pays for a real gRPC server in Python: its CPU per call is several times
higher, so a burst shows its core's limit sooner; the scenario reports its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import subprocess
import time
from typing import Any

from benchmarks.procs import (
    LOOPBACK,
    BenchError,
    Procs,
    child_env,
    free_port,
    python_cmd,
    wait_until,
)
from benchmarks.receiver import ReceiverClient, _Http, _Store, install_uvloop, pin_to_core

SCHEDULED_MS = "jobrunner-scheduled-ms"


def serve(port: int, control_port: int, core: int | None) -> None:
    pin_to_core(core)
    install_uvloop()
    from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
    from grpc import aio

    store = _Store()
    ok = appcallback_pb2.JobEventResponse()

    class Callback(appcallback_pb2_grpc.AppCallbackServicer):
        async def OnJobEvent(self, request: Any, context: Any) -> Any:
            store.arrived.append(time.time())
            store.paths.append(b"/job/" + request.name.encode())
            sched = next((v for k, v in context.invocation_metadata() or () if k == SCHEDULED_MS),
                         None)
            store.sched.append(sched.encode("latin-1") if sched is not None else None)
            return ok

    async def main() -> None:
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        appcallback_pb2_grpc.add_AppCallbackServicer_to_server(  # type: ignore[no-untyped-call]
            Callback(), server)
        server.add_insecure_port(f"{LOOPBACK}:{port}")
        await server.start()
        loop = asyncio.get_running_loop()
        control = await loop.create_server(lambda: _Http(store), LOOPBACK, control_port,
                                           reuse_address=True)
        async with control:
            await server.wait_for_termination()

    asyncio.run(main())


class GrpcReceiverClient(ReceiverClient):
    """The control endpoints of a running gRPC receiver; `url` is the app's address."""

    def __init__(self, port: int, control_port: int) -> None:
        super().__init__(control_port)
        self.grpc_port = port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.grpc_port}"


# Port pairs a receiver is tried on: a free port may be taken by another process (another
# benchmark's own free port) before the receiver binds it, which ends the receiver.
_ATTEMPTS = 3


def _answers_or_ended(client: GrpcReceiverClient, proc: subprocess.Popen[bytes]) -> bool:
    return client.alive() or proc.poll() is not None


def start_grpc_receiver(procs: Procs, core: int | None = 1) -> GrpcReceiverClient:
    for attempt in range(1, _ATTEMPTS + 1):
        port, control_port = free_port(), free_port()
        cmd = python_cmd("-m", "benchmarks.grpc_receiver", "--port", str(port),
                         "--control-port", str(control_port))
        if core is not None:
            cmd += ["--core", str(core)]
        # "receiver-1": counted with the HTTP receiver in the CPU figures (benchmarks/cpu.py
        # groups by the name without its number); that one is idle while this one works.
        proc = procs.start("receiver-1", cmd, env=child_env())
        client = GrpcReceiverClient(port, control_port)
        wait_until(functools.partial(_answers_or_ended, client, proc), 15.0,
                   "the gRPC receiver")
        if proc.poll() is None:
            return client
        if attempt == _ATTEMPTS:
            raise BenchError(f"the gRPC receiver did not start (exit code {proc.returncode}) "
                             f"on {_ATTEMPTS} pairs of ports")
    raise AssertionError("unreachable")


def _main() -> None:
    parser = argparse.ArgumentParser(description="benchmark gRPC delivery receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--core", type=int, default=None)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.port, args.control_port, args.core)


if __name__ == "__main__":
    _main()
