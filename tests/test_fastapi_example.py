"""The FastAPI app of docs/guide.md ("A FastAPI app"), run as printed there: against a real Redis
(a database of the test's own) and against the fake queue through a dependency override."""

from __future__ import annotations

import asyncio
import re
import types
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from forgejobs import Settings, set_client
from forgejobs.envelope import decode
from forgejobs.testing import FakeQueue
from jobs.email import WelcomeEmail

pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parent.parent


def guide_app() -> types.ModuleType:
    """The first python block under the guide's "### A FastAPI app" heading, executed as a module."""
    text = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    section = text.split("### A FastAPI app", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the guide has no python block under 'A FastAPI app'"
    module = types.ModuleType("guide_fastapi_app")
    exec(compile(block.group(1), "docs/guide.md (A FastAPI app)", "exec"), module.__dict__)
    return module


@asynccontextmanager
async def served(app: Any, lifespan: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Requests to `app` in this event loop (httpx's ASGI transport), inside its lifespan if asked."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        if not lifespan:
            yield http
            return
        async with app.router.lifespan_context(app):
            yield http


@pytest.fixture
def catalog_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The environment `AsyncClient.from_settings()` reads: the catalog on the test's database."""
    monkeypatch.setenv("FORGEJOBS_REDIS_URL", redis_url)
    monkeypatch.setenv("FORGEJOBS_JOBS", "jobs")
    monkeypatch.setenv("FORGEJOBS_SPECS", str(ROOT / "specs"))
    previous = set_client(None)  # nothing installed: the app's own client is the one used
    yield redis_url
    set_client(previous)


@pytest.mark.redis
def test_a_route_enqueues_through_the_client_the_dependency_provides(catalog_env: str, conn: redis.Redis) -> None:
    app: Any = guide_app().app
    assert Settings().redis_url == catalog_env

    async def scenario() -> str:
        async with served(app) as http:
            answer = await http.post("/welcome-emails", json={"user_id": "usr_1"})
            assert answer.status_code == 202, answer.text
            job_id: str = answer.json()["job_id"]
            stored = conn.hgetall(f"forgejobs:{{email}}:job:{job_id}")
            assert stored[b"s"] == b"queued"
            envelope = decode(stored[b"d"].decode())
            assert envelope.name == WelcomeEmail.job_name() and envelope.payload == {"user_id": "usr_1"}
            assert conn.lrange("forgejobs:{email}:wait:p05", 0, -1) == [job_id.encode()]

            assert (await http.get(f"/jobs/{job_id}")).json() == {"job_id": job_id, "status": "queued"}
            assert (await http.get("/jobs/nope")).status_code == 404

            refused = await http.post("/welcome-emails", json={"user": "usr_2"})
            assert refused.status_code == 422
            assert conn.llen("forgejobs:{email}:wait:p05") == 1  # the refused body enqueued nothing
        return job_id

    job_id = asyncio.run(scenario())
    assert conn.exists(f"forgejobs:{{email}}:job:{job_id}") == 1  # kept for a worker after the app stopped


def test_a_test_overrides_the_dependency_with_the_fake_queue() -> None:
    module = guide_app()
    app: Any = module.app

    async def scenario(queue: FakeQueue) -> None:
        async with served(app, lifespan=False) as http:  # no lifespan: no Redis client is made
            answer = await http.post("/welcome-emails", json={"user_id": "usr_7"})
            assert answer.status_code == 202, answer.text
            [job] = queue.assert_enqueued(WelcomeEmail, user_id="usr_7")
            assert job == WelcomeEmail(user_id="usr_7")
            job_id = answer.json()["job_id"]
            assert (await http.get(f"/jobs/{job_id}")).json() == {"job_id": job_id, "status": "queued"}
            assert (await http.get("/jobs/other")).status_code == 404

    with FakeQueue() as queue:
        app.dependency_overrides[module.job_client] = lambda: queue.client
        asyncio.run(scenario(queue))
