"""Which browser requests a token-less API refuses: DNS rebinding and cross-site forgery.

Without DAPR_API_TOKEN, whatever reaches the port may call the API, and a web page the
developer opens can reach a port on their loopback in two ways:
- it sends a "simple" POST (no preflight: the API reads any body as JSON, as Dapr does)
  from its own origin; the browser adds that origin as `Origin`. The answer stays unread,
  but the job is scheduled, the dead letters purged, the app paused;
- it rebinds its own host name to 127.0.0.1, and calls the API as its own origin, reading
  every answer (and the dashboard's pages, with their CSRF token). Its requests carry its
  name as `Host`.
So a token-less API answers only a `Host` that is an IP address, `localhost` (or a name
under it) or one of JOBRUNNER_ALLOWED_HOSTS, and, when an `Origin` comes with the request,
only that of the same host. SDKs, the CLI and curl send no `Origin`. With a token set, the
token decides: a page cannot send it without a preflight, which the API never grants.
"""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit

from werkzeug.sansio.utils import host_is_trusted

from app.jobs import errors
from app.jobs.errors import ApiError

# Names that resolve to loopback wherever they are asked (RFC 6761): a page cannot own them.
LOOPBACK_NAMES = ("localhost", ".localhost")


def refusal(host: str | None, origin: str | None, allowed: tuple[str, ...]) -> ApiError | None:
    """The 403 of a token-less API for a request with these `Host` and `Origin` headers,
    or None when it is served. No `Host` (HTTP/1.0) is served: browsers always send one."""
    if host is not None and not host_allowed(host, allowed):
        return ApiError(403, errors.HOST_NOT_ALLOWED,
                        f"Host {host[:100]!r} is not allowed: without DAPR_API_TOKEN, the API "
                        "answers requests addressed to an IP address or localhost, and to "
                        "the names in JOBRUNNER_ALLOWED_HOSTS (a guard against DNS rebinding)")
    if origin is not None and not _same_host(origin, host):
        return ApiError(403, errors.CROSS_SITE,
                        f"a request from the web page {origin[:100]!r} is refused: without "
                        "DAPR_API_TOKEN, the API answers no web page of another site")
    return None


@functools.lru_cache(maxsize=256)  # a request's Host is one of a few; parsing it is not free
def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether a `Host` header (`name[:port]`) names an IP address, loopback or an allowed
    host (a name, or `.name` for it and every name under it)."""
    host = host.lower()
    if not host_is_trusted(host):  # not a host at all (bad characters, a bad port)
        return False
    name = host[1:host.find("]")] if host.startswith("[") else host.rpartition(":")[0] or host
    try:
        ipaddress.ip_address(name)  # a rebound name is never an IP address
        return True
    except ValueError:
        return host_is_trusted(host, (*LOOPBACK_NAMES, *allowed))


def _same_host(origin: str, host: str | None) -> bool:
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and host is not None and netloc.lower() == host.lower()
