"""The `forgejobs` command line: check, enqueue, info, worker, dead, demo."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .client import Client
from .errors import ForgeJobsError
from .options import EnqueueOptions
from .registry import Registry
from .settings import Settings

console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    sys.exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn forgejobs errors into one clear message and a non-zero exit."""
    try:
        yield
    except ForgeJobsError as exc:
        _fail(str(exc))
    except Exception as exc:  # pydantic errors, Redis connection errors
        if type(exc).__name__ == "ValidationError" or "redis" in type(exc).__module__:
            _fail(str(exc))
        raise


def _registry(settings: Settings) -> Registry:
    sys.path.insert(0, ".")  # the job package lives in the project directory
    return Registry.load(settings)


def _client(settings: Settings) -> Client:
    from .backends.redis import RedisBackend

    return Client(RedisBackend.from_settings(settings), _registry(settings))


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """forgejobs: declarative background jobs on Redis."""
    global console, err
    # Piped output (CI, scripts, tests) gets wide tables instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 200)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings()


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
    console.print("[green]ok[/]")


@cli.command()
@click.argument("name")
@click.option("--data", default="{}", help="The payload as a JSON object.")
@click.option("--delay", default=None, help="Start no earlier than this from now, e.g. 30s, 5m.")
@click.option("--priority", type=int, default=None, help="1 (highest) to 10.")
@click.option("--job-id", default=None, help="Use this id instead of a random one.")
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
        _fail("--data must be a JSON object")
    with _errors():
        client = _client(settings)
        handle = client.enqueue_raw(name, payload, EnqueueOptions(delay=delay, priority=priority, job_id=job_id))
        console.print(f"enqueued {name} as {handle.id} ({handle.status().value})")


@cli.command()
@click.pass_obj
def info(settings: Settings) -> None:
    """Per queue: waiting, scheduled, running, finished, dead."""
    with _errors():
        client = _client(settings)
        rows = client.backend.counts(sorted(client.registry.queues))
        paused = client.paused()
    table = Table(title=f"queues on {settings.redis_url_or_default()}")
    for column in ("queue", "waiting", "scheduled", "running", "finished", "dead", "state"):
        table.add_column(column, justify="left" if column in ("queue", "state") else "right")
    for row in rows:
        state = "paused" if row.queue in paused else "active"
        counts = (row.waiting, row.scheduled, row.running, row.finished, row.failed)
        table.add_row(row.queue, *(str(v) for v in counts), state)
    console.print(table)


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
@click.pass_context
def schedules(ctx: click.Context) -> None:
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
@click.option("--count", type=int, default=50, show_default=True, help="Without --follow: how many events.")
@click.pass_obj
def events(settings: Settings, follow: bool, job_name: str | None, after: str, count: int) -> None:
    """Job events (enqueued, started, progress, completed, failed, retrying, dead_lettered, ...)."""
    import signal
    import threading

    from .backends.redis import RedisBackend

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


@cli.command("job")
@click.argument("job_id")
@click.pass_obj
def job_show(settings: Settings, job_id: str) -> None:
    """One job: status, progress, last error and its `ctx.log` lines (also while it runs)."""
    with _errors():
        client = _client(settings)
        state = client.backend.state(job_id)
        console.print(f"{job_id}: {state.status.value}", highlight=False)
        if state.progress is not None:
            console.print(f"progress: {state.progress}", highlight=False)
        if state.error:
            console.print(f"error: {escape(state.error)}", highlight=False)
        for line in client.backend.logs(job_id):
            click.echo(line)


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
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_obj
def dead_list(settings: Settings, limit: int) -> None:
    """The newest dead letters."""
    with _errors():
        client = _client(settings)
        records = client.dead_letters(limit)
        total = client.backend.dead_letters.count()
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
        record = _client(settings).dead_letter(job_id)
    click.echo(record.model_dump_json(indent=2))


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
@click.option("--jobs", "jobs_per_kind", type=int, default=4, show_default=True, help="Jobs of each kind.")
@click.pass_obj
def demo(settings: Settings, jobs_per_kind: int) -> None:
    """Enqueue a mix of the catalog's jobs, work them with a live display, print a summary."""
    import importlib

    sys.path.insert(0, ".")
    module_name = f"{settings.jobs}.demo"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        _fail(f"the job package {settings.jobs!r} has no demo module ({module_name})")
    with _errors():
        code = module.run(settings, console, jobs_per_kind=jobs_per_kind)
    sys.exit(code)


def main() -> None:
    cli(prog_name="forgejobs")


if __name__ == "__main__":
    main()
