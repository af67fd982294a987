"""The delivery receiver: a fast HTTP/1.1 server that answers every POST 200 and records it.

Run as its own process (`python -m benchmarks.receiver --port P --core C`), pinned to
one core so it never takes both from the workers it measures. A raw asyncio.Protocol
on uvloop, keep-alive, no framework: parsing costs a few microseconds a request.

For each delivery it keeps the arrival time (time.time(), taken when the request's
bytes arrive), the path (`/job/<name>`) and the `jobrunner-scheduled-ms` header.
Control endpoints on the same port:
    GET  /_ctl/stats  -> {"count": N, "cpu": process CPU seconds, "pid": P}
    POST /_ctl/take   -> every record since the last take, then forgets them
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import time
from dataclasses import dataclass

import orjson

from benchmarks.procs import (
    LOOPBACK,
    BenchError,
    Procs,
    child_env,
    free_port,
    python_cmd,
    wait_until,
)

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_SCHED_HEADER = b"jobrunner-scheduled-ms:"


class _Store:
    def __init__(self) -> None:
        self.arrived: list[float] = []
        self.paths: list[bytes] = []
        self.sched: list[bytes | None] = []

    def take(self) -> bytes:
        payload = orjson.dumps(
            {
                "t": self.arrived,
                "p": [p.decode("latin-1") for p in self.paths],
                "s": [s.decode("latin-1").strip() if s is not None else None for s in self.sched],
            }
        )
        self.arrived, self.paths, self.sched = [], [], []
        return payload


class _Http(asyncio.Protocol):
    """Minimal HTTP/1.1 request parser: Content-Length and chunked bodies, keep-alive."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        close = False
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = buf[:head_end]
            lower = head.lower()
            body_start = head_end + 4
            cl = lower.find(b"\r\ncontent-length:")
            if cl >= 0:
                eol = lower.find(b"\r\n", cl + 2)
                length = int(lower[cl + 17 : eol if eol >= 0 else len(lower)])
                end = body_start + length
                if len(buf) < end:
                    break
            elif b"\r\ntransfer-encoding: chunked" in lower:
                end = _chunked_end(buf, body_start)
                if end < 0:
                    break
            else:
                end = body_start
            line_end = head.find(b"\r\n")
            request_line = head[:line_end] if line_end >= 0 else head
            parts = request_line.split(b" ")
            method, path = parts[0], parts[1] if len(parts) > 1 else b"/"
            if path.startswith(b"/_ctl/"):
                out.append(self._control(path))
            elif method == b"POST":
                sched = None
                at = lower.find(_SCHED_HEADER)
                if at >= 0:
                    eol = lower.find(b"\r\n", at)
                    sched = head[at + len(_SCHED_HEADER) : eol if eol >= 0 else len(head)]
                self.store.arrived.append(now)
                self.store.paths.append(path)
                self.store.sched.append(sched)
                out.append(_OK)
            else:
                out.append(_OK)
            if b"\r\nconnection: close" in lower:
                close = True
            buf = buf[end:]
            if close:
                break
        self.buf = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
            if close:
                self.transport.close()

    def _control(self, path: bytes) -> bytes:
        if path.startswith(b"/_ctl/take"):
            body = self.store.take()
        else:
            body = orjson.dumps(
                {"count": len(self.store.arrived), "cpu": time.process_time(), "pid": os.getpid()}
            )
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


def _chunked_end(buf: bytes, pos: int) -> int:
    """Index just past a chunked body starting at `pos`, or -1 when incomplete."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        size = int(buf[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            return -1 if trailer_end < 0 else trailer_end + 2
        pos += size + 2
        if pos > len(buf):
            return -1


def pin_to_core(core: int | None) -> None:
    if core is None or not hasattr(os, "sched_setaffinity"):
        return
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {available[core % len(available)]})


def install_uvloop() -> str:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return "asyncio"


def serve(port: int, core: int | None) -> None:
    pin_to_core(core)
    install_uvloop()
    store = _Store()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Http(store), LOOPBACK, port, backlog=4096, reuse_address=True
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@dataclass
class Record:
    name: str
    arrived: float  # epoch seconds
    sched_ms: int | None  # from the jobrunner-scheduled-ms header


class ReceiverClient:
    """Talks to a running receiver's control endpoints."""

    def __init__(self, port: int) -> None:
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _get(self, method: str, path: str, timeout: float = 30.0) -> bytes:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.read()
        finally:
            conn.close()

    def stats(self) -> dict[str, float]:
        return dict(orjson.loads(self._get("GET", "/_ctl/stats")))

    def count(self) -> int:
        return int(self.stats()["count"])

    def alive(self) -> bool:
        try:
            self.stats()
            return True
        except (OSError, http.client.HTTPException):  # (not ours answering: not yet)
            return False

    def take(self) -> list[Record]:
        raw = orjson.loads(self._get("POST", "/_ctl/take", timeout=120.0))
        records = []
        for t, p, s in zip(raw["t"], raw["p"], raw["s"], strict=True):
            name = p.rsplit("/", 1)[-1]
            sched = int(s) if s and s.isdigit() else None
            records.append(Record(name, t, sched))
        return records


def start_receiver(procs: Procs, core: int | None = 1) -> ReceiverClient:
    port = free_port()
    cmd = python_cmd("-m", "benchmarks.receiver", "--port", str(port))
    if core is not None:
        cmd += ["--core", str(core)]
    procs.start("receiver", cmd, env=child_env())
    client = ReceiverClient(port)
    wait_until(client.alive, 15.0, "the receiver")
    return client


def _main() -> None:
    parser = argparse.ArgumentParser(description="benchmark delivery receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--core", type=int, default=None)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.port, args.core)


if __name__ == "__main__":
    _main()

__all__ = ["BenchError", "ReceiverClient", "Record", "start_receiver"]
