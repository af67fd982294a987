"""A closed-loop HTTP/1.1 load generator: C connections, each sending its next request
as soon as the previous response arrives. Raw asyncio.Protocol on uvloop, so it costs
a small fraction of what the server under test spends per request.

Runs as its own process (`python -m benchmarks.loadgen ...`) and prints one JSON
object: requests done, seconds, statuses, latency percentiles and its own CPU time,
so a report can show that the generator was not the bottleneck.
Keep-alive when the server allows it; a new connection per request when it answers
`Connection: close` (gunicorn's sync workers do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from tqdm import tqdm

from benchmarks.procs import LOOPBACK, BenchError, child_env, python_cmd
from benchmarks.receiver import install_uvloop, pin_to_core
from benchmarks.stats import summarize

RequestFactory = Callable[[int], bytes]


class _Conn(asyncio.Protocol):
    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send_next()

    def send_next(self) -> None:
        request = self.gen.next_request()
        if request is None or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        self.waiting = True
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.waiting:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            status = int(head[9:12])
            cl = head.find(b"\r\ncontent-length:")
            if status == 204 or status == 304 or 100 <= status < 200:
                length = 0
            elif cl >= 0:
                eol = head.find(b"\r\n", cl + 2)
                length = int(head[cl + 17 : eol if eol >= 0 else len(head)])
            else:
                return  # body runs to the end of the connection: finished in connection_lost
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            self.buf = self.buf[end:]
            self._done(status)
            if b"\r\nconnection: close" in head:
                if self.transport is not None:
                    self.transport.close()
                return
            self.send_next()

    def _done(self, status: int) -> None:
        self.waiting = False
        self.gen.record(time.perf_counter() - self.sent_at, status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            if self.buf.startswith(b"HTTP/1."):
                self._done(int(self.buf[9:12]))
            else:
                self.waiting = False
                self.gen.errors += 1
        self.transport = None
        self.gen.connection_closed()


class _Generator:
    def __init__(
        self, port: int, factory: RequestFactory, count: int, duration: float, concurrency: int
    ) -> None:
        self.port = port
        self.factory = factory
        self.count = count
        self.duration = duration
        self.concurrency = concurrency
        self.issued = 0
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.open = 0
        self.deadline = 0.0
        self.done: asyncio.Future[None] | None = None

    def next_request(self) -> bytes | None:
        if self.issued >= self.count or time.perf_counter() > self.deadline:
            return None
        request = self.factory(self.issued)
        self.issued += 1
        return request

    def record(self, latency: float, status: int) -> None:
        self.latencies.append(latency)
        self.statuses[status] += 1

    def connection_closed(self) -> None:
        self.open -= 1
        more = self.issued < self.count and time.perf_counter() <= self.deadline
        if more and self.errors < 1000:
            self._connect()
        elif self.open <= 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _connect(self) -> None:
        self.open += 1
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: _Conn(self), LOOPBACK, self.port))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        if task.exception() is not None:
            self.errors += 1
            self.connection_closed()

    async def run(self) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        start = time.perf_counter()
        cpu0 = time.process_time()
        self.deadline = start + self.duration
        for _ in range(self.concurrency):
            self._connect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done, self.duration + 30.0)
        elapsed = time.perf_counter() - start
        ok = sum(n for s, n in self.statuses.items() if 200 <= s < 300)
        return {
            "requests": len(self.latencies),
            "ok": ok,
            "errors": self.errors,
            "seconds": elapsed,
            "rate": len(self.latencies) / elapsed if elapsed > 0 else 0.0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "latency_ms": summarize([x * 1000.0 for x in self.latencies]),
            "cpu_s": time.process_time() - cpu0,
            "concurrency": self.concurrency,
        }


def ceiling_request(port: int) -> RequestFactory:
    body = b'{"data":"ceiling"}'
    request = (
        b"POST /job/ceiling HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"jobrunner-scheduled-ms: 0\r\nContent-Length: %d\r\n\r\n%s" % (port, len(body), body)
    )
    return lambda i: request


def schedule_request(port: int, prefix: str, due_time: str) -> RequestFactory:
    """`POST /v1.0-alpha1/jobs/<prefix>-<i>` with a seed-sized job due at `due_time`."""
    body = orjson.dumps(
        {
            "dueTime": due_time,
            "data": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": "R2-D2:Oil Change",
            },
        }
    )
    head = (
        b"Host: 127.0.0.1:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (port, len(body))
    )
    start = b"POST /v1.0-alpha1/jobs/" + prefix.encode()

    def factory(i: int) -> bytes:
        return b"%s-%07d HTTP/1.1\r\n%s%s" % (start, i, head, body)

    return factory


def bulk_request(port: int, prefix: str, due_time: str, batch: int) -> RequestFactory:
    """`POST /v1.0-alpha1/jobs` with `batch` seed-sized jobs due at `due_time`, named
    `<prefix>-<request>-<k>` (the bulk route's body: {"jobs": [{"name", ...}, ...]})."""
    tail = orjson.dumps({"dueTime": due_time, "data": {
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": "R2-D2:Oil Change"}})[1:]  # `"dueTime":...}`: each job's body after its name
    start = b"POST /v1.0-alpha1/jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port
    head = b'{"name":"' + prefix.encode() + b"-%07d-%04d" + b'",'

    def factory(i: int) -> bytes:
        body = b'{"jobs":[' + b",".join(head % (i, k) + tail for k in range(batch)) + b"]}"
        return (start + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(body) + body)

    return factory


def run_load(
    port: int,
    kind: str,
    count: int,
    duration: float,
    concurrency: int,
    core: int | None,
    prefix: str = "load",
    due_time: str = "",
    timeout: float | None = None,
    label: str = "",
    batch: int = 0,
) -> dict[str, object]:
    """Runs the generator in a child process (so it has its own core) and returns its report."""
    cmd = python_cmd(
        "-m", "benchmarks.loadgen", "--port", str(port), "--kind", kind, "--count", str(count),
        "--duration", repr(duration), "--concurrency", str(concurrency), "--prefix", prefix,
        "--due-time", due_time,
    )
    if core is not None:
        cmd += ["--core", str(core)]
    if batch:
        cmd += ["--batch", str(batch)]
    limit = timeout or duration + 60.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=child_env(), stdout=out, stderr=err,
                                start_new_session=True)
        try:
            _wait_with_bar(proc, duration, limit, label or f"load {kind}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5.0)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise BenchError(f"the load generator failed: {stderr.decode()[-2000:]}")
    return dict(orjson.loads(stdout))


def _wait_with_bar(proc: subprocess.Popen[bytes], duration: float, limit: float,
                   label: str) -> None:
    start = time.monotonic()
    with tqdm(total=round(duration, 1), desc=label, unit="s", disable=None, leave=False,
              bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s") as bar:
        while proc.poll() is None:
            elapsed = time.monotonic() - start
            if elapsed > limit:
                raise BenchError("the load generator did not finish in time")
            bar.n = round(min(elapsed, duration), 1)
            bar.refresh()
            time.sleep(0.2)


def _main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop HTTP load generator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=["ceiling", "schedule", "bulk"], required=True)
    parser.add_argument("--batch", type=int, default=1000, help="bulk: jobs per request")
    parser.add_argument("--count", type=int, default=10**9)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--core", type=int, default=None)
    parser.add_argument("--prefix", default="load")
    parser.add_argument("--due-time", default="")
    args = parser.parse_args()
    pin_to_core(args.core)
    install_uvloop()
    if args.kind == "ceiling":
        factory = ceiling_request(args.port)
    elif args.kind == "bulk":
        factory = bulk_request(args.port, args.prefix, args.due_time, args.batch)
    else:
        factory = schedule_request(args.port, args.prefix, args.due_time)
    gen = _Generator(args.port, factory, args.count, args.duration, args.concurrency)
    result = asyncio.run(gen.run())
    sys.stdout.buffer.write(orjson.dumps(result))


if __name__ == "__main__":
    _main()
