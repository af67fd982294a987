"""The test's side of the chaos receiver (receiver_server.py, a process of its own)."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.chaos.support.procs import Proc, Procs, stable_port
from tests.support.waiting import wait_for


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got (see receiver_server.py for the fields)."""

    trigger_id: str
    name: str
    attempt: int
    sched_ms: int
    arrival_ms: float
    status: int
    late: bool

    @property
    def accepted(self) -> bool:
        """The app took it: a 2xx answered in time."""
        return 200 <= self.status < 300 and not self.late


class Receiver:
    def __init__(self, procs: Procs, workdir: Path, mode: str = "healthy") -> None:
        self.procs = procs
        self.ready_file = workdir / "receiver.json"
        self.mode = mode
        self.proc: Proc | None = None
        self.port = 0
        self.control_port = 0
        self._records: list[Delivery] = []

    def start(self, timeout: float = 20.0) -> Receiver:
        self.proc = self.procs.spawn(
            "receiver",
            [sys.executable, "-m", "tests.chaos.support.receiver_server",
             "--ready-file", str(self.ready_file), "--mode", self.mode,
             "--port", str(stable_port())],
            {**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def ready() -> bool:
            assert self.proc is not None
            if not self.proc.alive:
                raise AssertionError(f"the receiver exited:\n{self.proc.tail()}")
            return self.ready_file.exists()

        wait_for(ready, timeout, what="the receiver to listen")
        ports = json.loads(self.ready_file.read_text())
        self.port, self.control_port = ports["port"], ports["control_port"]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _control(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.control_port}{path}", data=data,
                                     method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return orjson.loads(resp.read())

    def count(self) -> int:
        return int(self._control("GET", "/count")["n"])

    def set_mode(self, mode: str, delay: float | None = None, status: int | None = None) -> float:
        """Switch the app's behaviour; returns when it took effect (epoch ms)."""
        body: dict[str, Any] = {"mode": mode}
        if delay is not None:
            body["delay"] = delay
        if status is not None:
            body["status"] = status
        return float(self._control("POST", "/mode", body)["at_ms"])

    def transitions(self) -> list[tuple[str, float]]:
        return [(m, float(t)) for m, t in self._control("GET", "/transitions")]

    def records(self) -> list[Delivery]:
        """Every request so far (fetched incrementally)."""
        raw = self._control("GET", f"/records?since={len(self._records)}")
        self._records.extend(Delivery(r[0], r[1], int(r[2]), int(r[3]), float(r[4]), int(r[5]),
                                      bool(r[6])) for r in raw)
        return list(self._records)

    def wait_count(self, n: int, timeout: float) -> int:
        """Until at least `n` requests arrived; returns the count (no error at the deadline)."""
        deadline = time.monotonic() + timeout
        got = self.count()
        while got < n and time.monotonic() < deadline:
            time.sleep(0.05)
            got = self.count()
        return got
