"""The Flask application: `create_app()` wires settings, the store and the routes."""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import threading
import weakref
from typing import IO
from urllib.parse import urlsplit

from flask import Flask, Request, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.routing import PathConverter
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from app.api.bulk import bulk_bp
from app.api.callers import refusal
from app.api.controls import controls_bp
from app.api.deadletters import deadletters_bp
from app.api.fast_schedule import ScheduleShortcut
from app.api.history import history_bp
from app.api.jobs import jobs_bp
from app.api.ops import ops_bp
from app.jobs import errors
from app.jobs.errors import ApiError
from app.jobs.validation import validate_app_id
from app.settings import Settings
from app.store.persistence import warn_if_not_persistent
from app.store.redis_client import UNAVAILABLE
from app.store.store import AppClaimed, AppRegistration, Store, app_binding
from app.ui import is_ui_path, ui_bp, ui_gate, unrouted_page

log = logging.getLogger("jobrunner.api")

# Paths served without the API token, whatever the Host and Origin (app/api/callers.py):
# probes carry none. /metrics is not among them: its counts cover every app on the Redis;
# a scraper sends the token (README, "Trust boundary").
_OPEN_PATHS = ("/healthz", "/openapi.json", "/v1.0/healthz", "/v1.0/healthz/outbound")
_METRICS_PATH = "/metrics"
# How often an API process removes the registrations of apps gone for good.
FORGET_APPS_EVERY_S = 3600.0
# Waiting for the app to listen (as daprd's blockUntilAppIsReady): each dial's timeout,
# and the pause between dials, growing to a second.
APP_DIAL_TIMEOUT_S = 0.5
APP_DIAL_FIRST_PAUSE_S = 0.1
APP_DIAL_MAX_PAUSE_S = 1.0


def create_app(settings: Settings | None = None, store: Store | None = None) -> Flask:
    settings = settings or Settings.from_env()
    try:
        validate_app_id(settings.app_id)
    except ApiError as exc:
        raise ValueError(exc.message) from None
    store = store or Store(settings)
    binding = app_binding(settings.app_id, settings.api_token, settings.app_api_token)
    try:
        refuse_if_claimed(settings, store, binding)
    except AppClaimed as exc:
        log.error("%s", exc)  # in a server's process, where no CLI line says it
        raise
    try:
        warn_if_not_persistent(store.redis, log)
    except Exception:  # a warning must never stop the API from starting
        log.exception("could not check whether Redis persists its data")
    app = Flask("jobrunner", static_folder=None)  # no static files: an API only
    # POST/PUT .../jobs/{name} without Flask's per-request work, answered as Flask would
    # (app/api/fast_schedule.py); inside the metrics' counter, which wraps it below.
    shortcut = ScheduleShortcut(app.wsgi_app, settings, store)
    app.wsgi_app = shortcut  # type: ignore[method-assign]
    app.request_class = _BodyLimitedRequest
    app.url_map.converters["anything"] = AnythingConverter
    # Whole-body cap well above the data cap, so the data limit answers 413 itself.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_data_bytes * 4 + 64 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # UTF-8 as stored: escaped, a page of non-ASCII data was up to 3 times the bytes of
    # records that JOBRUNNER_PAGE_MAX_BYTES bounds.
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    # `/jobs//x` is a name with a '/': a clear 400 from validation, not a redirect.
    app.url_map.merge_slashes = False
    app.register_blueprint(jobs_bp)
    app.register_blueprint(bulk_bp)  # POST .../jobs: many jobs at once
    app.register_blueprint(ops_bp)
    app.register_blueprint(deadletters_bp)
    app.register_blueprint(controls_bp)  # pause, resume, trigger now
    app.register_blueprint(history_bp)
    app.register_blueprint(ui_bp)  # the dashboard at /ui (app/ui)
    _install_error_handlers(app)

    @app.before_request
    def _check_caller() -> Response | None:
        g.settings, g.store = settings, store
        if not settings.api_token:
            if request.path in _OPEN_PATHS:
                return None
            problem = refusal(request.headers.get("Host"), request.headers.get("Origin"),
                              request.scheme, settings.allowed_hosts)
            return None if problem is None else _error_response(problem)
        if request.path not in _OPEN_PATHS:
            if is_ui_path(request.path):  # the dashboard: its login form or session cookie
                return ui_gate(settings)
            given = request.headers.get("dapr-api-token", "")
            if request.path == _METRICS_PATH and not given:
                # Prometheus sends a token as `authorization: {credentials: ...}` does.
                scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
                given = credentials.strip() if scheme.lower() == "bearer" else ""
            if not hmac.compare_digest(given.encode(), settings.api_token.encode()):
                return _error_response(errors.unauthorized())
        return None

    @app.after_request
    def _relative_location(response: Response) -> Response:
        # Werkzeug's redirects (`PUT /v1.0/jobs` -> `/v1.0/jobs/`) name the Host header's
        # host: a caller could make the answer point anywhere. The path alone is enough.
        location = response.headers.get("Location")
        if location and 300 <= response.status_code < 400:
            parts = urlsplit(location)
            if parts.scheme or parts.netloc:
                response.headers["Location"] = parts.path + (f"?{parts.query}"
                                                             if parts.query else "")
        return response

    shortcut.arm(app, _check_caller, {_relative_location.__qualname__,
                                      "attach.<locals>._leave_route"})
    _start_registration(app, settings, store, binding)
    return app


def refuse_if_claimed(settings: Settings, store: Store, binding: str) -> None:
    """Raise AppClaimed when a live API process with other tokens serves this app: this
    one would take that process's deliveries (README, "Trust boundary")."""
    with contextlib.suppress(*UNAVAILABLE):  # checked again at every registration
        store.check_app_binding(settings.app_id, binding, settings.app_registration_ttl_s)


class _MaxStream(LimitedStream):
    """The body of a request without a Content-Length (chunked), cut at the size limit
    like werkzeug's, but a body past the limit is a 413, not silently cut short (a cut
    JSON body would be answered 400 "invalid JSON")."""

    def on_exhausted(self) -> None:
        if self._stream.read(1):
            raise RequestEntityTooLarge()

    def readall(self) -> bytes:
        data = super().readall()
        if self.is_exhausted:
            self.on_exhausted()
        return data


class _BodyLimitedRequest(Request):
    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        if (limit is not None and self.content_length is None
                and "wsgi.input_terminated" in self.environ):
            return _MaxStream(self.environ["wsgi.input"], limit, is_max=True)  # type: ignore[return-value]
        stream: IO[bytes] = super().stream
        return stream


class AnythingConverter(PathConverter):
    """Any non-empty text, slashes and newlines included, so that every bad job name
    reaches validation and gets a clear 400 (not a 404 from the router)."""

    regex = r"[\s\S]+"
    part_isolating = False  # it may span '/' (Werkzeug would infer True from the regex)


def _error_response(exc: ApiError) -> Response:
    response = jsonify(exc.to_body())
    response.status_code = exc.status
    return response


def _http_error_response(exc: HTTPException) -> Response:
    if request.url_rule is None and is_ui_path(request.path):
        return unrouted_page(exc)  # a dashboard path no route takes: its HTML page
    status = exc.code or 500
    if status == 413:
        return _error_response(ApiError(413, errors.PAYLOAD_TOO_LARGE,
                                        "request body is larger than the server accepts"))
    code = {404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED}.get(
        status, errors.MALFORMED_REQUEST if status < 500 else errors.INTERNAL)
    return _error_response(ApiError(status, code, exc.description or exc.name))


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        if exc.status == 500:  # the stored data's fault, not the caller's: the operator's
            log.error("%s %s: %s", request.method, request.path, exc.message)
        return _error_response(exc)

    def _redis_down(exc: Exception) -> Response:
        return _error_response(errors.redis_unavailable(str(exc) or type(exc).__name__))

    for exc_class in UNAVAILABLE:
        app.register_error_handler(exc_class, _redis_down)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = _http_error_response(exc)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # RFC 9110: a 405 has it
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error_response(ApiError(500, errors.INTERNAL, "internal error; see the API log"))


def _start_registration(app: Flask, settings: Settings, store: Store, binding: str) -> None:
    """Record this app's address in Redis and keep it alive while the app object lives.

    Workers deliver only to registered addresses: a caller of the API never
    chooses where a job goes. A registration that is not renewed expires, and
    the app's due triggers are staged until it is back.

    As daprd, which connects to Dapr's scheduler only once the app's port takes a
    connection, the app is first registered once it listens: until then its due
    triggers are staged, spending no attempt. (Afterwards, a refused connection is a
    failed attempt, as in Dapr: pkg/runtime/scheduler/internal/cluster/streamer.go.)"""
    registration = AppRegistration(settings.app_id, settings.app_url, settings.app_api_token,
                                   settings.registration_format, settings.app_protocol,
                                   rate=settings.app_rate_limit)
    ttl = settings.app_registration_ttl_s
    stop = threading.Event()
    claimed = [False]  # another live API process with other tokens holds the app

    def register(was_ok: bool) -> bool:
        try:
            store.register_app(registration, ttl_s=ttl, binding=binding)
        except UNAVAILABLE as exc:
            if was_ok:  # say it once per outage, not on every beat
                log.warning("cannot register app %s: %s", settings.app_id, exc)
            return False
        except AppClaimed as exc:
            if not claimed[0]:
                log.error("%s", exc)
                claimed[0] = True
            return False
        except Exception:  # never the end of the heartbeat: the app would go offline for good
            if was_ok:
                log.exception("cannot register app %s; trying again", settings.app_id)
            return False
        claimed[0] = False
        if not was_ok:
            log.info("app %s registered at %s", settings.app_id, settings.app_url)
        return True

    def forget_gone_apps() -> None:
        if not settings.app_forget_after_s:
            return
        try:
            gone = store.forget_gone_apps(settings.app_forget_after_s)
        except UNAVAILABLE:
            return
        except Exception:  # (as in register: the heartbeat goes on)
            log.exception("cannot forget the apps gone for %gs", settings.app_forget_after_s)
            return
        if gone:
            log.info("forgot the registrations of apps gone for %gs: %s",
                     settings.app_forget_after_s, ", ".join(sorted(gone)))

    def wait_for_app() -> bool:
        pause, dials = APP_DIAL_FIRST_PAUSE_S, 0
        while not stop.wait(pause):
            if _listening(settings.app_url):
                log.info("app %s is listening at %s", settings.app_id, settings.app_url)
                return True
            dials += 1
            if dials % 60 == 0:
                log.warning("app %s still does not accept connections at %s; its triggers "
                            "wait", settings.app_id, settings.app_url)
            pause = min(pause * 1.5, APP_DIAL_MAX_PAUSE_S)
        return False

    def beat(ok: bool, listening: bool) -> None:
        forget_gone_apps()
        if not listening:
            if not wait_for_app():
                return
            ok = register(True)
        beats_per_forget = max(1, round(FORGET_APPS_EVERY_S / (ttl / 3)))
        beats = 0
        while not stop.wait(ttl / 3):
            ok = register(ok)
            beats += 1
            if beats % beats_per_forget == 0:
                forget_gone_apps()

    listening = _listening(settings.app_url)
    if listening:
        ok = register(True)  # at once, so deliveries never wait for it
        if claimed[0]:  # another process with other tokens started in the same moment
            raise AppClaimed(settings.app_id, ttl)
    else:
        ok = False
        log.info("app %s does not accept connections at %s yet: its triggers wait until it "
                 "does", settings.app_id, settings.app_url)
    threading.Thread(target=beat, args=(ok, listening), name="app-registration",
                     daemon=True).start()
    # The thread holds no reference to the app: it stops when the app is collected.
    weakref.finalize(app, stop.set)


def _listening(url: str) -> bool:
    """Whether the app's host and port take a TCP connection (what daprd checks)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), APP_DIAL_TIMEOUT_S):
            return True
    except OSError:
        return False
