"""Replica acknowledgement (`wait_replicas`, off by default; any client kind).

Redis replicates asynchronously: a master that dies right after answering
takes its last writes with it, and its promoted replica never saw them. With
`wait_replicas=n`, every script call is followed by `WAIT n timeout` on the
same connection to the same node, and a write fewer than n replicas
acknowledged in time raises `NotReplicated` (one of app.store.redis_client's
UNAVAILABLE: the API answers 503, the worker retries). The Lua scripts make
every write of the store (schedule, delete, claim, ack, release), so a write
the API or a worker saw succeed survives a failover. A master without a
replica then refuses writes until one is back (the price of the guarantee).

Here: the policy and the single-node clients (sync and asyncio); the cluster
clients of app.store.redis_cluster apply the same policy node by node.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.client
import redis.exceptions

from app.settings import Settings

DEFAULT_WAIT_TIMEOUT_MS = 1000

# The SHA1s of the scripts that write nothing (app/store/scripts.py READ_ONLY): run without
# WAIT, as a read that waited for a short replica was refused with the writes.
READ_ONLY_SHAS: set[str] = set()


def mark_read_only(source: str) -> None:
    """Run the script `source` without WAIT: it writes nothing a replica could lack."""
    READ_ONLY_SHAS.add(hashlib.sha1(source.encode()).hexdigest())


class NotReplicated(redis.exceptions.TimeoutError):
    """A script ran on the master, but fewer replicas than asked acknowledged it in time.

    The write may survive or not: the caller must treat it as not done (retry). `result`
    is what the script answered, for a caller whose write needs no replica (derived data)."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class WaitPolicy:
    """Acknowledge each script call by `replicas` replicas within `timeout_ms`."""

    replicas: int
    timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS

    def check(self, result: Any, acked: Any, where: str) -> Any:
        """The script's result, once its WAIT reply shows enough replicas have it."""
        if isinstance(result, Exception):
            raise result
        if isinstance(acked, Exception):
            raise NotReplicated(f"WAIT failed on {where}: {acked}", result)
        if int(acked) < self.replicas:
            raise NotReplicated(
                f"write on {where} reached {int(acked)} of {self.replicas} replicas "
                f"within {self.timeout_ms} ms", result)
        return result


def wait_policy(settings: Settings, wait_replicas: int | None = None,
                wait_timeout_ms: int | None = None) -> WaitPolicy | None:
    """The policy of `settings` (fields `wait_replicas`, `wait_timeout_ms` when Settings has
    them), or of the explicit arguments; None when replicas are not waited for."""
    replicas = wait_replicas if wait_replicas is not None else int(
        getattr(settings, "wait_replicas", 0) or 0)
    if replicas <= 0:
        return None
    timeout = wait_timeout_ms if wait_timeout_ms is not None else int(
        getattr(settings, "wait_timeout_ms", DEFAULT_WAIT_TIMEOUT_MS) or DEFAULT_WAIT_TIMEOUT_MS)
    return WaitPolicy(replicas, max(timeout, 1))


class _WaitingPipeline(redis.client.Pipeline):
    """A pipeline that, holding scripts and no transaction, ends with WAIT on its connection."""

    replica_wait: WaitPolicy | None = None

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        policy = self.replica_wait
        scripted = any(str(args[0]).upper() in ("EVALSHA", "EVAL")
                       and str(args[1]) not in READ_ONLY_SHAS
                       for args, _ in self.command_stack)
        in_transaction = bool(getattr(self, "transaction", False) is True
                              or getattr(self, "explicit_transaction", False))
        if policy is None or not scripted or in_transaction:
            return list(super().execute(raise_on_error))
        self.execute_command("WAIT", policy.replicas,  # type: ignore[no-untyped-call]
                             policy.timeout_ms)
        results = list(super().execute(raise_on_error))
        policy.check(None, results.pop(), "redis")
        return results


class WaitingRedis(redis.Redis):
    """redis.Redis whose script calls are acknowledged by replicas (see the module doc)."""

    replica_wait: WaitPolicy | None = None

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        if self.replica_wait is None or sha in READ_ONLY_SHAS:
            return super().evalsha(sha, numkeys, *keys_and_args)
        pipe: Any = super().pipeline(transaction=False)
        pipe.execute_command("EVALSHA", sha, numkeys, *keys_and_args)
        pipe.execute_command("WAIT", self.replica_wait.replicas, self.replica_wait.timeout_ms)
        result, acked = pipe.execute(raise_on_error=False)
        return self.replica_wait.check(result, acked, "redis")

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = _WaitingPipeline(self.connection_pool, self.response_callbacks, transaction,
                                shard_hint)
        pipe.replica_wait = self.replica_wait
        return pipe


class AsyncWaitingRedis(redis.asyncio.Redis):
    """redis.asyncio.Redis whose script calls are acknowledged by replicas."""

    replica_wait: WaitPolicy | None = None

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        if self.replica_wait is None or sha in READ_ONLY_SHAS:
            return await super().evalsha(sha, numkeys, *keys_and_args)
        pipe = self.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", sha, numkeys, *keys_and_args)
        pipe.execute_command("WAIT", self.replica_wait.replicas, self.replica_wait.timeout_ms)
        result, acked = await pipe.execute(raise_on_error=False)
        return self.replica_wait.check(result, acked, "redis")
