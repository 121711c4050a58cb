"""What the Workflows pages show, read through `forgejobs.workflows` (the run index, `WorkflowRun`).

No Redis key here: the list goes through the workflow engine's store (`runs()`, `fields()`), a run through
the `WorkflowRun` handle. Outputs, the input and errors pass through `forgejobs.logs` masking first: the
values of secret fields in the workflow's input and in each step job's payload never reach a page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..logs import job_model, mask_payload, mask_text, secret_values
from ..workflows.engine import job_id
from ..workflows.plan import Plan, WorkflowError
from ..workflows.run import WorkflowRun, engine_for, run
from ..workflows.store import TERMINAL

if TYPE_CHECKING:
    from ..client import Client

STATUSES = ("running", "stopping", "compensating", "succeeded", "failed", "cancelled", "timed_out")
RUNS_SCAN = 5000  # newest runs read for the list's filters
JOBS_SHOWN = 20  # step job ids linked per step (a fan-out lists the first ones and how many more)
MASK_SCAN = 200  # step jobs per step whose payloads are read for secret values to mask


def _when(ms: str | None) -> datetime | None:
    if not ms or ms == "0":
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


@dataclass
class RunRow:
    """One line of the Workflows list."""

    id: str
    workflow: str
    status: str
    key: str | None
    started: datetime | None
    ended: datetime | None
    done: int
    total: int


@dataclass
class StepView:
    """One step of a run as its page shows it, every text already masked."""

    name: str
    job: str
    status: str
    instances: int | None
    finished: int
    failed: int
    after: tuple[str, ...]
    for_each: str | None
    on_failure: str
    compensate: str | None
    job_ids: list[str]
    more_jobs: int
    output_json: str | None
    errors: list[tuple[int, str]]
    children: list[StepView] = field(default_factory=list)


@dataclass
class RunView:
    """A run as its page shows it: status, times, masked input, the step tree and the compensations."""

    id: str
    workflow: str
    status: str
    key: str | None
    error: str | None
    started: datetime | None
    ended: datetime | None
    deadline: datetime | None
    input_json: str | None
    roots: list[StepView]
    steps: list[StepView]
    compensations: list[dict[str, str]]
    known: bool  # False: this process does not know the workflow (no step tree)

    @property
    def ended_for_good(self) -> bool:
        return self.status in TERMINAL


def list_runs(
    client: Client, *, status: str | None, name: str | None, page: int, per_page: int
) -> tuple[list[RunRow], bool, list[str]]:
    """One page of runs, newest first, filtered by status and workflow name (among the newest RUNS_SCAN
    runs); whether there is a next page; the workflow names this process knows (for the filter)."""
    from ..workflows.define import defined

    store = engine_for(client).store
    ids = store.runs()[::-1][:RUNS_SCAN]
    offset = (page - 1) * per_page
    rows: list[RunRow] = []
    names = set(client.registry.workflows) | set(defined())
    matched = 0
    more = False
    for run_id in ids:
        data = store.fields(run_id, "wf", "st", "key", "t0", "t1", "steps", "sl")
        if data is None:
            continue
        if (status is not None and data.get("st") != status) or (name is not None and data.get("wf") != name):
            continue
        matched += 1
        if matched <= offset:
            continue
        if len(rows) >= per_page:
            more = True
            break
        total = len(data.get("steps", "").split())
        left = int(data.get("sl") or 0)
        rows.append(
            RunRow(
                run_id,
                data.get("wf", "?"),
                data.get("st", "?"),
                data.get("key") or None,
                _when(data.get("t0")),
                _when(data.get("t1")),
                max(0, total - left),
                total,
            )
        )
    return rows, more, sorted(names)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False, sort_keys=True)


def _secrets(client: Client, handle: WorkflowRun, plan: Plan | None, data: dict[str, Any]) -> list[str]:
    """Secret values to mask: the input's secret fields and those of each step job's stored payload."""
    found: set[str] = set()
    if plan is not None:
        found.update(secret_values(plan.input_model, data))
    raw = handle.refresh()
    backend = client.backend
    for step in raw.get("steps", "").split():
        count = min(int(raw.get(f"n:{step}", "0") or 0), MASK_SCAN)
        for i in range(count):
            found.update(_payload_secrets(client, backend, job_id(handle.id, step, i)))
    for k in range(int(raw.get("nc", "0") or 0)):
        found.update(_payload_secrets(client, backend, job_id(handle.id, f"~{k}", 0)))
    return sorted(found, key=len, reverse=True)


def _payload_secrets(client: Client, backend: Any, jid: str) -> list[str]:
    stored = backend.job_detail(jid)
    if stored is None:
        return []
    payload = stored.payload
    if payload is None and stored.dead_letter is not None:
        payload = stored.dead_letter.payload
    return secret_values(job_model(client.registry, stored.name), payload)


def run_view(client: Client, run_id: str) -> RunView:
    """One run in full (`NoSuchRun` when there is none)."""
    handle = run(run_id, client)
    raw = handle.refresh()
    try:
        plan: Plan | None = handle.plan
    except WorkflowError:
        plan = None
    data = handle.input()
    values = _secrets(client, handle, plan, data)

    def text(value: str) -> str:
        return mask_text(value, values)

    shown_input = mask_payload(plan.input_model if plan is not None else None, data)
    steps: list[StepView] = []
    if plan is not None:
        outputs = handle.outputs()
        for state in handle.steps().values():
            step = plan.steps[state.name]
            errors = handle.errors(state.name)
            steps.append(
                StepView(
                    name=state.name,
                    job=state.job,
                    status=state.status,
                    instances=state.instances,
                    finished=state.finished,
                    failed=state.failed,
                    after=state.after,
                    for_each=step.for_each,
                    on_failure=step.on_failure,
                    compensate=step.compensate.job if step.compensate is not None else None,
                    job_ids=state.job_ids[:JOBS_SHOWN],
                    more_jobs=max(0, len(state.job_ids) - JOBS_SHOWN),
                    output_json=text(_json(outputs[state.name])) if state.name in outputs else None,
                    errors=[(i, text(e)) for i, e in sorted(errors.items())],
                )
            )
    by_name = {s.name: s for s in steps}
    roots: list[StepView] = []
    for s in steps:  # under the last step it waits for, as `forgejobs workflows show` draws it
        parent = by_name.get(s.after[-1]) if s.after else None
        (parent.children if parent is not None else roots).append(s)
    compensations = [
        {
            "target": target,
            "outcome": outcome,
            "job_id": job_id(run_id, f"~{k}", 0),
            "error": text(handle.errors(f"~{k}").get(0, "")),
        }
        for k, (target, outcome) in enumerate(handle.compensations())
    ]
    return RunView(
        id=run_id,
        workflow=raw.get("wf", "?"),
        status=raw.get("st", "?"),
        key=raw.get("key") or None,
        error=text(raw["err"]) if raw.get("err") else None,
        started=_when(raw.get("t0")),
        ended=_when(raw.get("t1")),
        deadline=_when(raw.get("dl")),
        input_json=text(_json(shown_input)) if shown_input is not None else None,
        roots=roots,
        steps=steps,
        compensations=compensations,
        known=plan is not None,
    )
