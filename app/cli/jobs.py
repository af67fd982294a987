"""`jobrunner jobs`: schedule, get, list, delete, export and import the jobs of an app, and
show a job's trigger history, through its HTTP API (app/cli/client.py: where the API is,
its token, errors, exit codes).

An API process serves one app, so `--url` chooses the app. Text for people by default
(aligned columns, times as the API gives them: RFC 3339, UTC); `--json` for scripts: one
JSON document, or JSON lines for `list`. `export` writes the jobs as JSON lines exactly as
GET answers them, and `import` schedules each line back, sending the GET answer as the
body: the API reads the extension fields of that answer (`nextTriggerTime`,
`triggerCount`, `lastTriggerTime`, `expiryTime`) to put each job back where it stood.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

import click

from app.cli.client import (
    JOBS_PATH,
    Api,
    ApiRefused,
    ApiUnreachable,
    api_command,
    job_path,
    table,
)
from app.jobs.validation import is_text

# `list` shows this many jobs unless --limit says otherwise (0: all).
DEFAULT_LIST_LIMIT = 100
# `delete --prefix` counts the jobs it is about to delete up to this many before it asks.
COUNT_BEFORE_DELETE = 10_000
# The largest --data-file and the longest line of an import: the API's own limit on a
# body is lower (4 x JOBRUNNER_MAX_DATA_BYTES); this only keeps a wrong file out of memory.
MAX_INPUT_BYTES = 64 * 1024 * 1024

# A job's catchUp (app/jobs/model.py CatchUp); the app's pause (app/api/controls.py).
CATCH_UP = ("coalesce", "all", "skip")
APP_PATH = "/v1.0/app"

# The order of a job's fields in `get`; fields the API adds later follow in its order.
_FIELDS = ("name", "schedule", "dueTime", "repeats", "ttl", "data", "failurePolicy", "status",
           "nextTriggerTime", "lastTriggerTime", "expiryTime", "triggerCount", "attempt")


class _InputFile(click.File):
    """A file to read, `-` for stdin; `-` on a closed stdin is a usage error (click's own
    RuntimeError was a traceback)."""

    def __init__(self) -> None:
        super().__init__("rb")

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except RuntimeError:  # "Was not able to determine binary stream for sys.stdin."
            self.fail("stdin is closed: give a file, or send the input in", param, ctx)


@click.group()
def jobs() -> None:
    """The jobs of an app, through its HTTP API: this machine's (DAPR_HTTP_PORT), or the
    one at --url, with the token in DAPR_API_TOKEN.

    Exit codes: 0 done, 1 the API said no (not found, bad input, wrong token, ...),
    2 bad usage, 3 the API cannot be reached.
    """


# --- schedule ------------------------------------------------------------------------------


@jobs.command()
@api_command
@click.argument("name")
@click.option("--due-time", metavar="WHEN",
              help="First (or only) trigger: RFC 3339 time, or a duration from now (2s, PT2S).")
@click.option("--schedule", metavar="SCHEDULE",
              help="Cron with seconds first ('0 30 9 * * MON-FRI'), @daily, '@every 5s', ...")
@click.option("--repeats", type=click.IntRange(0, 2**32 - 1), metavar="N",
              help="Fire at most N times (0: no limit).")
@click.option("--ttl", metavar="WHEN", help="When the job ends: RFC 3339 time or a duration.")
@click.option("--data", "data_json", metavar="JSON",
              help="The job's data, any JSON value: '{\"k\": 1}', '\"text\"', 42.")
@click.option("--data-file", type=_InputFile(), metavar="FILE",
              help="The job's data from a JSON file (- for stdin).")
@click.option("--failure-policy", "policy", metavar="POLICY",
              help="drop, constant[:INTERVAL[:MAX_RETRIES]] (constant:3s:5; no MAX_RETRIES: "
                   "retry forever), or the API's JSON object.  [default: constant:1s:3]")
@click.option("--catch-up", type=click.Choice(CATCH_UP), default=None,
              help="What the occurrences a recurring job misses (no worker running, paused) "
                   "become: one trigger (coalesce), each of them (all) or none (skip).  "
                   "[default: coalesce]")
@click.option("--overwrite", is_flag=True, help="Replace a job of that name.")
def schedule(api: Api, name: str, due_time: str | None, schedule: str | None,
             repeats: int | None, ttl: str | None, data_json: str | None,
             data_file: IO[bytes] | None, policy: str | None, catch_up: str | None,
             overwrite: bool) -> None:
    """Schedule the job NAME (at least one of --due-time and --schedule)."""
    if due_time is None and schedule is None:
        raise click.UsageError("say when: --due-time, --schedule, or both")
    body: dict[str, Any] = {}
    for key, value in (("dueTime", due_time), ("schedule", schedule), ("repeats", repeats),
                       ("ttl", ttl)):
        if value is not None:
            body[key] = value
    if data_json is not None and data_file is not None:
        raise click.UsageError("give --data or --data-file, not both")
    if data_json is not None:
        body["data"] = _json_option(data_json.encode(), "--data")
    elif data_file is not None:
        body["data"] = _json_option(_read_bounded(data_file, "--data-file"), "--data-file")
    if policy is not None:
        body["failurePolicy"] = _failure_policy(policy)
    if catch_up is not None:
        body["catchUp"] = catch_up
    if overwrite:
        body["overwrite"] = True
    api.call("POST", job_path(name), body=body)
    try:
        job = _shaped(api.call("GET", job_path(name)), "name", "a job")
    except ApiRefused as e:
        if e.status != 404:
            raise
        job = None  # due at once and already done: a one-shot job is gone once it fired
    if job is None:
        api.done(f"scheduled {name!r} (it has fired already)", {"name": name})
    else:
        api.done(f"scheduled {name!r}: next trigger {_cell(job.get('nextTriggerTime'))}", job)


def _shaped(answer: Any, key: str, what: str) -> dict[str, Any]:
    """`answer`, a JSON object with the text field `key` as every such answer of the API
    has; else an error that says so (another server's JSON would print as nonsense)."""
    if not isinstance(answer, dict) or not isinstance(answer.get(key), str):
        raise ApiRefused(200, "", f"the answer is not {what}: is --url a jobrunner API?")
    return answer


def _json_option(raw: bytes, option: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than json reads
        raise click.BadParameter(
            f"not JSON ({e}); text is written in quotes: '\"text\"'", param_hint=option
        ) from None


def _read_bounded(source: IO[bytes], option: str) -> bytes:
    raw = source.read(MAX_INPUT_BYTES + 1)
    if len(raw) > MAX_INPUT_BYTES:
        raise click.BadParameter(f"more than {MAX_INPUT_BYTES // (1024 * 1024)} MiB",
                                 param_hint=option)
    return raw


def _failure_policy(text: str) -> dict[str, Any]:
    text = text.strip()
    if text.startswith("{"):
        policy = _json_option(text.encode(), "--failure-policy")
        if not isinstance(policy, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--failure-policy")
        return policy
    kind, *rest = text.split(":")
    if kind == "drop" and not rest:
        return {"drop": {}}
    if kind == "constant" and len(rest) <= 2:
        constant: dict[str, Any] = {}
        if rest and rest[0]:
            constant["interval"] = rest[0]
        if len(rest) == 2:
            if not rest[1].isdigit():
                raise click.BadParameter(f"MAX_RETRIES must be a whole number: {rest[1]!r}",
                                         param_hint="--failure-policy")
            constant["maxRetries"] = int(rest[1])
        return {"constant": constant}
    raise click.BadParameter(
        f"{text!r}: use drop, constant:INTERVAL:MAX_RETRIES (constant:3s:5) or a JSON object",
        param_hint="--failure-policy")


# --- get, list -----------------------------------------------------------------------------


@jobs.command()
@api_command
@click.argument("name")
def get(api: Api, name: str) -> None:
    """Show the job NAME: its schedule, data, policy and where it stands."""
    job = _shaped(api.call("GET", job_path(name)), "name", "a job")
    api.done(lambda: _describe(job), job)


def _describe(job: dict[str, Any]) -> str:
    keys = [k for k in _FIELDS if k in job or k in ("schedule", "dueTime")]
    keys += [k for k in job if k not in _FIELDS]
    return table(None, [(k, _value(k, job)) for k in keys])


def _value(key: str, job: dict[str, Any]) -> str:
    if key == "failurePolicy":
        return _policy(job[key])
    if key == "data":  # JSON, so that the text "1" and the number 1 differ
        return json.dumps(job[key], ensure_ascii=False)
    return _cell(job.get(key))


@jobs.command("list")
@api_command
@click.option("--prefix", default="", help="Only jobs whose name starts with this.")
@click.option("--limit", type=click.IntRange(0, None), default=DEFAULT_LIST_LIMIT,
              show_default=True, help="At most this many jobs; 0: all of them.")
def list_cmd(api: Api, prefix: str, limit: int) -> None:
    """List the jobs, page after page: a table sorted by name, or JSON lines with --json."""
    # One more than the limit, to know whether the limit left some out.
    found = api.client.pages(JOBS_PATH, "jobs", {"prefix": prefix}, limit + 1 if limit else None)
    if api.as_json:
        shown = api.lines(_first(found, limit))
        more = next(found, None) is not None
    else:
        rows = list(_first(found, limit))
        more = next(found, None) is not None
        shown = len(rows)
        if rows:
            rows.sort(key=lambda j: str(j.get("name")).casefold())
            click.echo(table(("NAME", "SCHEDULE", "NEXT TRIGGER", "LAST TRIGGER", "TRIGGERS",
                              "STATUS"), [_list_row(j) for j in rows]))
    if more:
        click.echo(f"(the first {limit} jobs; --limit 0 lists all)", err=True)
    elif not shown and not api.as_json:
        click.echo(f"no jobs{_whose(prefix)}", err=True)


def _first(items: Iterator[dict[str, Any]], limit: int) -> Iterator[dict[str, Any]]:
    for n, item in enumerate(items, 1):
        yield item
        if n == limit:
            return


def _list_row(job: dict[str, Any]) -> tuple[str, ...]:
    count = _cell(job.get("triggerCount"))
    if job.get("repeats"):
        count += f"/{job['repeats']}"
    return (_cell(job.get("name")), _cell(job.get("schedule", "once")),
            _cell(job.get("nextTriggerTime")), _cell(job.get("lastTriggerTime")), count,
            _cell(job.get("status")))


# --- history -------------------------------------------------------------------------------


@jobs.command()
@api_command
@click.argument("name")
def history(api: Api, name: str) -> None:
    """Show the last outcomes of the job NAME, newest first: when each trigger was due and
    sent, the attempt, what the app answered (or the error) and how long it took. Also for
    a job that has finished, while the workers keep its history (JOBRUNNER_HISTORY_TTL)."""
    answer = api.call("GET", job_path(name) + "/history")
    if not isinstance(answer, dict) or not isinstance(answer.get("history"), list):
        raise ApiRefused(200, "", "the answer has no 'history' list: is --url a jobrunner API?")
    if api.as_json:
        api.done("", answer)
        return
    if answer["history"]:
        click.echo(_history_table(answer))
    if not answer.get("jobExists"):
        until = answer.get("keptUntil")
        click.echo(f"{name!r} is over (no trigger left)"
                   + (f"; its history is kept until {until}" if until else ""), err=True)
    if not answer["history"]:
        click.echo(f"no outcomes of {name!r} recorded yet", err=True)


def _history_table(answer: dict[str, Any]) -> str:
    rows = [(_cell(e.get("scheduledTime")), _cell(e.get("deliveredTime")),
             _cell(e.get("attempt")), _cell(e.get("result")), _cell(e.get("status")),
             _duration(e.get("durationMs")), _cell(e.get("error")))
            for e in answer["history"] if isinstance(e, dict)]
    return table(("SCHEDULED", "SENT", "ATTEMPT", "RESULT", "STATUS", "DURATION", "ERROR"),
                 rows)


def _duration(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    if ms < 10:
        return f"{ms:.2f}ms"
    if ms < 1000:
        return f"{ms:.1f}ms"
    return f"{ms / 1000:.2f}s"


# --- pause, resume, trigger -----------------------------------------------------------------


@jobs.command()
@api_command
@click.argument("name", required=False)
@click.option("--all", "whole_app", is_flag=True,
              help="Pause the app: every job, and each one scheduled while it is paused.")
def pause(api: Api, name: str | None, whole_app: bool) -> None:
    """Pause the job NAME, or the app (--all): it keeps its schedule and fires nothing
    until resumed. A trigger being delivered is finished. What falls due meanwhile
    follows the job's catch-up policy once it is resumed."""
    _pause_or_resume(api, "pause", name, whole_app)


@jobs.command()
@api_command
@click.argument("name", required=False)
@click.option("--all", "whole_app", is_flag=True,
              help="Resume the app (a job paused by itself stays paused).")
def resume(api: Api, name: str | None, whole_app: bool) -> None:
    """Resume the job NAME, or the app (--all). The occurrences missed while paused
    follow the job's catch-up policy: one trigger at once (coalesce), each of them (all),
    or none (skip)."""
    _pause_or_resume(api, "resume", name, whole_app)


def _pause_or_resume(api: Api, action: str, name: str | None, whole_app: bool) -> None:
    if (name is None) == (not whole_app):
        raise click.UsageError(f"say what to {action}: NAME, or --all for the app (not both)")
    past = f"{action}d"
    if name is None:
        state = _shaped(api.call("POST", f"{APP_PATH}/{action}"), "appId", "the app's state")
        n = state.get("jobs")
        api.done(f"{past} app {state.get('appId')!r} ({n} job{'s' if n != 1 else ''})",
                 state)
        return
    job = _shaped(api.call("POST", job_path(name) + f"/{action}"), "name", "a job")
    nxt = _cell(job.get("nextTriggerTime"))
    if job.get("paused") or job.get("appPaused"):
        why = "" if job.get("paused") else " (its app is paused)"
        text = f"{name!r} is paused{why}: its next trigger {nxt} waits"
    else:
        text = f"{past} {name!r}: next trigger {nxt}"
    api.done(text, job)


@jobs.command()
@api_command
@click.argument("name")
def trigger(api: Api, name: str) -> None:
    """Fire the job NAME once now, beside its schedule (also when it is paused): one
    extra trigger with an idempotency id of its own; the schedule is not touched."""
    fired = _shaped(api.call("POST", job_path(name) + "/trigger"), "triggerId", "a trigger")
    api.done(f"triggered {name!r}: trigger {fired.get('triggerId')} is due now", fired)


# --- delete --------------------------------------------------------------------------------


@jobs.command()
@api_command
@click.argument("name", required=False)
@click.option("--prefix", default=None,
              help="Every job whose name starts with this ('' : every job of the app).")
@click.option("--yes", "-y", is_flag=True, help="Delete by prefix without asking.")
def delete(api: Api, name: str | None, prefix: str | None, yes: bool) -> None:
    """Delete the job NAME, or every job whose name starts with --prefix (after asking)."""
    if (name is None) == (prefix is None):
        raise click.UsageError("say which jobs: NAME, or --prefix P (not both)")
    if name is not None:
        api.call("GET", job_path(name))  # a name that is not there: 404, said as such
        api.call("DELETE", job_path(name))
        api.done(f"deleted {name!r}", {"deleted": name})
        return
    assert prefix is not None
    if not yes:
        counted = sum(1 for _ in api.client.pages(JOBS_PATH, "jobs", {"prefix": prefix},
                                                  COUNT_BEFORE_DELETE + 1))
        if not counted:
            api.done(f"no jobs{_whose(prefix)}: nothing to delete", {"deleted": 0})
            return
        many = f"more than {COUNT_BEFORE_DELETE:,}" if counted > COUNT_BEFORE_DELETE \
            else f"{counted:,}"
        question = f"Delete {many} job{'s' if counted != 1 else ''}{_whose(prefix)} " \
                   f"at {api.client.base_url}?"
        try:
            confirmed = click.confirm(question, default=False, err=True)
        except (click.Abort, RuntimeError):  # end of input, or none (closed): no answer is no
            confirmed = False
        if not confirmed:
            raise click.ClickException("nothing deleted (--yes deletes without asking)")
    answer = api.call("DELETE", JOBS_PATH, query={"prefix": prefix})
    deleted = answer.get("deleted") if isinstance(answer, dict) else None
    if not isinstance(deleted, int):
        raise ApiRefused(200, "", "the answer does not say how many jobs were deleted: "
                                  "is --url a jobrunner API?")
    api.done(f"deleted {deleted} job{'s' if deleted != 1 else ''}{_whose(prefix)}",
             {"deleted": deleted})


def _whose(prefix: str) -> str:
    return f" whose name starts with {prefix!r}" if prefix else ""


# --- export, import ------------------------------------------------------------------------


@jobs.command()
@api_command(json_option=False)
@click.option("--prefix", default="", help="Only jobs whose name starts with this.")
def export(api: Api, prefix: str) -> None:
    """Write every job (or those starting with --prefix) to stdout as JSON lines, each as
    GET answers it: `jobrunner jobs export > jobs.jsonl`."""
    n = api.lines(api.client.pages(JOBS_PATH, "jobs", {"prefix": prefix}))
    click.echo(f"exported {n} job{'s' if n != 1 else ''}{_whose(prefix)}", err=True)


@jobs.command("import")
@api_command
@click.argument("source", type=_InputFile(), default="-")
@click.option("--overwrite", is_flag=True, help="Replace jobs that exist; else they fail (409).")
def import_cmd(api: Api, source: IO[bytes], overwrite: bool) -> None:
    """Schedule the jobs of an export (SOURCE, default stdin), each where it stood: its
    next trigger (when still ahead), trigger count and last trigger come back with it.

    Every line is tried; one that fails is reported and the rest go on (exit 1 at the
    end). `jobrunner jobs import < jobs.jsonl`"""
    imported = 0
    failed = _Failures()
    batch: list[_Line] = []
    size = 0
    for number, line in _lines(source):
        name: Any = None
        try:
            job = json.loads(line)
            name = job.get("name") if isinstance(job, dict) else None
            if not isinstance(name, str) or not name.strip():
                raise ValueError("not a job: a JSON object with a name is expected")
            if not is_text(name):
                raise ValueError("the name is not Unicode text: it holds a lone surrogate")
        except RecursionError:
            batch.append((number, None, None, _failure(number, None, None, "",
                                                       "not JSON: nested too deep")))
        except ValueError as e:
            batch.append((number, name, None, _failure(number, name, None, "", str(e))))
        else:
            body = {k: v for k, v in job.items() if k != "name"}
            body["overwrite"] = overwrite
            batch.append((number, name, body, None))
            size += len(line)
        if len(batch) >= IMPORT_BATCH_JOBS or size >= IMPORT_BATCH_BYTES:
            imported += _import(api, batch, failed, imported)
            batch, size = [], 0
    imported += _import(api, batch, failed, imported)
    api.done(f"imported {imported} job{'s' if imported != 1 else ''}", {
        "imported": imported, "failed": failed.kept,
        **({"failedCount": failed.count} if failed.count > len(failed.kept) else {})})
    if failed.count:
        raise click.ClickException(f"{failed.count} of {imported + failed.count} not imported")


class _Failures:
    """An import's failures: each said on stderr at once, the first MAX_KEPT_FAILURES kept
    for the JSON summary, all counted (a file of a million bad lines held them all)."""

    def __init__(self) -> None:
        self.kept: list[dict[str, Any]] = []
        self.count = 0

    def append(self, failure: dict[str, Any]) -> None:
        _report(failure)
        self.count += 1
        if len(self.kept) < MAX_KEPT_FAILURES:
            self.kept.append(failure)


MAX_KEPT_FAILURES = 1000


# An import's lines go out in bulk requests (POST .../jobs: each job gets the answer the
# single route would give it) of at most this many jobs and bytes of lines, under the
# API's defaults (JOBRUNNER_BULK_MAX_JOBS 1000, JOBRUNNER_BULK_MAX_BYTES 8 MiB). An API
# that refuses the request as a whole (lower limits, no bulk route) gets them one by one.
IMPORT_BATCH_JOBS = 500
IMPORT_BATCH_BYTES = 4 * 1024 * 1024
# The answers that refuse a bulk request as a whole but may take its jobs one by one: a
# request over its limits (400, 413), no bulk route (404, 405); a 200 without a result
# for each job (another server). Not 401/403 or 5xx: each job would meet them too.
WHOLE_REQUEST_REFUSALS = frozenset({200, 400, 404, 405, 413})

# A line of an import: its number, the job's name, and its body, or (None) the failure
# that reading it already was, reported in line order with the answers of the rest.
_Line = tuple[int, Any, dict[str, Any] | None, dict[str, Any] | None]


def _import(api: Api, batch: list[_Line], failed: _Failures, before: int) -> int:
    """Schedules the batch's jobs; adds their failures to `failed` (each reported on stderr,
    in line order); returns how many were imported."""
    to_send = [(number, name, body) for number, name, body, _ in batch if body is not None]
    try:
        answer = api.call("POST", JOBS_PATH, body={"jobs": [
            {**body, "name": name} for _, name, body in to_send]}) if to_send else {"results": []}
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(to_send):
            raise ApiRefused(200, "", "the bulk answer has no result for each job")
        outcomes = {number: result for (number, _, _), result in zip(to_send, results, strict=True)}
    except ApiRefused as e:
        if e.status not in WHOLE_REQUEST_REFUSALS:  # each job alone would meet it too
            raise ApiRefused(e.status, e.code, f"{e.api_message} (after {before} imported)"
                             ) from None
        outcomes = {}
        for number, name, body in to_send:
            outcomes[number] = outcome = _one(api, name, body, before)
            before += outcome["status"] == 204
    except ApiUnreachable as e:
        raise ApiUnreachable(f"{e.message} (after {before} imported)") from None
    imported = 0
    for number, name, _, failure in batch:
        if failure is None:
            outcome = outcomes[number]
            if outcome.get("status") == 204:
                imported += 1
                continue
            failure = _failure(number, name, outcome.get("status"),
                               str(outcome.get("errorCode", "")), str(outcome.get("message", "")))
        failed.append(failure)
    return imported


def _one(api: Api, name: str, body: dict[str, Any], before: int) -> dict[str, Any]:
    """One job through the single route, its outcome as the bulk route gives it."""
    try:
        api.call("POST", job_path(name), body=body)
    except ApiRefused as e:
        return {"status": e.status, "errorCode": e.code, "message": e.api_message}
    except ApiUnreachable as e:
        raise ApiUnreachable(f"{e.message} (after {before} imported)") from None
    return {"status": 204}


def _lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    number = 0
    while line := source.readline(MAX_INPUT_BYTES + 1):
        number += 1
        if len(line) > MAX_INPUT_BYTES:
            raise click.ClickException(
                f"line {number} is longer than {MAX_INPUT_BYTES // (1024 * 1024)} MiB: "
                "not an export of jobrunner jobs")
        if line.strip():
            yield number, line


def _failure(line: int, name: Any, status: int | None, code: str, message: str) -> dict[str, Any]:
    return {"line": line, "name": name if isinstance(name, str) else None, "status": status,
            "errorCode": code, "message": message}


def _report(failure: dict[str, Any]) -> dict[str, Any]:
    """The failure, said on stderr."""
    name, status = failure["name"], failure["status"]
    what = f"line {failure['line']}" + (f" (job {name!r})" if isinstance(name, str) else "")
    said = f"{status} {failure['errorCode']}: " if status is not None else ""
    click.echo(f"{what}: {said}{failure['message']}", err=True)
    return failure


# --- text ----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _policy(policy: Any) -> str:
    """`drop`, `constant 1s, 3 retries` or `constant 1s, retries forever`."""
    if isinstance(policy, dict) and "drop" in policy:
        return "drop"
    constant = policy.get("constant") if isinstance(policy, dict) else None
    if not isinstance(constant, dict):
        return _cell(policy)
    retries = constant.get("maxRetries")
    return (f"constant {constant.get('interval', '0s')}, "
            + ("retries forever" if retries is None
               else f"{retries} retr{'y' if retries == 1 else 'ies'}"))
