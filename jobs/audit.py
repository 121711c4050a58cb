"""Queue `audit`: the append-only audit log."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from forgejobs import Context, Job

from .resources import Resources


class RecordAuditEvent(Job, queue="audit", attempts=5):
    """Append one audit event (who did what to which object)."""

    actor_id: str
    action: str = Field(pattern=r"^[a-z_]+\.[a-z_]+$")
    target: str
    request_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def perform(self, ctx: Context) -> None:
        resources: Resources = ctx.resources
        resources.audit_log.parent.mkdir(parents=True, exist_ok=True)
        line = {
            "event_id": ctx.job_id,  # the job id makes a re-run detectable downstream
            "at": datetime.now(UTC).isoformat(),
            **self.model_dump(mode="json"),
        }
        with resources.audit_log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
