"""Outgoing HTTP for webhooks, guarded against server-side request forgery.

(Skeleton: the webhooks helper completes the address guard.)
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx


def guarded_client(*, allow: Sequence[str] = (), timeout: float = 10.0) -> httpx.Client:
    """An httpx client that refuses loopback, private, link-local and metadata addresses unless allowed."""
    return httpx.Client(timeout=timeout, follow_redirects=False)
