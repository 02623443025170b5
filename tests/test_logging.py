"""The processes' log lines, as settings configure them."""

import os
import subprocess

from stack.harness import PYTHON
from tests.conftest import REPO

LOG_ONE_WARNING = """
import django, logging
django.setup()
logging.getLogger("django.request").warning("Not Found: /nowhere")
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
    lines = [line for line in run.stderr.splitlines() if "Not Found: /nowhere" in line]
    assert len(lines) == 1, run.stderr
    assert " WARNING django.request Not Found: /nowhere" in lines[0]
