"""Queue `webhooks`: outgoing webhook delivery.

A 2xx answer is delivered; 410 Gone means the receiver wants no more
(unrecoverable); anything else is retried on a widening schedule.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from pydantic import AnyHttpUrl

from forgejobs import Context, Job, Unrecoverable, backoff

from .resources import Resources


class DeliverWebhook(
    Job,
    queue="webhooks",
    attempts=8,
    backoff=backoff.schedule(5, 300, 1800, 7200, 18000, 36000, 36000),
):
    """POST one event to a subscriber's URL."""

    delivery_id: str
    url: AnyHttpUrl
    event: str
    data: dict[str, Any]

    def perform(self, ctx: Context) -> dict[str, Any]:
        resources: Resources = ctx.resources
        body = json.dumps({"type": self.event, "data": self.data}).encode()
        request = urllib.request.Request(
            str(self.url),
            data=body,
            method="POST",
            headers={"content-type": "application/json", "webhook-id": self.delivery_id},
        )
        try:
            with urllib.request.urlopen(request, timeout=resources.http_timeout) as response:
                return {"status": response.status, "attempt": ctx.attempt}
        except urllib.error.HTTPError as exc:
            if exc.code == 410:
                raise Unrecoverable(f"{self.url} answered 410 Gone") from None
            raise RuntimeError(f"{self.url} answered {exc.code}") from None
