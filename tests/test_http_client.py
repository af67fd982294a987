"""The workers' HTTP client (workers/http_client.py) against apps that answer wrongly:
raw sockets on 127.0.0.1, each writing what a broken or hostile app could. Every such
answer fails the one request with a clear reason, at once, and leaves nothing behind that
a later request could read as its own answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from workers import delivery
from workers.http_client import (
    MAX_RESPONSE_HEAD,
    STALE_CLOSE_S,
    HttpClient,
    Origin,
    PoolTimeout,
    Sent,
    ServerDisconnected,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
TIMEOUT_S = 30.0  # past any answer here: a request that waited for it failed the test
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


async def _request(reader: asyncio.StreamReader) -> bool:
    """Reads one request (head and body); False when the client closed instead."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return True


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Until the client closes the connection (the app holds it open till then)."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass


class App:
    """A TCP server whose `handler(reader, writer, n)` answers the n-th request (from 1,
    over all connections); counts the requests that arrived."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return Origin("127.0.0.1", self.server.sockets[0].getsockname()[1], False)

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await _request(reader):
                self.requests += 1
                await self.handler(reader, writer, self.requests)
                if writer.is_closing():
                    return
        except ConnectionError:
            pass  # the client gave up on an answer it judged bad: what is tested
        finally:
            writer.close()


async def _post(client: HttpClient, origin: Origin) -> tuple[int, str | None]:
    return await client.post(origin, "/job/x", b"{}", "Content-Type: application/json\r\n",
                             TIMEOUT_S)


def _run(handler: Handler, requests: int = 1) -> list[Any]:
    """`requests` POSTs one after another; each one's answer or the error it raised."""

    async def main() -> list[Any]:
        client = HttpClient(4)
        outcomes: list[Any] = []
        try:
            async with App(handler) as origin:
                for _ in range(requests):
                    try:
                        outcomes.append(await _post(client, origin))
                    except (ServerDisconnected, TimeoutError, OSError) as exc:
                        outcomes.append(exc)
        finally:
            client.close()
        return outcomes

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT_S * requests + 10))


def _failed(outcome: Any, says: str) -> None:
    assert isinstance(outcome, ServerDisconnected), outcome
    assert says in str(outcome), outcome


def test_an_endless_header_fails_the_request_at_the_bound_not_its_timeout() -> None:
    async def endless(r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
        for _ in range(64):  # 4 MiB, written as the client reads
            w.write(b"a" * 65536)
            await w.drain()
        await _until_closed(r)

    [outcome] = _run(endless)
    _failed(outcome, f"longer than {MAX_RESPONSE_HEAD} bytes")


@pytest.mark.parametrize("split", [None, 60_000, 70_000])
def test_a_head_past_the_bound_fails_however_the_reads_split_it(split: int | None) -> None:
    """Checked after parsing a whole read, a head of up to the bound plus one read was
    taken when that read also ended it."""
    head = b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nX-Big: " + b"a" * 100_000 + \
        b"\r\nContent-Length: 0\r\n\r\n"

    async def big(r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        for part in ([head] if split is None else [head[:split], head[split:]]):
            w.write(part)
            await w.drain()
            await asyncio.sleep(0.05)
        await _until_closed(r)

    [outcome] = _run(big)
    _failed(outcome, f"longer than {MAX_RESPONSE_HEAD} bytes")


def test_endless_interim_responses_fail_the_request_too() -> None:
    async def hints(r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        for _ in range(20_000):  # about 700 KB of 103 Early Hints
            w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            await w.drain()
        await _until_closed(r)

    [outcome] = _run(hints)
    _failed(outcome, "longer than")


def test_bytes_on_an_idle_connection_are_not_read_as_the_next_answer() -> None:
    """The app answers 200, then writes the start of another response while no request
    is out; the next request's answer is a 500. It must be read as the 500."""
    stray_written = asyncio.Event()

    async def stray(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            w.write(OK)
            await w.drain()
            w.write(b"HTTP/1.1 200 OK\r\nX-Stray: ")
            await w.drain()
            stray_written.set()
        else:
            w.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")

    async def main() -> list[int]:
        client = HttpClient(4)
        try:
            async with App(stray) as origin:
                first, _ = await _post(client, origin)
                await asyncio.wait_for(stray_written.wait(), TIMEOUT_S)
                # The stray bytes reach the client's connection on a later turn of the loop:
                # wait (a second at most) for the connection to be retired.
                idle = client._pool(origin).idle
                for _ in range(1000):
                    if all(not c.reusable or c.closed for c in idle):
                        break
                    await asyncio.sleep(0.001)
                second, _ = await _post(client, origin)
                return [first, second]
        finally:
            client.close()

    assert asyncio.run(main()) == [200, 500]


def test_a_second_answer_in_the_same_packet_retires_the_connection() -> None:
    async def twice(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        w.write(OK + b"HTTP/1.1 200 OK\r\nX-Stray: " if n == 1
                else b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")

    assert [status for status, _ in _run(twice, requests=2)] == [200, 500]


def test_a_protocol_upgrade_is_a_failure_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    async def upgrade(r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\n\r\n")
        await _until_closed(r)

    with caplog.at_level(logging.ERROR):
        [outcome] = _run(upgrade)
    _failed(outcome, "protocol upgrade")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("cut", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\nabc",
])
def test_an_answer_cut_short_by_a_close_is_no_answer(cut: bytes) -> None:
    """It said where it ends, and did not get there: not the 200 it began with."""
    async def truncated(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(cut)
        await w.drain()
        w.close()

    [outcome] = _run(truncated)
    _failed(outcome, "closed before the response ended")


@pytest.mark.parametrize("answer", [
    b"HTTP/1.0 200 OK\r\n\r\nabc",
    # RFC 9112, 6.3: a Transfer-Encoding that does not end in chunked is read to the close
    # (it was taken as an answer cut short, a failure)
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nabc",
], ids=["no-length", "not-chunked", "chunked-first", "not-quite-chunked"])
def test_an_answer_that_ends_with_the_connection_is_its_status(answer: bytes) -> None:
    """HTTP/1.0 style: no length, the close ends it (as Python's http.server answers)."""
    async def old_style(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(answer)
        await w.drain()
        w.close()

    assert _run(old_style) == [(200, None)]


def test_a_large_body_in_the_answers_read_is_no_overlong_head() -> None:
    """The head bound counted the body that came in the same read: a 200 with 100 KB of
    body was a failure, delivered again and again, then dead-lettered."""
    body = b"x" * 100_000
    async def big(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    assert _run(big, requests=2) == [(200, None), (200, None)]


async def _endless_chunks(w: asyncio.StreamWriter) -> None:
    for _ in range(4096):  # 256 MiB at most, as the client reads
        w.write(b"10000\r\n" + b"b" * 65536 + b"\r\n")
        await w.drain()


async def _endless_trailer(w: asyncio.StreamWriter) -> None:
    w.write(b"0\r\nX-Trailer: ")
    for _ in range(4096):
        w.write(b"t" * 65536)
        await w.drain()


@pytest.mark.parametrize("tail", [_endless_chunks, _endless_trailer], ids=["body", "trailer"])
def test_an_endless_answer_after_its_headers_is_its_status_at_the_bound(
        tail: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> None:
    """Read on to the deadline before, on the loop every app's deliveries share (seconds
    of another app's lateness, and a trailer's value built by concatenation); the status
    is all a delivery needs."""
    async def endless(r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await tail(w)
        await _until_closed(r)

    assert _run(endless) == [(503, "7")]


def test_final_headers_are_the_answer_when_the_body_is_still_coming_at_the_deadline() -> None:
    async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9999999999\r\n\r\nab")
        await _until_closed(r)

    async def main() -> Any:
        client = HttpClient(4)
        try:
            async with App(slow) as origin:
                return await client.post(origin, "/job/x", b"{}", "", 0.5)
        finally:
            client.close()

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT_S)) == (200, None)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 103 Early Hints\r\nRetry-After: 3600\r\n\r\n"
    b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nRetry-After: 3600\r\n\r\n",
    b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
    b"HTTP/1.1 503 Busy\r\nRetry-After: 3600\r\nContent-Length: 0\r\n\r\n",
], ids=["interim", "trailer", "second-answer"])
def test_retry_after_is_the_answers_own(answer: bytes) -> None:
    """Not an interim answer's, a trailer's or a second answer's (each was taken)."""
    async def answers(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(answer)

    assert _run(answers) == [(503, None)]


def test_an_ipv6_origin_is_bracketed_in_the_host_header() -> None:
    assert Origin("::1", 8080, False).host_header == "[::1]:8080"
    assert Origin("::1", 80, False).host_header == "[::1]"
    assert Origin("127.0.0.1", 8080, False).host_header == "127.0.0.1:8080"


def test_a_close_long_after_the_request_is_its_answer_not_a_reason_to_send_it_again() -> None:
    """On a kept-alive connection, the app reads the second request, works past the
    window of a stale connection, then closes: the request failed, once. (It was sent
    again on a new connection with a fresh timeout: one attempt could outlive its lease
    and meet its own retry.)"""
    async def hang_then_close(_r: asyncio.StreamReader, w: asyncio.StreamWriter,
                              n: int) -> None:
        if n == 1:
            w.write(OK)
            return
        await asyncio.sleep(STALE_CLOSE_S + 1.0)
        w.close()

    app_requests: list[int] = []

    async def main() -> list[Any]:
        client = HttpClient(4)
        app = App(hang_then_close)
        try:
            async with app as origin:
                outcomes: list[Any] = [await _post(client, origin)]
                try:
                    outcomes.append(await _post(client, origin))
                except ServerDisconnected as exc:
                    outcomes.append(exc)
                app_requests.append(app.requests)
                return outcomes
        finally:
            client.close()

    first, second = asyncio.run(main())
    assert first == (200, None)
    _failed(second, "closed before the response ended")
    assert app_requests == [2]


# --- post_now: the worker's delivery without a task, on an idle connection -------------


def _post_now(client: HttpClient, origin: Origin, timeout: float = TIMEOUT_S,
              calls: list[Sent] | None = None, headers: str = "") -> Sent | None:
    """post_now, its on_done checking that it comes once the outcome is in, and noting it
    in `calls`."""
    def on_done(sent: Sent) -> None:
        assert sent.done(), "on_done before the outcome"
        if calls is not None:
            calls.append(sent)

    return client.post_now(origin, "/job/x", b"{}",
                           headers or "Content-Type: application/json\r\n", timeout, None,
                           on_done)


async def _second_by_post_now(handler: Handler) -> tuple[Any, App, HttpClient]:
    """A first POST (it opens the connection), then a second by post_now on it: the
    second's result or error, the app, and the client (closed by the caller)."""
    client = HttpClient(4)
    app = App(handler)
    async with app as origin:
        assert await _post(client, origin) == (200, None)
        calls: list[Sent] = []
        sent = _post_now(client, origin, calls=calls)
        assert sent is not None
        try:
            outcome: Any = await asyncio.wait_for(sent, TIMEOUT_S)
        except (ServerDisconnected, TimeoutError, OSError) as exc:
            outcome = exc
        assert calls == [sent]  # on_done, once
    return outcome, app, client


def _second_by_post_now_alone(handler: Handler) -> tuple[Any, int]:
    """_second_by_post_now in a loop of its own: the outcome, and the requests the app
    received over all connections."""
    async def main() -> tuple[Any, int]:
        outcome, app, client = await _second_by_post_now(handler)
        client.close()
        return outcome, app.requests

    return asyncio.run(main())


def test_post_now_sends_nothing_without_an_idle_connection() -> None:
    async def main() -> tuple[Any, int]:
        client = HttpClient(4)
        app = App(lambda _r, w, _n: _answer(w, OK))
        try:
            async with app as origin:
                return _post_now(client, origin), app.requests
        finally:
            client.close()

    assert asyncio.run(main()) == (None, 0)


async def _answer(w: asyncio.StreamWriter, data: bytes) -> None:
    w.write(data)
    await w.drain()


def test_post_now_answers_on_the_kept_alive_connection_with_retry_after() -> None:
    async def busy(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await _answer(w, OK if n == 1 else
                      b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n")

    async def main() -> tuple[Any, int]:
        outcome, _, client = await _second_by_post_now(busy)
        pool = client._pool(next(iter(client._pools)))
        client.close()
        return outcome, pool.open

    # the connection went back to the pool, once
    assert asyncio.run(main()) == ((503, "7"), 1)


def test_post_now_on_a_connection_the_app_closed_at_once_is_sent_again_once() -> None:
    """The app closes a kept-alive connection as the request arrives: no answer, not the
    app's; sent again on a new connection (as post() does), and that is its one try
    again: the app closing that one too is the outcome."""
    async def close_second(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await _answer(w, OK)
        else:
            w.close()

    outcome, requests = _second_by_post_now_alone(close_second)
    assert isinstance(outcome, ServerDisconnected), outcome
    assert requests == 3  # the first POST, post_now's, and its one try again


@pytest.mark.parametrize("by", ["post", "post_now"])
def test_a_try_again_goes_on_a_new_connection_not_another_idle_one(by: str) -> None:
    """The app answers the first request of each connection and closes the connection at
    any later one (as an app that closes idle connections does). With two idle
    connections, the try again went on the second, which the app closed too: the attempt
    failed ("connection closed before the response"), the app having answered none."""
    served: list[int] = []  # the connection (its number) of each request the app read
    connections = iter(range(1, 100))
    both = asyncio.Event()

    async def first_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = next(connections)
        try:
            while await _request(reader):
                first = number not in served
                served.append(number)
                if not first:
                    return  # closed at once, no byte of an answer
                if len({*served}) == 2:
                    both.set()
                await asyncio.wait_for(both.wait(), TIMEOUT_S)  # two open at once
                await _answer(writer, OK)
        finally:
            writer.close()

    async def main() -> Any:
        client = HttpClient(4)
        server = await asyncio.start_server(first_only, "127.0.0.1", 0)
        origin = Origin("127.0.0.1", server.sockets[0].getsockname()[1], False)
        try:
            assert await asyncio.gather(_post(client, origin), _post(client, origin)) == \
                [(200, None)] * 2
            await asyncio.sleep(0)  # (the answers' connections back in the pool)
            assert len(client._pool(origin).idle) == 2
            if by == "post":
                return await asyncio.wait_for(_post(client, origin), TIMEOUT_S)
            sent = _post_now(client, origin)
            assert sent is not None
            return await asyncio.wait_for(sent, TIMEOUT_S)
        finally:
            client.close()
            server.close()

    assert asyncio.run(main()) == (200, None)
    assert len(served) == 4 and served[3] == 3  # one stale connection, then a new one


def test_post_now_a_close_long_after_the_request_is_its_answer() -> None:
    async def hang_then_close(_r: asyncio.StreamReader, w: asyncio.StreamWriter,
                              n: int) -> None:
        if n == 1:
            await _answer(w, OK)
            return
        await asyncio.sleep(STALE_CLOSE_S + 1.0)
        w.close()

    outcome, requests = _second_by_post_now_alone(hang_then_close)
    assert isinstance(outcome, ServerDisconnected), outcome
    assert requests == 2  # not sent again: the close was its answer


def test_cancelling_post_now_drops_its_connection_and_frees_its_place() -> None:
    """A worker that stops cancels what is in flight: the connection is closed (a late
    answer is nobody's) and its place in the pool is free for a new one."""
    async def hang(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await _answer(w, OK)
        elif n == 2:
            await _until_closed(r)
        else:
            await _answer(w, OK)

    async def main() -> list[Any]:
        client = HttpClient(1)  # one place: the next POST needs the cancelled one's
        app = App(hang)
        try:
            async with app as origin:
                assert await _post(client, origin) == (200, None)
                calls: list[Sent] = []
                sent = _post_now(client, origin, calls=calls)
                assert sent is not None
                for _ in range(int(TIMEOUT_S * 100)):  # until the app has the request
                    if app.requests == 2:
                        break
                    await asyncio.sleep(0.01)
                assert sent.cancel()
                assert client._pool(origin).open == 0  # the connection is gone already
                await asyncio.sleep(0)
                assert calls == [sent]  # the next turn: a stop gives the trigger back then
                return [app.requests, await asyncio.wait_for(_post(client, origin), 10)]
        finally:
            client.close()

    assert asyncio.run(main()) == [2, (200, None)]


def test_post_now_without_an_answer_in_time_fails_and_closes_its_connection() -> None:
    async def hang(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await _answer(w, OK)
        else:
            await _until_closed(r)

    async def main() -> tuple[Any, int]:
        client = HttpClient(4)
        try:
            async with App(hang) as origin:
                assert await _post(client, origin) == (200, None)
                sent = _post_now(client, origin, timeout=0.2)
                assert sent is not None
                await asyncio.wait({sent}, timeout=TIMEOUT_S)
                assert sent.done(), "no outcome by the request's timeout"
                return sent.exception(), client._pool(origin).open
        finally:
            client.close()

    outcome, still_open = asyncio.run(main())
    assert isinstance(outcome, TimeoutError), outcome
    assert still_open == 0  # the connection that timed out is closed, its place free


def test_post_now_with_a_request_that_cannot_be_framed_keeps_the_pool_whole() -> None:
    """A header value latin-1 cannot carry raises before any connection is taken: the
    idle connection stays idle, and the next POST gets it."""
    async def main() -> list[Any]:
        client = HttpClient(1)  # one place: a connection lost to the error would starve it
        try:
            async with App(lambda _r, w, _n: _answer(w, OK)) as origin:
                assert await _post(client, origin) == (200, None)
                pool = client._pool(origin)
                with pytest.raises(UnicodeEncodeError):
                    _post_now(client, origin, headers="dapr-api-token: tok\u20ac\r\n")
                return [pool.open, len(pool.idle), await asyncio.wait_for(
                    _post(client, origin), 10)]
        finally:
            client.close()

    assert asyncio.run(main()) == [1, 1, (200, None)]


def test_post_now_on_done_may_send_the_next_request_on_the_same_connection() -> None:
    """on_done comes the turn after the answer, the connection idle again: a worker's next
    delivery, sent from there, takes it."""
    async def main() -> tuple[list[Any], int, int]:
        client = HttpClient(4)
        outcomes: list[Any] = []
        finished = asyncio.get_running_loop().create_future()

        def next_one(sent: Sent) -> None:
            outcomes.append(sent.result())
            if len(outcomes) == 5:
                finished.set_result(None)
                return
            assert client.post_now(origin, "/job/x", b"{}", "", TIMEOUT_S, None,
                                   next_one) is not None, "its connection was not idle"

        app = App(lambda _r, w, _n: _answer(w, OK))
        try:
            async with app as origin:
                assert await _post(client, origin) == (200, None)
                assert client.post_now(origin, "/job/x", b"{}", "", TIMEOUT_S, None,
                                       next_one) is not None
                await asyncio.wait_for(finished, TIMEOUT_S)
                return outcomes, app.requests, client._pool(origin).open
        finally:
            client.close()

    outcomes, requests, connections = asyncio.run(main())
    assert outcomes == [(200, None)] * 5
    assert (requests, connections) == (6, 1)


def test_a_request_sent_from_a_timed_out_ones_on_done_times_out_at_its_own_deadline(
) -> None:
    """A timeout's on_done may send a request due to time out before those still out: the
    timer is armed for it, not only for the deadlines it knew before."""
    async def hang(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if n <= 3:
            await _answer(w, OK)
        else:
            await _until_closed(r)

    async def main() -> tuple[Any, float]:
        client = HttpClient(4)
        loop = asyncio.get_running_loop()
        late: asyncio.Future[Any] = loop.create_future()
        sent_at: list[float] = []

        def on_late(sent: Sent) -> None:
            late.set_result(sent.exception())

        def on_first(sent: Sent) -> None:
            assert isinstance(sent.exception(), TimeoutError)
            sent_at.append(loop.time())
            assert client.post_now(origin, "/job/x", b"{}", "", 0.3, None,
                                   on_late) is not None

        try:
            async with App(hang) as origin:
                # three idle connections: one to time out soon, one long, one for on_done
                assert await asyncio.gather(*(_post(client, origin) for _ in range(3))) == [
                    (200, None)] * 3
                assert client._pool(origin).open == 3
                assert client.post_now(origin, "/job/x", b"{}", "", TIMEOUT_S, None,
                                       lambda _s: None) is not None
                assert client.post_now(origin, "/job/x", b"{}", "", 0.2, None,
                                       on_first) is not None
                outcome = await asyncio.wait_for(late, TIMEOUT_S - 5)
                return outcome, loop.time() - sent_at[0]
        finally:
            client.close()

    outcome, took = asyncio.run(main())
    assert isinstance(outcome, TimeoutError), outcome
    assert took < TIMEOUT_S / 2  # its own 0.3 s, not the long request's deadline


def test_a_failing_on_done_is_reported_and_leaves_the_connection_usable() -> None:
    async def main() -> tuple[Any, tuple[int, str | None]]:
        client = HttpClient(1)
        reported: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))

        def broken(_sent: Sent) -> None:
            raise RuntimeError("a bug in the caller")

        try:
            async with App(lambda _r, w, _n: _answer(w, OK)) as origin:
                assert await _post(client, origin) == (200, None)
                sent = client.post_now(origin, "/job/x", b"{}", "", TIMEOUT_S, None, broken)
                assert sent is not None
                result = await asyncio.wait_for(sent, TIMEOUT_S)
                assert [str(c["exception"]) for c in reported] == ["a bug in the caller"]
                return result, await asyncio.wait_for(_post(client, origin), TIMEOUT_S)
        finally:
            client.close()

    assert asyncio.run(main()) == ((200, None), (200, None))


def test_a_post_waiting_for_a_connection_goes_before_post_nows_sent_from_on_done() -> None:
    """One connection, kept busy by a chain of post_now calls each sent from the last one's
    on_done (as a worker's next delivery is), and a post() waiting for it: the connection
    freed goes to the waiting post(), not to the chain's next request, which finds none
    (a worker then sends it by post(), in turn)."""
    async def slow_ok(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        await asyncio.sleep(0.002)
        await _answer(w, OK)

    async def main() -> tuple[Any, int, int]:
        client = HttpClient(1)
        chain = {"sent": 0, "refused": 0}

        def next_one(_sent: Sent | None = None) -> None:
            if chain["refused"]:
                return
            if client.post_now(origin, "/job/x", b"{}", "", TIMEOUT_S, 2.0,
                               next_one) is None:
                chain["refused"] += 1
            else:
                chain["sent"] += 1

        try:
            async with App(slow_ok) as origin:
                assert await _post(client, origin) == (200, None)
                next_one()
                try:
                    outcome: Any = await client.post(origin, "/job/x", b"{}", "", TIMEOUT_S,
                                                     queue_timeout=2.0)
                except PoolTimeout as exc:
                    outcome = exc
                return outcome, chain["sent"], chain["refused"]
        finally:
            client.close()

    outcome, sent, refused = asyncio.run(main())
    assert outcome == (200, None)  # on 247e06c: PoolTimeout after 2 s, the chain 900 sent
    assert (sent, refused) == (1, 1)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_request_an_app_never_reads_is_dropped_with_its_connection(
        monkeypatch: pytest.MonkeyPatch, loop: str) -> None:
    """An app that accepts and never reads: the request that timed out goes with its
    socket, not kept in the transport's buffer until the app reads (a close() waits for
    that: each attempt held its socket and its request's bytes for good)."""
    import socket

    from workers import http_client

    made: list[http_client._Connection] = []

    class Tracked(http_client._Connection):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(http_client, "_Connection", Tracked)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # takes little of it
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []

    async def main() -> list[Any]:
        client = HttpClient(4)
        origin = Origin("127.0.0.1", listener.getsockname()[1], False)
        body = b"x" * (8 * 1024 * 1024)  # far past what the kernel's buffers take
        outcomes: list[Any] = []
        try:
            for _ in range(2):
                try:
                    outcomes.append(await client.post(origin, "/job/x", body, "", 0.3))
                except (TimeoutError, ServerDisconnected, OSError) as exc:
                    outcomes.append(exc)
                with contextlib.suppress(BlockingIOError):
                    listener.setblocking(False)
                    accepted.append(listener.accept()[0])  # held open, never read
            deadline = asyncio.get_running_loop().time() + TIMEOUT_S
            while not all(c.closed for c in made):
                assert asyncio.get_running_loop().time() < deadline, "a connection stays"
                await asyncio.sleep(0.01)
            return outcomes
        finally:
            client.close()

    try:
        if loop == "uvloop":
            import uvloop

            outcomes = uvloop.run(main())
        else:
            outcomes = asyncio.run(main())
    finally:
        for sock in accepted:
            sock.close()
        listener.close()
    assert len(made) == 2 and all(isinstance(o, TimeoutError) for o in outcomes), outcomes


def test_a_try_again_waits_for_a_connection_only_within_the_first_tries_deadline() -> None:
    """A try again (of a kept-alive connection the app had closed) waited for a connection
    afresh, as long as the first try could, and was written even past the first try's
    deadline: its attempt could run past its lease. Here `_post` as post_now's try again
    calls it, with the first try's deadline."""
    request = b"POST /job/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"

    async def hold(reader: asyncio.StreamReader, _w: asyncio.StreamWriter, _n: int) -> None:
        await _until_closed(reader)  # the only connection stays busy

    async def ok(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        await _answer(w, OK)

    async def try_again(client: HttpClient, origin: Origin, deadline_in: float) -> Any:
        deadline = asyncio.get_running_loop().time() + deadline_in
        try:
            return await client._post(client._pool(origin), request, 1.0, 5.0, deadline,
                                      tries=1)
        except (TimeoutError, PoolTimeout) as exc:
            return exc

    async def main() -> tuple[Any, Any, int]:
        client = HttpClient(1)
        try:
            async with App(hold) as origin:  # no connection free, 0.3 s left
                busy = asyncio.ensure_future(_post(client, origin))
                while client._pool(origin).open == 0:
                    await asyncio.sleep(0.01)
                waited = await try_again(client, origin, 0.3)
                busy.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await busy
            app = App(ok)
            async with app as origin:  # a connection free, the deadline past
                assert await _post(client, origin) == (200, None)
                late = await try_again(client, origin, -1.0)
                return waited, late, app.requests
        finally:
            client.close()

    waited, late, requests = asyncio.run(main())
    # (before: a PoolTimeout after the 5 s pool wait; the late one sent and answered)
    assert type(waited) is TimeoutError, waited
    assert type(late) is TimeoutError and requests == 1, (late, requests)


# --- host names: each app's lookups its own trouble (workers/resolve.py) -------------------


def test_an_app_whose_host_name_hangs_holds_up_no_other_apps_new_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's lookups share a few threads: ten of one app's, hanging in DNS, left
    another app's first connection waiting behind them until its timeout ("no answer")."""
    import socket
    import threading

    release = threading.Event()
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        if host == "hangs.test":
            release.wait(TIMEOUT_S)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real("127.0.0.1" if host == "fine.test" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    async def main() -> list[Any]:
        client = HttpClient(16)
        try:
            async with App(lambda _r, w, _n: _answer(w, OK)) as origin:
                hanging = Origin("hangs.test", origin.port, False)
                stuck = [asyncio.ensure_future(client.post(hanging, "/job/x", b"{}", "", 2.0))
                         for _ in range(10)]
                await asyncio.sleep(0.1)  # their lookups under way
                fine = Origin("fine.test", origin.port, False)
                answer = await client.post(fine, "/job/x", b"{}", "", 5.0)
                again = await client.post(fine, "/job/x", b"{}", "", 5.0)
                outcomes = await asyncio.gather(*stuck, return_exceptions=True)
                return [answer, again, {type(o).__name__ for o in outcomes}]
        finally:
            release.set()
            client.close()

    assert asyncio.run(main()) == [(200, None), (200, None), {"TimeoutError"}]
    # One lookup at a time for the hanging name; the fine one's answer was kept.
    assert looked_up.count("hangs.test") == 1 and looked_up.count("fine.test") == 1


def test_a_lookup_that_fails_is_a_connection_failure_and_is_not_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    looked_up: list[str] = []

    def getaddrinfo(host: Any, *_args: Any, **_kwargs: Any) -> Any:
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    async def main() -> list[str]:
        client = HttpClient(4)
        try:
            errors = []
            for _ in range(2):
                try:
                    await client.post(Origin("nowhere.test", 80, False), "/job/x", b"{}", "", 5.0)
                except OSError as exc:
                    errors.append(delivery.failed(exc, 5.0).error)
            return errors
        finally:
            client.close()

    assert asyncio.run(main()) == ["cannot connect to the app: Name or service not known"] * 2
    assert looked_up == ["nowhere.test"] * 2


def test_a_lookup_that_hangs_does_not_hold_up_the_process_exit(tmp_path: Path) -> None:
    """The lookups ran on a ThreadPoolExecutor, whose threads Python joins at exit: a
    worker whose last delivery went to a name whose DNS hangs exited only when DNS
    answered (past the stop's bound, where the supervisor kills it)."""
    import subprocess
    import sys
    import time

    script = tmp_path / "hang.py"
    script.write_text(
        "import asyncio, socket, time\n"
        "from workers.http_client import HttpClient, Origin\n"
        "def hang(*args, **kwargs):\n"
        "    time.sleep(60)\n"
        "socket.getaddrinfo = hang\n"
        "async def main():\n"
        "    client = HttpClient(4)\n"
        "    try:\n"
        "        await client.post(Origin('hangs.test', 80, False), '/job/x', b'{}', '', 0.3)\n"
        "    except TimeoutError:\n"
        "        print('timed out', flush=True)\n"
        "    client.close()\n"
        "asyncio.run(main())\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout == "timed out\n", done.stderr
    assert time.monotonic() - started < 30  # the lookup's 60 s not waited for


def test_closing_the_client_fails_a_lookup_under_way_as_a_connection_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """close() cancelled the shared lookup, and the callers waiting on it got a
    CancelledError of no cancel of theirs (a caller treats OSError as a failed connect)."""
    import socket
    import threading

    from workers.resolve import Resolver

    release = threading.Event()

    def hang(*_args: Any, **_kwargs: Any) -> Any:
        release.wait(TIMEOUT_S)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hang)

    async def main() -> BaseException | None:
        resolver = Resolver()
        waiting = asyncio.ensure_future(resolver.addresses("hangs.test", 80))
        await asyncio.sleep(0.1)  # its thread under way
        resolver.close()
        try:
            await asyncio.wait_for(waiting, 10)
        except BaseException as exc:  # what it raises is the point
            return exc
        return None

    try:
        outcome = asyncio.run(main())
    finally:
        release.set()
    assert isinstance(outcome, OSError) and "closed" in str(outcome), repr(outcome)
