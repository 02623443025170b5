"""Production settings pass Django's deployment checks, and an oversized request is refused
by its headers."""

import os
import secrets
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO


def test_check_deploy_is_clean_with_production_settings():
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="inferencehub.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
    )
    checked = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env.update(DJANGO_SETTINGS_MODULE="inferencehub.settings", DJANGO_DEBUG="false")
    checked = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "check"], env=env, capture_output=True, text=True
    )
    assert checked.returncode != 0
    assert "DJANGO_SECRET_KEY" in checked.stderr


@pytest.mark.django_db
def test_huge_content_length_is_refused_with_413_before_the_body_is_sent(live_server, settings):
    host, port = urlsplit(live_server.url).hostname, urlsplit(live_server.url).port
    head = (
        "POST /api/jobs/ HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {settings.REQUEST_MAX_BYTES + 1}\r\n"
        "\r\n"
        "--x\r\n"
    )
    response = ""
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.sendall(head.encode())
        # The body is never sent: a server waiting to read it would time this out.
        while "}" not in response:
            chunk = conn.recv(65536).decode(errors="replace")
            if not chunk:
                break
            response += chunk
    status_line, _, rest = response.partition("\r\n")
    assert " 413 " in status_line, response
    assert '"error": "the request body is' in rest
