"""Slow clients cannot stall the API (issue 10, part 1), against a real `jobrunner api`.

The API runs as `jobrunner api` does anywhere: 2 processes x 8 threads, so 16 threads in
all. Against it, STALLED (160, 10x its threads) connections of each kind, all at once:

- heads: a request line, then one more header line every TRICKLE_S, never the blank line;
- bodies: a whole head announcing a 4 KiB body, then one byte of it every TRICKLE_S;
- idle: connected, and nothing sent.

While they are all held, a well-behaved client's requests (schedule, read back, health)
are each answered within ANSWER_DEADLINE_S (they take milliseconds); and every stalled
connection is closed by the server (end of stream, or a reset) within its timeout and a
margin: the head and idle ones after JOBRUNNER_HTTP_HEADER_TIMEOUT, the body ones after
JOBRUNNER_HTTP_BODY_TIMEOUT with a 408. The trickle comes faster than either timeout, so
only a deadline on the whole head or body closes them, not one on silence between bytes.
Loopback only; bounded in time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from dapr.proto.runtime.v1 import dapr_pb2_grpc, jobs_pb2

from app.processes.serve import DEFAULT_PROCESSES, DEFAULT_THREADS
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for

PROCESSES, THREADS = DEFAULT_PROCESSES, DEFAULT_THREADS  # as `jobrunner api` runs anywhere
STALLED = 10 * PROCESSES * THREADS  # of each kind
HEADER_TIMEOUT_S = 6.0
BODY_TIMEOUT_S = 6.0
TRICKLE_S = 0.5
ANSWER_DEADLINE_S = 5.0
CLOSE_MARGIN_S = 15.0  # a busy 2-core machine: far more than the server needs
GOOD_REQUESTS = 20

pytestmark = pytest.mark.timeout(180)


@dataclass
class Api:
    port: int
    log: Path


@contextlib.contextmanager
def _running_api(redis_server: RedisProcess, tmp_path: Path, **env_extra: str) -> Iterator[Api]:
    """`jobrunner api` (python -m app.cli api) with short read timeouts, on a free port."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url,
           "JOBRUNNER_PREFIX": f"slow{os.getpid()}x{port}", "APP_ID": "slow-clients",
           "APP_URL": "http://127.0.0.1:9", "DAPR_HTTP_PORT": str(port),
           "DAPR_GRPC_PORT": "off", "DAPR_API_TOKEN": "",
           "JOBRUNNER_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
           "JOBRUNNER_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT_S), **env_extra}
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "app.cli", "api", "--processes", str(PROCESSES),
             "--threads", str(THREADS)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1],
        )  # fmt: skip
    try:
        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return _get(port, "/healthz")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout=60, interval=0.1, what="`jobrunner api` to answer /healthz")
        yield Api(port, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def api(redis_server: RedisProcess, tmp_path: Path) -> Iterator[Api]:
    with _running_api(redis_server, tmp_path) as running:
        yield running


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_DEADLINE_S)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Stalled:
    """One stalled connection: what it trickles, and when the server closed it."""

    kind: str
    sock: socket.socket
    opened: float
    trickle: bytes = b""
    received: bytes = b""
    closed_at: float | None = None


@dataclass
class Stallers:
    """The stalled connections, a thread trickling into them and one watching for their
    end of stream."""

    port: int
    conns: list[Stalled] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, kind: str, first: bytes, trickle: bytes) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if first:
            sock.sendall(first)
        sock.setblocking(False)
        with self.lock:
            self.conns.append(Stalled(kind, sock, time.monotonic(), trickle))

    def open_all(self) -> None:
        for i in range(STALLED):
            self.open("heads", b"POST /v1.0-alpha1/jobs/heads HTTP/1.1\r\nHost: x\r\n",
                      b"X-Slow: 1\r\n")
            self.open("bodies", b"POST /v1.0-alpha1/jobs/body%d HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{" % i,
                      b" ")
            self.open("idle", b"", b"")

    def open_count(self) -> int:
        with self.lock:
            return sum(1 for c in self.conns if c.closed_at is None)

    def _trickle(self) -> None:
        while not self.stop.wait(TRICKLE_S):
            with self.lock:
                conns = [c for c in self.conns if c.closed_at is None and c.trickle]
            for conn in conns:
                try:
                    conn.sock.send(conn.trickle)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass  # closed by the server: the watcher records it

    def _watch(self) -> None:
        with selectors.DefaultSelector() as selector:
            registered: set[int] = set()
            while not self.stop.is_set():
                with self.lock:
                    fresh = [c for c in self.conns if id(c) not in registered]
                for conn in fresh:
                    selector.register(conn.sock, selectors.EVENT_READ, conn)
                    registered.add(id(conn))
                for key, _ in selector.select(0.1):
                    conn = key.data
                    try:
                        data = conn.sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""  # a reset: closed by the server as well
                    if data:
                        conn.received += data
                        continue
                    conn.closed_at = time.monotonic()
                    selector.unregister(conn.sock)

    def start(self) -> None:
        for target in (self._trickle, self._watch):
            threading.Thread(target=target, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        for conn in self.conns:
            conn.sock.close()


def _schedule(port: int, name: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_DEADLINE_S)
    try:
        body = json.dumps({"dueTime": "1h", "data": {"n": name}})
        conn.request("POST", f"/v1.0-alpha1/jobs/{name}", body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_stalled_connections_neither_stop_other_clients_nor_stay_open(api: Api) -> None:
    stallers = Stallers(api.port)
    stallers.start()
    try:
        stallers.open_all()
        assert stallers.open_count() == 3 * STALLED

        # A well-behaved client, while every stalled connection is held: each request on
        # a new connection (the accept and the head read are what slow clients would
        # block), each answered in time (http.client's timeout is the deadline).
        answered = []
        for i in range(GOOD_REQUESTS):
            started = time.monotonic()
            assert _schedule(api.port, f"good{i}") == 204
            status, body = _get(api.port, f"/v1.0-alpha1/jobs/good{i}")
            assert status == 200 and json.loads(body)["data"] == {"n": f"good{i}"}
            assert _get(api.port, "/healthz")[0] == 200
            answered.append(time.monotonic() - started)
        # ... and they were all still held meanwhile: nothing was closed to make room.
        assert stallers.open_count() == 3 * STALLED, (
            f"stalled connections closed before the good client was done "
            f"({max(answered):.2f} s for its slowest round)")

        # Then the server closes every one of them, each within its timeout and a margin.
        def all_closed() -> bool:
            return stallers.open_count() == 0

        wait_for(all_closed, timeout=max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + CLOSE_MARGIN_S,
                 interval=0.1, what=f"the server to close the stalled connections "
                                    f"({stallers.open_count()} still open)")
        for conn in stallers.conns:
            assert conn.closed_at is not None
            timeout = BODY_TIMEOUT_S if conn.kind == "bodies" else HEADER_TIMEOUT_S
            held = conn.closed_at - conn.opened
            # Not before its timeout (the trickle kept it busy), not long after it.
            assert timeout * 0.8 <= held <= timeout + CLOSE_MARGIN_S, (conn.kind, held)
            if conn.kind == "bodies" and conn.received:
                assert conn.received.startswith(b"HTTP/1.1 408 "), conn.received[:200]
                assert b'"errorCode":"ERR_BODY_READ"' in conn.received
            elif conn.kind != "bodies":
                assert conn.received == b"", (conn.kind, conn.received[:200])
        assert any(c.received for c in stallers.conns if c.kind == "bodies"), \
            "no trickled body got its 408"
    finally:
        stallers.close()
    assert "Traceback" not in api.log.read_text()


# --- the gRPC port -------------------------------------------------------------------------

GRPC_MAX_CONNECTIONS = 16  # per process (JOBRUNNER_HTTP_MAX_CONNECTIONS bounds both ports)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def test_idle_grpc_connections_are_bounded_and_closed(redis_server: RedisProcess,
                                                      tmp_path: Path) -> None:
    """gRPC connections opened and left idle (HTTP/2 said, no call: JOBRUNNER_GRPC_IDLE_
    TIMEOUT, here the header timeout), or that never say HTTP/2 (the header timeout), are
    closed, and no more than the connection bound
    are held per process: 20,000 of them took every file descriptor of the API's
    processes, whose HTTP side then answered nothing. Meanwhile the HTTP API answers,
    and a gRPC client's call is served once the idle ones are gone."""
    grpc_port = free_port()
    with _running_api(redis_server, tmp_path, DAPR_GRPC_PORT=str(grpc_port),
                      JOBRUNNER_HTTP_MAX_CONNECTIONS=str(GRPC_MAX_CONNECTIONS),
                      JOBRUNNER_GRPC_IDLE_TIMEOUT=str(HEADER_TIMEOUT_S)) as api:
        held: list[socket.socket] = []
        try:
            for i in range(10 * PROCESSES * GRPC_MAX_CONNECTIONS):
                sock = socket.create_connection(("127.0.0.1", grpc_port), timeout=10)
                if i % 5:
                    sock.sendall(H2_PREFACE)  # HTTP/2 said, then idle; else nothing said
                held.append(sock)
            opened = time.monotonic()
            assert _schedule(api.port, "while-held") == 204
            assert _get(api.port, "/healthz")[0] == 200

            def open_count() -> int:
                return sum(1 for s in held if not _closed_by_server(s))

            # Past the bound, refused at once (long before the idle ones are closed).
            bound = PROCESSES * GRPC_MAX_CONNECTIONS
            wait_for(lambda: open_count() <= bound, timeout=HEADER_TIMEOUT_S / 2,
                     interval=0.1, what=f"at most {bound} gRPC connections to stay open "
                                        f"({open_count()} are)")
            wait_for(lambda: open_count() == 0, timeout=HEADER_TIMEOUT_S + CLOSE_MARGIN_S,
                     interval=0.2, what=f"the server to close the idle gRPC connections "
                                        f"({open_count()} still open)")
            assert time.monotonic() - opened >= HEADER_TIMEOUT_S * 0.5  # not at once

            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            try:
                stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
                job = stub.GetJobAlpha1(jobs_pb2.GetJobRequest(name="while-held"),
                                        timeout=ANSWER_DEADLINE_S)
                assert job.job.name == "while-held"
            finally:
                channel.close()
        finally:
            for sock in held:
                sock.close()
    assert "Traceback" not in api.log.read_text()


def test_one_grpc_connection_holds_at_most_100_calls(redis_server: RedisProcess,
                                                     tmp_path: Path) -> None:
    """grpc's own default is no bound on a connection's streams: one connection whose
    client never read its answers held all of a process's 1,024 calls, and every other
    client's call was refused while it stayed open. The server says its bound in its
    HTTP/2 SETTINGS (SETTINGS_MAX_CONCURRENT_STREAMS, id 3); a client keeps to it, and
    grpc refuses a stream past it."""
    grpc_port = free_port()
    with (_running_api(redis_server, tmp_path, DAPR_GRPC_PORT=str(grpc_port)),
          socket.create_connection(("127.0.0.1", grpc_port), timeout=10) as sock):
        sock.sendall(H2_PREFACE)
        head = b""
        while len(head) < 9:
            head += sock.recv(9 - len(head))
        length, kind = int.from_bytes(head[:3], "big"), head[3]
        assert kind == 4, head  # the server's first frame: its SETTINGS
        body = b""
        while len(body) < length:
            body += sock.recv(length - len(body))
    settings = {int.from_bytes(body[i:i + 2], "big"): int.from_bytes(body[i + 2:i + 6], "big")
                for i in range(0, length, 6)}
    assert settings.get(3) == 100, settings


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (end of stream or a reset; what it sent
    before, its SETTINGS or a GOAWAY, is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def _answer_to(port: int, raw: bytes) -> tuple[bytes, bytes]:
    """The status line and body of the answer to `raw`, sent whole, the client's side then
    closed for writing (it still reads)."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_DEADLINE_S) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


def test_a_body_shorter_than_its_content_length_is_a_400_and_stores_nothing(api: Api) -> None:
    body = b'{"dueTime": "1h"}'
    status, answer = _answer_to(api.port, (
        b"POST /v1.0-alpha1/jobs/truncated HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (len(body) + 50)
        + body))
    assert status == b"HTTP/1.1 400 Bad Request", (status, answer)
    assert json.loads(answer)["errorCode"] == "ERR_BODY_READ", answer
    assert _get(api.port, "/v1.0-alpha1/jobs/truncated")[0] == 404
