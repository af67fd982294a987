"""Who may use the dashboard, and the CSRF protection of its forms.

With `DAPR_API_TOKEN` set, a request under /ui gets in with the token in the
`dapr-api-token` header (scripts), or with the session cookie that the login form sets
(browsers); the login page and the static files are open. The token never travels in a
URL. The cookie holds no token: it is signed (itsdangerous) with a key derived from the
token, so changing the token logs every browser out (without a token, from a random key
kept in Redis: Store.ui_secret); it is HttpOnly, SameSite=Strict and
scoped to /ui, and the jobs API never accepts it (app/api/factory.py asks `ui_gate` only
for /ui paths).

Nothing under /ui changes anything on a GET. Every POST carries the session's CSRF token
as a form field, checked against the signed cookie (which another site can neither read
nor make the browser send: SameSite=Strict), and an `Origin` header, when the browser
sends one, must name this host. A caller authenticated by the header needs neither: a
browser never sends that header across sites.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from flask import Response, g, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.settings import Settings
from app.store.redis_client import UNAVAILABLE

UI_PREFIX = "/ui"
# The session cookie's name, with the app id: a browser keeps one cookie per name and
# host whatever the port, and several apps' APIs on one host would log each other out.
COOKIE_PREFIX = "jobrunner_ui_"
# A session lasts this long after the last page the browser loaded (the live counters'
# polling does not extend it), and a login this long at most, however often it is used:
# then the login form asks again.
SESSION_MAX_AGE_S = 12 * 3600
MAX_COOKIE_CHARS = 4096
MAX_TOKEN_CHARS = 4096
CSRF_FIELD = "csrf_token"
# Open without the token: the form that asks for it, and the stylesheet and htmx.
_OPEN = ("/ui/login",)
_STATIC = "/ui/static/"
# Where the login form may send the browser afterwards: a dashboard path, nothing else
# (matched whole: `$` would let a trailing newline through, into the Location header).
_NEXT = re.compile(r"/ui(/[^\\\s]*)?")
# Signs the sessions made while Redis is away, when there is no token and this process
# never read the key Redis keeps (Store.ui_secret).
_PROCESS_SECRET = secrets.token_bytes(32)


@dataclass
class UiSession:
    """What the cookie carries: the CSRF token, whether the browser logged in (and when),
    and a one-time message for the next page."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    authed: bool = False
    flash: str = ""
    modified: bool = False
    login_s: int = 0

    @property
    def id(self) -> str:
        """What names the session where a logout is kept (not its CSRF token itself)."""
        return hashlib.sha256(self.csrf.encode()).hexdigest()[:32]


def is_ui_path(path: str) -> bool:
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    # Without a token, a random key kept in Redis (one for every API process): with a
    # constant one, a page served on any other port of the host (cookies ignore ports)
    # could set a session of its choosing: its message on the dashboard, its CSRF value.
    secret = settings.api_token.encode() or _shared_secret()
    key = hmac.new(secret, b"jobrunner dashboard session v1", hashlib.sha256).digest()
    return URLSafeTimedSerializer(key, salt="jobrunner-ui")


def _shared_secret() -> bytes:
    if "ui_secret" not in g:  # once per request (the cookie is read, then written)
        try:
            g.ui_secret = g.store.ui_secret()
        except UNAVAILABLE:  # this process's own until Redis is back: the page says so
            g.ui_secret = _PROCESS_SECRET
    secret: bytes = g.ui_secret
    return secret


def current_session() -> UiSession:
    """This request's session, read from the cookie once (a new one when there is none
    or it is invalid or expired)."""
    if "ui_session" not in g:
        g.ui_session = _load(g.settings)
    session: UiSession = g.ui_session
    return session


def cookie_name(settings: Settings) -> str:
    return COOKIE_PREFIX + settings.app_id  # app ids are cookie-name characters


def _load(settings: Settings) -> UiSession:
    raw = request.cookies.get(cookie_name(settings), "")
    if raw and len(raw) <= MAX_COOKIE_CHARS:
        try:
            data = _serializer(settings).loads(raw, max_age=SESSION_MAX_AGE_S)
        except BadSignature:  # forged, from another token, or expired
            data = None
        if isinstance(data, dict) and isinstance(data.get("c"), str):
            session = UiSession(data["c"], flash=str(data.get("f", "")))
            login_s = data.get("l")
            if data.get("a") is True and settings.api_token and isinstance(login_s, int):
                session.login_s = login_s
                session.authed = _still_logged_in(session)
            return session
    return UiSession(modified=True)


def _still_logged_in(session: UiSession) -> bool:
    """A login not too old and not logged out of: the cookie is re-issued with each page,
    and every server of the host name is sent it (another app's on another port too:
    cookies ignore ports), so neither its signature's age nor the browser's forgetting it
    bounded the life of a copy."""
    if not 0 <= time.time() - session.login_s <= SESSION_MAX_AGE_S:
        return False
    try:
        return not g.store.ui_session_ended(g.settings.app_id, session.id)
    except UNAVAILABLE:
        return True  # unknown while Redis is away (every page but the login needs it)


def start_session(authed: bool) -> UiSession:
    """A fresh session (log in, log out): a new CSRF token, so none from before survives."""
    session = UiSession(authed=authed, modified=True, login_s=int(time.time()))
    g.ui_session = session
    return session


def save_session(response: Response) -> None:
    if "ui_session" not in g or not g.ui_session.modified:
        return
    session: UiSession = g.ui_session
    payload: dict[str, object] = {"c": session.csrf}
    if session.authed:
        payload.update(a=True, l=session.login_s)
    if session.flash:
        payload["f"] = session.flash
    response.set_cookie(cookie_name(g.settings), _serializer(g.settings).dumps(payload),
                        path=UI_PREFIX, httponly=True, samesite="Strict",
                        secure=request.is_secure)
    response.vary.add("Cookie")


def header_authenticated(settings: Settings) -> bool:
    given = request.headers.get("dapr-api-token")
    return bool(settings.api_token) and given is not None and hmac.compare_digest(
        given.encode(), settings.api_token.encode())


def token_matches(settings: Settings, given: str) -> bool:
    return bool(settings.api_token) and len(given) <= MAX_TOKEN_CHARS and hmac.compare_digest(
        given.encode(), settings.api_token.encode())


def ui_gate(settings: Settings) -> Response | None:
    """The API token check for a /ui path (the API's own check calls it when a token is
    set): None lets the request in; else the browser is sent to the login form."""
    path = request.path
    if path in _OPEN or path.startswith(_STATIC):
        return None
    if header_authenticated(settings) or current_session().authed:
        return None
    # Back to the page after logging in; a form's POST is not replayed (the jobs page).
    # The path encoded again: request.path is decoded, and a job name may hold `%` or a
    # space (the login's redirect would decode it a second time, or refuse it).
    back = None
    if request.method in ("GET", "HEAD"):
        query = request.query_string.decode("latin-1")
        back = quote(request.path, safe="/") + (f"?{query}" if query else "")
    login = url_for("ui.login", next=safe_next(back))
    if request.headers.get("HX-Request"):
        # htmx (the counters' polling) follows this header with a full page load.
        response = Response(status=401)
        response.headers["HX-Redirect"] = url_for("ui.login")
        return response
    return see_other(login)


def see_other(location: str) -> Response:
    """303: the browser loads `location` with a GET (after a form, or to log in)."""
    response = Response(status=303)
    response.headers["Location"] = location
    return response


def safe_next(target: str | None) -> str:
    """A dashboard path to go to after logging in; anything else becomes the jobs page."""
    if target and _NEXT.fullmatch(target) and not target.startswith("//") and not any(
            # A dot segment (`%2e` is one too, to a browser) climbs out of /ui.
            part in (".", "..") for part in unquote(target.partition("?")[0]).split("/")):
        return target
    return url_for("ui.jobs")


def csrf_problem(settings: Settings) -> str | None:
    """Why this POST must be refused, or None when it may go on."""
    origin = request.headers.get("Origin")
    if origin is not None and _netloc(origin) != request.host:
        return "the form was sent from another site"
    if header_authenticated(settings):
        return None
    given = request.form.get(CSRF_FIELD, "")
    if not given or not hmac.compare_digest(given.encode(), current_session().csrf.encode()):
        return "the form is stale or was not sent from this dashboard; load the page again"
    return None


def _netloc(url: str) -> str | None:
    try:
        return urlsplit(url).netloc
    except ValueError:  # "http://[": no site at all
        return None
