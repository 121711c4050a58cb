"""One settings object, read from the environment (prefix `FORGEJOBS_`) and passed down."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    """forgejobs settings. Every field can be set as `FORGEJOBS_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FORGEJOBS_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis:// or rediss://). Unset: 127.0.0.1:6379/0 for the library; "
        "the CLI demo falls back to an embedded server when nothing answers there.",
    )
    jobs: str = Field(default="jobs", description="Package whose modules declare the job classes.")
    specs: Path = Field(default=Path("specs"), description="Directory of YAML specs.")
    key_prefix: str = Field(default="forgejobs", description="Prefix of forgejobs' own Redis keys.")
    resources: str | None = Field(
        default=None,
        description="'module:function' building the object handlers see as ctx.resources; "
        "unset: '<jobs>.resources:build' if that module exists.",
    )
    hooks: str | None = Field(
        default=None,
        description="'module:attribute' naming a forgejobs.events.Hooks whose callbacks workers run in-process.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="How the command line's processes (worker, scheduler, ...) write log lines: 'text', or "
        "'json' (one object per line, with job_id, job_name, queue, attempt, outcome and duration on job lines).",
    )
    stall_timeout: float = Field(
        default=10.0,
        ge=2,
        le=3600,
        description="A slot's lease: seconds without a renewal after which its running job counts as stalled "
        "(its worker died or hangs) and is taken back. Renewed every fifth of it.",
    )
    enqueue_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds an enqueue keeps trying while Redis cannot be reached (dropped connections, "
        "timeouts; retried with backoff and jitter) before it raises BackendUnavailable. Also the socket "
        "timeout of producers' connections, so a frozen Redis cannot block a caller longer.",
    )
    events_max: int = Field(default=100_000, ge=100, description="Job events the stream keeps (oldest go first).")
    dead_letter_limit: int = Field(default=10_000, ge=1, description="Dead letters kept; the oldest go first.")

    def redis_url_or_default(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL


def load_resources(settings: Settings) -> Any:
    """Build `ctx.resources` for a worker from `settings.resources` (or the job package's convention)."""
    path = settings.resources
    if path is None:
        module_name = f"{settings.jobs}.resources"
        try:
            if importlib.util.find_spec(module_name) is None:
                return None
        except ModuleNotFoundError:  # FORGEJOBS_JOBS names a module, not a package, or is missing
            return None
        path = f"{module_name}:build"
    module_name, _, attr = path.partition(":")
    factory = getattr(importlib.import_module(module_name), attr or "build")
    return factory(settings)


def load_hooks(settings: Settings) -> Any:
    """The `Hooks` named by `settings.hooks`, or None."""
    if not settings.hooks:
        return None
    module_name, _, attr = settings.hooks.partition(":")
    return getattr(importlib.import_module(module_name), attr or "hooks")
