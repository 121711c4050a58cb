"""The dashboard's edges over HTTP (Starlette's TestClient) on a real Redis: auth from the environment and its
refusals, sessions and headers that do not hold, the enqueue form for enums, literals, optionals and nested
models, actions that are refused (and say why), a live in-process worker on the overview, damaged and expired
job records, stored schedule ticks, and the `forgejobs dashboard` command.

The job classes are this module's own (FORGEJOBS_JOBS=tests.test_dashboard_edges), on a queue the test's own
spec file declares.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import os
import re
import signal
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import pytest
import redis
from pydantic import BaseModel, Field, model_validator
from starlette.testclient import TestClient

from forgejobs import Client, Context, Job, Registry, Settings, Unrecoverable, set_client
from forgejobs.backends.fake import FakeBackend
from forgejobs.backends.redis import RedisBackend
from forgejobs.backends.rqscheduler import RQSchedulerStore
from forgejobs.dashboard import BasicAuth, DashboardError, TokenAuth, create_app
from forgejobs.dashboard.app import fmt_age, fmt_time
from forgejobs.dashboard.auth import SESSION_COOKIE, SESSION_SECONDS, Signer, credentials_from_header
from forgejobs.dashboard.forms import fields_for
from forgejobs.deadletter import Reason
from forgejobs.inspection import Inspector, State
from forgejobs.logs import Secret, secret_fields
from forgejobs.registry import discover
from forgejobs.runtime.worker import Worker
from forgejobs.scheduling import Repeater
from forgejobs.specs import load_specs
from forgejobs.status import Status
from forgejobs.workflows import Step, Workflow
from tests.conftest import WorkerProcess
from tests.helpers import cli_env, csrf_of, dashboard_login, free_port, run_cli, wait_for

pytestmark = pytest.mark.redis

TOKEN = "dashboard-edges-token"
SECRET = "sk_live_EDGE-NEVER-SHOWN-31"
MODULE = "tests.test_dashboard_edges"
RELEASE = threading.Event()  # what a running Hold waits for: the test sets it when it is done looking
NOTICED: set[str] = set()  # the Hold jobs whose handler has seen ctx.cancelled


class Note(Job, queue="edges", attempts=1):
    """Write a note (fails when asked, with its key in the message)."""

    text: str
    api_key: Annotated[str, Secret] = "none"
    fail: bool = False

    def perform(self, ctx: Context[None]) -> None:
        if self.fail:
            raise Unrecoverable(f"the store refused key {self.api_key}")


class Hold(Job, queue="edges", attempts=1):
    """Run until the test releases it."""

    tag: str

    def perform(self, ctx: Context[None]) -> str:
        while not RELEASE.wait(0.02):
            if ctx.cancelled:
                NOTICED.add(ctx.job_id)
        return self.tag


class Big(Job, queue="edges", attempts=1, max_payload_bytes=64):
    """A job whose payload may be at most 64 bytes."""

    text: str

    def perform(self, ctx: Context[None]) -> None:
        return None


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    city: str
    zip: str


class Order(Job, queue="edges", attempts=1):
    """Place an order."""

    item: str = Field(title="Item name", description="What to order")
    color: Color = Color.RED
    level: Level = Level.LOW
    size: Literal["s", "m", "l"] = "m"
    channel: Literal["retail"] = "retail"
    note: str | None = None
    tags: list[str] = ["new"]
    ship_to: Address | None = None
    code: int | str = 0
    gift: bool = True
    pin: Annotated[str, Secret] = "0000"

    @model_validator(mode="after")
    def gifts_need_a_note(self) -> Order:
        if self.gift and not self.note:
            raise ValueError("a gift needs a note")
        return self

    def perform(self, ctx: Context[None]) -> None:
        return None


class Tagged(BaseModel):
    tag: str


class HeldRun(Workflow, input=Tagged, name="edges_held"):
    hold = Step(Hold, {"tag": "input.tag"})


@functools.cache
def retired_type() -> type[Job]:
    """A job type an older deployment had: enqueued by that deployment's client, unknown to the dashboard's."""

    class Retired(Job, queue="edges", attempts=1):
        what: str

        def perform(self, ctx: Context[None]) -> None:
            return None

    return Retired


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "queues.yaml").write_text("queues:\n  edges: {concurrency: 2}\n")
    (folder / "schedules.yaml").write_text(
        "schedules:\n  daily-note:\n    job: edges.note\n    payload: {text: 'good morning'}\n"
        "    cron: '0 3 * * *'\n    tz: Europe/Berlin\n"
    )
    return folder


@pytest.fixture
def edge_settings(redis_url: str, specs: Path) -> Settings:
    return Settings(redis_url=redis_url, jobs=MODULE, specs=specs)


@pytest.fixture
def edge_client(conn: redis.Redis, edge_settings: Settings) -> Iterator[Client]:
    c = Client(RedisBackend(conn), Registry.load(edge_settings))
    previous = set_client(c)
    yield c
    set_client(previous)


@pytest.fixture
def old_client(conn: redis.Redis, specs: Path) -> Client:
    """A client of the older deployment: it still knows `Retired`."""
    return Client(RedisBackend(conn), Registry([*discover(MODULE), retired_type()], load_specs(specs)))


@pytest.fixture(autouse=True)
def no_dashboard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FORGEJOBS_DASHBOARD_"):
            monkeypatch.delenv(name)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """RELEASE cleared for the test, and set afterwards so no Hold outlives it."""
    RELEASE.clear()
    yield RELEASE
    RELEASE.set()


def logged_in(app: object) -> TestClient:
    browser: TestClient = dashboard_login(app, TOKEN)
    return browser


def app_of(client: Client, **options: Any) -> Any:
    return create_app(client=client, auth=TokenAuth(TOKEN), **options)


def work(settings: Settings, client: Client, conn: redis.Redis) -> None:
    Worker(settings, client.registry, connection=conn).run(burst=True, horizon=0)


def flash_after(browser: TestClient, path: str, data: dict[str, str] | None = None) -> str:
    """POST an action with the page's CSRF token, follow its redirect, and return the message shown there."""
    token = csrf_of(browser.get("/login").text)  # a page that reads nothing from Redis
    reply = browser.post(path, data={"csrf_token": token, **(data or {})})
    assert reply.status_code == 303, reply.text
    page = browser.get(reply.headers["location"]).text
    found = re.search(r'<div class="flash (?:ok|error)" role="(?:status|alert)">(.*?)</div>', page, re.S)
    assert found, f"no message on {reply.headers['location']}"
    return html.unescape(found.group(1))


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def job_key(client: Client, job_id: str) -> str:
    backend = client.backend
    assert isinstance(backend, RedisBackend)
    return str(backend.keys.queue("edges").job(job_id))


# -- create_app: auth and settings ---------------------------------------------------------------


def test_auth_and_read_only_come_from_the_environment_when_not_given(
    edge_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGEJOBS_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("FORGEJOBS_DASHBOARD_READ_ONLY", "1")
    by_token = TestClient(create_app(client=edge_client), follow_redirects=False)
    page = by_token.get("/", headers=bearer())
    assert page.status_code == 200 and 'id="read-only"' in page.text
    assert by_token.get("/", headers=bearer("some-other-token")).status_code == 303

    monkeypatch.delenv("FORGEJOBS_DASHBOARD_TOKEN")
    monkeypatch.delenv("FORGEJOBS_DASHBOARD_READ_ONLY")
    monkeypatch.setenv("FORGEJOBS_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("FORGEJOBS_DASHBOARD_PASSWORD", "correct horse")
    by_password = TestClient(create_app(client=edge_client), follow_redirects=False)
    page = by_password.get("/", auth=("ops", "correct horse"))
    assert page.status_code == 200 and 'id="read-only"' not in page.text and ">ops<" in page.text
    assert by_password.get("/", auth=("ops", "wrong horse")).status_code == 303


@pytest.mark.parametrize(
    ("env", "options", "message"),
    [
        ({"FORGEJOBS_DASHBOARD_TOKEN": "short"}, {}, "FORGEJOBS_DASHBOARD_*: the dashboard token must be at least 8"),
        (
            {"FORGEJOBS_DASHBOARD_USERNAME": "ops", "FORGEJOBS_DASHBOARD_PASSWORD": "short"},
            {},
            "FORGEJOBS_DASHBOARD_*: basic auth needs a user name and a password of at least 8 characters",
        ),
        ({"FORGEJOBS_DASHBOARD_USERNAME": "ops"}, {}, "basic auth needs both FORGEJOBS_DASHBOARD_USERNAME and"),
        ({"FORGEJOBS_DASHBOARD_PASSWORD": "correct horse"}, {}, "basic auth needs both"),
        ({}, {"auth": "a-token-as-a-plain-string"}, "auth must be a TokenAuth, a BasicAuth or a callable, not str"),
        ({}, {"auth": TokenAuth(TOKEN), "per_page": 0}, "per_page must be within 1..500, not 0"),
        ({}, {"auth": TokenAuth(TOKEN), "per_page": 501}, "per_page must be within 1..500, not 501"),
    ],
    ids=["short-token", "short-password", "user-only", "password-only", "auth-str", "per-page-0", "per-page-501"],
)
def test_bad_auth_or_settings_are_refused_with_a_sentence(
    edge_client: Client,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    options: dict[str, Any],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DashboardError, match=re.escape(message)):
        create_app(client=edge_client, **options)


def test_basic_auth_needs_a_user_name_and_a_long_password() -> None:
    with pytest.raises(ValueError, match="needs a user name"):
        BasicAuth("", "correct horse")
    with pytest.raises(ValueError, match="at least 8 characters"):
        BasicAuth("ops", "short")


def test_without_a_client_it_reads_redis_and_jobs_from_the_settings(
    edge_settings: Settings, edge_client: Client
) -> None:
    waiting = Note.enqueue(text="from settings")
    browser = TestClient(create_app(edge_settings, auth=TokenAuth(TOKEN)), follow_redirects=False)
    page = browser.get("/queues/edges?state=waiting", headers=bearer())
    assert page.status_code == 200 and waiting.id in page.text
    assert browser.get("/enqueue/edges.order", headers=bearer()).status_code == 200  # the settings' job package


def test_a_client_on_another_backend_is_refused(edge_client: Client) -> None:
    fake = Client(FakeBackend(), edge_client.registry)
    with pytest.raises(DashboardError, match="reads a Redis backend; this client's backend is not one"):
        create_app(client=fake, auth=TokenAuth(TOKEN))


def test_a_shared_secret_key_keeps_sessions_valid_across_processes(
    edge_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = logged_in(app_of(edge_client, secret_key="one key for every process"))
    cookies = dict(first.cookies)

    def enters(app: Any) -> bool:
        return bool(TestClient(app, follow_redirects=False, cookies=cookies).get("/").status_code == 200)

    assert enters(app_of(edge_client, secret_key="one key for every process"))
    assert enters(app_of(edge_client, secret_key=b"one key for every process"))
    assert not enters(app_of(edge_client, secret_key="another key"))
    assert not enters(app_of(edge_client))  # a random key of its own
    monkeypatch.setenv("FORGEJOBS_DASHBOARD_SECRET_KEY", "one key for every process")
    assert enters(app_of(edge_client))


def test_metrics_are_served_unless_turned_off_or_prometheus_client_is_missing(
    edge_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = TestClient(app_of(edge_client)).get("/metrics", headers=bearer())
    assert served.status_code == 200 and "forgejobs_workers_alive" in served.text
    assert TestClient(app_of(edge_client, metrics=False)).get("/metrics", headers=bearer()).status_code == 404
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed: its import fails
    assert TestClient(app_of(edge_client)).get("/metrics", headers=bearer()).status_code == 404


# -- auth: login forms, hooks, sessions and headers ---------------------------------------------------


def test_basic_auth_logs_in_on_the_form_and_logout_ends_the_session(edge_client: Client) -> None:
    app = create_app(client=edge_client, auth=BasicAuth("ops", "correct horse"))
    browser = TestClient(app, follow_redirects=False)
    login = browser.get("/login?next=/dead")
    assert 'name="username"' in login.text and ">Password</label>" in login.text
    token = csrf_of(login.text)
    wrong = browser.post("/login", data={"csrf_token": token, "username": "root", "secret": "correct horse"})
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.text
    assert SESSION_COOKIE not in browser.cookies

    ok = browser.post(
        "/login", data={"csrf_token": token, "username": "ops", "secret": "correct horse", "next": "/dead"}
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/dead"
    assert browser.get("/dead").status_code == 200

    refused = browser.post("/logout", data={"csrf_token": "forged"})
    assert refused.status_code == 403 and browser.get("/dead").status_code == 200
    out = browser.post("/logout", data={"csrf_token": token})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert SESSION_COOKIE not in browser.cookies
    assert browser.get("/dead").status_code == 303


def test_an_async_hook_decides_and_the_login_page_is_not_needed(edge_client: Client) -> None:
    from starlette.requests import Request

    async def staff_only(request: Request) -> str | None:
        return "grace" if request.headers.get("x-staff") == "yes" else None

    browser = TestClient(create_app(client=edge_client, auth=staff_only), follow_redirects=False)
    refused = browser.get("/")
    assert refused.status_code == 403 and "the application's auth refused" in refused.text
    page = browser.get("/", headers={"x-staff": "yes"})
    assert page.status_code == 200 and "grace" in page.text
    login = browser.get("/login")  # the host application logs people in, not the dashboard
    assert login.status_code == 303 and login.headers["location"] == "/"


def test_sessions_that_are_forged_malformed_or_expired_are_refused() -> None:
    signer = Signer(b"k" * 32)
    fingerprint = TokenAuth(TOKEN).fingerprint()
    good = signer.session("token", fingerprint)
    assert signer.session_user(good, fingerprint) == "token"
    assert signer.session_user(good, BasicAuth("ops", "correct horse").fingerprint()) is None

    def signed(body: str) -> str:
        return f"{body}.{signer.sign('session|' + fingerprint.hex(), body)}"

    def encoded(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()

    later = int(datetime.now(UTC).timestamp()) + SESSION_SECONDS
    assert signer.session_user(signed(encoded({"u": "ada", "e": later})), fingerprint) == "ada"
    assert signer.session_user(None, fingerprint) is None
    assert signer.session_user("no-dot-at-all", fingerprint) is None
    assert signer.session_user(good.rsplit(".", 1)[0] + ".forged", fingerprint) is None
    assert signer.session_user(signed("%%%not-base64-json%%%"), fingerprint) is None
    assert signer.session_user(signed(encoded(["u", "ada"])), fingerprint) is None  # not an object
    assert signer.session_user(signed(encoded({"u": "ada", "e": 1})), fingerprint) is None  # expired in 1970
    assert signer.session_user(signed(encoded({"u": 42, "e": later})), fingerprint) is None  # no user name


def test_authorization_headers_that_cannot_be_read_count_as_no_credentials(edge_client: Client) -> None:
    assert credentials_from_header(None) is None
    assert credentials_from_header(f"Bearer {TOKEN}") == (None, TOKEN)
    assert credentials_from_header("Basic " + base64.b64encode(b"ops:pass:word").decode()) == ("ops", "pass:word")
    assert credentials_from_header("Basic !!!not base64!!!") is None
    assert credentials_from_header("Basic " + base64.b64encode(b"\xff\xfe").decode()) is None  # not UTF-8
    assert credentials_from_header(f"Digest {TOKEN}") is None
    assert credentials_from_header("Bearer") is None

    browser = TestClient(app_of(edge_client), follow_redirects=False)
    for header in ("Basic !!!not base64!!!", f"Digest {TOKEN}"):
        reply = browser.get("/_/overview", headers={"Authorization": header})
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer", header
    basic = TestClient(create_app(client=edge_client, auth=BasicAuth("ops", "correct horse")))
    assert basic.get("/metrics").headers["www-authenticate"] == 'Basic realm="forgejobs"'


# -- app: routes, parameters and the guard --------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "–"), (0.4, "0s"), (59, "59s"), (61, "1m 1s"), (3599, "59m 59s"), (3660, "1h 1m"), (90061, "1d 1h")],
)
def test_ages_are_shown_in_their_two_largest_units(seconds: float | None, shown: str) -> None:
    assert fmt_age(seconds) == shown


def test_times_are_shown_in_utc_and_nothing_for_none() -> None:
    assert fmt_time(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2030-01-02 03:04:05 UTC"
    assert fmt_time(None) == ""


def test_unknown_pages_answer_404_and_bad_parameters_400(edge_client: Client) -> None:
    waiting = Note.enqueue(text="first")
    browser = logged_in(app_of(edge_client))
    token = csrf_of(browser.get("/").text)

    page = browser.get("/queues/nowhere")
    assert page.status_code == 404 and "no queue named &#39;nowhere&#39;" in page.text and "<html" in page.text
    fragment = browser.get("/_/queues/nowhere")  # what a live refresh fetches: plain text, no page around it
    assert fragment.status_code == 404 and fragment.text == "404: no queue named 'nowhere'"
    bad_state = browser.get("/queues/edges?state=sleeping")
    assert bad_state.status_code == 400 and "sleeping" in bad_state.text
    assert browser.get("/jobs/no-such-job").status_code == 404
    assert browser.get("/_/jobs/no-such-job").text.startswith("404: no job")
    assert browser.get("/enqueue/edges.nothing").status_code == 404
    assert browser.post("/enqueue/edges.nothing", data={"csrf_token": token}).status_code == 404
    assert browser.post(f"/jobs/{waiting.id}/explode", data={"csrf_token": token}).status_code == 404
    assert browser.post("/queues/edges/drain", data={"csrf_token": token}).status_code == 404
    assert waiting.status() is Status.QUEUED

    by_id = browser.get(f"/queues/edges?id=+{waiting.id}+")  # the search box: an id goes to its job
    assert by_id.status_code == 303 and by_id.headers["location"] == f"/jobs/{waiting.id}"
    not_a_number = browser.get("/queues/edges?state=waiting&page=second")  # read as page 1
    assert not_a_number.status_code == 200 and waiting.id in not_a_number.text


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "javascript:alert(1)", "/\\evil.example", "/a://b"]
)
def test_after_login_the_next_page_never_leaves_the_dashboard(edge_client: Client, target: str) -> None:
    browser = TestClient(app_of(edge_client), follow_redirects=False)
    token = csrf_of(browser.get("/login").text)
    reply = browser.post("/login", data={"csrf_token": token, "secret": TOKEN, "next": target})
    assert reply.status_code == 303 and reply.headers["location"] == "/"


def test_a_forged_or_damaged_flash_cookie_shows_nothing(edge_client: Client) -> None:
    key = b"flash-test-key-0123456789abcdef"
    browser = logged_in(app_of(edge_client, secret_key=key))
    signer = Signer(key)

    def shown(cookie: str) -> bool:
        browser.cookies.set("forgejobs_flash", cookie)
        return 'class="flash' in browser.get("/schedules").text

    body = json.dumps({"ok": "all is well", "error": None})
    assert shown(f"{quote(body)}.{signer.sign('flash', body)}")  # the genuine article is shown
    assert not shown(f"{quote(body)}.forged-signature")
    assert not shown("no-signature-at-all")
    assert not shown(f"{quote('{broken')}.{signer.sign('flash', '{broken')}")  # signed, but not JSON
    assert not shown(f"{quote('[1, 2]')}.{signer.sign('flash', '[1, 2]')}")  # signed JSON, but not an object


def test_the_guard_lets_the_lifespan_protocol_through(edge_client: Client) -> None:
    with TestClient(app_of(edge_client)) as browser:  # a server sends lifespan startup and shutdown first
        assert browser.get("/login").status_code == 200


def test_a_redis_error_during_an_action_is_shown_not_raised(edge_client: Client, conn: redis.Redis) -> None:
    browser = logged_in(app_of(edge_client))
    backend = edge_client.backend
    assert isinstance(backend, RedisBackend)
    conn.set(backend.keys.paused, "not a set")  # a damaged key: Redis answers WRONGTYPE to the pause
    message = flash_after(browser, "/queues/edges/pause", {"back": "/schedules"})
    assert message.startswith("Redis refused: WRONGTYPE")


def test_a_page_redis_refuses_is_a_503_that_says_so_not_a_crash(edge_client: Client, conn: redis.Redis) -> None:
    browser = logged_in(app_of(edge_client))
    backend = edge_client.backend
    assert isinstance(backend, RedisBackend)
    conn.set(backend.keys.paused, "not a set")  # a damaged key: reading the pauses answers WRONGTYPE
    page = browser.get("/")
    fragment = browser.get("/_/overview")
    conn.delete(backend.keys.paused)
    assert page.status_code == 503 and fragment.status_code == 503
    shown = html.unescape(re.sub(r"<[^>]+>", " ", page.text))
    assert "Redis did not answer this page (ResponseError: " in shown and "WRONGTYPE" in shown
    assert fragment.text.startswith("503: Redis did not answer this page (ResponseError: ")
    assert browser.get("/").status_code == 200  # and the page works again once Redis does


def test_the_enqueue_list_links_every_job_type_in_name_order(edge_client: Client) -> None:
    page = logged_in(app_of(edge_client)).get("/enqueue")
    assert page.status_code == 200
    links = re.findall(r'href="/enqueue/([^"]+)"', page.text)
    assert links == ["edges.big", "edges.hold", "edges.note", "edges.order"]
    assert "Place an order." in page.text


def test_an_enqueue_the_client_refuses_is_shown_on_the_form(edge_client: Client, conn: redis.Redis) -> None:
    browser = logged_in(app_of(edge_client))
    token = csrf_of(browser.get("/enqueue/edges.big").text)
    reply = browser.post("/enqueue/edges.big", data={"csrf_token": token, "text": "x" * 200})
    assert reply.status_code == 422
    errors = re.search(r'id="form-errors">(.*?)</div>\s*<form', reply.text, re.S)
    assert (
        errors
        and "edges.big: payload is 211 bytes, over the limit of 64 bytes; largest fields: text"
        in html.unescape(errors.group(1))
    )
    assert 'value="' + "x" * 200 + '"' in reply.text  # what was typed is kept to be shortened
    bad_delay = browser.post("/enqueue/edges.big", data={"csrf_token": token, "text": "ok", "delay": "soon"})
    assert bad_delay.status_code == 422 and "options: could not convert string to float" in bad_delay.text
    assert Inspector(edge_client.backend, edge_client.registry).jobs("edges", State.WAITING) == []


# -- forms: the enqueue form from a JSON Schema -----------------------------------------------------------


def test_form_fields_follow_enums_literals_optionals_and_nested_models() -> None:
    fields = {f.name: f for f in fields_for(Order.model_json_schema(mode="validation"), secret_fields(Order))}
    assert list(fields) == [
        "item", "color", "level", "size", "channel", "note", "tags", "ship_to", "code", "gift", "pin"
    ]  # fmt: skip
    item = fields["item"]
    assert (item.label, item.kind, item.required, item.description) == ("Item name", "text", True, "What to order")
    assert fields["color"].kind == "select" and fields["color"].choices == [("red", "red"), ("blue", "blue")]
    assert fields["color"].value == "red"  # the default, through the $ref to the enum
    assert fields["level"].choices == [("1", 1), ("2", 2)] and fields["level"].value == "1"
    assert fields["size"].choices == [("s", "s"), ("m", "m"), ("l", "l")] and fields["size"].value == "m"
    assert fields["channel"].kind == "select" and fields["channel"].choices == [("retail", "retail")]
    assert (fields["note"].kind, fields["note"].required, fields["note"].value) == ("text", False, "")
    assert fields["tags"].kind == "json" and fields["tags"].value == '["new"]'
    assert fields["ship_to"].kind == "json" and fields["ship_to"].value == ""  # Optional[Address]: a JSON object
    assert fields["code"].kind == "json"  # int | str: no single input fits, JSON says which
    assert fields["gift"].kind == "checkbox" and fields["gift"].value == "on"
    assert fields["pin"].kind == "password" and fields["pin"].value == ""  # a secret default is never filled in


def test_the_form_enqueues_enum_literal_and_json_values_as_the_model_takes_them(edge_client: Client) -> None:
    browser = logged_in(app_of(edge_client))
    form = browser.get("/enqueue/edges.order").text
    assert re.search(r'<select id="f-level" name="level"><option value="">\(default\)</option>', form)
    assert '<option value="blue">blue</option>' in form and '<option value="red" selected>' in form
    assert '<textarea id="f-tags" name="tags" placeholder="JSON">[&#34;new&#34;]</textarea>' in form
    reply = browser.post(
        "/enqueue/edges.order",
        data={
            "csrf_token": csrf_of(form),
            "item": "lamp",
            "color": "blue",
            "level": "2",
            "size": "l",
            "note": "for ada",
            "tags": '["gift", "fragile"]',
            "ship_to": '{"city": "Lyon", "zip": "69001"}',
            "code": "7",
            "gift": "on",
        },
    )
    assert reply.status_code == 303, reply.text
    job_id = reply.headers["location"].rsplit("/", 1)[1]
    detail = edge_client.backend.job_detail(job_id)
    assert detail is not None and detail.payload == {
        "item": "lamp",
        "color": "blue",
        "level": 2,
        "size": "l",
        "channel": "retail",
        "note": "for ada",
        "tags": ["gift", "fragile"],
        "ship_to": {"city": "Lyon", "zip": "69001"},
        "code": 7,
        "gift": True,
        "pin": "0000",
    }


def test_the_form_shows_json_that_does_not_parse_and_errors_of_the_whole_payload(edge_client: Client) -> None:
    browser = logged_in(app_of(edge_client))
    token = csrf_of(browser.get("/enqueue/edges.order").text)
    not_json = browser.post(
        "/enqueue/edges.order", data={"csrf_token": token, "item": "lamp", "tags": "[gift", "note": "n"}
    )
    assert not_json.status_code == 422
    assert re.search(r'data-field="tags">.*?not valid JSON: ', not_json.text, re.S)
    assert "[gift</textarea>" in not_json.text  # given back to be fixed

    whole = browser.post("/enqueue/edges.order", data={"csrf_token": token, "item": "lamp", "gift": "on"})
    assert whole.status_code == 422
    errors = re.search(r'id="form-errors">(.*?)</div>\s*<form', whole.text, re.S)
    assert errors and "payload: a gift needs a note" in errors.group(1)

    nested = browser.post(
        "/enqueue/edges.order",
        data={"csrf_token": token, "item": "lamp", "ship_to": '{"city": "Lyon"}', "level": "3"},
    )
    assert nested.status_code == 422
    assert re.search(r'data-field="ship_to">.*?zip: Field required', nested.text, re.S)
    assert re.search(r'data-field="level">.*?Input should be 1 or 2', nested.text, re.S)
    assert Inspector(edge_client.backend, edge_client.registry).jobs("edges", State.WAITING) == []


# -- actions that are refused, and why ----------------------------------------------------------------------


def test_retry_refuses_jobs_that_cannot_run_again_and_says_why(
    edge_client: Client, old_client: Client, conn: redis.Redis
) -> None:
    browser = logged_in(app_of(edge_client))
    assert flash_after(browser, "/jobs/nope/retry") == "no job with id 'nope' (never enqueued, or its record expired)"

    waiting = Note.enqueue(text="still waiting")
    said = flash_after(browser, f"/jobs/{waiting.id}/retry")
    assert said == f"job {waiting.id} is waiting: only failed, dead or cancelled jobs are retried"

    masked = Note.with_options(delay=3600).enqueue(text="copied from a page", api_key="***")
    assert flash_after(browser, f"/jobs/{masked.id}/cancel") == f"cancelled {masked.id}: it will not run"
    said = flash_after(browser, f"/jobs/{masked.id}/retry")
    assert said == f"job {masked.id}'s secret fields are masked where it is stored: enqueue it anew instead"

    damaged = Note.with_options(delay=3600).enqueue(text="soon damaged")
    conn.hset(job_key(edge_client, damaged.id), "d", "not an envelope")
    assert flash_after(browser, f"/jobs/{damaged.id}/cancel") == f"cancelled {damaged.id}: it will not run"
    assert flash_after(browser, f"/jobs/{damaged.id}/retry") == f"job {damaged.id} has no readable payload to run again"

    retired = old_client.enqueue_raw("edges.retired", {"what": "old"})
    assert flash_after(browser, f"/jobs/{retired.id}/cancel") == f"cancelled {retired.id}: it will not run"
    said = flash_after(browser, f"/jobs/{retired.id}/retry")
    assert said.startswith(f"cannot retry {retired.id}: ") and "edges.retired" in said

    for handle in (masked, damaged, retired):
        assert handle.status() is Status.CANCELLED, handle.id  # nothing was run again


def test_retry_of_a_dead_job_requeues_its_dead_letter(
    edge_client: Client, edge_settings: Settings, conn: redis.Redis
) -> None:
    doomed = Note.enqueue(text="doomed", api_key=SECRET, fail=True)
    work(edge_settings, edge_client, conn)
    assert doomed.status() is Status.FAILED and edge_client.backend.dead_letters.count() == 1
    said = flash_after(logged_in(app_of(edge_client)), f"/jobs/{doomed.id}/retry")
    assert said == f"requeued {doomed.id} from its dead letter: it runs again from attempt 1"
    assert doomed.status() is Status.QUEUED and edge_client.backend.dead_letters.count() == 0
    stored = edge_client.backend.job_detail(doomed.id)
    assert stored is not None and stored.payload is not None and stored.payload["api_key"] == SECRET


def test_finished_or_unknown_jobs_are_neither_cancelled_nor_deleted(
    edge_client: Client, edge_settings: Settings, conn: redis.Redis
) -> None:
    done = Note.enqueue(text="done")
    work(edge_settings, edge_client, conn)
    browser = logged_in(app_of(edge_client))
    said = flash_after(browser, f"/jobs/{done.id}/cancel")
    assert said == f"job {done.id} has already finished (succeeded): there is nothing to cancel"
    assert flash_after(browser, "/jobs/nope/delete") == "no job with id 'nope' (never enqueued, or its record expired)"
    assert done.status() is Status.SUCCEEDED


def test_requeue_says_which_dead_letters_cannot_be_requeued(
    edge_client: Client, old_client: Client, edge_settings: Settings, conn: redis.Redis
) -> None:
    good = Note.enqueue(text="requeue me", fail=True)
    corrupt = Note.enqueue(text="soon corrupt")
    conn.hset(job_key(edge_client, corrupt.id), "d", "not an envelope")
    retired = old_client.enqueue_raw("edges.retired", {"what": "old"})
    work(edge_settings, edge_client, conn)  # this deployment dead-letters what it cannot read or does not know
    reasons = {d.id: d.reason for d in edge_client.dead_letters()}
    assert reasons == {good.id: Reason.UNRECOVERABLE, corrupt.id: Reason.CORRUPT, retired.id: Reason.UNKNOWN_JOB}
    browser = logged_in(app_of(edge_client))

    page = browser.get("/dead").text
    requeue_buttons = re.findall(r'name="job_id" value="([^"]+)"', page)
    assert corrupt.id not in requeue_buttons and good.id in requeue_buttons  # no button where it cannot work

    said = flash_after(browser, "/dead/requeue", {"job_id": corrupt.id})
    assert said == f"{corrupt.id}: no readable payload (corrupt)"
    said = flash_after(browser, "/dead/requeue", {"reason": "unknown-job"})
    assert said.startswith(f"{retired.id}: cannot requeue {retired.id}: ")
    assert edge_client.backend.dead_letters.count() == 3

    said = flash_after(browser, "/dead/requeue")
    assert said.startswith("requeued 1 dead letter(s) (2 not: ")
    assert f"{corrupt.id}: no readable payload (corrupt)" in said and f"cannot requeue {retired.id}" in said
    assert good.status() is Status.QUEUED
    assert {d.id for d in edge_client.dead_letters()} == {corrupt.id, retired.id}


def test_purge_with_a_filter_deletes_only_the_matching_dead_letters(
    edge_client: Client, old_client: Client, edge_settings: Settings, conn: redis.Redis
) -> None:
    failed = [Note.enqueue(text=f"fail {i}", fail=True) for i in range(2)]
    retired = old_client.enqueue_raw("edges.retired", {"what": "old"})
    work(edge_settings, edge_client, conn)
    browser = logged_in(app_of(edge_client))
    assert flash_after(browser, "/dead/purge", {"reason": "unknown-job"}) == "purged 1 dead letter(s)"
    assert {d.id for d in edge_client.dead_letters()} == {h.id for h in failed}
    assert flash_after(browser, "/dead/purge", {"name": "edges.nothing"}) == "purged 0 dead letter(s)"
    assert flash_after(browser, "/dead/purge", {"name": "edges.note"}) == "purged 2 dead letter(s)"
    assert edge_client.dead_letters() == [] and retired.status() is Status.FAILED


def test_running_a_schedule_that_is_not_declared_is_refused(edge_client: Client) -> None:
    said = flash_after(logged_in(app_of(edge_client)), "/schedules/no-such-schedule/run")
    assert said == "no schedule named 'no-such-schedule' (known: daily-note)"
    assert Inspector(edge_client.backend, edge_client.registry).jobs("edges", State.WAITING) == []


# -- a live worker: the overview, and what a running job or run allows ------------------------------------


@pytest.fixture
def live_worker(
    edge_settings: Settings, edge_client: Client, conn: redis.Redis, release: threading.Event
) -> Iterator[Worker]:
    """A worker serving `edges` in this process's threads; stopped (its Holds released) at the end."""
    worker = Worker(edge_settings, edge_client.registry, connection=conn)
    worker.start(give_up_after=10)
    yield worker
    release.set()
    worker.stop()
    assert worker.join(30), "the worker did not stop"


def running(client: Client, job_id: str) -> Callable[[], bool]:
    inspector = Inspector(client.backend, client.registry)
    return lambda: inspector.job(job_id).state is State.ACTIVE


def test_the_overview_shows_live_workers_and_what_they_run(
    edge_client: Client, live_worker: Worker, release: threading.Event
) -> None:
    held = Hold.enqueue(tag="watched")
    wait_for(running(edge_client, held.id), what="the held job to start")
    browser = logged_in(app_of(edge_client))
    page = browser.get("/_/overview").text
    workers = re.search(r'<table id="workers">(.*?)</table>', page, re.S)
    assert workers, "no workers table"
    row = re.sub(r"\s+", " ", workers.group(1))
    assert f'<td>{socket.gethostname()}</td><td class="mono">{os.getpid()}</td><td>edges</td>' in row
    assert '<td class="num">2</td>' in row  # the spec's concurrency: two slots
    assert f'href="/jobs/{held.id}">{held.id}</a> edges.hold' in row
    assert "(1 alive" in page


def test_a_job_whose_worker_died_is_shown_on_no_live_worker(
    start_worker: Callable[..., WorkerProcess], edge_client: Client, edge_settings: Settings, specs: Path
) -> None:
    env = {"FORGEJOBS_JOBS": MODULE, "FORGEJOBS_SPECS": str(specs), "FORGEJOBS_STALL_TIMEOUT": "2"}
    worker = start_worker(env=env)
    held = Hold.enqueue(tag="orphaned")  # never released in the worker's process
    wait_for(running(edge_client, held.id), timeout=30, what="the held job to start", explain=worker.log)
    browser = logged_in(app_of(edge_client))
    assert held.id in browser.get("/_/overview").text
    worker.signal(signal.SIGKILL)  # its lease is not renewed any more: it runs out within the stall timeout
    assert worker.wait(30) == -signal.SIGKILL

    def no_worker_alive() -> str | None:
        page = browser.get("/_/overview").text
        return page if "(0 alive" in page else None

    page = str(wait_for(no_worker_alive, timeout=30, what="the dead worker's lease to run out"))
    assert 'id="workers"' not in page and held.id not in page  # still active, but on no live worker
    assert Inspector(edge_client.backend, edge_client.registry).job(held.id).state is State.ACTIVE


def test_a_running_job_is_not_deleted_and_its_cancel_is_asked_once(
    edge_client: Client, live_worker: Worker, release: threading.Event
) -> None:
    held = Hold.enqueue(tag="to cancel")
    wait_for(running(edge_client, held.id), what="the held job to start")
    browser = logged_in(app_of(edge_client))
    assert flash_after(browser, f"/jobs/{held.id}/delete") == f"job {held.id} is running: cancel it instead"
    said = flash_after(browser, f"/jobs/{held.id}/cancel")
    assert said == f"cancel requested for running job {held.id}: its handler sees ctx.cancelled within a heartbeat"
    assert flash_after(browser, f"/jobs/{held.id}/cancel") == f"a cancel of running job {held.id} was already requested"
    wait_for(lambda: held.id in NOTICED, what="the handler to see ctx.cancelled")  # within a heartbeat
    release.set()
    wait_for(lambda: held.status() is Status.CANCELLED, what="the held job to end cancelled")


def test_cancelling_a_run_with_a_running_step_asks_the_step_to_stop(
    edge_client: Client, live_worker: Worker, release: threading.Event
) -> None:
    run = HeldRun.start(tag="long")
    step_job = f"wf-{run.id}-hold-0"
    wait_for(running(edge_client, step_job), what="the run's step to start")
    said = flash_after(logged_in(app_of(edge_client)), f"/workflows/{run.id}/cancel")
    assert said == f"cancelled workflow run {run.id}: stopping (running steps are asked to stop; compensations follow)"
    wait_for(lambda: step_job in NOTICED, what="the step's handler to see ctx.cancelled")
    release.set()
    wait_for(lambda: run.status() == "cancelled", timeout=30, what="the run to end cancelled")


# -- data: records that expired or were damaged, and stored schedule ticks ------------------------------


def test_a_job_known_only_by_its_dead_letter_has_a_page_with_its_secret_masked(
    edge_client: Client, edge_settings: Settings, conn: redis.Redis
) -> None:
    doomed = Note.enqueue(text="expires", api_key=SECRET, fail=True)
    work(edge_settings, edge_client, conn)
    edge_client.backend.forget(doomed.id)  # as when its record expires: only the dead letter is left
    assert conn.exists(job_key(edge_client, doomed.id)) == 0
    page = logged_in(app_of(edge_client)).get(f"/jobs/{doomed.id}")
    assert page.status_code == 200 and SECRET not in page.text
    shown = html.unescape(page.text)
    assert '"api_key": "***"' in shown and "the store refused key ***" in shown
    assert 'id="events"' not in page.text  # no enqueue time known: no event stream read


def damaged_dead_job(client: Client, settings: Settings, conn: redis.Redis) -> str:
    """A dead job whose record's copy of the payload became unreadable after it was dead-lettered."""
    doomed = Note.enqueue(text="damaged later", api_key=SECRET, fail=True)
    work(settings, client, conn)
    conn.hset(job_key(client, doomed.id), "d", "not an envelope")
    stored = client.backend.job_detail(doomed.id)
    assert stored is not None and stored.payload is None and stored.name is None
    assert stored.dead_letter is not None and stored.dead_letter.name == "edges.note"
    return doomed.id


def test_a_damaged_record_shows_the_payload_its_dead_letter_kept(
    edge_client: Client, edge_settings: Settings, conn: redis.Redis
) -> None:
    job_id = damaged_dead_job(edge_client, edge_settings, conn)
    page = logged_in(app_of(edge_client)).get(f"/jobs/{job_id}")
    assert page.status_code == 200
    shown = html.unescape(page.text)
    payload = re.search(r'<pre id="payload">(.*?)</pre>', shown, re.S)
    assert payload and json.loads(payload.group(1))["text"] == "damaged later"
    assert "the store refused key ***" in shown  # the dead letter's error, masked


def test_a_record_damaged_but_still_naming_its_job_shows_the_dead_letters_payload_masked(
    edge_client: Client, edge_settings: Settings, conn: redis.Redis
) -> None:
    doomed = Note.enqueue(text="half damaged", api_key=SECRET, fail=True)
    work(edge_settings, edge_client, conn)
    conn.hset(job_key(edge_client, doomed.id), "d", json.dumps({"name": "edges.note"}))  # JSON, not an envelope
    stored = edge_client.backend.job_detail(doomed.id)
    assert stored is not None and stored.payload is None and stored.name == "edges.note"
    page = logged_in(app_of(edge_client)).get(f"/jobs/{doomed.id}")
    assert page.status_code == 200 and SECRET not in page.text
    payload = re.search(r'<pre id="payload">(.*?)</pre>', html.unescape(page.text), re.S)
    assert payload and json.loads(payload.group(1)) == {"text": "half damaged", "api_key": "***", "fail": True}


def test_a_damaged_record_never_shows_the_secret_its_dead_letter_kept(
    edge_client: Client, edge_settings: Settings, conn: redis.Redis
) -> None:
    job_id = damaged_dead_job(edge_client, edge_settings, conn)
    page = logged_in(app_of(edge_client)).get(f"/jobs/{job_id}")
    assert page.status_code == 200 and SECRET not in page.text
    shown = Inspector(edge_client.backend, edge_client.registry).job(job_id)  # what `forgejobs job ID` prints
    assert shown is not None and SECRET not in shown.model_dump_json()
    assert shown.dead_letter is not None and shown.dead_letter.payload["api_key"] == "***"


def test_schedules_show_the_next_tick_a_scheduler_stored(edge_client: Client) -> None:
    browser = logged_in(app_of(edge_client))
    before = browser.get("/schedules").text
    assert "no scheduler has registered it yet" in before
    backend = edge_client.backend
    assert isinstance(backend, RedisBackend)
    store = RQSchedulerStore(backend.connection, backend.keys)
    Repeater(edge_client, store).sync(now=datetime.now(UTC) + timedelta(days=10))  # a scheduler ahead of us
    stored = store.entries()["daily-note"].next_at
    after = browser.get("/schedules").text
    assert "no scheduler has registered it yet" not in after
    row = re.search(r'<tr data-schedule="daily-note">(.*?)</tr>', after, re.S)
    assert row, "no daily-note row"
    shown = re.findall(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)\)", row.group(1))
    assert len(shown) == 3 and shown[0] == fmt_time(stored)
    assert fmt_time(stored) not in before  # the stored tick, not the next one from today


# -- the `forgejobs dashboard` command -----------------------------------------------------------------------


def test_the_dashboard_command_serves_until_sigterm(
    start_cli: Callable[..., WorkerProcess], edge_client: Client
) -> None:
    port = free_port()
    server = start_cli("dashboard", "--port", str(port), "--read-only", env={"FORGEJOBS_DASHBOARD_TOKEN": TOKEN})

    def answers() -> bytes | None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=bearer())
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return bytes(reply.read())
        except (urllib.error.URLError, ConnectionError):
            assert server.process.poll() is None, server.log()
            return None

    page = wait_for(answers, timeout=30, what="the dashboard to answer", explain=server.log)
    assert isinstance(page, bytes) and b'id="read-only"' in page and b'data-queue="fast"' in page
    assert f"serving the dashboard (read-only) on http://127.0.0.1:{port}/" in server.log()
    server.signal(signal.SIGTERM)  # uvicorn shuts down, then raises the signal again to end with it
    assert server.wait(30) == -signal.SIGTERM, server.log()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5)


def test_the_dashboard_command_on_a_port_in_use_fails_with_one_line(redis_url: str, specs: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_cli(
            "dashboard",
            "--port",
            str(port),
            env=cli_env(redis_url, jobs=MODULE, specs=specs, FORGEJOBS_DASHBOARD_TOKEN=TOKEN),
        )
    assert code == 1
    assert output == f"error: --port {port}: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_the_dashboard_command_names_the_missing_extra(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the dashboard extra were not installed
    code, output = run_cli("dashboard", env=cli_env(redis_url, FORGEJOBS_DASHBOARD_TOKEN=TOKEN))
    assert code == 1
    assert (
        "error: forgejobs dashboard needs the dashboard extra (uvicorn is missing): pip install 'forgejobs[dashboard]'"
        in output
    )
