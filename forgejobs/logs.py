"""Structured logs and secret payload fields.

**JSON logs.** `FORGEJOBS_LOG_FORMAT=json` (or `forgejobs worker --log-format json`) makes every log
line one JSON object: `time`, `level`, `logger`, `message`, and for the lines about a job its `job_id`,
`job_name`, `queue`, `attempt`, and on the line a worker writes when a job ends, `outcome` and
`duration` (seconds). `ctx.logger` lines carry the job's fields too.

**Secret fields.** A payload field marked secret is shown as `"***"` wherever forgejobs shows a
payload or a message: `forgejobs job ID`, `forgejobs dead show/list --json`, the inspection API's
`JobDetail` (so the dashboard), and the errors, tracebacks and log lines of the job, where the
secret's value is replaced if it appears. The envelope in Redis keeps the value (the worker needs
it, and a requeued dead letter must run as it was enqueued). Mark a field with `Annotated[str, Secret]`.
pydantic's `SecretStr`/`SecretBytes` are refused in a job's payload: pydantic writes them to JSON as
`**********`, so the worker would receive the mask instead of the value.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretBytes, SecretStr

if TYPE_CHECKING:
    from .deadletter import DeadLetter
    from .registry import Registry

__all__ = [
    "MASK",
    "JsonFormatter",
    "LogFormat",
    "Secret",
    "configure_logging",
    "job_line",
    "mask_dead_letter",
    "mask_value",
    "mask_payload",
    "mask_text",
    "secret_fields",
    "secret_values",
]

LogFormat = Literal["text", "json"]
MASK = "***"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOB_FIELDS = ("job_id", "job_name", "queue", "attempt", "outcome", "duration", "error")


class Secret:
    """Marks a payload field as secret: `token: Annotated[str, Secret]`. Its value is masked wherever
    forgejobs shows the payload (see the module docstring); the job itself receives it unchanged."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the job fields a record
    carries (`JOB_FIELDS`), and `exception` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(fmt: LogFormat = "text", level: int | None = None) -> None:
    """Install one handler on the root logger writing `fmt` lines to stderr (replacing the handlers
    `logging.basicConfig` or an earlier call installed); `level` sets the root level when given."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level)


def job_line(
    logger: logging.Logger,
    *,
    queue: str,
    job_id: str,
    name: str,
    attempt: int | None,
    outcome: str,
    duration: float,
    error: str | None = None,
) -> None:
    """The INFO line a worker writes when a job's attempt ends: id, name, queue, attempt, outcome, duration."""
    if not logger.isEnabledFor(logging.INFO):
        return
    extra = {
        "job_id": job_id,
        "job_name": name,
        "queue": queue,
        "attempt": attempt,
        "outcome": outcome,
        "duration": round(duration, 6),
        "error": error,
    }
    shown = f"#{attempt}" if attempt is not None else "#?"
    tail = f": {error}" if error else ""
    logger.info("%s %s %s on %s: %s in %.3fs%s", name, job_id, shown, queue, outcome, duration, tail, extra=extra)


# -- secret fields -------------------------------------------------------------------------


def _is_secret(annotation: Any, metadata: Iterable[Any]) -> bool:
    if any(m is Secret or isinstance(m, Secret) for m in metadata):
        return True
    candidates = [annotation, *get_args(annotation)] if get_origin(annotation) is not None else [annotation]
    return any(c in (SecretStr, SecretBytes) for c in candidates)


def pydantic_secret_fields(model: type[BaseModel], seen: frozenset[type] = frozenset()) -> list[str]:
    """Dotted paths of the fields of `model` (and of models nested in it) typed SecretStr or SecretBytes."""
    found = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        candidates = [annotation, *get_args(annotation)] if get_origin(annotation) is not None else [annotation]
        if any(c in (SecretStr, SecretBytes) for c in candidates):
            found.append(name)
        inner = _nested_model(annotation)
        if inner is not None and inner not in seen and inner is not model:
            found.extend(f"{name}.{path}" for path in pydantic_secret_fields(inner, seen | {model}))
    return found


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *get_args(annotation)]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


@cache
def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """The payload keys (field names and their aliases) of `model` that are secret."""
    found: set[str] = set()
    for name, info in model.model_fields.items():
        if _is_secret(info.annotation, info.metadata):
            found.add(name)
            if info.alias:
                found.add(info.alias)
    return frozenset(found)


@cache
def _nested(model: type[BaseModel]) -> tuple[tuple[str, type[BaseModel]], ...]:
    out = []
    for name, info in model.model_fields.items():
        inner = _nested_model(info.annotation)
        if inner is not None and inner is not model:
            out.append((info.alias or name, inner))
            if info.alias:
                out.append((name, inner))
    return tuple(out)


def has_secrets(model: type[BaseModel]) -> bool:
    """Whether `model` or a model nested in one of its fields has a secret field."""
    return bool(secret_fields(model)) or any(has_secrets(inner) for _, inner in _nested(model))


def mask_payload(model: type[BaseModel] | None, payload: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy of `payload` with the values of `model`'s secret fields (and of models nested in its fields)
    replaced by `MASK`. `model` None (a job type not known here): the payload unchanged."""
    if payload is None:
        return None
    if model is None or not has_secrets(model):
        return dict(payload)
    secret = secret_fields(model)
    out: dict[str, Any] = {}
    nested = dict(_nested(model))
    for key, value in payload.items():
        if key in secret and value is not None:
            out[key] = MASK
        elif key in nested and isinstance(value, Mapping):
            out[key] = mask_payload(nested[key], value)
        else:
            out[key] = value
    return out


def secret_values(model: type[BaseModel] | None, payload: Mapping[str, Any] | None) -> list[str]:
    """The text of the secret values in `payload` (longest first), to mask where they appear in messages."""
    if model is None or payload is None or not has_secrets(model):
        return []
    found: list[str] = []
    secret = secret_fields(model)
    nested = dict(_nested(model))
    for key, value in payload.items():
        if key in secret and value is not None:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if len(text) >= 3:  # shorter ones would mask ordinary words, and hardly hide anything
                found.append(text)
        elif key in nested and isinstance(value, Mapping):
            found.extend(secret_values(nested[key], value))
    return sorted(set(found), key=len, reverse=True)


def mask_text(text: str, values: Iterable[str]) -> str:
    """`text` with every occurrence of each of `values` replaced by `MASK`."""
    for value in values:
        if value:
            text = text.replace(value, MASK)
    return text


def mask_value(value: Any, values: Iterable[str]) -> Any:
    """A JSON value (a result, a progress report) with each of `values` masked inside its strings; `MASK`
    alone when a value spans JSON syntax so that masking would break it."""
    hidden = [json.dumps(v)[1:-1] for v in values if v]
    if not hidden or value is None:
        return value
    try:
        return json.loads(mask_text(json.dumps(value, default=str), hidden))
    except ValueError:
        return MASK


def mask_dead_letter(record: DeadLetter, model: type[BaseModel] | None) -> DeadLetter:
    """`record` as shown: secret payload fields as `MASK`, their values masked in its error, traceback, raw
    bytes and attempts. The stored record keeps the payload (a requeue runs it as enqueued)."""
    if model is None or not has_secrets(model):
        return record
    hidden = secret_values(model, record.payload)
    return record.model_copy(
        update={
            "payload": mask_payload(model, record.payload),
            "error": mask_text(record.error, hidden),
            "traceback": mask_text(record.traceback, hidden),
            "raw": mask_text(record.raw, hidden) if record.raw is not None else None,
            "attempts": [a.model_copy(update={"error": mask_text(a.error, hidden)}) for a in record.attempts],
        }
    )


def job_model(registry: Registry | None, name: str | None) -> type[BaseModel] | None:
    """The job type named `name` in `registry`, or None when either is unknown."""
    if registry is None or name is None or name not in registry:
        return None
    return registry.resolve(name).job_type
