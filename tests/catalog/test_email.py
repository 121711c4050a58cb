"""Queue `email`: templates, messages, the SMTP transport against a real server, and the three jobs.

Handler tests take the `store` fixture, so each runs on SQLite and on PostgreSQL.
SMTP tests talk to a real aiosmtpd server on 127.0.0.1; the TLS ones need `trustme`.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
from datetime import timedelta
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import jinja2
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from forgejobs import Reason, RetryLater, Unrecoverable
from forgejobs.testing import FakeQueue, make_context
from jobs.email import (
    STALE_CLAIM,
    EmailOutcome,
    Notification,
    NotificationKind,
    SendInvitation,
    WelcomeEmail,
    invite,
    notify,
)
from jobs.flows import sign_up
from jobs.mail import (
    MailSetupError,
    OutboxMailer,
    RecipientRefused,
    SmtpMailer,
    TransientMailError,
    build_mailer,
    build_message,
    format_money,
    message_id_for,
    render,
)
from jobs.resources import CatalogSettings, Resources
from jobs.store import (
    Store,
    invitations,
    invoices,
    new_id,
    sent_emails,
    subscriptions,
    users,
    utcnow,
    webhook_endpoints,
)
from tests.catalog.smtp_server import Server, free_port, parse, start_server

TEMPLATES = Path(__file__).resolve().parents[2] / "jobs" / "templates" / "email"
BASICS = {"product_name": "ForgeStack", "app_url": "https://app.forgestack.test"}


def outbox(settings: CatalogSettings) -> list[EmailMessage]:
    if not settings.outbox_dir.exists():
        return []
    return [parse(path.read_bytes()) for path in sorted(settings.outbox_dir.glob("*.eml"))]


def parts(message: EmailMessage) -> tuple[str, str]:
    """The text/plain and text/html bodies of a multipart/alternative message."""
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def sent_rows(store: Store) -> list[Any]:
    with store.begin() as conn:
        return list(conn.execute(sa.select(sent_emails)).all())


# -- templates and messages --------------------------------------------------------------


def test_html_escapes_values_and_text_keeps_them() -> None:
    rendered = render("welcome", name="<script>alert(1)</script>", **BASICS)

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "<script>" not in rendered.html
    assert "Hi <script>alert(1)</script>," in rendered.text
    assert rendered.subject == "Welcome to ForgeStack"
    assert "<title>Welcome to ForgeStack</title>" in rendered.html  # the layout shows the subject


def test_a_missing_variable_fails_loudly() -> None:
    with pytest.raises(jinja2.UndefinedError, match="'name' is undefined"):
        render("welcome", **BASICS)


def test_every_message_has_both_parts_and_the_html_extends_the_one_layout() -> None:
    names = {p.stem for p in TEMPLATES.iterdir()} - {"base", "components"}
    expected = {"welcome", "invitation", "payment_failed", "invoice_paid", "subscription_canceled"}
    assert names >= expected | {"webhook_endpoint_disabled"}
    for name in names:
        html = (TEMPLATES / f"{name}.html").read_text()
        text = (TEMPLATES / f"{name}.txt").read_text()
        assert html.startswith('{% extends "base.html" %}'), name
        assert text.startswith('{% extends "base.txt" %}'), name
        assert "{% block subject %}" in text, name


def test_money_uses_the_currency_s_decimals() -> None:
    assert format_money(123456, "usd") == "USD 1,234.56"
    assert format_money(500, "jpy") == "JPY 500"
    assert format_money(1234, "KWD") == "KWD 1.234"


def test_message_id_is_the_job_id_at_the_sender_domain() -> None:
    assert message_id_for("job-1", "ForgeStack <no-reply@forgestack.test>") == "<job-1@forgestack.test>"
    with pytest.raises(ValueError, match="no address with a domain"):
        message_id_for("job-1", "ForgeStack")


def test_build_mailer_follows_the_settings(tmp_path: Path) -> None:
    outbox_mailer = build_mailer(CatalogSettings(outbox_dir=tmp_path))
    assert isinstance(outbox_mailer, OutboxMailer) and outbox_mailer.directory == tmp_path

    smtp = build_mailer(
        CatalogSettings(
            mail_transport="smtp",
            smtp_host="mail.test",
            smtp_port=587,
            smtp_security="starttls",
            smtp_username="u",
            smtp_password=SecretStr("hunter2-secret"),
            smtp_timeout=4,
        )
    )
    assert isinstance(smtp, SmtpMailer)
    assert (smtp.host, smtp.port, smtp.security, smtp.username, smtp.timeout) == ("mail.test", 587, "starttls", "u", 4)
    assert "hunter2" not in repr(smtp) and "hunter2" not in repr(vars(smtp).get("username"))
    with pytest.raises(ValueError, match="username and password go together"):
        build_mailer(CatalogSettings(mail_transport="smtp", smtp_username="u"))


# -- a real SMTP server ---------------------------------------------------------------------


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Server:
    return start_server(request)


def sample_message(to: str = "Ada Lovelace <ada@example.com>", job_id: str = "job-1") -> EmailMessage:
    rendered = render("welcome", name="Ada Lovelace", **BASICS)
    mail_from = "ForgeStack <no-reply@forgestack.test>"
    return build_message(rendered, to=to, mail_from=mail_from, message_id=message_id_for(job_id, mail_from))


class RefusesSender:
    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        return "550 5.7.1 sender not allowed from this host"


def test_a_refused_sender_is_a_setup_error_that_retries(request: pytest.FixtureRequest) -> None:
    port = free_port()
    controller = Controller(RefusesSender(), hostname="127.0.0.1", port=port, ready_timeout=5)
    controller.start()
    request.addfinalizer(controller.stop)

    with pytest.raises(MailSetupError, match="refused the sender .*550 5.7.1 sender not allowed"):
        SmtpMailer("127.0.0.1", port, timeout=5).send(sample_message())


def test_smtp_delivers_a_multipart_message(smtp_server: Server) -> None:
    SmtpMailer("127.0.0.1", smtp_server.port, timeout=5).send(sample_message())

    ((mail_from, rcpt_tos, _, tls),) = smtp_server.recorder.received
    assert (mail_from, rcpt_tos, tls) == ("no-reply@forgestack.test", ["ada@example.com"], False)
    (message,) = smtp_server.recorder.messages()
    assert message["From"] == "ForgeStack <no-reply@forgestack.test>"
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert message["Subject"] == "Welcome to ForgeStack"
    assert message["Message-ID"] == "<job-1@forgestack.test>"
    assert message["Date"] is not None
    text, html = parts(message)
    assert "Hi Ada Lovelace," in text
    assert "<p>Hi Ada Lovelace,</p>" in html


def test_smtp_refusals_and_deferrals_are_classified(smtp_server: Server) -> None:
    mailer = SmtpMailer("127.0.0.1", smtp_server.port, timeout=5)

    with pytest.raises(RecipientRefused, match="550 5.1.1 no such mailbox"):
        mailer.send(sample_message(to="refused@example.com"))
    with pytest.raises(TransientMailError, match="451 4.3.0 try again later"):
        mailer.send(sample_message(to="deferred@example.com"))
    assert smtp_server.recorder.received == []


def test_smtp_server_not_listening_is_transient() -> None:
    mailer = SmtpMailer("127.0.0.1", free_port(), timeout=5)
    with pytest.raises(TransientMailError, match="could not be reached: ConnectionRefusedError"):
        mailer.send(sample_message())


def test_smtp_server_that_never_answers_times_out_as_transient() -> None:
    with socket.socket() as silent:  # listening, so the connection opens, but no greeting ever comes
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        mailer = SmtpMailer("127.0.0.1", silent.getsockname()[1], timeout=0.3)
        with pytest.raises(TransientMailError, match="did not answer within 0.3s"):
            mailer.send(sample_message())


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_login(request: pytest.FixtureRequest) -> None:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"s3cret")
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself

    server = start_server(request, authenticator=authenticator, auth_required=True, auth_require_tls=False)

    SmtpMailer("127.0.0.1", server.port, username="mailer", password="s3cret", timeout=5).send(sample_message())
    assert len(server.recorder.received) == 1

    with pytest.raises(MailSetupError, match="refused the login of 'mailer'"):
        SmtpMailer("127.0.0.1", server.port, username="mailer", password="wrong", timeout=5).send(sample_message())
    with pytest.raises(MailSetupError, match="530"):  # no login at all: "authentication required"
        SmtpMailer("127.0.0.1", server.port, timeout=5).send(sample_message())
    assert len(server.recorder.received) == 1


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) from a throwaway CA."""
    trustme = pytest.importorskip("trustme", reason="the TLS tests need trustme (pip install trustme)")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


def test_smtp_starttls(request: pytest.FixtureRequest, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    server = start_server(request, tls_context=server_context, require_starttls=True)

    mailer = SmtpMailer("127.0.0.1", server.port, security="starttls", ssl_context=client_context, timeout=5)
    mailer.send(sample_message())
    ((_, _, _, over_tls),) = server.recorder.received
    assert over_tls

    with pytest.raises(MailSetupError, match="530"):  # plain text to a server that requires STARTTLS
        SmtpMailer("127.0.0.1", server.port, timeout=5).send(sample_message())
    with pytest.raises(MailSetupError, match="certificate does not verify"):  # system CAs do not know ours
        SmtpMailer("127.0.0.1", server.port, security="starttls", timeout=5).send(sample_message())
    assert len(server.recorder.received) == 1


def test_smtp_implicit_tls(request: pytest.FixtureRequest, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    server = start_server(request, ssl_context=server_context)

    SmtpMailer("127.0.0.1", server.port, security="tls", ssl_context=client_context, timeout=5).send(sample_message())

    ((_, _, data, _),) = server.recorder.received
    assert parse(data)["Message-ID"] == "<job-1@forgestack.test>"


def test_starttls_not_offered_is_a_setup_error(smtp_server: Server) -> None:
    mailer = SmtpMailer("127.0.0.1", smtp_server.port, security="starttls", timeout=5)
    with pytest.raises(MailSetupError, match="STARTTLS"):
        mailer.send(sample_message())


# -- the jobs -------------------------------------------------------------------------------


def test_welcome_email(resources: Resources, org: dict[str, str]) -> None:
    job = WelcomeEmail(user_id=org["owner_id"])

    result = job.perform(make_context(job, resources=resources, job_id="welcome-1"))

    assert result == EmailOutcome(to=org["owner_email"], message_id="<welcome-1@forgestack.test>")
    (message,) = outbox(resources.settings)
    assert message["To"] == f"Ada Owner <{org['owner_email']}>"
    assert message["From"] == resources.settings.mail_from
    assert message["Subject"] == "Welcome to ForgeStack"
    assert message["Message-ID"] == "<welcome-1@forgestack.test>"
    text, html = parts(message)
    assert "Hi Ada Owner," in text and "Hi Ada Owner," in html
    (row,) = sent_rows(resources.db)
    assert (row.job_id, row.kind, row.recipient, row.subject) == (
        "welcome-1",
        "welcome",
        org["owner_email"],
        "Welcome to ForgeStack",
    )


def test_a_rerun_of_the_same_job_sends_nothing(resources: Resources, org: dict[str, str]) -> None:
    job = WelcomeEmail(user_id=org["owner_id"])
    job.perform(make_context(job, resources=resources, job_id="welcome-2"))
    for path in resources.settings.outbox_dir.glob("*.eml"):
        path.unlink()

    again = job.perform(make_context(job, resources=resources, job_id="welcome-2", attempt=2))

    assert again == EmailOutcome(
        to=org["owner_email"], message_id="<welcome-2@forgestack.test>", skipped="already sent"
    )
    assert outbox(resources.settings) == []
    assert len(sent_rows(resources.db)) == 1


def claim(resources: Resources, job_id: str, age: timedelta) -> None:
    """A `sending` claim left by another run of `job_id`, `age` ago."""
    with resources.db.begin() as conn:
        conn.execute(
            sent_emails.insert().values(
                job_id=job_id, kind="welcome", recipient="x@example.com", subject="s",
                message_id=f"<{job_id}@forgestack.test>", status="sending", sent_at=utcnow() - age,
            )
        )  # fmt: skip


def test_a_run_waits_while_another_run_of_the_job_is_sending(resources: Resources, org: dict[str, str]) -> None:
    claim(resources, "welcome-3", age=timedelta(seconds=5))
    job = WelcomeEmail(user_id=org["owner_id"])

    with pytest.raises(RetryLater, match="another run of job welcome-3 is sending"):
        job.perform(make_context(job, resources=resources, job_id="welcome-3", attempt=2))

    assert outbox(resources.settings) == []


def test_a_claim_left_by_a_run_that_died_mid_send_is_taken_over(resources: Resources, org: dict[str, str]) -> None:
    claim(resources, "welcome-4", age=STALE_CLAIM + timedelta(seconds=1))
    job = WelcomeEmail(user_id=org["owner_id"])

    result = job.perform(make_context(job, resources=resources, job_id="welcome-4", attempt=2))

    assert result.skipped is None and len(outbox(resources.settings)) == 1
    assert [(r.status, r.recipient) for r in sent_rows(resources.db)] == [("sent", org["owner_email"])]


def test_a_longer_timeout_widens_the_stale_claim_window(resources: Resources, org: dict[str, str]) -> None:
    claim(resources, "welcome-6", age=STALE_CLAIM + timedelta(minutes=1))  # stale for the jobs' own 2-min timeout
    job = WelcomeEmail(user_id=org["owner_id"])
    options = WelcomeEmail.job_options().model_copy(update={"timeout": timedelta(minutes=10)})  # a spec override

    with pytest.raises(RetryLater, match="another run of job welcome-6 is sending") as raised:
        job.perform(make_context(job, resources=resources, job_id="welcome-6", attempt=2, options=options))

    assert raised.value.delay == 20 * 60
    assert outbox(resources.settings) == []


def test_a_failed_send_releases_its_claim(resources: Resources, org: dict[str, str]) -> None:
    class Down:
        def send(self, message: EmailMessage) -> None:
            raise TransientMailError("SMTP 127.0.0.1:25: connection refused")

    job = WelcomeEmail(user_id=org["owner_id"])
    with pytest.raises(TransientMailError):
        job.perform(make_context(job, resources=dataclasses.replace(resources, mailer=Down()), job_id="welcome-5"))
    assert sent_rows(resources.db) == []

    assert job.perform(make_context(job, resources=resources, job_id="welcome-5", attempt=2)).skipped is None
    assert [r.status for r in sent_rows(resources.db)] == ["sent"]


def test_a_missing_user_is_unrecoverable(resources: Resources) -> None:
    job = WelcomeEmail(user_id="usr_gone")
    with pytest.raises(Unrecoverable, match="no user usr_gone"):
        job.perform(make_context(job, resources=resources))
    assert outbox(resources.settings) == []


SMUGGLING_NAME = "Alice " + "A" * 58 + ', attacker@evil.test, "Bob" x'


def welcome_bytes(resources: Resources, user_id: str) -> bytes:
    job = WelcomeEmail(user_id=user_id)
    job.perform(make_context(job, resources=resources, job_id=f"welcome-{user_id}"))
    (path,) = resources.settings.outbox_dir.glob("*.eml")
    return path.read_bytes()


@pytest.mark.parametrize("name", [SMUGGLING_NAME, 'Dr. "Bo" Smith, Jr.', "Zoë Ångström " * 8 + "(ünïcode), x@y.test"])
def test_a_display_name_cannot_be_folded_into_more_recipients(
    resources: Resources, fake_queue: FakeQueue, name: str
) -> None:
    user_id = sign_up(resources.db, email="victim@example.com", name=name)

    raw = welcome_bytes(resources, user_id)

    (address,) = parse(raw)["To"].addresses
    # CPython's own parser keeps the folding space between two encoded words (RFC 2047 says to drop it),
    # so its display name may have a doubled space where the name was split; the words are all there.
    assert (" ".join(address.display_name.split()), address.addr_spec) == (name.strip(), "victim@example.com")
    # An RFC 2047 reader (the email package's decode_header) gets the name exactly, and one address.
    (raw_to,) = BytesParser(policy=policy.compat32).parsebytes(raw).get_all("To")
    ((display, addr),) = getaddresses([raw_to])
    assert (str(make_header(decode_header(display))), addr) == (name.strip(), "victim@example.com")
    head = raw.split(b"\n\n", 1)[0]
    assert b"attacker@evil.test" not in head and all(len(line) <= 78 for line in head.splitlines())


def test_a_plain_name_stays_readable(resources: Resources, fake_queue: FakeQueue) -> None:
    user_id = sign_up(resources.db, email="ada@example.com", name="Ada O'Hara-Lovelace")
    assert b"\nTo: Ada O'Hara-Lovelace <ada@example.com>\n" in welcome_bytes(resources, user_id)


@pytest.mark.parametrize("control", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\t"])
def test_control_characters_in_a_stored_name_never_reach_the_header(resources: Resources, control: str) -> None:
    with resources.db.begin() as conn:  # stored before sign_up refused them
        conn.execute(users.insert().values(id="usr_ctl", email="eve@example.com", name=f"Eve{control}Bcc: x@evil.test"))

    raw = welcome_bytes(resources, "usr_ctl")

    (address,) = parse(raw)["To"].addresses
    assert (address.display_name, address.addr_spec) == ("Eve Bcc: x@evil.test", "eve@example.com")
    assert control.encode() not in raw.split(b"\n\n", 1)[0]
    assert b"x@evil.test" not in raw.split(b"\n\n", 1)[0]


def invitation_row(store: Store, org: dict[str, str], inv_id: str) -> Any:
    with store.begin() as conn:
        return conn.execute(sa.select(invitations).where(invitations.c.id == inv_id)).one()


def test_invite_saves_the_invitation_and_the_job_sends_it(
    fake_queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    inv_id = invite(resources.db, org_id=org["org_id"], email=" grace@example.com ", invited_by=org["owner_id"])

    fake_queue.assert_enqueued(SendInvitation, count=1, invitation_id=inv_id)
    row = invitation_row(resources.db, org, inv_id)
    assert (row.status, row.email, row.sent_at) == ("pending", "grace@example.com", None)
    assert timedelta(days=6, hours=23) < row.expires_at - utcnow() <= timedelta(days=7)

    fake_queue.resources = resources
    assert fake_queue.drain().succeeded == 1

    (message,) = outbox(resources.settings)
    assert message["To"] == "grace@example.com"
    assert message["Subject"] == "Ada Owner invited you to join Acme on ForgeStack"
    assert message["Message-ID"] == f"<invitation-{inv_id}@forgestack.test>"
    text, html = parts(message)
    link = f"{resources.settings.app_url}/invitations/{row.token}"
    assert link in text and f'href="{link}"' in html
    assert org["owner_email"] in text
    assert invitation_row(resources.db, org, inv_id).sent_at is not None


@pytest.mark.parametrize("state", ["accepted", "revoked", "expired"])
def test_an_invitation_no_longer_pending_is_not_sent(resources: Resources, org: dict[str, str], state: str) -> None:
    inv_id = new_id("inv")
    expired = state == "expired"
    with resources.db.begin() as conn:
        conn.execute(
            invitations.insert().values(
                id=inv_id,
                org_id=org["org_id"],
                email="late@example.com",
                invited_by=org["owner_id"],
                token=new_id("tok"),
                status="pending" if expired else state,
                expires_at=utcnow() + (timedelta(minutes=-1) if expired else timedelta(days=1)),
            )
        )
    job = SendInvitation(invitation_id=inv_id)

    result = job.perform(make_context(job, resources=resources))

    assert result.skipped is not None and state in result.skipped and inv_id in result.skipped
    assert outbox(resources.settings) == []
    assert invitation_row(resources.db, org, inv_id).sent_at is None
    assert sent_rows(resources.db) == []


def test_invite_refuses_bad_requests(fake_queue: FakeQueue, resources: Resources, org: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="not a member of organisation"):
        invite(resources.db, org_id=org["org_id"], email="x@example.com", invited_by="usr_stranger")
    with pytest.raises(ValueError, match="not an email address"):
        invite(resources.db, org_id=org["org_id"], email="nope", invited_by=org["owner_id"])
    with pytest.raises(ValueError, match="no organisation org_gone"):
        invite(resources.db, org_id="org_gone", email="x@example.com", invited_by=org["owner_id"])
    fake_queue.refute_enqueued(SendInvitation)
    with resources.db.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(invitations)).scalar_one() == 0


def add_billing_rows(store: Store, org_id: str) -> dict[str, str]:
    ids = {"invoice": f"in_{new_id('x')}", "subscription": f"sub_{new_id('x')}", "endpoint": new_id("we")}
    now = utcnow()
    with store.begin() as conn:
        conn.execute(
            invoices.insert().values(
                id=ids["invoice"],
                org_id=org_id,
                status="open",
                amount_due=4900,
                amount_paid=4900,
                currency="eur",
                hosted_invoice_url="https://invoice.stripe.test/i/abc?x=1&y=2",
                stripe_updated=1,
                paid_at=now,
            )
        )
        conn.execute(
            subscriptions.insert().values(
                id=ids["subscription"],
                org_id=org_id,
                status="canceled",
                stripe_updated=1,
                current_period_end=now + timedelta(days=10),
            )
        )
        conn.execute(
            webhook_endpoints.insert().values(
                id=ids["endpoint"],
                org_id=org_id,
                url="https://hooks.example.com/in?a=1&b=2",
                secrets="whsec_x",
                disabled_at=now,
                disabled_reason="failing for 5 days",
            )
        )
    return ids


NOTIFICATIONS: list[tuple[NotificationKind, str, str, list[str]]] = [
    # kind, which row is ref, expected subject, what the text part must say
    (
        "payment_failed",
        "invoice",
        "Payment failed for Acme: EUR 49.00 due",
        ["EUR 49.00", "https://invoice.stripe.test/i/abc?x=1&y=2"],
    ),
    ("invoice_paid", "invoice", "Receipt for Acme: EUR 49.00 paid", ["EUR 49.00", "https://invoice.stripe.test/i/abc"]),
    (
        "subscription_canceled",
        "subscription",
        "Your ForgeStack subscription for Acme is canceled",
        ["keeps its paid features until", "http://localhost:8000/billing"],
    ),
    (
        "webhook_endpoint_disabled",
        "endpoint",
        "Webhook endpoint disabled for Acme",
        ["https://hooks.example.com/in?a=1&b=2", "Reason: failing for 5 days"],
    ),
]


@pytest.mark.parametrize(("kind", "ref_of", "subject", "says"), NOTIFICATIONS, ids=[n[0] for n in NOTIFICATIONS])
def test_each_notification_kind(
    resources: Resources, org: dict[str, str], kind: NotificationKind, ref_of: str, subject: str, says: list[str]
) -> None:
    ref = add_billing_rows(resources.db, org["org_id"])[ref_of]
    job = Notification(user_id=org["member_id"], kind=kind, ref=ref)

    result = job.perform(make_context(job, resources=resources, job_id=f"n-{kind}"))

    (message,) = outbox(resources.settings)
    assert result.message_id == message["Message-ID"] == f"<n-{kind}@forgestack.test>"
    assert message["To"] == f"Bo Member <{result.to}>"
    assert message["Subject"] == subject
    text, html = parts(message)
    assert "Hi Bo Member," in text
    for words in says:
        assert words in text
    for url in (w for w in says if "&" in w):  # in HTML the & of a URL is escaped
        assert url.replace("&", "&amp;") in html and url not in html
    (row,) = sent_rows(resources.db)
    assert (row.kind, row.subject) == (kind, subject)


def test_stale_notifications_and_strangers_are_not_sent(resources: Resources, org: dict[str, str]) -> None:
    ids = add_billing_rows(resources.db, org["org_id"])
    with resources.db.begin() as conn:
        conn.execute(invoices.update().where(invoices.c.id == ids["invoice"]).values(status="paid"))
        conn.execute(users.insert().values(id="usr_stranger", email="stranger@example.com", name="S"))
    paid = Notification(user_id=org["owner_id"], kind="payment_failed", ref=ids["invoice"])
    stranger = Notification(user_id="usr_stranger", kind="invoice_paid", ref=ids["invoice"])
    missing = Notification(user_id=org["owner_id"], kind="subscription_canceled", ref="sub_gone")

    assert paid.perform(make_context(paid, resources=resources)).skipped == f"invoice {ids['invoice']} is paid now"
    with pytest.raises(Unrecoverable, match=f"user usr_stranger is not a member of organisation {org['org_id']}"):
        stranger.perform(make_context(stranger, resources=resources))
    with pytest.raises(Unrecoverable, match="no subscription sub_gone"):
        missing.perform(make_context(missing, resources=resources))
    assert outbox(resources.settings) == []


def test_notify_sets_the_priority_and_can_be_once_only(fake_queue: FakeQueue) -> None:
    notify("usr_1", "invoice_paid", "in_1")
    notify("usr_1", "payment_failed", "in_1", urgent=True)
    first = notify("usr_1", "payment_failed", "in_2", job_id="evt_123-notify")
    again = notify("usr_1", "payment_failed", "in_2", job_id="evt_123-notify")

    assert [p.priority for p in fake_queue.backend.log] == [5, 1, 5]
    assert again.existing and again.id == first.id == "evt_123-notify"
    fake_queue.assert_enqueued(Notification, count=1, kind="payment_failed", ref="in_1")
    with pytest.raises(ValueError, match="unknown notification kind 'invoice_lost'"):
        notify("usr_1", "invoice_lost", "in_1")  # type: ignore[arg-type]


def test_a_job_id_longer_than_the_sent_emails_key_still_sends_once(resources: Resources, org: dict[str, str]) -> None:
    long_id = "webhook-disabled-we_" + "a" * 130  # longer than forgejobs allows, as a narrower column would be
    job = WelcomeEmail(user_id=org["owner_id"])

    first = job.perform(make_context(job, resources=resources, job_id=long_id))
    again = job.perform(make_context(job, resources=resources, job_id=long_id))
    other = job.perform(make_context(job, resources=resources, job_id=long_id[:-1] + "b"))

    assert first.message_id == f"<{long_id}@forgestack.test>"
    assert (again.skipped, other.skipped) == ("already sent", None)
    assert sorted(len(row.job_id) for row in sent_rows(resources.db)) == [128, 128]
    assert len(outbox(resources.settings)) == 2


# -- the jobs through a real SMTP server, run by the fake queue ------------------------------


@pytest.fixture
def smtp_resources(resources: Resources, smtp_server: Server) -> Resources:
    return dataclasses.replace(resources, mailer=SmtpMailer("127.0.0.1", smtp_server.port, timeout=5))


def add_user(store: Store, email: str) -> str:
    user_id = new_id("usr")
    with store.begin() as conn:
        conn.execute(users.insert().values(id=user_id, email=email, name="Dee Recipient"))
    return user_id


def test_a_refused_recipient_is_dead_lettered_at_once(
    fake_queue: FakeQueue, smtp_resources: Resources, smtp_server: Server
) -> None:
    fake_queue.resources = smtp_resources
    user_id = add_user(smtp_resources.db, "refused@example.com")
    WelcomeEmail.enqueue(user_id=user_id)

    result = fake_queue.drain(raise_on_failure=False)

    assert (result.succeeded, result.failed, result.retried) == (0, 1, 0)
    (dead,) = fake_queue.dead_letters()
    assert dead.reason is Reason.UNRECOVERABLE
    assert "welcome email to refused@example.com refused" in dead.error and "550" in dead.error
    assert sent_rows(smtp_resources.db) == []


def test_a_deferred_recipient_is_retried_and_sent_once(
    fake_queue: FakeQueue, smtp_resources: Resources, smtp_server: Server
) -> None:
    fake_queue.resources = smtp_resources
    smtp_server.recorder.defer_times = 1
    user_id = add_user(smtp_resources.db, "deferred@example.com")
    start = fake_queue.clock.now()
    handle = WelcomeEmail.enqueue(user_id=user_id)

    result = fake_queue.drain()

    assert (result.succeeded, result.failed, result.retried) == (1, 0, 1)
    assert fake_queue.clock.now() - start >= timedelta(seconds=24)  # 30 s backoff, 20 % jitter
    (message,) = smtp_server.recorder.messages()
    assert message["Message-ID"] == f"<{handle.id}@forgestack.test>"
    assert [row.job_id for row in sent_rows(smtp_resources.db)] == [handle.id]


def test_a_deferral_in_the_handler_raises_transient_mail_error(smtp_resources: Resources, smtp_server: Server) -> None:
    job = WelcomeEmail(user_id=add_user(smtp_resources.db, "deferred@example.com"))
    with pytest.raises(TransientMailError, match="451"):
        job.perform(make_context(job, resources=smtp_resources))
    assert sent_rows(smtp_resources.db) == []
