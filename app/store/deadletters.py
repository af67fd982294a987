"""The dead-letter queue: list, inspect, replay and purge triggers whose policy was spent.

Dead letters sit in the partition of their job: the record in the `dead` hash, its id in
`deadidx` (by time, all apps) and in `deadlex` (app/store/keys.py: by app, then time),
all three kept together by ack.lua, replay.lua and purge.lua. Everything an app asks goes
through its own range of `deadlex`, so another app's dead letters are never read, and
each request is bounded: ids per replay or purge (`max_replay_ids`), entries a prefix
query passes over (`list_scan_budget`), bytes of records read at once (`page_max_bytes`).

A replay is a one-shot job of its own (app/store/keys.py, `replay_job_id`), due at once,
with the dead trigger's data and failure policy and a new attempt series; it keeps the
dead trigger's id as its idempotency id. If it fails again it is dead-lettered again,
under the same id.
"""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from app.jobs import errors
from app.jobs.clock import now_ms
from app.jobs.durations import format_ms
from app.jobs.model import DeadLetter
from app.jobs.validation import job_to_api
from app.store import pages
from app.store.keys import (
    as_text,
    dead_member,
    dead_range,
    job_id,
    letter_job_name,
    replay_job_id,
)
from app.store.store import Store

# Letters replayed or purged per round trip of a prefix or all selection.
BATCH = 100
# The most letters an offset may skip.
MAX_OFFSET = 1_000_000
# The most ids of letters it could not read that one replay's answer lists (all counted).
MAX_UNREADABLE_LISTED = 100

EMPTY_SELECTION = (
    "say which dead letters: a non-empty list of ids, a non-empty prefix, or all: true "
    "for every dead letter of the app"
)


@dataclass
class Replayed:
    """What a replay did: how many letters it replayed, and those it left in place
    because this version cannot read them (purging mends them)."""

    count: int = 0
    unreadable_count: int = 0
    unreadable: list[str] = field(default_factory=list)  # the first MAX_UNREADABLE_LISTED
    # Of the ids given, those that named no dead letter of the app (mistyped, another
    # app's, or replayed or purged already): said, not a silent 0.
    not_found: list[str] = field(default_factory=list)

    def skip(self, letter_id: str) -> None:
        self.unreadable_count += 1
        if len(self.unreadable) < MAX_UNREADABLE_LISTED:
            self.unreadable.append(letter_id)

    def to_api(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"replayed": self.count}
        if self.unreadable_count:
            answer |= {"unreadable": self.unreadable, "unreadableCount": self.unreadable_count}
        if self.not_found:
            answer["notFound"] = self.not_found
        return answer


class SelectionError(ValueError):
    """A replay or purge that does not name its dead letters unambiguously."""


@dataclass(frozen=True)
class Selection:
    """The dead letters one replay or purge acts on: ids, a job-name prefix, or all."""

    ids: tuple[str, ...] = ()
    prefix: str | None = None
    everything: bool = False

    @classmethod
    def of(cls, ids: list[str] | tuple[str, ...] | None, prefix: str | None,
           everything: bool, max_ids: int) -> Selection:
        """Exactly one of a non-empty `ids`, a non-empty `prefix` or `everything`; an
        empty list or prefix selects nothing (never everything). SelectionError else."""
        given = [what for what, on in (("ids", bool(ids)), ("prefix", bool(prefix)),
                                       ("all", everything)) if on]
        if not given:
            why = ("an empty prefix selects nothing; " if prefix == "" else
                   "an empty list of ids selects nothing; " if ids is not None else "")
            raise SelectionError(why + EMPTY_SELECTION)
        if len(given) > 1:
            raise SelectionError(f"give one of ids, prefix or all, not {' and '.join(given)}")
        if ids and len(ids) > max_ids:
            raise SelectionError(
                f"{len(ids)} ids: at most {max_ids} in one request (JOBRUNNER_MAX_REPLAY_IDS);"
                " send them in several requests, or select by prefix")
        return cls(tuple(ids or ()), prefix or None, everything)


def letter_to_api(letter: DeadLetter, *, with_job: bool = False, dapr_compat: bool = False,
                  max_data_bytes: int | None = None) -> dict[str, Any]:
    """A dead letter as the HTTP API and `jobrunner dlq` show it; `job` in the shape of
    GET /jobs/{name} (never the stored record; job_to_api)."""
    body: dict[str, Any] = {
        "id": letter.id,
        "name": letter.name,
        "scheduledTime": format_ms(letter.sched_ms),
        "deadLetteredTime": format_ms(letter.dead_ms),
        "attempts": letter.attempts,
        "error": letter.error,
    }
    if with_job:
        body["job"] = job_to_api(letter.job, dapr_compat=dapr_compat,
                                 max_data_bytes=max_data_bytes)
    return body


class DeadLetters:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis
        self.keys = store.keys
        self.settings = store.settings

    # -- reading --------------------------------------------------------------

    def page(self, app_id: str, prefix: str = "", limit: int = 100, offset: int = 0,
             token: str = "") -> tuple[list[DeadLetter], str]:
        """The app's dead letters oldest first, whose job name starts with `prefix`, past
        `offset` of them or from `token`; and the token of the next page ("" after the
        last). A page may hold fewer than `limit`: when a prefix query has passed over
        `list_scan_budget` letters of other names, or its records reach `page_max_bytes`.
        ValueError for a token this store did not give."""
        if token and offset:
            raise ValueError("offset cannot be combined with pageToken (the token holds it)")
        after, skip = (self._parse_token(app_id, prefix, token) if token else (None, offset))
        self.store.ensure_indexed()
        chosen: list[tuple[bytes, int]] = []
        last, passed, more = after, 0, False
        need = limit + skip + 1 + (self.settings.list_scan_budget if prefix else 0)
        for member, part in self._walk(app_id, after, chunk=need):
            letter_id = _letter_id(app_id, member)
            if prefix and not (letter_job_name(app_id, letter_id) or "").startswith(prefix):
                if passed == self.settings.list_scan_budget:
                    more = True
                    break
                passed += 1
            elif skip:
                skip -= 1
            elif len(chosen) == limit:
                more = True
                break
            else:
                chosen.append((member, part))
            last = as_text(member)
        letters, read = self._read(app_id, chosen)
        if read < len(chosen):
            more, last, skip = True, as_text(chosen[read - 1][0]), 0
        if not more or last is None:
            return letters, ""
        return letters, f"{skip}.{pages.encode(last[len(app_id) + 1:])}.{_prefix_tag(prefix)}"

    def list_letters(self, app_id: str | None = None, prefix: str = "", limit: int = 100,
                     offset: int = 0) -> list[DeadLetter]:
        """Dead letters oldest first: one app's (one page, as `page`), or every app's
        (for tests and tools; reads `offset + limit` entries of each partition)."""
        if app_id is not None:
            return self.page(app_id, prefix, limit, offset)[0]
        entries: list[tuple[float, bytes, int]] = []
        pipe = self.redis.pipeline(transaction=False)
        for pk in self.keys.all_partitions():
            pipe.zrange(pk.deadidx, 0, offset + limit - 1, withscores=True)
        for part, found in enumerate(pipe.execute()):
            entries += [(score, member, part) for member, score in found]
        entries.sort()
        letters = []
        for _, letter_id, part in entries[offset:offset + limit]:
            raw = self.redis.hget(self.keys.partition(part).dead, letter_id)
            if raw is not None:
                letter = DeadLetter.decode(raw, as_text(letter_id))
                if letter.name.startswith(prefix):
                    letters.append(letter)
        return letters

    def get(self, letter_id: str, app_id: str) -> DeadLetter | None:
        """The app's dead letter of that id; None when there is none (another app's id
        is not even read)."""
        name = letter_job_name(app_id, letter_id)
        if name is None:
            return None
        raw = self.redis.hget(self.keys.for_job(job_id(app_id, name)).dead, letter_id)
        letter = None if raw is None else DeadLetter.decode(raw, letter_id)
        return letter if letter is not None and letter.app_id == app_id else None

    # -- acting -----------------------------------------------------------------

    def replay(self, app_id: str, selection: Selection) -> Replayed:
        """Deliver the selected letters again, at once, with a new attempt series (one
        replayed or purged meanwhile is skipped). A letter this version cannot read is
        left in place and named in the answer, and the rest are replayed. Read and
        replayed in batches of at most `page_max_bytes`."""
        done = Replayed()
        for batch in self._batches(app_id, selection, done.not_found):
            for letters, _ in self._read_batches(app_id, batch, on_unreadable=done.skip):
                done.count += self._replay(letters, on_unreadable=done.skip)
        return done

    def purge(self, app_id: str, selection: Selection,
              not_found: list[str] | None = None) -> int:
        """Delete the selected letters for good (their records are not read); returns how
        many there were. Of the ids given, those that named no dead letter of the app are
        added to `not_found`."""
        purged = 0
        for batch in self._batches(app_id, selection, not_found):
            by_part: dict[int, list[str]] = {}
            for member, part in batch:
                by_part.setdefault(part, []).append(_letter_id(app_id, member))
            for part, ids in by_part.items():
                pk = self.keys.partition(part)
                purged += int(self.store.script("purge")(
                    keys=[pk.dead, pk.deadidx, pk.deadlex], args=ids))
        return purged

    def _replay(self, letters: list[DeadLetter], on_unreadable: Callable[[str], None]) -> int:
        due = now_ms()
        pipe = self.redis.pipeline(transaction=False)
        script = self.store.script("replay")
        replaying = 0
        for letter in letters:
            try:
                kept = letter.job
            except errors.ApiError:
                on_unreadable(letter.id)
                continue
            replaying += 1
            job = replace(kept, schedule=None, repeats=None, ttl=None, expires_ms=None,
                          due_time=None, first_ms=due, replay_of=letter.id)
            jid = replay_job_id(letter.app_id, letter.name, secrets.token_hex(4))
            script(keys=self.keys.for_job(jid).all(),
                   args=[letter.id, jid, job.encode(), due, self.keys.wake_channel],
                   client=pipe)
        return sum(int(r) for r in pipe.execute()) if replaying else 0

    # -- the app's range of the index -------------------------------------------

    def _walk(self, app_id: str, after: str | None = None, through: bytes | None = None,
              chunk: int = BATCH) -> Iterator[tuple[bytes, int]]:
        """(deadlex member, partition) of the app's letters oldest first, past `after`,
        up to `through`."""
        self.store.ensure_indexed()
        low, high = dead_range(app_id, after, through)
        keys = [pk.deadlex for pk in self.keys.all_partitions()]
        return pages.walk_ranges(self.redis, keys, low, high, chunk)

    def _newest(self, app_id: str) -> bytes | None:
        """The app's newest deadlex member now (None: it has none)."""
        self.store.ensure_indexed()
        low, high = dead_range(app_id)
        pipe = self.redis.pipeline(transaction=False)
        for pk in self.keys.all_partitions():
            pipe.zrevrangebylex(pk.deadlex, high, low, start=0, num=1)
        newest = [m for found in pipe.execute() for m in found]
        return max(newest) if newest else None

    def _batches(self, app_id: str, selection: Selection, not_found: list[str] | None = None,
                 ) -> Iterator[list[tuple[bytes, int]]]:
        """The selected letters as (member, partition), a batch at a time. A prefix or all
        selection takes the letters up to the newest when it started, so a replay that
        fails again meanwhile (a newer letter) is not taken twice. Ids that name no letter
        of the app go to `not_found`."""
        if selection.ids:
            yield from self._by_ids(app_id, selection.ids,
                                    not_found if not_found is not None else [])
            return
        newest = self._newest(app_id)
        if newest is None:
            return
        batch: list[tuple[bytes, int]] = []
        for member, part in self._walk(app_id, through=newest):
            name = letter_job_name(app_id, _letter_id(app_id, member)) or ""
            if selection.prefix is None or name.startswith(selection.prefix):
                batch.append((member, part))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _by_ids(self, app_id: str, ids: tuple[str, ...],
                not_found: list[str]) -> Iterator[list[tuple[bytes, int]]]:
        """The members of the app's letters among `ids` (others' ids are not looked up);
        the ids that name none go to `not_found`."""
        located: list[tuple[str, int]] = []
        for letter_id in dict.fromkeys(ids):
            name = letter_job_name(app_id, letter_id)
            if name is not None:
                located.append((letter_id, self.keys.partition_of(job_id(app_id, name))))
            else:
                not_found.append(letter_id)
        for start in range(0, len(located), BATCH):
            chunk = located[start:start + BATCH]
            pipe = self.redis.pipeline(transaction=False)
            for letter_id, part in chunk:
                pipe.zscore(self.keys.partition(part).deadidx, letter_id)
            found = []
            for (letter_id, part), ms in zip(chunk, pipe.execute(), strict=True):
                if ms is None:
                    not_found.append(letter_id)
                else:
                    found.append((dead_member(app_id, int(ms), letter_id).encode(), part))
            yield found

    def _read(self, app_id: str, chosen: list[tuple[bytes, int]]) -> tuple[list[DeadLetter], int]:
        """The first of `chosen` whose records fit in `page_max_bytes` (one at least), and
        how many of `chosen` that took; one purged or replayed meanwhile is left out."""
        for letters, taken in self._read_batches(app_id, chosen):
            return letters, taken
        return [], 0

    def _read_batches(
        self, app_id: str, chosen: list[tuple[bytes, int]],
        on_unreadable: Callable[[str], None] | None = None,
    ) -> Iterator[tuple[list[DeadLetter], int]]:
        """`chosen`'s records in batches of at most `page_max_bytes` (one letter at least),
        each with how many of `chosen` have been read so far. Sizes are asked first
        (HSTRLEN), so that no batch reads more than that. A record this version cannot
        read raises, or, with `on_unreadable`, is given to it and left out."""
        located = [(_letter_id(app_id, m), self.keys.partition(p).dead) for m, p in chosen]
        pipe = self.redis.pipeline(transaction=False)
        for letter_id, key in located:
            pipe.hstrlen(key, letter_id)
        sizes = [int(n) for n in pipe.execute()] if located else []
        start = 0
        while start < len(located):
            end, total = start + 1, sizes[start]
            while end < len(located) and total + sizes[end] <= self.settings.page_max_bytes:
                total += sizes[end]
                end += 1
            pipe = self.redis.pipeline(transaction=False)
            for letter_id, key in located[start:end]:
                pipe.hget(key, letter_id)
            letters = []
            for (letter_id, _), raw in zip(located[start:end], pipe.execute(), strict=True):
                if raw is None:
                    continue
                try:
                    letters.append(DeadLetter.decode(raw, as_text(letter_id)))
                except errors.ApiError:
                    if on_unreadable is None:
                        raise
                    on_unreadable(as_text(letter_id))
            yield [d for d in letters if d.app_id == app_id], end
            start = end

    @staticmethod
    def _parse_token(app_id: str, prefix: str, token: str) -> tuple[str, int]:
        """(the last deadlex member passed, letters still to skip) from a page token;
        BadPageToken when it is not one a page of this app and prefix gave, checked
        without Redis."""
        skip_text, _, rest = token.partition(".")
        encoded, _, tag = rest.partition(".")
        if not (skip_text.isascii() and skip_text.isdigit()) or len(skip_text) > 7 or not tag:
            raise pages.BadPageToken(token, "not a token this API gave")
        if tag != _prefix_tag(prefix):
            raise pages.BadPageToken(token, f"not a token of the letters whose name starts "
                                            f"with {prefix!r}")
        position = pages.decode(encoded)
        ms, slash, letter_id = position.partition("/")
        skip = int(skip_text)
        if (not slash or len(ms) < 13 or not ms.isdigit() or skip > MAX_OFFSET
                or letter_job_name(app_id, letter_id) is None):
            raise pages.BadPageToken(token, "not a token this API gave for this app")
        return f"{app_id}/{position}", skip


def _prefix_tag(prefix: str) -> str:
    """The end of a page token: which prefix's pages it is of (a letter passed over may
    belong to any name, so the position alone does not tell)."""
    return f"{zlib.crc32(prefix.encode()):08x}"


def _letter_id(app_id: str, member: bytes | str) -> str:
    """The dead-letter id in a deadlex member `{app}/{ms:013d}/{id}`."""
    return as_text(member)[len(app_id) + 1:].partition("/")[2]
