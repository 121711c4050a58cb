"""Checked by mypy in tests/test_typed_results.py (never run): handles are typed by `perform`'s return."""

from __future__ import annotations

from typing import Any, assert_type

from pydantic import BaseModel

from forgejobs import Context, Job, JobHandle
from forgejobs.job import Enqueuer
from jobs.email import EmailOutcome, WelcomeEmail


class Receipt(BaseModel):
    total: int


class Charge(Job, queue="billing"):
    amount: int

    def perform(self, ctx: Context[None]) -> Receipt:
        return Receipt(total=self.amount)


class Fetch(Job, queue="webhooks"):
    url: str

    async def perform(self, ctx: Context[None]) -> int:
        return 200


class Refund(Charge):
    """A subclass that inherits its parent's perform, and so its result type."""


class Untyped(Job, queue="billing"):
    def perform(self, ctx):  # type: ignore[no-untyped-def]
        return 1


def sync_calls() -> None:
    assert_type(WelcomeEmail.enqueue(user_id="u1"), JobHandle[EmailOutcome])
    assert_type(WelcomeEmail.enqueue(user_id="u1").result(timeout=5), EmailOutcome)
    assert_type(WelcomeEmail(user_id="u1").enqueue().result(), EmailOutcome)
    assert_type(Charge.enqueue(amount=1).result(), Receipt)
    assert_type(Refund.enqueue(amount=1).result(), Receipt)
    assert_type(Fetch.enqueue(url="x").result(), int)
    assert_type(Fetch(url="x").enqueue().result(), int)
    assert_type(Charge.enqueue_many([{"amount": 1}, Charge(amount=2)]), list[JobHandle[Receipt]])
    assert_type(Fetch.enqueue_many([]), list[JobHandle[int]])
    assert_type(Charge.with_options(priority=1), Enqueuer[Charge, Receipt])
    assert_type(Charge.with_options(delay=5).enqueue(amount=1).result(), Receipt)
    assert_type(Charge.with_options(delay=5).enqueue(Charge(amount=1)).result(), Receipt)
    assert_type(Fetch.with_options(priority=2).enqueue(url="x").result(), int)
    assert_type(Untyped.enqueue().result(), Any)
    assert_type(JobHandle(WelcomeEmail.enqueue(user_id="u").client, "id", WelcomeEmail).result(), EmailOutcome)
    bare: JobHandle = Charge.enqueue(amount=1)  # a bare JobHandle is JobHandle[Any]
    assert_type(bare.result(), Any)


async def async_calls() -> None:
    assert_type(await WelcomeEmail.aenqueue(user_id="u1"), JobHandle[EmailOutcome])
    assert_type(await (await WelcomeEmail.aenqueue(user_id="u1")).aresult(timeout=5), EmailOutcome)
    assert_type(await (await Charge(amount=1).aenqueue()).aresult(), Receipt)
    assert_type(await (await Fetch.aenqueue(url="x")).aresult(), int)
    assert_type(await Charge.aenqueue_many([{"amount": 1}]), list[JobHandle[Receipt]])
    assert_type(await Fetch.aenqueue_many([Fetch(url="x")]), list[JobHandle[int]])
    assert_type(await (await Charge.with_options(priority=1).aenqueue(amount=1)).aresult(), Receipt)
