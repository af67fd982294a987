"""Turning a schedule request into a Job, and a Job into the GET answer.

The request body is read the way Dapr's HTTP jobs endpoint reads it (protojson
into `JobHTTPRequest`, unknown fields discarded, pkg/api/http/jobs.go and
pkg/api/universal/jobs.go), with the checks in Dapr's order: the body, then
`name` in the body, then the name, then "Schedule is empty", then the schedule
maths (app/schedule.py).

Decisions and differences from Dapr:
- Content-Type is ignored, as Dapr ignores it: the body is always read as
  JSON (`curl -d` sends form-urlencoded and works against Dapr). An empty body
  is an empty request (so: "Schedule is empty"), as in Dapr.
- Both `dueTime` and `due_time` spellings are accepted (protojson does);
  giving both is a 400, as protojson's "duplicate field".
- `null` is the same as absent (protojson). An empty schedule, dueTime or ttl
  string is also taken as absent; Dapr would pass "" on to its scheduler and
  fail there.
- `repeats` and `maxRetries` are uint32 as in Dapr's protos: a JSON integer,
  an integral number (`3.0`) or a decimal string (`"3"`), as protojson takes
  them; booleans, fractions, negatives and values over 4294967295 are 400.
- `failurePolicy.constant.interval` is a Go duration (`3s`, `1m30s`,
  `500ms`); protojson's Duration form (`3s`, `1.5s`) is a subset of it.
  Negative is a 400 (Dapr takes it). `{}` or null as the policy means the
  default policy; both `drop` and `constant` is a 400 (a protobuf oneof).
- Job names: blank (after trimming) is DAPR_SCHEDULER_JOB_NAME_EMPTY; a name
  with `/ \\ # ?` or a control character, `.` or `..` (they cannot survive in
  a URL path), or longer than 253 characters is a 400. Dapr's scheduler
  instead requires each name, without `_ : - space`, to be a DNS-1123
  subdomain, and answers 500 otherwise; we accept more (any case, dots,
  Unicode), as design.md asks.
- Data: at most `max_data_bytes`, measured as its compact JSON, and for a
  protobuf Any also as the base64 stored and delivered; more is a 413. It may
  nest at most anydata.MAX_DATA_DEPTH (32) levels of arrays/objects, so that
  protobuf can always pack it and apps decode it (Dapr: protojson's 10000).
- GET answers the data as it was given (an Any in its JSON form with `@type`);
  Dapr answers HTTP-scheduled data wrapped as a google.protobuf.Value Any.

With `dapr_compat` (the app's Dapr compatibility switch, Settings.dapr_compat)
the data is read as Dapr reads it, into a google.protobuf.Value: any JSON value,
an `@type` object of any type with any fields included, never packed. Its JSON
text is kept exactly as it stands in the body (raw_member) and measured against
`max_data_bytes` as such; `"data": null` is data (Dapr delivers `null`). GET
answers it wrapped as Dapr 1.15+ does (anydata.dapr_get_data).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import orjson

from app.jobs import errors
from app.jobs.anydata import (
    ANY_ENVELOPE_BYTES,
    MAX_DATA_DEPTH,
    any_json_or_bytes,
    check_deliverable,
    dapr_get_data,
    is_any_json,
    is_bytes_form,
    pack_any,
    stored_any,
    stored_bytes_form,
    too_deep,
)
from app.jobs.durations import MAX_DURATION_LENGTH, NS_PER_MS, ceil_ms, go_duration_ns
from app.jobs.errors import ApiError, malformed, malformed_data, payload_too_large, shown
from app.jobs.model import (
    DEFAULT_FAILURE_POLICY,
    UINT32_MAX,
    CatchUp,
    FailureKind,
    FailurePolicy,
    Job,
    go_duration,
)
from app.jobs.restore import RESTORE_FIELD
from app.jobs.schedule import MAX_SCHEDULE_LENGTH, ScheduleError, plan

MAX_NAME_LENGTH = 253


def too_long_prefix(name: str = "prefix") -> str:
    """A name prefix's bound, said (the API's query, the CLI's option)."""
    return f"{name} is longer than a job name can be ({MAX_NAME_LENGTH})"
# deliveryTimeout's bound when the caller gives none (Settings.max_job_delivery_timeout_s).
DEFAULT_MAX_DELIVERY_TIMEOUT_MS = 25_000
_UINT32_DIGITS = len(str(UINT32_MAX))
# `/` separates app id and name in job ids; `\ # ?` and control characters
# break URLs and logs. C0, DEL and C1 are Unicode's control characters (Cc). U+FFFD is
# what invalid UTF-8 in a path decodes to: `a%FFb` and `a%FEb` would name one job.
_BAD_NAME_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f\ufffd]")
_APP_ID = re.compile(r"[A-Za-z0-9._-]{1,63}")
_INTEGER = re.compile(r"-?[0-9]+")


def is_text(value: str) -> bool:
    """Whether `value` is text UTF-8 can carry: Python keeps bytes that are not UTF-8 (in
    an environment value) and JSON's lone surrogates (`\\ud800`) as surrogates, which no
    encoder takes (a traceback wherever they were used)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_name(name: str) -> str:
    """The job name, trimmed of spaces; ApiError 400 when blank or not usable. A control
    character is refused wherever it stands: trimmed, `tr\n` would name the job `tr`."""
    trimmed = name.strip()
    if not trimmed:
        raise ApiError(400, errors.JOB_NAME_EMPTY, "Name is empty")
    if len(trimmed) > MAX_NAME_LENGTH:
        raise ApiError(
            400,
            errors.JOB_NAME_INVALID,
            f"job name is invalid: longer than {MAX_NAME_LENGTH} characters",
        )
    bad = _BAD_NAME_CHARS.search(name)
    if bad:
        raise ApiError(
            400,
            errors.JOB_NAME_INVALID,
            f"job name is invalid {shown(name)}: it must not contain {bad.group()!r}",
        )
    if trimmed in {".", ".."}:
        raise ApiError(400, errors.JOB_NAME_INVALID, f"job name is invalid: {trimmed!r}")
    return trimmed


def validate_app_id(app_id: str) -> str:
    """The app id, trimmed: 1-63 of letters, digits, `.`, `_`, `-`; ApiError 400 otherwise."""
    trimmed = app_id.strip()
    if not _APP_ID.fullmatch(trimmed) or trimmed in {".", ".."}:
        raise ApiError(
            400,
            errors.APP_ID_INVALID,
            f"app id {shown(trimmed)} is invalid: use 1 to 63 letters, digits, '.', '_' or '-'",
        )
    return trimmed


def parse_job_request(
    name: str,
    body: bytes,
    content_type: str | None,
    app_id: str,
    now_ms: int,
    max_data_bytes: int,
    *,
    dapr_compat: bool = False,
    max_delivery_timeout_ms: int = DEFAULT_MAX_DELIVERY_TIMEOUT_MS,
    delivery_format: str | None = None,
) -> tuple[Job, bool]:
    """A schedule request -> (the Job to store, overwrite). Raises ApiError.

    `content_type` is deliberately not consulted (see the module docstring);
    `dapr_compat`: keep the data as Dapr does (the module docstring); `delivery_format`:
    the app's (Settings.registration_format), whose body the data must have.
    """
    del content_type  # read as JSON whatever it says, as Dapr does
    request = _decode_body(body)

    schedule = _opt_str(request, "schedule", limit=MAX_SCHEDULE_LENGTH)
    due_time = _opt_str(request, "dueTime", "due_time", limit=MAX_DURATION_LENGTH)
    ttl = _opt_str(request, "ttl", limit=MAX_DURATION_LENGTH)
    repeats = _opt_uint32(_field(request, "repeats"), "repeats")
    overwrite = _field(request, "overwrite")
    if overwrite is None:
        overwrite = False
    elif not isinstance(overwrite, bool):
        raise malformed(f"overwrite must be true or false, got {shown(overwrite)}")
    policy = _failure_policy(_field(request, "failurePolicy", "failure_policy"))
    data_text = None
    if dapr_compat:
        data, data_text = _dapr_data(request, body, max_data_bytes)
        any_type = any_value = None
    else:
        data, any_type, any_value = _data(request.get("data"), max_data_bytes)

    if request.get("name") not in (None, ""):
        raise ApiError(400, errors.JOB_NAME, "Set the job name in the url only")
    name = validate_name(name)
    if schedule is None and due_time is None:
        raise ApiError(400, errors.SCHEDULE_EMPTY, "Schedule is empty")
    try:
        timing = plan(schedule, due_time, ttl, repeats, now_ms,
                      restoring=request.get(RESTORE_FIELD) is not None)
    except ScheduleError as exc:
        raise ApiError(400, exc.code, str(exc)) from None

    job = Job(
        app_id=app_id,
        name=name,
        data=data,
        any_type=any_type,
        any_value=any_value,
        data_text=data_text,
        schedule=schedule,
        due_time=due_time,
        repeats=repeats,
        ttl=ttl,
        failure_policy=policy,
        delivery_timeout_ms=delivery_timeout_ms(request, max_delivery_timeout_ms),
        catch_up=catch_up(request, schedule),
        first_ms=timing.first_ms,
        expires_ms=timing.expires_ms,
    )
    if delivery_format is not None:
        check_deliverable(job, delivery_format)
    return job, overwrite


def same_request(stored: Job, new: Job) -> bool:
    """Whether `new` asks for exactly the job `stored` is: the same stored record, but for
    the times resolved from the clock when each request was read (the first due time and
    the ttl expiry: a relative dueTime, a ttl or a schedule give other ones a moment
    later). A request that timed out or was answered 503 may have been stored all the
    same; its retry finds such a job, and is answered as stored instead of 409."""
    if (stored.app_id, stored.name) != (new.app_id, new.name):
        return False
    retimed = dataclasses.replace(new, first_ms=stored.first_ms, expires_ms=stored.expires_ms)
    return retimed.encode() == stored.encode()


def job_to_api(job: Job, *, dapr_compat: bool = False,
               max_data_bytes: int | None = None) -> dict[str, Any]:
    """The GET answer for a job, in the field order of Dapr's `runtime.v1.Job`;
    `dapr_compat`: `data` in Dapr 1.15+'s shape (anydata.dapr_get_data); `max_data_bytes`:
    the API's, so that an Any shown as JSON is one it takes back (any_json_or_bytes)."""
    max_json = None if max_data_bytes is None else max_data_bytes + ANY_ENVELOPE_BYTES
    out: dict[str, Any] = {"name": job.name}
    if job.schedule is not None:
        out["schedule"] = job.schedule
    if job.repeats is not None:
        out["repeats"] = job.repeats
    if job.due_time is not None:
        out["dueTime"] = job.due_time
    if job.ttl is not None:
        out["ttl"] = job.ttl
    if dapr_compat:
        if (data := dapr_get_data(job, max_json)) is not None:
            out["data"] = data
    elif job.any_type is not None:
        # An Any given over gRPC may be of a type this process has no descriptor for.
        out["data"] = any_json_or_bytes(job.any_type, job.any_value or "",
                                        max_json_bytes=max_json)
    elif job.data is not None:
        out["data"] = job.data
    # Dapr's scheduler stores its default policy when none is given, so GET always has one.
    out["failurePolicy"] = job.failure_policy.to_api()
    if job.delivery_timeout_ms is not None:
        out["deliveryTimeout"] = go_duration(job.delivery_timeout_ms)  # beyond Dapr
    if job.catch_up is not CatchUp.COALESCE:
        out["catchUp"] = job.catch_up.value  # beyond Dapr
    return out


# --- the body -----------------------------------------------------------------


def _decode_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}  # Dapr skips decoding an empty body
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if _is_bad_utf8(body):
            raise malformed("the body is not valid UTF-8") from None
        raise malformed(f"invalid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise malformed(f"the body must be a JSON object, got {json_kind(request)}")
    return request


def _is_bad_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _field(obj: dict[str, Any], camel: str, snake: str | None = None) -> Any:
    """A field by its JSON name or its proto name (protojson takes either, not both)."""
    if snake is None or snake not in obj:
        return obj.get(camel)
    if camel in obj:
        raise malformed(f"both {camel} and {snake} are given; use one")
    return obj[snake]


def _opt_str(obj: dict[str, Any], camel: str, snake: str | None = None, *,
             limit: int) -> str | None:
    value = _field(obj, camel, snake)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise malformed(f"{camel} must be a string, got {json_kind(value)}")
    if len(value) > limit:
        # Refused before any parsing: its cost, and what is stored, grow with the length.
        raise ApiError(400, errors.SCHEDULE_JOB,
                       f"{camel} is longer than {limit} characters ({len(value)})")
    return value


def _opt_uint32(value: Any, field: str) -> int | None:
    """A protobuf uint32 as protojson reads it: integer, integral number or decimal string."""
    if value is None:
        return None
    whole = (
        (isinstance(value, int) and not isinstance(value, bool))  # bool is not a JSON number
        or (isinstance(value, float) and value.is_integer())
        or (isinstance(value, str) and _INTEGER.fullmatch(value) is not None)
    )
    if not whole:
        raise malformed(f"{field} must be a whole number, got {shown(value)}")
    if isinstance(value, str):
        # Read without its leading zeros, and decided on the text when it is longer than any
        # uint32: int() refuses strings of more than 4,300 digits (ValueError).
        digits = value.lstrip("-").lstrip("0") or "0"
        if len(digits) > _UINT32_DIGITS:
            if value.startswith("-"):
                raise malformed(f"{field} must not be negative, got {shown(value)}")
            raise malformed(f"{field} must be at most {UINT32_MAX}, got {shown(value)}")
        value = ("-" if value.startswith("-") else "") + digits
    number = int(value)
    # A number as a number (the text "-1" as -1), but 1e300 as given: a float read from
    # JSON is no 301-digit integer.
    given = number if abs(number) <= UINT32_MAX * 10 else shown(value)
    if number < 0:
        raise malformed(f"{field} must not be negative, got {given}")
    if number > UINT32_MAX:
        raise malformed(f"{field} must be at most {UINT32_MAX}, got {given}")
    return number


def _failure_policy(raw: Any) -> FailurePolicy:
    if raw is None:
        return DEFAULT_FAILURE_POLICY
    if not isinstance(raw, dict):
        raise malformed(f"failurePolicy must be an object, got {json_kind(raw)}")
    drop = raw.get("drop")
    constant = raw.get("constant")
    exponential = raw.get("exponential")
    given = [k for k, v in (("drop", drop), ("constant", constant),
                            ("exponential", exponential)) if v is not None]
    if len(given) > 1:
        raise malformed(f"failurePolicy takes one of drop, constant and exponential, "
                        f"not {' and '.join(given)}")
    if drop is not None:
        if not isinstance(drop, dict):
            raise malformed(f"failurePolicy.drop must be an object, got {json_kind(drop)}")
        return FailurePolicy(FailureKind.DROP, interval_ms=0, max_retries=0)
    if exponential is not None:
        return _exponential(exponential)
    if constant is None:
        other = [k for k in raw if k not in ("drop", "constant", "exponential")]
        if other:  # no kind but another key: a kind misspelt would get the default silently
            raise malformed(f"failurePolicy takes one of drop, constant and exponential, "
                            f"got {shown(', '.join(other))}")
        return DEFAULT_FAILURE_POLICY  # `{}`: no policy chosen
    if not isinstance(constant, dict):
        raise malformed(f"failurePolicy.constant must be an object, got {json_kind(constant)}")
    interval = constant.get("interval")
    if interval is None:
        interval_ms = 0
    elif isinstance(interval, str):
        interval_ms = _interval_ms(interval)
    else:
        raise malformed(
            f"failurePolicy.constant.interval must be a duration string such as '3s', "
            f"got {json_kind(interval)}"
        )
    max_retries = _opt_uint32(
        _field(constant, "maxRetries", "max_retries"), "failurePolicy.constant.maxRetries"
    )
    return FailurePolicy(FailureKind.CONSTANT, interval_ms=interval_ms, max_retries=max_retries)


# failurePolicy.exponential (beyond Dapr; README, "Delivery policies beyond Dapr"). The
# defaults and the meaning of the fields follow Cloud Tasks' RetryConfig (max_backoff 1 h,
# doubling) and the jitter of Sidekiq and Rails' ActiveJob (a random share added).
EXP_DEFAULT_INITIAL_MS = 1000
EXP_DEFAULT_MAX_MS = 3_600_000
EXP_DEFAULT_MULTIPLIER = 2.0
EXP_DEFAULT_JITTER = 0.15
EXP_MAX_MULTIPLIER = 100.0
MAX_RETRY_INTERVAL_MS = 30 * 86_400_000  # 30 days: the intervals of an exponential policy (a
# constant one is as Dapr takes it: any duration not negative)


def _exponential(raw: Any) -> FailurePolicy:
    where = "failurePolicy.exponential"
    if not isinstance(raw, dict):
        raise malformed(f"{where} must be an object, got {json_kind(raw)}")
    # Checked in nanoseconds, as given, then kept in whole milliseconds rounded up.
    initial = _policy_duration_ns(_field(raw, "initialInterval", "initial_interval"),
                                  f"{where}.initialInterval")
    initial = EXP_DEFAULT_INITIAL_MS * NS_PER_MS if initial is None else initial
    if initial < NS_PER_MS:
        raise malformed(f"{where}.initialInterval must be at least 1ms (an interval of 0 "
                        "never grows: use constant)")
    longest = _policy_duration_ns(_field(raw, "maxInterval", "max_interval"),
                                  f"{where}.maxInterval")
    if longest is None:
        longest = max(EXP_DEFAULT_MAX_MS * NS_PER_MS, initial)
    elif longest < initial:
        raise malformed(f"{where}.maxInterval must not be shorter than its initialInterval")
    multiplier = _policy_number(raw.get("multiplier"), f"{where}.multiplier",
                                EXP_DEFAULT_MULTIPLIER, 1.0, EXP_MAX_MULTIPLIER)
    jitter = _policy_number(raw.get("jitter"), f"{where}.jitter", EXP_DEFAULT_JITTER, 0.0, 1.0)
    max_retries = _opt_uint32(_field(raw, "maxRetries", "max_retries"), f"{where}.maxRetries")
    return FailurePolicy(FailureKind.EXPONENTIAL, interval_ms=ceil_ms(initial),
                         max_retries=max_retries, max_interval_ms=ceil_ms(longest),
                         multiplier=multiplier, jitter=jitter)


def _duration_ns(value: Any, field: str, example: str) -> int:
    """A Go duration string (bounded in length) in ns; a 400 naming `field` otherwise."""
    if not isinstance(value, str):
        raise malformed(f"{field} must be a duration string such as {example!r}, "
                        f"got {json_kind(value)}")
    if len(value) > MAX_DURATION_LENGTH:
        raise malformed(f"{field} is longer than {MAX_DURATION_LENGTH} characters")
    try:
        return go_duration_ns(value)
    except ScheduleError as exc:
        raise malformed(f"{field}: {exc}") from None


def _policy_duration_ns(value: Any, field: str) -> int | None:
    """A Go duration string of a failure policy, in ns: 0 to MAX_RETRY_INTERVAL_MS."""
    if value is None:
        return None
    ns = _duration_ns(value, field, "3s")
    if ns < 0:
        raise malformed(f"{field} must not be negative, got {shown(value)}")
    if ns > MAX_RETRY_INTERVAL_MS * NS_PER_MS:
        raise malformed(f"{field} must be at most 720h (30 days), got {shown(value)}")
    return ns


def _policy_number(value: Any, field: str, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise malformed(f"{field} must be a number, got {json_kind(value)}")
    if not low <= value <= high:  # also refuses NaN
        raise malformed(f"{field} must be from {low:g} to {high:g}, got {shown(value)}")
    return float(value) + 0.0  # -0.0 as 0.0: GET shows 0, and a GET sent back is this job


def delivery_timeout_ms(request: dict[str, Any], max_ms: int) -> int | None:
    """`deliveryTimeout` (beyond Dapr): a Go duration, above 0 and at most `max_ms`
    (Settings.max_job_delivery_timeout_s: below the lease, so that a delivery is over
    before another worker may take its trigger); None when not given."""
    value = _field(request, "deliveryTimeout", "delivery_timeout")
    if value is None or value == "":
        return None
    field = "deliveryTimeout"
    ms = _duration_ns(value, field, "30s") // 1_000_000
    if ms < 1:
        raise malformed(f"{field} must be at least 1ms, got {shown(value)}")
    if ms > max_ms:
        raise malformed(f"{field} must be at most {max_ms / 1000:g}s (below the lease, "
                        f"JOBRUNNER_MAX_DELIVERY_TIMEOUT), got {shown(value)}")
    return ms


def catch_up(request: dict[str, Any], schedule: str | None) -> CatchUp:
    """`catchUp` (beyond Dapr): what a recurring job's missed occurrences become, one of
    CatchUp's values; absent, null or "": coalesce. `all` and `skip` need a schedule (a
    one-shot job has no occurrences to miss)."""
    value = _field(request, "catchUp", "catch_up")
    if value is None or value == "":
        return CatchUp.COALESCE
    choices = ", ".join(c.value for c in CatchUp)
    if not isinstance(value, str) or value not in {c.value for c in CatchUp}:
        raise malformed(f"catchUp must be one of {choices}, got {shown(value)}")
    policy = CatchUp(value)
    if policy is not CatchUp.COALESCE and schedule is None:
        raise malformed(f"catchUp {value!r} needs a schedule: a job without one fires once")
    return policy


def _interval_ms(text: str) -> int:
    try:
        ns = go_duration_ns(text)
    except ScheduleError as exc:
        raise malformed(f"failurePolicy.constant.interval: {exc}") from None
    if ns < 0:
        raise malformed(f"failurePolicy.constant.interval must not be negative, got {shown(text)}")
    return ceil_ms(ns)


def _data(data: Any, max_data_bytes: int) -> tuple[Any, str | None, str | None]:
    """(plain data, Any type URL, Any base64): one of the two forms, or all None."""
    if data is None:
        return None, None, None
    try:
        raw = orjson.dumps(data)
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels but writes only 254: such data is too deep anyway.
        raise malformed_data(f"data is nested more than {MAX_DATA_DEPTH} levels deep") from None
    any_json = is_any_json(data)
    # An Any is measured as it is kept, its bytes' base64 (below), as over gRPC, so that a
    # GET of one scheduled over gRPC goes back in (jobs export, then import): its JSON may
    # be longer by its envelope (`@type` and all). Not more: packing a JSON value past
    # the limit cost seconds and hundreds of MB before the answer refused it.
    if len(raw) > max_data_bytes + (ANY_ENVELOPE_BYTES if any_json else 0):
        raise payload_too_large(len(raw), max_data_bytes)
    if too_deep(data, raw):
        raise malformed_data(f"data is nested more than {MAX_DATA_DEPTH} levels deep")
    if not any_json:
        return data, None, None
    if is_bytes_form(data):  # as a GET shows an Any that has no JSON form
        stored = stored_bytes_form(data, max_data_bytes)
        return (None, None, None) if stored is None else (None, *stored)
    any_type, any_value = pack_any(data)
    if len(any_value) > max_data_bytes:
        raise payload_too_large(len(any_value), max_data_bytes)
    return None, any_type, any_value


def _dapr_data(request: dict[str, Any], body: bytes, max_data_bytes: int) -> tuple[Any, str | None]:
    """(data parsed, its JSON text as given) as Dapr reads it (the module docstring);
    (None, None) when the body has no `data`."""
    if "data" not in request:
        return None, None
    try:
        text = raw_member(body.decode("utf-8"), "data")
    except RecursionError:  # Python's scanner stops near 1,000 levels, orjson's at 1,024
        raise malformed(TOO_DEEP) from None
    raw = text.encode("utf-8")
    if len(raw) > max_data_bytes:
        raise payload_too_large(len(raw), max_data_bytes)
    data = request["data"]
    if too_deep(data, raw):
        raise malformed_data(f"data is nested more than {MAX_DATA_DEPTH} levels deep")
    return data, text


_SCAN = json.JSONDecoder()
TOO_DEEP = (f"the request is nested too deep to read (data may be nested {MAX_DATA_DEPTH} "
            "levels deep)")


def raw_member(text: str, key: str) -> str:
    """The exact text of the value of `key` in the JSON object `text` (the last one when
    the key repeats, as orjson reads it). `text` is known to be a JSON object that has
    the key: orjson has parsed it."""
    found = ""
    pos = _skip_space(text, text.index("{") + 1)
    while text[pos] != "}":
        name, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
        start = _skip_space(text, _skip_space(text, pos) + 1)  # past the ':'
        _, pos = _SCAN.raw_decode(text, start)
        if name == key:
            found = text[start:pos]
        pos = _skip_space(text, pos)
        if text[pos] == ",":
            pos = _skip_space(text, pos + 1)
    return found


def _skip_space(text: str, pos: int) -> int:
    while text[pos] in " \t\n\r":  # JSON's whitespace; a valid object ends in '}' first
        pos += 1
    return pos


# --- messages -----------------------------------------------------------------


def json_kind(value: Any) -> str:
    """A JSON value's kind as messages name it (\"a string\", \"an object\"...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- the gRPC API's requests --------------------------------------------------------------


def parse_job_fields(
    name: str,
    fields: dict[str, Any],
    data: tuple[str, bytes] | None,
    app_id: str,
    now_ms: int,
    max_data_bytes: int,
    delivery_format: str | None = None,
) -> tuple[Job, bool]:
    """A schedule request given as fields (the gRPC API) -> (the Job to store, overwrite).

    `fields` are what an HTTP body would hold, by their JSON names (`schedule`,
    `dueTime`, `repeats`, `ttl`, `overwrite`, `failurePolicy`), and they go through
    parse_job_request itself, so the two APIs can never disagree. `data` is a protobuf
    Any as (type URL, bytes), kept as given (anydata.stored_any). Raises ApiError.
    """
    stored = None if data is None else stored_any(data[0], data[1], max_data_bytes)
    job, overwrite = parse_job_request(
        name, orjson.dumps(fields), None, app_id, now_ms, max_data_bytes
    )
    if stored is not None:
        job = dataclasses.replace(job, any_type=stored[0], any_value=stored[1])
        if delivery_format is not None:
            check_deliverable(job, delivery_format)
    return job, overwrite
