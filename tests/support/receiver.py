"""A real HTTP receiver on localhost that records every delivery.

Its listen backlog takes a worker's connection burst: http.server's default
is 5, and a worker opens dozens of keep-alive connections at once; past the
backlog the kernel drops handshakes, and those requests hang until the
worker's delivery timeout, then are retried (and may be delivered twice).
That would be the receiver failing, not the engine, so tests can count
deliveries exactly. Its serve loop polls for shutdown every 5 ms instead of
500 ms, which keeps teardown short.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BACKLOG = 1024
SHUTDOWN_POLL_S = 0.005


class _Server(ThreadingHTTPServer):
    request_queue_size = BACKLOG  # listen() backlog (see the module doc)
    daemon_threads = True


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.time() when the request line arrived


# A responder's answer: close the connection, with no answer at all.
DROP = 0


@dataclass
class Receiver:
    """Answers every POST with `status` (or what `responder` returns: a status, or a
    status and headers; DROP: none, the connection closed) and records it. `on_answered`
    is called once an answer is written (on the client's socket)."""

    host: str = "127.0.0.1"
    port: int = 0
    status: int = 200
    responder: Callable[[Delivery], int | tuple[int, dict[str, str]]] | None = None
    on_answered: Callable[[Delivery], None] | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                delivery = Delivery(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, arrived
                )
                with receiver._lock:
                    receiver.deliveries.append(delivery)
                answer = receiver.responder(delivery) if receiver.responder else receiver.status
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                if status == DROP:
                    self.close_connection = True
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if receiver.on_answered is not None:
                    receiver.on_answered(delivery)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = _Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": SHUTDOWN_POLL_S}, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def hold(self, path: str, timeout: float = 30.0) -> threading.Event:
        """Answer 200 to every POST, but to one of `path` only once the returned event is
        set (or `timeout` passes): a delivery held in flight, by the app."""
        release = threading.Event()

        def answer(delivery: Delivery) -> int:
            if delivery.path == path:
                release.wait(timeout)
            return 200

        self.responder = answer
        return release

    def received(self, path: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if path is None or d.path == path]
