"""`jobrunner dlq`: the dead-letter queue from the command line (list, show, replay, purge)."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import click
import orjson
import redis

from app.cli.client import printable, utf8
from app.cli.options import check_app_id
from app.jobs.errors import shown
from app.jobs.model import DeadLetter
from app.jobs.validation import MAX_NAME_LENGTH, too_long_prefix
from app.processes.redis_server import require_redis
from app.processes.service_state import jobrunner_home, read_state
from app.settings import Settings
from app.store.deadletters import (
    DeadLetters,
    Replayed,
    Selection,
    SelectionError,
    letter_to_api,
)
from app.store.redis_client import UNAVAILABLE
from app.store.store import Store


def _store(redis_url: str | None, app_id: str) -> Store:
    """The store at --redis-url / REDIS_URL / REDIS_PORT, else the shared service's Redis."""
    env = dict(os.environ)
    if redis_url:
        env["REDIS_URL"] = redis_url
    elif not env.get("REDIS_URL", "").strip() and not env.get("REDIS_PORT", "").strip():
        state = read_state(jobrunner_home())
        if state is None or not state.alive():
            raise click.ClickException(
                "no Redis to read: give --redis-url (or REDIS_URL), or start jobrunner first")
        env.update(REDIS_URL=state.redis_url, JOBRUNNER_PREFIX=state.prefix,
                   JOBRUNNER_PARTITIONS=str(state.partitions))
    env["APP_ID"] = app_id
    settings = Settings.from_env(env)
    # A bad URL, a wrong database or no Redis: said in one line, at once (an inspection
    # waits for no Redis to start).
    require_redis(settings.redis_url, settings.redis_cluster, timeout=0.0)
    return Store(settings)


def _selection(store: Store, ids: tuple[str, ...], prefix: str | None,
               everything: bool) -> Selection:
    """Exactly one of ID..., a non-empty --prefix, or --all (the API's rule: an empty
    prefix selects nothing, never everything)."""
    given = [what for what, on in (("ID...", ids), ("--prefix", prefix), ("--all", everything))
             if on]
    if len(given) != 1:
        raise click.UsageError(
            "say which dead letters: ID..., --prefix P (not empty), or --all" if not given
            else f"give one of ID..., --prefix or --all, not {' and '.join(given)}")
    try:
        return Selection.of(list(ids) or None, prefix, everything,
                            store.settings.max_replay_ids)
    except SelectionError as exc:
        raise click.UsageError(str(exc)) from None


def _text(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A name prefix or letter ids, known to be UTF-8 text (client.utf8); a prefix no
    longer than a name (the API's bound)."""
    what = param.name or "value"
    if isinstance(value, tuple):
        return tuple(utf8(v, what) for v in value)
    if value is not None and what == "prefix" and len(value) > MAX_NAME_LENGTH:
        raise click.BadParameter(too_long_prefix())
    return value if value is None else utf8(value, what)


def _line(d: DeadLetter) -> str:
    return f"{printable(d.id)}\tattempts={d.attempts}\t{printable(d.error)}"


_common = [
    click.option("--app-id", envvar="APP_ID", default="job-service", show_default=True,
                 callback=check_app_id, help="Whose dead letters."),
    click.option("--redis-url", envvar="REDIS_URL", metavar="URL",
                 help="The Redis to read; default: the running jobrunner's."),
]


def common(f: Any) -> Any:
    for option in reversed(_common):
        f = option(f)
    return f


@click.group()
def dlq() -> None:
    """The dead-letter queue: triggers whose failure policy was spent."""


@dlq.command("list")
@common
@click.option("--prefix", default="", callback=_text,
              help="Only jobs whose name starts with this.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
def list_cmd(app_id: str, redis_url: str | None, prefix: str, limit: int) -> None:
    """List dead letters, oldest first."""
    dead = DeadLetters(_guard(lambda: _store(redis_url, app_id)))
    shown, token = 0, ""
    while shown < limit:  # page by page: a page is bounded in letters and in bytes
        letters, token = _guard(partial(dead.page, app_id, prefix, min(limit - shown, 1000),
                                        token=token))
        for letter in letters:
            click.echo(_line(letter))
        shown += len(letters)
        if not token:
            break
    if not shown:
        click.echo("no dead letters", err=True)


@dlq.command()
@common
@click.argument("letter_id", callback=_text)
def show(app_id: str, redis_url: str | None, letter_id: str) -> None:
    """Show one dead letter with its job, as GET /deadletters/{id} answers (JSON)."""
    store = _guard(lambda: _store(redis_url, app_id))
    letter = _guard(lambda: DeadLetters(store).get(letter_id, app_id))
    if letter is None:
        raise click.ClickException(f"no dead letter {shown(letter_id)} for app {app_id!r}")
    answer = letter_to_api(letter, with_job=True, dapr_compat=store.settings.dapr_compat,
                           max_data_bytes=store.settings.max_data_bytes)
    click.echo(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())


@dlq.command()
@common
@click.argument("ids", nargs=-1, callback=_text)
@click.option("--prefix", default=None, callback=_text,
              help="Every dead letter of jobs starting with this.")
@click.option("--all", "everything", is_flag=True, help="Every dead letter of the app.")
def replay(app_id: str, redis_url: str | None, ids: tuple[str, ...], prefix: str | None,
           everything: bool) -> None:
    """Deliver dead letters again now, with a new attempt series."""
    def go() -> Replayed:
        store = _store(redis_url, app_id)
        return DeadLetters(store).replay(app_id, _selection(store, ids, prefix, everything))
    done = _guard(go)
    click.echo(f"replayed {done.count}")
    lines = _not_found_lines(app_id, done.not_found)
    if done.unreadable_count:
        more = done.unreadable_count - len(done.unreadable)
        one = done.unreadable_count == 1
        lines += [f"{done.unreadable_count} dead letter{'' if one else 's'} this version "
                  f"cannot read, left as {'it is (purge it)' if one else 'they are (purge them)'}:",
                  *(f"  {letter_id}" for letter_id in done.unreadable),
                  *([f"  and {more} more"] if more else [])]
    if lines:
        raise click.ClickException("\n".join(lines))


@dlq.command()
@common
@click.argument("ids", nargs=-1, callback=_text)
@click.option("--prefix", default=None, callback=_text,
              help="Every dead letter of jobs starting with this.")
@click.option("--all", "everything", is_flag=True, help="Every dead letter of the app.")
def purge(app_id: str, redis_url: str | None, ids: tuple[str, ...], prefix: str | None,
          everything: bool) -> None:
    """Delete dead letters for good."""
    missing: list[str] = []

    def go() -> int:
        store = _store(redis_url, app_id)
        return DeadLetters(store).purge(app_id, _selection(store, ids, prefix, everything),
                                        missing)
    click.echo(f"purged {_guard(go)}")
    if missing:
        raise click.ClickException("\n".join(_not_found_lines(app_id, missing)))


def _not_found_lines(app_id: str, missing: list[str]) -> list[str]:
    """The ids given that named no dead letter of the app: an error (exit 1), not a 0."""
    return [f"no dead letter {shown(letter_id)} for app {app_id!r}"
            for letter_id in missing]


def _guard(action: Any) -> Any:
    try:
        return action()
    except UNAVAILABLE as exc:
        raise click.ClickException(f"Redis is unavailable: {exc}") from None
    except redis.RedisError as exc:  # an answer that is not Redis's, or a refusal
        raise click.ClickException(f"Redis answered with an error: {exc}") from None
