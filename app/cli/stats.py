"""`jobrunner stats`: an app's figures, from its HTTP API (`GET /v1.0/stats`): jobs,
triggers due now, deliveries in flight, delivered / failed / dead-lettered in the last
minute and hour, lateness p50/p99, workers alive. Where the API is, its token, errors and
exit codes: app/cli/client.py."""

from __future__ import annotations

from typing import Any

import click

from app.cli.client import Api, ApiRefused, api_command, table

STATS_PATH = "/v1.0/stats"


@click.command()
@api_command
@click.option("--all", "all_apps", is_flag=True,
              help="Every app on the API's Redis (as /metrics shows them), not only the "
                   "API's own.")
def stats(api: Api, all_apps: bool) -> None:
    """Per app: jobs, triggers due now, deliveries in flight, delivered / failed /
    dead-lettered in the last minute and hour, lateness p50/p99 (from due time to first
    attempt), and the worker processes alive (they serve every app).

    The API at --url (default: this machine's, DAPR_HTTP_PORT) shows its own app; --all
    shows every app. The last minute is the last 60 to 70 s, the last hour the last 60
    to 61 min (the workers count in 10-second slots and minutes).

    Exit codes: 0 done, 1 the API said no, 2 bad usage, 3 the API cannot be reached.
    """
    doc = api.call("GET", STATS_PATH, query={"all": "true"} if all_apps else None)
    try:
        text = render(doc)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ApiRefused(200, "", f"the answer of {STATS_PATH} is not what jobrunner "
                                  "answers: is --url a jobrunner API?") from None
    api.done(text, doc)


HEADERS = ("APP", "JOBS", "DUE NOW", "IN FLIGHT", "DELIVERED 1m/1h", "FAILED 1m/1h",
           "DEAD-LETTERED 1m/1h", "LATENESS 1m p50/p99", "LATENESS 1h p50/p99", "WORKERS")


def render(doc: Any) -> str:
    """The table of a /v1.0/stats answer."""
    workers = str(int(doc["workersAlive"]))
    rows = []
    for app in doc["apps"]:
        minute, hour = app["lastMinute"], app["lastHour"]
        due = str(int(app["dueNow"])) + ("+" if app.get("dueNowCapped") else "")
        rows.append((
            str(app["appId"]), str(int(app["jobs"])), due, str(int(app["inFlight"])),
            _pair(minute["delivered"], hour["delivered"]),
            _pair(minute["failed"], hour["failed"]),
            _pair(minute["deadLettered"], hour["deadLettered"]),
            _lateness(minute["latenessMs"]), _lateness(hour["latenessMs"]), workers,
        ))
    return table(HEADERS, rows)


def _pair(a: Any, b: Any) -> str:
    return f"{int(a)}/{int(b)}"


def _lateness(percentiles: Any) -> str:
    p50, p99 = percentiles["p50"], percentiles["p99"]
    if p50 is None or p99 is None:
        return "-"
    return f"{_ms(float(p50))}/{_ms(float(p99))}"


def _ms(ms: float) -> str:
    """Three significant digits, never in exponent form (`.3g` wrote 999.6 as 1e+03)."""
    if float(f"{ms:.3g}") < 1000:
        return f"{ms:.3g}ms"
    seconds = ms / 1000
    return f"{seconds:.3g}s" if float(f"{seconds:.3g}") < 1000 else f"{seconds:.0f}s"
