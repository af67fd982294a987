"""Every setting, read from environment variables in one place (12-factor).

CLI flags set the same environment variables before the parts start, so a
child process (gunicorn, a worker) sees exactly what its parent was given.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from app.jobs.anydata import DAPR_FORMAT, DELIVERY_FORMATS
from app.jobs.errors import JobrunnerError, shown
from app.jobs.validation import is_text
from app.logs import LOG_FORMATS, LOG_LEVELS

# How workers deliver to an app (`--app-protocol`): POST /job/<name>, or Dapr's gRPC
# AppCallback.OnJobEvent.
APP_PROTOCOLS = ("http", "grpc")


class SettingsError(JobrunnerError, ValueError):
    """A setting has a value that cannot be used."""


# Past these a setting is a typo, refused here by name: the numbers it feeds (Redis
# arguments, milliseconds, the server's limits, a list per partition) would fail or grow
# far from it. Every whole number fits a signed 32-bit one; every float is a count of
# seconds (or of requests a second) of at most ten years.
MAX_WHOLE = 2**31 - 1
MAX_SECONDS = 10 * 365 * 86400.0
MAX_PORT = 65535
# Redis Cluster has 16,384 hash slots: more partitions cannot spread any further.
MAX_PARTITIONS = 16384


# A host name as a URL takes it (letters, digits, '-', '.', and '_' as Docker's names have;
# a trailing '.' as a fully qualified name has, which skips the resolver's search domains).
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?\.?")


def _app_host(env: Mapping[str, str]) -> str:
    """APP_HOST as the app URL's host: an IPv6 address in brackets ("http://::1:6200" was
    no URL), anything but a host name or an address refused (a '/' or '?' made APP_PORT
    part of the URL's path or query)."""
    host = env.get("APP_HOST", "").strip() or "127.0.0.1"
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        if _HOST_NAME.fullmatch(host):
            return host
        raise SettingsError(f"APP_HOST must be a host name or an IP address, got "
                            f"{shown(host)}") from None
    return f"[{bare}]" if address.version == 6 else bare


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0,
         maximum: int = MAX_WHOLE) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if len(raw) <= 20 else maximum + 1  # no 4,000-digit parse
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw[:40]!r}") from None
    return _within(name, raw, value, minimum, maximum)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0,
           maximum: float = MAX_SECONDS) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw) if len(raw) <= 40 else math.inf
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw[:40]!r}") from None
    if math.isnan(value):  # compares false with every bound: it would pass them
        raise SettingsError(f"{name} must be a number, got {raw[:40]!r}")
    return _within(name, raw, value, minimum, maximum)


_Number = TypeVar("_Number", int, float)


def _within(name: str, raw: str, value: _Number, minimum: _Number,
            maximum: _Number) -> _Number:
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw[:40]}")
    if value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, got {raw[:40]}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


# Standard Webhooks secrets: `whsec_` + base64 of 24 random bytes at least (the standard's
# minimum); past 64 bytes HMAC-SHA256 hashes a key down anyway. Each key costs a signature
# on every delivery: rotation needs two, a few more are allowed.
SIGNING_KEY_PREFIX = "whsec_"
SIGNING_KEY_BYTES = (24, 64)
MAX_SIGNING_KEYS = 4
_SIGNING_KEYS_HELP = (
    "JOBRUNNER_SIGNING_KEYS takes Standard Webhooks secrets, comma-separated: "
    "whsec_ then the base64 of 24 to 64 random bytes, as "
    "python3 -c 'import base64,os; print(\"whsec_\"+base64.b64encode(os.urandom(32)).decode())'"
)


MAX_ALLOWED_HOSTS = 64
# A host name (IDNA-encoded, lower-case; `_` as Docker's names have it).
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def _allowed_hosts(raw: str) -> tuple[str, ...]:
    """`name,.domain,...` (app/api/callers.py): host names, without a port."""
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    if len(hosts) > MAX_ALLOWED_HOSTS:
        raise SettingsError(f"JOBRUNNER_ALLOWED_HOSTS: at most {MAX_ALLOWED_HOSTS} names, "
                            f"got {len(hosts)}")
    for host in hosts:
        if not HOST_NAME.fullmatch(host.removeprefix(".")):  # ".name": it and those under it
            raise SettingsError(f"JOBRUNNER_ALLOWED_HOSTS: {host[:60]!r} is not a host "
                                "name (names and .domains, comma-separated, no port)")
    return hosts


def _signing_keys(raw: str) -> tuple[bytes, ...]:
    """`whsec_...,whsec_...`: every key signs each delivery (README, "Verifying
    deliveries"). The error never shows a key: it is a secret."""
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if len(parts) > MAX_SIGNING_KEYS:
        raise SettingsError(f"JOBRUNNER_SIGNING_KEYS: at most {MAX_SIGNING_KEYS} keys, "
                            f"got {len(parts)}")
    keys: list[bytes] = []
    for n, part in enumerate(parts, 1):
        where = f"JOBRUNNER_SIGNING_KEYS: key {n} of {len(parts)}"
        if not part.startswith(SIGNING_KEY_PREFIX):
            old = " (the kid:secret form of earlier versions)" \
                if ":" in part else ""
            raise SettingsError(f"{where} does not start with {SIGNING_KEY_PREFIX}{old}. "
                                f"{_SIGNING_KEYS_HELP}")
        encoded = part.removeprefix(SIGNING_KEY_PREFIX)
        try:
            # The standard's libraries accept the base64 without its padding too.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            raise SettingsError(f"{where} is not base64 after {SIGNING_KEY_PREFIX}. "
                                f"{_SIGNING_KEYS_HELP}") from None
        if not SIGNING_KEY_BYTES[0] <= len(key) <= SIGNING_KEY_BYTES[1]:
            raise SettingsError(f"{where} has {len(key)} bytes. {_SIGNING_KEYS_HELP}")
        keys.append(key)
    return tuple(keys)


def signing_key_text(key: bytes) -> str:
    """A key as Standard Webhooks writes a secret: `whsec_` and its base64."""
    return SIGNING_KEY_PREFIX + base64.b64encode(key).decode()


def _signing_keys_env(keys: tuple[bytes, ...]) -> str:
    return ",".join(signing_key_text(key) for key in keys)


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and banners: in its userinfo, or
    in its query, where redis-py takes one too (`?password=`)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # unparsable (`redis://[::1/0`): whatever stands before an @ goes
        return re.sub(r"(://)[^/@]*@", r"\1***@", url)
    if password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    if parts.query:  # as redis-py reads it: decoded (`pass%77ord=` is one too)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            parts = parts._replace(query=urlencode(
                [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"))
    return urlunsplit(parts)


# granian's bound of its header read timeout (60,000 ms).
MAX_HTTP_HEADER_TIMEOUT_S = 60.0
# JOBRUNNER_APP_RATE_LIMIT's bound: past it, a limit limits nothing a worker can do.
MAX_APP_RATE_LIMIT = 1_000_000.0
# JOBRUNNER_MAX_CATCH_UP's bound: a worker fires that many missed occurrences of a job in
# a row before it takes anything newer of it.
MAX_CATCH_UP = 100_000
# JOBRUNNER_BULK_MAX_JOBS at most: a request's jobs are one Lua call per partition, which
# holds Redis for about 10 us a job.
MAX_BULK_JOBS = 10_000
# Trigger history bounds (app/store/history.py): entries per job (a reader never takes
# more), bytes per job, and the least bytes an entry may have (its fixed fields take
# up to ~90).
MAX_HISTORY_SIZE = 1000
MAX_HISTORY_BYTES = 1024 * 1024
MIN_HISTORY_ENTRY_BYTES = 128


def _on_this_machine(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _redis_url(env: Mapping[str, str]) -> str:
    """REDIS_URL, else the local Redis on REDIS_PORT, else the default.

    REDIS_PORT is the port of the Procfile's development Redis. Given alone, the URL follows
    it: the processes must not fall back to whatever other Redis listens on 6379 and write
    into its database. Given with a REDIS_URL on this machine at another port, one of the
    two is a mistake that would put jobs into the wrong Redis: refused.
    """
    url = env.get("REDIS_URL", "").strip()
    if not env.get("REDIS_PORT", "").strip():
        return url or DEFAULT_REDIS_URL
    port = _int(env, "REDIS_PORT", 0, minimum=1, maximum=MAX_PORT)
    if not url:
        return f"redis://127.0.0.1:{port}/0"
    parts = urlsplit(url)
    host = parts.hostname or ""  # none for unix:// sockets: nothing to compare
    try:
        url_port = parts.port or 6379
    except ValueError:
        raise SettingsError("REDIS_URL has a port that is not a number in 1-65535") from None
    if host and _on_this_machine(host) and url_port != port:
        raise SettingsError(
            f"REDIS_URL points at port {url_port} of {host} but REDIS_PORT, the port of the "
            f"Procfile's Redis, is {port}: two different Redis servers on this machine. Unset "
            "REDIS_URL to use the one on REDIS_PORT, or unset REDIS_PORT to use REDIS_URL"
        )
    return url


def _port_or_off(env: Mapping[str, str], name: str, default: int) -> int:
    """A port, or 0 for "off" (`0` or `off`)."""
    if env.get(name, "").strip().lower() == "off":
        return 0
    try:
        return _int(env, name, default, maximum=MAX_PORT)
    except SettingsError:
        raise SettingsError(f"{name} must be a port number (1-65535), or 0 or off, got "
                            f"{env.get(name, '').strip()[:40]!r}") from None


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    redis_cluster: bool = False
    # Prefix of every Redis key; lets several deployments share one Redis.
    prefix: str = "jr"
    # Hash-tagged partitions of the due index. Fixed for the life of a deployment.
    partitions: int = 1

    # The app this API process serves (like `dapr run --app-id`).
    app_id: str = "job-service"
    app_url: str = "http://127.0.0.1:6200"
    # Sent to the app as `dapr-api-token` (Dapr's APP_API_TOKEN).
    app_api_token: str = ""
    # Required from callers of the API when set (Dapr's DAPR_API_TOKEN).
    api_token: str = ""
    # Without api_token, the host names (".name": and those under it) the API answers
    # besides IP addresses and localhost (app/api/callers.py).
    allowed_hosts: tuple[str, ...] = ()
    # auto: protobuf Any data as the {type_url, value} envelope, the rest as raw JSON.
    delivery_format: str = "auto"
    # Behave as Dapr 1.14.3+ for this app (JOBRUNNER_DAPR_COMPAT, --dapr-compat): data kept
    # and delivered as scheduled, any `@type`, GET data in Dapr's shape. The app's
    # registration carries it to the workers (registration_format).
    dapr_compat: bool = False
    # One of APP_PROTOCOLS (Dapr's --app-protocol).
    app_protocol: str = "http"

    http_host: str = "127.0.0.1"
    http_port: int = 6280
    # Dapr's gRPC API (app/grpc), on http_host; Dapr's default port. 0: not served.
    grpc_port: int = 50001
    # A gRPC connection without a call this long is closed (its client reconnects on its
    # next call, and logs it: not every few seconds).
    grpc_idle_timeout_s: float = 300.0
    max_data_bytes: int = 1024 * 1024
    # The bulk route (app/api/bulk.py): jobs one request may schedule, and its body's bytes.
    bulk_max_jobs: int = 1000
    bulk_max_bytes: int = 8 * 1024 * 1024
    # Jobs one app may hold, at most (0: no bound): on a Redis that apps share, one app's
    # jobs cannot fill it for the others. Kept per partition, each holding its share.
    app_max_jobs: int = 0
    # A job first due more than this far ahead when it is scheduled is kept in the compact
    # far tier until it is due (app/store/lua/far.lua: about 150 B a pending job against
    # 290); 0: every job scheduled ahead goes there.
    far_after_s: float = 300.0
    # The API's HTTP server (app/processes/serve.py), per process: a request's head must
    # arrive within http_header_timeout_s of the connection's opening or of the previous
    # answer (so an idle connection is closed after it too), its body within
    # http_body_timeout_s; connections open at once, at most http_max_connections.
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_max_connections: int = 512
    # Bounds of one listing or dead-letter request (app/store): dead-letter ids one replay
    # or purge may name; entries of other names a prefix query of the dead-letter queue
    # may pass over per page (the rest: nextPageToken); stored bytes of jobs or dead
    # letters one page or replay batch reads (at least one entry is always read).
    max_replay_ids: int = 1000
    list_scan_budget: int = 10_000
    page_max_bytes: int = 8 * 1024 * 1024
    # An app registration lives this long without a heartbeat from its API process.
    app_registration_ttl_s: float = 15.0
    # The registration of an app that no API process has renewed for this long is removed
    # (Store.forget_gone_apps; its jobs stay). 0: never.
    app_forget_after_s: float = 7 * 86400.0

    # Worker tuning.
    concurrency: int = 256
    # Keep-alive connections a worker process opens to one app, at most.
    connections_per_app: int = 64
    # Deliveries in flight per worker process and app, at most (workers/slots.py): a slow
    # or hanging app waits on its own slots, never on the other apps'.
    app_concurrency: int = 64
    claim_batch: int = 256
    delivery_timeout_s: float = 10.0
    lease_s: float = 30.0
    idle_poll_s: float = 1.0
    shutdown_grace_s: float = 10.0
    # The longest per-job deliveryTimeout; 0: the lease less a sixth (25 s of 30 s). Below
    # the lease: a delivery must be over before another worker may take its trigger.
    max_delivery_timeout_s: float = 0.0
    # A Retry-After of a 429 or 503 answer delays the retry by at most this.
    max_retry_after_s: float = 3600.0
    # Most deliveries a second to this app over all workers (as Cloud Tasks'
    # max_dispatches_per_second); 0: no limit. The app's registration carries it.
    app_rate_limit: float = 0.0
    # Standard Webhooks secrets (decoded): each signs every delivery.
    signing_keys: tuple[bytes, ...] = field(default=())
    # Each app's deliveries signed with keys of its own, derived from signing_keys
    # (workers/signing.py app_keys): an app that holds its key cannot sign for another.
    signing_per_app: bool = False
    # Replica acknowledgement (app/redis_wait.py): after every script call, WAIT for this
    # many replicas, at most wait_timeout_ms; a write fewer replicas have is refused
    # (503 / retried), so no acknowledged write is lost in a failover. 0: off (Redis'
    # asynchronous replication: a failover can lose the last writes acknowledged).
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    # Catch-up (app/jobs/schedule.py catch_up_due): a job with catchUp `all` fires at
    # most max_catch_up of the occurrences it missed (the latest); with `skip`, a trigger
    # taken more than catch_up_grace_s after its due time was missed, and is passed over.
    max_catch_up: int = 100
    catch_up_grace_s: float = 5.0
    # Trigger history (app/store/history.py), written by the workers: the last
    # history_size outcomes of each job (0: none kept), each at most history_max_bytes /
    # history_size bytes; kept history_ttl_s once its job is over.
    history_size: int = 20
    history_max_bytes: int = 8192
    history_ttl_s: float = 86400.0

    # Logs of every process (app/logs.py): "plain" or "json"; a level name, or "" for the
    # process's own default (info everywhere: a worker's is a line per delivery).
    log_format: str = "plain"
    log_level: str = ""

    # The processes' own (app/processes, app/cli): the shared service's folder, the
    # redis-server to run ("": the newest found, app/processes/redis_server.py), seconds to
    # wait for Redis at start, and a worker's own Prometheus port (0: none).
    home: str = "~/.jobrunner"
    redis_server: str = ""
    redis_wait_s: float = 10.0
    worker_metrics_port: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        for name in ("APP_HOST", "APP_PORT", *cls().to_env()):
            if name in env and not is_text(env[name]):  # (a traceback wherever it was used)
                raise SettingsError(f"{name} is not UTF-8 text")
        app_port = _int(env, "APP_PORT", 6200, minimum=1, maximum=MAX_PORT)
        app_url = env.get("APP_URL", "").strip() or f"http://{_app_host(env)}:{app_port}"
        settings = cls(
            redis_url=_redis_url(env),
            redis_cluster=_bool(env, "REDIS_CLUSTER", False),
            prefix=env.get("JOBRUNNER_PREFIX", "").strip() or cls.prefix,
            partitions=_int(env, "JOBRUNNER_PARTITIONS", cls.partitions, minimum=1,
                            maximum=MAX_PARTITIONS),
            app_id=env.get("APP_ID", "").strip() or cls.app_id,
            app_url=app_url.rstrip("/"),
            app_api_token=env.get("APP_API_TOKEN", ""),
            api_token=env.get("DAPR_API_TOKEN", ""),
            allowed_hosts=_allowed_hosts(env.get("JOBRUNNER_ALLOWED_HOSTS", "")),
            delivery_format=(env.get("JOBRUNNER_DELIVERY_FORMAT", "").strip() or "auto").lower(),
            dapr_compat=_bool(env, "JOBRUNNER_DAPR_COMPAT", False),
            app_protocol=(env.get("APP_PROTOCOL", "").strip() or "http").lower(),
            http_host=env.get("JOBRUNNER_HTTP_HOST", "").strip() or cls.http_host,
            http_port=_int(env, "DAPR_HTTP_PORT", cls.http_port, minimum=1, maximum=MAX_PORT),
            grpc_port=_port_or_off(env, "DAPR_GRPC_PORT", cls.grpc_port),
            max_data_bytes=_int(env, "JOBRUNNER_MAX_DATA_BYTES", cls.max_data_bytes, minimum=1),
            bulk_max_jobs=_int(env, "JOBRUNNER_BULK_MAX_JOBS", cls.bulk_max_jobs, minimum=1),
            app_max_jobs=_int(env, "JOBRUNNER_APP_MAX_JOBS", cls.app_max_jobs),
            far_after_s=_float(env, "JOBRUNNER_FAR_AFTER_S", cls.far_after_s),
            bulk_max_bytes=_int(env, "JOBRUNNER_BULK_MAX_BYTES", cls.bulk_max_bytes, minimum=1),
            grpc_idle_timeout_s=_float(env, "JOBRUNNER_GRPC_IDLE_TIMEOUT",
                                       cls.grpc_idle_timeout_s, minimum=0.001,
                                       maximum=86400.0),
            http_header_timeout_s=_float(env, "JOBRUNNER_HTTP_HEADER_TIMEOUT",
                                         cls.http_header_timeout_s, minimum=0.001),
            http_body_timeout_s=_float(env, "JOBRUNNER_HTTP_BODY_TIMEOUT",
                                       cls.http_body_timeout_s, minimum=0.001),
            http_max_connections=_int(env, "JOBRUNNER_HTTP_MAX_CONNECTIONS",
                                      cls.http_max_connections, minimum=1),
            max_replay_ids=_int(env, "JOBRUNNER_MAX_REPLAY_IDS", cls.max_replay_ids, minimum=1),
            list_scan_budget=_int(env, "JOBRUNNER_LIST_SCAN_BUDGET", cls.list_scan_budget,
                                  minimum=1),
            page_max_bytes=_int(env, "JOBRUNNER_PAGE_MAX_BYTES", cls.page_max_bytes, minimum=1),
            app_registration_ttl_s=_float(
                env, "JOBRUNNER_APP_TTL", cls.app_registration_ttl_s, minimum=1.0
            ),
            app_forget_after_s=_float(env, "JOBRUNNER_APP_FORGET_AFTER",
                                      cls.app_forget_after_s),
            concurrency=_int(env, "JOBRUNNER_CONCURRENCY", cls.concurrency, minimum=1),
            connections_per_app=_int(env, "JOBRUNNER_CONNECTIONS_PER_APP",
                                     cls.connections_per_app, minimum=1),
            app_concurrency=_int(env, "JOBRUNNER_APP_CONCURRENCY", cls.app_concurrency,
                                 minimum=1),
            claim_batch=_int(env, "JOBRUNNER_CLAIM_BATCH", cls.claim_batch, minimum=1),
            delivery_timeout_s=_float(
                env, "JOBRUNNER_DELIVERY_TIMEOUT", cls.delivery_timeout_s, minimum=0.001
            ),
            lease_s=_float(env, "JOBRUNNER_LEASE", cls.lease_s, minimum=0.1),
            idle_poll_s=_float(env, "JOBRUNNER_IDLE_POLL", cls.idle_poll_s, minimum=0.01),
            shutdown_grace_s=_float(env, "JOBRUNNER_SHUTDOWN_GRACE", cls.shutdown_grace_s),
            max_delivery_timeout_s=_float(env, "JOBRUNNER_MAX_DELIVERY_TIMEOUT",
                                          cls.max_delivery_timeout_s),
            max_retry_after_s=_float(env, "JOBRUNNER_MAX_RETRY_AFTER", cls.max_retry_after_s),
            app_rate_limit=_float(env, "JOBRUNNER_APP_RATE_LIMIT", cls.app_rate_limit),
            signing_keys=_signing_keys(env.get("JOBRUNNER_SIGNING_KEYS", "")),
            signing_per_app=_bool(env, "JOBRUNNER_SIGNING_PER_APP", False),
            wait_replicas=_int(env, "JOBRUNNER_WAIT_REPLICAS", cls.wait_replicas),
            wait_timeout_ms=_int(env, "JOBRUNNER_WAIT_TIMEOUT_MS", cls.wait_timeout_ms,
                                 minimum=1),
            max_catch_up=_int(env, "JOBRUNNER_MAX_CATCH_UP", cls.max_catch_up, minimum=1),
            catch_up_grace_s=_float(env, "JOBRUNNER_CATCH_UP_GRACE", cls.catch_up_grace_s),
            history_size=_int(env, "JOBRUNNER_HISTORY_SIZE", cls.history_size),
            history_max_bytes=_int(env, "JOBRUNNER_HISTORY_MAX_BYTES", cls.history_max_bytes,
                                   minimum=1),
            history_ttl_s=_float(env, "JOBRUNNER_HISTORY_TTL", cls.history_ttl_s, minimum=1.0),
            log_format=(env.get("JOBRUNNER_LOG_FORMAT", "").strip() or "plain").lower(),
            log_level=env.get("JOBRUNNER_LOG_LEVEL", "").strip().lower(),
            home=env.get("JOBRUNNER_HOME", "").strip() or cls.home,
            redis_server=env.get("JOBRUNNER_REDIS_SERVER", "").strip(),
            redis_wait_s=_float(env, "JOBRUNNER_REDIS_WAIT", cls.redis_wait_s),
            worker_metrics_port=_port_or_off(env, "JOBRUNNER_WORKER_METRICS_PORT", 0),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.api_token and not (self.api_token.isascii() and self.api_token.isprintable()):
            # It travels in a header, which holds no other text: no request could match it.
            raise SettingsError("DAPR_API_TOKEN must be printable ASCII text")
        if self.grpc_port and self.grpc_port == self.http_port:
            raise SettingsError(
                f"DAPR_GRPC_PORT and DAPR_HTTP_PORT are both {self.grpc_port}: give two ports"
            )
        if self.delivery_format not in DELIVERY_FORMATS:
            raise SettingsError(
                f"JOBRUNNER_DELIVERY_FORMAT must be one of {', '.join(DELIVERY_FORMATS)}"
            )
        if self.dapr_compat and self.delivery_format != "auto":
            # One switch: the compatibility mode decides the format itself.
            raise SettingsError("JOBRUNNER_DAPR_COMPAT sets how data is delivered: "
                                "leave JOBRUNNER_DELIVERY_FORMAT unset (auto) with it")
        if self.app_protocol not in APP_PROTOCOLS:
            raise SettingsError(f"APP_PROTOCOL must be one of {', '.join(APP_PROTOCOLS)}, "
                                f"got {self.app_protocol!r}")
        if self.lease_s <= self.delivery_timeout_s:
            # A lease that ran out mid-delivery would let a second worker deliver too.
            raise SettingsError("JOBRUNNER_LEASE must be longer than JOBRUNNER_DELIVERY_TIMEOUT")
        if self.max_delivery_timeout_s >= self.lease_s:
            raise SettingsError("JOBRUNNER_MAX_DELIVERY_TIMEOUT must be shorter than "
                                "JOBRUNNER_LEASE")
        if self.app_rate_limit > MAX_APP_RATE_LIMIT:
            raise SettingsError(f"JOBRUNNER_APP_RATE_LIMIT must be at most "
                                f"{MAX_APP_RATE_LIMIT:g} deliveries a second")
        if not self.app_url.startswith(("http://", "https://")):
            raise SettingsError(f"APP_URL must be an http(s) URL, got {self.app_url!r}")
        if self.http_header_timeout_s > MAX_HTTP_HEADER_TIMEOUT_S:
            raise SettingsError(f"JOBRUNNER_HTTP_HEADER_TIMEOUT must be at most "
                                f"{MAX_HTTP_HEADER_TIMEOUT_S:g} seconds")
        if self.bulk_max_jobs > MAX_BULK_JOBS:
            raise SettingsError(f"JOBRUNNER_BULK_MAX_JOBS must be at most {MAX_BULK_JOBS}")
        if self.max_catch_up > MAX_CATCH_UP:
            raise SettingsError(f"JOBRUNNER_MAX_CATCH_UP must be at most {MAX_CATCH_UP}")
        self._validate_history()
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(f"JOBRUNNER_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
        if self.log_level and self.log_level not in LOG_LEVELS:
            raise SettingsError(f"JOBRUNNER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")

    def _validate_history(self) -> None:
        if self.history_size > MAX_HISTORY_SIZE:
            raise SettingsError(f"JOBRUNNER_HISTORY_SIZE must be at most {MAX_HISTORY_SIZE}")
        if self.history_max_bytes > MAX_HISTORY_BYTES:
            raise SettingsError(f"JOBRUNNER_HISTORY_MAX_BYTES must be at most "
                                f"{MAX_HISTORY_BYTES} (1 MiB)")
        if self.history_size and self.history_entry_bytes < MIN_HISTORY_ENTRY_BYTES:
            raise SettingsError(
                f"JOBRUNNER_HISTORY_MAX_BYTES ({self.history_max_bytes}) leaves "
                f"{self.history_entry_bytes} bytes to each of the JOBRUNNER_HISTORY_SIZE "
                f"({self.history_size}) entries: give each {MIN_HISTORY_ENTRY_BYTES} at least")

    @property
    def history_entry_bytes(self) -> int:
        """The most bytes one history entry may take (its error text is cut to fit)."""
        return self.history_max_bytes // self.history_size if self.history_size else 0

    @property
    def max_job_delivery_timeout_s(self) -> float:
        """The longest deliveryTimeout a job may ask for (max_delivery_timeout_s)."""
        return self.max_delivery_timeout_s or self.lease_s * 5 / 6

    @property
    def registration_format(self) -> str:
        """The delivery format the app's registration tells the workers."""
        return DAPR_FORMAT if self.dapr_compat else self.delivery_format

    @property
    def body_format(self) -> str | None:
        """The format the data of a delivery is rendered to, as its HTTP body; None for a
        gRPC app (its data goes as the Any it is)."""
        return self.registration_format if self.app_protocol == "http" else None

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment variables that make `from_env` give these settings back."""
        return {
            "REDIS_URL": self.redis_url,
            # The URL says it all; an inherited REDIS_PORT must not contradict it in a child.
            "REDIS_PORT": "",
            "REDIS_CLUSTER": "1" if self.redis_cluster else "0",
            "JOBRUNNER_PREFIX": self.prefix,
            "JOBRUNNER_PARTITIONS": str(self.partitions),
            "APP_ID": self.app_id,
            "APP_URL": self.app_url,
            "APP_API_TOKEN": self.app_api_token,
            "DAPR_API_TOKEN": self.api_token,
            "JOBRUNNER_ALLOWED_HOSTS": ",".join(self.allowed_hosts),
            "JOBRUNNER_DELIVERY_FORMAT": self.delivery_format,
            "JOBRUNNER_DAPR_COMPAT": "1" if self.dapr_compat else "0",
            "APP_PROTOCOL": self.app_protocol,
            "JOBRUNNER_HTTP_HOST": self.http_host,
            "DAPR_HTTP_PORT": str(self.http_port),
            "DAPR_GRPC_PORT": str(self.grpc_port),
            "JOBRUNNER_MAX_DATA_BYTES": str(self.max_data_bytes),
            "JOBRUNNER_BULK_MAX_JOBS": str(self.bulk_max_jobs),
            "JOBRUNNER_APP_MAX_JOBS": str(self.app_max_jobs),
            "JOBRUNNER_FAR_AFTER_S": repr(self.far_after_s),
            "JOBRUNNER_BULK_MAX_BYTES": str(self.bulk_max_bytes),
            "JOBRUNNER_HTTP_HEADER_TIMEOUT": repr(self.http_header_timeout_s),
            "JOBRUNNER_HTTP_BODY_TIMEOUT": repr(self.http_body_timeout_s),
            "JOBRUNNER_HTTP_MAX_CONNECTIONS": str(self.http_max_connections),
            "JOBRUNNER_GRPC_IDLE_TIMEOUT": repr(self.grpc_idle_timeout_s),
            "JOBRUNNER_MAX_REPLAY_IDS": str(self.max_replay_ids),
            "JOBRUNNER_LIST_SCAN_BUDGET": str(self.list_scan_budget),
            "JOBRUNNER_PAGE_MAX_BYTES": str(self.page_max_bytes),
            "JOBRUNNER_APP_TTL": repr(self.app_registration_ttl_s),
            "JOBRUNNER_APP_FORGET_AFTER": repr(self.app_forget_after_s),
            "JOBRUNNER_CONCURRENCY": str(self.concurrency),
            "JOBRUNNER_CONNECTIONS_PER_APP": str(self.connections_per_app),
            "JOBRUNNER_APP_CONCURRENCY": str(self.app_concurrency),
            "JOBRUNNER_CLAIM_BATCH": str(self.claim_batch),
            "JOBRUNNER_DELIVERY_TIMEOUT": repr(self.delivery_timeout_s),
            "JOBRUNNER_LEASE": repr(self.lease_s),
            "JOBRUNNER_IDLE_POLL": repr(self.idle_poll_s),
            "JOBRUNNER_SHUTDOWN_GRACE": repr(self.shutdown_grace_s),
            "JOBRUNNER_MAX_DELIVERY_TIMEOUT": repr(self.max_delivery_timeout_s),
            "JOBRUNNER_MAX_RETRY_AFTER": repr(self.max_retry_after_s),
            "JOBRUNNER_APP_RATE_LIMIT": repr(self.app_rate_limit),
            "JOBRUNNER_SIGNING_KEYS": _signing_keys_env(self.signing_keys),
            "JOBRUNNER_SIGNING_PER_APP": "1" if self.signing_per_app else "0",
            "JOBRUNNER_WAIT_REPLICAS": str(self.wait_replicas),
            "JOBRUNNER_WAIT_TIMEOUT_MS": str(self.wait_timeout_ms),
            "JOBRUNNER_MAX_CATCH_UP": str(self.max_catch_up),
            "JOBRUNNER_CATCH_UP_GRACE": repr(self.catch_up_grace_s),
            "JOBRUNNER_HISTORY_SIZE": str(self.history_size),
            "JOBRUNNER_HISTORY_MAX_BYTES": str(self.history_max_bytes),
            "JOBRUNNER_HISTORY_TTL": repr(self.history_ttl_s),
            "JOBRUNNER_LOG_FORMAT": self.log_format,
            "JOBRUNNER_LOG_LEVEL": self.log_level,
            "JOBRUNNER_HOME": self.home,
            "JOBRUNNER_REDIS_SERVER": self.redis_server,
            "JOBRUNNER_REDIS_WAIT": f"{self.redis_wait_s:g}",
            "JOBRUNNER_WORKER_METRICS_PORT": str(self.worker_metrics_port),
        }
