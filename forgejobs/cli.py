"""The `forgejobs` command line: check, enqueue, info, jobs, job, schema, worker, metrics, dashboard, scheduler,
dead, outbox, workflows, demo.

Every error is printed as one sentence on stderr, starting with `error:` and naming the option, setting,
field or name that is wrong (never a Pydantic error dump), with exit status 1.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .client import Client
from .cliutil import _client, _errors, _fail, _registry, _settings, explain, output_width
from .errors import ForgeJobsError
from .logs import configure_logging, job_model, mask_dead_letter
from .options import EnqueueOptions
from .registry import Registry
from .settings import Settings

console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text or one JSON object each (default: FORGEJOBS_LOG_FORMAT, else text).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, log_format: str | None) -> None:
    """forgejobs: declarative background jobs on Redis."""
    global console, err
    console = Console(width=output_width(sys.stdout))
    err = Console(stderr=True, width=output_width(sys.stderr))
    level = logging.WARNING - 10 * min(verbose, 2)
    settings = _settings()
    if log_format is not None:
        settings = settings.model_copy(update={"log_format": log_format})
    configure_logging(settings.log_format, level)
    ctx.obj = settings


@cli.command()
@click.pass_obj
def check(settings: Settings) -> None:
    """Load the job package and the specs; print the effective table; exit 1 on any error."""
    with _errors():
        registry = _registry(settings)
    table = Table(title=f"{len(registry)} jobs ({settings.jobs}, specs from {settings.specs})")
    for column in ("job", "class", "queue", "attempts", "backoff", "priority", "timeout", "max payload", "limits"):
        table.add_column(column)
    for entry in registry:
        o = entry.options
        table.add_row(
            entry.job_type.job_name(),
            f"{entry.job_type.__module__}.{entry.job_type.__qualname__}",
            o.queue,
            str(o.attempts),
            o.backoff.describe(),
            str(o.priority),
            o.describe_timeout(),
            f"{o.max_payload_bytes} B",
            _limits(o),
        )
    console.print(table)
    queues = Table(title="queues")
    for column in ("queue", "concurrency", "jobs", "rate limit", "keeps completed", "keeps failed"):
        queues.add_column(column)
    for name, spec in sorted(registry.queues.items()):
        count = sum(1 for e in registry if e.options.queue == name)
        limit = spec.rate_limit.describe() if spec.rate_limit else "-"
        keep = spec.retention
        queues.add_row(name, str(spec.concurrency), str(count), limit, _keep(keep.completed), _keep(keep.failed))
    console.print(queues)
    if registry.schedules:
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        table = Table(title="schedules")
        for column in ("schedule", "job", "when", "overlap", "catch up", "next run (UTC)", "source"):
            table.add_column(column, overflow="fold")
        for name, scheduled in sorted(registry.schedules.items()):
            when = scheduled.schedule
            table.add_row(
                name,
                scheduled.job_type.job_name(),
                when.describe(),
                when.overlap,
                when.catch_up,
                when.next_after(now).strftime("%Y-%m-%d %H:%M:%S"),
                scheduled.source,
            )
        console.print(table)
    if registry.workflows:
        console.print(__import__("forgejobs.workflows.cli", fromlist=["plans_table"]).plans_table(registry.workflows))
    console.print("[green]ok[/]")


ENQUEUE_OPTION_NAMES = {"delay": "--delay", "priority": "--priority", "job_id": "--job-id"}


@cli.command()
@click.argument("name")
@click.option("--data", default="{}", help="The payload as a JSON object.")
@click.option(
    "--delay", default=None, help="Start no earlier than this from now: seconds (30) or text (30s, 5m, 2h, 1d)."
)
@click.option("--priority", type=click.IntRange(1, 10), default=None, help="1 (highest) to 10.")
@click.option("--job-id", default=None, help="Use this id (1-128 letters, digits, _ or -) instead of a random one.")
@click.pass_obj
def enqueue(
    settings: Settings, name: str, data: str, delay: str | None, priority: int | None, job_id: str | None
) -> None:
    """Enqueue job NAME with a JSON payload."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        _fail(f"--data is not JSON: {exc}")
    if not isinstance(payload, dict):
        _fail(f"--data must be a JSON object ({{...}}), not a JSON {type(payload).__name__}")
    options = _enqueue_options(delay, priority, job_id)
    with _errors():
        client = _client(settings)
        entry = _entry(client.registry, name)
        try:
            handle = client.enqueue(entry.job_type, [payload], options)[0]
        except ValidationError as exc:
            _fail(f"--data does not fit {name}: {explain(exc, subject='field')}".replace(": field: ", ": field "))
        console.print(f"enqueued {name} as {handle.id} ({handle.status().value})")


def _enqueue_options(delay: str | None, priority: int | None, job_id: str | None) -> EnqueueOptions:
    value: Any = delay
    if delay is not None:
        with suppress(ValueError):
            value = float(delay)  # a bare number is seconds, as in Python
        if isinstance(value, float) and value != value:
            _fail(f"--delay must be seconds (30) or a duration (30s, 5m, 2h, 1d), not {delay}")
        if isinstance(value, float) and value < 0:
            _fail(f"--delay must not be negative, not {delay}")
    if job_id is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", job_id):
        _fail(f"--job-id must be 1 to 128 letters, digits, '_' or '-', not {job_id!r}")
    try:
        return EnqueueOptions(delay=value, priority=priority, job_id=job_id)
    except ValidationError as exc:
        _fail(explain(exc, ENQUEUE_OPTION_NAMES))


def _entry(registry: Registry, name: str) -> Any:
    """The registry entry of job type `name`; an unknown name fails, naming close ones."""
    from .inspection import suggest

    if name not in registry:
        names = [e.job_type.job_name() for e in registry]
        _fail(f"no job type named {name!r}{suggest(name, names)}; `forgejobs check` lists them")
    return registry.resolve(name)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per queue (for scripts).")
@click.pass_obj
def info(settings: Settings, as_json: bool) -> None:
    """Per queue: waiting, scheduled, running, finished, dead."""
    with _errors():
        client = _client(settings)
        rows = client.backend.counts(sorted(client.registry.queues))
        paused = client.paused()
    if as_json:
        out = [
            {
                "queue": row.queue,
                "waiting": row.waiting,
                "scheduled": row.scheduled,
                "running": row.running,
                "finished": row.finished,
                "dead": row.failed,
                "state": "paused" if row.queue in paused else "active",
            }
            for row in rows
        ]
        click.echo(json.dumps(out, indent=2))
        return
    table = Table(title=f"queues on {settings.redis_url_or_default()}")
    for column in ("queue", "waiting", "scheduled", "running", "finished", "dead", "state"):
        table.add_column(column, justify="left" if column in ("queue", "state") else "right")
    for row in rows:
        state = "paused" if row.queue in paused else "active"
        counts = (row.waiting, row.scheduled, row.running, row.finished, row.failed)
        table.add_row(row.queue, *(str(v) for v in counts), state)
    console.print(table)
    with _errors():
        runs = __import__("forgejobs.workflows.cli", fromlist=["runs_summary"]).runs_summary(client)
    if runs:
        console.print(runs)


@cli.command()
@click.option("--queues", default=None, help="Comma-separated queues to serve (default: all).")
@click.option("--concurrency", type=int, default=None, help="Jobs at once per queue (default: the spec's).")
@click.option("--burst", is_flag=True, help="Exit once nothing is waiting, running, or due within --horizon.")
@click.option(
    "--horizon",
    type=float,
    default=10.0,
    show_default=True,
    help="With --burst: seconds ahead to wait for delayed jobs and retries.",
)
@click.option(
    "--processes",
    is_flag=True,
    help="Run every slot as a child process (as if each queue said mode: processes): for CPU-bound "
    "handlers, and timeouts that must interrupt blocking C calls.",
)
@click.option("--threads", is_flag=True, hidden=True, help="The default now; accepted for old scripts.")
@click.pass_obj
def worker(
    settings: Settings,
    queues: str | None,
    concurrency: int | None,
    burst: bool,
    horizon: float,
    processes: bool,
    threads: bool,
) -> None:
    """Run jobs. SIGTERM once: finish running jobs and exit; twice: abort them (they run again).

    Every slot is a thread of this one process, unless its queue's spec says `mode: processes` or
    --processes is given: those slots run as child processes under a supervisor."""
    from .pool import ProcessWorker
    from .worker import Worker

    if concurrency is not None and concurrency < 1:
        _fail("--concurrency must be at least 1")
    if processes and threads:
        _fail("give --processes or --threads, not both")
    with _errors():
        registry = _registry(settings)
        names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
        logging.getLogger("forgejobs").setLevel(min(logging.getLogger().level, logging.INFO))
        supervisor = ProcessWorker(settings, registry, queues=names, concurrency=concurrency, processes=processes)
        if supervisor.process_queues and not threads:
            stats = supervisor.run(burst=burst, horizon=horizon)
        else:
            stats = Worker(settings, registry, queues=names, concurrency=concurrency).run(burst=burst, horizon=horizon)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(stats.counts.items()))
    console.print(f"worker stopped: {counts or 'no jobs run'}")


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=9187, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.pass_obj
def metrics(settings: Settings, port: int, host: str) -> None:
    """Serve Prometheus metrics at http://HOST:PORT/metrics, read from Redis at each scrape (cluster-wide)."""
    import signal
    import threading

    try:
        from prometheus_client import start_http_server
    except ModuleNotFoundError:
        _fail("forgejobs metrics needs prometheus-client: pip install prometheus-client")
    from .metrics import collector_registry

    with _errors():
        try:
            queues: list[str] | None = sorted(_registry(settings).queues)
        except ForgeJobsError as exc:  # no job package here: serve the queues found in Redis
            err.print(f"note: {exc}; serving the queues found in Redis", highlight=False, markup=False)
            queues = None
        try:
            started = start_http_server(port, host, registry=collector_registry(settings, queues))
        except OSError as exc:
            _fail(f"--port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    console.print(f"serving metrics on http://{host}:{port}/metrics", highlight=False)
    while not stop.wait(1.0):
        pass
    if isinstance(started, tuple):
        started[0].shutdown()


@cli.command()
@click.option("--interval", type=float, default=0.2, show_default=True, help="Seconds between passes.")
@click.pass_obj
def scheduler(settings: Settings, interval: float) -> None:
    """Fire cron and interval repeats (any number may run; each tick is enqueued once)."""
    import signal
    import threading

    from .backends.rqscheduler import RQSchedulerStore
    from .scheduling import Repeater

    if not 0 < interval <= 60:
        _fail("--interval must be within (0, 60] seconds")
    with _errors():
        client = _client(settings)
        store = RQSchedulerStore(client.backend.connection, client.backend.keys)  # type: ignore[attr-defined]
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        logging.getLogger("forgejobs").setLevel(min(logging.getLogger().level, logging.INFO))
        names = ", ".join(sorted(client.registry.schedules)) or "none"
        console.print(f"scheduler: {len(client.registry.schedules)} schedule(s): {names}")
        store.run(Repeater(client, store), stop, interval)
    console.print("scheduler stopped")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as a JSON array (for scripts).")
@click.pass_context
def schedules(ctx: click.Context, as_json: bool) -> None:
    """List every schedule: source, next three runs (UTC and its zone), last run and outcome."""
    if ctx.invoked_subcommand is not None:
        return
    from datetime import UTC, datetime

    from .backends.rqscheduler import RQSchedulerStore

    settings: Settings = ctx.obj
    with _errors():
        client = _client(settings)
        store = RQSchedulerStore(client.backend.connection, client.backend.keys)  # type: ignore[attr-defined]
        stored = store.entries()
        now = datetime.now(UTC)
        if as_json:
            click.echo(json.dumps(_schedules_json(client, store, stored, now), indent=2))
            return
        table = Table(title=f"{len(client.registry.schedules)} schedules")
        for column in ("schedule", "job", "when", "source", "next runs (UTC)", "next runs (zone)", "last run"):
            table.add_column(column, overflow="fold")
        for name, scheduled in sorted(client.registry.schedules.items()):
            when = scheduled.schedule
            upcoming = when.upcoming(now)
            entry = stored.get(name)
            if entry is not None and entry.next_at > now:
                upcoming = [entry.next_at, *when.upcoming(entry.next_at, 2)]
            utc = "\n".join(t.strftime("%Y-%m-%d %H:%M:%S") for t in upcoming)
            local = "\n".join(t.astimezone(when.zone).strftime("%Y-%m-%d %H:%M:%S %Z") for t in upcoming)
            table.add_row(
                name,
                scheduled.job_type.job_name(),
                when.describe(),
                scheduled.source,
                utc,
                local,
                _last_run_text(client, store.last_run(name)),
            )
        console.print(table)
        if not stored:
            console.print("no scheduler has registered these yet: run `forgejobs scheduler`")


def _schedules_json(client: Client, store: Any, stored: Mapping[str, Any], now: Any) -> list[dict[str, Any]]:
    """The schedule list as JSON values: what the table shows, with full ISO 8601 times."""
    out = []
    for name, scheduled in sorted(client.registry.schedules.items()):
        when = scheduled.schedule
        entry = stored.get(name)
        upcoming = when.upcoming(now)
        if entry is not None and entry.next_at > now:
            upcoming = [entry.next_at, *when.upcoming(entry.next_at, 2)]
        last = store.last_run(name)
        last_json = None
        if last is not None:
            status = client.backend.state(last.job_id).status.value if last.job_id is not None else None
            last_json = {**last.model_dump(mode="json"), "status": status}
        out.append(
            {
                "name": name,
                "job": scheduled.job_type.job_name(),
                "when": when.describe(),
                "cron": when.cron,
                "every": when.every.total_seconds() if when.every is not None else None,
                "tz": when.tz,
                "overlap": when.overlap,
                "catch_up": when.catch_up,
                "enabled": when.enabled,
                "source": scheduled.source,
                "registered": entry is not None,
                "next_runs": [t.isoformat() for t in upcoming],
                "last_run": last_json,
            }
        )
    return out


def _limits(options: Any) -> str:
    """Rate limit, dedupe/debounce window and stall policy, in a few words."""
    parts = []
    if options.rate_limit is not None:
        key = options.rate_limit_key
        by = f" per {key if isinstance(key, str) else 'key'}" if key is not None else ""
        parts.append(f"{options.rate_limit.describe()}{by}")
    if options.unique_for is not None:
        parts.append(f"unique {options.unique_for.total_seconds():g}s")
    if options.debounce is not None:
        parts.append(f"debounce {options.debounce.total_seconds():g}s")
    parts.append(f"max_stalled {options.max_stalled}")
    return ", ".join(parts)


def _keep(keep: Any) -> str:
    parts = []
    if keep.count is not None:
        parts.append(f"{keep.count} newest")
    if keep.age is not None:
        parts.append(f"{keep.age.total_seconds():g}s")
    return ", ".join(parts) or "job TTLs"


def _last_run_text(client: Client, last: Any) -> str:
    if last is None:
        return "never"
    text = last.tick.strftime("%Y-%m-%d %H:%M:%S UTC")
    if last.job_id is None:
        return f"{text}: {last.note}"
    status = client.backend.state(last.job_id).status.value
    return f"{text}: {last.note or status} ({last.job_id})"


@schedules.command("run")
@click.argument("name")
@click.pass_obj
def schedules_run(settings: Settings, name: str) -> None:
    """Fire schedule NAME once, now."""
    from .backends.rqscheduler import RQSchedulerStore
    from .scheduling import Repeater

    with _errors():
        client = _client(settings)
        store = RQSchedulerStore(client.backend.connection, client.backend.keys)  # type: ignore[attr-defined]
        try:
            handle = Repeater(client, store).run_now(name)
        except KeyError as exc:
            _fail(str(exc.args[0]))
    console.print(f"enqueued {name} as {handle.id}")


@cli.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing events as they happen (Ctrl+C to stop).")
@click.option("--job", "job_name", default=None, help="Only events of this job name.")
@click.option("--after", default="0-0", show_default=True, help="Start after this stream id (with --follow: now).")
@click.option(
    "--count", type=click.IntRange(min=1), default=50, show_default=True, help="Without --follow: how many events."
)
@click.pass_obj
def events(settings: Settings, follow: bool, job_name: str | None, after: str, count: int) -> None:
    """Job events (enqueued, started, progress, completed, failed, retrying, dead_lettered, ...)."""
    import signal
    import threading

    from .backends.redis import RedisBackend

    if not re.fullmatch(r"\d+(-\d+)?", after):
        _fail(f"--after must be a stream id such as 1733011200000-0 (as the first column shows), not {after!r}")

    def show(event: Any) -> None:
        data = " ".join(f"{k}={v}" for k, v in event.data.items())
        click.echo(
            f"{event.id} {event.at:%H:%M:%S.%f} {event.kind.value:<13} {event.name} {event.job_id} "
            f"#{event.attempt} {data}".rstrip()
        )

    with _errors():
        stream = RedisBackend.from_settings(settings).events
        if not follow:
            shown = [e for e in stream.read(after=after, count=100_000) if job_name in (None, e.name)]
            for event in shown[-count:]:
                show(event)
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        for event in stream.follow(after=None if after == "0-0" else after, job_name=job_name, stop=stop):
            show(event)


class _JobGroup(click.Group):
    """`forgejobs job ID` shows a job; `forgejobs job COMMAND ID` acts on one (room for `cancel` and the like).

    An argument that names no subcommand is taken as the ID of `show`, so `job ID`, `job ID --json` and
    `job --json ID` all show it. A job whose id is a subcommand's name is shown with `job show ID`."""

    default_command = "show"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not any(a in self.commands or a in ctx.help_option_names for a in args[:1]):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[--json] ID | COMMAND [ARGS]...")


@cli.group("job", cls=_JobGroup)
def job_group() -> None:
    """One job: status, queue, payload, options, attempts with errors, result, progress, log and times."""


@job_group.command("show")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@click.pass_obj
def job_show(settings: Settings, job_id: str, as_json: bool) -> None:
    """Everything kept about job ID (the same as `forgejobs job ID`). Exit 1 if no such job."""
    from .inspection import Inspector

    with _errors():
        client = _client(settings)
        detail = Inspector(client.backend, client.registry).job(job_id)
    if as_json:
        click.echo(detail.model_dump_json(indent=2))
        return
    _print_detail(detail)


@job_group.command("cancel")
@click.argument("job_id", metavar="ID")
@click.pass_obj
def job_cancel(settings: Settings, job_id: str) -> None:
    """Cancel job ID. Waiting or delayed: taken off its queue at once. Running: its handler sees
    ctx.cancelled within a heartbeat (stall_timeout / 5) and the job ends as cancelled. Exit 1 if the
    job is unknown or has already finished."""
    from .runtime.cancel import cancel

    with _errors():
        client = _client(settings)
        result = cancel(client.backend, client.registry, job_id)
    what = f"{job_id} ({result.name or '?'} on {result.queue})"
    if result.outcome == "cancelled":
        console.print(f"cancelled {what}: it will not run", highlight=False)
    elif result.outcome == "requested":
        console.print(
            f"cancel requested for running job {what}: its worker tells the handler (ctx.cancelled) "
            "within a heartbeat, and the job ends as cancelled",
            highlight=False,
        )
    else:
        console.print(f"a cancel of running job {what} was already requested", highlight=False)


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC" if moment is not None else "-"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))


def _print_detail(d: Any) -> None:
    from .inspection import State

    def row(label: str, value: str) -> None:
        console.print(f"[bold]{label + ':':<13}[/]{escape(value)}", highlight=False)

    console.print(f"{escape(d.id)}: {d.status.value}", highlight=False)
    row("job", f"{d.name or '? (unreadable record)'} on queue {d.queue}")
    state = d.state.value
    if d.state is State.WAITING and d.position is not None:
        state += f" ({d.position} ahead of it at priority {d.priority})"
    elif d.state is State.PARKED:
        state += f" behind concurrency key {d.concurrency_key!r} ({d.position} ahead of it)"
    elif d.state is State.ACTIVE:
        state += f" on {d.worker}"
    elif d.expires_at is not None:
        state += f", kept until {_when(d.expires_at)}"
    row("state", state)
    attempts = d.declared.get("attempts") if d.declared else None
    row("attempt", f"{d.attempt if d.attempt is not None else '?'}" + (f" of {attempts}" if attempts else ""))
    row("priority", str(d.priority if d.priority is not None else "?"))
    for label, moment in (
        ("enqueued", d.enqueued_at),
        ("due", d.due_at),
        ("started", d.started_at),
        ("finished", d.finished_at),
    ):
        if moment is not None:
            row(label, _when(moment))
    row("payload", _compact(d.payload) if d.payload is not None else "-")
    row("options", _compact(d.options))
    if d.declared:
        seconds = ("timeout", "result_ttl", "failure_ttl", "unique_for", "debounce")
        shown = {k: f"{v:g}s" if k in seconds else v for k, v in d.declared.items() if k not in ("queue", "priority")}
        row("declared", ", ".join(f"{k} {v}" for k, v in shown.items()))
    if d.progress is not None:
        row("progress", _compact(d.progress))
    if d.result is not None:
        row("result", _compact(d.result))
    if d.error:
        row("error", d.error)
    if d.attempts:
        console.print("[bold]attempts:[/]")
        for a in d.attempts:
            then = f" (next in {a.delay:g}s)" if a.delay else ""
            console.print(f"  #{a.attempt} {_when(a.at)}: {escape(a.error)}{escape(then)}", highlight=False)
    if d.dead_letter is not None:
        letter = d.dead_letter
        row("dead letter", f"{letter.reason.value}, died {_when(letter.died_at)}")
    if d.traceback:
        console.print("[bold]traceback:[/]")
        click.echo(d.traceback.rstrip())
    if d.raw is not None:
        row("raw", d.raw[:500])
    if d.logs:
        console.print(f"[bold]log ({len(d.logs)} lines):[/]")
        for line in d.logs:
            click.echo(f"  {line}")


@cli.command("jobs")
@click.option("--queue", "queue_name", default=None, help="Only this queue (default: every declared queue).")
@click.option(
    "--state",
    default=None,
    help="Only this state: active, waiting, parked, delayed, stalled, succeeded, failed, dead, cancelled "
    "(default: all).",
)
@click.option("--name", "job_name", default=None, help="Only jobs of this job type, e.g. email.welcome-email.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (for scripts).")
@click.pass_obj
def jobs_list(
    settings: Settings,
    queue_name: str | None,
    state: str | None,
    job_name: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs by state: running, waiting (in the order they will run), delayed (with due times), finished."""
    from .inspection import Inspector, parse_state

    try:
        wanted = parse_state(state) if state is not None else None
    except ValueError as exc:
        _fail(f"--state: {exc}")
    with _errors():
        client = _client(settings)
        inspector = Inspector(client.backend, client.registry)
        if job_name is not None and job_name not in client.registry:
            from .inspection import suggest

            names = [e.job_type.job_name() for e in client.registry]
            err.print(
                f"note: no job type named {job_name!r} is declared here{suggest(job_name, names)}; "
                "listing stored jobs of that name anyway",
                highlight=False,
                markup=False,
            )
        found = inspector.jobs(queue_name, wanted, name=job_name, limit=limit)
    if as_json:
        click.echo(json.dumps([j.model_dump(mode="json") for j in found], indent=2))
        return
    more = f" (the first {limit}: raise --limit for more)" if len(found) >= limit else ""
    table = Table(title=f"{len(found)} jobs{more}")
    for column in ("id", "job", "queue", "state", "priority", "attempt", "when", "detail"):
        table.add_column(column, overflow="fold")
    for j in found:
        table.add_row(
            j.id,
            j.name or "?",
            j.queue,
            j.state.value,
            str(j.priority) if j.priority is not None else "-",
            str(j.attempt) if j.attempt is not None else "-",
            _summary_when(j),
            escape(_summary_detail(j)),
        )
    console.print(table)


def _summary_when(j: Any) -> str:
    """The time that matters for the job's state."""
    from .inspection import State

    moment = {
        State.ACTIVE: j.started_at,
        State.DELAYED: j.due_at,
        State.SUCCEEDED: j.finished_at,
        State.FAILED: j.finished_at,
        State.DEAD: j.finished_at,
        State.CANCELLED: j.finished_at,
    }.get(j.state, j.enqueued_at)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


def _summary_detail(j: Any) -> str:
    from .inspection import State

    if j.state is State.ACTIVE:
        progress = f"progress {_compact(j.progress)}" if j.progress is not None else ""
        return ", ".join(p for p in (progress, f"on {j.worker}") if p)
    if j.state is State.PARKED:
        return f"concurrency key {j.concurrency_key}"
    if j.error:
        return str(j.error)[:80]
    return ""


@cli.command()
@click.argument("job", required=False)
@click.pass_obj
def schema(settings: Settings, job: str | None) -> None:
    """JSON Schema of each job's payload (and result, where perform declares its return type), or of JOB's."""
    with _errors():
        registry = _registry(settings)
    if job is not None:
        click.echo(json.dumps(job_schema(_entry(registry, job)), indent=2))
        return
    click.echo(json.dumps({e.job_type.job_name(): job_schema(e) for e in registry}, indent=2))


def job_schema(entry: Any) -> dict[str, Any]:
    """One job type's schemas: `payload` (what a producer sends: validation mode) and `result` (what `perform`
    returns, as stored: serialization mode; None when its return type is not declared)."""
    job_type = entry.job_type
    adapter = job_type.result_adapter()
    return {
        "job": job_type.job_name(),
        "queue": entry.options.queue,
        "description": (job_type.__doc__ or "").strip() or None,
        "payload": job_type.model_json_schema(mode="validation"),
        "result": adapter.json_schema(mode="serialization") if adapter is not None else None,
    }


@cli.group()
def queue() -> None:
    """Pause, resume, drain or obliterate a queue."""


def _set_paused(settings: Settings, name: str, paused: bool) -> None:
    with _errors():
        client = _client(settings)
        (client.pause if paused else client.resume)(name)
    console.print(f"{'paused' if paused else 'resumed'} {name}")


@queue.command("pause")
@click.argument("name")
@click.pass_obj
def queue_pause(settings: Settings, name: str) -> None:
    """Workers stop taking NAME's jobs (in every process, within about 1 s); enqueueing goes on."""
    _set_paused(settings, name, True)


@queue.command("resume")
@click.argument("name")
@click.pass_obj
def queue_resume(settings: Settings, name: str) -> None:
    """Workers take NAME's jobs again."""
    _set_paused(settings, name, False)


@queue.command("drain")
@click.argument("name")
@click.pass_obj
def queue_drain(settings: Settings, name: str) -> None:
    """Delete NAME's waiting and scheduled jobs; running ones finish."""
    with _errors():
        count = _client(settings).drain(name)
    console.print(f"drained {name}: {count} job(s) deleted")


@queue.command("obliterate")
@click.argument("name")
@click.option("--force", is_flag=True, help="Even while jobs of NAME are running.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_obj
def queue_obliterate(settings: Settings, name: str, force: bool, yes: bool) -> None:
    """Delete every job, result and dead letter of NAME."""
    if not yes and not click.confirm(f"delete everything queue {name} holds?"):
        return
    with _errors():
        count = _client(settings).obliterate(name, force=force)
    console.print(f"obliterated {name}: {count} job(s) deleted")


@cli.group()
def dead() -> None:
    """Dead letters: list, show, requeue, purge."""


@dead.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the records, as `dead show` does one.")
@click.pass_obj
def dead_list(settings: Settings, limit: int, as_json: bool) -> None:
    """The newest dead letters."""
    with _errors():
        client = _client(settings)
        records = [mask_dead_letter(r, job_model(client.registry, r.name)) for r in client.dead_letters(limit)]
        total = client.backend.dead_letters.count()
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = Table(title=f"{total} dead letters")
    for column in ("id", "job", "queue", "reason", "attempts", "died", "error"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(
            r.id,
            r.name or "?",
            r.queue or "?",
            r.reason.value,
            str(len(r.attempts)),
            r.died_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.error[:80],
        )
    console.print(table)


@dead.command("show")
@click.argument("job_id")
@click.pass_obj
def dead_show(settings: Settings, job_id: str) -> None:
    """Everything kept about one dead letter, as JSON."""
    with _errors():
        client = _client(settings)
        record = client.dead_letter(job_id)
    click.echo(mask_dead_letter(record, job_model(client.registry, record.name)).model_dump_json(indent=2))


@dead.command("requeue")
@click.argument("job_id", required=False)
@click.option("--all", "all_", is_flag=True, help="Requeue every dead letter that has a payload.")
@click.pass_obj
def dead_requeue(settings: Settings, job_id: str | None, all_: bool) -> None:
    """Enqueue a dead job again from attempt 1 (same id)."""
    if bool(job_id) == all_:
        _fail("give one JOB_ID or --all")
    with _errors():
        client = _client(settings)
        handles = client.requeue_all() if all_ else [client.requeue(job_id or "")]
    console.print(f"requeued {len(handles)} job(s)")


@dead.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_obj
def dead_purge(settings: Settings, yes: bool) -> None:
    """Delete every dead letter."""
    with _errors():
        client = _client(settings)
        count = client.backend.dead_letters.count()
        if not yes and not click.confirm(f"delete {count} dead letters?"):
            return
        console.print(f"purged {client.purge_dead_letters()} dead letters")


@cli.command()
@click.option(
    "--jobs", "jobs_per_kind", type=click.IntRange(1, 1000), default=4, show_default=True, help="Jobs of each kind."
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep what the demo wrote (its temporary folder with the outbox, and its jobs in Redis) to look at.",
)
@click.pass_obj
def demo(settings: Settings, jobs_per_kind: int, keep: bool) -> None:
    """Enqueue a mix of the catalog's jobs, work them with a live display, print a summary."""
    import importlib

    sys.path.insert(0, ".")
    module_name = f"{settings.jobs}.demo"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in (settings.jobs, module_name) and not module_name.startswith(f"{exc.name}."):
            raise  # the demo module is there and imports something missing: show what
        _fail(
            f"the job package {settings.jobs!r} has no demo module ({module_name}). The demo is the example "
            "application of the forgejobs repository: in a clone of it, run ./dev demo"
        )
    with _errors():
        code = module.run(settings, console, jobs_per_kind=jobs_per_kind, keep=keep)
    sys.exit(code)


cli.add_command(__import__("forgejobs.dashboard.cli", fromlist=["dashboard"]).dashboard)
cli.add_command(__import__("forgejobs.outbox_cli", fromlist=["outbox"]).outbox)
cli.add_command(__import__("forgejobs.workflows.cli", fromlist=["workflows"]).workflows)


def main() -> None:
    cli(prog_name="forgejobs")


if __name__ == "__main__":
    main()
