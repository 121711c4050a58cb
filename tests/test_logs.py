"""Structured logs and secret payload fields: JSON job lines from a worker process, secrets masked in every
message forgejobs stores or shows while the job itself receives them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from forgejobs import Client, Job, Settings
from forgejobs.errors import OptionsError
from forgejobs.inspection import Inspector
from forgejobs.keys import Keys
from forgejobs.runtime.worker import Worker
from forgejobs.status import Status
from tests.conftest import ROOT, WorkerProcess, _sample_env, wait_for
from tests.samplejobs.basic import Echo
from tests.samplejobs.secrets import Charge

TOKEN = "tok_4242_visa_secret"


def test_a_pydantic_secret_type_in_a_payload_is_refused_because_its_json_is_the_mask() -> None:
    with pytest.raises(OptionsError, match=r"field api_key is a pydantic SecretStr.*Annotated\[str, forgejobs\.Secret"):

        class Leaky(Job, queue="fast"):
            api_key: SecretStr

            def perform(self, ctx: Any) -> None: ...


@pytest.mark.redis
def test_json_log_format_gives_each_job_line_its_id_name_queue_attempt_outcome_and_duration(
    client: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker("--queues", "fast", env={"FORGEJOBS_LOG_FORMAT": "json"})
    handle = Echo.enqueue(text="hi")
    assert handle.result(timeout=30).text == "hi"

    def job_line() -> dict[str, Any] | None:
        lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        return next((r for r in lines if r.get("job_id") == handle.id and "outcome" in r), None)

    line = wait_for(job_line, timeout=10, what="the job's log line")
    assert isinstance(line, dict)
    assert {k: line[k] for k in ("job_name", "queue", "attempt", "outcome", "level")} == {
        "job_name": "fast.echo",
        "queue": "fast",
        "attempt": 1,
        "outcome": "succeeded",
        "level": "INFO",
    }
    assert isinstance(line["duration"], float) and line["duration"] >= 0
    # every line the process wrote is one JSON object
    for text in worker.log().splitlines():
        if text.strip():
            json.loads(text)


def test_an_unknown_log_format_is_named() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "forgejobs.cli", "--log-format", "xml", "info"],
        cwd=ROOT,
        env=_sample_env("redis://127.0.0.1:6379/15", None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in done.stderr


@pytest.mark.redis
def test_secret_fields_are_masked_in_every_message_but_reach_the_job(
    client: Client, settings: Settings, conn: redis.Redis, redis_url: str
) -> None:
    # given a job whose secret field appears in its log lines, its error and its result
    failing = Charge.enqueue(card_token=TOKEN, amount=5)
    paying = Charge.enqueue(card_token=TOKEN, amount=7, ok=True)

    # when a worker runs both
    Worker(settings, client.registry, connection=conn).run(burst=True, horizon=0)

    # then the job itself received the secret (its result is built from it) ...
    assert paying.status() is Status.SUCCEEDED
    assert paying.result(timeout=5) == {"receipt": f"paid with {TOKEN}"}
    # ... the stored dead letter keeps it in its payload (a requeue must run as enqueued) but in no message
    letter = client.backend.dead_letters.get(failing.id)
    assert letter is not None and letter.payload is not None and letter.payload["card_token"] == TOKEN
    assert letter.error.endswith("card *** declined") and TOKEN not in letter.traceback
    assert all(TOKEN not in line for line in client.backend.job_detail(failing.id).logs)  # type: ignore[union-attr]
    events = conn.xrange(Keys("forgejobs").events)
    assert events and not any(TOKEN.encode() in b"".join(fields.values()) for _, fields in events)

    # and everything shown masks it: the job detail (payload, error, log) and the dead letter
    detail = Inspector(client.backend, client.registry).job(failing.id)
    assert detail.payload == {"card_token": "***", "amount": 5, "ok": False}
    assert detail.error is not None and "card *** declined" in detail.error
    assert any("token was ***" in line for line in detail.logs)
    assert any("charging 5 with ***" in line for line in detail.logs)
    assert detail.progress == {"using": "***"}
    assert TOKEN not in detail.model_dump_json()
    shown = subprocess.run(
        [sys.executable, "-m", "forgejobs.cli", "dead", "show", failing.id],
        cwd=ROOT,
        env=_sample_env(redis_url, None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert TOKEN not in shown.stdout and '"card_token": "***"' in shown.stdout
    assert json.loads(shown.stdout)["error"].endswith("card *** declined")
    # the succeeded job's result is shown masked too, while its handle (the application) reads it whole
    assert Inspector(client.backend, client.registry).job(paying.id).result == {"receipt": "paid with ***"}
