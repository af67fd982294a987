"""The job function the RQ baselines run: the same HTTP POST jobrunner's workers make.

Kept import-light: RQ workers import it by its dotted path. One keep-alive
connection per worker process, so the baselines pay no connect per delivery.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

_conns: dict[str, http.client.HTTPConnection] = {}


def _conn(base_url: str) -> http.client.HTTPConnection:
    conn = _conns.get(base_url)
    if conn is None:
        parts = urlsplit(base_url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        _conns[base_url] = conn
    return conn


def deliver(base_url: str, name: str, due_ms: int) -> int:
    """POST {base_url}/job/{name} with the due time in the body; the HTTP status back."""
    body = json.dumps({"dueMs": due_ms}).encode()
    headers = {"Content-Type": "application/json", "jobrunner-scheduled-ms": str(due_ms)}
    for attempt in (1, 2):
        conn = _conn(base_url)
        try:
            conn.request("POST", f"/job/{name}", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status >= 300 and resp.status != 404:
                raise RuntimeError(f"delivery of {name} answered {resp.status}")
            return resp.status
        except (http.client.HTTPException, OSError):
            conn.close()
            _conns.pop(base_url, None)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
