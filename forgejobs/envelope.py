"""The JSON envelope: the only thing a backend stores for a job.

`{v, id, name, payload, options, attempt, history, enqueued_at}`, and `trace` (an OpenTelemetry
context carrier) when the producer traced the enqueue. No pickle:
any version of forgejobs (or any other language) can read, inspect and reject
an envelope cleanly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import PayloadError

VERSION = 1


class AttemptRecord(BaseModel):
    """One failed attempt, kept in the envelope so a dead letter shows them all."""

    model_config = ConfigDict(extra="ignore")

    attempt: int
    at: datetime
    error: str
    delay: float | None = None


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    v: int = VERSION
    id: str
    name: str
    payload: dict[str, Any]
    options: dict[str, Any] = Field(default_factory=dict)
    attempt: int = Field(default=1, ge=1)
    history: list[AttemptRecord] = Field(default_factory=list)
    enqueued_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    trace: dict[str, str] | None = None  # the enqueue span's context (forgejobs.tracing), when traced

    def scheduled_for(self) -> datetime | None:
        """The repeat tick this job was enqueued for, if a scheduler enqueued it."""
        value = self.options.get("scheduled_for")
        try:
            return datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None

    def encode(self) -> str:
        return self.model_dump_json(exclude={"trace"} if self.trace is None else None)

    def next_attempt(self, error: str, delay: float, *, counts: bool = True) -> Envelope:
        record = AttemptRecord(attempt=self.attempt, at=datetime.now(UTC), error=error, delay=delay)
        return self.model_copy(
            update={"attempt": self.attempt + (1 if counts else 0), "history": [*self.history, record]}
        )


class EnvelopeError(PayloadError):
    """Stored bytes are not a readable envelope."""


def decode(raw: str | bytes) -> Envelope:
    try:
        return Envelope.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "envelope"
        raise EnvelopeError(f"corrupt envelope: {where}: {first['msg']}") from None
