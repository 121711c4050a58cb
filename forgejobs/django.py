"""Enqueue after a Django commit, on `transaction.on_commit`: jobs made inside `atomic()` wait for its commit.

    from forgejobs.django import enqueue_after_commit

    with enqueue_after_commit(), transaction.atomic():
        user = User.objects.create(email=email)
        WelcomeEmail.enqueue(user_id=str(user.pk))   # held: validated now, stored after the commit

Or for every request: add `"forgejobs.django.AfterCommitMiddleware"` to `MIDDLEWARE`; then an enqueue made
while handling a request inside an `atomic()` block (or under `ATOMIC_REQUESTS`) is held for its commit.
Outside an atomic block Django is in autocommit and the enqueue goes out at once, as without the block.

Django decides when: the jobs are stored by an `on_commit` callback of the database `using` (default:
`"default"`), so they run after the outermost atomic block commits; jobs enqueued inside an inner
`atomic()` (a savepoint) that rolls back are dropped with it, and all of them with a rolled-back outer
block. Django does not tell callbacks about rollbacks, so a handle of a dropped job stays `held` (its
`status()` is `UNKNOWN`). What else a held handle answers: `forgejobs.aftercommit`. An error storing the
jobs (Redis unreachable) is raised from the commit, after the database has committed (`on_commit`'s usual
behaviour): the window `forgejobs.outbox` closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

try:
    from django.db import transaction  # type: ignore[import-untyped]
except ModuleNotFoundError as exc:  # pragma: no cover - the extra is missing
    raise ModuleNotFoundError("forgejobs.django needs Django: pip install 'forgejobs[django]'", name=exc.name) from exc

from .aftercommit import HeldEnqueue, HeldHandle, hold, send_soon
from .client import Client, enqueue_hook
from .handle import JobHandle
from .job import Job
from .options import EnqueueOptions

if TYPE_CHECKING:
    from .aio import AsyncClient

__all__ = ["AfterCommitMiddleware", "HeldHandle", "enqueue_after_commit"]


class _DjangoHold:
    def __init__(self, using: str | None) -> None:
        self.using = using

    def __call__(
        self,
        client: Client | AsyncClient,
        job_type: type[Job],
        items: Sequence[Job | Mapping[str, Any]],
        options: EnqueueOptions,
    ) -> list[JobHandle[Any]] | None:
        if not transaction.get_connection(self.using).in_atomic_block:
            return None  # autocommit: nothing to wait for
        batch = hold(client, job_type, items, options)
        transaction.on_commit(partial(_store, batch), using=self.using)
        return list(batch.handles)


def _store(batch: HeldEnqueue) -> None:
    send_soon([batch], [])


@contextmanager
def enqueue_after_commit(using: str | None = None) -> Iterator[None]:
    """Hold the enqueues made inside the block, while an `atomic()` block of database `using` is open, until
    it commits (`transaction.on_commit`); outside atomic blocks they go out at once."""
    token = enqueue_hook.set(_DjangoHold(using))
    try:
        yield
    finally:
        enqueue_hook.reset(token)


class AfterCommitMiddleware:
    """Django middleware: every request runs inside `enqueue_after_commit()` for the default database."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        with enqueue_after_commit():
            return self.get_response(request)
