"""The public names of the worker runtime (`forgejobs.runtime`): `Worker` runs slots as threads of
this process; `ProcessWorker` (`forgejobs.pool`) adds child processes for `mode: processes` queues."""

from __future__ import annotations

from .runtime.worker import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]
