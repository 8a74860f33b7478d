"""Every error of a /v1 or /api path is JSON in the API's one shape, with DEBUG off and on:
an unknown route (404), a method the route does not take (405), a crash inside a view (500),
a bad Host (400). No HTML, no traceback, nothing of the settings. Other paths keep HTML.
Checked through Django's test client, then against a real daphne with run.sh's settings."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import django.contrib.admin
import pytest
from django.conf import settings
from django.test import Client

from sandboxes.api.views import HealthView
from tests.support import stack
from tests.support.stack import Api

# What an error page must never show: Django's debug pages name these.
LEAKS = ("Traceback", "<html", "<!DOCTYPE", "SECRET_KEY", "DATABASES", "urlpatterns", 'File "')
CRASH_DETAIL = "postgres://vsb:hunter2@db.internal/prod"


def assert_json_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "fields", "message"]
    assert body["error"]["code"] == code and body["error"]["fields"] == {}
    text = response.content.decode()
    assert not [leak for leak in LEAKS if leak in text], text
    return body


@pytest.fixture(params=[False, True], ids=["debug-off", "debug-on"])
def client(request, settings, db):
    settings.DEBUG = request.param
    return Client(raise_request_exception=False)


@pytest.mark.parametrize(
    "path", ["/v1/no-such-route", "/api/no-such-route", "/api/v1/tmux/nope", "/v1", "/api"]
)
def test_an_unknown_api_route_is_a_json_404(client, path):
    body = assert_json_error(client.get(path), 404, "not_found")
    assert body["error"]["message"] == "Not found."


@pytest.mark.parametrize(
    "method, path",
    [("put", "/v1/health"), ("post", "/api/docs/"), ("post", "/api/schema/")],
)
def test_a_method_the_route_does_not_take_is_a_json_405(client, method, path):
    response = getattr(client, method)(path)
    body = assert_json_error(response, 405, "method_not_allowed")
    assert body["error"]["message"] == f'Method "{method.upper()}" not allowed.'
    assert "GET" in response["Allow"]


def test_a_crash_inside_a_view_is_a_json_500_without_its_detail(client, monkeypatch):
    def crash(self, request):
        raise RuntimeError(f"cannot reach {CRASH_DETAIL}")

    monkeypatch.setattr(HealthView, "get", crash)
    response = client.get("/v1/health")
    body = assert_json_error(response, 500, "server_error")
    assert body["error"]["message"] == "Internal server error."
    assert "hunter2" not in response.content.decode()
    assert response["X-Request-ID"], "the request id still reaches the caller"


def test_a_database_that_does_not_answer_is_a_503_to_try_again_without_its_detail(
    client, monkeypatch
):
    from django.db import OperationalError

    def unreachable(self, request):
        raise OperationalError(f"connection to {CRASH_DETAIL} refused")

    monkeypatch.setattr(HealthView, "get", unreachable)
    response = client.get("/v1/health")
    body = assert_json_error(response, 503, "database_unavailable")
    assert "Try again in 5 s" in body["error"]["message"]
    assert response["Retry-After"] == "5"
    assert "hunter2" not in response.content.decode()


def test_a_bad_host_on_an_api_path_is_a_json_400(client):
    assert_json_error(client.get("/v1/health", HTTP_HOST="evil.example"), 400, "bad_request")


def test_pages_outside_the_api_keep_html_errors(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


def test_the_api_docs_page_is_still_html(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")


@pytest.fixture(scope="module")
def production_server(tmp_path_factory):
    """daphne with run.sh's settings (DEBUG off, generated keys) on a database that does not
    exist: every query raises, as on a server whose PostgreSQL went away, and the errors'
    texts name the database. Static files from a STATIC_ROOT as collectstatic leaves it."""
    data = tmp_path_factory.mktemp("data")
    static = data / "static" / "admin" / "css"
    static.mkdir(parents=True)
    shutil.copy(Path(django.contrib.admin.__file__).parent / "static/admin/css/base.css", static)
    port = stack.free_port()
    db = settings.DATABASES["default"]
    web = stack.daphne(
        port,
        DJANGO_SETTINGS_MODULE="config.settings.production",
        VSB_DATA_DIR=str(data),
        VSB_STATIC_ROOT=str(data / "static"),
        DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD']}@127.0.0.1:5432/vsb_gone_db",
        REDIS_URL=settings.REDIS_URL,
    )
    web.start()
    try:
        url = f"http://127.0.0.1:{port}"
        stack.wait_for_http(f"{url}/v1/health", web)
        yield url
    finally:
        web.stop()


@pytest.mark.integration
def test_a_production_server_answers_api_errors_as_json(production_server):
    anonymous, agent = Api(production_server, None), Api(production_server, "vsb_any_key")
    for path in ("/v1/no-such-route", "/api/no-such-route"):
        status, body = anonymous.get(path)
        assert (status, body["error"]["code"]) == (404, "not_found")
    # The API key lookup hits the missing database inside the view: come back later, and
    # nothing about where the database is.
    for status, body in (
        agent.get("/v1/sandboxes"),
        # The blocking ask is a bare ASGI app ahead of Django: the same answer.
        agent.post("/api/v1/human/ask", {"prompt": "may I?"}),
    ):
        assert (status, body["error"]["code"]) == (503, "database_unavailable"), body
        assert "vsb_gone_db" not in str(body)
    # Health tells anyone the database is down, not where it is.
    status, body = anonymous.get("/v1/health")
    assert (status, body["database"]) == (503, "error")
    assert "vsb_gone_db" not in str(body)


@pytest.mark.integration
def test_a_malformed_multipart_body_reaches_the_api_and_gets_its_json_answer(production_server):
    # twisted (under daphne) used to refuse a multipart body it cannot split with an empty
    # 400 before the API saw it (config/http_server.py).
    request = urllib.request.Request(
        f"{production_server}/v1/sandboxes",
        data=b"--x\r\nnot a part at all",
        method="POST",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    assert answer.value.code == 401  # no key: the API's answer, in its shape
    body = json.loads(answer.value.read())
    assert body["error"]["code"] == "not_authenticated", body


@pytest.mark.integration
def test_a_production_server_keeps_html_pages_and_serves_static_files(production_server):
    status, body = Api(production_server, None).get("/no-such-page")
    assert status == 404 and "<" in body["raw"] and "Traceback" not in body["raw"]
    with urllib.request.urlopen(f"{production_server}/static/admin/css/base.css") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/css")
