"""A real SMTP server (aiosmtpd) on 127.0.0.1 for the catalog's mail tests, started per test and stopped at its end."""

from __future__ import annotations

import dataclasses
import threading
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.helpers import free_port

__all__ = ["Recorder", "Server", "free_port", "parse", "start_server"]


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


class Recorder:
    """An aiosmtpd handler: keeps what it receives; refuses or defers recipients by their local part.

    `refused@...` gets 550; `deferred@...` gets 451 `defer_times` times, then 250.
    """

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes, bool]] = []  # (mail from, rcpt tos, data, over TLS)
        self.defer_times = 1_000_000
        self.deferred = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("refused@"):
            return "550 5.1.1 no such mailbox here"
        if address.startswith("deferred@"):
            with self.lock:
                if self.deferred < self.defer_times:
                    self.deferred += 1
                    return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(
                (envelope.mail_from, list(envelope.rcpt_tos), envelope.content, session.ssl is not None)
            )
        return "250 2.0.0 accepted"

    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [parse(data) for _, _, data, _ in self.received]


@dataclasses.dataclass
class Server:
    port: int
    recorder: Recorder


def start_server(request: pytest.FixtureRequest, **smtp_options: Any) -> Server:
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, ready_timeout=5, **smtp_options)
    controller.start()
    request.addfinalizer(controller.stop)
    return Server(port, recorder)
