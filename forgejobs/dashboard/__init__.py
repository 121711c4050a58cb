"""The web dashboard: an ASGI app (Starlette and Jinja2) to watch queues and act on jobs.

    from forgejobs.dashboard import TokenAuth, create_app
    app.mount("/admin/queues", create_app(settings, auth=TokenAuth(os.environ["DASHBOARD_TOKEN"])))

Pages: an overview (queues with counts per state, paused, per-minute graphs, the oldest waiting job's
age; live workers and what they run), a queue's jobs by state, one job in full, dead letters,
schedules, and an enqueue form generated from a job's JSON Schema. Actions: retry, delete, promote,
cancel, pause and resume, requeue and purge dead letters, run a schedule now, enqueue. `/metrics`
serves the Prometheus metrics. Lists and the job page refresh themselves every few seconds.

It refuses to be built without auth (`TokenAuth`, `BasicAuth`, or a hook into the host application's
own); `read_only=True` hides every action and refuses them with 403; every POST carries a CSRF token;
templates escape everything; secret payload fields are masked. docs/dashboard.md has the details and
how to mount it in FastAPI, Flask and Django.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import ForgeJobsError
from .auth import AuthHook, BasicAuth, Signer, TokenAuth, new_key

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from ..client import Client
    from ..settings import Settings

__all__ = ["AuthHook", "BasicAuth", "DashboardError", "DashboardSettings", "TokenAuth", "create_app"]


class DashboardError(ForgeJobsError):
    """The dashboard cannot be built as asked (no auth configured, a bad setting)."""


class DashboardSettings(BaseSettings):
    """The dashboard's settings from the environment (`FORGEJOBS_DASHBOARD_<NAME>`), used when
    `create_app` is not given them (and by `forgejobs dashboard`)."""

    model_config = SettingsConfigDict(env_prefix="FORGEJOBS_DASHBOARD_", extra="ignore")

    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    secret_key: SecretStr | None = None
    read_only: bool = False


NO_AUTH = (
    "the dashboard refuses to start without auth: set FORGEJOBS_DASHBOARD_TOKEN (at least 8 characters), or "
    "FORGEJOBS_DASHBOARD_USERNAME and FORGEJOBS_DASHBOARD_PASSWORD, or pass auth=TokenAuth(...), "
    "BasicAuth(...) or a hook (request -> user name or None) to create_app"
)


def resolve_auth(auth: Any, env: DashboardSettings) -> TokenAuth | BasicAuth | AuthHook:
    """The auth to use: `auth` if given, else the environment's; `DashboardError` when there is none."""
    if auth is not None:
        if isinstance(auth, (TokenAuth, BasicAuth)) or callable(auth):
            return auth  # type: ignore[no-any-return]
        raise DashboardError(f"auth must be a TokenAuth, a BasicAuth or a callable, not {type(auth).__name__}")
    try:
        if env.token is not None and env.token.get_secret_value():
            return TokenAuth(env.token.get_secret_value())
        if env.username and env.password is not None:
            return BasicAuth(env.username, env.password.get_secret_value())
    except ValueError as exc:
        raise DashboardError(f"FORGEJOBS_DASHBOARD_*: {exc}") from None
    if env.username or env.password is not None:
        raise DashboardError("basic auth needs both FORGEJOBS_DASHBOARD_USERNAME and FORGEJOBS_DASHBOARD_PASSWORD")
    raise DashboardError(NO_AUTH)


def create_app(
    settings: Settings | None = None,
    *,
    auth: TokenAuth | BasicAuth | AuthHook | None = None,
    read_only: bool = False,
    client: Client | None = None,
    secret_key: str | bytes | None = None,
    title: str = "forgejobs",
    per_page: int = 25,
    metrics: bool = True,
) -> ASGIApp:
    """The dashboard as an ASGI app.

    settings: where Redis, the job package and the specs are (default: `Settings()` from the environment);
    ignored when `client` is given. auth: see the module docstring; None reads `FORGEJOBS_DASHBOARD_TOKEN`
    or `..._USERNAME`/`..._PASSWORD`, and raises `DashboardError` when neither is set. read_only: no action
    is shown and every one is refused (also `FORGEJOBS_DASHBOARD_READ_ONLY=1`). secret_key: signs sessions
    and CSRF tokens (default `FORGEJOBS_DASHBOARD_SECRET_KEY`, else random per process). metrics: serve
    `/metrics` (needs prometheus-client)."""
    from .app import Config, Guard, build
    from .data import Reader

    env = DashboardSettings()
    chosen = resolve_auth(auth, env)
    if not 1 <= per_page <= 500:
        raise DashboardError(f"per_page must be within 1..500, not {per_page}")
    if client is None:
        from ..backends.redis import RedisBackend
        from ..client import Client
        from ..registry import Registry
        from ..settings import Settings

        settings = settings or Settings()
        client = Client(RedisBackend.from_settings(settings), Registry.load(settings))
    if client.backend.__class__.__name__ != "RedisBackend" and not hasattr(client.backend, "connection"):
        raise DashboardError("the dashboard reads a Redis backend; this client's backend is not one")
    key: bytes
    if secret_key is not None:
        key = secret_key.encode() if isinstance(secret_key, str) else secret_key
    elif env.secret_key is not None:
        key = env.secret_key.get_secret_value().encode()
    else:
        key = new_key()
    if metrics:
        try:
            import prometheus_client  # noqa: F401
        except ModuleNotFoundError:
            metrics = False
    config = Config(
        client=client,
        reader=Reader(client),
        auth=chosen,
        signer=Signer(key),
        read_only=read_only or env.read_only,
        title=title,
        per_page=per_page,
        metrics=metrics,
    )
    return Guard(build(config), config)
