"""YAML specs: queues, per-job overrides and schedules, validated by Pydantic.

Every `*.yaml` file in the specs directory is one `SpecFile`; together they
make a `Specs`. Unknown keys are errors, reported with the file and the key
path and line (`specs/queues.yaml:3: queues.email.concurency: unknown key (did you mean 'concurrency'?)`).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import SpecError
from .options import NAME_PATTERN, JobOverride
from .ratelimit import RateLimit
from .schedule import SCHEDULE_NAME_PATTERN, ScheduleSpec
from .types import Duration


class Keep(BaseModel):
    """How much of one kind of finished job a queue keeps: the newest `count`, none older than `age`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int | None = Field(default=None, ge=0)
    age: Duration | None = None


class Retention(BaseModel):
    """Per queue. Defaults keep Redis memory bounded under sustained load."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    completed: Keep = Keep(count=1000)  # age: each job's result_ttl (1 h by default)
    failed: Keep = Keep(count=1000)  # age: each job's failure_ttl (7 days by default)


class QueueSpec(BaseModel):
    """One queue: how many jobs of it a worker runs at once, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    concurrency: int = Field(default=1, ge=1, le=1000)
    global_concurrency: int | None = Field(default=None, ge=1, le=100_000)
    """At most this many of the queue's jobs run at once across every worker process and host."""
    mode: Literal["threads", "processes"] = "threads"
    """threads: the queue's slots are threads of the worker process (the default); processes: one child
    process per slot, for CPU-bound handlers and timeouts that must interrupt C calls."""
    description: str = ""
    rate_limit: RateLimit | None = None  # shared by every worker of the queue, across processes and hosts
    retention: Retention = Retention()


class SpecFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    queues: dict[str, QueueSpec] = Field(default_factory=dict)
    jobs: dict[str, JobOverride] = Field(default_factory=dict)
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict)


class Specs(BaseModel):
    """All spec files merged. `sources` says which file declared each queue or override."""

    model_config = ConfigDict(frozen=True)

    queues: dict[str, QueueSpec] = Field(default_factory=dict)
    jobs: dict[str, JobOverride] = Field(default_factory=dict)
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict)
    sources: dict[str, str] = Field(default_factory=dict)
    workflows_dir: Path | None = None
    """`<specs>/workflows`: YAML workflows, loaded and checked by the registry (forgejobs/workflows/spec.py)."""


_SECTIONS = {"queues": "queue", "jobs": "job", "schedules": "schedule"}


def _known_keys() -> set[str]:
    """Every key a spec may use anywhere, for "did you mean" on an unknown one."""
    models: list[type[BaseModel]] = [SpecFile, QueueSpec, JobOverride, ScheduleSpec, Retention, Keep, RateLimit]
    return {name for model in models for name in model.model_fields}


def _lines(text: str) -> dict[tuple[str, ...], int]:
    """The 1-based line of every mapping key path in a YAML document (best effort: {} if it cannot tell)."""
    found: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    here = (*path, str(key.value))
                    found.setdefault(here, key.start_mark.line + 1)
                    walk(value, here)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if root is not None:
        walk(root, ())
    return found


def _explain(err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], sorted(_known_keys()), n=1)
        return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if len(loc) == 2 and loc[0] in _SECTIONS and err["type"] in {"model_type", "dict_type"}:
        kind = _SECTIONS[loc[0]]
        if value is None:
            return f"the {kind} {loc[1]!r} has nothing under it (indent its settings below its name)"
        return (
            f"a {kind}'s settings must be a mapping, got {value!r}; if {loc[1]!r} is a setting of the "
            f"{kind} above it, indent it under that {kind}'s name"
        )
    if len(loc) == 1 and err["type"] in {"model_type", "dict_type"}:
        return f"must be a mapping of {_SECTIONS.get(loc[0], 'entry')} names to their settings, got {value!r}"
    return str(err["msg"])


def _message(path: Path, exc: ValidationError, text: str = "") -> str:
    lines_of = _lines(text) if text else {}
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        # The line of the deepest key the document has (a missing key is reported on its parent).
        line = next((lines_of[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines_of), None)
        where = f"{path}:{line}" if line else f"{path}"
        lines.append(f"{where}: {key}: {_explain(err)}")
    return "\n".join(lines)


def load_file(path: Path) -> SpecFile:
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}): save the spec as UTF-8") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to read") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    try:
        spec = SpecFile.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_message(path, exc, text)) from None
    for queue in spec.queues:
        if not re.match(NAME_PATTERN, queue):
            raise SpecError(f"{path}: queues.{queue}: queue names are lower-case letters, digits, '.', '_', '-'")
    for name in spec.schedules:
        if not re.match(SCHEDULE_NAME_PATTERN, name):
            raise SpecError(f"{path}: schedules.{name}: schedule names are lower-case letters, digits, '.', '_', '-'")
    return spec


def load_specs(directory: Path) -> Specs:
    """Load and merge `directory/*.yaml` (and `*.yml`)."""
    queues: dict[str, QueueSpec] = {}
    jobs: dict[str, JobOverride] = {}
    schedules: dict[str, ScheduleSpec] = {}
    sources: dict[str, str] = {}
    if not directory.exists():
        raise SpecError(
            f"{directory}: specs directory does not exist (set FORGEJOBS_SPECS, or run from the project directory)"
        )
    if not directory.is_dir():
        raise SpecError(f"{directory}: specs path is not a directory")
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        spec = load_file(path)
        for kind, keys in (("queues", spec.queues), ("jobs", spec.jobs), ("schedules", spec.schedules)):
            for key in keys:
                source_key = f"{kind}.{key}"
                if source_key in sources:
                    raise SpecError(f"{path}: {source_key}: already declared in {sources[source_key]}")
                sources[source_key] = str(path)
        queues.update(spec.queues)
        jobs.update(spec.jobs)
        schedules.update(spec.schedules)
    flows = directory / "workflows"
    return Specs(
        queues=queues, jobs=jobs, schedules=schedules, sources=sources, workflows_dir=flows if flows.is_dir() else None
    )
