"""The dashboard in a real browser: headless Chromium (Debian's, driven by Playwright) against `forgejobs dashboard`
and `forgejobs worker` subprocesses on a real Redis. Also `/metrics` on the dashboard while two workers run jobs.

The job classes are this module's own (FORGEJOBS_JOBS=tests.test_dashboard_browser), on the catalog's eight
queue names, declared by the test's own spec file. Screenshots of the main pages go to the test's temporary
folder, or with FORGEJOBS_SCREENSHOTS=1 to docs/images/ (how the ones in the docs were made).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import BaseModel

from forgejobs import Client, Context, Job, Registry, Settings, Unrecoverable, set_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.status import Status
from forgejobs.workflows import Step, Workflow, chain, group
from tests.conftest import ROOT, WorkerProcess, free_port, wait_for

pytestmark = pytest.mark.redis

CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-test-token"
QUEUES = ("activity", "audit", "billing", "email", "files", "stripe", "usage", "webhooks")
IMAGES = ROOT / "docs" / "images"


def _note(path: str, what: str) -> None:
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"what": what, "pid": os.getpid()}) + "\n")


class SendEmail(Job, queue="email", attempts=3):
    """Send `count` copies of a message to `to`."""

    to: str
    count: int = 1
    urgent: bool = False

    def perform(self, ctx: Context) -> dict[str, Any]:
        ctx.log(f"sent {self.count} to {self.to}")
        return {"to": self.to, "sent": self.count}


class FailsOnce(Job, queue="webhooks", attempts=1):
    """Dead-lettered the first time (no attempts left); succeeds once requeued."""

    path: str

    def perform(self, ctx: Context) -> str:
        if not Path(self.path).exists():
            _note(self.path, "failed")
            raise Unrecoverable("the endpoint answered 410 Gone")
        _note(self.path, "ran")
        return "delivered"


class WaitsForCancel(Job, queue="files", attempts=1, timeout=120):
    """Wait for a cancel for up to a minute, noting what happened."""

    path: str

    def perform(self, ctx: Context) -> str:
        _note(self.path, "start")
        ctx.progress({"done": 1, "of": 3})
        if ctx.wait_cancelled(60):
            _note(self.path, "saw cancel")
            return "stopped early"
        return "waited"


class Tally(Job, queue="audit", attempts=1):
    """Note which process ran it (the metrics test counts these)."""

    path: str
    fail: bool = False

    def perform(self, ctx: Context) -> None:
        time.sleep(0.02)
        if self.fail:
            raise Unrecoverable("told to fail")
        _note(self.path, "ran")


class HoldsKey(Job, queue="billing", attempts=1, timeout=120, concurrency_key="org", concurrency_limit=1):
    """One organisation's job at a time: waits for a cancel (up to a minute), noting its start."""

    org: str
    path: str
    seconds: float = 60

    def perform(self, ctx: Context) -> None:
        _note(self.path, "start")
        ctx.wait_cancelled(self.seconds)


class NewOrg(BaseModel):
    org: str
    users: list[str]


class Org(BaseModel):
    id: str
    name: str


class CreateOrg(Job, queue="billing", attempts=1):
    """Store an organisation (the workflow test's first step)."""

    org: str

    def perform(self, ctx: Context) -> Org:
        return Org(id=f"org_{len(self.org)}", name=self.org)


class Welcome(Job, queue="email", attempts=1):
    """Welcome one user of a new organisation."""

    org_id: str
    user: str

    def perform(self, ctx: Context) -> str:
        return f"welcomed {self.user}"


class AuditOrg(Job, queue="audit", attempts=1):
    """Write the audit entry of a new organisation."""

    org_id: str

    def perform(self, ctx: Context) -> int:
        return 1


class Report(Job, queue="activity", attempts=1):
    """Sum up an onboarding."""

    org_id: str
    welcomed: list[str]

    def perform(self, ctx: Context) -> str:
        return f"{self.org_id}: {len(self.welcomed)} welcomed"


class BrowserOnboarding(Workflow, input=NewOrg, name="browser_onboarding"):
    create = Step(CreateOrg, {"org": "input.org"})
    welcome = Step(Welcome, {"org_id": "steps.create.output.id", "user": "item"}, for_each="input.users")
    audit = Step(AuditOrg, {"org_id": "steps.create.output.id"})
    report = Step(Report, {"org_id": "steps.create.output.id", "welcomed": "steps.welcome.output"})
    flow = chain(create, group(welcome, audit), report)


def notes(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    queues = "".join(f"  {q}: {{concurrency: 2}}\n" for q in QUEUES)
    (folder / "queues.yaml").write_text(f"queues:\n{queues}")
    (folder / "schedules.yaml").write_text(
        "schedules:\n  daily-digest:\n    job: email.send-email\n    payload: {to: digest@example.com}\n"
        "    cron: '30 7 * * *'\n    tz: Europe/Paris\n"
    )
    return folder


@pytest.fixture
def env(specs: Path) -> dict[str, str]:
    return {
        "FORGEJOBS_JOBS": "tests.test_dashboard_browser",
        "FORGEJOBS_SPECS": str(specs),
        "FORGEJOBS_STALL_TIMEOUT": "2",  # a heartbeat every 0.4 s: a cancel is seen that soon
        "FORGEJOBS_DASHBOARD_TOKEN": TOKEN,
    }


@pytest.fixture
def bclient(conn: redis.Redis, redis_url: str, specs: Path) -> Iterator[Client]:
    settings = Settings(redis_url=redis_url, jobs="tests.test_dashboard_browser", specs=specs)
    c = Client(RedisBackend(conn), Registry.load(settings))
    previous = set_client(c)
    yield c
    set_client(previous)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def start_dashboard(
    start_cli: Callable[..., WorkerProcess], env: dict[str, str]
) -> Callable[..., tuple[str, WorkerProcess]]:
    def start(*args: str) -> tuple[str, WorkerProcess]:
        port = free_port()
        server = start_cli("dashboard", "--port", str(port), *args, env=env)
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: _answers(f"{base}/login") or server.process.poll() is not None, timeout=30, what="the dashboard"
        )
        assert server.process.poll() is None, server.log()
        return base, server

    return start


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (CI installs Debian's chromium package; apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is in the dev extra")

    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def log_in(browser: Any, base: str) -> Any:
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.set_default_timeout(30_000)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{base}/")
    assert "/login" in page.url
    page.fill("#secret", TOKEN)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("#queues")
    return page


def shoot(page: Any, name: str, folder: Path) -> None:
    if os.environ.get("FORGEJOBS_SCREENSHOTS") == "1":
        folder = IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"dashboard-{name}.png"), full_page=True)


def test_an_operator_logs_in_requeues_a_dead_letter_pauses_cancels_and_enqueues(
    bclient: Client,
    browser: Any,
    start_worker: Callable[..., WorkerProcess],
    start_dashboard: Callable[..., tuple[str, WorkerProcess]],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    worker = start_worker(env=env)
    base, _ = start_dashboard()
    dead = FailsOnce.enqueue(path=str(tmp_path / "fails-once"))
    for i in range(6):
        SendEmail.enqueue(to=f"user{i}@example.com")
    Tally.enqueue_many([{"path": str(tmp_path / "tally"), "fail": i % 5 == 0} for i in range(20)])  # 4 fail
    for hours in (1, 3, 5, 8):
        SendEmail.with_options(delay=3600 * hours, priority=hours).enqueue(to=f"later{hours}@example.com")
    wait_for(lambda: bclient.backend.dead_letters.count() == 5, timeout=30, what=f"5 dead letters\n{worker.log()}")

    # log in: the eight queues are there
    page = log_in(browser, base)
    assert sorted(page.locator("#queues tbody tr").evaluate_all("rows => rows.map(r => r.dataset.queue)")) == list(
        QUEUES
    )
    page.locator("#workers tbody tr").first.wait_for()  # within a refresh, should a lease renewal run late
    assert page.locator("#workers tbody tr").count() == 1
    wait_for(lambda: _succeeded(bclient, "email") >= 6, timeout=30, what="the six emails to be sent")
    wait_for(lambda: len(notes(tmp_path / "tally")) == 16, timeout=30, what="the tallies to run")
    page.reload()
    shoot(page, "overview", tmp_path)

    # open the dead letter and requeue it by clicking
    page.click("nav >> text=Dead letters")
    page.wait_for_selector("#dead-letters")
    shoot(page, "dead-letters", tmp_path)
    page.click(f"#dead-letters a:has-text('{dead.id}')")
    page.wait_for_selector("#dead-letter")
    assert "the endpoint answered 410 Gone" in page.inner_text("#dead-letter")
    shoot(page, "job", tmp_path)
    Path(tmp_path / "fails-once").write_text("")  # now it will succeed (notes append to the same file)
    page.click("button[data-action=retry]")
    assert "requeued" in page.inner_text(".flash.ok")
    wait_for(lambda: dead.status() is Status.SUCCEEDED, timeout=30, what="the requeued job to succeed")
    assert bclient.backend.dead_letters.get(dead.id) is None and bclient.backend.dead_letters.count() == 4

    # pause and resume a queue from the overview
    page.click("nav >> text=Overview")
    row = page.locator("#queues tr[data-queue=email]")
    row.locator("button[data-action=pause]").click()
    assert "paused email" in page.inner_text(".flash.ok")
    assert page.locator("#queues tr[data-queue=email] .badge.paused").count() == 1
    assert bclient.paused() == {"email"}
    page.locator("#queues tr[data-queue=email] button[data-action=resume]").click()
    assert "resumed email" in page.inner_text(".flash.ok")
    assert page.locator("#queues tr[data-queue=email] .badge.paused").count() == 0
    assert bclient.paused() == set()

    # cancel a running job from its page
    running = WaitsForCancel.enqueue(path=str(tmp_path / "waits"))
    wait_for(lambda: [n["what"] for n in notes(tmp_path / "waits")] == ["start"], timeout=30, what="the job to start")
    page.goto(f"{base}/queues/email?state=delayed")
    assert page.locator("#jobs tbody tr").count() == 4
    shoot(page, "queue", tmp_path)
    page.goto(f"{base}/queues/files?state=active")
    page.wait_for_selector(f"tr[data-job='{running.id}']")
    page.click(f"a:has-text('{running.id}')")
    page.wait_for_selector("#facts")
    assert "active" in page.inner_text("#facts") and '"done": 1' in page.inner_text("#progress")
    page.click("button[data-action=cancel]")
    assert "cancel requested" in page.inner_text(".flash.ok")
    wait_for(lambda: running.status() is Status.CANCELLED, timeout=30, what="the job to end cancelled")
    assert [n["what"] for n in notes(tmp_path / "waits")] == ["start", "saw cancel"]
    page.reload()
    assert "cancelled" in page.inner_text("#facts")

    # enqueue through the schema form: a bad field shows the model's error, then a good one goes through
    page.click("nav >> text=Enqueue")
    page.click("a:has-text('email.send-email')")
    page.fill("#f-to", "form@example.com")
    page.fill("#f-count", "lots")
    page.click("button:has-text('Enqueue')")
    error = page.locator("[data-field=count] .field-error")
    assert "Input should be a valid integer" in error.inner_text()
    assert page.input_value("#f-to") == "form@example.com"  # what was typed is kept
    shoot(page, "enqueue-error", tmp_path)
    page.fill("#f-count", "3")
    page.check("#f-urgent")
    page.click("button:has-text('Enqueue')")
    assert "enqueued email.send-email as" in page.inner_text(".flash.ok")
    job_id = page.url.rsplit("/", 1)[1]
    wait_for(lambda: bclient.backend.state(job_id).status is Status.SUCCEEDED, timeout=30, what="the form's job")
    page.reload()
    assert '"sent": 3' in page.inner_text("#result")

    page.click("nav >> text=Schedules")
    assert "daily-digest" in page.inner_text("#schedules") and "07:30:00 CE" in page.inner_text("#schedules")
    shoot(page, "schedules", tmp_path)


def test_a_workflow_run_shows_its_step_tree(
    bclient: Client,
    browser: Any,
    start_worker: Callable[..., WorkerProcess],
    start_dashboard: Callable[..., tuple[str, WorkerProcess]],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    worker = start_worker(env=env)
    base, _ = start_dashboard()
    run = BrowserOnboarding.start(org="acme", users=["ada@acme.test", "bob@acme.test", "cy@acme.test"], key="acme")
    wait_for(lambda: run.done(), timeout=60, what=f"the onboarding run to end\n{worker.log()}")
    assert run.status() == "succeeded"
    page = log_in(browser, base)
    page.click("nav >> text=Workflows")
    page.click(f"#runs tr[data-run='{run.id}'] a")
    page.wait_for_selector("#steps")
    assert page.locator("#steps li.step").evaluate_all("els => els.map(e => e.dataset.step)") == [
        "create",
        "welcome",
        "audit",
        "report",
    ]
    welcome = page.inner_text("#steps li[data-step=welcome]")
    assert "3 instance(s), 3 reported, 0 failed" in welcome and "welcomed bob@acme.test" in welcome
    assert page.locator("#steps li[data-step=report] .step-output").inner_text() == '"org_4: 3 welcomed"'
    shoot(page, "workflow", tmp_path)


def _succeeded(client: Client, queue: str) -> int:
    return client.backend.counts([queue])[0].finished


def test_read_only_mode_has_no_action_anywhere(
    bclient: Client,
    browser: Any,
    start_dashboard: Callable[..., tuple[str, WorkerProcess]],
    tmp_path: Path,
) -> None:
    waiting = SendEmail.with_options(delay=3600).enqueue(to="later@example.com")
    running = BrowserOnboarding.start(org="ro", users=["a@ro.test"])  # no worker: it stays running
    base, _ = start_dashboard("--read-only")
    page = log_in(browser, base)
    assert page.locator("#read-only").count() == 1
    paths = ["/", "/queues/email?state=delayed", f"/jobs/{waiting.id}", "/dead", "/schedules", "/workflows"]
    for path in [*paths, f"/workflows/{running.id}"]:
        page.goto(f"{base}{path}")
        assert page.locator("button[data-action]").count() == 0, path
        assert page.locator("form[method=post]").count() == 1, path  # the logout button only
    assert page.locator("nav >> text=Enqueue").count() == 0
    # a POST made by hand (with a valid CSRF token from the page) is refused all the same
    status = page.evaluate(
        """async ([url, token]) => {
            const body = new URLSearchParams({csrf_token: token});
            const reply = await fetch(url, {method: 'POST', body, credentials: 'same-origin'});
            return reply.status;
        }""",
        [f"{base}/jobs/{waiting.id}/promote", page.get_attribute("input[name=csrf_token]", "value")],
    )
    assert status == 403
    assert waiting.status() is Status.SCHEDULED


def test_metrics_on_the_dashboard_add_up_while_two_workers_run_jobs(
    bclient: Client,
    start_worker: Callable[..., WorkerProcess],
    start_dashboard: Callable[..., tuple[str, WorkerProcess]],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    base, _ = start_dashboard()
    steady = {**env, "FORGEJOBS_STALL_TIMEOUT": "10"}  # leases that outlast a loaded machine's pauses
    workers = [start_worker("--queues", "audit", env=steady) for _ in range(2)]
    ok = Tally.enqueue_many([{"path": str(tmp_path / "tally")} for _ in range(40)])
    bad = Tally.enqueue_many([{"path": str(tmp_path / "tally"), "fail": True} for _ in range(3)])
    wait_for(
        lambda: all(h.status() in (Status.SUCCEEDED, Status.FAILED) for h in [*ok, *bad]),
        timeout=60,
        what="every job to finish",
    )

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        request = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = reply.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    # workers_alive is a gauge of live leases: on a loaded machine a lease may lapse for a moment and be taken
    # again (the worker goes on under a new identity), so it is polled; the counters below never go back
    wait_for(
        lambda: scrape()[("forgejobs_workers_alive", ())] == 2,
        timeout=30,
        what="both workers to hold a live lease",
        explain=lambda: "\n".join(f"worker {w.pid} (exit {w.process.poll()}):\n{w.log()}" for w in workers),
    )
    samples = scrape()
    labels = (("job_name", "audit.tally"), ("queue", "audit"))
    ran = notes(tmp_path / "tally")
    assert len(ran) == 40
    assert samples[("forgejobs_jobs_enqueued_total", labels)] == 43
    assert samples[("forgejobs_jobs_started_total", labels)] == 43
    assert samples[("forgejobs_jobs_succeeded_total", labels)] == len(ran)
    assert samples[("forgejobs_jobs_dead_lettered_total", (*labels, ("reason", "unrecoverable")))] == 3
    assert samples[("forgejobs_job_run_seconds_count", labels)] == 43


def test_delete_takes_a_parked_job_but_never_a_running_one_and_promote_starts_a_delayed_one_now(
    bclient: Client,
    start_worker: Callable[..., WorkerProcess],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    from forgejobs.dashboard.actions import ActionError, cancel_job, delete_job, promote_job
    from forgejobs.errors import NoSuchJob
    from forgejobs.inspection import Inspector, State

    inspector = Inspector(bclient.backend, bclient.registry)
    start_worker("--queues", "billing", env=env)
    first = HoldsKey.enqueue(org="acme", path=str(tmp_path / "first"))
    wait_for(lambda: notes(tmp_path / "first"), timeout=30, what="the first job to start")
    second = HoldsKey.enqueue(org="acme", path=str(tmp_path / "second"))
    wait_for(lambda: inspector.job(second.id).state is State.PARKED, timeout=30, what="the second to be parked")

    with pytest.raises(ActionError, match="is running: cancel it instead"):
        delete_job(bclient, first.id)
    assert "deleted" in delete_job(bclient, second.id)
    with pytest.raises(NoSuchJob):
        inspector.job(second.id)
    assert "cancel requested" in cancel_job(bclient, first.id)
    wait_for(lambda: first.status() is Status.CANCELLED, timeout=30, what="the first job to end cancelled")

    later = HoldsKey.with_options(delay=3600).enqueue(org="other", path=str(tmp_path / "later"), seconds=0)
    assert "promoted" in promote_job(bclient, later.id)
    wait_for(lambda: later.status() is Status.SUCCEEDED, timeout=30, what="the promoted job to run")
    with pytest.raises(ActionError, match="not delayed"):
        promote_job(bclient, later.id)
    assert notes(tmp_path / "second") == []  # the deleted job never ran
