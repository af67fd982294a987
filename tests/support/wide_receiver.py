"""The test `Receiver`, with a listen backlog that takes a worker's connection burst
and a quick shutdown.

http.server's default backlog is 5. A worker opens dozens of keep-alive
connections at once in a burst; past the backlog the kernel drops handshakes,
and those requests hang until the worker's delivery timeout, then are retried
(and may be delivered twice). That is the receiver failing, not the engine:
tests that count deliveries exactly use this one. Its serve loop also polls
for shutdown every 20 ms instead of 500 ms, which keeps teardown short.
"""

from __future__ import annotations

import socketserver
from http.server import ThreadingHTTPServer
from unittest import mock

from tests.support.receiver import Receiver

BACKLOG = 1024


def _serve_forever(self: socketserver.BaseServer, poll_interval: float = 0.02) -> None:
    socketserver.BaseServer.serve_forever(self, poll_interval)


def start_wide_receiver() -> Receiver:
    # listen() and the serving thread both happen inside start()
    with mock.patch.object(ThreadingHTTPServer, "request_queue_size", BACKLOG), \
            mock.patch.object(ThreadingHTTPServer, "serve_forever", _serve_forever):
        return Receiver().start()
