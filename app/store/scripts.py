"""The Lua scripts, loaded once from their `.lua` files beside this module."""

from __future__ import annotations

from functools import cache
from importlib import resources

SCRIPT_NAMES = (
    "schedule", "schedule_many", "delete", "claim", "ack", "release", "stage", "unstage",
    "replay", "purge", "reindex", "pause", "resume", "trigger",
    "app_alive", "apps_cas", "app_flag",
)


@cache
def source(name: str) -> str:
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no Lua script named {name!r}")
    return resources.files("app.store").joinpath("lua", f"{name}.lua").read_text("utf-8")
