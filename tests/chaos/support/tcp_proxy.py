"""A TCP proxy in front of redis-server that can make Redis unreachable, as its own process.

    python -m tests.chaos.support.tcp_proxy --upstream-port P --ready-file F

Modes:
    up       listen and forward both ways
    refused  the listening socket is closed and every proxied connection aborted
             (both sides): clients get resets, then connection refused; Redis
             itself keeps running with all its data

A control server on its own port: POST /mode {"mode": "up" | "refused"};
GET /mode. The ports are written to --ready-file (JSON) once both listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

from aiohttp import web

HOST = "127.0.0.1"


class Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.mode = "up"
        self.server: asyncio.AbstractServer | None = None
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    async def listen(self) -> None:
        self.server = await asyncio.start_server(self._handle, HOST, self.port,
                                                 reuse_address=True, backlog=1024)
        sockets = getattr(self.server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    async def set_mode(self, mode: str) -> None:
        if mode == "refused":
            self.mode = mode
            if self.server is not None:
                self.server.close()
                self.server = None
            for client, upstream in list(self.links):
                client.transport.abort()
                upstream.transport.abort()
            self.links.clear()
        elif mode == "up":
            if self.server is None:
                await self.listen()
            self.mode = mode
        else:
            raise ValueError(f"unknown mode {mode!r}")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode != "up":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self.links.add(link)
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            self.links.discard(link)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()


async def main(upstream_port: int, ready_file: Path, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    proxy = Proxy(upstream_port)
    proxy.port = port
    await proxy.listen()

    async def mode(request: web.Request) -> web.Response:
        if request.method == "POST":
            body = await request.json()
            try:
                await proxy.set_mode(str(body.get("mode")))
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"mode": proxy.mode})

    app = web.Application()
    app.router.add_route("*", "/mode", mode)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    ports = {"port": proxy.port, "control_port": runner.addresses[0][1], "pid": os.getpid()}
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, ready_file)
    await stop.wait()
    with contextlib.suppress(Exception):
        await runner.cleanup()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.upstream_port, args.ready_file, args.port))


if __name__ == "__main__":
    run()
