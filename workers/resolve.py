"""Looking up the apps' host names, each app's lookups its own trouble.

The event loop's own lookups (create_connection with a host name) run on a small shared
pool of threads (asyncio's default executor, or libuv's four under uvloop): a few
lookups of one app whose name's DNS hangs took every thread, and every other app that
needed a new connection waited behind them until its deliveries timed out ("no answer").
Here a host is looked up by one thread at a time, at most RESOLVER_THREADS at once, and
the answer is kept for RESOLVE_TTL_S; past that the kept answer serves while a lookup
runs. An IP address is never looked up. The threads are daemon threads: a lookup that
hangs does not hold up the worker's exit (a ThreadPoolExecutor's are joined at exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import threading

# (family, protocol, socket address): where socket.connect goes.
Address = tuple[int, int, tuple[object, ...]]

# How long a lookup's answer is used before it is looked up again (the system's resolver
# does not say its records' TTL). A lookup that fails is not kept: the next connection
# looks again (one lookup at a time per host still).
RESOLVE_TTL_S = 30.0
# Lookups at once over all hosts, one each at most: as many hosts whose lookups hang
# would take every thread.
RESOLVER_THREADS = 64
# Past this many hosts known, the answers kept are dropped (apps whose address keeps
# changing cannot grow the table without end).
MAX_KNOWN_HOSTS = 4096


class Resolver:
    def __init__(self) -> None:
        self._threads = asyncio.Semaphore(RESOLVER_THREADS)
        self._known: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._looking: dict[tuple[str, int], asyncio.Future[list[Address]]] = {}
        self._answers: dict[tuple[str, int], asyncio.Future[list[Address]]] = {}  # a thread's

    async def addresses(self, host: str, port: int) -> list[Address]:
        """Where `host`:`port` is, in the order the system's resolver gives. Raises
        OSError (socket.gaierror) when it cannot be looked up."""
        literal = _literal(host, port)
        if literal is not None:
            return [literal]
        key = (host, port)
        known = self._known.get(key)
        if known is not None:
            expires, found = known
            if asyncio.get_running_loop().time() >= expires:
                self._look_up(key)  # for the next connection: this one does not wait
            return found
        # Shielded: a caller that stops waiting (its deadline) leaves the lookup to others.
        return await asyncio.shield(self._look_up(key))

    def _look_up(self, key: tuple[str, int]) -> asyncio.Future[list[Address]]:
        running = self._looking.get(key)
        if running is None:
            loop = asyncio.get_running_loop()
            running = loop.create_task(self._in_a_thread(loop, key))
            running.add_done_callback(functools.partial(self._looked_up, loop, key))
            self._looking[key] = running
        return running

    async def _in_a_thread(self, loop: asyncio.AbstractEventLoop,
                           key: tuple[str, int]) -> list[Address]:
        async with self._threads:
            answer: asyncio.Future[list[Address]] = loop.create_future()
            self._answers[key] = answer
            try:
                threading.Thread(target=_look_up_for, args=(loop, answer, key),
                                 name="resolve", daemon=True).start()
            except RuntimeError as exc:  # "can't start new thread": a connection failure
                raise OSError(f"cannot look up {key[0][:100]!r}: {exc}") from None
            try:
                return await answer
            finally:
                self._answers.pop(key, None)

    def _looked_up(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int],
                   done: asyncio.Future[list[Address]]) -> None:
        del self._looking[key]
        if done.cancelled() or done.exception() is not None:  # (looked at: no warning)
            return
        if len(self._known) >= MAX_KNOWN_HOSTS:
            self._known.clear()
        self._known[key] = (loop.time() + RESOLVE_TTL_S, done.result())

    def close(self) -> None:
        """Lookups under way are given up: their callers get an OSError (a connection
        failure, not a cancellation of theirs); their threads end when the system's
        resolver answers, and nothing waits for them."""
        for answer in list(self._answers.values()):
            if not answer.done():
                answer.set_exception(OSError("the client was closed"))


def _literal(host: str, port: int) -> Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, socket.IPPROTO_TCP, (host, port)


def _look_up_for(loop: asyncio.AbstractEventLoop, answer: asyncio.Future[list[Address]],
                 key: tuple[str, int]) -> None:
    """In a thread of its own: the lookup, its answer handed to the loop."""
    host, port = key
    try:
        found: list[Address] = [
            (family, proto, tuple(address)) for family, _, proto, _, address
            in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        settle = functools.partial(_settle, answer, found, None)
    except OSError as exc:
        settle = functools.partial(_settle, answer, None, exc)
    except Exception as exc:  # a name the IDNA codec refuses (a label over 63 characters)
        settle = functools.partial(_settle, answer, None,
                                   OSError(f"cannot look up {host[:100]!r}: {exc}"))
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
        loop.call_soon_threadsafe(settle)


def _settle(answer: asyncio.Future[list[Address]], found: list[Address] | None,
            exc: OSError | None) -> None:
    if answer.done():  # given up on (the client closed)
        return
    if exc is not None:
        answer.set_exception(exc)
    else:
        assert found is not None
        answer.set_result(found)
