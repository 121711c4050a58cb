"""The dashboard mounted at /admin/queues in a Flask app (through the a2wsgi adapter) and in front of a Django
ASGI application, as docs/dashboard.md shows: login, pages, static files and an action under the prefix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from forgejobs import Client, Registry, Settings, set_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.dashboard import TokenAuth, create_app
from tests.helpers import csrf_of

pytestmark = pytest.mark.redis

TOKEN = "mount-test-token"


@pytest.fixture
def dash_client(conn: redis.Redis, settings: Settings) -> Iterator[Client]:
    c = Client(RedisBackend(conn), Registry.load(settings))
    previous = set_client(c)
    yield c
    set_client(previous)


def test_mounted_in_flask_through_a2wsgi(dash_client: Client) -> None:
    from a2wsgi import ASGIMiddleware
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    # given a Flask app with a route of its own and the dashboard at /admin/queues, as the docs show
    app = Flask("shop")
    app.add_url_rule("/", "home", lambda: "the shop")
    dashboard = create_app(client=dash_client, auth=TokenAuth(TOKEN))
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/admin/queues": ASGIMiddleware(dashboard)})  # type: ignore[method-assign, dict-item, arg-type]
    browser = app.test_client()

    # then the app's own route still answers, and the dashboard asks for a login under its prefix
    assert browser.get("/").get_data(as_text=True) == "the shop"
    first = browser.get("/admin/queues/")
    assert first.status_code in (302, 303, 307) and first.headers["location"].startswith("/admin/queues/login")

    # when an operator logs in with the token
    login = browser.get("/admin/queues/login")
    assert login.status_code == 200
    reply = browser.post(
        "/admin/queues/login", data={"csrf_token": csrf_of(login.get_data(as_text=True)), "secret": TOKEN, "next": "/"}
    )
    assert reply.status_code == 303, reply.get_data(as_text=True)

    # then pages, links and static files all live under the prefix, and an action works
    page = browser.get("/admin/queues/")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and 'href="/admin/queues/queues/fast"' in text
    assert browser.get("/admin/queues/static/dashboard.css").status_code == 200
    paused = browser.post("/admin/queues/queues/fast/pause", data={"csrf_token": csrf_of(text), "back": "/"})
    assert paused.status_code == 303
    assert "fast" in dash_client.paused()
    dash_client.resume("fast")


urlpatterns: list[Any] = []  # Django's URL conf for the test below: a single view, added in the test


def test_mounted_in_front_of_a_django_asgi_application(dash_client: Client) -> None:
    import django  # type: ignore[import-untyped]
    from django.conf import settings as django_settings  # type: ignore[import-untyped]
    from django.core.asgi import get_asgi_application  # type: ignore[import-untyped]
    from django.http import HttpResponse  # type: ignore[import-untyped]
    from django.test.utils import override_settings  # type: ignore[import-untyped]
    from django.urls import path  # type: ignore[import-untyped]
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    if not django_settings.configured:
        django_settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    urlpatterns[:] = [path("", lambda request: HttpResponse("the django site"))]
    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["testserver"]):
        # given the asgi.py of docs/dashboard.md: the dashboard first, Django for the rest
        application = Starlette(
            routes=[
                Mount("/admin/queues", create_app(client=dash_client, auth=TokenAuth(TOKEN))),
                Mount("/", get_asgi_application()),
            ]
        )
        browser = TestClient(application, follow_redirects=False)

        # then Django serves its pages and the dashboard serves its own under the prefix
        assert browser.get("/").text == "the django site"
        login = browser.get("/admin/queues/login")
        assert login.status_code == 200
        reply = browser.post(
            "/admin/queues/login", data={"csrf_token": csrf_of(login.text), "secret": TOKEN, "next": "/"}
        )
        assert reply.status_code == 303
        page = browser.get("/admin/queues/")
        assert page.status_code == 200 and 'href="/admin/queues/queues/fast"' in page.text
