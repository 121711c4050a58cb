"""The runtime's server-side scripts: `scripts/*.lua`, loaded once and called by SHA.

Each file starts with a header naming its KEYS, ARGV and reply. A line `-- @include common`
is replaced by `scripts/common.lua` (the helpers several scripts share). redis-py's `Script`
sends EVALSHA and, after a NOSCRIPT (Redis restarted, failed over, or SCRIPT FLUSH), loads the
script and sends it again: safe, because NOSCRIPT means it did not run.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

NAMES = ("enqueue", "fetch", "promote", "recover", "settle", "beat", "trim")


@cache
def source(name: str) -> str:
    """The Lua text of one script, with its includes pasted in."""
    folder = resources.files(__package__).joinpath("scripts")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if "-- @include common" in text:
        text = text.replace("-- @include common", folder.joinpath("common.lua").read_text(encoding="utf-8"))
    return text


class Scripts:
    """The scripts registered on one connection."""

    def __init__(self, connection: redis.Redis) -> None:
        self.enqueue: Script = connection.register_script(source("enqueue"))
        self.fetch: Script = connection.register_script(source("fetch"))
        self.promote: Script = connection.register_script(source("promote"))
        self.recover: Script = connection.register_script(source("recover"))
        self.settle: Script = connection.register_script(source("settle"))
        self.beat: Script = connection.register_script(source("beat"))
        self.trim: Script = connection.register_script(source("trim"))
