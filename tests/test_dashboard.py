"""The dashboard at /ui (app/ui): pages, the token and its session cookie, CSRF, escaping,
the live counters, and a click-through in a real headless browser.

The browser test drives Debian's chromium (/usr/bin/chromium, which .ci/run installs)
through Playwright against the real Flask app on 127.0.0.1, a real worker and a real
receiver; it takes the screenshots the README shows (docs/dashboard*.png), written there
only with JOBRUNNER_UPDATE_SCREENSHOTS=1 (else under the test's tmp_path, so that a run
leaves the checkout as it was). Outside CI,
without chromium, it is skipped; in CI (CI=true) a missing browser fails it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import html
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from google.protobuf import struct_pb2
from itsdangerous import URLSafeTimedSerializer
from werkzeug.serving import make_server

from app.api.factory import create_app
from app.jobs.clock import now_ms
from app.jobs.model import FailureKind, FailurePolicy
from app.settings import Settings
from app.store.store import Store
from app.ui import auth as auth_module
from app.ui.auth import COOKIE_PREFIX
from app.ui.counters import live_counters
from tests.support.jobs import APP, dead_letters, make_job, record_with
from tests.support.receiver import Delivery, Receiver
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker
from tests.test_api_deadletters import put_dead_letter

pytestmark = pytest.mark.usefixtures("reap_workers")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
API = "/v1.0-alpha1/jobs"
ONE_ATTEMPT = FailurePolicy(FailureKind.CONSTANT, 0, 0)
HOSTILE_NAME = '<img src=x onerror=alert("name")>'
HOSTILE_DATA = {"html": "</pre><script>alert('data')</script>"}

COOKIE = COOKIE_PREFIX + APP  # the tests' app's session cookie


def csrf_of(html: bytes) -> str:
    found = re.search(rb'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1).decode()


class _Forms(HTMLParser):
    """The POST forms of a page: action, the fields a browser would send as they stand
    (hidden and text inputs, checked boxes, selected options, text areas), and the label
    of the button."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self._form: dict[str, Any] | None = None  # the POST form being read
        self._in_button = False
        self._select: str | None = None  # the select being read
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._form = None
            if a.get("method") == "post":
                self._form = {"action": a["action"], "fields": {}, "button": ""}
                self.forms.append(self._form)
        elif self._form is None:
            return
        elif tag == "input" and a.get("type") in ("hidden", "text"):
            # A browser strips line breaks from an input's value.
            self._form["fields"][a["name"]] = re.sub(r"[\r\n]", "", a.get("value") or "")
        elif tag == "input" and a.get("type") in ("radio", "checkbox") and "checked" in a:
            self._form["fields"][a["name"]] = a.get("value") or "on"
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select is not None:
            if "selected" in a or self._select not in self._form["fields"]:  # else the first
                self._form["fields"][self._select] = a.get("value") or ""
        elif tag == "textarea":
            self._textarea = a["name"]
            self._form["fields"][a["name"]] = ""
        elif tag == "button":
            self._in_button = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "button":
            self._in_button = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea" and self._form is not None and self._textarea is not None:
            # A browser reads CR and CRLF as LF, and sends a text area's lines CRLF-ended.
            text = self._form["fields"][self._textarea]
            self._form["fields"][self._textarea] = re.sub(r"\r\n?|\n", "\r\n", text)
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._form is None:
            return
        if self._in_button:
            self._form["button"] += data.strip()
        elif self._textarea is not None:
            self._form["fields"][self._textarea] += data


def press(client: FlaskClient, page: str, button: str, **query: str) -> Any:
    """Load `page` and submit its POST form whose button says `button`, as a browser would
    (its hidden fields: the CSRF token, ids)."""
    parser = _Forms()
    parser.feed(client.get(page, query_string=query).data.decode())
    [form] = [f for f in parser.forms if f["button"] == button]
    return client.post(form["action"], data=form["fields"])


def session_cookie(client: FlaskClient) -> Any:
    return client.get_cookie(COOKIE, path="/ui")


def log_in(client: FlaskClient, token: str) -> None:
    page = client.get("/ui/login")
    answer = client.post("/ui/login", data={"csrf_token": csrf_of(page.data), "token": token})
    assert answer.status_code == 303, answer.data


def form_post(client: FlaskClient, path: str, data: dict[str, Any],
              page: str = "/ui/schedule", **kwargs: Any) -> Any:
    """A POST with the CSRF token of the current session (read from `page`)."""
    csrf = csrf_of(client.get(page).data)
    return client.post(path, data={"csrf_token": csrf, **data}, **kwargs)


@pytest.fixture
def token() -> str:
    return f"tok-{uuid.uuid4().hex}"


@pytest.fixture
def locked(settings: Settings, token: str) -> Settings:
    """The conftest settings (receiver as the app) with an API token."""
    return dataclasses.replace(settings, api_token=token)


# --- the token, the login form and the session cookie ---------------------------------------


def test_login_sets_a_strict_httponly_cookie_that_only_the_dashboard_accepts(
        locked: Settings, token: str) -> None:
    app = create_app(locked)
    client = app.test_client()

    # Without the token: every page sends the browser to the login form, and says where
    # it was going (a path, never a token).
    answer = client.get("/ui/jobs?prefix=a")
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/ui/login?next=/ui/jobs?prefix%3Da"
    assert client.get("/ui/deadletters").status_code == 303
    posted = client.post("/ui/deadletters/purge", data={"all": "1"})
    assert posted.status_code == 303 and posted.headers["Location"] == "/ui/login?next=/ui/jobs"
    polled = client.get("/ui/counters", headers={"HX-Request": "true"})
    assert polled.status_code == 401 and polled.headers["HX-Redirect"] == "/ui/login"
    # The form and the static files are open (the form needs its stylesheet).
    assert client.get("/ui/login").status_code == 200
    assert client.get("/ui/static/htmx.min.js").status_code == 200
    # The API's own routes still want the header.
    assert client.get(API).status_code == 401

    # A wrong token: the form again, 401, no access.
    page = client.get("/ui/login")
    wrong = client.post("/ui/login", data={"csrf_token": csrf_of(page.data), "token": "nope"})
    assert wrong.status_code == 401 and b"That is not the API token." in wrong.data
    assert client.get("/ui/jobs").status_code == 303

    # The right one: back where the browser was going, with an HttpOnly, SameSite=Strict
    # cookie scoped to /ui that does not hold the token.
    page = client.get("/ui/login?next=/ui/deadletters")
    right = client.post("/ui/login", data={"csrf_token": csrf_of(page.data), "token": token,
                                          "next": "/ui/deadletters"})
    assert right.status_code == 303 and right.headers["Location"] == "/ui/deadletters"
    set_cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert "Path=/ui" in set_cookie and token not in set_cookie
    assert client.get("/ui/jobs").status_code == 200
    assert client.get("/ui/counters").status_code == 200

    # The API never takes the cookie for its token.
    cookie = session_cookie(client)
    assert client.get(API, headers={"Cookie": f"{COOKIE}={cookie.value}"}).status_code == 401

    # Logging out ends the session.
    out = press(client, "/ui/jobs", "Log out")
    assert out.status_code == 303 and out.headers["Location"] == "/ui/login"
    assert client.get("/ui/jobs").status_code == 303


def test_a_copy_of_the_session_ends_with_its_logout_and_at_its_login_s_12_hours(
        locked: Settings, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every server of the host name gets the cookie (another app's, on another port:
    cookies ignore ports), and each page re-issued it with a new time: a copy taken before
    a logout went on working after it, and a copy in use never ended. A logout now ends
    every copy; a login lasts 12 hours, however often it is used; other sessions stay."""
    app = create_app(locked)
    client, other = app.test_client(), app.test_client()
    log_in(client, token)
    log_in(other, token)
    copy = session_cookie(client).value
    thief = app.test_client()
    thief.set_cookie(COOKIE, copy, path="/ui")
    assert thief.get("/ui/jobs").status_code == 200
    assert press(client, "/ui/jobs", "Log out").status_code == 303
    assert thief.get("/ui/jobs").status_code == 303  # to the login form
    assert other.get("/ui/jobs").status_code == 200  # another browser's session goes on

    logged_in_at = time.time()
    later = logged_in_at + auth_module.SESSION_MAX_AGE_S - 60
    for now in (later - 3600, later):  # used every hour: re-issued each time
        monkeypatch.setattr(auth_module.time, "time", lambda now=now: now)
        assert other.get("/ui/jobs").status_code == 200
    monkeypatch.setattr(auth_module.time, "time", lambda: later + 120)
    assert other.get("/ui/jobs").status_code == 303


def test_the_header_opens_the_dashboard_and_forged_cookies_do_not(locked: Settings,
                                                                  token: str) -> None:
    app = create_app(locked)
    client = app.test_client()
    assert client.get("/ui/jobs", headers={"dapr-api-token": token}).status_code == 200
    assert client.get("/ui/jobs", headers={"dapr-api-token": token + "x"}).status_code == 303

    # A session signed under another token (or tampered with) is no session.
    other = create_app(dataclasses.replace(locked, api_token="another-token",
                                           prefix=locked.prefix + "o")).test_client()
    log_in(other, "another-token")
    foreign = session_cookie(other).value
    client.set_cookie(COOKIE, foreign, path="/ui")
    assert client.get("/ui/jobs").status_code == 303
    log_in(client, token)
    good = session_cookie(client).value
    client.set_cookie(COOKIE, good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
                      path="/ui")
    assert client.get("/ui/jobs").status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/ui", "https://evil.example/ui",
                                    "/v1.0-alpha1/jobs", "/ui\\@evil.example",
                                    "/ui/jobs\n",  # (a newline was a 500: the header)
                                    "/ui/..%2F..%2Fmetrics", "/ui/%2e%2e/metrics",
                                    "/ui/jobs/../../metrics"])
def test_after_login_the_browser_only_goes_to_a_dashboard_page(
        locked: Settings, token: str, target: str) -> None:
    client = create_app(locked).test_client()
    page = client.get("/ui/login")
    answer = client.post("/ui/login", data={"csrf_token": csrf_of(page.data), "token": token,
                                            "next": target})
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/jobs"
    # Logged in, the login page sends the browser on at once: the same check.
    again = client.get("/ui/login", query_string={"next": target})
    assert again.status_code == 303 and again.headers["Location"] == "/ui/jobs"


@pytest.mark.parametrize("name", ["x%41y", "a b", "caf\u00e9", "%2e%2e"])
def test_after_login_the_browser_goes_back_to_the_job_it_asked_for(
        locked: Settings, token: str, name: str) -> None:
    """The page asked for, encoded again: `x%41y` was sent back as `xAy`, `a b` to the list."""
    client = create_app(locked).test_client()
    client.post(API + "/" + quote(name, safe=""), json={"dueTime": "1h"},
                headers={"dapr-api-token": token})
    path = "/ui/jobs/" + quote(name, safe="")
    to_login = client.get(path)
    assert to_login.status_code == 303
    login = client.get(to_login.headers["Location"])
    next_field = re.search(rb'name="next" value="([^"]*)"', login.data)
    assert next_field, login.data[:2000]
    answer = client.post("/ui/login", data={"csrf_token": csrf_of(login.data), "token": token,
                                            "next": html.unescape(next_field.group(1).decode())})
    assert answer.status_code == 303 and answer.headers["Location"] == path
    page = client.get(answer.headers["Location"])
    assert page.status_code == 200 and html.escape(name).encode() in page.data


def test_each_apps_dashboard_keeps_its_own_session(settings: Settings) -> None:
    """Apps on one host share the browser's cookies whatever the port: one app's session
    must not replace another's (each saw the other's as forged, and logged it out)."""
    first = dataclasses.replace(settings, api_token="token-one")
    second = dataclasses.replace(settings, api_token="token-two", app_id="other-app")
    client = create_app(first).test_client()  # one browser, two apps on one host
    log_in(client, "token-one")
    assert client.get("/ui/jobs").status_code == 200
    other = create_app(second)
    with other.test_client() as other_client:
        other_client._cookies = client._cookies  # the same cookie jar (the same host)
        log_in(other_client, "token-two")
    assert client.get("/ui/jobs").status_code == 200  # still logged in to the first


def test_without_a_token_there_is_no_login(settings: Settings) -> None:
    client = create_app(settings).test_client()
    assert client.get("/ui/jobs").status_code == 200
    answer = client.get("/ui/login")
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/jobs"
    assert b"Log out" not in client.get("/ui/jobs").data


def test_without_a_token_a_session_is_signed_by_a_key_kept_in_redis(settings: Settings) -> None:
    """Not a constant key: any page on another port of the host could set a session of its
    choosing (its message shown on the dashboard, a CSRF value it knows)."""
    public = hmac.new(b"", b"jobrunner dashboard session v1", hashlib.sha256).digest()
    forged = URLSafeTimedSerializer(public, salt="jobrunner-ui").dumps(
        {"c": "attacker-known-csrf", "f": "re-enter the token at evil.example"})
    client = create_app(settings).test_client()
    client.set_cookie(COOKIE, forged, path="/ui")
    page = client.get("/ui/jobs")
    assert page.status_code == 200 and b"evil.example" not in page.data
    assert b"attacker-known-csrf" not in page.data
    # Every API process on the Redis signs with the same key: a form from one posts to another.
    browser = create_app(settings).test_client()
    csrf = csrf_of(browser.get("/ui/schedule").data)
    second = create_app(settings).test_client()
    second.set_cookie(COOKIE, session_cookie(browser).value, path="/ui")
    answer = second.post("/ui/schedule", data={"csrf_token": csrf, "name": "across",
                                                "dueTime": "1h"})
    assert answer.status_code == 303, answer.data[:500]
    # The key lost by Redis (a flush): every process signs with the new one at once.
    store = Store(settings)
    store.redis.delete(store.keys.ui_secret)
    store.close()
    csrf = csrf_of(browser.get("/ui/schedule").data)
    third = create_app(settings).test_client()  # a process started since
    third.set_cookie(COOKIE, session_cookie(browser).value, path="/ui")
    answer = third.post("/ui/schedule", data={"csrf_token": csrf, "name": "after-flush",
                                               "dueTime": "1h"})
    assert answer.status_code == 303, answer.data[:500]


def test_a_redis_blip_keeps_the_sessions_of_a_dashboard_without_a_token(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key read per request: one page while Redis was away signed the session anew
    with the process's own key, and the forms open before were refused as stale."""
    import redis as redis_module

    app = create_app(settings)
    client = app.test_client()
    csrf = csrf_of(client.get("/ui/schedule").data)
    real_get = redis_module.Redis.get

    def away(self: Any, name: Any) -> Any:
        if str(name).endswith(":uisecret"):
            raise redis_module.ConnectionError("Redis is away")
        return real_get(self, name)

    monkeypatch.setattr(redis_module.Redis, "get", away)
    client.get("/ui/jobs")  # a page while Redis is away
    monkeypatch.setattr(redis_module.Redis, "get", real_get)
    answer = client.post("/ui/schedule", data={"csrf_token": csrf, "name": "after-blip",
                                                "dueTime": "1h"})
    assert answer.status_code == 303, answer.data[:500]


def test_a_dashboard_path_no_route_takes_gets_the_dashboards_error_page(
        settings: Settings) -> None:
    client = create_app(settings).test_client()
    for answer, status in ((client.get("/ui/nope"), 404),
                           (client.get("/ui/deadletters/replay"), 405)):
        assert answer.status_code == status
        assert answer.mimetype == "text/html", answer.data
        assert f"Error {status}" in answer.data.decode()
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert answer.headers["Cache-Control"] == "no-store"
    assert "POST" in client.get("/ui/deadletters/replay").headers["Allow"].split(", ")
    assert client.get("/v1.0/nope").mimetype == "application/json"  # the API's own, as before


def test_with_a_token_a_dashboard_path_no_route_takes_is_behind_the_login(
        locked: Settings, token: str) -> None:
    gated = create_app(locked).test_client().get("/ui/nope")
    assert gated.status_code == 303 and "/ui/login" in gated.headers["Location"]
    assert create_app(locked).test_client().get(
        "/ui/nope", headers={"dapr-api-token": token}).status_code == 404


def test_templates_and_static_files_come_from_the_package_only(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API runs in the user's project folder: its templates/ and static/ are not ours."""
    (tmp_path / "templates" / "jobrunner_ui").mkdir(parents=True)
    (tmp_path / "templates" / "jobrunner_ui" / "jobs.html").write_text("HIJACKED")
    (tmp_path / "templates" / "jobrunner_ui" / "base.html").write_text("HIJACKED")
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "secret.txt").write_text("secret")
    monkeypatch.chdir(tmp_path)
    client = create_app(settings).test_client()
    page = client.get("/ui/jobs")
    assert page.status_code == 200 and b"HIJACKED" not in page.data and b"<h1>Jobs" in page.data
    for path in ("/ui/static/secret.txt", "/ui/static/../../static/secret.txt"):
        assert b"secret" not in client.get(path).data
    assert b"htmx" in client.get("/ui/static/htmx.min.js").data


# --- CSRF: nothing changes on a GET, every POST carries the session's token ---------------


def test_every_post_needs_the_sessions_csrf_token_and_a_same_site_origin(
        locked: Settings, token: str) -> None:
    app = create_app(locked)
    client = app.test_client()
    store = Store(locked)
    log_in(client, token)
    form = {"name": "csrf-probe", "dueTime": "1h"}

    missing = client.post("/ui/schedule", data=form)
    assert missing.status_code == 403 and b"load the page again" in missing.data
    forged = client.post("/ui/schedule", data={**form, "csrf_token": "x" * 43})
    assert forged.status_code == 403
    # Another browser's token (its own session) is not this session's.
    other = app.test_client()
    log_in(other, token)
    theirs = csrf_of(other.get("/ui/jobs").data)
    assert client.post("/ui/schedule", data={**form, "csrf_token": theirs}).status_code == 403
    # The right token sent from another site.
    csrf = csrf_of(client.get("/ui/jobs").data)
    for origin in ("http://evil.example", "http://["):  # (the second raised: a 500)
        cross = client.post("/ui/schedule", data={**form, "csrf_token": csrf},
                            headers={"Origin": origin})
        assert cross.status_code == 403 and b"another site" in cross.data
    assert store.get(locked.app_id, "csrf-probe") is None

    # The same form from this site.
    ok = client.post("/ui/schedule", data={**form, "csrf_token": csrf},
                     headers={"Origin": "http://localhost"})
    assert ok.status_code == 303, ok.data
    assert store.get(locked.app_id, "csrf-probe") is not None
    # Logging out and in again gives a new CSRF token: the old one is refused.
    form_post(client, "/ui/logout", {})
    log_in(client, token)
    stale = client.post("/ui/schedule", data={**form, "overwrite": "on", "csrf_token": csrf})
    assert stale.status_code == 403
    # No GET changes anything: the purge page only asks.
    assert client.get("/ui/deadletters/replay").status_code == 405
    assert b"Purge" in client.get("/ui/deadletters/purge").data
    store.close()


# --- the schedule form goes through the API's validation ----------------------------------


def test_change_fills_the_form_with_the_job_and_sending_it_keeps_the_job(
        settings: Settings) -> None:
    """Every field the API takes is on the form (catchUp, deliveryTimeout and the
    exponential policy were not: changing a job from the dashboard dropped them), and the
    job page's JSON is the GET answer whole."""
    client = create_app(settings).test_client()
    body = {"schedule": "@every 1h", "repeats": 5, "ttl": "2030-01-01T00:00:00Z",
            "data": {"a": [1, 2.5, "x"], "b": None}, "catchUp": "skip",
            "deliveryTimeout": "1s",
            "failurePolicy": {"exponential": {"initialInterval": "250ms", "maxInterval": "1m",
                                              "multiplier": 1.5, "jitter": 0, "maxRetries": 4}}}
    assert client.post(f"{API}/changed", json=body).status_code == 204
    before = client.get(f"{API}/changed").get_json()
    page = client.get("/ui/jobs/changed").data.decode()
    shown = re.search(r"As JSON.*?<pre[^>]*>(.*?)</pre>", page, re.S)
    assert shown is not None and orjson.loads(html.unescape(shown.group(1))) == before
    assert 'href="/ui/schedule?job=changed"' in page
    parser = _Forms()
    parser.feed(client.get("/ui/schedule", query_string={"job": "changed"}).data.decode())
    [form] = [f for f in parser.forms if f["button"] == "Schedule"]
    assert form["fields"]["catchUp"] == "skip" and form["fields"]["overwrite"] == "on"
    assert client.post(form["action"], data=form["fields"]).status_code == 303
    after = client.get(f"{API}/changed").get_json()
    for answer in (before, after):  # the first due time comes from when it was sent
        answer.pop("nextTriggerTime")
    assert after == before
    # Changed on the form: what was changed, and only that.
    form["fields"]["catchUp"] = "all"
    form["fields"]["multiplier"] = "3"
    assert client.post(form["action"], data=form["fields"]).status_code == 303
    changed = client.get(f"{API}/changed").get_json()
    assert changed["catchUp"] == "all"
    assert changed["failurePolicy"]["exponential"]["multiplier"] == 3
    assert changed["deliveryTimeout"] == "1s" and changed["data"] == body["data"]
    form["fields"]["multiplier"] = "fast"
    refused = client.post(form["action"], data=form["fields"])
    assert refused.status_code == 400 and b"multiplier must be a number" in refused.data
    missing = client.get("/ui/schedule", query_string={"job": "nope"})
    assert missing.status_code == 404


def test_a_form_that_is_not_utf8_is_refused(settings: Settings) -> None:
    """Werkzeug keeps a byte that is not UTF-8 as its `%XX`: the job `bad%FFname`, which
    the API refuses (U+FFFD), was scheduled, with its data turned into other text."""
    client = create_app(settings).test_client()
    csrf = csrf_of(client.get("/ui/schedule").data)
    answer = client.post("/ui/schedule", data=f"csrf_token={csrf}&name=bad%ffname&dueTime=1h"
                         "&data=%22caf%e9%22",
                         content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 400 and b"not UTF-8" in answer.data
    assert client.get(f"{API}/bad%25FFname").status_code == 404
    good = client.post("/ui/schedule", data=f"csrf_token={csrf}&name=caf%C3%A9&dueTime=1h",
                       content_type="application/x-www-form-urlencoded")
    assert good.status_code == 303, good.data[:300]
    # UTF-8 sent as it is, not percent-encoded (a script's form): UTF-8 all the same.
    raw = client.post("/ui/schedule", data=f"csrf_token={csrf}&name=j\u00f6b&dueTime=1h"
                      .encode(), content_type="application/x-www-form-urlencoded")
    assert raw.status_code == 303, raw.data[:300]
    assert client.get(f"{API}/j%C3%B6b").status_code == 200


def _change(client: FlaskClient, name: str, **edits: str) -> Any:
    """Change `name` on the dashboard: its form as filled in, with `edits`, sent back."""
    parser = _Forms()
    parser.feed(client.get("/ui/schedule", query_string={"job": name}).data.decode())
    [form] = [f for f in parser.forms if f["button"] == "Schedule"]
    return client.post(form["action"], data={**form["fields"], **edits})


def test_change_keeps_the_stored_data_unless_it_is_edited(settings: Settings) -> None:
    """The form shows data as JSON text; read back from that text, an Any's bytes were
    re-encoded (unknown fields dropped), and an indented big value was over the limit."""
    client = create_app(settings).test_client()
    store = Store(settings)
    odd_bytes = base64.b64encode(b"\n\x02hi\x10\x07").decode()  # a field StringValue lacks
    store.schedule(make_job("any", now_ms() + 3_600_000, schedule="@every 1h",
                            any_type="type.googleapis.com/google.protobuf.StringValue",
                            any_value=odd_bytes))
    big = [0] * (settings.max_data_bytes // 2 - 8)  # under the limit compact, not indented
    assert client.post(f"{API}/big", json={"dueTime": "1h", "data": big}).status_code == 204
    # The API keeps these strings as given: so does the form.
    assert client.post(f"{API}/spaced", json={"schedule": " 0 0 6 * * * ", "data": 1}
                       ).status_code == 204
    for name in ("any", "big", "spaced"):
        before = store.get(APP, name)
        assert before is not None
        assert _change(client, name).status_code == 303, name
        after = store.get(APP, name)
        assert after is not None and dataclasses.replace(
            after.job, first_ms=before.job.first_ms) == before.job, name
    # Edited, the data is the text as typed (its lines LF-ended, as typed, not CRLF).
    assert _change(client, "any", data='{\r\n"a": 1}').status_code == 303
    edited = store.get(APP, "any")
    assert edited is not None and edited.job.data == {"a": 1} and edited.job.any_type is None
    store.close()


def test_change_of_deep_data_well_under_the_limit_is_a_bounded_page_that_keeps_it(
        settings: Settings) -> None:
    """Indented, 120 KB of data nested 32 deep was a 4 MB page, and its untouched form
    was over the form's size limit (413): past 64 KiB indented, the data is shown compact."""
    client = create_app(settings).test_client()
    deep: Any = list(range(2_000))
    for _ in range(31):
        deep = [deep]
    compact = orjson.dumps(deep)
    assert len(compact) < settings.max_data_bytes // 4
    assert client.post(f"{API}/deep", json={"dueTime": "1h", "data": deep}).status_code == 204
    page = client.get("/ui/schedule", query_string={"job": "deep"})
    assert page.status_code == 200 and len(page.data) < 2 * len(compact) + 64 * 1024
    before = client.get(f"{API}/deep").get_json()
    assert _change(client, "deep").status_code == 303
    after = client.get(f"{API}/deep").get_json()
    assert after["data"] == before["data"] == deep


def test_change_keeps_line_breaks_as_stored(settings: Settings) -> None:
    """Under --dapr-compat data is kept as written: its CRLF and lone CR were made LF by
    an untouched Change. A schedule with a line break (the API reads it as a space) was
    shown in a text input, which drops it: the untouched form was refused."""
    compat = dataclasses.replace(settings, dapr_compat=True)
    client = create_app(compat).test_client()
    store = Store(compat)
    written = b'{\r\n  "a": 1,\r  "b": [2]\n}'
    body = b'{"dueTime": "1h", "schedule": "0 0 *\\n* * *", "data": ' + written + b"}"
    assert client.post(f"{API}/crlf", data=body,
                       content_type="application/json").status_code == 204
    before = store.get(APP, "crlf")
    assert before is not None and before.job.data_text == written.decode()
    assert _change(client, "crlf").status_code == 303
    after = store.get(APP, "crlf")
    assert after is not None and after.job.data_text == written.decode()
    assert after.job.schedule == "0 0 * * * *"  # the same times as before
    store.close()


def test_a_multipart_form_is_refused(settings: Settings) -> None:
    """Werkzeug reads a multipart form's bytes that are not UTF-8 as U+FFFD: data the API
    refuses was stored changed."""
    client = create_app(settings).test_client()
    csrf = csrf_of(client.get("/ui/schedule").data)
    boundary = "b0undary"
    parts = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
                     .encode() + v + b"\r\n" for k, v in
                     (("csrf_token", csrf.encode()), ("name", b"mp"), ("dueTime", b"1h"),
                      ("data", b'"caf\xe9"')))
    answer = client.post("/ui/schedule", data=parts + f"--{boundary}--\r\n".encode(),
                         content_type=f"multipart/form-data; boundary={boundary}")
    assert answer.status_code == 415 and b"URL-encoded" in answer.data
    assert client.get(f"{API}/mp").status_code == 404


def test_change_keeps_no_data_the_apps_body_format_cannot_deliver(settings: Settings) -> None:
    """As the same POST: a Value holding NaN, stored while the app sent envelopes, is
    refused once it sends raw bodies (it was saved again, every trigger dead-lettered)."""
    store = Store(settings)
    nan = struct_pb2.Value(number_value=math.nan).SerializeToString()
    store.schedule(make_job("nan", now_ms() + 3_600_000, schedule="@every 1h",
                            any_type="type.googleapis.com/google.protobuf.Value",
                            any_value=base64.b64encode(nan).decode()))
    client = create_app(dataclasses.replace(settings, delivery_format="raw")).test_client()
    answer = _change(client, "nan")
    assert answer.status_code == 400 and b"no JSON form" in answer.data
    kept = store.get(APP, "nan")
    assert kept is not None and kept.job.schedule == "@every 1h"
    store.close()


def test_the_schedule_form_means_what_the_api_means(settings: Settings) -> None:
    client = create_app(settings).test_client()
    fields = {"schedule": "0 30 9 * * MON-FRI", "repeats": "3", "ttl": "2030-01-01T00:00:00Z",
              "data": '{"a": [1, 2.5, "x"], "b": null}', "policy": "constant",
              "interval": "2s", "maxRetries": "1"}
    answer = form_post(client, "/ui/schedule", {"name": "via-form", **fields})
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/jobs/via-form"
    assert b"Scheduled &#39;via-form&#39;." in client.get(answer.headers["Location"]).data
    body = {"schedule": fields["schedule"], "repeats": 3, "ttl": fields["ttl"],
            "data": {"a": [1, 2.5, "x"], "b": None},
            "failurePolicy": {"constant": {"interval": "2s", "maxRetries": 1}}}
    assert client.post(f"{API}/via-api", json=body).status_code == 204
    shown = {n: client.get(f"{API}/{n}").get_json() for n in ("via-form", "via-api")}
    for job in shown.values():
        job.pop("name")
    assert shown["via-form"] == shown["via-api"]

    def refused(extra: dict[str, str], api_body: dict[str, Any] | None) -> str:
        page = form_post(client, "/ui/schedule", {"name": "bad", **extra})
        assert page.status_code == 400, page.data
        text = page.data.decode()
        if api_body is not None:  # the API's own message for the same request
            message = client.post(f"{API}/bad", json=api_body).get_json()["message"]
            assert _escaped(message) in text
        assert client.get(f"{API}/bad").status_code == 404
        return text

    refused({"schedule": "every day"}, {"schedule": "every day"})
    refused({}, {})
    refused({"dueTime": "2s", "repeats": "-1"}, {"dueTime": "2s", "repeats": -1})
    assert "data must be JSON" in refused({"dueTime": "2s", "data": "hello"}, None)
    assert "data must be JSON" in refused({"dueTime": "2s", "data": "[" * 3000}, None)  # deep
    assert "repeats must be a whole number" in refused({"dueTime": "2s", "repeats": "x"}, None)
    # int() takes these; the API does not, nor does its form
    for odd in ("1_0", "\u0661\u0662", "+3"):
        refused({"dueTime": "2s", "repeats": odd}, {"dueTime": "2s", "repeats": odd})
        refused({"dueTime": "2s", "policy": "constant", "maxRetries": odd},
                {"dueTime": "2s", "failurePolicy": {"constant": {"maxRetries": odd}}})
    # A field past its bound is refused, as the API refuses it, not cut and stored.
    long_schedule = "0 0 * * * *" + " " * 1013 + "BOGUS"
    assert "longer than 1024" in refused({"schedule": long_schedule}, None)
    assert "longer than 1024" in refused({"name": "n" * 1025, "dueTime": "2s"}, None)
    name_page = form_post(client, "/ui/schedule", {"name": "a/b", "dueTime": "2s"})
    assert name_page.status_code == 400 and b"must not contain" in name_page.data

    # An existing name needs "overwrite"; the form keeps what was typed.
    again = form_post(client, "/ui/schedule", {"name": "via-form", "dueTime": "1h",
                                               "data": '"kept"'})
    assert again.status_code == 409 and b"overwrite" in again.data
    assert b"&#34;kept&#34;" in again.data
    replaced = form_post(client, "/ui/schedule", {"name": "via-form", "dueTime": "1h",
                                                  "data": '"new"', "overwrite": "on"})
    assert replaced.status_code == 303
    assert client.get(f"{API}/via-form").get_json()["data"] == "new"


def _escaped(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("'", "&#39;"))


# --- hostile input is shown as text ------------------------------------------------------


def test_hostile_names_data_and_errors_are_shown_as_text(settings: Settings,
                                                          receiver: Receiver) -> None:
    app = create_app(settings)
    client = app.test_client()
    receiver.status = 500
    with ThreadWorker(settings):
        answer = form_post(client, "/ui/schedule", {
            "name": HOSTILE_NAME, "dueTime": "0s", "data": orjson.dumps(HOSTILE_DATA).decode(),
            "policy": "constant", "interval": "0s", "maxRetries": "0"})
        assert answer.status_code == 303, answer.data
        wait_for(lambda: dead_letters(Store(settings), settings.app_id),
                 what="the hostile job's dead letter")
    assert client.post(f"{API}/{quote(HOSTILE_NAME)}2",
                       json={"schedule": "@every 1h", "data": HOSTILE_DATA}).status_code == 204
    letter_id = dead_letters(Store(settings), settings.app_id)[0].id
    pages = {
        "jobs": client.get("/ui/jobs"),
        "job": client.get(f"/ui/jobs/{quote(HOSTILE_NAME)}2"),
        "dead letters": client.get("/ui/deadletters"),
        "dead letter": client.get("/ui/deadletters/show", query_string={"id": letter_id}),
        "missing job": client.get(f"/ui/jobs/{quote(HOSTILE_NAME)}3"),
        "filter": client.get("/ui/jobs", query_string={"prefix": HOSTILE_NAME}),
    }
    for what, page in pages.items():
        html = page.data.decode()
        assert "<img" not in html and "<script>alert" not in html, what
        assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert page.headers["X-Frame-Options"] == "DENY"
    assert _escaped(HOSTILE_NAME) in pages["jobs"].data.decode()
    assert "&lt;/pre&gt;&lt;script&gt;" in pages["job"].data.decode()
    assert "&lt;/pre&gt;&lt;script&gt;" in pages["dead letter"].data.decode()
    assert pages["missing job"].status_code == 404


# --- the dead-letter pages -----------------------------------------------------------------


@pytest.mark.parametrize("action", ["pause", "resume", "trigger"])
def test_a_job_it_cannot_read_is_neither_paused_resumed_nor_triggered(
        settings: Settings, action: str) -> None:
    """As over the API (README, "Errors and retries"): refused, and nothing changes; before,
    the dashboard paused such a job, which the API then could not resume."""
    client = create_app(settings).test_client()
    store = Store(settings)
    store.schedule(make_job("odd", app_id=settings.app_id))
    jid = f"{settings.app_id}/odd"
    pk = store.keys.for_job(jid)
    store.redis.hset(pk.jobs, jid, record_with(store.redis.hget(pk.jobs, jid), "x", "later"))
    csrf = csrf_of(client.get("/ui/schedule").data)
    before = {k: store.redis.dump(k) for k in store.redis.keys(f"{settings.prefix}:*")}
    answer = client.post(f"/ui/jobs/odd/{action}", data={"csrf_token": csrf})
    assert answer.status_code == 500 and b"cannot read" in answer.data
    assert {k: store.redis.dump(k) for k in store.redis.keys(f"{settings.prefix}:*")} == before


def test_replay_all_replays_what_it_can_read_and_says_how_many_it_left(
        settings: Settings) -> None:
    client = create_app(settings).test_client()
    store = Store(settings)
    good = put_dead_letter(store.redis, settings, settings.app_id, "good", dead_ms=1)
    bad = put_dead_letter(store.redis, settings, settings.app_id, "bad", dead_ms=2)
    dead = store.keys.for_job(f"{settings.app_id}/bad").dead
    store.redis.hset(dead, bad.id, b"[]")
    answer = form_post(client, "/ui/deadletters/replay", {"all": "1"})
    assert answer.status_code == 303, answer.data
    # Where it goes: the dead-letter list, which names the letter it cannot read.
    page = client.get(answer.headers["Location"])
    assert page.status_code == 500 and "purge it" in page.data.decode()
    assert ("Replayed 1 dead letter. 1 dead letter this version cannot read was left as it "
            "is: purge it.") in page.data.decode()
    assert store.redis.hget(dead, bad.id) == b"[]"
    assert store.redis.hget(store.keys.for_job(f"{settings.app_id}/good").dead, good.id) is None
    store.close()


def test_dead_letters_are_listed_inspected_replayed_and_purged(
        settings: Settings, receiver: Receiver) -> None:
    client = create_app(settings).test_client()
    store = Store(settings)
    failing = {"/job/flaky", "/job/doomed-1", "/job/doomed-2"}
    receiver.responder = lambda d: 500 if d.path in failing else 200
    with ThreadWorker(settings):
        for name in ("flaky", "doomed-1", "doomed-2"):
            store.schedule(make_job(name, data={"n": name}, failure_policy=ONE_ATTEMPT,
                                    app_id=settings.app_id))
        wait_for(lambda: len(dead_letters(store, settings.app_id)) == 3, what="3 dead letters")
        listing = client.get("/ui/deadletters").data.decode()
        assert listing.count("Inspect</a>") == 3 and "HTTP 500" in listing
        flaky = next(d for d in dead_letters(store, settings.app_id) if d.name == "flaky")

        shown = client.get("/ui/deadletters/show", query_string={"id": flaky.id})
        text = shown.data.decode()
        assert shown.status_code == 200 and _escaped(flaky.id) in text
        # The job in the API's shape, not the stored record.
        assert "&#34;failurePolicy&#34;" in text and "&#34;f1&#34;" not in text
        assert '&#34;n&#34;: &#34;flaky&#34;' in text

        failing.discard("/job/flaky")
        replayed = press(client, "/ui/deadletters/show", "Replay", id=flaky.id)
        assert replayed.status_code == 303, replayed.data
        assert "Replayed 1 dead letter." in client.get("/ui/deadletters").data.decode()
        wait_for(lambda: [d.path for d in receiver.received()].count("/job/flaky") == 2,
                 what="the replay delivered")
        wait_for(lambda: len(dead_letters(store, settings.app_id)) == 2,
                 what="the replayed letter gone")

    purged = press(client, "/ui/deadletters/purge", "Purge", prefix="doomed-1")
    assert purged.status_code == 303, purged.data
    page = client.get("/ui/deadletters").data.decode()
    assert "Purged 1 dead letter whose job name starts with &#39;doomed-1&#39;." in page
    assert [d.name for d in dead_letters(store, settings.app_id)] == ["doomed-2"]
    assert press(client, "/ui/deadletters/purge", "Purge").status_code == 303
    assert dead_letters(store, settings.app_id) == []
    assert "No dead letters." in client.get("/ui/deadletters").data.decode()
    gone = client.get("/ui/deadletters/show", query_string={"id": flaky.id})
    assert gone.status_code == 404
    nothing = form_post(client, "/ui/deadletters/replay", {})
    assert nothing.status_code == 400 and b"say which dead letters" in nothing.data
    store.close()


# --- the live counters -----------------------------------------------------------------------


def test_live_counters_count_this_apps_triggers(settings: Settings, receiver: Receiver) -> None:
    app_id = settings.app_id
    create_app(settings)  # registers the receiver as the app
    store = Store(settings)
    empty = live_counters(store, app_id)
    assert (empty.jobs, empty.backlog.value, empty.in_flight, empty.dead_letters,
            empty.workers, empty.staged) == (0, 0, 0, 0, 0, 0)
    assert empty.worker.deliveries_per_s == 0 and empty.worker.lateness_p99_ms is None

    # No worker yet: two due triggers of this app are its backlog; not another app's, and
    # not one due later.
    store.schedule(make_job("due-1", app_id=app_id, due_ms=1_000))
    store.schedule(make_job("due-2", app_id=app_id))
    store.schedule(make_job("later", app_id=app_id, due_ms=2**42))
    store.schedule(make_job("theirs", app_id="other-app"))
    counters = live_counters(store, app_id)
    assert (counters.jobs, counters.backlog.value, counters.in_flight) == (3, 2, 0)
    assert not counters.backlog.capped

    # A worker takes them: one answered at once, the other held by the app (in flight).
    release = receiver.hold("/job/due-2")
    try:
        with ThreadWorker(settings):
            def holding() -> Any:
                c = live_counters(store, app_id)
                return c if (c.in_flight, c.workers) == (1, 1) else None

            counters = wait_for(holding, what="the held delivery in flight, the worker alive")
            assert counters.backlog.value == 0
            release.set()
            wait_for(lambda: live_counters(store, app_id).in_flight == 0,
                     what="the delivery done")

            # The workers add their counts to Redis every second: both deliveries, over
            # the window's seconds.
            def counted() -> Any:
                figures = live_counters(store, app_id).worker
                return figures if round(figures.deliveries_per_s * figures.window_s) == 2 else None

            figures = wait_for(counted, what="the two deliveries counted")
            assert 20 <= figures.window_s <= 30
            assert figures.failures_per_s == 0 and figures.lateness_p99_ms is not None
    finally:
        release.set()
    assert live_counters(store, app_id).jobs == 1  # the one-shots are done

    # Dead letters, and the fragment htmx polls.
    receiver.responder = None
    receiver.status = 500
    with ThreadWorker(settings):
        store.schedule(make_job("dies", app_id=app_id, failure_policy=ONE_ATTEMPT))
        wait_for(lambda: live_counters(store, app_id).dead_letters == 1, what="a dead letter")
    fragment = create_app(settings).test_client().get("/ui/counters").data.decode()
    assert re.search(r'id="counter-dead">1<', fragment), fragment
    assert re.search(r'id="counter-jobs">1<', fragment), fragment
    assert 'hx-trigger="every 3s"' in fragment
    store.close()


# --- in a real browser ----------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _need_browser() -> None:
    """Skip outside CI when the browser is missing; in CI, fail."""
    problem = ""
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing (pip install -e '.[test]')"
    if problem and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser test must run in CI: {problem}")
    if problem:
        pytest.skip(problem)


@contextlib.contextmanager
def serving(app: Flask) -> Iterator[str]:
    """The Flask app on a free port of 127.0.0.1, in a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def api_call(base: str, token: str, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else orjson.dumps(body),
        headers={"dapr-api-token": token, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.timeout(240)
def test_dashboard_in_a_real_browser(locked: Settings, receiver: Receiver, token: str,
                                     tmp_path: Path) -> None:
    _need_browser()
    shots = DOCS if os.environ.get("JOBRUNNER_UPDATE_SCREENSHOTS") == "1" else tmp_path
    from playwright.sync_api import Page, expect, sync_playwright

    failing = {"/job/flaky", "/job/payment-webhook", "/job/sync-inventory"}
    receiver.responder = lambda d: 500 if d.path in failing else 200
    seen_urls: list[str] = []
    dialogs: list[str] = []

    def reload_until(page: Page, check: Callable[[], Any], what: str) -> Any:
        def once() -> Any:
            page.reload()
            return check()

        return wait_for(once, timeout=20, interval=0.3, what=what)

    def delivered(path: str) -> list[Delivery]:
        return receiver.received(path)

    shots.mkdir(exist_ok=True)
    with (serving(create_app(locked)) as base, ThreadWorker(locked),
          sync_playwright() as pw):
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 760})
        page = context.new_page()
        page.on("request", lambda r: seen_urls.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        try:
            # Log in: the token in a form field, a wrong one first.
            page.goto(f"{base}/ui/")
            expect(page).to_have_url(re.compile(r"/ui/login\?next="))
            page.fill("input[name=token]", "not-the-token")
            page.click("button:has-text('Log in')")
            expect(page.locator("p.error")).to_have_text("That is not the API token.")
            page.fill("input[name=token]", token)
            page.click("button:has-text('Log in')")
            expect(page).to_have_url(f"{base}/ui/jobs")
            expect(page.locator("p.empty")).to_contain_text("No jobs yet")
            [cookie] = [c for c in context.cookies() if c["name"] == COOKIE]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert cookie["path"] == "/ui" and token not in cookie["value"]
            # The API refuses the dashboard's cookie.
            status = api_call(base, "", "GET", API, headers={
                "Cookie": f"{COOKIE}={cookie['value']}"})
            assert status == 401

            # Schedule a job from the form, see it in the list.
            page.click("nav >> text=Schedule a job")
            page.fill("input[name=name]", "heartbeat")
            page.fill("input[name=schedule]", "@every 1s")
            page.fill("textarea[name=data]", '{"ping": true}')
            page.click("button:has-text('Schedule')")
            expect(page.locator("p.flash")).to_have_text("Scheduled 'heartbeat'.")
            expect(page.locator("h1")).to_have_text("heartbeat")
            page.click("nav >> text=Jobs")
            row = page.locator("#jobs tr", has_text="heartbeat")
            expect(row).to_contain_text("@every 1s")

            # It fires: the receiver gets it, and the page counts it.
            wait_for(lambda: delivered("/job/heartbeat"), timeout=15, what="heartbeat delivered")
            assert delivered("/job/heartbeat")[0].body == b'{"ping":true}'
            page.click("#jobs >> text=heartbeat")
            reload_until(page, lambda: int(page.inner_text("#job-count")) >= 1,
                         "the trigger counted on the job's page")
            expect(page.locator("#job-last")).to_contain_text("UTC")

            # A few more jobs, over the API, for a page worth a screenshot.
            for name, body in (
                    ("nightly-report", {"schedule": "TZ=Europe/Berlin 0 30 2 * * *",
                                        "data": {"report": "sales"}}),
                    ("invoice-reminders", {"schedule": "@every 1h", "dueTime": "10m"}),
                    ("welcome-email", {"dueTime": "45m", "data": {"user": 42}}),
                    ("sync-inventory", {"schedule": "@every 5m", "dueTime": "0s",
                                        "failurePolicy": {
                        "constant": {"interval": "30s", "maxRetries": 5}}})):
                assert api_call(base, token, "POST", f"{API}/{name}", body) == 204
            # sync-inventory's app answers 500: it waits for its next attempt, retrying.
            wait_for(lambda: delivered("/job/sync-inventory"), timeout=15,
                     what="sync-inventory tried")

            # The counters are polled by htmx: a second worker shows up without a reload.
            page.click("nav >> text=Jobs")
            expect(page.locator("#counter-workers")).to_have_text("1")
            with ThreadWorker(locked):
                expect(page.locator("#counter-workers")).to_have_text("2", timeout=15_000)
            assert any("/ui/counters" in u for u in seen_urls)
            page.reload()
            expect(page.locator("#jobs tbody tr")).to_have_count(5)
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

            # A failing job (one attempt) lands in the dead-letter queue.
            page.click("nav >> text=Schedule a job")
            page.fill("input[name=name]", "flaky")
            page.fill("input[name=dueTime]", "0s")
            page.check("input[name=policy][value=constant]")
            page.fill("input[name=interval]", "0s")
            page.fill("input[name=maxRetries]", "0")
            page.fill("textarea[name=data]", '{"order": 1234}')
            page.click("button:has-text('Schedule')")
            assert api_call(base, token, "POST", f"{API}/payment-webhook", {
                "dueTime": "0s", "data": {"payment": "pi_3N"},
                "failurePolicy": {"constant": {"interval": "0s", "maxRetries": 0}}}) == 204
            page.click("nav >> text=Dead letters")
            reload_until(page, lambda: page.locator("#deadletters tbody tr").count() == 2,
                         "both dead letters listed")
            expect(page.locator("#counter-dead")).to_have_text("2")
            page.screenshot(path=str(shots / "dashboard-deadletters.png"), full_page=True)

            # Inspect: the job in the API's shape, and the app's answer.
            page.locator("#deadletters tr", has_text="flaky").locator("text=Inspect").click()
            job_json = orjson.loads(page.inner_text("#letter-job"))
            assert job_json == {"name": "flaky", "dueTime": "0s", "data": {"order": 1234},
                                "failurePolicy": {"constant": {"interval": "0s",
                                                               "maxRetries": 0}}}
            expect(page.locator("#letter-error")).to_contain_text("500")

            # Replay from the page, with the app answering 200 now: delivered.
            failing.discard("/job/flaky")
            page.click("button:has-text('Replay')")
            expect(page.locator("p.flash")).to_have_text("Replayed 1 dead letter.")
            wait_for(lambda: len(delivered("/job/flaky")) == 2, timeout=15,
                     what="the replay delivered")
            replay = delivered("/job/flaky")[1]
            assert replay.body == b'{"order":1234}' and replay.headers["jobrunner-attempt"] == "1"
            reload_until(page, lambda: page.locator("#deadletters tbody tr").count() == 1,
                         "only payment-webhook left")
            expect(page.locator("#deadletters")).not_to_contain_text("flaky")

            # Hostile names and data are text, never markup.
            assert api_call(base, token, "POST", f"{API}/{quote(HOSTILE_NAME)}",
                            {"schedule": "@every 1h", "data": HOSTILE_DATA}) == 204
            page.goto(f"{base}/ui/jobs")
            link = page.locator("#jobs a", has_text=HOSTILE_NAME)
            expect(link).to_have_count(1)
            link.click()
            expect(page.locator("h1")).to_have_text(HOSTILE_NAME)
            expect(page.locator("#job-data")).to_contain_text("</pre><script>")
            assert page.locator("main img").count() == 0 and dialogs == []

            # Logged out, the pages ask for the token again.
            page.click("button:has-text('Log out')")
            expect(page).to_have_url(re.compile(r"/ui/login"))
            page.goto(f"{base}/ui/deadletters")
            expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui/deadletters"))
        finally:
            browser.close()
    assert seen_urls and not [u for u in seen_urls if token in u]  # never in a URL
