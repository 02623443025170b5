"""The app processes under a real supervisord (stack/supervise.py): a process that dies is
restarted and the exit logged, and status and stack_status say when one is down."""

import configparser
import os
import re
import shlex
import signal
import time

import pytest
from django.core.management import CommandError, call_command

from predictions.management.commands import stack_status
from stack import processes
from stack.common import StackError
from stack.harness import PYTHON
from stack.processes import AppProcess
from stack.supervise import Supervisor

# Seconds each (a real model exported, loaded or run, or processes started): make test
# runs them, make test-fast leaves them out (tests/conftest.py).
pytestmark = pytest.mark.slow

SLEEPER = AppProcess(
    "sleeper", [PYTHON, "-c", "import time; print('up', flush=True); time.sleep(600)"], "up"
)
CRASHER = AppProcess("crasher", [PYTHON, "-c", "print('up', flush=True); exit(3)"], "up")


@pytest.fixture
def supervisor(tmp_path):
    supervisor = Supervisor(tmp_path, tmp_path / "logs", start_seconds=1)
    yield supervisor
    supervisor.stop([])


def pid_of(supervisor: Supervisor, name: str) -> int:
    return int(re.search(r"pid (\d+)", supervisor.states()[name]).group(1))


def test_supervisord_runs_each_process_of_the_table_with_its_command_line(tmp_path):
    apps = processes.local_stack(PYTHON, web_host="127.0.0.1", web_port=8000, beat_schedule="s")
    # supervisord expands %(...)s and %% in values as ConfigParser's interpolation does.
    config = configparser.ConfigParser()
    config.read_string(Supervisor(tmp_path, tmp_path / "logs").config(apps))
    programs = {
        section.removeprefix("program:"): shlex.split(config[section]["command"])
        for section in config.sections()
        if section.startswith("program:")
    }
    assert programs == {app.name: app.argv for app in apps}
    assert "celery@%h" in programs["celery"]


def test_a_killed_app_process_is_restarted_and_the_exit_logged(supervisor):
    supervisor.up([SLEEPER], ["sleeper"], timeout=60)
    first = pid_of(supervisor, "sleeper")
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = supervisor.states()["sleeper"]
        if state.startswith("RUNNING") and pid_of(supervisor, "sleeper") != first:
            break
        time.sleep(0.2)
    assert supervisor.states()["sleeper"].startswith("RUNNING")
    assert pid_of(supervisor, "sleeper") != first
    log = (supervisor.logs / "supervisord.log").read_text()
    assert "exited: sleeper (terminated by SIGKILL; not expected)" in log


def test_up_fails_naming_a_process_that_keeps_dying(supervisor):
    with pytest.raises(StackError, match="FAILED: crasher: FATAL"):
        supervisor.up([CRASHER], ["crasher"], timeout=60)


@pytest.mark.django_db
def test_status_and_stack_status_fail_while_an_app_process_is_down(supervisor, monkeypatch, capsys):
    supervisor.up([SLEEPER, CRASHER], ["sleeper"], timeout=60)
    assert supervisor.report() is False
    assert re.search(r"crasher .*(BACKOFF|FATAL|STARTING)", capsys.readouterr().out)
    monkeypatch.setattr(stack_status, "STATE", supervisor.state)
    monkeypatch.setattr(stack_status, "LOGS", supervisor.logs)
    with pytest.raises(CommandError, match="app processes down or restarting: crasher"):
        call_command("stack_status")
    out = capsys.readouterr().out
    assert re.search(r"sleeper +RUNNING", out)


def test_stopping_ends_supervisord_and_its_processes(supervisor):
    supervisor.up([SLEEPER], ["sleeper"], timeout=60)
    pid = pid_of(supervisor, "sleeper")
    supervisor.stop([])
    assert supervisor.states() is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
