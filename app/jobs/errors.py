"""API errors: one exception type and every error code the HTTP API answers with.

Every error body is `{"errorCode": "...", "message": "..."}`, as Dapr's.
Codes come from Dapr's `pkg/messages/errorcodes/errorcodes.go` where Dapr has
one for the case, with the messages of `pkg/api/errors/scheduler.go`,
`pkg/api/errors/errors.go` and `pkg/messages/predefined.go`. Codes marked
"ours" do not exist in Dapr; they keep its naming style.

Differences from Dapr (design.md wins):
- Dapr's error bodies also carry a `details` list (google.rpc.ErrorInfo); ours
  do not.
- Unknown job on GET: Dapr answers 500 DAPR_SCHEDULER_GET_JOB; we answer 404
  DAPR_SCHEDULER_JOB_NOT_FOUND (the message still starts "failed to get job").
- Invalid schedule, dueTime, ttl or repeats: Dapr passes them to its scheduler
  and answers 500 DAPR_SCHEDULER_SCHEDULE_JOB; we answer 400 with that code.
- A job name Dapr's scheduler rejects is a 500 there; a name we reject is a 400.
- Data over the limit: Dapr cuts the body at --max-body-size and answers 400
  ERR_BODY_READ; we answer 413.
- A wrong API token: Dapr answers 401 with the plain text "invalid api token";
  we answer 401 with a JSON error body.
- Redis down: 503 (Dapr waits up to 30 s for its scheduler, then answers 504).
"""

from __future__ import annotations

# Dapr's codes (pkg/messages/errorcodes/errorcodes.go).
MALFORMED_REQUEST = "ERR_MALFORMED_REQUEST"  # body is not the JSON a job needs
MALFORMED_REQUEST_DATA = "ERR_MALFORMED_REQUEST_DATA"  # `data` cannot be made a protobuf Any
INTERNAL = "ERR_INTERNAL"
JOB_NAME = "DAPR_SCHEDULER_JOB_NAME"  # `name` set in the body, not only in the URL
JOB_NAME_EMPTY = "DAPR_SCHEDULER_JOB_NAME_EMPTY"
SCHEDULE_EMPTY = "DAPR_SCHEDULER_SCHEDULE_EMPTY"  # neither schedule nor dueTime
# Scheduling failed. Dapr has no finer code for a bad schedule, dueTime, ttl or
# repeats (its scheduler's validation error comes back under this one), so
# app/schedule.py raises those with it, and they are answered 400 here. It is
# also Dapr's code for its 409.
SCHEDULE_JOB = "DAPR_SCHEDULER_SCHEDULE_JOB"
# Dapr answers an existing name (overwrite not true) with 409 and SCHEDULE_JOB.
JOB_EXISTS = SCHEDULE_JOB

# Ours.
JOB_NAME_INVALID = "DAPR_SCHEDULER_JOB_NAME_INVALID"
JOB_NOT_FOUND = "DAPR_SCHEDULER_JOB_NOT_FOUND"
PAYLOAD_TOO_LARGE = "ERR_PAYLOAD_TOO_LARGE"
REDIS_UNAVAILABLE = "ERR_REDIS_UNAVAILABLE"
UNAUTHORIZED = "ERR_UNAUTHORIZED"
APP_ID_INVALID = "ERR_APP_ID_INVALID"
NOT_FOUND = "ERR_NOT_FOUND"  # no such route
METHOD_NOT_ALLOWED = "ERR_METHOD_NOT_ALLOWED"
# A token-less API refuses a browser's request from another site (app/api/callers.py).
HOST_NOT_ALLOWED = "ERR_HOST_NOT_ALLOWED"
CROSS_SITE = "ERR_CROSS_SITE_REQUEST"
# A stored job this version cannot read: its record edited by hand, or written by a version
# that stores jobs otherwise. The request was fine; the stored data is not (hence a 500).
JOB_UNREADABLE = "DAPR_SCHEDULER_JOB_UNREADABLE"
# The app holds as many jobs as JOBRUNNER_APP_MAX_JOBS lets it (a partition's share), or
# a job as many "trigger now" one-shots waiting to go as it may (keys.FIRED_NOW_PRUNE_AT).
APP_JOB_LIMIT = "ERR_APP_JOB_LIMIT"


class JobrunnerError(Exception):
    """The root of every error jobrunner raises on purpose (one `except` catches them all)."""


class ApiError(JobrunnerError):
    """An error the API answers with `status` and `{"errorCode", "message"}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_body(self) -> dict[str, str]:
        return {"errorCode": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


# Constructors for the errors raised in more than one place, so their messages agree.


def shown(value: object, limit: int = 60) -> str:
    """A caller's value in a message: its repr, cut to `limit` characters (a value can be
    a megabyte long, and a message never repeats a long input whole)."""
    return cut(repr(value), limit)


def cut(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters, ending in "..." when it was longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def malformed(detail: str) -> ApiError:
    # Dapr's messages.ErrMalformedRequest text.
    return ApiError(400, MALFORMED_REQUEST, f"failed deserializing HTTP body: {detail}")


# Of the reason a stored job cannot be read: a message stays short whatever the record.
_WHY_CHARS = 200


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_WHY_CHARS]


def unreadable_job(name: str, exc: Exception) -> ApiError:
    return ApiError(500, JOB_UNREADABLE,
                    f"job {name!r} is stored in a form this version cannot read "
                    f"({_why(exc)}); schedule it again with overwrite, or delete it")


def unreadable_letter(letter_id: str | None, exc: BaseException) -> ApiError:
    """A dead letter, or the job it keeps, that this version cannot read: purging the
    letter mends it (its job's own record is another matter)."""
    which = "a dead letter of this app" if letter_id is None else f"dead letter {letter_id!r}"
    return ApiError(500, JOB_UNREADABLE,
                    f"{which} is stored in a form this version cannot read ({_why(exc)}); "
                    "purge it (by id or prefix)")


def bad_query(detail: str) -> ApiError:
    """A query-string argument that is not one the route takes."""
    return ApiError(400, MALFORMED_REQUEST, f"invalid query: {detail}")


def malformed_data(detail: str) -> ApiError:
    # Dapr's messages.ErrMalformedRequestData text.
    return ApiError(400, MALFORMED_REQUEST_DATA, f"can't serialize request data field: {detail}")


def app_job_limit(name: str, limit: int, partitions: int = 1) -> ApiError:
    where = ("" if partitions == 1 else
             f" in this job's partition, one of {partitions} that share it out")
    return ApiError(429, APP_JOB_LIMIT,
                    f"failed to schedule job {shown(name, 80)}: the app holds as many jobs as it "
                    f"may (JOBRUNNER_APP_MAX_JOBS, {limit}){where}; delete some, or raise it")


def too_many_fired_now(name: str, most: int) -> ApiError:
    return ApiError(429, APP_JOB_LIMIT,
                    f"job {shown(name, 80)} has {most} triggers fired now waiting to go (its "
                    f"app's receiver down or slow): each is a copy of the job; try again once "
                    f"they have gone")


def job_exists(name: str) -> ApiError:
    # Dapr relays its scheduler's "job already exists: '<key>'".
    return ApiError(409, JOB_EXISTS, f"failed to schedule job due to: job already exists: '{name}'")


def job_not_found(name: str) -> ApiError:
    return ApiError(404, JOB_NOT_FOUND, f"failed to get job due to: job not found: {name}")


def payload_too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413, PAYLOAD_TOO_LARGE, f"job data is {size} bytes, more than the limit of {limit} bytes"
    )


def redis_unavailable(detail: str) -> ApiError:
    return ApiError(503, REDIS_UNAVAILABLE, f"the job store (Redis) is unavailable: {detail}")


def unauthorized() -> ApiError:
    # Dapr's text for a missing or wrong dapr-api-token.
    return ApiError(401, UNAUTHORIZED, "invalid api token")
