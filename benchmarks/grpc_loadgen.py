"""A closed-loop gRPC load generator for Dapr's ScheduleJob: C calls in flight over K
connections, each call sent as soon as the previous one on its slot is answered.

Runs as its own process (`python -m benchmarks.grpc_loadgen ...`) and prints one JSON
object like benchmarks/loadgen.py's: calls done, seconds, status codes, latency
percentiles and its own CPU time. grpc.aio on one event loop; the requests are
serialized once (fixed-width names, the digits patched per call) and sent as bytes, so
the generator spends its time in gRPC itself. Each connection has its own subchannel
pool: separate TCP connections, which the API processes' SO_REUSEPORT spreads.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import orjson

from benchmarks.procs import LOOPBACK, BenchError, child_env, python_cmd
from benchmarks.receiver import pin_to_core
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


async def _run(port: int, template: bytes, count: int, duration: float, concurrency: int,
               connections: int) -> dict[str, Any]:
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
    return {
        "requests": len(latencies),
        "ok": codes.get("OK", 0),
        "seconds": elapsed,
        "rate": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "statuses": dict(sorted(codes.items())),
        "latency_ms": summarize([x * 1000.0 for x in latencies]),
        "cpu_s": cpu,
        "concurrency": concurrency,
        "connections": connections,
    }


def run_grpc_load(port: int, count: int, duration: float, concurrency: int, connections: int,
                  prefix: str, due_time: str, core: int | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
    """Runs the generator in a child process and returns its report."""
    cmd = python_cmd(
        "-m", "benchmarks.grpc_loadgen", "--port", str(port), "--count", str(count),
        "--duration", repr(duration), "--concurrency", str(concurrency),
        "--connections", str(connections), "--prefix", prefix, "--due-time", due_time,
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
    args = parser.parse_args()
    pin_to_core(args.core)
    template = schedule_template(args.prefix, args.due_time)
    result = asyncio.run(_run(args.port, template, args.count, args.duration,
                              args.concurrency, min(args.connections, args.concurrency)))
    sys.stdout.buffer.write(orjson.dumps(result))


if __name__ == "__main__":
    _main()
