"""One delivery of a trigger to its app (HTTP, or gRPC: Settings.app_protocol): the
request, and what came of it."""

from __future__ import annotations

import datetime
import email.utils
import functools
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc

from app.jobs.anydata import delivery_body, job_data_as_any
from app.jobs.model import Trigger
from app.settings import Settings
from app.store.store import AppRegistration
from workers.grpc_client import GrpcClient, Metadata, job_event_request
from workers.http_client import HttpClient, Origin, PoolTimeout, ServerDisconnected, split_url
from workers.signing import delivery_keys, grpc_payload, quote_trigger_id, signature_headers

# Header names of the delivery contract (README, "Delivery").
H_TRIGGER_ID = "jobrunner-trigger-id"  # idempotency id: same on every retry of a trigger
H_ATTEMPT = "jobrunner-attempt"
H_SCHEDULED_MS = "jobrunner-scheduled-ms"
H_APP_TOKEN = "dapr-api-token"


@dataclass(slots=True)  # one per delivery: not frozen (see app/jobs/model.py Trigger)
class Outcome:
    done: bool  # 2xx or 404: the trigger is finished
    status: int | None  # HTTP status; None when no response came, and over gRPC
    error: str = ""  # why it failed, for logs and the dead-letter queue
    # A 429 or 503 answer's Retry-After, in ms from the answer (at most the worker's
    # max_retry_after_s): the retry waits at least this long.
    retry_after_ms: int | None = None


def build_request(trigger: Trigger, app: AppRegistration, settings: Settings,
                  now_ms: int) -> tuple[Origin, str, bytes, str]:
    """The app's origin, the path, the body, and the header lines (each with its CRLF:
    rendered here at once, not from a dict by the client)."""
    body = delivery_body(trigger.job, app.delivery_format)
    headers = (
        "Content-Type: application/json\r\n"
        # Percent-encoded (UTF-8): header values are ASCII, job names need not be.
        f"{H_TRIGGER_ID}: {quote_trigger_id(trigger.trigger_id)}\r\n"
        f"{H_ATTEMPT}: {trigger.attempt}\r\n"
        f"{H_SCHEDULED_MS}: {trigger.scheduled_ms}\r\n"
        # W3C trace context: a new trace per attempt, sampled.
        f"traceparent: {_traceparent()}\r\n"
    )
    if app.token:
        headers += f"{H_APP_TOKEN}: {app.token}\r\n"
    if settings.signing_keys:  # Standard Webhooks' headers (workers/signing.py)
        headers += "".join(f"{name}: {value}\r\n" for name, value in signature_headers(
            delivery_keys(settings, trigger.job.app_id), trigger.trigger_id, trigger.attempt,
            now_ms, body))
    origin, base_path = _split_app_url(app.app_id, app.url)
    name = trigger.job.name
    name = name if _KEPT_IN_NAME(name) else quote(name, safe="")
    return origin, f"{base_path}/job/{name}", body, headers


# What quote(..., safe="") keeps as it is (see signing.quote_trigger_id).
_KEPT_IN_NAME = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def _traceparent() -> str:
    """W3C trace context: a new trace per attempt, sampled. Ids need to be unique, not
    secret: Python's generator, not os.urandom (a system call per delivery); both ids from
    one call, half the cost of two numbers formatted."""
    ids = _random_bytes(24).hex()
    if ids.startswith(_ZERO_TRACE_ID) or ids.endswith(_ZERO_PARENT_ID):  # invalid ids
        return _traceparent()
    return f"00-{ids[:32]}-{ids[32:]}-01"


_random_bytes = random.randbytes
_ZERO_TRACE_ID, _ZERO_PARENT_ID = "0" * 32, "0" * 16


@functools.lru_cache(maxsize=1024)
def _split_app_url(app_id: str, url: str) -> tuple[Origin, str]:
    """The app's origin (its connections: the app's own, whoever else listens there) and
    base path."""
    origin, path = split_url(url)
    return origin._replace(app_id=app_id), path.rstrip("/")


async def send(client: HttpClient, origin: Origin, path: str, body: bytes,
               headers: str, timeout_s: float, queue_timeout_s: float,
               max_retry_after_s: float = 0.0,
               on_sent: Callable[[], None] | None = None) -> Outcome:
    try:
        status, retry_after = await client.post(origin, path, body, headers, timeout_s,
                                                queue_timeout_s, on_sent)
    except (TimeoutError, PoolTimeout, OSError) as exc:
        return failed(exc, timeout_s)
    return answered(status, retry_after, max_retry_after_s)


def failed(exc: BaseException, timeout_s: float) -> Outcome:
    """The outcome of a request that got no answer: HttpClient's TimeoutError, PoolTimeout,
    ServerDisconnected or OSError (any other exception is re-raised)."""
    if isinstance(exc, TimeoutError):
        return Outcome(False, None, f"no answer within {timeout_s:g}s")
    if isinstance(exc, PoolTimeout):
        return Outcome(False, None, str(exc))
    if isinstance(exc, ServerDisconnected):
        return Outcome(False, None, f"delivery failed: {exc}")
    if isinstance(exc, OSError):
        return Outcome(False, None, f"cannot connect to the app: {exc.strerror or exc}")
    raise exc


def answered(status: int, retry_after: str | None, max_retry_after_s: float) -> Outcome:
    """The outcome of the app's answer: 2xx or 404 finish the trigger."""
    if 200 <= status < 300 or status == 404:
        return Outcome(True, status)
    wait_ms = None
    if retry_after is not None and status in (429, 503):
        wait_ms = retry_after_ms(retry_after, time.time(), int(max_retry_after_s * 1000))
    return Outcome(False, status, f"app answered HTTP {status}", wait_ms)


def retry_after_ms(value: str, now_s: float, max_ms: int) -> int | None:
    """A Retry-After header (RFC 9110: whole seconds, or an HTTP date) as ms from `now_s`,
    from 0 to `max_ms`; None when it is neither."""
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit() alone takes '²' too
        digits = value.lstrip("0")  # leading zeros say nothing: 0005 is 5 s
        seconds = float(digits or 0) if len(digits) <= 12 else math.inf  # past any bound
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is so taken
                when = when.replace(tzinfo=datetime.UTC)
            seconds = when.timestamp() - now_s
        except (TypeError, ValueError, IndexError, OverflowError):  # a year past any calendar
            return None
    # Rounded up: the retry goes out at the app's time, not the millisecond before it.
    return math.ceil(min(max(seconds * 1000, 0.0), max_ms))


# --- gRPC: AppCallback.OnJobEvent (workers/grpc_client.py) ------------------------------


def build_grpc_call(trigger: Trigger, app: AppRegistration, settings: Settings,
                    now_ms: int) -> tuple[Origin, Any, Metadata]:
    """The JobEventRequest daprd would send, and as metadata the headers of an HTTP
    delivery (lower-case keys, as gRPC wants them). The address is the host and port of
    the app's URL; a path in it has no meaning for gRPC."""
    data = job_data_as_any(trigger.job)
    metadata = [
        (H_TRIGGER_ID, quote_trigger_id(trigger.trigger_id)),
        (H_ATTEMPT, str(trigger.attempt)),
        (H_SCHEDULED_MS, str(trigger.scheduled_ms)),
        ("traceparent", _traceparent()),
    ]
    if app.token:
        metadata.append((H_APP_TOKEN, app.token))
    if settings.signing_keys:  # as over HTTP, with the data in place of the body
        metadata.extend(signature_headers(delivery_keys(settings, trigger.job.app_id),
                                          trigger.trigger_id, trigger.attempt, now_ms,
                                          grpc_payload(data)))
    origin, _ = _split_app_url(app.app_id, app.url)
    return origin, job_event_request(trigger.job.name, data), tuple(metadata)


async def send_grpc(client: GrpcClient, origin: Origin, request: Any, metadata: Metadata,
                    timeout_s: float) -> Outcome:
    """As daprd judges the answer: OK, or NOT_FOUND (like HTTP 404), finishes the
    trigger; any other status follows the failure policy, UNAVAILABLE (the app cannot be
    reached) as a refused connection does."""
    reply = await client.on_job_event(origin, request, metadata, timeout_s)
    code = reply.code
    if code is grpc.StatusCode.OK:
        return Outcome(True, None)
    if code is grpc.StatusCode.NOT_FOUND:
        return Outcome(True, None, f"app answered gRPC NOT_FOUND: {reply.details}")
    if reply.timed_out:
        return Outcome(False, None, f"no answer within {timeout_s:g}s")
    if code is grpc.StatusCode.UNAVAILABLE:
        return Outcome(False, None, f"cannot connect to the app: {reply.details}")
    return Outcome(False, None, f"app answered gRPC {code.name}: {reply.details}")
