"""What the catalog's handlers reach through `ctx.resources`.

Settings come from the environment (prefix `FORGEJOBS_CATALOG_`) with
working local defaults, so the demo needs no configuration; a unit test
builds a `Resources` pointing at a temporary directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from forgejobs import Settings


class CatalogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORGEJOBS_CATALOG_", extra="ignore")

    outbox_dir: Path = Path("var/outbox")
    audit_log: Path = Path("var/audit.jsonl")
    mail_from: str = "ForgeStack <no-reply@forgestack.test>"
    http_timeout: float = 10.0


@dataclass
class Resources:
    outbox_dir: Path
    audit_log: Path
    mail_from: str
    http_timeout: float


def build(settings: Settings | None = None) -> Resources:
    """The resources a worker hands to every job."""
    catalog = CatalogSettings()
    return Resources(catalog.outbox_dir, catalog.audit_log, catalog.mail_from, catalog.http_timeout)
