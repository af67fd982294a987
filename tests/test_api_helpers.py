"""Helpers shared by the HTTP API contract tests (tests/test_api_*.py).

No tests here: the fixtures are conftest's, these are plain functions.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

from app.settings import Settings
from app.store.keys import Keys, is_replay
from tests.support.far import all_due, all_job_ids
from tests.support.names_index import index_ids, leaf_key

# Both spellings of the Dapr jobs API; every job route is tested on each.
BASES = ("/v1.0-alpha1/jobs", "/v1.0/jobs")

STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
DEFAULT_POLICY = {"constant": {"interval": "1s", "maxRetries": 3}}
EXTENSION_FIELDS = ("status", "nextTriggerTime", "lastTriggerTime", "triggerCount")


def api_settings(redis_url: str, **changes: Any) -> Settings:
    """Settings on the private Redis with a key prefix of the test's own.

    Like conftest's `settings` fixture, without its receiver (API tests deliver
    nothing)."""
    base = Settings(redis_url=redis_url, prefix=f"t{uuid.uuid4().hex[:10]}",
                    app_url="http://127.0.0.1:9")
    return base.with_(**changes)


def job_url(base: str, name: str) -> str:
    """The URL of job `name`, percent-encoded the way a careful client does."""
    return f"{base}/{quote(name, safe='')}"


def post_job(client: Any, base: str, name: str, body: Any, **kwargs: Any) -> Any:
    """POST a job body: a dict/list/... is sent as JSON, bytes as they are."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    kwargs.setdefault("content_type", "application/json")
    return client.post(job_url(base, name), data=raw, **kwargs)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` with a JSON `{"errorCode", "message"}` body; returns it."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json", response.headers
    body = response.get_json()
    assert isinstance(body, dict), body
    assert set(body) == {"errorCode", "message"}, body
    assert isinstance(body["errorCode"], str) and body["errorCode"], body
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["errorCode"] == code, body
    return body


def assert_no_content(response: Any) -> None:
    assert response.status_code == 204, (response.status_code, response.get_data(as_text=True))
    assert response.get_data() == b""
    assert "Content-Type" not in response.headers  # an empty answer has no type




def assert_store_consistent(client: Any, settings: Settings) -> set[str]:
    """Store invariants with no worker running: every job in the due index has a
    definition, and every definition is pending exactly once, in the due index of its
    own partition or parked in its app's staging set there; run states belong to stored
    jobs; nothing else lives under the prefix. Returns the job ids."""
    keys = Keys(settings.prefix, settings.partitions)
    all_ids: set[str] = set()
    staged_keys: set[str] = set()
    for index, pk in enumerate(keys.all_partitions()):
        jobs = all_job_ids(client, pk)  # near or far (tests/support/far.py)
        due = set(all_due(client, pk))
        runs = {f.decode() for f in client.hkeys(pk.runs)}
        staged: set[str] = set()
        for raw_key in client.scan_iter(match=_glob(pk.staged("")) + "*", count=1000):
            staged_keys.add(raw_key.decode())
            staged |= {m.decode() for m in client.zrange(raw_key, 0, -1)}
        assert due <= jobs, f"partition {index}: in the due index without a job {due - jobs}"
        assert staged <= jobs, f"partition {index}: staged without a job {staged - jobs}"
        assert not due & staged, f"partition {index}: both due and staged {due & staged}"
        assert jobs <= due | staged, f"partition {index}: never due {jobs - due - staged}"
        assert runs <= jobs, f"partition {index}: run states without a job {runs - jobs}"
        for jid in jobs:
            assert keys.partition_of(jid) == index, f"{jid} stored in the wrong partition"
            assert "/" in jid, jid
        names = set(index_ids(client, pk))
        assert names == {j for j in jobs if not is_replay(j)}, f"partition {index}: " \
            f"the per-app job index differs from the jobs: {names ^ jobs}"
        all_ids |= jobs
    allowed = {k for pk in keys.all_partitions() for k in [*pk.all(), pk.indexed, pk.app_jobs]}
    allowed |= {leaf_key(pk, low).decode() for pk in keys.all_partitions()
                for low in client.zrange(pk.names, 0, -1)}
    allowed |= {keys.apps} | staged_keys
    for pk in keys.all_partitions():  # the far tier's (app/store/lua/far.lua)
        allowed |= {pk.far_meta, pk.far_tree, pk.far_heads}
        allowed |= {k for low in client.zrange(pk.far_tree, 0, -1)
                    for k in (pk.far_leaf(low), pk.far_when(low))}
    for raw_key in client.scan_iter(match=_glob(settings.prefix) + ":*", count=1000):
        key = raw_key.decode()
        assert key in allowed or key.startswith(f"{settings.prefix}:alive:") \
            or ":nows:" in key, key  # a job's "trigger now" one-shots (PartitionKeys.fired_now)
    return all_ids


def _glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
