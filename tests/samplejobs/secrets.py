"""A job with a secret payload field that writes it into every message it can (tests/test_logs.py)."""

from __future__ import annotations

from typing import Annotated

from forgejobs import Context, Job, Secret, Unrecoverable


class Charge(Job, queue="fast", attempts=1):
    """Log its card token every way a handler can, then fail with it in the error, or succeed if `ok`."""

    card_token: Annotated[str, Secret]
    amount: int
    ok: bool = False

    def perform(self, ctx: Context) -> dict[str, str]:
        ctx.logger.info("charging %d with %s", self.amount, self.card_token)
        ctx.log(f"token was {self.card_token}")
        ctx.progress({"using": self.card_token})
        if not self.ok:
            raise Unrecoverable(f"card {self.card_token} declined")
        return {"receipt": f"paid with {self.card_token}"}
