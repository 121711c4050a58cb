"""The dashboard over HTTP (Starlette's TestClient) on a real Redis: auth, CSRF, read-only, escaping, secrets,
actions and the enqueue form, and mounting under /admin/queues in FastAPI.

The job classes are this module's own (FORGEJOBS_JOBS=tests.test_dashboard), on queues the test's own spec
file declares.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
import redis
from starlette.testclient import TestClient

from forgejobs import Client, Context, Job, Registry, Settings, Unrecoverable, set_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.dashboard import BasicAuth, DashboardError, TokenAuth, create_app
from forgejobs.inspection import Inspector, State
from forgejobs.logs import Secret
from forgejobs.runtime.worker import Worker
from forgejobs.status import Status
from tests.conftest import ROOT
from tests.helpers import csrf_of, dashboard_login

pytestmark = pytest.mark.redis

TOKEN = "dashboard-test-token"
SECRET = "sk_live_DO-NOT-SHOW-4242"
XSS = "<script>alert('owned')</script>"


class Notify(Job, queue="email", attempts=1):
    """Send a note to someone (fails with its key in the message when `fail` is set)."""

    to: str
    api_key: Annotated[str, Secret]
    count: int = 1
    fail: bool = False

    def perform(self, ctx: Context[None]) -> dict[str, str]:
        ctx.log(f"sending to {self.to} with {self.api_key}")
        if self.fail:
            raise Unrecoverable(f"the provider refused key {self.api_key} for {self.to}")
        return {"sent": self.to}


class Ping(Job, queue="webhooks", attempts=1):
    """Ping an endpoint."""

    url: str

    def perform(self, ctx: Context[None]) -> None:
        return None


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "queues.yaml").write_text("queues:\n  email: {concurrency: 2}\n  webhooks: {concurrency: 1}\n")
    (folder / "schedules.yaml").write_text(
        "schedules:\n  nightly-ping:\n    job: webhooks.ping\n    payload: {url: 'https://example.com'}\n"
        "    cron: '0 3 * * *'\n    tz: Europe/Berlin\n"
    )
    return folder


@pytest.fixture
def dash_settings(redis_url: str, specs: Path) -> Settings:
    return Settings(redis_url=redis_url, jobs="tests.test_dashboard", specs=specs)


@pytest.fixture
def dash_client(conn: redis.Redis, dash_settings: Settings) -> Iterator[Client]:
    c = Client(RedisBackend(conn), Registry.load(dash_settings))
    previous = set_client(c)
    yield c
    set_client(previous)


@pytest.fixture(autouse=True)
def no_dashboard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FORGEJOBS_DASHBOARD_"):
            monkeypatch.delenv(name)


def logged_in(app: object, base: str = "") -> TestClient:
    browser: TestClient = dashboard_login(app, TOKEN, base)
    return browser


def work(settings: Settings, client: Client, conn: redis.Redis) -> None:
    Worker(settings, client.registry, connection=conn).run(burst=True, horizon=0)


def test_it_refuses_to_start_without_auth(dash_client: Client, dash_settings: Settings, specs: Path) -> None:
    with pytest.raises(DashboardError, match="refuses to start without auth"):
        create_app(client=dash_client)
    with pytest.raises(ValueError, match="at least 8 characters"):
        TokenAuth("short")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FORGEJOBS_DASHBOARD_")},
        "FORGEJOBS_REDIS_URL": str(dash_settings.redis_url),
        "FORGEJOBS_JOBS": "tests.test_dashboard",
        "FORGEJOBS_SPECS": str(specs),
    }
    run = subprocess.run(
        [sys.executable, "-m", "forgejobs.cli", "dashboard", "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "error: the dashboard refuses to start without auth: set FORGEJOBS_DASHBOARD_TOKEN" in run.stderr


def test_every_page_needs_a_login_or_credentials(dash_client: Client) -> None:
    app = create_app(client=dash_client, auth=TokenAuth(TOKEN))
    anonymous = TestClient(app, follow_redirects=False)
    page = anonymous.get("/queues/email?state=waiting")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fqueues%2Femail"
    assert anonymous.get("/_/overview").status_code == 401
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    scraped = anonymous.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scraped.status_code == 200 and "forgejobs_workers_alive" in scraped.text

    login = anonymous.get("/login")
    wrong = anonymous.post("/login", data={"csrf_token": csrf_of(login.text), "secret": "not-the-token"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    assert "forgejobs_session" not in wrong.cookies

    browser = logged_in(app)
    overview = browser.get("/")
    assert overview.status_code == 200
    assert 'data-queue="email"' in overview.text and 'data-queue="webhooks"' in overview.text
    # a session signed for other credentials is worthless
    other = create_app(client=dash_client, auth=TokenAuth("another-token-entirely"))
    stolen = TestClient(other, follow_redirects=False, cookies=dict(browser.cookies))
    assert stolen.get("/").status_code == 303


def test_basic_auth_takes_a_user_name_and_password(dash_client: Client) -> None:
    app = create_app(client=dash_client, auth=BasicAuth("ops", "correct horse"))
    anonymous = TestClient(app, follow_redirects=False)
    assert anonymous.get("/", auth=("ops", "wrong password")).status_code == 303
    assert anonymous.get("/", auth=("ops", "correct horse")).status_code == 200


def test_an_action_without_the_csrf_token_is_refused_and_changes_nothing(dash_client: Client) -> None:
    app = create_app(client=dash_client, auth=TokenAuth(TOKEN))
    browser = logged_in(app)
    token = csrf_of(browser.get("/").text)

    missing = browser.post("/queues/email/pause", data={})
    assert missing.status_code == 403 and "CSRF check failed" in missing.text
    forged = browser.post("/queues/email/pause", data={"csrf_token": "made-up"})
    assert forged.status_code == 403
    # a token from another browser (another CSRF cookie) does not fit this one's cookie
    elsewhere = TestClient(app).get("/login")
    assert browser.post("/queues/email/pause", data={"csrf_token": csrf_of(elsewhere.text)}).status_code == 403
    assert dash_client.paused() == set()

    done = browser.post("/queues/email/pause", data={"csrf_token": token, "back": "/queues/email"})
    assert done.status_code == 303 and done.headers["location"] == "/queues/email"
    assert dash_client.paused() == {"email"}
    page = browser.get("/queues/email")
    assert "paused email" in page.text and 'id="paused-badge"' in page.text


def test_read_only_shows_no_action_and_refuses_every_one(dash_client: Client) -> None:
    waiting = Ping.enqueue(url="https://example.com/hook")
    app = create_app(client=dash_client, auth=TokenAuth(TOKEN), read_only=True)
    browser = logged_in(app)
    pages = ["/", "/queues/webhooks?state=waiting", f"/jobs/{waiting.id}", "/dead", "/schedules"]
    for path in pages:
        html = browser.get(path).text
        assert 'id="read-only"' in html, path
        posts = re.findall(r'<form method="post" action="([^"]+)"', html)
        assert posts == ["/logout"], (path, posts)
    token = csrf_of(browser.get("/").text)
    for path in [f"/jobs/{waiting.id}/cancel", f"/jobs/{waiting.id}/delete", "/queues/webhooks/pause", "/dead/purge"]:
        reply = browser.post(path, data={"csrf_token": token})
        assert reply.status_code == 403 and "read-only" in reply.text, path
    assert browser.get("/enqueue/webhooks.ping").status_code == 200  # the form may be seen ...
    refused = browser.post("/enqueue/webhooks.ping", data={"csrf_token": token, "url": "https://x"})
    assert refused.status_code == 403  # ... but not sent
    assert waiting.status() is Status.QUEUED and dash_client.paused() == set()


def test_payloads_are_escaped_and_secrets_never_reach_a_page(
    dash_client: Client, dash_settings: Settings, conn: redis.Redis
) -> None:
    handle = Notify.enqueue(to=XSS, api_key=SECRET, fail=True)
    work(dash_settings, dash_client, conn)
    assert handle.status() is Status.FAILED
    app = create_app(client=dash_client, auth=TokenAuth(TOKEN))
    browser = logged_in(app)
    pages = {
        "job": browser.get(f"/jobs/{handle.id}").text,
        "dead": browser.get("/dead").text,
        "queue": browser.get("/queues/email?state=failed").text,
        "fragment": browser.get(f"/_/jobs/{handle.id}").text,
    }
    for where, text in pages.items():
        assert SECRET not in text, where
        assert XSS not in text, where
    job = pages["job"]
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in job
    shown = html.unescape(job)
    assert '"api_key": "***"' in shown
    assert "the provider refused key *** for" in shown  # the error, masked
    assert "sending to" in shown and "with ***" in shown  # the log line, masked
    events = shown.split('id="events"')[1].split("</table>")[0]  # the job's events, their data masked too
    assert "enqueued" in events and "started" in events and "dead_lettered" in events and "***" in events
    assert "unrecoverable" in pages["dead"]
    headers = browser.get("/").headers
    assert "default-src 'self'" in headers["content-security-policy"]


def test_job_actions_delete_promote_cancel_retry_and_requeue(
    dash_client: Client, dash_settings: Settings, conn: redis.Redis
) -> None:
    app = create_app(client=dash_client, auth=TokenAuth(TOKEN))
    browser = logged_in(app)
    token = csrf_of(browser.get("/").text)
    inspector = Inspector(dash_client.backend, dash_client.registry)

    waiting = Ping.enqueue(url="https://example.com/a")
    delayed = Ping.with_options(delay=3600).enqueue(url="https://example.com/b")
    later = Ping.with_options(delay=3600).enqueue(url="https://example.com/c")
    doomed = Notify.enqueue(to="a@example.com", api_key=SECRET, fail=True)

    def post(path: str) -> str:
        reply = browser.post(path, data={"csrf_token": token})
        assert reply.status_code == 303, reply.text
        return str(browser.get(reply.headers["location"]).text)

    assert "deleted" in post(f"/jobs/{waiting.id}/delete")
    assert waiting.status() is Status.UNKNOWN and conn.llen("forgejobs:{webhooks}:wait:p05") == 0
    assert "promoted" in post(f"/jobs/{delayed.id}/promote")
    assert inspector.job(delayed.id).state is State.WAITING
    assert "is not delayed" in post(f"/jobs/{delayed.id}/promote")  # said on the page, nothing done
    assert "cancelled" in post(f"/jobs/{later.id}/cancel")
    assert later.status() is Status.CANCELLED

    work(dash_settings, dash_client, conn)
    assert delayed.status() is Status.SUCCEEDED and doomed.status() is Status.FAILED
    assert "neither waiting nor delayed" in post(f"/jobs/{delayed.id}/delete")

    # a dead letter is requeued from the dead-letter page; a cancelled job is retried from its page
    requeued = browser.post("/dead/requeue", data={"csrf_token": token, "job_id": doomed.id})
    assert requeued.status_code == 303
    assert "requeued 1 dead letter" in browser.get(requeued.headers["location"]).text
    assert doomed.status() is Status.QUEUED and dash_client.backend.dead_letters.count() == 0
    assert "retried" in post(f"/jobs/{later.id}/retry")
    assert later.status() is Status.QUEUED

    # run a schedule now
    assert "enqueued nightly-ping now" in post("/schedules/nightly-ping/run")
    schedules = browser.get("/schedules").text
    assert "Europe/Berlin" in schedules or "CET" in schedules or "CEST" in schedules
    assert "03:00:00" in schedules


def test_dead_letters_are_grouped_requeued_by_filter_and_purged(
    dash_client: Client, dash_settings: Settings, conn: redis.Redis
) -> None:
    for i in range(3):
        Notify.enqueue(to=f"user{i}@example.com", api_key=SECRET, fail=True)
    work(dash_settings, dash_client, conn)
    browser = logged_in(create_app(client=dash_client, auth=TokenAuth(TOKEN)))
    page = browser.get("/dead?reason=unrecoverable&name=email.notify").text
    assert "3 matching" in page and SECRET not in page
    token = csrf_of(page)
    other = browser.post("/dead/requeue", data={"csrf_token": token, "reason": "exhausted"})
    assert "requeued 0 dead letter" in browser.get(other.headers["location"]).text
    assert dash_client.backend.dead_letters.count() == 3
    all_of_them = browser.post("/dead/requeue", data={"csrf_token": token, "reason": "unrecoverable"})
    assert "requeued 3 dead letter" in browser.get(all_of_them.headers["location"]).text
    work(dash_settings, dash_client, conn)
    assert dash_client.backend.dead_letters.count() == 3
    purged = browser.post("/dead/purge", data={"csrf_token": token})
    assert "purged 3 dead letter" in browser.get(purged.headers["location"]).text
    assert dash_client.backend.dead_letters.count() == 0


def test_the_enqueue_form_is_made_from_the_schema_and_shows_the_models_errors(dash_client: Client) -> None:
    browser = logged_in(create_app(client=dash_client, auth=TokenAuth(TOKEN)))
    form = browser.get("/enqueue/email.notify").text
    assert 'name="to"' in form and 'type="password"' in form and 'type="checkbox"' in form
    token = csrf_of(form)
    bad = browser.post(
        "/enqueue/email.notify", data={"csrf_token": token, "to": "x@example.com", "api_key": SECRET, "count": "many"}
    )
    assert bad.status_code == 422
    assert re.search(r'data-field="count">.*?Input should be a valid integer', bad.text, re.S)
    assert SECRET not in bad.text  # a secret typed in is not sent back
    missing = browser.post("/enqueue/email.notify", data={"csrf_token": token, "count": "2"})
    assert missing.status_code == 422 and re.search(r'data-field="to">.*?Field required', missing.text, re.S)
    bad_priority = browser.post(
        "/enqueue/email.notify", data={"csrf_token": token, "to": "x", "api_key": "k", "priority": "11"}
    )
    assert bad_priority.status_code == 422 and "priority" in bad_priority.text
    ok = browser.post(
        "/enqueue/email.notify",
        data={"csrf_token": token, "to": "x@example.com", "api_key": SECRET, "count": "2", "priority": "3"},
    )
    assert ok.status_code == 303
    job_id = ok.headers["location"].rsplit("/", 1)[1]
    detail = dash_client.backend.job_detail(job_id)  # as stored, secret and all
    assert detail is not None
    assert detail.payload == {"to": "x@example.com", "api_key": SECRET, "count": 2, "fail": False}
    assert detail.priority == 3


def test_mounted_under_admin_queues_in_fastapi(dash_client: Client) -> None:
    from fastapi import FastAPI

    host = FastAPI()

    @host.get("/")
    def home() -> dict[str, str]:
        return {"app": "host"}

    host.mount("/admin/queues", create_app(client=dash_client, auth=TokenAuth(TOKEN)))
    browser = TestClient(host, follow_redirects=False)
    assert browser.get("/").json() == {"app": "host"}
    first = browser.get("/admin/queues/")
    assert first.headers["location"] == "/admin/queues/login?next=%2F"
    browser = logged_in(host, "/admin/queues")
    page = browser.get("/admin/queues/")
    assert page.status_code == 200
    assert 'href="/admin/queues/queues/email"' in page.text and "/admin/queues/static/dashboard.css" in page.text
    assert browser.get("/admin/queues/static/dashboard.js").status_code == 200
    token = csrf_of(page.text)
    paused = browser.post("/admin/queues/queues/email/pause", data={"csrf_token": token, "back": "/"})
    assert paused.headers["location"] == "/admin/queues/" and dash_client.paused() == {"email"}


def test_a_host_application_hook_decides_who_may_enter(dash_client: Client) -> None:
    from starlette.requests import Request

    def staff_only(request: Request) -> str | None:
        return "alice" if request.headers.get("x-staff") == "yes" else None

    app = create_app(client=dash_client, auth=staff_only)
    browser = TestClient(app, follow_redirects=False)
    assert browser.get("/").status_code == 403
    page = browser.get("/", headers={"x-staff": "yes"})
    assert page.status_code == 200 and "alice" in page.text
