"""Clients of the jobs API: a load of schedules, and probes, every answer recorded."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# (name, JSON body, triggers the job must produce)
JobSpec = tuple[str, dict[str, Any], int]


@dataclass
class Call:
    """One request to the API and what came of it (times are epoch seconds)."""

    kind: str
    name: str
    expected: int
    sent: float
    done: float
    status: int | None  # None: no answer (connection failed, or the client timed out)
    body: Any
    error: str = ""

    @property
    def took(self) -> float:
        return self.done - self.sent


class Client:
    """One keep-alive connection to the API (reconnects after an error)."""

    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, kind: str, method: str, path: str, body: Any = None, name: str = "",
                expected: int = 0) -> Call:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        sent = time.time()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request(method, path, data, headers)
            resp = self.conn.getresponse()
            raw = resp.read()
            status: int | None = resp.status
            error = ""
        except (OSError, http.client.HTTPException) as exc:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            raw, status, error = b"", None, f"{type(exc).__name__}: {exc}"
        done = time.time()
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        return Call(kind, name, expected, sent, done, status, decoded, error)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class ScheduleLoad:
    """`clients` threads that schedule jobs through the API back to back until stopped."""

    def __init__(self, base_url: str, clients: int, make: Callable[[int], JobSpec],
                 timeout: float = 30.0) -> None:
        self.base_url = base_url
        self.make = make
        self.timeout = timeout
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"api-load-{i}", daemon=True)
                         for i in range(clients)]

    def start(self) -> ScheduleLoad:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            raise AssertionError(f"API clients still waiting for an answer after {timeout}s: "
                                 f"{stuck}")

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def _run(self) -> None:
        client = Client(self.base_url, self.timeout)
        try:
            while not self._stop.is_set():
                name, body, expected = self.make(next(self._numbers))
                call = client.request("schedule", "POST", f"/v1.0-alpha1/jobs/{name}", body,
                                      name, expected)
                with self._lock:
                    self.calls.append(call)
                if call.status is None:
                    self._stop.wait(0.05)  # the API itself is away: do not spin
        finally:
            client.close()
