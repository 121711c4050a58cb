"""In-process hooks for the integration tests: each completed job is noted in a file named by env."""

from __future__ import annotations

import json
import os

from forgejobs.events import Event, Hooks

hooks = Hooks()


@hooks.on_completed
def note_completed(event: Event) -> None:
    path = os.environ.get("FORGEJOBS_TEST_HOOK_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": event.kind.value, "job_id": event.job_id, "pid": os.getpid()}) + "\n")
