"""Which browser requests a token-less API refuses: DNS rebinding and cross-site forgery.

Without DAPR_API_TOKEN, whatever reaches the port may call the API, and a web page the
developer opens can reach a port on their loopback in two ways:
- it sends a "simple" POST (no preflight: the API reads any body as JSON, as Dapr does)
  from its own origin; the browser adds that origin as `Origin`. The answer stays unread,
  but the job is scheduled, the dead letters replayed, the app paused;
- it rebinds its own host name to 127.0.0.1, and calls the API as its own origin, reading
  every answer (and the dashboard's pages, with their CSRF token). Its requests carry its
  name as `Host`.
So a token-less API answers only a `Host` that is an IP address, `localhost` (or a name
under it) or one of JOBRUNNER_ALLOWED_HOSTS, and, when an `Origin` comes with the request,
only the API's own (scheme, host and port). SDKs, the CLI and curl send no `Origin`. With a
token set, the token decides: a page cannot send it without a preflight, which the API
never grants.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import urlsplit

from app.jobs import errors
from app.jobs.errors import ApiError
from app.settings import HOST_NAME

# `name[:port]` or `[IPv6][:port]`, lower-cased.
_HOST = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def refusal(host: str | None, origin: str | None, scheme: str,
            allowed: tuple[str, ...]) -> ApiError | None:
    """The 403 of a token-less API for a request with these `Host` and `Origin` headers,
    received over `scheme` (http), or None when it is served. No `Host` (HTTP/1.0) is
    served: browsers always send one."""
    if host is not None and not host_allowed(host, allowed):
        return ApiError(403, errors.HOST_NOT_ALLOWED,
                        f"Host {host[:100]!r} is not allowed: without DAPR_API_TOKEN, the API "
                        "answers requests addressed to an IP address or localhost, and to "
                        "the names in JOBRUNNER_ALLOWED_HOSTS (a guard against DNS rebinding)")
    if origin is not None and not _same_origin(origin, host, scheme):
        return ApiError(403, errors.CROSS_SITE,
                        f"a request from the web page {origin[:100]!r} is refused: without "
                        "DAPR_API_TOKEN, the API answers no web page of another site")
    return None


@functools.lru_cache(maxsize=256)  # a request's Host is one of a few; parsing it is not free
def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether a `Host` header names an IP address, loopback or an allowed host (a name,
    or `.name` for it and every name under it), on any port."""
    parsed = _parse(host)
    if parsed is None:
        return False
    name, _ = parsed
    if _is_ip(name):
        return True  # a rebound name is never an IP address
    if not HOST_NAME.fullmatch(name):
        return False  # empty labels, a trailing dot: no name a client means
    # RFC 6761: localhost and the names under it are loopback wherever they are asked.
    for ref in ("localhost", ".localhost", *allowed):
        if name == ref or (ref.startswith(".") and (name == ref[1:] or name.endswith(ref))):
            return True
    return False


def _parse(host: str) -> tuple[str, int | None] | None:
    """(name or IP address, port) of a `Host` header; None when it is not one."""
    found = _HOST.fullmatch(host.lower())
    if found is None:
        return None
    port = None if found["port"] is None else int(found["port"])
    if port is not None and not 0 < port < 65536:
        return None
    if found["ip6"] is not None:
        return (found["ip6"], port) if _is_ip(found["ip6"], 6) else None
    return found["name"], port


def _is_ip(name: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return version is None or address.version == version


def _same_origin(origin: str, host: str | None, scheme: str) -> bool:
    """Whether `Origin` names the origin the request was addressed to: its scheme, and the
    `Host`'s name and port (the scheme's default when absent)."""
    parsed = None if host is None else _parse(host)
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parsed is None or parts.scheme != scheme or parts.username is not None \
            or parts.password is not None or parts.path or parts.query or not parts.hostname:
        return False
    name, host_port = parsed
    default = _DEFAULT_PORTS.get(scheme)
    return (parts.hostname.lower() == name
            and (port if port is not None else default) == (
                host_port if host_port is not None else default))
