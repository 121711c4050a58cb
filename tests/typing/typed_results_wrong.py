"""Checked by mypy in tests/test_typed_results.py: the line under each `# error:` comment must fail with it."""

# ruff: noqa: F841

from __future__ import annotations

from forgejobs import Context, Job
from jobs.email import EmailOutcome, WelcomeEmail


class Charge(Job, queue="billing"):
    amount: int

    def perform(self, ctx: Context[None]) -> int:
        return self.amount


class Fetch(Job, queue="webhooks"):
    url: str

    async def perform(self, ctx: Context[None]) -> str:
        return "ok"


def wrong() -> None:
    # error: Incompatible types in assignment (expression has type "int", variable has type "EmailOutcome")
    outcome: EmailOutcome = Charge.enqueue(amount=1).result()
    # error: Incompatible types in assignment (expression has type "EmailOutcome", variable has type "int")
    total: int = WelcomeEmail.enqueue(user_id="u").result()
    # error: Incompatible types in assignment (expression has type "str", variable has type "bytes")
    body: bytes = Fetch(url="x").enqueue().result()
    # error: Argument 1 to "enqueue" of "Enqueuer" has incompatible type "Fetch"; expected "Charge | None"
    Charge.with_options(priority=1).enqueue(Fetch(url="x"))
    # error: List item 0 has incompatible type "Fetch"; expected "Charge | Mapping[str, Any]"
    Charge.enqueue_many([Fetch(url="x")])


async def wrong_async() -> None:
    # error: Incompatible types in assignment (expression has type "int", variable has type "str")
    text: str = await (await Charge.aenqueue(amount=1)).aresult()
    # error: Incompatible types in assignment (expression has type "str", variable has type "int")
    number: int = (await Fetch.aenqueue_many([]))[0].result()
