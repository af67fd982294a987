"""The HTTP API from the command line: the client, the options and the output that every
command working on a running jobrunner shares (`jobrunner jobs ...`; later `stats`).

Such a command talks to the API, never to Redis, so it works against a remote deployment
as well as a local one: `--url` (default: this machine's API, from DAPR_HTTP_PORT and
JOBRUNNER_HTTP_HOST), the token from DAPR_API_TOKEN sent as `dapr-api-token`. Every way a
request can fail ends the command with one line on stderr and an exit code, never a
traceback:

    0  done
    1  the API said no: an error answer (its status, errorCode and message), such as a job
       that does not exist, a bad schedule, a wrong token (401), Redis down (503)
    2  usage: a bad option or argument (click's own code)
    3  no answer: the API cannot be reached (connection refused, timeout, not HTTP)

A new command is a few lines (see app/cli/jobs.py):

    @jobs.command()
    @api_command
    @click.argument("name")
    def pause(api: Api, name: str) -> None:
        api.call("POST", job_path(name) + "/pause")
        api.done(f"paused {name!r}", {"paused": name})

HTTP is the standard library's urllib: a command sends a handful of requests, which needs
no HTTP library (and urllib brings https and the proxy variables for free).
"""

from __future__ import annotations

import functools
import http.client
import json
import math
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import click

from app.processes.procs import http_url
from app.settings import Settings

# The exit codes (see the module docstring); 2 is click's own for usage errors.
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3

DEFAULT_TIMEOUT_S = 10.0
# The API's routes (the stable spelling; /v1.0-alpha1 is the same API).
JOBS_PATH = "/v1.0/jobs"
# The API's largest page of a list (app/api/jobs.py MAX_PAGE).
MAX_PAGE = 1000
# Bound on an answer read into memory: a page of 1000 jobs with 1 MiB of data each could
# be a gigabyte; no answer of the API needs more than this to be useful.
MAX_ANSWER_BYTES = 256 * 1024 * 1024


# Past this size, a request the API closed while it was sent was refused for its size.
CUT_SHORT_BYTES = 1024 * 1024
HEALTH_PATH = "/v1.0/healthz"


def _json_bytes(body: Any) -> bytes:
    """The body as UTF-8 JSON, not ASCII escapes (a text of `日` took three times its
    bytes in escapes, past the API's body limit); a lone surrogate, which UTF-8 cannot
    carry, is sent escaped for the API to refuse."""
    try:
        return json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(body).encode()


class ApiRefused(click.ClickException):
    """The API answered with an error: exit 1, `STATUS ERRORCODE: message`."""

    exit_code = EXIT_REFUSED

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.api_message = status, code, message
        # Said to a terminal: what a server at --url wrote must not drive it.
        code, message = printable(code), printable(message)
        super().__init__(f"{status} {code}: {message}" if code else f"{status}: {message}")


class ApiUnreachable(click.ClickException):
    """No answer from the API: exit 3."""

    exit_code = EXIT_UNREACHABLE


def default_url() -> str:
    """This machine's API as the settings place it (DAPR_HTTP_PORT, JOBRUNNER_HTTP_HOST)."""
    settings = _settings()
    return http_url(settings.http_host, settings.http_port)


def _settings() -> Settings:
    # Only the settings this client uses: another process's settings that do not parse
    # (a REDIS_URL for the workers, say) are none of its business. No gRPC port: its
    # default would be refused beside a DAPR_HTTP_PORT of 50001, and it is not used.
    names = ("DAPR_HTTP_PORT", "JOBRUNNER_HTTP_HOST", "DAPR_API_TOKEN")
    env = {name: os.environ[name] for name in names if name in os.environ}
    return Settings.from_env({**env, "DAPR_GRPC_PORT": "0"})


def check_url(ctx: click.Context, param: click.Parameter | None,
              value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  # raises on a bad port
    except ValueError as e:  # a bad port, or an unclosed [ of an IPv6 address
        raise click.BadParameter(f"{e}: {value!r}") from None
    if parts.username is not None or parts.password is not None:  # not echoed: a secret
        raise click.BadParameter("takes no user or password: the API's token is "
                                 "DAPR_API_TOKEN")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise click.BadParameter(f"must be an http(s) URL like http://127.0.0.1:6280: {value!r}")
    if not parts.path.isascii():
        raise click.BadParameter(f"the path must be ASCII (percent-encoded): {value!r}")
    route = re.search(r"/v1\.0(-alpha1)?(/.*)?$", parts.path)
    if route:  # (a path before them is fine: an API behind a proxy, under a prefix)
        raise click.BadParameter(
            f"must be the API's address, without its routes: "
            f"{urlunsplit(parts._replace(path=parts.path[:route.start()]))!r}, "
            f"not {value!r}")
    if not parts.hostname.isascii():  # an internationalised name: its xn-- form, which
        try:                          # the Host header can carry (urllib's traceback)
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise click.BadParameter(f"the host is no domain name: {value!r}") from None
        text = urlunsplit(parts._replace(netloc=host if parts.port is None
                                         else f"{host}:{parts.port}"))
    return text


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if math.isnan(value):  # passes FloatRange's bounds, then fails in the socket
        raise click.BadParameter("must be a number of seconds, not nan")
    return value


def job_path(name: str) -> str:
    """The path of one job; every character of the name is percent-encoded but the safe
    ones, so a name with spaces, `%` or Unicode reaches the API as it is."""
    return f"{JOBS_PATH}/{quote(utf8(name, 'name'), safe='')}"


def utf8(text: str, what: str) -> str:
    """`text`, known to be UTF-8 text; click.BadParameter for bytes of the command line
    that are not (Python's surrogate escapes), which no URL can carry: the API read them
    as U+FFFD, a character a name may hold."""
    try:
        text.encode()
    except UnicodeEncodeError:
        try:  # the command line's bytes as given
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # (a lone surrogate from elsewhere)
            raw = text.encode("utf-8", "backslashreplace")
        shown = printable(raw.decode("utf-8", "backslashreplace"))
        raise click.BadParameter(f"the {what} '{shown}' is not UTF-8 text") from None
    return text


class ApiClient:
    """Requests to one API: JSON in, JSON out, errors as ApiRefused / ApiUnreachable."""

    def __init__(self, base_url: str, token: str = "", timeout_s: float = DEFAULT_TIMEOUT_S):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        # No redirects followed: an API answers, it does not redirect; a redirect means the
        # URL points at something else, and following it would resend the token there.
        self._opener = urllib.request.build_opener(_NoRedirect)

    def call(self, method: str, path: str, *, query: Mapping[str, str | int] | None = None,
             body: Any = None) -> Any:
        """The decoded JSON answer of a 2xx (None when it has no body)."""
        if query:
            for key, value in query.items():
                if isinstance(value, str):
                    utf8(value, key)
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else _json_bytes(body)
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("dapr-api-token", self.token)
        try:
            return _within(self.timeout_s, lambda: self._exchange(request, data, url))
        except TimeoutError as e:
            raise self._unreachable(e) from None

    def _exchange(self, request: urllib.request.Request, data: bytes | None, url: str) -> Any:
        """call()'s request and its answer, whatever it is (bounded as a whole by call)."""
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return _decode(response.read(MAX_ANSWER_BYTES + 1), response.status, url)
        except urllib.error.HTTPError as e:
            with e:
                try:
                    raw = e.read(64 * 1024)  # an error body is short; the rest is not needed
                except (OSError, http.client.HTTPException):
                    raw = b""
            raise self._refused(e.code, e.reason, e.headers, raw) from None
        except urllib.error.URLError as e:
            raise self._cut_short(data, e.reason) or self._unreachable(e.reason) from None
        except (OSError, http.client.HTTPException) as e:  # timeouts while reading, resets
            raise self._cut_short(data, e) or self._unreachable(e) from None

    def _cut_short(self, data: bytes | None, reason: Any) -> ApiRefused | None:
        """A large request whose connection the API closed while it was sent, the API still
        there: it answers a body over its limit with a 413 and closes without reading it
        (urllib, still writing, sees the close, not the answer). An API that went away
        is unreachable (None)."""
        if data is None or len(data) <= CUT_SHORT_BYTES or \
                not isinstance(reason, (BrokenPipeError, ConnectionResetError)):
            return None
        try:
            with self._opener.open(self.base_url + HEALTH_PATH, timeout=self.timeout_s):
                pass
        except urllib.error.HTTPError as e:  # an answer (503: its Redis away): it is there
            e.close()
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            return None
        return ApiRefused(413, "", f"the API closed the connection while {len(data):,} bytes "
                                   "were sent: over its body limit, most likely")

    def pages(self, path: str, key: str, query: Mapping[str, str | int] | None = None,
              limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The items under `key` of a listing, page after page through its
        nextPageToken, at most `limit` of them (None: all)."""
        token = ""
        left = limit
        while left is None or left > 0:
            size = MAX_PAGE if left is None else min(left, MAX_PAGE)
            page = self.call("GET", path, query={**(query or {}), "limit": size,
                                                 "pageToken": token})
            if not isinstance(page, dict) or not isinstance(page.get(key), list):
                raise ApiRefused(200, "", f"the answer of {path} has no {key!r} list: "
                                          "is --url a jobrunner API?")
            items, nxt = page[key], page.get("nextPageToken") or ""
            # Another server's JSON: items that are no objects, or a token that never ends.
            if not all(isinstance(item, dict) for item in items) or not isinstance(nxt, str) \
                    or (nxt and nxt == token):
                raise ApiRefused(200, "", f"the answer of {path} is not a page of {key}: "
                                          "is --url a jobrunner API?")
            for item in items:
                yield item
                if left is not None:
                    left -= 1
            token = nxt
            if not token:
                return

    def _refused(self, status: int, reason: str, headers: Any, raw: bytes) -> ApiRefused:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            code = str(body.get("errorCode") or "")
            message = body["message"]
        else:
            kind = headers.get("Content-Type", "no content type") if headers else "no body"
            message = f"{reason or 'error'} (not an answer of the jobs API: {kind})"
            code = ""
        if status == 401:
            message += (" (the API wants its token in DAPR_API_TOKEN)" if not self.token
                        else " (DAPR_API_TOKEN is not the API's token)")
        return ApiRefused(status, code, message)

    def _unreachable(self, reason: Any) -> ApiUnreachable:
        if isinstance(reason, (TimeoutError, socket.timeout)):
            why = f"no answer within {self.timeout_s:g}s (--timeout)"
        elif isinstance(reason, ConnectionRefusedError):
            why = "connection refused (is jobrunner running there? --url says where)"
        elif isinstance(reason, socket.gaierror):
            why = f"unknown host ({reason.strerror})"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror[0].lower() + reason.strerror[1:]
        else:
            why = str(reason) or type(reason).__name__
        return ApiUnreachable(f"cannot reach the jobs API at {self.base_url}: {why}")


T = TypeVar("T")


def _within(seconds: float, work: Callable[[], T]) -> T:
    """`work()` within `seconds` in all, else TimeoutError: urllib's timeout bounds each
    read, and a server that trickles its answer a byte at a time never met it. On a thread
    of its own, left to end with the command (a daemon), as urllib cannot be interrupted."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # raised on the caller's thread
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="jobrunner-request", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise TimeoutError(f"no answer within {seconds:g}s")
    done, value = outcome[0]
    if not done:
        raise value
    result: T = value
    return result


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


def _decode(raw: bytes, status: int, url: str) -> Any:
    if len(raw) > MAX_ANSWER_BYTES:
        raise ApiRefused(status, "", f"the answer of {url} is over "
                                     f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json reads
        raise ApiRefused(status, "", f"the answer of {url} is not JSON: "
                                     "is --url a jobrunner API?") from None


# --- the commands' side ------------------------------------------------------------------


@dataclass
class Api:
    """What a command gets: the client, and output as text for people or JSON for scripts."""

    client: ApiClient
    as_json: bool

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.call(method, path, **kwargs)

    def done(self, text: str | Callable[[], str], doc: Any) -> None:
        """One result: `text` for people, `doc` as one JSON document with --json."""
        if self.as_json:
            click.echo(json.dumps(doc, ensure_ascii=False))
        else:
            click.echo(text() if callable(text) else text)

    def lines(self, docs: Iterator[Any]) -> int:
        """JSON lines, one a document, written as they come; returns how many."""
        n = 0
        for doc in docs:
            click.echo(json.dumps(doc, ensure_ascii=False))
            n += 1
        return n


@overload
def api_command(f: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def api_command(*, json_option: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    ...


def api_command(f: Callable[..., Any] | None = None, /, *, json_option: bool = True) -> Any:
    """The options of a command that talks to the API (--url, --timeout, and --json unless
    `json_option` is False), after the command's own; the command is called with an `Api`
    first."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(*args: Any, url: str | None, timeout: float, as_json: bool = False,
                    **kwargs: Any) -> Any:
            settings = _settings()
            base_url = url or http_url(settings.http_host, settings.http_port)
            if url is None:
                try:
                    check_url(click.get_current_context(), None, base_url)
                except click.BadParameter as e:
                    raise click.ClickException(
                        f"JOBRUNNER_HTTP_HOST and DAPR_HTTP_PORT give no URL: {e.message}"
                    ) from None
            client = ApiClient(base_url, settings.api_token, timeout)
            try:
                return f(Api(client, as_json), *args, **kwargs)
            except (AttributeError, TypeError, KeyError, IndexError, OverflowError) as e:
                # The command read an answer shaped otherwise than the jobs API's.
                raise click.ClickException(
                    f"the answer of {base_url} is not the jobs API's ({type(e).__name__}: "
                    f"{e}): is --url a jobrunner API?") from None

        options = [
            click.option("--url", callback=check_url, metavar="URL",
                         help="The jobs API to talk to; its token is DAPR_API_TOKEN.  "
                              "[default: http://$JOBRUNNER_HTTP_HOST:$DAPR_HTTP_PORT, "
                              "http://127.0.0.1:6280]"),
            click.option("--timeout", type=click.FloatRange(0.1, 3600), default=DEFAULT_TIMEOUT_S,
                         show_default=True, metavar="SECONDS", callback=_finite,
                         help="How long to wait for each answer of the API."),
        ]
        if json_option:
            options.append(click.option("--json", "as_json", is_flag=True,
                                        help="JSON for scripts instead of text."))
        for option in reversed(options):
            command = option(command)
        # click lists the options last added first: move these behind the command's own.
        params: list[click.Parameter] = command.__click_params__  # type: ignore[attr-defined]
        params[:] = params[-len(options):] + params[:-len(options)]
        return command

    return decorate(f) if f is not None else decorate


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with its control characters written as escapes (`\\n`, `\\x1b`): an app's
    error text or a job's data would otherwise start lines of its own in a table (rows
    that were never there) or drive the terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Rows (under headers, if any) in aligned columns, two spaces apart, no trailing
    blanks; control characters escaped."""
    lines = [[printable(cell) for cell in line] for line in (*([headers] if headers else []),
                                                              *rows)]
    if not lines:
        return ""
    widths = [0] * len(lines[0])
    for line in lines:
        widths = [max(w, len(cell)) for w, cell in zip(widths, line, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
