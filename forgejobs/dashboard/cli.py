"""`forgejobs dashboard --port N [--host H] [--read-only]`: serve the dashboard with uvicorn."""

from __future__ import annotations

import os
import socket
import sys

import click

from ..cliutil import _fail
from ..errors import ForgeJobsError
from ..settings import Settings


@click.command("dashboard")
@click.option("--port", type=click.IntRange(1, 65535), default=9188, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option(
    "--read-only", is_flag=True, help="Show no action and refuse every one (also FORGEJOBS_DASHBOARD_READ_ONLY=1)."
)
@click.pass_obj
def dashboard(settings: Settings, port: int, host: str, read_only: bool) -> None:
    """Serve the web dashboard at http://HOST:PORT/. Needs FORGEJOBS_DASHBOARD_TOKEN (or
    FORGEJOBS_DASHBOARD_USERNAME and FORGEJOBS_DASHBOARD_PASSWORD); see docs/dashboard.md."""
    try:
        import uvicorn

        from . import create_app
    except ModuleNotFoundError as exc:
        _fail(
            f"forgejobs dashboard needs the dashboard extra ({exc.name} is missing): pip install 'forgejobs[dashboard]'"
        )
    sys.path.insert(0, ".")  # the job package lives in the project directory
    try:
        app = create_app(settings, read_only=read_only)
    except ForgeJobsError as exc:
        _fail(str(exc))
    try:  # listen before saying so: a port in use is one line and status 1, not uvicorn's log and status 3
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        _fail(f"--port {port}: cannot listen on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}")
    mode = " (read-only)" if read_only else ""
    click.echo(f"serving the dashboard{mode} on http://{host}:{port}/", err=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[listener])
