"""Signed deliveries, as Standard Webhooks (https://www.standardwebhooks.com/) signs them,
so that the standard's verification libraries check them (README, "Verifying deliveries").

Every delivery, HTTP or gRPC, carries:
- `webhook-id`: `<trigger id>#<attempt>`, percent-encoded like `jobrunner-trigger-id`, and
  `.` as `%2E` too (the standard wants no `.` in the id: the signed content is
  `{id}.{timestamp}.{payload}`, and a job name is chosen by users);
- `webhook-timestamp`: when this attempt was sent, in epoch seconds;
- `webhook-signature`: `v1,<base64 HMAC-SHA256>` under each configured key, space-separated
  (the standard's way of rotating keys: the app verifies with whichever key it has).

With `JOBRUNNER_SIGNING_PER_APP`, a delivery is signed not with the configured keys but with
its app's own (`app_keys`): each an HMAC-SHA256 of the app id under a configured key. An
app given its own key (`jobrunner signing-key APP_ID`) then verifies its deliveries and
cannot sign one that another app would accept: with shared keys, any app that verifies
could also sign a delivery to any other.

The standard signs the id, the timestamp and the payload only. What else a delivery says is
bound through the id: the trigger id (the idempotency key) names the app and the job, hence
the path `/job/<name>` (gRPC: the request's `name`), and the attempt follows it. So an
app checks, besides the signature, that the id's app and job are its own and the ones the
request is for; a delivery replayed to another job, or with a changed trigger id or attempt,
fails one check or the other.

The payload is the HTTP body; over gRPC, which has no body, the request's data: its Any's
type URL, a newline, then the standard base64 of the Any's value (text, so that the Python
library, which takes the payload as text, verifies binary values too), or nothing for a job
without data.

Signed here with hmac, not with the `standardwebhooks` package (the tests verify with it): a
few lines, and about half the CPU (the package signs text, so the body would be decoded and
encoded again on every delivery).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from urllib.parse import quote

from google.protobuf import any_pb2

from app.settings import Settings

H_WEBHOOK_ID = "webhook-id"
H_WEBHOOK_TIMESTAMP = "webhook-timestamp"
H_WEBHOOK_SIGNATURE = "webhook-signature"


# What quote(..., safe="/@:") keeps as it is. quote() costs a few microseconds a call, and
# most trigger ids are made of these only: a match costs a fraction of that.
_KEPT_IN_ID = re.compile(r"[A-Za-z0-9_.~/@:-]*").fullmatch


def quote_trigger_id(trigger_id: str) -> str:
    """The trigger id as `jobrunner-trigger-id` carries it: percent-encoded (UTF-8)."""
    return trigger_id if _KEPT_IN_ID(trigger_id) else quote(trigger_id, safe="/@:")


def webhook_id(trigger_id: str, attempt: int) -> str:
    return quote_trigger_id(trigger_id).replace(".", "%2E") + f"#{attempt}"


# What an app key signs (with the app id after it): fixed, so the keys stay the same.
APP_KEY_LABEL = b"jobrunner-app-key:"


def app_key(key: bytes, app_id: str) -> bytes:
    """App `app_id`'s own key under the configured `key`: HMAC-SHA256(key, label + app id),
    32 bytes. Another app's key tells nothing of it."""
    return hmac.new(key, APP_KEY_LABEL + app_id.encode(), hashlib.sha256).digest()


@functools.lru_cache(maxsize=1024)  # an HMAC per key is a few us: not on every delivery
def app_keys(keys: tuple[bytes, ...], app_id: str) -> tuple[bytes, ...]:
    return tuple(app_key(key, app_id) for key in keys)


def delivery_keys(settings: Settings, app_id: str) -> tuple[bytes, ...]:
    """The keys that sign a delivery to `app_id`, in JOBRUNNER_SIGNING_KEYS' order: the
    app's own with JOBRUNNER_SIGNING_PER_APP, else the configured ones; () unsigned."""
    if settings.signing_per_app:
        return app_keys(settings.signing_keys, app_id)
    return settings.signing_keys


def grpc_payload(data: any_pb2.Any | None) -> bytes:
    """What is signed for a gRPC delivery in place of a body (see the module doc)."""
    if data is None:
        return b""
    return data.type_url.encode() + b"\n" + base64.b64encode(data.value)


def signature_headers(keys: tuple[bytes, ...], trigger_id: str, attempt: int, now_ms: int,
                      payload: bytes) -> tuple[tuple[str, str], ...]:
    """The three headers (or gRPC metadata) that sign a delivery under every key."""
    msg_id = webhook_id(trigger_id, attempt)
    timestamp = str(now_ms // 1000)
    signed_prefix = f"{msg_id}.{timestamp}.".encode()
    signatures = " ".join("v1," + base64.b64encode(_mac(key, signed_prefix, payload)).decode()
                          for key in keys)
    return ((H_WEBHOOK_ID, msg_id), (H_WEBHOOK_TIMESTAMP, timestamp),
            (H_WEBHOOK_SIGNATURE, signatures))


def _mac(key: bytes, prefix: bytes, payload: bytes) -> bytes:
    mac = hmac.new(key, prefix, hashlib.sha256)
    mac.update(payload)  # not prefix + payload: no copy of a large body
    return mac.digest()
