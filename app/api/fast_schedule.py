"""A shortcut for the API's busiest request, `POST`/`PUT .../jobs/{name}`, that skips
Flask's per-request machinery and answers exactly as Flask would.

On that route Flask's own work (request context, routing, hooks, request and response
objects) costs about as much CPU as the schedule itself (validation and the Redis
script). The shortcut, WSGI middleware inside the metrics' counter, does only what that
route does: the caller check (the token; without one, the Host and Origin: app/api/
callers.py), the body read, `jobs.schedule` (the view's own code), the route label the
metrics count under, and the empty 204.

It stands aside, and Flask serves the request as always, for anything else: another
method or path, a caller the check refuses, a body without a plain Content-Length within
the limit, a cookie (Flask's session could answer with one). An error met after the body
was read (a bad job, Redis away) is handed to Flask in the environ, and the view raises
it again: Flask's handlers answer it, log it and count it, and nothing is done twice.
`arm` checks, once the app is built, that the app has no hook or route of its own on
that path that the shortcut does not know; if it has, the shortcut stays off.

`on_loop` serves the same requests on the API server's event loop, before any thread is
spent (app/processes/wsgi_bridge.py), when the store is a single Redis node it can reach
from the loop (app/store/loop_redis.py): the same checks and validation, then the
script's call written on the loop, the same count in the metrics. Whatever else happens
(any check that would send the request to Flask, a bad job, a job that exists, an error
reply, Redis away) it leaves the request, untouched, to the thread and the WSGI path
above, which does it all again and answers as it always has; no reply within the socket
timeout is handed to Flask as the WSGI path hands an error (503). A request whose reply
was lost may so run the script twice: the second run finds its own job (answered as
stored, see jobs.schedule) or overwrites it with the same record, as redis-py's retries do.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any

from flask import Flask

from app.api import jobs
from app.api.callers import refusal
from app.api.metrics import _ROUTE_KEY as ROUTE_KEY
from app.api.metrics import count_request
from app.jobs.anydata import renders_value
from app.jobs.validation import validate_name
from app.settings import Settings
from app.store.loop_redis import LoopRedis, ReplyTimeout
from app.store.redis_client import UNAVAILABLE
from app.store.store import Store

log = logging.getLogger("jobrunner.api")

# Where an error the shortcut met waits for the view to raise it (jobs.schedule_job).
HANDED_OVER = jobs.HANDED_OVER
_METHODS = ("POST", "PUT")
_NO_CONTENT = "204 NO CONTENT"  # as werkzeug says it
# Where `arm` leaves the shortcut in the app (app.extensions), for the server to find.
EXTENSION = "jobrunner.schedule_shortcut"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# (status, headers, body): an answer the server sends as it stands.
Answer = tuple[int, list[tuple[str, str]], bytes]


class ScheduleShortcut:
    """Wraps Flask's `wsgi_app`; off until `arm` finds the app as it expects."""

    def __init__(self, flask_wsgi: WsgiApp, settings: Settings, store: Store) -> None:
        self.flask_wsgi = flask_wsgi
        self.settings = settings
        self.store = store
        self._token = settings.api_token.encode()
        self._max_body = 0
        # Path prefix -> the URL rule Flask matches there (the metrics' route label).
        self._routes: tuple[tuple[str, str], ...] = ()
        self._loop_redis: LoopRedis | None = None

    @property
    def armed(self) -> bool:
        return bool(self._routes)

    def arm(self, app: Flask, check_caller: Callable[..., Any],
            known_after: Iterable[str]) -> bool:
        """Turn on when the app runs, around the schedule view, only `check_caller` before
        it and the after-request hooks named in `known_after` (qualified names), and its
        routing sends every POST and PUT under the jobs paths to that view."""
        why = _unknown(app, check_caller, set(known_after))
        if why:
            log.info("the schedule shortcut is off: %s", why)
            self.disarm()
            return False
        self._max_body = int(app.config["MAX_CONTENT_LENGTH"])
        self._routes = tuple((f"{base}/", f"{base}/<anything:name>") for base in jobs._PREFIXES)
        app.extensions[EXTENSION] = self
        return True

    def disarm(self) -> None:
        """Off: Flask serves every request (tests compare the two)."""
        self._routes = ()

    def use_loop(self) -> bool:
        """Serve `on_loop` from now on, in this process, when the store's Redis can be
        reached from an event loop (a single node over TCP, no replica wait); whether so."""
        self._loop_redis = LoopRedis.for_client(self.store.redis)
        script = self.store.script("schedule")
        if self._loop_redis is not None:
            # Loaded now, so the first requests find it (a Redis that lost it since, or
            # away now, costs a request the WSGI path, which loads it).
            with contextlib.suppress(*UNAVAILABLE):
                self.store.redis.script_load(script.script)
        return self._loop_redis is not None

    def _caller_ok(self, environ: dict[str, Any]) -> bool:
        """Whether Flask's `_check_caller` (app/api/factory.py) would let the request by."""
        if self._token:
            return hmac.compare_digest(environ.get("HTTP_DAPR_API_TOKEN", "").encode(),
                                       self._token)
        return refusal(environ.get("HTTP_HOST"), environ.get("HTTP_ORIGIN"),
                       environ.get("wsgi.url_scheme", "http"), self.settings.allowed_hosts) is None

    def _route(self, path: str) -> tuple[str, str] | None:
        """(the raw job name, the URL rule) of a path the shortcut serves, else None."""
        for prefix, rule in self._routes:
            # A name with a '/' is no job's (validation refuses it), or a job's
            # sub-resource (`.../jobs/{name}/pause`): Flask routes it.
            if path.startswith(prefix) and len(path) > len(prefix) \
                    and "/" not in path[len(prefix):]:
                return path[len(prefix):], rule
        return None

    async def on_loop(self, environ: dict[str, Any], body: bytes) -> Answer | None:
        """The answer to a plain schedule request, served on the event loop; None when
        the request is left to the WSGI app (see the module doc). `body`: all of it."""
        started = time.perf_counter()
        client = self._loop_redis
        method = environ["REQUEST_METHOD"]
        if client is None or not self._routes or method not in _METHODS:
            return None
        found = self._route(environ["PATH_INFO"])
        if found is None:
            return None
        raw_name, rule = found
        if not self._caller_ok(environ):
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if ("HTTP_TRANSFER_ENCODING" in environ or "HTTP_COOKIE" in environ
                or not (length.isascii() and length.isdigit())
                or int(length) > self._max_body or len(body) != int(length)):
            return None
        name = raw_name if raw_name.isascii() else \
            raw_name.encode("latin-1").decode("utf-8", "replace")
        try:  # (prepare validates the name, and answers for the name it trimmed)
            job, overwrite, run = jobs.prepare(self.settings, name, body,
                                               environ.get("CONTENT_TYPE"), check_data=False)
            if renders_value(job, self.settings.body_format):
                return None  # its check, up to 0.1 s, is the thread path's (not the loop's)
            stored = await self.store.schedule_on_loop(client, job, overwrite, run)
        except ReplyTimeout as exc:
            # Redis took the socket timeout to say nothing: trying again on the WSGI path
            # would wait as long again. Flask answers the error (503) as the view's own.
            environ[HANDED_OVER] = exc
            return None
        except Exception:  # Flask's to answer, or Redis's trouble: the WSGI path's
            return None
        if not stored:  # the job exists, or an error reply: the WSGI path's
            return None
        count_request(rule, method, "204", time.perf_counter() - started)
        return 204, [], b""

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self._routes or environ.get("REQUEST_METHOD") not in _METHODS \
                or HANDED_OVER in environ:  # on_loop met an error for the view to raise
            return self.flask_wsgi(environ, start_response)
        found = self._route(environ.get("PATH_INFO", ""))
        if found is not None:
            return self._schedule(environ, start_response, *found)
        return self.flask_wsgi(environ, start_response)

    def _schedule(self, environ: dict[str, Any], start_response: Callable[..., Any],
                  raw_name: str, rule: str) -> Iterable[bytes]:
        flask = self.flask_wsgi
        if not self._caller_ok(environ):
            return flask(environ, start_response)  # Flask's 401 or 403
        length = environ.get("CONTENT_LENGTH", "")
        if ("HTTP_TRANSFER_ENCODING" in environ or "HTTP_COOKIE" in environ
                or not (length.isascii() and length.isdigit())
                or int(length) > self._max_body):
            return flask(environ, start_response)
        # As werkzeug decodes PATH_INFO (latin-1 text of the UTF-8 bytes).
        name = raw_name if raw_name.isascii() else \
            raw_name.encode("latin-1").decode("utf-8", "replace")
        try:
            name = validate_name(name)
        except Exception:  # Flask answers it, having found the same
            return flask(environ, start_response)
        # As Flask reads it (Request.get_data): all of a terminated input, else up to
        # CONTENT_LENGTH; a short body is Flask's to refuse.
        stream = environ["wsgi.input"]
        size = int(length)
        body: bytes = stream.read() if "wsgi.input_terminated" in environ else stream.read(size)
        if len(body) != size and "wsgi.input_terminated" not in environ:
            environ["wsgi.input"] = BytesIO(body)
            return flask(environ, start_response)
        try:
            jobs.schedule(self.settings, self.store, name, body, environ.get("CONTENT_TYPE"))
        except Exception as exc:  # answered by Flask: see the module doc
            environ["wsgi.input"] = BytesIO(body)
            environ[HANDED_OVER] = exc
            return flask(environ, start_response)
        environ[ROUTE_KEY] = rule
        start_response(_NO_CONTENT, [])
        return []


def _unknown(app: Flask, check_caller: Callable[..., Any], known_after: set[str]) -> str:
    """Why the shortcut would not answer as Flask does, or "" when it would."""
    scopes = (None, jobs.jobs_bp.name)
    before = [f for scope in scopes for f in app.before_request_funcs.get(scope, [])]
    if before != [check_caller]:
        return f"before-request hooks {_names(before)}"
    after = {f.__qualname__ for scope in scopes for f in app.after_request_funcs.get(scope, [])}
    if after != known_after:
        return f"after-request hooks {sorted(after)}"
    for kind, hooks in (("teardown", app.teardown_request_funcs),
                        ("url value preprocessors", app.url_value_preprocessors)):
        if any(hooks.get(scope) for scope in scopes):
            return f"{kind} hooks"
    if app.config.get("SERVER_NAME") or app.config.get("TRUSTED_HOSTS") \
            or app.url_map.host_matching or app.subdomain_matching:
        return "host checks"
    for version, base in enumerate(jobs._PREFIXES):
        if app.view_functions.get(f"jobs.schedule_{version}") is not jobs.schedule_job:
            return f"the schedule view of {base}"
    for rule in app.url_map.iter_rules():
        methods = rule.methods or set()
        if not methods & set(_METHODS) or rule.endpoint.startswith(("jobs.schedule_",
                                                                     "jobs.blank_")):
            continue
        if any(rule.rule.startswith(f"{base}/<anything:name>/") for base in jobs._PREFIXES):
            continue  # a job's sub-resource (pause...): a name with a '/' goes to Flask
        if rule.rule in jobs._PREFIXES:
            continue  # the collection (the bulk route): no path under `{base}/` reaches it
        if any(rule.rule.startswith(base) or base.startswith(rule.rule.split("<")[0])
               for base in jobs._PREFIXES):
            return f"the route {rule.rule} ({rule.endpoint})"
    adapter = app.url_map.bind("localhost")
    for version, base in enumerate(jobs._PREFIXES):
        for probe in ("p", " p", "p.", "p%", "pause", "history"):
            for method in _METHODS:
                try:
                    endpoint, _ = adapter.match(f"{base}/{probe}", method=method)
                except Exception as exc:  # NotFound, a redirect...
                    endpoint = type(exc).__name__
                if endpoint != f"jobs.schedule_{version}":
                    return f"{method} {base}/{probe} goes to {endpoint}"
    return ""


def _names(funcs: list[Any]) -> list[str]:
    return [getattr(f, "__qualname__", repr(f)) for f in funcs]
