"""The dashboard's pages: jobs, one job, scheduling, the dead-letter queue, live counters.

Server-rendered (Jinja, autoescaped: job names, data and errors are whatever callers
sent, and are shown as text); htmx only polls the counters. Nothing changes on a GET:
every change is a POST form with the session's CSRF token (app/ui/auth.py). Only this
API's app is shown, as the HTTP API does.

A job's trigger history is the `history_section` of `_history.html`, on its page
(`job.html`) and on the page of a job that is over (`job_over.html`). The pause / resume /
trigger buttons are `post_button`s in `job.html` ("actions") and `jobs.html` (the app's),
posting to job_action and app_action.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from flask import Blueprint, Response, current_app, g, request, url_for
from jinja2 import Environment, FileSystemLoader
from werkzeug.exceptions import HTTPException

from app.jobs import errors
from app.jobs.anydata import check_deliverable
from app.jobs.clock import now_ms
from app.jobs.errors import ApiError
from app.jobs.model import DeadLetter, Job, TriggerStatus
from app.jobs.validation import MAX_NAME_LENGTH, parse_job_request, validate_name
from app.settings import Settings
from app.store.deadletters import DeadLetters, Selection, SelectionError, letter_to_api
from app.store.history import History, JobHistory
from app.store.pauses import Pauses
from app.store.redis_client import UNAVAILABLE
from app.store.store import JobExists, JobView, Store
from app.ui import auth, forms
from app.ui.counters import Counters, live_counters

log = logging.getLogger("jobrunner.api")

# The static folder is the package's own (the app itself serves none). Templates are read
# by `_render` from the package only: Flask's app-wide loader would look first in a
# templates/ folder of the directory the API runs in, which is the user's project.
ui_bp = Blueprint("ui", __name__, url_prefix=auth.UI_PREFIX, static_folder="static")
TEMPLATES = Path(__file__).resolve().parent / "templates"
T = "jobrunner_ui/"
PAGE_SIZE = 50
REFRESH_S = 3  # the live counters' polling period
MAX_SHOWN_CHARS = 64 * 1024  # data and API forms longer than this are cut on the page
MAX_ERROR_CHARS = 300  # a dead letter's error in the list (in full on its own page)
MAX_ARG_CHARS = 2048  # any other query argument (page tokens, ids)
_HEADERS = {
    # No script but the vendored htmx, no inline style or script, no framing, nothing
    # sent anywhere else. (Referrer-Policy keeps the Origin header of same-site POSTs.)
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


# --- plumbing ---------------------------------------------------------------------------


def _settings() -> Settings:
    settings: Settings = g.settings
    return settings


def _store() -> Store:
    store: Store = g.store
    return store


@ui_bp.before_request
def _before() -> Response | None:
    # A form may carry data up to the data limit, percent-encoded (Flask's default is 500 kB).
    request.max_form_memory_size = _settings().max_data_bytes * 4 + 64 * 1024
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if request.mimetype == "multipart/form-data":
            # The dashboard's forms are URL-encoded; Werkzeug reads a multipart one's
            # bytes that are not UTF-8 as U+FFFD, which _utf8_form could not see.
            return _error_page(415, "send the form URL-encoded")
        if not _utf8_form():  # (first: it reads the body, which the form then parses)
            return _error_page(400, "the form is not UTF-8 text")
        problem = auth.csrf_problem(_settings())
        if problem is not None:
            return _error_page(403, problem)
    return None


def _utf8_form() -> bool:
    """Whether a URL-encoded form's fields are UTF-8 (Werkzeug keeps a byte that is not
    as its `%XX`: a name the API refuses, `bad%FFname`, was taken)."""
    if request.mimetype != "application/x-www-form-urlencoded":
        return True
    try:
        parse_qsl(request.get_data(cache=True).decode("utf-8"), keep_blank_values=True,
                  errors="strict")
    except (UnicodeDecodeError, ValueError):
        return False
    return True


@ui_bp.after_request
def _after(response: Response) -> Response:
    response.headers.update(_HEADERS)
    if not request.path.startswith(auth.UI_PREFIX + "/static/"):
        response.headers["Cache-Control"] = "no-store"
    auth.save_session(response)
    return response


@ui_bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    if exc.status == 500:  # the stored data's fault, not the caller's (as in app/api)
        log.error("%s %s: %s", request.method, request.path, exc.message)
    return _error_page(exc.status, exc.message)


@ui_bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _error_page(exc.code or 500, exc.description or exc.name)


def unrouted_page(exc: HTTPException) -> Response:
    """The page of a 404 or 405 under /ui: Flask raises those before it knows the
    blueprint, so the app's own handler hands them here (app/api/factory.py)."""
    return _after(_http_error(exc))


def _redis_down(exc: Exception) -> Response:
    return _error_page(503, f"Redis is unavailable: {exc or type(exc).__name__}")


for _exc_class in UNAVAILABLE:
    ui_bp.register_error_handler(_exc_class, _redis_down)


@ui_bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return _error_page(500, "internal error; see the API log")


@ui_bp.app_template_global("jobrunner_ui_csrf")
def _csrf_token() -> str:
    """The session's CSRF token for a form: a global, so that macros imported without
    the page's context (`_macros.html`) get it too."""
    return auth.current_session().csrf


def _error_page(status: int, message: str) -> Response:
    return _page("error.html", status=status, title=f"Error {status}", message=message)


def _page(template: str, status: int = 200, **context: Any) -> Response:
    """A full page: the navigation, the counters, and the one-time message if any."""
    settings = _settings()
    session = auth.current_session()
    flash, session.flash = session.flash, ""
    session.modified = True  # re-issued: a session lasts from the last page loaded
    authed = not settings.api_token or session.authed or auth.header_authenticated(settings)
    counters: Counters | str | None = None
    if authed and context.pop("show_counters", True):
        counters = _counters_or_reason()
    html = _render(
        template, app_id=settings.app_id, token_required=bool(settings.api_token),
        authed=authed, flash=flash, counters=counters,
        refresh_s=REFRESH_S, **context)
    return Response(html, status=status, mimetype="text/html")


def _render(template: str, **context: Any) -> str:
    """Render one of the package's templates, always autoescaped; the app's Jinja
    environment is shared (url_for, the CSRF global), its loader is not."""
    env: Environment | None = current_app.extensions.get("jobrunner_ui_jinja")
    if env is None:
        env = current_app.jinja_env.overlay(loader=FileSystemLoader(TEMPLATES),
                                            autoescape=True)
        current_app.extensions["jobrunner_ui_jinja"] = env
    return env.get_template(T + template).render(**context)


def _redirect(endpoint: str, flash: str = "", **values: Any) -> Response:
    if flash:
        session = auth.current_session()
        session.flash, session.modified = flash, True
    return auth.see_other(url_for(endpoint, **values))


def _arg(name: str, bound: int = MAX_ARG_CHARS) -> str:
    value = request.args.get(name, "")
    if len(value) > bound:
        raise errors.malformed(f"{name} is longer than {bound} characters")
    return value


def _counters_or_reason() -> Counters | str:
    try:
        return live_counters(_store(), _settings().app_id)
    except UNAVAILABLE as exc:
        return f"Redis is unavailable: {exc or type(exc).__name__}"


# --- what the pages show -----------------------------------------------------------------


@dataclass(frozen=True)
class When:
    """A moment, as text in UTC and relative to the page's time."""

    iso: str
    text: str
    relative: str


def when(ms: int | None, now: int) -> When | None:
    if ms is None:
        return None
    try:
        moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return When(str(ms), f"{ms} ms since the epoch", "")
    iso = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    delta = (ms - now) / 1000
    if abs(delta) < 1:
        relative = "now"
    else:
        relative = f"in {_span(delta)}" if delta > 0 else f"{_span(-delta)} ago"
    return When(iso, text, relative)


def _span(seconds: float) -> str:
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                      ("m", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // sub_size
            return f"{s // size}{unit} {rest}{sub}" if rest else f"{s // size}{unit}"
    return f"{s}s"


def _pretty(value: Any) -> str:
    """JSON for a <pre>, cut at MAX_SHOWN_CHARS."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:  # an integer beyond 64 bits: the standard library's encoder
        text = json.dumps(value, indent=2, ensure_ascii=False)
    if len(text) > MAX_SHOWN_CHARS:
        return text[:MAX_SHOWN_CHARS] + f"\n… (cut: {len(text)} characters in all)"
    return text


_STATUS_TEXT = {TriggerStatus.SCHEDULED: "scheduled", TriggerStatus.IN_FLIGHT: "in flight",
                TriggerStatus.RETRYING: "retrying", TriggerStatus.STAGED: "waiting for the app",
                TriggerStatus.PAUSED: "paused"}


@dataclass(frozen=True)
class JobRow:
    name: str
    schedule: str
    status: str
    status_class: str
    attempt: int
    next: When | None
    last: When | None
    count: int


def _schedule_text(view: JobView) -> str:
    job = view.job
    text = job.schedule or (f"once, due {job.due_time}" if job.due_time else "once")
    if job.schedule and job.due_time:
        text += f", from {job.due_time}"
    if job.repeats:
        text += f", {job.repeats} times" if job.repeats > 1 else ", once"
    if job.ttl:
        text += f", ttl {job.ttl}"
    return text


def job_row(view: JobView, now: int) -> JobRow:
    return JobRow(name=view.job.name, schedule=_schedule_text(view),
                  status=_STATUS_TEXT.get(view.status, view.status.value),
                  status_class=view.status.value, attempt=view.attempt,
                  next=when(view.next_ms, now), last=when(view.last_ms, now), count=view.count)


def policy_text(policy: dict[str, Any]) -> str:
    """A failure policy (its API form) in words."""
    if set(policy) == {"drop"}:
        return "drop: a failed trigger is not tried again"
    constant = policy.get("constant")
    if set(policy) == {"constant"} and isinstance(constant, dict):
        retries = constant.get("maxRetries")
        times = ("without end" if retries is None else
                 f"at most {retries} time{'' if retries == 1 else 's'}")
        return f"constant: try again after {constant.get('interval', '0s')}, {times}"
    return orjson.dumps(policy).decode()  # a kind this page does not know in words


@dataclass(frozen=True)
class HistoryRow:
    due: When | None
    sent: When | None
    attempt: int
    result: str  # delivered, retrying, dead-lettered, dropped (also its badge's class)
    status: int | None
    took: str
    error: str


def history_rows(history: JobHistory | None, now: int) -> list[HistoryRow]:
    """A job's last outcomes (app/store/history.py), newest first, for its page."""
    if history is None:
        return []
    return [HistoryRow(when(e.due_ms, now), when(e.sent_ms, now), e.attempt, e.result,
                       e.status, _took(e.duration_us), e.error) for e in history.entries]


def _took(us: int) -> str:
    ms = us / 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


@dataclass(frozen=True)
class LetterRow:
    id: str
    name: str
    scheduled: When | None
    dead: When | None
    attempts: int
    error: str


def letter_row(letter: DeadLetter, now: int, error_chars: int = MAX_ERROR_CHARS) -> LetterRow:
    error = letter.error if len(letter.error) <= error_chars else (
        letter.error[:error_chars] + "…")
    return LetterRow(letter.id, letter.name, when(letter.sched_ms, now),
                     when(letter.dead_ms, now), letter.attempts, error)


# --- pages ---------------------------------------------------------------------------


@ui_bp.get("/")
def index() -> Response:
    return auth.see_other(url_for("ui.jobs"))


@ui_bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    settings = _settings()
    target = auth.safe_next(request.values.get("next"))
    if not settings.api_token or (request.method == "GET" and auth.current_session().authed):
        return auth.see_other(target)
    if request.method == "POST":
        if auth.token_matches(settings, request.form.get("token", "")):
            auth.start_session(authed=True)
            return auth.see_other(target)
        return _page("login.html", status=401, title="Log in", next=target, show_counters=False,
                     error="That is not the API token.")
    return _page("login.html", title="Log in", next=target, show_counters=False, error="")


@ui_bp.post("/logout")
def logout() -> Response:
    session, said = auth.current_session(), ""
    if session.authed:  # (a form POST: its CSRF token was checked) every copy ends with it
        try:
            _store().ui_end_session(_settings().app_id, session.id, session.login_s,
                                    auth.SESSION_MAX_AGE_S)
        except UNAVAILABLE as exc:  # this browser is logged out all the same
            log.warning("dashboard logout not kept in Redis: %s", exc)
            said = ("Logged out of this browser only: Redis is unavailable, so a copy of the "
                    "session's cookie elsewhere stays valid for up to 12 hours from its login.")
    auth.start_session(authed=False).flash = said
    return auth.see_other(url_for("ui.login"))


@ui_bp.get("/jobs")
def jobs() -> Response:
    settings, now = _settings(), now_ms()
    prefix, page = _arg("prefix", MAX_NAME_LENGTH), _arg("page")
    try:
        views, next_page = _store().list_jobs(settings.app_id, prefix, page, PAGE_SIZE)
    except ValueError as exc:  # a page token that is not one
        raise errors.malformed(str(exc)) from None
    return _page("jobs.html", title="Jobs", nav="jobs", prefix=prefix, first_page=not page,
                 next_page=next_page, rows=[job_row(v, now) for v in views],
                 app_paused=when(Pauses(_store()).app_paused_since(settings.app_id), now))


@ui_bp.get("/jobs/<name>")
def job(name: str) -> Response:
    name = validate_name(name)
    view = _store().get(_settings().app_id, name)
    if view is None:
        # A job that is over may have left its history (app/store/history.py): show that.
        over = History(_store()).read(_settings().app_id, name)
        if over is not None:
            now = now_ms()
            return _page("job_over.html", title=name, nav="jobs", name=name,
                         history=history_rows(over, now), kept_until=when(over.kept_until_ms, now))
        return _error_page(404, f"There is no job {name!r} (a one-shot job is gone once it "
                                "has fired).")
    now = now_ms()
    # The GET answer: the definition in the API's shape, and where the job stands.
    api = view.to_api(dapr_compat=_settings().dapr_compat,
                      max_data_bytes=_settings().max_data_bytes)
    return _page("job.html", title=name, nav="jobs", row=job_row(view, now), job=api,
                 history=history_rows(History(_store()).read(_settings().app_id, name), now),
                 expires=when(view.job.expires_ms, now), policy=policy_text(api["failurePolicy"]),
                 has_data="data" in api, data=_pretty(api.get("data")), api_json=_pretty(api),
                 paused=view.paused, app_paused=view.app_paused,
                 paused_since=when(view.paused_ms, now))


@ui_bp.post("/jobs/<name>/<any(pause, resume, trigger):action>")
def job_action(name: str, action: str) -> Response:
    """Pause, resume or trigger the job now (app/store/pauses.py), then back to its page."""
    name = validate_name(name)
    pauses, app_id = Pauses(_store()), _settings().app_id
    if action == "trigger":
        fired = pauses.trigger(app_id, name)
        found, said = fired is not None, f"Triggered {name!r} now" + (
            f" (trigger {fired.trigger_id})." if fired else ".")
    else:
        found = (pauses.pause_job if action == "pause" else pauses.resume_job)(app_id, name)
        said = f"{action.capitalize()}d {name!r}."
    if not found:
        return _error_page(404, f"There is no job {name!r} (a one-shot job is gone once it "
                                "has fired).")
    return _redirect("ui.job", flash=said, name=name)


@ui_bp.post("/app/<any(pause, resume):action>")
def app_action(action: str) -> Response:
    """Pause or resume the app: every job of it (a job paused by itself stays paused)."""
    pauses, app_id = Pauses(_store()), _settings().app_id
    n = pauses.pause_app(app_id) if action == "pause" else pauses.resume_app(app_id)
    return _redirect("ui.jobs", flash=f"{action.capitalize()}d the app "
                                      f"({n} job{'' if n == 1 else 's'}).")


@ui_bp.route("/schedule", methods=["GET", "POST"])
def schedule() -> Response:
    settings = _settings()
    if request.method == "GET":
        values = forms.form_values({"policy": "default"})
        if name := _arg("job", MAX_NAME_LENGTH):  # "Change": the form holds the job as it is
            view = _store().get(settings.app_id, validate_name(name))
            if view is None:
                return _error_page(404, f"There is no job {name!r} to change.")
            values = _change_values(view)
        return _page("schedule.html", title="Schedule a job", nav="schedule", values=values,
                     error="", max_data_bytes=settings.max_data_bytes)
    values = forms.form_values(request.form)
    try:
        kept = _kept_data(values)
        name, body = forms.to_request(values if kept is None else {**values, "data": ""})
        job, overwrite = parse_job_request(name, body, "application/json", settings.app_id,
                                           now_ms(), settings.max_data_bytes,
                                           dapr_compat=settings.dapr_compat,
                                           delivery_format=settings.body_format)
        if kept is not None:
            job = dataclasses.replace(job, data=kept.data, any_type=kept.any_type,
                                      any_value=kept.any_value, data_text=kept.data_text)
            check_deliverable(job, settings.body_format)  # as the same POST would
        try:
            _store().schedule(job, overwrite=overwrite)
        except JobExists:
            raise ApiError(409, errors.JOB_EXISTS, f"A job named {job.name!r} exists: tick "
                                                   "\"overwrite\" to replace it.") from None
    except ApiError as exc:
        return _page("schedule.html", status=exc.status, title="Schedule a job",
                     nav="schedule", values=values, error=exc.message,
                     max_data_bytes=settings.max_data_bytes)
    return _redirect("ui.job", flash=f"Scheduled {job.name!r}.", name=job.name)


def _change_values(view: JobView) -> dict[str, str]:
    answer = view.to_api()
    values = forms.values_of(answer)
    if view.job.data_text is not None:  # kept as written (--dapr-compat): that text
        values["data"] = forms.shown_data(answer.get("data"), view.job.data_text)
    return values


def _kept_data(values: dict[str, str]) -> Job | None:
    """The job being changed (the form's `keep`) when the form's data is still the text
    its Change page showed: its data is kept as stored, not read back from that text (an
    Any's own bytes, data kept as written, data that the indented text puts over the
    limit); None when the data was edited, or there is no such job."""
    if not values.get("keep"):
        return None
    try:
        view = _store().get(_settings().app_id, validate_name(values["keep"]))
    except ApiError:
        return None
    # (The form's data has LF line breaks, as form_values makes them: so is the text shown.)
    if view is None or forms.newlines(_change_values(view)["data"]) != values.get("data", ""):
        return None
    return view.job


@ui_bp.get("/deadletters")
def deadletters() -> Response:
    settings, now = _settings(), now_ms()
    prefix, page = _arg("prefix", MAX_NAME_LENGTH), _arg("page")
    try:
        letters, next_page = DeadLetters(_store()).page(settings.app_id, prefix, PAGE_SIZE,
                                                        token=page)
    except ValueError as exc:  # a page token that is not one
        raise errors.malformed(str(exc)) from None
    return _page("deadletters.html", title="Dead letters", nav="deadletters", prefix=prefix,
                 rows=[letter_row(d, now) for d in letters], first_page=not page,
                 next_page=next_page)


@ui_bp.get("/deadletters/show")
def deadletter() -> Response:
    settings = _settings()
    letter_id = _arg("id")
    letter = DeadLetters(_store()).get(letter_id, settings.app_id) if letter_id else None
    if letter is None:
        return _error_page(404, f"There is no dead letter {errors.shown(letter_id, 400)} "
                                "(replayed or purged meanwhile?).")
    shown = letter_to_api(letter, with_job=True, dapr_compat=settings.dapr_compat,
                          max_data_bytes=settings.max_data_bytes)
    return _page("deadletter.html", title=f"Dead letter of {letter.name}", nav="deadletters",
                 letter=letter_row(letter, now_ms(), error_chars=MAX_SHOWN_CHARS),
                 job_json=_pretty(shown["job"]))


def _selected() -> tuple[Selection, str]:
    """The letters a replay or purge form names (`id`s, or `all` with a `prefix`), and
    how to say which."""
    ids = request.form.getlist("id")
    prefix = request.form.get("prefix", "")
    if any(len(i) > MAX_ARG_CHARS for i in ids) or len(prefix) > MAX_NAME_LENGTH:
        raise errors.malformed("a dead-letter id or prefix is too long")
    everything = request.form.get("all") == "1"
    try:
        selection = Selection.of(ids or None, prefix if everything and prefix else None,
                                 everything and not prefix, _settings().max_replay_ids)
    except SelectionError as exc:
        raise errors.malformed(str(exc)) from None
    return selection, (f"whose job name starts with {prefix!r}" if everything and prefix
                       else "")


def _count(n: int) -> str:
    return f"{n} dead letter" + ("" if n == 1 else "s")


@ui_bp.post("/deadletters/replay")
def replay() -> Response:
    selection, which = _selected()
    done = DeadLetters(_store()).replay(_settings().app_id, selection)
    flash = f"Replayed {_count(done.count)} {which}".strip() + "."
    if done.unreadable_count:
        one = done.unreadable_count == 1
        flash += (f" {_count(done.unreadable_count)} this version cannot read "
                  f"{'was' if one else 'were'} left as {'it is' if one else 'they are'}: "
                  f"purge {'it' if one else 'them'}.")
    return _redirect("ui.deadletters", flash=flash)


@ui_bp.get("/deadletters/purge")
def purge_confirm() -> Response:
    """Asks before purging all (or all by prefix); purging happens on the POST."""
    prefix = _arg("prefix", MAX_NAME_LENGTH)
    return _page("purge.html", title="Purge dead letters", nav="deadletters", prefix=prefix)


@ui_bp.post("/deadletters/purge")
def purge() -> Response:
    selection, which = _selected()
    n = DeadLetters(_store()).purge(_settings().app_id, selection)
    return _redirect("ui.deadletters", flash=f"Purged {_count(n)} {which}".strip() + ".")


@ui_bp.get("/counters")
def counters() -> Response:
    """The live counters alone: what htmx fetches every REFRESH_S seconds."""
    html = _render("_counters.html", counters=_counters_or_reason(), refresh_s=REFRESH_S)
    return Response(html, mimetype="text/html")
