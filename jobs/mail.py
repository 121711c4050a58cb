"""Email delivery: templates rendered with Jinja2, sent by SMTP or written to an outbox folder.

Three layers, each usable on its own:

- `render(template, **context)` turns a template pair from `jobs/templates/email/`
  (`<template>.txt` and `<template>.html`) into a `RenderedEmail`: subject,
  plain text and HTML.
- `build_message(rendered, ...)` makes the `EmailMessage`: a text part with an
  HTML alternative, `From`, `To`, `Date` and a `Message-ID` chosen by the caller
  (the email jobs use `message_id_for(job_id, mail_from)`, so a re-run of one job
  produces the same id). A recipient's display name goes out as it is when it is
  plain words (letters, digits, `'`, `-`, ...), otherwise RFC 2047-encoded
  (`recipient_header`): the email package's header folding can drop the quotes
  of a long quoted name, which would turn `"Alice, eve@evil.test" <a@x>` into
  two recipients. Control characters in names become spaces.
- A transport delivers it: `OutboxMailer` (an .eml file per message, the
  default) or `SmtpMailer`. `build_mailer(settings)` picks one from
  `CatalogSettings.mail_transport`.

Transports report failures with the `MailError` family: `TransientMailError`
(may work later: retry), `RecipientRefused` (the server will never take this
message: give up) and `MailSetupError` (our side is misconfigured: fix the
settings; retrying after the fix works).
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email import policy
from email.charset import Charset
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from .resources import CatalogSettings, Mailer

__all__ = [
    "MailError",
    "MailSetupError",
    "OutboxMailer",
    "RecipientRefused",
    "RenderedEmail",
    "SmtpMailer",
    "TemplateMissingSubject",
    "TransientMailError",
    "build_mailer",
    "build_message",
    "clean_display_name",
    "format_date",
    "format_money",
    "has_control_characters",
    "message_id_for",
    "recipient_header",
    "render",
]


# -- errors ---------------------------------------------------------------------


class MailError(Exception):
    """Root of the errors a transport raises."""


class TransientMailError(MailError):
    """The server or the network failed in a way that may pass (4xx answer, refused connection,
    timeout, dropped connection): retry the job."""


class RecipientRefused(MailError):
    """The server refused this message for good (a 5xx answer to the recipient, the sender or the
    data): retrying cannot help."""


class MailSetupError(MailError):
    """Our side is misconfigured: authentication refused, TLS or AUTH not offered, a certificate
    that does not verify, or another permanent refusal that is not about the message. Jobs retry
    it with backoff, so fixing the settings in time lets them through."""


class TemplateMissingSubject(LookupError):
    """A message's `.txt` template defines no `subject` block."""


# -- templates ------------------------------------------------------------------

# Stripe's zero-decimal and three-decimal currencies; every other one has two decimals.
_ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905 - easier to read
)
_THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())  # noqa: SIM905


def format_money(amount: int, currency: str) -> str:
    """An amount in the currency's smallest unit (as Stripe stores it) for people: `1999, "eur"` -> `EUR 19.99`."""
    code = currency.lower()
    places = 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2
    value = amount / 10**places
    return f"{code.upper()} {value:,.{places}f}"


def format_date(value: date | datetime) -> str:
    """A date for people, in UTC when it has a time: `3 March 2031`."""
    if isinstance(value, datetime):
        value = value.astimezone(UTC).date()
    return f"{value.day} {value:%B %Y}"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("jobs", "templates/email"),
        # .html templates escape every value; .txt templates keep them as they are.
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["money"] = format_money
    env.filters["date"] = format_date
    return env


_ENV = _environment()


@dataclass(frozen=True)
class RenderedEmail:
    """A message's words, before it has sender, recipient or headers."""

    subject: str
    text: str
    html: str


def render(template: str, **context: Any) -> RenderedEmail:
    """Render the pair `<template>.txt` and `<template>.html` from `jobs/templates/email/`.

    The subject is the `subject` block of the `.txt` template, with its
    whitespace collapsed to single spaces; both templates then also see it as
    `subject`. Every variable a template uses must be given: a missing one
    raises `jinja2.UndefinedError` naming it.
    """
    text_template = _ENV.get_template(f"{template}.txt")
    html_template = _ENV.get_template(f"{template}.html")
    block = text_template.blocks.get("subject")
    if block is None:
        raise TemplateMissingSubject(f"email template {template}.txt has no {{% block subject %}}")
    subject = " ".join("".join(block(text_template.new_context(dict(context)))).split())
    if not subject:
        raise TemplateMissingSubject(f"email template {template}.txt rendered an empty subject")
    values = {**context, "subject": subject}
    return RenderedEmail(subject=subject, text=text_template.render(values), html=html_template.render(values))


# -- messages -------------------------------------------------------------------


def message_id_for(job_id: str, mail_from: str) -> str:
    """`<job_id@domain of mail_from>`: the same job always sends the same Message-ID."""
    _, address = parseaddr(mail_from)
    local, at, domain = address.rpartition("@")
    if not (local and at and domain):
        raise ValueError(f"mail_from {mail_from!r} has no address with a domain to put in the Message-ID")
    return f"<{job_id}@{domain}>"


_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})  # C0/C1 controls (tab, \x0b, \x1c, \x85, ...), U+2028/9
_PLAIN_WORDS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
"""RFC 5322 atoms separated by single spaces: a display name that needs neither quoting nor encoding."""
_MAX_LINE = 78
_ENCODED_WORD_MAX = 75
_UTF8 = Charset("utf-8")
_POLICY = policy.default.clone(refold_source="none")
"""The messages' policy: a header set with `set_raw` (the `To` that `recipient_header` folded) is written as
it is, never refolded by the email package."""


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a control character or line separator (tab, U+000B, U+001C, U+0085, U+2028 ...):
    Python's own `str.splitlines` breaks lines at several of them."""
    return any(unicodedata.category(c) in _CONTROL_CATEGORIES for c in text)


def clean_display_name(name: str) -> str:
    """`name` with control characters and line separators turned into spaces and runs of spaces collapsed."""
    return " ".join("".join(" " if unicodedata.category(c) in _CONTROL_CATEGORIES else c for c in name).split())


def recipient_header(to: Address, header: str = "To") -> str:
    """The value of a one-address header, folded to lines of at most 78 characters where the address allows.

    A display name of plain words goes out as it is (`Ada Lovelace <ada@example.com>`); any other (commas,
    quotes, dots, non-ASCII) as RFC 2047 encoded words, which folding cannot split into more addresses.
    Control characters in the name become spaces (`clean_display_name`)."""
    name = clean_display_name(to.display_name)
    addr = to.addr_spec
    if not name:
        return addr
    if _PLAIN_WORDS.fullmatch(name) and len(f"{header}: {name} <{addr}>") <= _MAX_LINE:
        return f"{name} <{addr}>"
    lines = [f"{header}:"]
    for word in [*_encoded_words(name), f"<{addr}>"]:
        if len(lines[-1]) + 1 + len(word) <= _MAX_LINE or lines[-1] == f"{header}:":
            lines[-1] += f" {word}"
        else:
            lines.append(f" {word}")
    return "\n".join(lines)[len(header) + 2 :]


def _encoded_words(name: str) -> list[str]:
    """`name` as RFC 2047 encoded words of at most 75 characters each, split after the spaces of the name
    where it can be (the space stays inside the earlier word: readers drop the whitespace between encoded
    words) and inside a word only when one word alone is too long."""

    def fits(text: str) -> bool:
        return len(_UTF8.header_encode(text)) <= _ENCODED_WORD_MAX

    chunks: list[str] = []
    chunk = ""
    pieces = name.split(" ")
    for index, piece in enumerate(pieces):
        piece = piece if index == len(pieces) - 1 else piece + " "
        if fits(chunk + piece):
            chunk += piece
            continue
        if chunk:
            chunks.append(chunk)
            chunk = ""
        for char in piece:
            if chunk and not fits(chunk + char):
                chunks.append(chunk)
                chunk = ""
            chunk += char
    if chunk:
        chunks.append(chunk)
    return [_UTF8.header_encode(c) for c in chunks]


def build_message(
    rendered: RenderedEmail,
    *,
    to: Address | str,
    mail_from: str,
    message_id: str,
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """A `multipart/alternative` message (plain text first, then HTML) with From, To, Subject, Date and
    Message-ID set. `to` is an `Address` (with display name; written by `recipient_header`) or a bare address."""
    message = EmailMessage(policy=_POLICY)
    message["From"] = mail_from
    if isinstance(to, Address):
        message.set_raw("To", recipient_header(to))
    else:
        message["To"] = to
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


# -- transports -----------------------------------------------------------------


class OutboxMailer:
    """The development transport: each message becomes `<outbox>/<Message-ID>.eml`.

    The file is written under a temporary name and renamed, so a reader never
    sees half a message; sending the same Message-ID again replaces the file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, message: EmailMessage) -> Path:
        """Where `send` writes (or wrote) `message`."""
        name = str(message["Message-ID"] or "message").strip().strip("<>").replace("/", "_")
        return self.directory / f"{name}.eml"

    def send(self, message: EmailMessage) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path_for(message)
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".sending-", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(bytes(message))
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


SmtpSecurity = Literal["none", "starttls", "tls"]


class SmtpMailer:
    """Sends each message over one SMTP connection with `smtplib`.

    `security`: `none` (plain), `starttls` (plain, then upgraded; refused if the
    server does not offer it) or `tls` (TLS from the first byte, usually port
    465). With `username`, logs in after TLS is up. `timeout` (seconds) bounds
    the connection and every command. `ssl_context` defaults to the system's
    trusted certificates with host name checking.

    Errors become `TransientMailError`, `RecipientRefused` or `MailSetupError`
    (see the module). Meant for one recipient per message, as the catalog's
    jobs send: if a server accepts some recipients and refuses others, the
    message is reported refused although some got it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: SmtpSecurity = "none",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"smtp security must be none, starttls or tls, not {security!r}")
        if (username is None) != (password is None):
            raise ValueError("smtp username and password go together: give both or neither")
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self._password = password
        self.timeout = timeout
        self.ssl_context = ssl_context

    def __repr__(self) -> str:
        user = f" as {self.username}" if self.username else ""
        return f"<SmtpMailer {self.host}:{self.port} {self.security}{user}>"

    @classmethod
    def from_settings(cls, settings: CatalogSettings) -> SmtpMailer:
        """The mailer `FORGEJOBS_CATALOG_SMTP_*` describe."""
        password = settings.smtp_password.get_secret_value() if settings.smtp_password is not None else None
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=password,
            timeout=settings.smtp_timeout,
        )

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def send(self, message: EmailMessage) -> None:
        where = f"SMTP {self.host}:{self.port}"
        try:
            self._send(message)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _refused_recipients(where, exc.recipients) from exc
        except smtplib.SMTPSenderRefused as exc:
            text = f"{where} refused the sender {exc.sender!r}"
            # A refused sender (530 "authenticate first", 550 "sender not allowed", an SPF policy) is our
            # configuration, not this message: retry with backoff so the queue waits for the fix.
            raise _by_code(exc.smtp_code, text, exc.smtp_error, permanent=MailSetupError) from exc
        except smtplib.SMTPDataError as exc:
            raise _by_code(exc.smtp_code, f"{where} refused the message data", exc.smtp_error) from exc
        except smtplib.SMTPAuthenticationError as exc:
            text = f"{where} refused the login of {self.username!r}"
            raise _by_code(exc.smtp_code, text, exc.smtp_error, permanent=MailSetupError) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise MailSetupError(f"{where}: {exc} (check smtp_security and smtp_username)") from exc
        except smtplib.SMTPServerDisconnected as exc:
            if isinstance(exc.__context__, TimeoutError):  # smtplib reports a read timeout as a disconnect
                raise TransientMailError(f"{where} did not answer within {self.timeout:g}s") from exc
            raise TransientMailError(f"{where} closed the connection: {exc}") from exc
        except smtplib.SMTPResponseException as exc:
            raise _by_code(exc.smtp_code, f"{where} answered", exc.smtp_error, permanent=MailSetupError) from exc
        except smtplib.SMTPException as exc:  # e.g. no authentication mechanism both sides know
            raise MailSetupError(f"{where}: {exc}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise MailSetupError(f"{where}: the server's certificate does not verify: {exc.verify_message}") from exc
        except TimeoutError as exc:
            raise TransientMailError(f"{where} did not answer within {self.timeout:g}s") from exc
        except OSError as exc:  # refused or reset connections, DNS failures, TLS handshakes cut short, ...
            raise TransientMailError(f"{where} could not be reached: {type(exc).__name__}: {exc}") from exc

    def _send(self, message: EmailMessage) -> None:
        smtp: smtplib.SMTP
        if self.security == "tls":
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._context())
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.security == "starttls":
                smtp.ehlo()
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if self.username is not None and self._password is not None:
                smtp.login(self.username, self._password)
            refused = smtp.send_message(message)
        finally:
            # Once the message is accepted, a failing QUIT must not turn into an error (and a resend).
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)


def _answer(code: int, text: bytes | str) -> str:
    words = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {words}".strip()


def _by_code(code: int, what: str, text: bytes | str, *, permanent: type[MailError] = RecipientRefused) -> MailError:
    """5xx answers are permanent (`permanent`), everything else (4xx, or no code at all) may pass."""
    message = f"{what}: {_answer(code, text)}"
    if 500 <= code < 600:
        return permanent(message)
    return TransientMailError(message)


def _refused_recipients(where: str, recipients: Mapping[str, tuple[int, bytes]]) -> MailError:
    answers = "; ".join(f"{address}: {_answer(code, text)}" for address, (code, text) in recipients.items())
    if recipients and all(500 <= code < 600 for code, _ in recipients.values()):
        return RecipientRefused(f"{where} refused the recipient(s): {answers}")
    return TransientMailError(f"{where} deferred the recipient(s): {answers}")


def build_mailer(settings: CatalogSettings) -> Mailer:
    """`OutboxMailer(settings.outbox_dir)` or `SmtpMailer.from_settings(settings)`, by `settings.mail_transport`."""
    if settings.mail_transport == "smtp":
        return SmtpMailer.from_settings(settings)
    if settings.mail_transport == "outbox":
        return OutboxMailer(settings.outbox_dir)
    raise ValueError(f"mail_transport must be outbox or smtp, not {settings.mail_transport!r}")
