"""A closed-loop gRPC load generator for Dapr's ScheduleJob: C calls in flight over K
connections, each call sent as soon as the previous one on its slot is answered.

Runs as its own process (`python -m benchmarks.grpc_loadgen ...`) and prints one JSON
object like benchmarks/loadgen.py's: calls done, seconds, status codes, latency
percentiles and its own CPU time. Every call is a whole ScheduleJobRequest for a job of
its own: serialized once, with fixed-width names whose digits are patched per call.

Two clients, one event loop each: `h2` (the default), HTTP/2 frames written here (see
H2Connection: a tenth of grpc.aio's CPU per call, so that on two shared cores the API
gets the rest), and `grpc`, grpc.aio itself (the reference: both count the same statuses).
Each connection is a TCP connection of its own, which the API processes' SO_REUSEPORT
spreads.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks.procs import LOOPBACK, BenchError, child_env, python_cmd
from benchmarks.receiver import install_uvloop, pin_to_core
from benchmarks.stats import summarize

SCHEDULE_JOB = "/dapr.proto.runtime.v1.Dapr/ScheduleJob"
_DIGITS = 9
_PLACEHOLDER = b"#" * _DIGITS


def schedule_template(prefix: str, due_time: str) -> bytes:
    """A serialized ScheduleJobRequest for `<prefix>-#########`: the seed's data (a
    StringValue Any) due at `due_time`."""
    from dapr.proto.runtime.v1 import jobs_pb2
    from google.protobuf import any_pb2, wrappers_pb2

    data = any_pb2.Any()
    data.Pack(wrappers_pb2.StringValue(value="R2-D2:Oil Change"))
    job = jobs_pb2.Job(name=f"{prefix}-{_PLACEHOLDER.decode()}", due_time=due_time, data=data)
    raw = jobs_pb2.ScheduleJobRequest(job=job).SerializeToString()
    assert raw.count(_PLACEHOLDER) == 1
    return raw


# --- A gRPC client on HTTP/2 frames written here (the default) ----------------------------
#
# grpc.aio spends about 250,000 instructions of Python and C-core on each call, as much as
# a quarter of the API's own cost: on two shared cores that is taken from the API. This
# client speaks the same wire protocol (RFC 9113 frames, gRPC's length-prefixed message,
# the status in the trailers) with every header block it sends written once: literal
# fields that never touch HPACK's dynamic table, so one encoding serves every call. What
# comes back is decoded in full with `hpack` (the server may index its headers), and each
# call's `grpc-status` is read from its trailers: a call is OK only with status 0 after
# `:status 200`. Flow control: the server's connection window is respected (calls wait
# for its WINDOW_UPDATE); ours is opened wide once, and topped up, so the answers never
# wait. PINGs are answered, SETTINGS acknowledged, GOAWAY and RST_STREAM end calls.

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = \
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_SETTINGS_INITIAL_WINDOW_SIZE = 0x4
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65_535
_FRAME_HEAD = struct.Struct(">HBBBI")  # length (24 bits: 16 + 8), type, flags, stream
_GRPC_NAMES: dict[int, str] = {}
_DECODED_BLOCKS = 1000  # header blocks kept decoded, at most


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload) << 8 | kind).to_bytes(4, "big") + bytes((flags,)) \
        + stream.to_bytes(4, "big") + payload


def _literal(name: bytes, value: bytes, name_index: int = 0) -> bytes:
    """An HPACK literal field without indexing, no Huffman (RFC 7541 6.2.2); `name_index`
    names a static table entry instead of spelling the name."""
    assert len(name) < 127 and len(value) < 127 and name_index < 15
    head = bytes((name_index,)) if name_index else b"\x00" + bytes((len(name),)) + name
    return head + bytes((len(value),)) + value


def request_headers(authority: str, method: str) -> bytes:
    """The header block of every call (RFC 7541 static entries 3 `:method POST` and 6
    `:scheme http`; 4 is `:path`, 1 `:authority`)."""
    return (b"\x83\x86" + _literal(b":path", method.encode(), 4)
            + _literal(b":authority", authority.encode(), 1)
            + _literal(b"content-type", b"application/grpc")
            + _literal(b"te", b"trailers"))


def status_name(code: int) -> str:
    if not _GRPC_NAMES:
        import grpc

        _GRPC_NAMES.update({c.value[0]: c.name for c in grpc.StatusCode})
    return _GRPC_NAMES.get(code, f"STATUS_{code}")


class _Stream:
    __slots__ = ("code", "http_ok", "message_bytes", "sent")

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.http_ok = False
        self.code: int | None = None
        self.message_bytes = 0


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection with `slots` calls in flight, each sent as soon as the one
    before it on its slot has ended (closed loop)."""

    def __init__(self, authority: str, method: str, next_message: Callable[[], bytes | None],
                 done: Callable[[str, float], None], slots: int) -> None:
        import hpack

        self.headers_block = request_headers(authority, method)
        self.next_message = next_message
        self.done = done
        self.slots = slots
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 65_536
        self.decoded: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.window = _DEFAULT_WINDOW  # what the server lets us send (connection)
        self.stream_window = _DEFAULT_WINDOW  # ... and on each stream, from its SETTINGS
        self.received = 0  # DATA bytes since our last WINDOW_UPDATE
        self.waiting: list[bytes] = []  # messages held back by the server's window
        self.header_stream = 0  # a header block continues in CONTINUATION frames
        self.header_flags = 0
        self.header_parts: list[bytes] = []
        self.closed = asyncio.get_running_loop().create_future()
        self.accepting = True

    # -- sending ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = struct.pack(">HI", 0x2, 0) \
            + struct.pack(">HI", _SETTINGS_INITIAL_WINDOW_SIZE, _MAX_WINDOW)  # no push
        self.out += [_PREFACE, _frame(_SETTINGS, 0, 0, settings),
                     _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _MAX_WINDOW - _DEFAULT_WINDOW))]
        self._flush()

    def begin(self) -> None:
        for _ in range(self.slots):
            self._start()
        self._flush()

    def _start(self) -> None:
        """The next call on a free slot, if the run goes on."""
        message = self.next_message() if self.accepting else None
        if message is None:
            return
        self._send(message)

    def _send(self, message: bytes) -> None:
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        if len(body) > self.window or len(body) > self.stream_window:
            self.waiting.append(message)
            return
        self.window -= len(body)
        stream = self.next_id
        self.next_id += 2
        self.streams[stream] = _Stream(time.perf_counter())
        self.out.append(_frame(_HEADERS, _END_HEADERS, stream, self.headers_block))
        self.out.append(_frame(_DATA, _END_STREAM, stream, body))

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    # -- receiving -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 9:
                high, low, kind, flags, stream = _FRAME_HEAD.unpack_from(buf, pos)
                length = high << 8 | low
                if end - pos - 9 < length:
                    break
                payload = bytes(buf[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream & 0x7FFF_FFFF, payload)
        except Exception as exc:  # a frame we cannot read: the connection is over
            self._fail(f"bad frame from the server: {exc!r}")
        del buf[:pos]
        if self.received > _MAX_WINDOW // 2:
            self.out.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        self._flush()

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self.header_stream and kind != _CONTINUATION:
            raise ValueError("a header block was cut by another frame")
        if kind == _DATA:
            self.received += len(payload)
            if flags & _PADDED:
                payload = payload[1:len(payload) - payload[0]]
            call = self.streams.get(stream)
            if call is not None:
                call.message_bytes += len(payload)
                if flags & _END_STREAM:
                    self._end(stream, None)  # no trailers: not a complete gRPC answer
        elif kind == _HEADERS:
            if flags & _PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & _PRIORITY:
                payload = payload[5:]
            self.header_parts = [payload]
            self.header_flags = flags
            if flags & _END_HEADERS:
                self._headers(stream)
            else:
                self.header_stream = stream
        elif kind == _CONTINUATION:
            if stream != self.header_stream:
                raise ValueError("CONTINUATION of another stream")
            self.header_parts.append(payload)
            if flags & _END_HEADERS:
                self.header_stream = 0
                self._headers(stream)
        elif kind == _SETTINGS:
            if not flags & _ACK:
                for i in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack_from(">HI", payload, i)
                    if key == _SETTINGS_INITIAL_WINDOW_SIZE:
                        self.stream_window = value
                self.out.append(_frame(_SETTINGS, _ACK, 0))
                self._resume()
        elif kind == _PING:
            if not flags & _ACK:
                self.out.append(_frame(_PING, _ACK, 0, payload))
        elif kind == _WINDOW_UPDATE:
            if stream == 0:
                self.window += struct.unpack(">I", payload)[0] & 0x7FFF_FFFF
                self._resume()
        elif kind == _RST_STREAM:
            if stream in self.streams:
                self._end(stream, None, f"RST_STREAM_{struct.unpack('>I', payload)[0]}")
        elif kind == _GOAWAY:
            last = struct.unpack_from(">I", payload)[0] & 0x7FFF_FFFF
            self.accepting = False
            for sid in [s for s in self.streams if s > last]:
                self._end(sid, None, "GOAWAY")

    def _headers(self, stream: int) -> None:
        block = b"".join(self.header_parts)
        fields: Any = self.decoded.get(block)
        if fields is None:
            # Decoded even for a stream we do not know: the decoder's table must follow.
            table = self.decoder.header_table
            before = tuple(table.dynamic_entries)
            fields = self.decoder.decode(block, raw=True)
            if len(self.decoded) >= _DECODED_BLOCKS:  # errors' messages differ, call by call
                self.decoded.clear()
            if tuple(table.dynamic_entries) == before:
                # A block that left the table as it was reads the same next time, while
                # the table stays so (the server's answers repeat: after the first few,
                # they are indexed fields only).
                self.decoded[block] = fields
            else:
                self.decoded.clear()
        call = self.streams.get(stream)
        if call is None:
            return
        for name, value in fields:
            if name == b":status":
                call.http_ok = value == b"200"
            elif name == b"grpc-status":
                call.code = int(value)
        if self.header_flags & _END_STREAM:
            self._end(stream, call.code)

    def _end(self, stream: int, code: int | None, why: str = "") -> None:
        call = self.streams.pop(stream)
        if code is None:
            name = why or "NO_GRPC_STATUS"
        elif not call.http_ok:
            name = "HTTP_NOT_200"
        elif code == 0 and call.message_bytes < 5:
            name = "OK_WITHOUT_MESSAGE"
        else:
            name = status_name(code)
        self.done(name, time.perf_counter() - call.sent)
        self._start()

    def _resume(self) -> None:
        waiting, self.waiting = self.waiting, []
        for message in waiting:
            self._send(message)

    def _fail(self, why: str) -> None:
        self.accepting = False
        for sid in list(self.streams):
            self._end(sid, None, why)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.accepting = False
        for sid in list(self.streams):
            self._end(sid, None, "CONNECTION_LOST")
        if not self.closed.done():
            self.closed.set_result(None)


async def _run_h2(port: int, template: bytes, count: int, duration: float, concurrency: int,
                  connections: int) -> dict[str, Any]:
    head, tail = template.split(_PLACEHOLDER)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    issued = 0
    deadline = float("inf")
    last_end = 0.0

    def next_message() -> bytes | None:
        nonlocal issued
        if issued >= count or time.perf_counter() >= deadline:
            return None
        issued += 1
        return b"%s%0*d%s" % (head, _DIGITS, issued - 1, tail)

    def done(code: str, latency: float) -> None:
        nonlocal last_end
        latencies.append(latency)
        codes[code] += 1
        last_end = time.perf_counter()

    conns: list[H2Connection] = []
    authority = f"{LOOPBACK}:{port}"
    for k in range(connections):
        slots = concurrency // connections + (1 if k < concurrency % connections else 0)
        def protocol(slots: int = slots) -> H2Connection:
            return H2Connection(authority, SCHEDULE_JOB, next_message, done, slots)

        _, conn = await asyncio.wait_for(loop.create_connection(protocol, LOOPBACK, port), 10.0)
        conns.append(conn)
    start = time.perf_counter()
    cpu0 = time.process_time()
    deadline = start + duration
    for conn in conns:
        conn.begin()
    # Every slot stops at the deadline; calls still open 30 s after it never ended.
    while any(c.streams or c.waiting for c in conns) and time.perf_counter() < deadline + 30.0:
        await asyncio.sleep(0.02)
    cpu = time.process_time() - cpu0
    elapsed = (last_end or time.perf_counter()) - start
    lost = sum(len(c.streams) + len(c.waiting) for c in conns)
    if lost:
        codes["DEADLINE_EXCEEDED"] += lost
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return _report(latencies, codes, elapsed, cpu, concurrency, connections, "h2")


async def _run_grpc(port: int, template: bytes, count: int, duration: float,
                    concurrency: int, connections: int) -> dict[str, Any]:
    import grpc

    head, tail = template.split(_PLACEHOLDER)
    channels = [
        grpc.aio.insecure_channel(f"{LOOPBACK}:{port}",
                                  options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    calls = [ch.unary_unary(SCHEDULE_JOB) for ch in channels]  # bytes in, bytes out
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 10.0)
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    issued = 0
    start = time.perf_counter()
    cpu0 = time.process_time()
    deadline = start + duration

    async def slot(k: int) -> None:
        nonlocal issued
        call = calls[k % len(calls)]
        while issued < count and time.perf_counter() < deadline:
            request = b"%s%0*d%s" % (head, _DIGITS, issued, tail)
            issued += 1
            sent = time.perf_counter()
            try:
                await call(request, timeout=30.0)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            latencies.append(time.perf_counter() - sent)
            codes[code] += 1

    await asyncio.gather(*(slot(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    for ch in channels:
        await ch.close()
    return _report(latencies, codes, elapsed, cpu, concurrency, connections, "grpc")


def _report(latencies: list[float], codes: Counter[str], elapsed: float, cpu: float,
            concurrency: int, connections: int, client: str) -> dict[str, Any]:
    return {
        "requests": sum(codes.values()),
        "ok": codes.get("OK", 0),
        "seconds": elapsed,
        "rate": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "statuses": dict(sorted(codes.items())),
        "latency_ms": summarize([x * 1000.0 for x in latencies]),
        "cpu_s": cpu,
        "concurrency": concurrency,
        "connections": connections,
        "client": client,
    }


CLIENTS = {"h2": _run_h2, "grpc": _run_grpc}


def run_grpc_load(port: int, count: int, duration: float, concurrency: int, connections: int,
                  prefix: str, due_time: str, core: int | None = None,
                  timeout: float | None = None, client: str = "h2") -> dict[str, Any]:
    """Runs the generator in a child process and returns its report."""
    cmd = python_cmd(
        "-m", "benchmarks.grpc_loadgen", "--port", str(port), "--count", str(count),
        "--duration", repr(duration), "--concurrency", str(concurrency),
        "--connections", str(connections), "--prefix", prefix, "--due-time", due_time,
        "--client", client,
    )
    if core is not None:
        cmd += ["--core", str(core)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=child_env(), stdout=out, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout or duration + 60.0)
        except subprocess.TimeoutExpired:
            raise BenchError("the gRPC load generator did not finish in time") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5.0)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise BenchError(f"the gRPC load generator failed: {stderr.decode()[-2000:]}")
    return dict(orjson.loads(stdout))


def _main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop gRPC ScheduleJob load generator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10**9)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--core", type=int, default=None)
    parser.add_argument("--prefix", default="grpc")
    parser.add_argument("--due-time", default="1h")
    parser.add_argument("--client", choices=CLIENTS, default="h2")
    args = parser.parse_args()
    pin_to_core(args.core)
    install_uvloop()  # its C transports: a little less CPU a call than asyncio's loop
    template = schedule_template(args.prefix, args.due_time)
    result = asyncio.run(CLIENTS[args.client](args.port, template, args.count, args.duration,
                              args.concurrency, min(args.connections, args.concurrency)))
    sys.stdout.buffer.write(orjson.dumps(result))


if __name__ == "__main__":
    _main()
