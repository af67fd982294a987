"""A shortcut for the API's busiest request, `POST`/`PUT .../jobs/{name}`, that skips
Flask's per-request machinery and answers exactly as Flask would.

On that route Flask's own work (request context, routing, hooks, request and response
objects) costs about as much CPU as the schedule itself (validation and the Redis
script). The shortcut, WSGI middleware inside the metrics' counter, does only what that
route does: the token check, the body read, `jobs.schedule` (the view's own code), the
route label the metrics count under, and the empty 204.

It stands aside, and Flask serves the request as always, for anything else: another
method or path, a wrong or missing token, a body without a plain Content-Length within
the limit, a cookie (Flask's session could answer with one). An error met after the body
was read (a bad job, Redis away) is handed to Flask in the environ, and the view raises
it again: Flask's handlers answer it, log it and count it, and nothing is done twice.
`arm` checks, once the app is built, that the app has no hook or route of its own on
that path that the shortcut does not know; if it has, the shortcut stays off.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any

from flask import Flask

from app.api import jobs
from app.api.metrics import _ROUTE_KEY as ROUTE_KEY
from app.jobs.validation import validate_name
from app.settings import Settings
from app.store.store import Store

log = logging.getLogger("jobrunner.api")

# Where an error the shortcut met waits for the view to raise it (jobs.schedule_job).
HANDED_OVER = jobs.HANDED_OVER
_METHODS = ("POST", "PUT")
_NO_CONTENT = "204 NO CONTENT"  # as werkzeug says it

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


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

    @property
    def armed(self) -> bool:
        return bool(self._routes)

    def arm(self, app: Flask, check_token: Callable[..., Any],
            known_after: Iterable[str]) -> bool:
        """Turn on when the app runs, around the schedule view, only `check_token` before
        it and the after-request hooks named in `known_after` (qualified names), and its
        routing sends every POST and PUT under the jobs paths to that view."""
        why = _unknown(app, check_token, set(known_after))
        if why:
            log.info("the schedule shortcut is off: %s", why)
            self.disarm()
            return False
        self._max_body = int(app.config["MAX_CONTENT_LENGTH"])
        self._routes = tuple((f"{base}/", f"{base}/<anything:name>") for base in jobs._PREFIXES)
        return True

    def disarm(self) -> None:
        """Off: Flask serves every request (tests compare the two)."""
        self._routes = ()

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self._routes or environ.get("REQUEST_METHOD") not in _METHODS:
            return self.flask_wsgi(environ, start_response)
        path: str = environ.get("PATH_INFO", "")
        for prefix, rule in self._routes:
            # A name with a '/' is no job's (validation refuses it), or a job's
            # sub-resource (`.../jobs/{name}/pause`): Flask routes it.
            if path.startswith(prefix) and len(path) > len(prefix) \
                    and "/" not in path[len(prefix):]:
                return self._schedule(environ, start_response, path[len(prefix):], rule)
        return self.flask_wsgi(environ, start_response)

    def _schedule(self, environ: dict[str, Any], start_response: Callable[..., Any],
                  raw_name: str, rule: str) -> Iterable[bytes]:
        flask = self.flask_wsgi
        if self._token and not hmac.compare_digest(
                environ.get("HTTP_DAPR_API_TOKEN", "").encode(), self._token):
            return flask(environ, start_response)  # Flask's 401
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


def _unknown(app: Flask, check_token: Callable[..., Any], known_after: set[str]) -> str:
    """Why the shortcut would not answer as Flask does, or "" when it would."""
    scopes = (None, jobs.jobs_bp.name)
    before = [f for scope in scopes for f in app.before_request_funcs.get(scope, [])]
    if before != [check_token]:
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
