"""The processes' log lines, as settings configure them."""

import os
import re
import subprocess
import threading
import time
import uuid

import pytest
from celery.signals import task_postrun, task_prerun

from common import request_ids
from inferencehub.celery import REQUEST_ID_HEADER
from stack.harness import PYTHON
from tests.conftest import DATA, REPO
from webhooks.tasks import deliver

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
    # The route as a template, as the request's span is named: not the path, not a regex.
    assert lines[0].getMessage().startswith("GET /api/jobs/<pk>/ ")


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


def test_tasks_run_at_once_in_threads_each_take_up_and_put_down_their_own_request_id():
    # The webhooks worker runs one task object in 16 threads (the threads pool): what a
    # task run keeps between its prerun and postrun must be that run's, not the task's.
    task = deliver
    both_up = threading.Barrier(2)
    first_down = threading.Event()
    seen: dict[str, tuple] = {}

    def run(request_id: str, goes_down_first: bool) -> None:
        task.push_request(**{REQUEST_ID_HEADER: request_id})
        try:
            task_prerun.send(sender=task, task_id=request_id, task=task)
            both_up.wait(10)
            if not goes_down_first:
                first_down.wait(10)
            during = request_ids.current.get()
            task_postrun.send(sender=task, task_id=request_id, task=task)
            first_down.set()
            seen[request_id] = (during, request_ids.current.get())
        finally:
            task.pop_request()

    threads = [
        threading.Thread(target=run, args=("first", False)),
        threading.Thread(target=run, args=("second", True)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Each run's lines carry its id while it runs, and the thread none after it.
    assert seen == {"first": ("first", None), "second": ("second", None)}
