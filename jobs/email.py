"""Queue `email`: transactional email.

The dev transport writes each message as an `.eml` file to the outbox
directory, so a developer can open what would have been sent.
"""

from __future__ import annotations

from email.message import EmailMessage

from pydantic import EmailStr

from forgejobs import Context, Job, backoff

from .resources import Resources


class WelcomeEmail(Job, queue="email", attempts=3, backoff=backoff.exponential(1)):
    """Send the welcome email to a new user."""

    user_id: str
    email: EmailStr
    name: str

    def perform(self, ctx: Context) -> dict[str, str]:
        resources: Resources = ctx.resources
        message = EmailMessage()
        message["From"] = resources.mail_from
        message["To"] = f"{self.name} <{self.email}>"
        message["Subject"] = "Welcome to ForgeStack"
        message["Message-ID"] = f"<{ctx.job_id}@forgestack.test>"
        message.set_content(f"Hi {self.name},\n\nWelcome to ForgeStack. Your account is ready.\n")
        resources.outbox_dir.mkdir(parents=True, exist_ok=True)
        path = resources.outbox_dir / f"{ctx.job_id}.eml"
        path.write_bytes(bytes(message))
        ctx.logger.info("welcome email for %s written to %s", self.user_id, path)
        return {"outbox": str(path)}
