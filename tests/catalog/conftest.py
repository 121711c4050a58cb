"""Fixtures for the catalog's tests: a store on SQLite and on PostgreSQL, and resources around it.

`store` runs each test twice: on a SQLite file in the test's temporary folder
and on the PostgreSQL at FORGEJOBS_TEST_POSTGRES_URL (default
127.0.0.1:5432/test) in a schema of its own, dropped afterwards. Without a
reachable PostgreSQL the second run is skipped, and says why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from forgejobs.testing import FakeQueue, project_registry
from jobs.http import guarded_client
from jobs.mail import OutboxMailer
from jobs.resources import CatalogSettings, Resources
from jobs.storage import LocalStorage
from jobs.store import Store, memberships, new_id, organisations, users

POSTGRES_URL = os.environ.get("FORGEJOBS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_store() -> Iterator[Store]:
    try:
        admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            schema = f"fj_test_{uuid.uuid4().hex[:12]}"
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to reach it means "no PostgreSQL here"
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {type(exc).__name__}: {exc}")
    store = Store.from_url(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield store
    finally:
        store.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(autouse=True)
def _enqueues_stay_in_memory() -> Iterator[None]:
    """App-side helpers enqueue; a test that does not look at what they enqueued would otherwise fall
    through to the default client, a Redis at 127.0.0.1:6379/0 that is not the test's. Such enqueues land
    in a fake queue instead. Tests that check them ask for `fake_queue`; tests that run a worker install a
    client on their own Redis database."""
    with FakeQueue(registry=project_registry()):
        yield


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        sqlite = Store.from_url(f"sqlite:///{tmp_path / 'catalog.db'}")
        yield sqlite
        sqlite.dispose()
    else:
        yield from _postgres_store()


@pytest.fixture
def catalog_settings(tmp_path: Path) -> CatalogSettings:
    return CatalogSettings(
        database_url="unused: the store fixture is passed in",
        outbox_dir=tmp_path / "outbox",
        storage_dir=tmp_path / "storage",
        webhook_allow=["127.0.0.1"],  # the tests' HTTP servers listen there
        http_timeout=5.0,
        stripe_webhook_secret="whsec_test_secret",
    )


@pytest.fixture
def resources(store: Store, catalog_settings: CatalogSettings) -> Iterator[Resources]:
    res = Resources(
        db=store,
        mailer=OutboxMailer(catalog_settings.outbox_dir),
        http=guarded_client(allow=catalog_settings.webhook_allow, timeout=catalog_settings.http_timeout),
        storage=LocalStorage(catalog_settings.storage_dir),
        settings=catalog_settings,
    )
    yield res
    res.http.close()


@pytest.fixture
def org(store: Store) -> dict[str, str]:
    """One organisation with an owner (`owner_id`, `owner_email`) and a member."""
    org_id, owner, member = new_id("org"), new_id("usr"), new_id("usr")
    now = datetime.now(UTC) - timedelta(days=1)
    with store.begin() as conn:
        conn.execute(
            users.insert(),
            [
                {"id": owner, "email": f"{owner}@example.com", "name": "Ada Owner", "created_at": now},
                {"id": member, "email": f"{member}@example.com", "name": "Bo Member", "created_at": now},
            ],
        )
        conn.execute(
            organisations.insert().values(
                id=org_id, name="Acme", stripe_customer_id=f"cus_{org_id[4:]}", billing_email=f"billing@{org_id}.test"
            )
        )
        conn.execute(
            memberships.insert(),
            [
                {"org_id": org_id, "user_id": owner, "role": "owner"},
                {"org_id": org_id, "user_id": member, "role": "member"},
            ],
        )
    return {
        "org_id": org_id,
        "owner_id": owner,
        "owner_email": f"{owner}@example.com",
        "member_id": member,
        "customer_id": f"cus_{org_id[4:]}",
    }
