"""The demo user `make run` creates: no published password, no superuser, loopback only;
and the bootstrap command that creates it."""

import ast
import re
import subprocess

import pytest
from django.core.management import call_command
from django.http import HttpRequest

from tests.conftest import REPO

OLD_PUBLISHED_PASSWORD = "demo-password"


PRINTED = re.compile(r"'(?P<user>\w+)'.*password: (?P<password>\S+), API token: (?P<token>\w+)")


def ensure_demo_user(capsys, password_file, username="demo") -> re.Match:
    call_command("ensure_demo_user", "--username", username, "--password-file", str(password_file))
    return PRINTED.search(capsys.readouterr().out)


@pytest.mark.django_db
def test_demo_password_is_generated_kept_across_runs_and_printed(capsys, tmp_path):
    password_file = tmp_path / "demo-password"
    first = ensure_demo_user(capsys, password_file)
    second = ensure_demo_user(capsys, password_file)
    assert first["password"] != OLD_PUBLISHED_PASSWORD
    assert len(first["password"]) >= 20
    assert second["password"] == first["password"] == password_file.read_text().strip()
    assert second["token"] == first["token"]
    assert password_file.stat().st_mode & 0o077 == 0


@pytest.mark.django_db
def test_demo_password_differs_between_stacks(capsys, tmp_path):
    one = ensure_demo_user(capsys, tmp_path / "one")["password"]
    other = ensure_demo_user(capsys, tmp_path / "other")["password"]
    assert one != other


@pytest.mark.django_db
def test_demo_user_is_staff_with_job_admin_but_not_superuser(capsys, tmp_path, client):
    printed = ensure_demo_user(capsys, tmp_path / "demo-password")
    # A request: the sign-in throttle (django-axes) counts by its address.
    assert client.login(request=HttpRequest(), username="demo", password=printed["password"])
    assert client.get("/admin/predictions/job/").status_code == 200
    assert client.get("/admin/predictions/batch/").status_code == 200
    assert client.get("/admin/auth/user/").status_code == 403


@pytest.mark.django_db
def test_an_existing_demo_superuser_with_the_old_password_is_demoted(
    capsys, tmp_path, django_user_model, client
):
    django_user_model.objects.create_superuser("demo", password=OLD_PUBLISHED_PASSWORD)
    ensure_demo_user(capsys, tmp_path / "demo-password")
    demo = django_user_model.objects.get(username="demo")
    assert demo.is_staff and not demo.is_superuser
    assert not client.login(request=HttpRequest(), username="demo", password=OLD_PUBLISHED_PASSWORD)


def test_make_run_serves_the_web_on_loopback_by_default():
    shown = subprocess.run(
        ["python3", "-c", "from stack.cli import APPS; print({a.name: a.argv for a in APPS})"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    argv = ast.literal_eval(shown)
    # Users reach nginx; gunicorn behind it listens on loopback too.
    assert argv["proxy"][argv["proxy"].index("--listen") + 1] == "127.0.0.1:8000"
    assert argv["web"][argv["web"].index("--bind") + 1] == "127.0.0.1:8001"


@pytest.mark.django_db
def test_bootstrap_twice_prepares_topics_and_keeps_the_demo_user(capsys, tmp_path, kafka_topics):
    password_file = tmp_path / "demo-password"
    for _ in range(2):
        call_command("bootstrap", "--username", "demo", "--password-file", str(password_file))
        out = capsys.readouterr().out
        assert f"{kafka_topics[0]}: exists" in out
    assert PRINTED.search(out)["password"] == password_file.read_text().strip()
