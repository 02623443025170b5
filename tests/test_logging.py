"""The processes' log lines, as settings configure them."""

import os
import re
import subprocess
import time
import uuid

import pytest

from stack.harness import PYTHON
from tests.conftest import DATA, REPO

LOG_ONE_WARNING = """
import django, logging
django.setup()
logging.getLogger("django.security.DisallowedHost").warning("Invalid HTTP_HOST header")
"""


def test_a_django_warning_is_logged_once_with_its_time_and_level():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "inferencehub.settings",
        "DJANGO_DEBUG": "true",
        "LOG_FORMAT": "plain",
    }
    run = subprocess.run(
        [PYTHON, "-c", LOG_ONE_WARNING], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "Invalid HTTP_HOST" in line]
    assert len(lines) == 1, run.stderr
    assert " WARNING django.security.DisallowedHost [-] Invalid HTTP_HOST header" in lines[0]


def test_a_django_4xx_answer_is_logged_once_by_its_access_line(client, caplog):
    with caplog.at_level("INFO"):
        response = client.get("/api/jobs/not-a-job/", HTTP_X_REQUEST_ID="lost-1")
    assert response.status_code in (401, 403, 404)
    assert response["X-Request-ID"] == "lost-1"
    lines = [r for r in caplog.records if "/api/jobs/" in r.getMessage()]
    assert [r.name for r in lines] == ["inferencehub.access"], lines
    assert lines[0].request_id == "lost-1"
    assert f" {response.status_code} " in lines[0].getMessage()


def test_a_request_id_that_is_not_plain_is_replaced(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="a b\nc")
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


@pytest.mark.django_db(transaction=True)
def test_an_uploads_request_id_reaches_the_celery_lines_of_its_preprocessing(pipeline, api):
    request_id = f"test-{uuid.uuid4().hex[:12]}"
    response = api.post(
        f"{api.base_url}/api/jobs/",
        files={"image": ("fox.png", (DATA / "fox.png").read_bytes())},
        headers={"X-Request-ID": request_id},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    assert response.headers["X-Request-ID"] == request_id
    job_id = response.json()["id"]
    log = pipeline["celery"].log_path
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if f"[{request_id}]" in line]
        if any(job_id in line or "succeeded" in line for line in lines):
            break
        time.sleep(0.5)
    assert lines, f"no line of {log.name} has the request id"
