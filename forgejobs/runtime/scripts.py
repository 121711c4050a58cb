"""The runtime's server-side scripts: `scripts/*.lua`, loaded once and called by SHA.

Each file starts with a header naming its KEYS, ARGV and reply. A line `-- @include <name>`
is replaced by `scripts/<name>.lua` (`common`: the helpers several scripts share; `metrics`: the
counters and histograms, whose bucket bounds are `METRIC_BUCKETS_MS` here, pasted in). redis-py's `Script`
sends EVALSHA and, after a NOSCRIPT (Redis restarted, failed over, or SCRIPT FLUSH), loads the
script and sends it again: safe, because NOSCRIPT means it did not run.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

NAMES = ("enqueue", "fetch", "promote", "recover", "settle", "beat", "trim", "minutes", "cancel")

METRIC_BUCKETS_MS: tuple[int, ...] = (
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
    900_000,
    3_600_000,
)
"""Upper bounds (ms) of the run-time and wait-time histogram buckets, shared by the scripts and the reader."""

_INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The Lua text of one script, with its includes pasted in."""
    folder = resources.files(__package__).joinpath("scripts")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    text = _INCLUDE.sub(lambda m: folder.joinpath(f"{m.group(1)}.lua").read_text(encoding="utf-8"), text)
    return text.replace("__BUCKETS__", ", ".join(str(b) for b in METRIC_BUCKETS_MS))


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
        self.minutes: Script = connection.register_script(source("minutes"))
        self.cancel: Script = connection.register_script(source("cancel"))
