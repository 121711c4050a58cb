"""Dead letters: jobs that failed for good, kept whole so they can be read and requeued.

A job is dead-lettered when it spends its attempts, raises `Unrecoverable`,
names an unknown job type, carries a payload that no longer validates, or
arrives as bytes that are not an envelope. The record keeps the payload (or
the raw bytes), the last error and traceback, and every attempt's error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .envelope import AttemptRecord


class Reason(StrEnum):
    EXHAUSTED = "exhausted"  # every attempt failed
    UNRECOVERABLE = "unrecoverable"  # the handler raised Unrecoverable
    UNKNOWN_JOB = "unknown-job"  # no job type with that name in this worker
    INVALID_PAYLOAD = "invalid-payload"  # the payload does not validate against the job model
    CORRUPT = "corrupt"  # the stored bytes are not an envelope
    BAD_RESULT = "bad-result"  # perform returned something that is not JSON
    STALLED = "stalled"  # its worker died while running it: on the last attempt, or once too often


class DeadLetter(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    name: str | None = None
    queue: str | None = None
    priority: int | None = None
    reason: Reason
    error: str
    traceback: str = ""
    payload: dict[str, Any] | None = None
    raw: str | None = Field(default=None, description="The stored bytes, when they were not an envelope.")
    attempts: list[AttemptRecord] = Field(default_factory=list)
    died_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def requeueable(self) -> bool:
        return self.name is not None and self.payload is not None


class DeadLetterStore(ABC):
    """Primitive storage of dead letters; requeueing is done by the client."""

    @abstractmethod
    def add(self, record: DeadLetter) -> None: ...

    @abstractmethod
    def get(self, job_id: str) -> DeadLetter | None: ...

    @abstractmethod
    def recent(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Newest first."""

    @abstractmethod
    def remove(self, job_id: str) -> bool: ...

    @abstractmethod
    def count(self) -> int: ...

    def ids(self) -> list[str]:
        return [r.id for r in self.recent(limit=self.count() or 1)]

    def purge(self) -> int:
        ids = self.ids()
        for job_id in ids:
            self.remove(job_id)
        return len(ids)


class MemoryDeadLetters(DeadLetterStore):
    def __init__(self) -> None:
        self._records: dict[str, DeadLetter] = {}

    def add(self, record: DeadLetter) -> None:
        self._records.pop(record.id, None)
        self._records[record.id] = record

    def get(self, job_id: str) -> DeadLetter | None:
        return self._records.get(job_id)

    def recent(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return list(reversed(self._records.values()))[offset : offset + limit]

    def remove(self, job_id: str) -> bool:
        return self._records.pop(job_id, None) is not None

    def count(self) -> int:
        return len(self._records)
