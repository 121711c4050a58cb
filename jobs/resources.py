"""What the catalog's handlers reach through `ctx.resources`.

Handlers declare `ctx: Context[Resources]` and use `ctx.resources.db`,
`.mailer`, `.http`, `.storage` and `.settings`. `build()` makes them from
`CatalogSettings` (environment prefix `FORGEJOBS_CATALOG_`), whose defaults
work on a laptop with nothing configured: a SQLite file, an outbox folder
instead of SMTP, files under `var/`. A test builds `Resources` itself and
passes fakes or local servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, Protocol

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from forgejobs import Settings

from .storage import Storage
from .store import Store


class CatalogSettings(BaseSettings):
    """The catalog's configuration; every field reads `FORGEJOBS_CATALOG_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FORGEJOBS_CATALOG_", extra="ignore")

    database_url: str = "sqlite:///var/catalog.db"
    """SQLAlchemy URL: SQLite by default, `postgresql+psycopg://user@host/db` in production."""
    create_tables: bool = True
    """Create missing tables when resources are built. Turn off where migrations own the schema."""
    app_url: str = "http://localhost:8000"
    """Links in emails point here."""
    product_name: str = "ForgeStack"

    mail_transport: Literal["outbox", "smtp"] = "outbox"
    """`outbox` writes each message as an .eml file to `outbox_dir`; `smtp` sends it."""
    mail_from: str = "ForgeStack <no-reply@forgestack.test>"
    outbox_dir: Path = Path("var/outbox")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: float = 30.0

    storage_dir: Path = Path("var/storage")
    """Where `LocalStorage` keeps stored objects (swap in your object store's adapter)."""

    http_timeout: float = 10.0
    webhook_allow: list[str] = []
    """Hosts or networks (e.g. `127.0.0.1`, `10.0.0.0/8`) outgoing webhooks may reach although they are
    loopback, private, link-local or metadata addresses. Empty: only public addresses."""

    stripe_webhook_secret: SecretStr | None = None
    """The `whsec_...` signing secret of the Stripe webhook endpoint."""
    stripe_tolerance: int = 300
    """Seconds a Stripe-Signature timestamp may be old before the event is refused as a replay."""


class Mailer(Protocol):
    """Delivers a finished message. Raises `jobs.mail.TransientMailError` for what may work later and
    `jobs.mail.RecipientRefused` when the server will never take it."""

    def send(self, message: EmailMessage) -> None: ...


@dataclass
class Resources:
    """The handles every catalog job gets in `ctx.resources`."""

    db: Store
    mailer: Mailer
    http: httpx.Client
    storage: Storage
    settings: CatalogSettings

    def close(self) -> None:
        self.http.close()
        self.db.dispose()


def build(settings: Settings | None = None, catalog: CatalogSettings | None = None) -> Resources:
    """The resources a worker hands to every job (`FORGEJOBS_RESOURCES` defaults to this function)."""
    from .http import guarded_client
    from .mail import build_mailer
    from .storage import LocalStorage

    catalog = catalog or CatalogSettings()
    return Resources(
        db=Store.from_url(catalog.database_url, create=catalog.create_tables),
        mailer=build_mailer(catalog),
        http=guarded_client(allow=catalog.webhook_allow, timeout=catalog.http_timeout),
        storage=LocalStorage(catalog.storage_dir),
        settings=catalog,
    )
