"""The dashboard's ASGI app: routes, the auth and CSRF guard, rendering."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import redis
from jinja2 import Environment, PackageLoader
from markupsafe import Markup
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ForgeJobsError, NoSuchJob, UnknownJob
from ..inspection import State, parse_state
from ..logs import secret_fields
from ..options import EnqueueOptions
from ..workflows.run import NoSuchRun
from . import actions, runs
from .auth import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, SESSION_SECONDS, BasicAuth, Signer, TokenAuth, authenticate
from .charts import minute_bars
from .data import STATE_TABS, TAB_COUNT, Reader
from .forms import errors_by_field, fields_for, payload_from

if TYPE_CHECKING:
    from ..client import Client

log = logging.getLogger("forgejobs.dashboard")

FLASH_COOKIE = "forgejobs_flash"
OPEN_PATHS = ("/login", "/static/")


@dataclass
class Config:
    client: Client
    reader: Reader
    auth: Any
    signer: Signer
    read_only: bool
    title: str
    per_page: int
    metrics: bool


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


class Guard:
    """Pure ASGI middleware: gives every browser a CSRF cookie, and lets a request through only with a user
    (login and static files excepted). Unauthenticated page loads go to the login page; the rest get 401."""

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        state = scope.setdefault("state", {})
        cookie = request.cookies.get(CSRF_COOKIE)
        fresh = None
        if not cookie or len(cookie) < 20:
            from .auth import new_key

            cookie = fresh = new_key().hex()
        state["csrf_cookie"] = cookie
        state["csrf_token"] = self.config.signer.csrf_token(cookie)
        path = _route_path(scope)
        if not path.startswith(OPEN_PATHS):
            user = await authenticate(request, self.config.auth, self.config.signer)
            if user is None:
                await self._refuse(request, path)(scope, receive, send)
                return
            state["user"] = user

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if fresh is not None:
                    where = _root(request) or "/"
                    value = f"{CSRF_COOKIE}={fresh}; Path={where}; HttpOnly; SameSite=Strict"
                    headers.append((b"set-cookie", value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _refuse(self, request: Request, path: str) -> Response:
        if not isinstance(self.config.auth, (TokenAuth, BasicAuth)):
            return PlainTextResponse("403: the application's auth refused this request", status_code=403)
        if request.method == "GET" and not path.startswith("/_/") and path != "/metrics":
            target = f"{_root(request)}/login?{urlencode({'next': path})}"
            return RedirectResponse(target, status_code=303)
        scheme = "Bearer" if isinstance(self.config.auth, TokenAuth) else 'Basic realm="forgejobs"'
        return PlainTextResponse("401: log in first", status_code=401, headers={"WWW-Authenticate": scheme})


SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


# -- formatting helpers for the templates ------------------------------------------------------


def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m {seconds % 60:.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h {seconds % 3600 // 60:.0f}m"
    return f"{seconds // 86400:.0f}d {seconds % 86400 // 3600:.0f}h"


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("forgejobs.dashboard", "templates"), autoescape=True)
    env.filters["time"] = fmt_time
    env.filters["age"] = fmt_age
    env.filters["compact"] = lambda v: json.dumps(v, default=str, ensure_ascii=False)
    env.filters["q"] = lambda v: quote(str(v), safe="")
    env.globals["chart"] = minute_bars
    return env


# -- the app -----------------------------------------------------------------------------------


def build(config: Config) -> Starlette:
    templates = Jinja2Templates(env=_environment())

    def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        root = _root(request)
        flash = _read_flash(request, config.signer)
        base = {
            "u": lambda path: Markup.escape(f"{root}{path}"),
            "root": root,
            "csrf": request.state.csrf_token,
            "csrf_field": CSRF_FIELD,
            "user": getattr(request.state, "user", None),
            "read_only": config.read_only,
            "title": config.title,
            "queues": config.reader.queues,
            "flash": flash,
            "path": _route_path(request.scope),
        }
        response = templates.TemplateResponse(request, template, {**base, **context}, status_code=status)
        if flash:
            response.delete_cookie(FLASH_COOKIE, path=root or "/")
        return response

    def redirect(request: Request, target: str, *, ok: str | None = None, error: str | None = None) -> Response:
        root = _root(request)
        response = RedirectResponse(f"{root}{_safe_next(target)}", status_code=303)
        if ok or error:
            body = json.dumps({"ok": ok, "error": error})
            value = f"{quote(body)}.{config.signer.sign('flash', body)}"
            response.set_cookie(FLASH_COOKIE, value, path=root or "/", httponly=True, samesite="strict", max_age=60)
        return response

    async def checked_form(request: Request, *, action: bool = True) -> FormData:
        if action and config.read_only:
            raise HTTPException(403, "this dashboard is read-only: actions are refused")
        form = await request.form()
        field = form.get(CSRF_FIELD)
        if not config.signer.csrf_ok(request.cookies.get(CSRF_COOKIE), field if isinstance(field, str) else None):
            raise HTTPException(403, "CSRF check failed: the form did not come from this dashboard (reload the page)")
        return form

    async def act(request: Request, back: str, fn: Callable[[], str]) -> Response:
        try:
            message = await run_in_threadpool(fn)
        except (ForgeJobsError, ValueError, KeyError) as exc:
            return redirect(request, back, error=str(exc))
        except redis.RedisError as exc:
            return redirect(request, back, error=f"Redis refused: {exc}")
        return redirect(request, back, ok=message)

    # -- pages ------------------------------------------------------------------------------

    def overview(request: Request) -> Response:
        data = config.reader.overview()
        fragment = request.url.path.endswith("/_/overview")
        return render(request, "_overview.html" if fragment else "overview.html", overview=data)

    def queue_page(request: Request) -> Response:
        queue = request.path_params["queue"]
        if queue not in config.reader.queues:
            raise HTTPException(404, f"no queue named {queue!r}")
        params = request.query_params
        wanted_id = params.get("id", "").strip()
        if wanted_id:
            return redirect(request, f"/jobs/{quote(wanted_id, safe='')}")
        try:
            state = parse_state(params.get("state") or "waiting")
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        name = params.get("name") or None
        page = _page(params.get("page"))
        jobs, more = config.reader.jobs(queue, state, name=name, page=page, per_page=config.per_page)
        counts, paused = config.reader.counts(queue)
        fragment = "/_/" in request.url.path
        return render(
            request,
            "_jobs.html" if fragment else "queue.html",
            queue=queue,
            state=state,
            tabs=STATE_TABS,
            tab_count=TAB_COUNT,
            counts=counts,
            paused=paused,
            name=name,
            names=config.reader.job_names(queue),
            jobs=jobs,
            page=page,
            more=more,
            query=lambda **kw: _query(**{"state": state.value, "name": name, "page": page, **kw}),
        )

    def job_page(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            view = config.reader.job(job_id)
        except NoSuchJob as exc:
            raise HTTPException(404, str(exc)) from None
        fragment = "/_/" in request.url.path
        return render(request, "_job.html" if fragment else "job.html", job=view, d=view.detail, State=State)

    def dead_page(request: Request) -> Response:
        reason = request.query_params.get("reason") or None
        name = request.query_params.get("name") or None
        page = _page(request.query_params.get("page"))
        letters, summary, total = config.reader.dead_letters(reason=reason, name=name)
        start = (page - 1) * config.per_page
        return render(
            request,
            "dead.html",
            letters=letters[start : start + config.per_page],
            matching=len(letters),
            summary=sorted(summary.items()),
            total=total,
            reason=reason,
            name=name,
            page=page,
            pages=max(1, math.ceil(len(letters) / config.per_page)),
            filters=_query(reason=reason, name=name),
        )

    def schedules_page(request: Request) -> Response:
        return render(request, "schedules.html", schedules=config.reader.schedules())

    def enqueue_list(request: Request) -> Response:
        entries = sorted(config.client.registry, key=lambda e: e.job_type.job_name())
        return render(request, "enqueue_list.html", entries=entries)

    def _entry(name: str) -> Any:
        try:
            return config.client.registry.resolve(name)
        except UnknownJob as exc:
            raise HTTPException(404, str(exc)) from None

    def enqueue_form(request: Request) -> Response:
        entry = _entry(request.path_params["name"])
        fields = fields_for(entry.job_type.model_json_schema(mode="validation"), secret_fields(entry.job_type))
        return render(request, "enqueue.html", entry=entry, fields=fields, general=[], options={})

    async def enqueue_submit(request: Request) -> Response:
        form = await checked_form(request)
        entry = _entry(request.path_params["name"])
        fields = fields_for(entry.job_type.model_json_schema(mode="validation"), secret_fields(entry.job_type))
        data, errors = payload_from(fields, form)
        general: list[str] = []
        options_form = {k: str(form.get(k) or "") for k in ("priority", "delay")}
        try:
            options = EnqueueOptions(
                priority=int(options_form["priority"]) if options_form["priority"] else None,
                delay=float(options_form["delay"]) if options_form["delay"] else None,
            )
        except (ValueError, ValidationError) as exc:
            general.append(f"options: {exc if not isinstance(exc, ValidationError) else _explain(exc)}")
            options = EnqueueOptions()
        if not errors and not general:
            try:
                handle = await run_in_threadpool(config.client.enqueue_raw, entry.job_type.job_name(), data, options)
            except ValidationError as exc:
                errors, general = errors_by_field(exc, fields)
            except ForgeJobsError as exc:
                general.append(str(exc))
            else:
                return redirect(
                    request, f"/jobs/{handle.id}", ok=f"enqueued {entry.job_type.job_name()} as {handle.id}"
                )
        for f in fields:
            f.error = errors.get(f.name)
        return render(
            request, "enqueue.html", status=422, entry=entry, fields=fields, general=general, options=options_form
        )

    def workflows_page(request: Request) -> Response:
        params = request.query_params
        status = params.get("status") or None
        if status is not None and status not in runs.STATUSES:
            raise HTTPException(400, f"no run status {status!r} (one of {', '.join(runs.STATUSES)})")
        name = params.get("name") or None
        page = _page(params.get("page"))
        found, more, names = runs.list_runs(
            config.client, status=status, name=name, page=page, per_page=config.per_page
        )
        fragment = "/_/" in request.url.path
        return render(
            request,
            "_runs.html" if fragment else "workflows.html",
            runs=found,
            more=more,
            page=page,
            run_status=status,
            name=name,
            names=sorted({*names, *([name] if name else [])}),
            statuses=runs.STATUSES,
            query=lambda **kw: _query(**{"status": status, "name": name, "page": page, **kw}),
        )

    def workflow_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            view = runs.run_view(config.client, run_id)
        except NoSuchRun as exc:
            raise HTTPException(404, str(exc)) from None
        fragment = "/_/" in request.url.path
        return render(request, "_run.html" if fragment else "run.html", r=view)

    async def workflow_cancel(request: Request) -> Response:
        await checked_form(request)
        run_id = request.path_params["run_id"]
        back = f"/workflows/{quote(run_id, safe='')}"
        return await act(request, back, lambda: actions.cancel_run(config.client, run_id))

    async def login_page(request: Request) -> Response:
        error = None
        next_path = _safe_next(request.query_params.get("next") or "/")
        if not isinstance(config.auth, (TokenAuth, BasicAuth)):
            return redirect(request, "/")
        if request.method == "POST":
            form = await checked_form(request, action=False)
            next_path = _safe_next(str(form.get("next") or "/"))
            user = config.auth.check(str(form.get("username") or "") or None, str(form.get("secret") or ""))
            if user is not None:
                response = redirect(request, next_path)
                response.set_cookie(
                    SESSION_COOKIE,
                    config.signer.session(user, config.auth.fingerprint()),
                    max_age=SESSION_SECONDS,
                    path=_root(request) or "/",
                    httponly=True,
                    samesite="lax",
                    secure=request.url.scheme == "https",
                )
                return response
            error = "wrong token" if isinstance(config.auth, TokenAuth) else "wrong user name or password"
        basic = isinstance(config.auth, BasicAuth)
        return render(request, "login.html", status=401 if error else 200, error=error, next=next_path, basic=basic)

    async def logout(request: Request) -> Response:
        await checked_form(request, action=False)
        response = redirect(request, "/login")
        response.delete_cookie(SESSION_COOKIE, path=_root(request) or "/")
        return response

    # -- actions ----------------------------------------------------------------------------

    async def job_action(request: Request) -> Response:
        await checked_form(request)
        job_id, what = request.path_params["job_id"], request.path_params["action"]
        handlers = {
            "retry": actions.retry_job,
            "delete": actions.delete_job,
            "promote": actions.promote_job,
            "cancel": actions.cancel_job,
        }
        if what not in handlers:
            raise HTTPException(404, f"no action {what!r}")
        back = f"/jobs/{quote(job_id, safe='')}"
        if what == "delete":
            back = "/"
        return await act(request, back, lambda: handlers[what](config.client, job_id))

    async def queue_action(request: Request) -> Response:
        form = await checked_form(request)
        queue, what = request.path_params["queue"], request.path_params["action"]
        if what not in ("pause", "resume"):
            raise HTTPException(404, f"no action {what!r}")

        def run() -> str:
            (config.client.pause if what == "pause" else config.client.resume)(queue)
            return f"{'paused' if what == 'pause' else 'resumed'} {queue}"

        return await act(request, str(form.get("back") or "/"), run)

    async def dead_requeue(request: Request) -> Response:
        form = await checked_form(request)
        reason, name = str(form.get("reason") or "") or None, str(form.get("name") or "") or None
        job_id = str(form.get("job_id") or "")
        back = "/dead" + _query(reason=reason, name=name)

        def run() -> str:
            if job_id:
                letters = [config.client.dead_letter(job_id)]
            else:
                letters = config.reader.matching_dead_letters(reason=reason, name=name)
            done, problems = actions.requeue_dead(config.client, letters)
            if problems and not done:
                raise actions.ActionError("; ".join(problems[:5]))
            extra = f" ({len(problems)} not: {'; '.join(problems[:3])})" if problems else ""
            return f"requeued {done} dead letter(s){extra}"

        return await act(request, back, run)

    async def dead_purge(request: Request) -> Response:
        form = await checked_form(request)
        reason, name = str(form.get("reason") or "") or None, str(form.get("name") or "") or None

        def run() -> str:
            letters = (
                None
                if reason is None and name is None
                else config.reader.matching_dead_letters(reason=reason, name=name)
            )
            return f"purged {actions.purge_dead(config.client, letters)} dead letter(s)"

        return await act(request, "/dead", run)

    async def schedule_run(request: Request) -> Response:
        await checked_form(request)
        name = request.path_params["name"]
        return await act(request, "/schedules", lambda: actions.run_schedule(config.client, name))

    def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from ..metrics import RedisCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(RedisCollector(config.reader.metrics))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if "/_/" in request.url.path:
            return PlainTextResponse(f"{exc.status_code}: {exc.detail}", status_code=exc.status_code)
        return render(request, "error.html", status=exc.status_code, code=exc.status_code, message=exc.detail)

    async def redis_error(request: Request, exc: Exception) -> Response:
        message = f"Redis did not answer this page ({type(exc).__name__}: {exc}); reload once it is back"
        log.warning("dashboard %s: %s", request.url.path, message)
        if "/_/" in request.url.path:
            return PlainTextResponse(f"503: {message}", status_code=503)
        return render(request, "error.html", status=503, code=503, message=message)

    routes = [
        Route("/", overview, name="overview"),
        Route("/_/overview", overview),
        Route("/login", login_page, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/queues/{queue}", queue_page),
        Route("/_/queues/{queue}", queue_page),
        Route("/queues/{queue}/{action}", queue_action, methods=["POST"]),
        Route("/jobs/{job_id}", job_page),
        Route("/_/jobs/{job_id}", job_page),
        Route("/jobs/{job_id}/{action}", job_action, methods=["POST"]),
        Route("/dead", dead_page),
        Route("/dead/requeue", dead_requeue, methods=["POST"]),
        Route("/dead/purge", dead_purge, methods=["POST"]),
        Route("/schedules", schedules_page),
        Route("/schedules/{name}/run", schedule_run, methods=["POST"]),
        Route("/workflows", workflows_page),
        Route("/_/workflows", workflows_page),
        Route("/workflows/{run_id}", workflow_page),
        Route("/_/workflows/{run_id}", workflow_page),
        Route("/workflows/{run_id}/cancel", workflow_cancel, methods=["POST"]),
        Route("/enqueue", enqueue_list),
        Route("/enqueue/{name}", enqueue_form, methods=["GET"]),
        Route("/enqueue/{name}", enqueue_submit, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("forgejobs.dashboard", "static")]), name="static"),
    ]
    if config.metrics:
        routes.append(Route("/metrics", metrics))
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, redis.RedisError: redis_error})
    return app


def _explain(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))


def _page(text: str | None) -> int:
    try:
        return max(1, min(int(text or 1), 10_000))
    except ValueError:
        return 1


def _query(**params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"?{urlencode(kept)}" if kept else ""


def _safe_next(target: str) -> str:
    """A path inside the dashboard to go back to; anything else (another site, a scheme) becomes "/"."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or "://" in target:
        return "/"
    return target


def _read_flash(request: Request, signer: Signer) -> dict[str, str | None] | None:
    from urllib.parse import unquote

    raw = request.cookies.get(FLASH_COOKIE)
    if not raw or "." not in raw:
        return None
    quoted, _, signature = raw.rpartition(".")
    body = unquote(quoted)
    if signer.sign("flash", body) != signature:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
