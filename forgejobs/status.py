"""Job status as a typed enum, with the sets callers test against."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"  # waiting for a worker
    SCHEDULED = "scheduled"  # delayed, or waiting out a retry backoff
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # attempts spent or unrecoverable: see the dead letters
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # no record (expired or never existed)


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
PENDING = frozenset({Status.QUEUED, Status.SCHEDULED, Status.RUNNING})
