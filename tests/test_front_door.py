"""The front door: nginx (stack/nginx.conf, rendered by manage.py run_proxy) in front of
gunicorn, run as `make run` runs them, against the test settings."""

import http.client
import json
import re
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings

from stack import processes
from stack.common import WEB_APP_PORT, WEB_HOST, WEB_PORT
from stack.harness import PYTHON, free_port
from tests.conftest import LOGS, start_front_door
from tests.settings import RUN_ID

pytestmark = pytest.mark.services


def post_head_only(base_url: str, path: str, content_length: int) -> http.client.HTTPResponse:
    """POST a request head announcing a body, and read the answer without sending it."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(content_length))
    conn.endheaders()
    return conn.getresponse()


def test_users_reach_nginx_on_the_readme_address_and_gunicorn_listens_on_loopback_only():
    local = processes.local_stack(
        "python",
        web_host=WEB_HOST,
        web_port=WEB_PORT,
        beat_schedule="s",
        app_port=WEB_APP_PORT,
        proxy_dir="d",
    )
    apps = {app.name: app for app in local}
    listen = apps["proxy"].argv[apps["proxy"].argv.index("--listen") + 1]
    assert listen == f"{WEB_HOST}:{WEB_PORT}"
    gunicorn = apps["web"].argv
    assert gunicorn[gunicorn.index("--bind") + 1] == f"127.0.0.1:{WEB_APP_PORT}"


def test_the_front_door_serves_the_app(front_door):
    response = requests.get(f"{front_door}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.headers["Server"] == "nginx"


@pytest.mark.django_db(transaction=True)
def test_the_proxy_refuses_an_oversized_body_with_the_apps_json_error_shape(front_door, client):
    too_large = settings.REQUEST_MAX_BYTES + 1
    answered = post_head_only(front_door, "/api/jobs/", too_large)
    # The app's own answer to the same request head.
    app_answer = client.post(
        "/api/jobs/", b"", content_type="application/octet-stream", CONTENT_LENGTH=too_large
    )
    assert answered.status == app_answer.status_code == 413
    assert answered.getheader("Content-Type") == "application/json"
    assert json.loads(answered.read()) == app_answer.json()


@pytest.fixture(scope="module")
def proxy_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("proxy")


@pytest.fixture(scope="module")
def small_front_door(start_process, proxy_dir) -> str:
    """A front door whose app and proxy both have REQUEST_MAX_BYTES=100000, and the
    anonymous throttle at 3 requests an hour counted under a cache prefix of its own."""
    return start_front_door(
        start_process,
        name="small-front-door",
        directory=str(proxy_dir),
        REQUEST_MAX_BYTES="100000",
        API_THROTTLE_ANON="3/hour",
        INFERENCEHUB_TEST_RUN_ID=f"{RUN_ID}-{uuid.uuid4().hex[:6]}",
    )


def test_the_proxy_takes_its_body_limit_from_the_apps_setting_also_for_a_chunked_body(
    small_front_door,
):
    # Without a Content-Length the app's own check (common/uploads.py) cannot see the
    # size: only the proxy, counting the body as it reads it, refuses it.
    chunks = (b"x" * 10_000 for _ in range(20))
    response = requests.post(f"{small_front_door}/api/jobs/", data=chunks, timeout=30)
    assert response.status_code == 413
    assert response.json() == {"error": "the request body is over the limit of 100000 bytes"}


def test_the_proxy_and_the_app_log_a_request_under_one_id_the_clients_when_sane(
    small_front_door, proxy_dir
):
    mine = f"client-{uuid.uuid4().hex}"
    kept = requests.get(f"{small_front_door}/healthz", headers={"X-Request-ID": mine}, timeout=10)
    replaced = requests.get(
        f"{small_front_door}/healthz", headers={"X-Request-ID": "no spaces allowed"}, timeout=10
    )
    made = requests.get(f"{small_front_door}/healthz", timeout=10)
    # Refused by nginx itself: the app never sees it, the client still gets an id.
    refused = requests.post(
        f"{small_front_door}/api/jobs/", data=(b"x" * 10_000 for _ in range(20)), timeout=30
    )
    assert kept.headers["X-Request-ID"] == mine
    ids = [answer.headers["X-Request-ID"] for answer in (kept, replaced, made, refused)]
    assert all(re.fullmatch("[0-9a-f]{32}", new) for new in ids[1:]), ids
    assert len(set(ids)) == 4
    proxy_lines = (proxy_dir / "access.log").read_text()
    app_lines = (LOGS / "small-front-door-app.log").read_text()
    for request_id in ids:
        assert f"[{request_id}]" in proxy_lines
    for request_id in ids[:3]:
        assert f"[{request_id}] GET /healthz" in app_lines


def test_a_forged_x_forwarded_for_does_not_escape_the_anonymous_throttle(small_front_door):
    statuses = [
        requests.get(
            f"{small_front_door}/api/jobs/{uuid.uuid4()}/",
            headers={"X-Forwarded-For": f"203.0.113.{i}"},
            timeout=10,
        ).status_code
        for i in range(4)
    ]
    assert statuses == [404, 404, 404, 429]


def upstreams(proxy_dir: Path) -> dict[str, str]:
    """Which address answered each request path, from the proxy's access log."""
    log = (proxy_dir / "access.log").read_text().splitlines()
    return {line.split('"')[1].split()[1]: line.split(" upstream ")[1].split()[0] for line in log}


def test_only_held_requests_go_to_the_held_process(small_front_door, proxy_dir):
    conf = (proxy_dir / "nginx.conf").read_text()
    app, held = (
        re.search(rf"upstream {name} {{\s*server (\S+);", conf)[1] for name in ("app", "held")
    )
    assert app != held
    job, batch = uuid.uuid4(), uuid.uuid4()
    paths = {
        f"/api/jobs/{job}/?wait=1": held,
        f"/api/jobs/{job}?wait=1": held,
        f"/api/batches/{batch}/events/?since=0": held,
        f"/api/batches/{batch}/events": held,
        f"/api/jobs/{job}/": app,
        f"/api/jobs/{job}/?wait=": app,
        f"/api/batches/{batch}/": app,
        "/healthz": app,
    }
    for path in paths:
        requests.get(f"{small_front_door}{path}", timeout=10)
    # nginx writes a request's log line as it finishes with it, a moment after the answer.
    deadline = time.monotonic() + 10
    while not set(paths) <= set(upstreams(proxy_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {path: upstreams(proxy_dir).get(path) for path in paths} == paths


def test_an_app_that_does_not_answer_gets_the_apps_json_error_shape(start_process):
    port = free_port()
    nothing_listens = f"127.0.0.1:{free_port()}"
    directory = tempfile.mkdtemp(prefix="inferencehub-proxy-without-app-")
    start_process(
        processes.proxy(PYTHON, port=port, app=nothing_listens, directory=directory),
        name="proxy-without-app",
    )
    response = requests.get(f"http://127.0.0.1:{port}/api/jobs/", timeout=10)
    assert response.status_code == 502
    assert response.headers["Retry-After"] == "5"
    assert set(response.json()) == {"error"}
