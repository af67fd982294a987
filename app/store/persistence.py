"""Whether the Redis keeps its data across a restart: checked when a process starts.

A Redis with neither AOF (`appendonly no`) nor RDB snapshots (`save ""`) loses every job
when it restarts, and nothing else would say so (an adversarial run lost 140 of 1,351
acknowledged jobs that way). The API and the workers log a WARNING at start-up when
that is the case, or when the Redis does not let them ask (CONFIG is often disabled on
managed Redis).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
import redis.cluster

from app.settings import Settings
from app.store.redis_client import UNAVAILABLE, sync_client


def persistence_problem(client: Any) -> str | None:
    """What to warn about the persistence of the Redis behind `client` (every master of a
    Cluster), or None when it persists (AOF or RDB) or cannot be reached now."""
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            aofs = _per_node(client.config_get("appendonly", target_nodes=client.PRIMARIES),
                             "appendonly")
            saves = _per_node(client.config_get("save", target_nodes=client.PRIMARIES), "save")
        else:
            aofs = {"": client.config_get("appendonly")}
            saves = {"": client.config_get("save")}
    except UNAVAILABLE:
        return None  # nothing to say yet: every request will say Redis is unavailable
    except redis.ResponseError as exc:
        return ("cannot tell whether Redis keeps its data across a restart: CONFIG GET is "
                f"not allowed ({exc}). Make sure it runs with AOF (appendonly yes) or RDB "
                "snapshots (save), or jobs are lost when it restarts")
    for node in sorted(aofs):
        aof, save = _value(aofs[node], "appendonly"), _value(saves.get(node, {}), "save")
        if aof.lower() != "yes" and not save.strip():
            where = f" (node {node})" if node else ""
            return (f"Redis{where} keeps no data across a restart: AOF is off (appendonly no) "
                    "and so are RDB snapshots (save \"\"), so every job is lost when it "
                    "restarts. Turn AOF on (CONFIG SET appendonly yes, and in its redis.conf)")
    return None


def warn_if_not_persistent(client: Any, log: logging.Logger) -> bool:
    """Log persistence_problem's warning, if any; True when one was logged."""
    problem = persistence_problem(client)
    if problem is not None:
        log.warning(problem)
    return problem is not None


def _per_node(result: Any, name: str) -> dict[str, Any]:
    """A Cluster's CONFIG GET answer by node: one node's answer comes back unwrapped."""
    if not isinstance(result, dict) or any(_text(k) == name for k in result):
        return {"": result}
    return {_text(node): answer for node, answer in result.items()}


def _value(config: Any, name: str) -> str:
    if not isinstance(config, dict):
        return ""
    return next((_text(v) for k, v in config.items() if _text(k) == name), "")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def warn_at_start(settings: Settings, log: logging.Logger) -> None:
    """warn_if_not_persistent on a client of its own (a worker's own is asyncio); never
    raises: a warning must not stop a process from starting."""
    try:
        client = sync_client(settings)
        try:
            warn_if_not_persistent(client, log)
        finally:
            client.close()
    except Exception as exc:  # unreachable now: the process says so itself, and retries
        log.debug("could not check whether Redis persists its data: %s", exc)
