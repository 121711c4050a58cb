"""Email delivery: templates rendered with Jinja2, sent by SMTP or written to an outbox folder.

(Skeleton: the email helper completes SMTP and templates.)
"""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

from .resources import CatalogSettings, Mailer


class TransientMailError(Exception):
    """The server or the network failed in a way that may pass: retry the job."""


class RecipientRefused(Exception):
    """The server refused the recipient for good (5xx): retrying cannot help."""


class OutboxMailer:
    """The development transport: each message becomes `<outbox>/<Message-ID>.eml`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, message: EmailMessage) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = str(message["Message-ID"] or "message").strip("<>").replace("/", "_")
        (self.directory / f"{name}.eml").write_bytes(bytes(message))


def build_mailer(settings: CatalogSettings) -> Mailer:
    return OutboxMailer(settings.outbox_dir)
