"""The Lua scripts, loaded once from their `.lua` files beside this module.

A script whose header holds the line `-- uses: {library}` runs with that library's
`.lua` file in front of it: a library is a file of local functions, not a script
(names_index.lua, the per-app job index every script that changes it shares)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

SCRIPT_NAMES = (
    "schedule", "schedule_many", "delete", "claim", "ack", "release", "stage", "unstage",
    "replay", "purge", "reindex", "pause", "resume", "trigger",
    "app_alive", "apps_cas", "app_flag", "names_read", "job_read",
)
LIBRARY_NAMES = ("names_index", "far")
# Scripts that write nothing: no replica needs to acknowledge them (app/store/redis_wait.py).
# job_read.lua may move the far tier's first version's jobs near, once (far.lua): lost with
# a master that fails over before its replica has it, it is done again there.
READ_ONLY = ("names_read", "job_read")

_USES = re.compile(r"^-- uses: (\w+)$", re.MULTILINE)


def _file(name: str) -> str:
    return resources.files("app.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


@cache
def source(name: str) -> str:
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no Lua script named {name!r}")
    text = _file(name)
    libraries = _USES.findall(text)
    for library in libraries:
        if library not in LIBRARY_NAMES:
            raise KeyError(f"{name}.lua uses {library!r}, which is no Lua library")
    return "".join(_file(library) + "\n" for library in libraries) + text
