"""`forgejobs workflows`: list runs, show one as a tree of steps, start one, cancel one."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from ..cliutil import _client, _errors, _fail, output_width
from ..settings import Settings
from .run import NoSuchRun, WorkflowRun, engine_for, run, start
from .store import TERMINAL


def _console() -> Console:
    """A console for stdout; piped output gets wide lines instead of rich's 80-column default."""
    return Console(width=output_width(sys.stdout))


_COLOURS = {"done": "green", "succeeded": "green", "failed": "red", "timed_out": "red", "cancelled": "yellow"}


def _when(ms: str | None) -> str:
    if not ms or ms == "0":
        return "-"
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group()
def workflows() -> None:
    """Workflow runs: list, show RUN, start NAME, cancel RUN (docs/workflows.md)."""


@workflows.command("list")
@click.option("--status", default=None, help="Only runs in this status (running, succeeded, failed, ...).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Newest runs shown.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (for scripts).")
@click.pass_obj
def list_runs(settings: Settings, status: str | None, limit: int, as_json: bool) -> None:
    """The newest runs, newest first."""
    with _errors():
        engine = engine_for(_client(settings))
        ids = engine.store.runs()[::-1]
        rows = []
        for run_id in ids:
            data = engine.store.fields(run_id, "wf", "st", "key", "t0", "t1")
            if data is None or (status is not None and data["st"] != status):
                continue
            rows.append(
                {
                    "id": run_id,
                    "workflow": data["wf"],
                    "status": data["st"],
                    "key": data.get("key") or None,
                    "started": _when(data.get("t0")),
                    "ended": _when(data.get("t1")),
                }
            )
            if len(rows) >= limit:
                break
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} workflow run(s)")
    for column in ("run", "workflow", "status", "key", "started (UTC)", "ended (UTC)"):
        table.add_column(column)
    for row in rows:
        colour = _COLOURS.get(str(row["status"]), "cyan")
        table.add_row(
            str(row["id"]),
            str(row["workflow"]),
            f"[{colour}]{row['status']}[/]",
            str(row["key"] or "-"),
            str(row["started"]),
            str(row["ended"]),
        )
    _console().print(table)


def run_tree(handle: WorkflowRun) -> Tree:
    """A run as a rich `Tree`: each step under the last step it waits for, with its status and output."""
    data = handle.refresh()
    colour = _COLOURS.get(data["st"], "cyan")
    root = Tree(
        f"[bold]{data['wf']}[/] {handle.id}: [{colour}]{data['st']}[/]"
        + (f" ({data['err']})" if data.get("err") else "")
    )
    states = handle.steps()
    nodes: dict[str, Tree] = {}
    for name, state in states.items():
        parent = nodes[state.after[-1]] if state.after and state.after[-1] in nodes else root
        count = (
            ""
            if state.instances in (None, 1)
            else f" ×{state.instances} ({state.finished} reported, {state.failed} failed)"
        )
        also = f" [dim](also after {', '.join(state.after[:-1])})[/]" if len(state.after) > 1 else ""
        line = f"{name} [dim]{state.job}[/] [{_COLOURS.get(state.status, 'cyan')}]{state.status}[/]{count}{also}"
        if state.status == "done":
            line += f" → {_short(handle.output(name))}"
        nodes[name] = parent.add(line)
    comps = handle.compensations()
    if comps:
        branch = root.add("compensations (newest completed first)")
        for target, outcome in comps:
            branch.add(f"{target} [{_COLOURS.get(outcome, 'cyan')}]{outcome}[/]")
    return root


@workflows.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON (status, steps, outputs).")
@click.pass_obj
def show(settings: Settings, run_id: str, as_json: bool) -> None:
    """One run as a tree of its steps, with each finished step's output. Exit 1 if unknown."""
    with _errors():
        try:
            handle = run(run_id, _client(settings))
        except NoSuchRun as exc:
            _fail(str(exc))
        if as_json:
            steps = {
                n: {
                    "job": s.job,
                    "status": s.status,
                    "instances": s.instances,
                    "finished": s.finished,
                    "failed": s.failed,
                    "after": list(s.after),
                }
                for n, s in handle.steps().items()
            }
            click.echo(
                json.dumps(
                    {
                        "id": handle.id,
                        "workflow": handle.name,
                        "status": handle.status(),
                        "error": handle.error(),
                        "input": handle.input(),
                        "steps": steps,
                        "outputs": handle.outputs(),
                        "compensations": handle.compensations(),
                    }
                )
            )
            return
        _console().print(run_tree(handle))


@workflows.command("start")
@click.argument("name")
@click.option("--data", default="{}", help="The workflow's input as a JSON object.")
@click.option("--key", default=None, help="Start at most one run per key: a second start prints the first run.")
@click.pass_obj
def start_run(settings: Settings, name: str, data: str, key: str | None) -> None:
    """Start workflow NAME and print its run id."""
    with _errors():
        try:
            fields = json.loads(data)
        except json.JSONDecodeError as exc:
            _fail(f"--data is not JSON: {exc}")
        if not isinstance(fields, dict):
            _fail("--data must be a JSON object")
        client = _client(settings)
        plan = engine_for(client).plan(name)
        handle = start(plan, fields, key=key, client=client)
    click.echo(f"{handle.id}{' (already started with this key)' if handle.existing else ''}")


@workflows.command()
@click.argument("run_id")
@click.pass_obj
def cancel(settings: Settings, run_id: str) -> None:
    """Cancel a run: nothing more starts, running steps are asked to stop, completed steps are compensated."""
    with _errors():
        try:
            handle = run(run_id, _client(settings))
        except NoSuchRun as exc:
            _fail(str(exc))
        if not handle.cancel():
            _fail(f"workflow run {run_id} has already ended ({handle.status()}): nothing to cancel")
    status = handle.status()
    ending = "" if status in TERMINAL else " (running steps are asked to stop; compensations follow)"
    click.echo(f"cancelled {run_id}: {status}{ending}")


def plans_table(plans: dict[str, Any]) -> Table:
    """`forgejobs check`'s table of workflows: steps in order, each with its job and what it waits for."""
    table = Table(title="workflows")
    for column in ("workflow", "input", "steps", "timeout", "source"):
        table.add_column(column, overflow="fold")
    for name, plan in sorted(plans.items()):
        steps = ", ".join(
            f"{s.name} ({s.job}{' for each' if s.for_each else ''}{', continue' if s.on_failure == 'continue' else ''})"
            for s in plan.steps.values()
        )
        timeout = f"{plan.timeout:g}s" if plan.timeout else "-"
        table.add_row(name, plan.input_model.__name__, steps, timeout, plan.source)
    return table


def runs_summary(client: Any) -> str | None:
    """`forgejobs info`'s line about workflow runs not yet ended, or None when there are none."""
    engine = engine_for(client)
    active: list[str] = getattr(engine.store, "active_runs", list)()
    counts: dict[str, int] = {}
    for run_id in active:
        data = engine.store.fields(run_id, "st")
        if data is not None and data.get("st") not in TERMINAL:
            counts[data["st"]] = counts.get(data["st"], 0) + 1
    if not counts:
        return None
    shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"workflow runs: {shown} (forgejobs workflows list)"
