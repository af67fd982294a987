"""Trigger history: the last outcomes of each job (README, "Operating jobrunner").

The workers write it, in the same ack.lua call that settles the outcomes (never a round
trip of its own); the API reads it. Per job, one Redis list in the job's partition
(`PartitionKeys.history`), newest first, at most `Settings.history_size` entries of at
most `history_max_bytes / history_size` bytes each (an error text is cut to fit), so a
job's history never holds more than `history_max_bytes`. It has no expiry while its job
exists, is deleted with the job (delete.lua), and is kept `history_ttl_s` once the job is
over (a one-shot job that fired, the last trigger of a recurring one, a job whose ttl
ended it), so a finished job still answers what became of it. Only settled outcomes are
recorded: an acknowledge whose lease is gone (the job was deleted or replaced meanwhile)
records nothing, as it changes nothing else.

An entry is one compact string (there is one per outcome of every job, so every byte
counts):

    {due ms}|{sent - due, ms}|{attempt}|{result}|{status}|{duration, us}|{trigger}|{error}

- result: `d` delivered (2xx or 404), `r` failed and retried later, `x` dead-lettered,
  `p` failed and dropped (failure policy `drop`);
- status: the app's HTTP status, empty when none came (no answer, a refused connection,
  gRPC, whose outcome is in `error`);
- trigger: the trigger id after its last `@`, `{rev}:{due ms}` (the app and name are the
  key's), shortened to `{rev}` when its due ms is the entry's (always, but for a replay
  of a dead letter, which keeps the dead trigger's id);
- error: why the attempt failed, empty when delivered; last, so that it may hold `|`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.jobs.clock import now_ms
from app.jobs.durations import format_ms
from app.settings import MAX_HISTORY_SIZE
from app.store.keys import job_id
from app.store.redis_client import read_together
from app.store.store import Store

# result codes (stored) and their names (API)
DELIVERED, RETRYING, DEAD_LETTERED, DROPPED = "d", "r", "x", "p"
RESULTS = {DELIVERED: "delivered", RETRYING: "retrying", DEAD_LETTERED: "dead-lettered",
           DROPPED: "dropped"}
_ELLIPSIS = "\u2026"


def encode_entry(trigger: str, due_ms: int, sent_ms: int, attempt: int, result: str,
                 status: int | None, duration_us: int, error: str, max_bytes: int) -> str:
    """One outcome as stored; at most `max_bytes` bytes of UTF-8 (the error cut to fit).
    `trigger`: the trigger id, or only the job's rev when the id is the job's own
    `{app}/{name}@{rev}:{due_ms}` (what the worker passes: no id to build and take apart).
    Called once per delivery by the workers: kept to a few string operations."""
    at = trigger.rfind("@")
    if at < 0:
        tail = trigger  # a rev
    else:
        tail = trigger[at + 1:]
        rev, _, tail_due = tail.partition(":")
        if tail_due == str(due_ms):
            tail = rev
    head = (f"{due_ms}|{sent_ms - due_ms}|{attempt}|{result}|"
            f"{'' if status is None else status}|{duration_us}|{tail}|")
    if not error:
        return head
    entry = head + error
    if len(entry) * 4 <= max_bytes:  # even all 4-byte characters fit: no need to encode
        return entry
    raw = entry.encode()
    if len(raw) <= max_bytes:
        return entry
    room = max(max_bytes - len(head.encode()) - len(_ELLIPSIS.encode()), 0)
    # Cut on a character boundary: drop the bytes of a character cut in two.
    return head + error.encode()[:room].decode(errors="ignore") + _ELLIPSIS


@dataclass(frozen=True)
class HistoryEntry:
    """One settled attempt of one trigger of a job."""

    trigger_id: str
    due_ms: int  # when the trigger was due
    sent_ms: int  # when the worker sent this attempt to the app
    attempt: int
    result: str  # a RESULTS name
    status: int | None  # the app's HTTP status; None when none came, and over gRPC
    duration_us: int  # from sending the attempt to its outcome
    error: str  # why it failed; "" when delivered

    @classmethod
    def decode(cls, app_id: str, name: str, raw: bytes | str) -> HistoryEntry:
        """ValueError for an entry this version did not write."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        due, sent, attempt, result, status, duration, tail, error = text.split("|", 7)
        due_ms = int(due)
        if ":" not in tail:
            tail = f"{tail}:{due_ms}"
        if result not in RESULTS:
            raise ValueError(f"unknown history result {result!r}")
        return cls(f"{job_id(app_id, name)}@{tail}", due_ms, due_ms + int(sent), int(attempt),
                   RESULTS[result], int(status) if status else None, int(duration), error)

    def to_api(self) -> dict[str, Any]:
        return {
            "triggerId": self.trigger_id,
            "scheduledTime": format_ms(self.due_ms),
            "deliveredTime": format_ms(self.sent_ms),
            "attempt": self.attempt,
            "result": self.result,
            "status": self.status,
            "error": self.error or None,
            "durationMs": round(self.duration_us / 1000, 3),
        }


@dataclass(frozen=True)
class JobHistory:
    name: str
    entries: list[HistoryEntry]  # newest first
    job_exists: bool
    kept_until_ms: int | None  # when the history of a job that is over goes; None: kept

    def to_api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "jobExists": self.job_exists,
            "keptUntil": None if self.kept_until_ms is None else format_ms(self.kept_until_ms),
            "history": [e.to_api() for e in self.entries],
        }


class History:
    """The read side, for the API and the tools."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, app_id: str, name: str) -> JobHistory | None:
        """The job's history, newest first; None when there is neither a job nor a
        history of that name (one round trip: the app's own keys only)."""
        jid = job_id(app_id, name)
        pk = self.store.keys.for_job(jid)
        key = pk.history(jid)

        def reads(pipe: Any) -> None:
            pipe.lrange(key, 0, MAX_HISTORY_SIZE - 1)
            self.store.read_jobs(pipe, pk, "l", [jid])
            pipe.pttl(key)

        raw, (length,), ttl_ms = read_together(self.store.redis, reads)
        exists = length is not None
        if not raw and not exists:
            return None
        entries = []
        for item in raw:
            try:
                entries.append(HistoryEntry.decode(app_id, name, item))
            except (ValueError, UnicodeDecodeError):
                continue  # not an entry this version wrote: left out, never a 500
        kept_until = now_ms() + int(ttl_ms) if raw and int(ttl_ms) > 0 else None
        return JobHistory(name, entries, bool(exists), kept_until)
