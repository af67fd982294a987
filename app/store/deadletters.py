"""The dead-letter queue: list, inspect, replay and purge triggers whose policy was spent.

Dead letters sit in the partition of their job (`dead` hash + `deadidx` index).
A replay is a one-shot job of its own (app/keys.py, `replay_job_id`), due at
once, with the dead trigger's data and failure policy and a new attempt
series; it keeps the dead trigger's id as its idempotency id. If it fails
again it is dead-lettered again, under the same id.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace

from app.jobs.clock import now_ms
from app.jobs.model import DeadLetter
from app.store.keys import replay_job_id
from app.store.store import Store


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DeadLetters:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis
        self.keys = store.keys

    def list_letters(self, app_id: str | None = None, prefix: str = "", limit: int = 100,
             offset: int = 0) -> list[DeadLetter]:
        """Dead letters oldest first, over all partitions, of one app (or all apps) whose
        job name starts with `prefix`."""
        matching = self._matching(lambda d: (app_id is None or d.app_id == app_id)
                                  and d.name.startswith(prefix))
        return matching[offset:offset + limit]

    def get(self, letter_id: str) -> DeadLetter | None:
        for pk in self.keys.all_partitions():
            raw = self.redis.hget(pk.dead, letter_id)
            if raw is not None:
                return DeadLetter.decode(raw)
        return None

    def _matching(self, keep: Callable[[DeadLetter], bool]) -> list[DeadLetter]:
        entries: list[tuple[float, str, DeadLetter]] = []
        for pk in self.keys.all_partitions():
            ids = [_text(m) for m in self.redis.zrange(pk.deadidx, 0, -1)]
            if not ids:
                continue
            for raw in self.redis.hmget(pk.dead, ids):
                if raw is None:
                    continue
                letter = DeadLetter.decode(raw)
                if keep(letter):
                    entries.append((letter.dead_ms, letter.id, letter))
        entries.sort(key=lambda e: (e[0], e[1]))
        return [e[2] for e in entries]

    def replay(self, letters: list[DeadLetter]) -> int:
        """Deliver these again, at once, with a new attempt series. Returns how many were
        replayed (a letter replayed or purged meanwhile is skipped)."""
        replayed = 0
        due = now_ms()
        for letter in letters:
            original = letter.job
            job = replace(
                original, schedule=None, repeats=None, ttl=None, expires_ms=None,
                due_time=None, first_ms=due,
                replay_of=letter.id,
            )
            jid = replay_job_id(letter.app_id, letter.name, secrets.token_hex(4))
            pk = self.keys.for_job(jid)
            replayed += int(self.store.script("replay")(
                keys=pk.all(), args=[letter.id, jid, job.encode(), due, self.keys.wake_channel]))
        return replayed

    def purge(self, letters: list[DeadLetter]) -> int:
        purged = 0
        for letter in letters:
            pk = self.keys.for_job(f"{letter.app_id}/{letter.name}")
            pipe = self.redis.pipeline(transaction=True)
            pipe.hdel(pk.dead, letter.id)
            pipe.zrem(pk.deadidx, letter.id)
            purged += int(pipe.execute()[0])
        return purged

    def select(self, app_id: str, ids: list[str] | None = None, prefix: str | None = None,
               everything: bool = False) -> list[DeadLetter]:
        """The letters of `app_id` named by id, by job-name prefix, or all of them."""
        if ids:
            found = [self.get(i) for i in ids]
            return [d for d in found if d is not None and d.app_id == app_id]
        if prefix is not None or everything:
            return self._matching(lambda d: d.app_id == app_id
                                  and d.name.startswith(prefix or ""))
        return []
