"""Enqueue after a SQLAlchemy commit: jobs made inside a transaction are sent once it commits, dropped if not.

    from forgejobs.sqlalchemy import enqueue_after_commit

    with Session(engine) as session, enqueue_after_commit(session):
        session.add(User(id=user_id, ...))
        WelcomeEmail.enqueue(user_id=user_id)   # held: validated now, sent after the commit
        session.commit()                        # the email job is stored here, after the COMMIT

Or for every session of a factory: `install(sessionmaker)`; then any enqueue made (in that thread or
task) while one of its sessions has a transaction open is held for that session's commit.

What is held and what a held handle answers: `forgejobs.aftercommit`. Per kind of target:

- **Session** (and `AsyncSession`): sent when the outermost transaction has committed (after the COMMIT
  returned), dropped when it rolls back or the session closes without committing. An enqueue inside
  `begin_nested()` belongs to that savepoint: rolling the savepoint back drops only its jobs; releasing it
  hands them to the enclosing transaction. An enqueue made in the block while the session has no transaction
  yet is held for its next one; any still held when the block ends with no transaction open are dropped
  (and logged), as no commit can send them.
- **Connection** (and `AsyncConnection`): SQLAlchemy tells a connection's listeners about a commit only
  *before* it is sent to the database, so the jobs of a committed transaction are sent when the block ends
  or, with commit-as-you-go, when the connection's next transaction begins, whichever comes first. Put the
  block around the transaction (`with enqueue_after_commit(conn): with conn.begin(): ...`) or use `begin(engine)`;
  a block that ends while its connection still has a transaction with held jobs raises `ForgeJobsError`
  (inside that transaction, so it rolls back and nothing is half done). Savepoints (`begin_nested()`) as for
  a session.

With asyncio, jobs for an `AsyncClient` (from `await Job.aenqueue(...)`) are stored by a task started at
the commit; `async with enqueue_after_commit(session)` waits for those tasks when it ends and raises what
they raised. Jobs for a sync client are stored during the commit call itself, and an error storing them
(Redis unreachable) is raised from `commit()` after the database has committed: the rows are there and the
jobs are not, the window a transactional outbox (`forgejobs.outbox`) closes.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

try:
    from sqlalchemy import event
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
except ModuleNotFoundError as exc:  # pragma: no cover - the extra is missing
    raise ModuleNotFoundError(
        "forgejobs.sqlalchemy needs SQLAlchemy 2: pip install 'forgejobs[sqlalchemy]'", name=exc.name
    ) from exc

from .aftercommit import HeldEnqueue, HeldHandle, drop_held, hold, send_soon
from .client import Client, enqueue_hook
from .errors import ForgeJobsError
from .handle import JobHandle
from .job import Job
from .options import EnqueueOptions

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    from .aio import AsyncClient

__all__ = ["HeldHandle", "begin", "enqueue_after_commit", "install"]

_KEY = "forgejobs.after_commit"


class _Hold:
    """The jobs held for one session or connection, and the hook that holds them."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.previous: Any = None  # the hook this one replaced (install)

    def __call__(
        self,
        client: Client | AsyncClient,
        job_type: type[Job],
        items: Sequence[Job | Mapping[str, Any]],
        options: EnqueueOptions,
    ) -> list[JobHandle[Any]] | None:
        batch = self.take(client, job_type, items, options)
        return list(batch.handles) if batch is not None else None

    def take(
        self,
        client: Client | AsyncClient,
        job_type: type[Job],
        items: Sequence[Job | Mapping[str, Any]],
        options: EnqueueOptions,
    ) -> HeldEnqueue | None:
        raise NotImplementedError

    def leftovers(self) -> list[HeldEnqueue]:
        """Jobs still held when a block ends outside any transaction (no commit can send them)."""
        raise NotImplementedError


class _SessionHold(_Hold):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = weakref.ref(session)
        self.held: list[tuple[SessionTransaction | None, HeldEnqueue]] = []
        self.committing = False

    def take(
        self,
        client: Client | AsyncClient,
        job_type: type[Job],
        items: Sequence[Job | Mapping[str, Any]],
        options: EnqueueOptions,
    ) -> HeldEnqueue | None:
        session = self.session()
        if session is None:
            return None
        tag = session.get_nested_transaction() or session.get_transaction()
        batch = hold(client, job_type, items, options)
        self.held.append((tag, batch))
        return batch

    def created(self, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # jobs held before any transaction belong to this one
            self.held = [(transaction if tag is None else tag, batch) for tag, batch in self.held]

    def ended(self, transaction: SessionTransaction) -> None:
        committed, self.committing = self.committing, False
        mine = [batch for tag, batch in self.held if tag is transaction]
        self.held = [(tag, batch) for tag, batch in self.held if tag is not transaction]
        if not committed:
            what = "transaction" if transaction.parent is None else "savepoint"
            drop_held(mine, f"the {what} rolled back")
        elif transaction.parent is not None:  # a released savepoint: its jobs now wait for the enclosing one
            self.held += [(transaction.parent, batch) for batch in mine]
        else:
            send_soon(mine, self.tasks)

    def leftovers(self) -> list[HeldEnqueue]:
        session = self.session()
        if session is not None and session.in_transaction():
            return []
        left = [batch for tag, batch in self.held if tag is None]
        self.held = [(tag, batch) for tag, batch in self.held if tag is not None]
        return left


def _session_hold(session: Session) -> _SessionHold:
    found = session.info.get(_KEY)
    if not isinstance(found, _SessionHold):
        found = session.info[_KEY] = _SessionHold(session)
    return found


def _on_created(session: Session, transaction: SessionTransaction) -> None:
    found = session.info.get(_KEY)
    if isinstance(found, _SessionHold):
        found.created(transaction)


def _on_commit(session: Session) -> None:
    found = session.info.get(_KEY)
    if isinstance(found, _SessionHold):
        found.committing = True


def _on_ended(session: Session, transaction: SessionTransaction) -> None:
    found = session.info.get(_KEY)
    if isinstance(found, _SessionHold):
        found.ended(transaction)


def _listen_session(target: Any) -> None:
    for name, handler in (
        ("after_transaction_create", _on_created),
        ("after_commit", _on_commit),
        ("after_transaction_end", _on_ended),
    ):
        if not event.contains(target, name, handler):
            event.listen(target, name, handler)


# -- installed on a session factory ---------------------------------------------------------------


def _installed_created(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        found = _session_hold(session)
        found.previous = enqueue_hook.get()
        enqueue_hook.set(found)


def _installed_ended(session: Session, transaction: SessionTransaction) -> None:
    found = session.info.get(_KEY)
    if transaction.parent is None and isinstance(found, _SessionHold) and enqueue_hook.get() is found:
        enqueue_hook.set(found.previous)
        found.previous = None


def install(factory: sessionmaker[Any] | type[Session]) -> None:
    """Hold enqueues for every session `factory` makes: while one of its sessions has a transaction open,
    an enqueue made in the same thread (or asyncio task) is held until that transaction commits.

    Give the `sessionmaker` (or the `Session` subclass) the application uses; for `async_sessionmaker`,
    its `sync_session_class` option's class. Installing twice is harmless."""
    _listen_session(factory)
    for name, handler in (
        ("after_transaction_create", _installed_created),
        ("after_transaction_end", _installed_ended),
    ):
        if not event.contains(factory, name, handler):
            event.listen(factory, name, handler)


# -- connections ----------------------------------------------------------------------------------


class _ConnectionHold(_Hold):
    def __init__(self) -> None:
        super().__init__()
        self.levels: list[list[HeldEnqueue]] = [[]]  # the transaction, then one list per open savepoint
        self.committed: list[HeldEnqueue] = []

    def take(
        self,
        client: Client | AsyncClient,
        job_type: type[Job],
        items: Sequence[Job | Mapping[str, Any]],
        options: EnqueueOptions,
    ) -> HeldEnqueue | None:
        batch = hold(client, job_type, items, options)
        self.levels[-1].append(batch)
        return batch

    def all_held(self) -> list[HeldEnqueue]:
        return [batch for level in self.levels for batch in level]

    def begin(self, conn: Connection) -> None:
        self.flush()

    def commit(self, conn: Connection) -> None:  # before the COMMIT is sent: sent later, by flush()
        self.committed += self.all_held()
        self.levels = [[]]

    def rollback(self, conn: Connection) -> None:
        drop_held([*self.committed, *self.all_held()], "the transaction rolled back")
        self.committed, self.levels = [], [[]]

    def savepoint(self, conn: Connection, name: str | None) -> None:
        self.levels.append([])

    def rollback_savepoint(self, conn: Connection, name: str, context: Any) -> None:
        if len(self.levels) > 1:
            drop_held(self.levels.pop(), f"savepoint {name} rolled back")

    def release_savepoint(self, conn: Connection, name: str, context: Any) -> None:
        if len(self.levels) > 1:
            released = self.levels.pop()
            self.levels[-1] += released

    def flush(self) -> None:
        committed, self.committed = self.committed, []
        send_soon(committed, self.tasks)

    def leftovers(self) -> list[HeldEnqueue]:
        left = self.all_held()
        self.levels = [[]]
        return left


_CONNECTION_EVENTS = ("begin", "commit", "rollback", "savepoint", "rollback_savepoint", "release_savepoint")


# Listened for once per engine (a listener per connection costs more than the enqueue it guards); each event
# goes to the holds of the blocks open on that connection.
_holds: weakref.WeakKeyDictionary[Connection, list[_ConnectionHold]] = weakref.WeakKeyDictionary()
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _relay(name: str) -> Any:
    def handler(conn: Connection, *args: Any) -> None:
        for found in _holds.get(conn, ()):
            getattr(found, name)(conn, *args)

    return handler


_HANDLERS = {name: _relay(name) for name in _CONNECTION_EVENTS}


@contextmanager
def _connection_block(conn: Connection) -> Iterator[_ConnectionHold]:
    engine = conn.engine
    if engine not in _engines:
        for name, handler in _HANDLERS.items():
            event.listen(engine, name, handler)
        _engines.add(engine)
    found = _ConnectionHold()
    _holds.setdefault(conn, []).append(found)
    try:
        yield found
    except BaseException:
        drop_held([*found.committed, *found.all_held()], "the block raised")
        raise
    else:
        if conn.in_transaction() and found.all_held():
            held = found.all_held()
            drop_held(held, "the block ended inside its transaction")
            raise ForgeJobsError(
                f"enqueue_after_commit(connection) ended while the connection's transaction, holding "
                f"{sum(len(b.handles) for b in held)} job(s), was still open: put the block around the "
                "transaction (with enqueue_after_commit(conn): with conn.begin(): ...), or use "
                "forgejobs.sqlalchemy.begin(engine)"
            )
        drop_held(found.leftovers(), "no transaction committed them before the block ended")
        found.flush()
    finally:
        blocks = _holds.get(conn, [])
        blocks.remove(found)
        if not blocks:
            _holds.pop(conn, None)


# -- the public entry points ----------------------------------------------------------------------


class _Block:
    """What `enqueue_after_commit` returns: a `with` block, or an `async with` block that also waits for
    asyncio stores started by commits inside it."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self._stack: Any = None
        self._hold: _Hold | None = None
        self._token: Any = None

    def __enter__(self) -> HeldTarget:
        target = self.target
        if isinstance(target, Connection):
            self._stack = _connection_block(target)
            self._hold = self._stack.__enter__()
        elif isinstance(target, Session):
            _listen_session(target)
            self._hold = _session_hold(target)
        else:
            raise TypeError(
                f"enqueue_after_commit() takes a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection, "
                f"not {type(target).__name__}"
            )
        self._token = enqueue_hook.set(self._hold)
        return HeldTarget(self._hold)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        enqueue_hook.reset(self._token)
        if self._stack is not None:
            return bool(self._stack.__exit__(kind, exc, tb))
        assert self._hold is not None
        drop_held(self._hold.leftovers(), "no transaction committed them before the block ended")
        return None

    async def __aenter__(self) -> HeldTarget:
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        result = self.__exit__(kind, exc, tb)
        assert self._hold is not None
        tasks, self._hold.tasks = self._hold.tasks, []
        if tasks:
            await asyncio.gather(*tasks)  # raises the first store error
        return result


class HeldTarget:
    """What the block yields: the tasks started to store jobs after a commit (asyncio clients only)."""

    def __init__(self, found: _Hold) -> None:
        self._hold = found

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._hold.tasks)


def enqueue_after_commit(target: Session | Connection | AsyncSession | AsyncConnection) -> _Block:
    """Hold the enqueues made inside the block until `target`'s transaction commits; drop them if it rolls back.

    `with enqueue_after_commit(session): ...` or `async with enqueue_after_commit(async_session): ...`.
    See the module docstring for when exactly each kind of target sends."""
    sync = getattr(target, "sync_session", None) or getattr(target, "sync_connection", None) or target
    return _Block(sync)


@contextmanager
def begin(bind: Engine | Connection) -> Iterator[Connection]:
    """`engine.begin()` with enqueues held: yields a connection in a transaction; commits at the end of the
    block, then stores the jobs enqueued inside it (rolls back and drops them on an error)."""
    if isinstance(bind, Engine):
        with bind.connect() as conn, enqueue_after_commit(conn), conn.begin():
            yield conn
    else:
        with enqueue_after_commit(bind), bind.begin():
            yield bind
