"""The chaos receiver: the "app" that jobs are delivered to, as its own process.

    python -m tests.chaos.support.receiver_server --ready-file F [--mode healthy] [--port P]

(the tests give it a port outside the ephemeral range, procs.stable_port, so
that it can listen again after `down`)

Fast enough for tens of thousands of deliveries a second: a bare asyncio
protocol on uvloop, requests parsed by httptools (keep-alive, one request at a
time per connection, as the worker's client sends them). Every request is
recorded as

    [trigger_id, name, attempt, scheduled_ms, arrival_ms, status, late]

(`late` = 1: answered only after the slow-mode delay, i.e. after the worker's
delivery timeout; such an answer is not an accepted delivery).

Modes of the app port:
    healthy  answer 200 at once
    error    answer `status` (500) at once
    slow     answer 200 after `delay` seconds
    down     the listening socket is closed and every open connection aborted:
             connections are refused, as when the app process is gone

A control server on its own port (always up) serves:
    GET  /count              {"n": records so far, "mode": current mode}
    GET  /records?since=N    the records from index N on (JSON array)
    POST /mode               {"mode": ..., "delay": s, "status": n}; answers
                             {"mode": ..., "at_ms": when it took effect}
    GET  /transitions        [[mode, at_ms], ...]

The ports are written to --ready-file (JSON) once both servers listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httptools
import orjson
from aiohttp import web

HOST = "127.0.0.1"
MODES = ("healthy", "error", "slow", "down")
_REASONS = {200: "OK", 500: "Internal Server Error", 503: "Service Unavailable"}


def _response(status: int) -> bytes:
    reason = _REASONS.get(status, "Status")
    return f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n".encode()


OK = _response(200)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class State:
    def __init__(self, port: int, mode: str) -> None:
        self.port = port
        self.mode = mode
        self.delay = 2.0
        self.status = 500
        self.records: list[list[Any]] = []
        self.transitions: list[list[Any]] = [[mode, time.time() * 1000]]
        self.conns: set[AppProtocol] = set()
        self.server: asyncio.AbstractServer | None = None


class AppProtocol(asyncio.Protocol):
    """One connection of the app port."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower.startswith(b"jobrunner-"):
            self.headers[lower] = value

    def on_message_complete(self) -> None:
        arrived = time.time() * 1000
        st, h = self.state, self.headers
        path = self.url.decode("latin-1").split("?", 1)[0]
        name = unquote(path.rsplit("/", 1)[-1])
        record = [
            h.get(b"jobrunner-trigger-id", b"").decode(),
            name,
            int(h.get(b"jobrunner-attempt", b"0") or 0),
            int(h.get(b"jobrunner-scheduled-ms", b"0") or 0),
            arrived,
            200,
            0,
        ]
        keep_alive = self.parser.should_keep_alive()
        transport = self.transport
        assert transport is not None
        if st.mode == "slow":
            record[6] = 1
            st.records.append(record)
            asyncio.get_running_loop().call_later(st.delay, self._late_answer, keep_alive)
            return
        if st.mode == "error":
            record[5] = st.status
            st.records.append(record)
            transport.write(_response(st.status))
        else:
            st.records.append(record)
            transport.write(OK)
        if not keep_alive:
            transport.close()

    def _late_answer(self, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(OK)
        if not keep_alive:
            transport.close()


async def _listen(state: State) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: AppProtocol(state), HOST, state.port,
                                    reuse_address=True, backlog=4096)


async def set_mode(state: State, mode: str, delay: float | None = None,
                   status: int | None = None) -> float:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if delay is not None:
        state.delay = float(delay)
    if status is not None:
        state.status = int(status)
    if mode == "down":
        state.mode = mode
        if state.server is not None:
            state.server.close()  # stop listening: new connections are refused
            state.server = None
        for conn in list(state.conns):  # and the app's open connections die with it
            if conn.transport is not None:
                conn.transport.abort()
        state.conns.clear()
    else:
        if state.server is None:
            state.server = await _listen(state)
        state.mode = mode
    at = time.time() * 1000
    state.transitions.append([mode, at])
    return at


def control_app(state: State) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/count")
    async def count(request: web.Request) -> web.Response:
        return web.json_response({"n": len(state.records), "mode": state.mode})

    @routes.get("/records")
    async def records(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.Response(body=orjson.dumps(state.records[since:]),
                            content_type="application/json")

    @routes.get("/transitions")
    async def transitions(request: web.Request) -> web.Response:
        return web.json_response(state.transitions)

    @routes.post("/mode")
    async def mode(request: web.Request) -> web.Response:
        body = await request.json()
        try:
            at = await set_mode(state, body["mode"], body.get("delay"), body.get("status"))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"mode": state.mode, "at_ms": at})

    app = web.Application()
    app.add_routes(routes)
    return app


async def main(ready_file: Path, mode: str, port: int, control_port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = State(port, "healthy")
    state.server = await _listen(state)
    sockets = getattr(state.server, "sockets", None) or []
    state.port = sockets[0].getsockname()[1]
    if mode != "healthy":
        await set_mode(state, mode)
    runner = web.AppRunner(control_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, control_port)
    await site.start()
    ports = {"port": state.port, "control_port": runner.addresses[0][1], "pid": os.getpid()}
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, ready_file)
    await stop.wait()
    if state.server is not None:
        state.server.close()
    with contextlib.suppress(Exception):
        await runner.cleanup()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--mode", choices=MODES, default="healthy")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.ready_file, args.mode, args.port, args.control_port))


if __name__ == "__main__":
    run()
