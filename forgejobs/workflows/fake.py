"""The fake queue's side of workflows: each step job's outcome, as `drain()` runs it, goes to the run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..execution import DeadLettered, Outcome, Succeeded
from .engine import TAG
from .run import engine_for

if TYPE_CHECKING:
    from ..backends.fake import StoredJob
    from ..client import Client


def report(client: Client, stored: StoredJob, outcome: Outcome) -> None:
    """Record a step job's final outcome on its run (retries are not final: nothing happens then)."""
    if f'"{TAG}":' not in stored.envelope:
        return
    tag = json.loads(stored.envelope).get("options", {}).get(TAG)
    if not isinstance(tag, str):
        return
    engine = engine_for(client)
    if isinstance(outcome, Succeeded):
        engine.finished(tag, "done", output=json.dumps(stored.result, separators=(",", ":")))
    elif isinstance(outcome, DeadLettered):
        engine.finished(tag, "failed", error=outcome.record.error)
