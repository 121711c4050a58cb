"""The dashboard's Workflows pages over HTTP (Starlette's TestClient) on a real Redis, with a real in-process
worker running this module's own workflow: the list with its filters, a run's step tree with job links,
fan-out counts, masked outputs and errors, Cancel (and its refusal in read-only mode), and escaping.

The job and workflow classes are this module's own (FORGEJOBS_JOBS=tests.test_dashboard_workflows), on a
queue the test's own spec file declares.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
import redis
from pydantic import BaseModel
from starlette.testclient import TestClient

from forgejobs import Client, Context, Job, Registry, Settings, Unrecoverable, set_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.dashboard import TokenAuth, create_app
from forgejobs.logs import Secret
from forgejobs.runtime.worker import Worker
from forgejobs.workflows import Step, Workflow
from forgejobs.workflows.run import WorkflowRun
from tests.helpers import csrf_of, dashboard_login, wait_for

pytestmark = pytest.mark.redis

TOKEN = "dashboard-workflow-token"
SECRET = "sk_live_WORKFLOW-NEVER-SHOWN-77"
XSS = "<script>alert('run')</script>"


class Signup(BaseModel):
    who: str
    api_key: Annotated[str, Secret]
    orgs: list[str] = []


class Registered(BaseModel):
    greeting: str
    note: str


class Register(Job, queue="dwf", attempts=1):
    who: str
    api_key: Annotated[str, Secret]

    def perform(self, ctx: Context[None]) -> Registered:
        return Registered(greeting=f"hello {self.who}", note=f"registered with {self.api_key}")


class Bill(Job, queue="dwf", attempts=1):
    org: str

    def perform(self, ctx: Context[None]) -> int:
        if self.org == "org_bad":
            raise Unrecoverable(f"card declined for {self.org}")
        return len(self.org)


class Summary(Job, queue="dwf", attempts=1):
    amounts: list[int | None]
    greeting: str

    def perform(self, ctx: Context[None]) -> str:
        return f"{self.greeting}: {sum(a or 0 for a in self.amounts)}"


class DashSignup(Workflow, input=Signup, name="dash_signup"):
    register = Step(Register, {"who": "input.who", "api_key": "input.api_key"})
    bill = Step(Bill, {"org": "item"}, for_each="input.orgs", after=[register], on_failure="continue")
    summary = Step(
        Summary, {"amounts": "steps.bill.output", "greeting": "steps.register.output.greeting"}, after=[bill]
    )


class Stock(BaseModel):
    item: str


class Reserve(Job, queue="dwf", attempts=1):
    item: str

    def perform(self, ctx: Context[None]) -> str:
        return f"reserved {self.item}"


class Release(Job, queue="dwf", attempts=1):
    item: str

    def perform(self, ctx: Context[None]) -> None:
        if self.item.startswith("broken"):
            raise Unrecoverable(f"could not release {self.item}")


class Ship(Job, queue="dwf", attempts=1):
    item: str

    def perform(self, ctx: Context[None]) -> int:
        raise Unrecoverable(f"no stock for {self.item}")


class DashSaga(Workflow, input=Stock, name="dash_saga"):
    reserve = Step(Reserve, {"item": "input.item"}, compensate=Release)
    ship = Step(Ship, {"item": "input.item"}, after=[reserve])


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "queues.yaml").write_text("queues:\n  dwf: {concurrency: 2}\n")
    return folder


@pytest.fixture
def wf_settings(redis_url: str, specs: Path) -> Settings:
    return Settings(redis_url=redis_url, jobs="tests.test_dashboard_workflows", specs=specs)


@pytest.fixture
def wf_client(conn: redis.Redis, wf_settings: Settings) -> Iterator[Client]:
    c = Client(RedisBackend(conn), Registry.load(wf_settings))
    previous = set_client(c)
    yield c
    set_client(previous)


@pytest.fixture(autouse=True)
def no_dashboard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FORGEJOBS_DASHBOARD_"):
            monkeypatch.delenv(name)


def logged_in(app: object) -> TestClient:
    browser: TestClient = dashboard_login(app, TOKEN)
    return browser


def run_to_end(settings: Settings, client: Client, conn: redis.Redis, run: WorkflowRun) -> str:
    """A real worker in this process, in bursts, until the run has ended (each burst runs what is released)."""

    def burst() -> str | None:
        Worker(settings, client.registry, connection=conn).run(burst=True, horizon=0)
        return run.status() if run.done() else None

    return str(wait_for(burst, timeout=60, what=f"run {run.id} to end"))


def test_the_list_shows_runs_with_their_progress_and_filters_them(
    wf_client: Client, wf_settings: Settings, conn: redis.Redis
) -> None:
    done = DashSignup.start(who="ada", api_key=SECRET, orgs=["org_a"], key="signup-ada")
    assert run_to_end(wf_settings, wf_client, conn, done) == "succeeded"
    waiting = DashSignup.start(who="bob", api_key=SECRET, orgs=[])
    browser = logged_in(create_app(client=wf_client, auth=TokenAuth(TOKEN)))

    page = browser.get("/workflows")
    assert page.status_code == 200
    assert 'href="/workflows"' in page.text and ">Workflows</a>" in page.text  # the nav entry
    rows = dict(re.findall(r'<tr data-run="([^"]+)">(.*?)</tr>', page.text, re.S))
    assert set(rows) == {done.id, waiting.id}
    assert list(rows)[0] == waiting.id  # newest first
    assert "state-succeeded" in rows[done.id] and "signup-ada" in rows[done.id] and ">3/3<" in rows[done.id]
    assert "state-running" in rows[waiting.id] and ">0/3<" in rows[waiting.id]

    running = browser.get("/workflows?status=running")
    assert waiting.id in running.text and done.id not in running.text
    fragment = browser.get("/_/workflows?status=succeeded&name=dash_signup")
    assert done.id in fragment.text and waiting.id not in fragment.text and "<html" not in fragment.text
    assert "data-run=" not in browser.get("/workflows?name=other").text
    assert browser.get("/workflows?status=bogus").status_code == 400


def test_the_list_is_paginated(wf_client: Client, conn: redis.Redis) -> None:
    started = [DashSignup.start(who=f"p{i}", api_key=SECRET).id for i in range(3)]
    browser = logged_in(create_app(client=wf_client, auth=TokenAuth(TOKEN), per_page=2))
    first = browser.get("/workflows").text
    second = browser.get("/workflows?page=2").text
    assert re.findall(r'data-run="([^"]+)"', first) == started[::-1][:2]
    assert re.findall(r'data-run="([^"]+)"', second) == started[:1]
    assert "more →" in first and "more →" not in second and "← newer" in second


def test_a_run_page_shows_the_step_tree_with_jobs_outputs_and_errors(
    wf_client: Client, wf_settings: Settings, conn: redis.Redis
) -> None:
    run = DashSignup.start(who=XSS, api_key=SECRET, orgs=["org_a", "org_bad", "org_ccc"])
    assert run_to_end(wf_settings, wf_client, conn, run) == "succeeded"
    browser = logged_in(create_app(client=wf_client, auth=TokenAuth(TOKEN)))

    page = browser.get(f"/workflows/{run.id}")
    assert page.status_code == 200
    text = page.text
    assert SECRET not in text  # neither in the input, nor in register's output that echoes it
    assert "registered with ***" in text
    assert "<script>alert" not in text and "&lt;script&gt;alert(" in text  # the hostile name, escaped
    # the tree: bill under register, summary under bill
    tree = re.sub(r"\s+", " ", text)
    assert tree.index('data-step="register"') < tree.index('data-step="bill"') < tree.index('data-step="summary"')
    bill = tree[tree.index('data-step="bill"') : tree.index('data-step="summary"')]
    assert "3 instance(s), 3 reported, 1 failed" in bill and "on failure: continue" in bill
    for i in range(3):
        assert f'href="/jobs/wf-{run.id}-bill-{i}"' in bill
    assert "card declined for org_bad" in bill  # the failed instance's error
    outputs = [html.unescape(o) for o in re.findall(r'<pre class="step-output">(.*?)</pre>', text, re.S)]
    assert json.loads(outputs[0]) == {"greeting": f"hello {XSS}", "note": "registered with ***"}
    assert json.loads(outputs[1]) == [5, None, 7]  # the fan-in's list, None for the failed instance
    summary = re.search(r'data-step="summary".*?<pre class="step-output">(.*?)</pre>', text, re.S)
    assert summary and html.unescape(summary.group(1)) == f'"hello {XSS}: 12"'
    assert "data-poll" not in text  # ended: no live refresh
    assert 'data-action="cancel"' not in text  # ended: nothing to cancel

    job = browser.get(f"/jobs/wf-{run.id}-register-0")
    assert job.status_code == 200 and SECRET not in job.text
    assert browser.get("/workflows/no-such-run").status_code == 404


def test_cancel_stops_a_running_run_and_read_only_refuses_it(wf_client: Client, conn: redis.Redis) -> None:
    run = DashSignup.start(who="carol", api_key=SECRET, orgs=["org_a"])
    read_only = logged_in(create_app(client=wf_client, auth=TokenAuth(TOKEN), read_only=True))
    page = read_only.get(f"/workflows/{run.id}")
    assert 'data-poll="/_/workflows/' in page.text  # running: refreshed live
    assert 'data-action="cancel"' not in page.text
    fragment = read_only.get(f"/_/workflows/{run.id}").text  # what the refresh fetches
    assert 'data-step="register"' in fragment and "<html" not in fragment
    refused = read_only.post(f"/workflows/{run.id}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert refused.status_code == 403 and "read-only" in refused.text
    assert run.status() == "running"

    browser = logged_in(create_app(client=wf_client, auth=TokenAuth(TOKEN)))
    page = browser.get(f"/workflows/{run.id}")
    assert 'data-action="cancel"' in page.text
    forged = browser.post(f"/workflows/{run.id}/cancel", data={"csrf_token": "forged"})
    assert forged.status_code == 403 and run.status() == "running"

    reply = browser.post(f"/workflows/{run.id}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert reply.status_code == 303 and reply.headers["location"] == f"/workflows/{run.id}"
    assert run.status() in ("stopping", "cancelled")
    shown = browser.get(reply.headers["location"]).text
    assert f"cancelled workflow run {run.id}" in shown
    assert 'data-action="cancel"' not in shown

    again = browser.post(f"/workflows/{run.id}/cancel", data={"csrf_token": csrf_of(shown)})
    assert "has already ended" not in shown and "nothing to cancel" in browser.get(again.headers["location"]).text
    unknown = browser.post("/workflows/nope/cancel", data={"csrf_token": csrf_of(shown)})
    assert "no workflow run" in browser.get(unknown.headers["location"]).text


def test_a_failed_saga_shows_why_it_stopped_and_its_compensations(
    wf_client: Client, wf_settings: Settings, conn: redis.Redis
) -> None:
    run = DashSaga.start(item="lamp")
    assert run_to_end(wf_settings, wf_client, conn, run) == "failed"
    browser = logged_in(create_app(client=wf_client, auth=TokenAuth(TOKEN)))
    text = browser.get(f"/workflows/{run.id}").text
    why = re.search(r'id="run-error">(.*?)<', text, re.S)
    assert why and "step ship[0] failed" in why.group(1) and "no stock for lamp" in why.group(1)
    assert "compensated by dwf.release" in text
    table = re.search(r'<table id="compensations">(.*?)</table>', text, re.S)
    assert table, "no compensations table"
    assert "reserve:0" in table.group(1) and "state-done" in table.group(1)
    assert f'href="/jobs/wf-{run.id}-c0"' in table.group(1)
    listed = browser.get("/workflows?status=failed&name=dash_saga").text
    assert re.findall(r'data-run="([^"]+)"', listed) == [run.id]
    assert ">1/2<" in listed  # reserve done, ship not


def test_a_compensation_that_fails_shows_its_error(wf_client: Client, wf_settings: Settings, conn: redis.Redis) -> None:
    run = DashSaga.start(item=f"broken {XSS}")
    assert run_to_end(wf_settings, wf_client, conn, run) == "failed"
    browser = logged_in(create_app(client=wf_client, auth=TokenAuth(TOKEN)))
    text = browser.get(f"/workflows/{run.id}").text
    table = re.search(r'<table id="compensations">(.*?)</table>', text, re.S)
    assert table and "state-failed" in table.group(1)
    assert "could not release broken &lt;script&gt;" in table.group(1) and "<script>" not in text
