"""One HTTP delivery of a trigger to its app: the request, and what came of it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import yarl

from app.anydata import delivery_body
from app.model import Trigger
from app.settings import Settings
from app.store import AppRegistration

# Header names of the delivery contract (README, "Delivery").
H_TRIGGER_ID = "jobrunner-trigger-id"  # idempotency id: same on every retry of a trigger
H_ATTEMPT = "jobrunner-attempt"
H_SCHEDULED_MS = "jobrunner-scheduled-ms"
H_SIGNATURE = "jobrunner-signature"
H_APP_TOKEN = "dapr-api-token"


@dataclass(frozen=True)
class Outcome:
    done: bool  # 2xx or 404: the trigger is finished
    status: int | None  # HTTP status, None when no response came
    error: str = ""  # why it failed, for logs and the dead-letter queue


def sign(keys: tuple[tuple[str, bytes], ...], timestamp_ms: int, body: bytes) -> str:
    """`t=<ms>,<kid>=<hex>,...`: HMAC-SHA256 of `<ms>.` + body under every configured key,
    so an app can accept either key of a pair while keys rotate."""
    message = str(timestamp_ms).encode() + b"." + body
    parts = [f"t={timestamp_ms}"]
    parts += [f"{kid}={hmac.new(secret, message, hashlib.sha256).hexdigest()}"
              for kid, secret in keys]
    return ",".join(parts)


def build_request(trigger: Trigger, app: AppRegistration, settings: Settings,
                  now_ms: int) -> tuple[yarl.URL, bytes, dict[str, str]]:
    body = delivery_body(trigger.job, app.delivery_format)
    headers = {
        "Content-Type": "application/json",
        H_TRIGGER_ID: trigger.trigger_id,
        H_ATTEMPT: str(trigger.attempt),
        H_SCHEDULED_MS: str(trigger.sched_ms),
        "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
    }
    if app.token:
        headers[H_APP_TOKEN] = app.token
    if settings.signing_keys:
        headers[H_SIGNATURE] = sign(settings.signing_keys, now_ms, body)
    return job_url(app.url, trigger.job.name), body, headers


def job_url(base: str, name: str) -> yarl.URL:
    """`{app}/job/{name}`, the name percent-encoded as one path segment."""
    return yarl.URL(f"{base}/job/{quote(name, safe='')}", encoded=True)


async def send(session: aiohttp.ClientSession, url: yarl.URL, body: bytes,
               headers: dict[str, str], timeout_s: float) -> Outcome:
    try:
        async with session.post(url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            await resp.read()  # drain, so the keep-alive connection is reused
            if 200 <= resp.status < 300 or resp.status == 404:
                return Outcome(True, resp.status)
            return Outcome(False, resp.status, f"app answered HTTP {resp.status}")
    except TimeoutError:
        return Outcome(False, None, f"no answer within {timeout_s:g}s")
    except aiohttp.ClientConnectorError as exc:
        return Outcome(False, None, f"cannot connect to the app: {exc.os_error or exc}")
    except (aiohttp.ClientError, asyncio.IncompleteReadError, OSError) as exc:
        return Outcome(False, None, f"delivery failed: {type(exc).__name__}: {exc}")
