"""The store's portable helpers behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs.storage import LocalStorage
from jobs.store import SchemaMismatch, Store, activity_feed, audit_log, metadata, users


def test_insert_ignore_inserts_once(store: Store, org: dict[str, str]) -> None:
    row = {"event_id": "e1", "actor_id": "u", "action": "a.b", "target": "t", "at": datetime.now(UTC)}
    with store.begin() as conn:
        assert store.insert_ignore(conn, audit_log, row) is True
        assert store.insert_ignore(conn, audit_log, {**row, "action": "changed"}) is False
        assert conn.execute(sa.select(audit_log.c.action)).scalars().all() == ["a.b"]


def test_upsert_updates_only_where_the_condition_holds(store: Store, org: dict[str, str]) -> None:
    base = {"dedupe_key": "k", "org_id": org["org_id"], "verb": "v", "object_type": "o", "object_id": "1"}
    with store.begin() as conn:
        at = datetime(2026, 1, 1, tzinfo=UTC)
        assert store.upsert(conn, activity_feed, {**base, "summary": "one", "at": at}, ["dedupe_key"])
        older = activity_feed.c.at < sa.literal(datetime(2025, 1, 1, tzinfo=UTC))
        store.upsert(conn, activity_feed, {**base, "summary": "two", "at": at}, ["dedupe_key"], where=older)
        assert conn.execute(sa.select(activity_feed.c.summary)).scalar_one() == "one"
        store.upsert(conn, activity_feed, {**base, "summary": "three", "at": at}, ["dedupe_key"])
        assert conn.execute(sa.select(activity_feed.c.summary)).scalar_one() == "three"


def test_datetimes_come_back_aware_utc(store: Store, org: dict[str, str]) -> None:
    with store.begin() as conn:
        created = conn.execute(sa.select(users.c.created_at).where(users.c.id == org["owner_id"])).scalar_one()
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), store.begin() as conn:
        conn.execute(users.insert().values(id="u1", email="a@b.c", name="A", created_at=datetime(2026, 1, 1)))


@pytest.mark.parametrize("key", ["org//a.pdf", "org/./a.pdf", "org/a.pdf/", "/org/a.pdf", "org/../a.pdf", "", "a\\b"])
def test_local_storage_refuses_keys_not_in_normal_form(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(ValueError, match="storage key"):
        storage.put(key, b"x")
    assert list(storage.list()) == []


def test_local_storage_lists_the_keys_it_was_given(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("org/2026/a.pdf", b"x")
    assert [key for key, _ in storage.list()] == ["org/2026/a.pdf"]
    assert storage.delete("org/2026/a.pdf") and not storage.delete("org/2026/a.pdf")


def test_many_workers_may_create_the_tables_at_once(store: Store) -> None:
    """Worker children build their resources at the same moment; on an empty database each creates tables."""
    with store.begin() as conn:  # start from nothing, in this test's own database or schema
        metadata.drop_all(conn)
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def create() -> None:  # each on its own connection from the pool, as separate processes would be
        try:
            barrier.wait()
            store.create_all()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert set(sa.inspect(store.engine).get_table_names()) >= {"users", "files", "audit_log"}


def test_a_database_made_by_an_older_catalog_is_named_not_half_used(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Store.from_url(url)
    with old.begin() as conn:
        conn.execute(sa.text("ALTER TABLE files DROP COLUMN purge_at"))
    old.dispose()

    with pytest.raises(SchemaMismatch, match=r"lacks files\.purge_at: it was created by an older catalog"):
        Store.from_url(url)
