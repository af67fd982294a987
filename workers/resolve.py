"""Looking up the apps' host names, each app's lookups its own trouble.

The event loop's own lookups (create_connection with a host name) run on a small shared
pool of threads (asyncio's default executor, or libuv's four under uvloop): a few
lookups of one app whose name's DNS hangs took every thread, and every other app that
needed a new connection waited behind them until its deliveries timed out ("no answer").
Here a host is looked up by one thread at a time, on a pool of this module's own, and the
answer is kept for RESOLVE_TTL_S; past that the kept answer serves while a lookup runs.
An IP address is never looked up.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor

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
        self._threads: ThreadPoolExecutor | None = None  # made at the first lookup
        self._known: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._looking: dict[tuple[str, int], asyncio.Future[list[Address]]] = {}

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
            if self._threads is None:
                self._threads = ThreadPoolExecutor(RESOLVER_THREADS, "resolve")
            loop = asyncio.get_running_loop()
            running = loop.run_in_executor(self._threads, _getaddrinfo, *key)
            running.add_done_callback(functools.partial(self._looked_up, loop, key))
            self._looking[key] = running
        return running

    def _looked_up(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int],
                   done: asyncio.Future[list[Address]]) -> None:
        del self._looking[key]
        if done.cancelled() or done.exception() is not None:  # (looked at: no warning)
            return
        if len(self._known) >= MAX_KNOWN_HOSTS:
            self._known.clear()
        self._known[key] = (loop.time() + RESOLVE_TTL_S, done.result())

    def close(self) -> None:
        if self._threads is not None:
            # Not waited for: a lookup that hangs would hold the stop.
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None


def _literal(host: str, port: int) -> Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, socket.IPPROTO_TCP, (host, port)


def _getaddrinfo(host: str, port: int) -> list[Address]:
    return [(family, proto, address) for family, _, proto, _, address
            in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
