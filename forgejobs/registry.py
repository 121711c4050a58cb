"""The registry: name -> job type, effective options, declared queues.

Built once from the job package and the specs, and checked then: two jobs
with one name, a job on an undeclared queue, or a spec override for an
unknown job all raise `RegistryError` with every problem listed.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import pkgutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from .errors import RegistryError, SpecError, UnknownJob
from .job import Job
from .options import JobOptions
from .schedule import Schedule, id_part
from .settings import Settings
from .specs import QueueSpec, Specs, load_specs


def _payload_problem(job_type: type[Job], payload: dict[str, Any], where: str) -> str | None:
    try:
        job_type.model_validate(payload)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(payload)'}: {e['msg']}" for e in exc.errors())
        return f"{where}: does not validate as {job_type.job_name()}: {details}"
    return None


_FRAMEWORK = str(Path(__file__).resolve().parent)


def _shown(filename: str) -> str:
    """A source file as a user reads it: relative to the current directory when it lies inside it."""
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd()))
    except ValueError:
        return filename


def _where(exc: BaseException) -> str | None:
    """`file:line` of the innermost frame of `exc`'s traceback outside forgejobs and importlib: the user's line."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith(("<", _FRAMEWORK)) and "importlib" not in filename:
            found = f"{_shown(filename)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


def _import(name: str) -> ModuleType:
    """Import one module of the job package; a class declaration that fails names its file and line."""
    try:
        return importlib.import_module(name)
    except RegistryError:
        raise
    except Exception as exc:
        where = _where(exc) or name
        raise RegistryError(f"{where}: {type(exc).__name__}: {exc} (while importing {name})") from exc


def source_of(job_type: type[Job]) -> str:
    """`file:line` of a job class's declaration (the class's module name when the source cannot be found)."""
    try:
        filename = inspect.getsourcefile(job_type)
        line = inspect.getsourcelines(job_type)[1]
    except (OSError, TypeError):
        return f"{job_type.__module__}.{job_type.__qualname__}"
    return f"{_shown(filename) if filename else job_type.__module__}:{line}"


def discover(package: str) -> list[type[Job]]:
    """Import `package` and its submodules; return the concrete job classes they define."""
    try:
        root = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name is not None and package.split(".")[0] == exc.name.split(".")[0] and package.startswith(exc.name):
            raise RegistryError(
                f"cannot import job package {package!r}: no module named {exc.name!r} on the path. "
                "FORGEJOBS_JOBS names the package that holds your job classes, importable from the "
                "current directory (for example FORGEJOBS_JOBS=myapp.jobs)"
            ) from exc
        where = _where(exc)
        raise RegistryError(f"{where + ': ' if where else ''}cannot import job package {package!r}: {exc}") from exc
    except RegistryError:
        raise
    except Exception as exc:
        where = _where(exc) or package
        raise RegistryError(f"{where}: {type(exc).__name__}: {exc} (while importing {package})") from exc
    modules: list[ModuleType] = [root]
    if hasattr(root, "__path__"):
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            modules.append(_import(info.name))
    found: list[type[Job]] = []
    for module in modules:
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Job)
                and value.__module__ == module.__name__
                and not value.is_abstract()
            ):
                found.append(value)
    return found


@dataclass(frozen=True)
class Entry:
    job_type: type[Job]
    options: JobOptions


@dataclass(frozen=True)
class ScheduledJob:
    """One repeat: which job, with which payload, when; and where it was declared."""

    name: str
    job_type: type[Job]
    payload: dict[str, Any]
    schedule: Schedule
    source: str  # "class <module.Class>" or the spec file

    def fingerprint(self) -> str:
        """Changes whenever what or when it fires changes (a restart with the same fingerprint keeps its next tick)."""
        when = self.schedule.model_dump(mode="json")
        data = {"job": self.job_type.job_name(), "payload": self.payload, "schedule": when}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class Registry:
    """Job types by name with their effective options (class defaults < spec overrides)."""

    def __init__(self, jobs: Iterable[type[Job]] = (), specs: Specs | None = None, *, strict: bool = True) -> None:
        self.specs = specs or Specs()
        self.strict = strict
        self.queues: dict[str, QueueSpec] = dict(self.specs.queues)
        self._entries: dict[str, Entry] = {}
        problems: list[str] = []
        for job_type in jobs:
            problem = self._add(job_type)
            if problem:
                problems.append(problem)
        for name in self.specs.jobs if strict else ():
            if name not in self._entries:
                where = self.specs.sources.get(f"jobs.{name}", "specs")
                problems.append(f"{where}: jobs.{name}: override for an unknown job")
        self.schedules: dict[str, ScheduledJob] = {}
        problems.extend(self._resolve_schedules())
        from .workflows.loading import collect  # workflows refer to jobs: loaded once they are known

        self.workflows, found = collect(self)
        problems.extend(found)
        if problems:
            raise RegistryError("\n".join(problems))

    def _resolve_schedules(self) -> list[str]:
        """Class schedules (named after their job), then spec schedules, which win on a shared name."""
        problems: list[str] = []
        for entry in self._entries.values():
            schedule = entry.options.schedule
            if schedule is None:
                continue
            name = entry.job_type.job_name()
            source = f"class {entry.job_type.__module__}.{entry.job_type.__qualname__}"
            problem = _payload_problem(entry.job_type, {}, f"{source}: schedule")
            if problem:
                problems.append(f"{problem} (give its fields defaults, or schedule it in a spec with a payload)")
                continue
            self.schedules[name] = ScheduledJob(name, entry.job_type, {}, schedule, source)
        for name, spec in self.specs.schedules.items():
            where = self.specs.sources.get(f"schedules.{name}", "specs")
            target = self._entries.get(spec.job)
            if target is None:
                if self.strict:
                    problems.append(f"{where}: schedules.{name}.job: no job named {spec.job!r}")
                continue
            problem = _payload_problem(target.job_type, spec.payload, f"{where}: schedules.{name}.payload")
            if problem:
                problems.append(problem)
                continue
            schedule = Schedule.model_validate(spec.model_dump(exclude={"job", "payload"}))
            self.schedules[name] = ScheduledJob(name, target.job_type, dict(spec.payload), schedule, where)
        seen: dict[str, str] = {}
        for name in self.schedules:
            key = id_part(name)
            if key in seen:
                problems.append(f"schedules {seen[key]!r} and {name!r} differ only in '.' versus '_'; rename one")
            seen[key] = name
        return problems

    @classmethod
    def load(cls, settings: Settings) -> Registry:
        """The registry of `settings.jobs` and `settings.specs`; a `RegistryError` says what to fix where.

        Every client and worker of the process is built from this registry, so its error is the
        error of every enqueue until it is fixed: the message says so, and names the files.
        """
        try:
            return cls(discover(settings.jobs), load_specs(settings.specs))
        except (RegistryError, SpecError) as exc:
            raise type(exc)(
                f"the job registry did not load (job package {settings.jobs!r}, specs {settings.specs}); "
                f"nothing can be enqueued or worked until this is fixed:\n{exc}"
            ) from exc

    def _add(self, job_type: type[Job]) -> str | None:
        name = job_type.job_name()
        existing = self._entries.get(name)
        if existing is not None:
            if existing.job_type is job_type:
                return None
            return (
                f"{source_of(job_type)}: job name {name!r} is used by both "
                f"{existing.job_type.__module__}.{existing.job_type.__qualname__} ({source_of(existing.job_type)})"
                f" and {job_type.__module__}.{job_type.__qualname__}"
            )
        options = job_type.job_options()
        override = self.specs.jobs.get(name)
        if override is not None:
            options = override.apply(options)
        assert options.queue is not None
        if options.queue not in self.queues:
            if self.strict:
                return (
                    f"{source_of(job_type)}: {job_type.__qualname__} ({name}) is on queue {options.queue!r}, "
                    f"which no spec declares (declared: {', '.join(sorted(self.queues)) or 'none'})"
                )
            self.queues[options.queue] = QueueSpec()
        self._entries[name] = Entry(job_type, options)
        return None

    def ensure(self, job_type: type[Job]) -> JobOptions:
        """Effective options of `job_type`; a lenient registry (the fake queue) adds unknown types."""
        entry = self._entries.get(job_type.job_name())
        if entry is not None and entry.job_type is job_type:
            return entry.options
        if entry is None and not self.strict:
            problem = self._add(job_type)
            if problem:
                raise RegistryError(problem)
            return self._entries[job_type.job_name()].options
        if entry is not None:
            raise RegistryError(f"job name {job_type.job_name()!r} belongs to {entry.job_type.__qualname__}")
        raise UnknownJob(
            f"{job_type.__qualname__} ({job_type.job_name()}) is not registered: is its module inside the "
            f"job package the workers load (FORGEJOBS_JOBS)?"
        )

    def resolve(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownJob(f"no job type named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: (e.options.queue or "", e.job_type.job_name())))

    def __len__(self) -> int:
        return len(self._entries)
