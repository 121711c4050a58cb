"""What every `forgejobs` subcommand module shares: one-sentence errors and exit codes, settings, registry and
client from the environment. forgejobs.cli and the command groups of other packages (workflows, dashboard,
outbox) import these from here, so none of them imports forgejobs.cli."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from .client import Client
from .errors import ForgeJobsError
from .registry import Registry
from .settings import Settings

__all__ = ["_client", "_errors", "_fail", "_registry", "_settings", "explain", "output_width"]


def output_width(stream: Any) -> int | None:
    """The width tables are drawn at: the terminal's; when piped (CI, scripts, tests) `$COLUMNS` if set, else
    200 columns instead of rich's 80."""
    if stream.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 200


def _fail(message: str, code: int = 1) -> NoReturn:
    # One line however long (soft_wrap: the terminal folds it, rich inserts no newline), so a piped error is
    # one line for grep and logs.
    err = Console(stderr=True, width=output_width(sys.stderr))
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(code)


def explain(exc: ValidationError, names: Mapping[str, str] | None = None, subject: str | None = None) -> str:
    """A Pydantic error as sentences: `<what>: <problem> (got <input>)`, one per problem, joined by "; ".

    `names` maps a field's dotted location to what the user typed (`delay` -> `--delay`); `subject` (default:
    the model's name) leads when a location is not in `names`."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"])
        label = (names or {}).get(where)
        if label is None:
            label = f"{subject or exc.title}: {where}" if where else subject or exc.title
        message = str(error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        shown = error.get("input")
        if error["type"] != "missing" and not error["type"].startswith("value_error") and _short(shown):
            message += f" (got {shown!r})"
        parts.append(f"{label}: {message}")
    return "; ".join(parts)


def _short(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60


@contextmanager
def _errors() -> Iterator[None]:
    """Turn forgejobs, validation and Redis errors into one clear message and a non-zero exit."""
    import redis

    try:
        yield
    except ForgeJobsError as exc:
        _fail(str(exc))
    except ValidationError as exc:
        _fail(explain(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        _fail(f"cannot reach Redis: {exc}")
    except redis.RedisError as exc:
        _fail(f"Redis refused a command: {exc}")


def _settings() -> Settings:
    """Settings from the environment; a bad FORGEJOBS_* value is named as the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        names = {name: f"FORGEJOBS_{name.upper()}" for name in Settings.model_fields}
        _fail(explain(exc, names, "settings"))


def _registry(settings: Settings) -> Registry:
    sys.path.insert(0, ".")  # the job package lives in the project directory
    return Registry.load(settings)


def _client(settings: Settings) -> Client:
    from .backends.redis import RedisBackend

    return Client(RedisBackend.from_settings(settings), _registry(settings))
