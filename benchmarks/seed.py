"""The seed's job, N times, through `jobrunner up`: lateness of each delivery.

    python -m benchmarks.seed [--runs 100] [--gap-ms 100]

Starts `jobrunner up` (embedded Redis, 2 workers, the API) on free ports in a
temporary data dir, with a receiver on localhost in the app's place. Each run
POSTs the seed's body (`dueTime: "2s"`, a StringValue Any) for `R2-D2-<i>`,
runs `gap-ms` apart so that each is a lone delivery, not a burst. Lateness is
the receiver's arrival time minus the due time the worker sends
(`jobrunner-scheduled-ms`, which is the API's "now + 2 s" rounded up to the ms).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from app.processes.procs import python_module
from benchmarks.stats import percentile

SEED_BODY = {
    "data": {"@type": "type.googleapis.com/google.protobuf.StringValue",
             "value": "R2-D2:Oil Change"},
    "dueTime": "2s",
}
SEED_DELIVERY = {"type_url": "type.googleapis.com/google.protobuf.StringValue",
                 "value": "ChBSMi1EMjpPaWwgQ2hhbmdl"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self) -> None:
        self.arrivals: dict[str, tuple[float, int, bytes]] = {}
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Receiver

    def do_POST(self) -> None:
        arrived = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        due = int(self.headers.get("jobrunner-scheduled-ms") or 0)
        self.server.arrivals[self.path] = (arrived, due, body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run(runs: int, gap_ms: int) -> dict[str, object]:
    receiver = _Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    api_port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env["JOBRUNNER_HOME"] = str(Path(tmp) / "home")
        up = subprocess.Popen(
            [*python_module("app.cli"), "up", "--app-id", "job-service",
             "--app-url", f"http://127.0.0.1:{receiver.server_address[1]}",
             "--http-port", str(api_port), "--data-dir", str(Path(tmp) / "data")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        try:
            def healthy() -> bool:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=1):
                        return True
                except OSError:
                    return False

            _wait(healthy, 60, "jobrunner up")
            body = json.dumps(SEED_BODY).encode()
            for i in range(runs):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{api_port}/v1.0-alpha1/jobs/R2-D2-{i}", data=body,
                    headers={"Content-Type": "application/json"}, method="POST")
                with urllib.request.urlopen(req, timeout=10) as resp:
                    assert resp.status == 204, resp.status
                time.sleep(gap_ms / 1000)
            _wait(lambda: len(receiver.arrivals) >= runs, 30, "every delivery")
        finally:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(60)
    receiver.shutdown()
    lateness = sorted((arrived * 1000 - due) for arrived, due, _ in receiver.arrivals.values())
    wrong = [p for p, (_, _, b) in receiver.arrivals.items() if json.loads(b) != SEED_DELIVERY]
    return {
        "runs": runs,
        "delivered": len(receiver.arrivals),
        "wrong_bodies": len(wrong),
        "early": sum(1 for x in lateness if x < 0),
        "lateness_ms": {
            "min": round(lateness[0], 3),
            "p50": round(percentile(lateness, 50), 3),
            "p99": round(percentile(lateness, 99), 3),
            "max": round(lateness[-1], 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed", description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--gap-ms", type=int, default=100)
    args = parser.parse_args(argv)
    result = run(args.runs, args.gap_ms)
    print(json.dumps(result, indent=2))
    return 0 if result["early"] == 0 and result["wrong_bodies"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
