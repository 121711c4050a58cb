"""Records that are not jobs: read whatever is stored, bytes intact, so the dead letter keeps it.

A wait list may hold an id whose key is missing, of the wrong type, or a hash without an envelope
(written by hand, by another tool, or by someone hostile). The runtime never runs such a record; it
dead-letters it as `corrupt` with what `read_record` returns: text where the bytes are UTF-8,
`base64:<...>` where they are not, so nothing is lost.
"""

from __future__ import annotations

import base64
import json
from typing import Any, cast

import redis

SAMPLE = 1000
"""Elements kept from a list, set, sorted set or stream at a job's key."""


def shown_id(job_id: bytes) -> str:
    """A stored id as text: itself when it is UTF-8, else `bytes:<hex>` (no id forgejobs makes has a colon,
    so this never names another job)."""
    try:
        return job_id.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + job_id.hex()


def raw_text(value: bytes | str) -> str:
    """Bytes as text when they are UTF-8, else `base64:` and their base64."""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode("ascii")


def read_record(connection: redis.Redis, key: bytes | str) -> tuple[str, str]:
    """The Redis type at `key` and its content as text ("" when there is no key)."""
    target: Any = key
    kind = raw_text(cast(bytes, connection.type(target)))
    content: Any
    if kind == "none":
        return kind, ""
    if kind == "string":
        return kind, raw_text(cast(bytes, connection.get(target)))
    if kind == "hash":
        fields = cast(dict[bytes, bytes], connection.hgetall(target))
        content = {raw_text(k): raw_text(v) for k, v in fields.items()}
    elif kind == "list":
        content = [raw_text(v) for v in cast(list[bytes], connection.lrange(target, 0, SAMPLE - 1))]
    elif kind == "set":
        content = sorted(raw_text(v) for v in cast(set[bytes], connection.srandmember(target, SAMPLE)))
    elif kind == "zset":
        pairs = cast(list[tuple[bytes, float]], connection.zrange(target, 0, SAMPLE - 1, withscores=True))
        content = [[raw_text(m), s] for m, s in pairs]
    elif kind == "stream":
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], connection.xrange(target, count=SAMPLE))
        content = [[raw_text(i), {raw_text(k): raw_text(v) for k, v in f.items()}] for i, f in entries]
    else:
        return kind, f"<{kind}>"
    return kind, json.dumps(content, ensure_ascii=False)
