"""Management commands against the real services: submit through the live server and
pipeline, purge_images on real stored files, stack_status, and a bridge's clean stop."""

import json
import signal
import subprocess
import uuid
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.authtoken.models import Token

from predictions import uploads
from predictions.client import InferenceHubClient
from predictions.models import Job
from stack import processes
from stack.harness import PYTHON
from tests.conftest import DATA, REPO, manage


def run_submit(user, process_env, *args: str, token: str = "") -> subprocess.CompletedProcess:
    """`manage.py submit ARGS` in a process of its own, with a token of the user's unless
    one is given."""
    return subprocess.run(
        manage("submit", *args),
        cwd=REPO,
        env={**process_env, "INFERENCEHUB_TOKEN": token or Token.objects.create(user=user).key},
        capture_output=True,
        text=True,
        timeout=300,
    )


def uploads_answered(status: int) -> float:
    """Uploads the live server (a thread of this process) has answered with status."""
    labels = {"method": "POST", "route": "job-list", "status": str(status)}
    return (
        REGISTRY.get_sample_value("inferencehub_http_request_duration_seconds_count", labels) or 0
    )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_submit_uploads_a_folder_and_prints_one_json_line_per_photo(
    pipeline, live_server, user, process_env
):
    completed = run_submit(
        user,
        process_env,
        *(str(DATA), "--server", live_server.url, "--top-k", "3", "--json"),
        *("--batch", "new", "--concurrency", "2"),
    )
    assert completed.returncode == 0, completed.stderr
    results = [json.loads(line) for line in completed.stdout.splitlines()]
    photos = [r for r in results if r["status"] != "skipped"]
    assert sorted(r["file"].rsplit("/", 1)[1] for r in photos) == [
        "bolete.jpg",
        "fox.png",
        "toaster.png",
    ]
    assert all(r["status"] == "succeeded" and len(r["predictions"]) == 3 for r in photos)
    assert all(r["random_weights"] for r in photos)
    # The folder's README is listed, not sent.
    assert [r["file"] for r in results if r["status"] == "skipped"] == [str(DATA / "README.md")]
    (batch,) = {r["batch"] for r in photos}
    assert "uploaded 3/3" in completed.stderr and "3/3 finished, 0 failed" in completed.stderr
    assert "files/s" in completed.stderr
    assert "3 succeeded, 1 skipped in " in completed.stderr
    assert f"batch page: {live_server.url}/batches/{batch}/" in completed.stderr


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_submit_sends_several_images_per_upload_and_a_bad_file_refuses_only_itself(
    pipeline, live_server, user, process_env, tmp_path
):
    for name in ("bolete.jpg", "fox.png", "toaster.png"):
        (tmp_path / name).write_bytes((DATA / name).read_bytes())
    (tmp_path / "notes.jpg").write_text("not a photo\n")
    completed = run_submit(user, process_env, str(tmp_path), "--server", live_server.url, "--json")
    assert completed.returncode == 1, completed.stderr  # one file was not classified
    assert "1 of 4 files not classified" in completed.stderr
    results = {
        r["file"].rsplit("/", 1)[1]: r for r in map(json.loads, completed.stdout.splitlines())
    }
    assert results["notes.jpg"]["status"] == "rejected"
    assert "not an image" in results["notes.jpg"]["error"]
    assert {results[name]["status"] for name in ("bolete.jpg", "fox.png", "toaster.png")} == {
        "succeeded"
    }
    assert Job.objects.count() == 3


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_submit_prints_a_table_with_the_top_label_and_score(pipeline, live_server, user, capsys):
    token = Token.objects.create(user=user).key
    call_command("submit", str(DATA / "fox.png"), server=live_server.url, token=token)
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["file", "job", "id", "status", "top-1", "label", "score", "note"]
    job = Job.objects.get()
    assert row.split()[:3] == [str(DATA / "fox.png"), str(job.pk), "succeeded"]
    assert 0 <= float(row.split()[-3]) <= 1
    assert row.endswith("random weights")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("args", "token", "error"),
    [
        ([], "not-a-token", "HTTP 401: Invalid token."),
        (["--batch", "123"], "", "HTTP 400: batch: Must be a valid UUID."),
    ],
    ids=["wrong token", "bad batch id"],
)
def test_submit_stops_at_a_refusal_every_upload_would_get_and_exits_2(
    live_server, user, process_env, args, token, error
):
    refused_before = uploads_answered(401) + uploads_answered(400)
    completed = run_submit(
        user,
        process_env,
        *(str(DATA), "--server", live_server.url, "--json"),
        *("--per-request", "2", "--concurrency", "1", *args),
        token=token,
    )
    assert completed.returncode == 2, completed.stderr
    assert "no file could be sent" in completed.stderr
    results = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [r["status"] for r in results] == ["rejected", "rejected", "rejected", "skipped"]
    assert {r["error"] for r in results[:3]} == {error}
    # One request, not one per request of two files and then one per file.
    assert uploads_answered(401) + uploads_answered(400) - refused_before == 1
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_submit_whose_wait_is_refused_still_lists_every_job_and_exits_1(
    live_server, user, capsys, monkeypatch
):
    upload = InferenceHubClient.upload

    def upload_then_delete_the_first_job(self, *args, **kwargs):
        uploaded = upload(self, *args, **kwargs)
        Job.objects.filter(pk=uploaded[0]["id"]).delete()  # by someone else, meanwhile
        return uploaded

    monkeypatch.setattr(InferenceHubClient, "upload", upload_then_delete_the_first_job)
    token = Token.objects.create(user=user).key
    files = [str(DATA / "fox.png"), str(DATA / "toaster.png")]
    with pytest.raises(CommandError) as refused:
        call_command("submit", *files, "--per-request", "1", server=live_server.url, token=token)
    assert refused.value.returncode == 1
    assert "waiting stopped at job" in str(refused.value) and "HTTP 404" in str(refused.value)
    _header, *rows = capsys.readouterr().out.splitlines()
    # Each file with its job id, as the upload answered: nothing sent is lost from view.
    assert sorted(row.split()[0] for row in rows) == sorted(files)
    kept = Job.objects.get()
    assert [str(kept.pk), "queued"] in [row.split()[1:3] for row in rows]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_submit_out_of_time_prints_every_job_id_and_status_and_exits_1(
    live_server, user, process_env
):
    completed = run_submit(
        user,
        process_env,
        str(DATA / "fox.png"),
        str(DATA / "toaster.png"),
        *("--server", live_server.url, "--timeout", "0"),
    )
    assert completed.returncode == 1, completed.stderr
    assert "2 of 2 jobs unfinished after 0 s" in completed.stderr
    header, *rows = completed.stdout.splitlines()
    assert header.split()[:4] == ["file", "job", "id", "status"]
    listed = {row.split()[1]: row.split()[2] for row in rows}
    assert set(listed) == {str(pk) for pk in Job.objects.values_list("pk", flat=True)}
    assert all(status not in ("succeeded", "failed") for status in listed.values())


def test_submit_help_shows_the_defaults():
    from predictions.management.commands.submit import Command

    help_text = " ".join(Command().create_parser("manage.py", "submit").format_help().split())
    for shown in ("(default: 4)", "(default: 8)", "(default: 5)", "(default: 600.0)"):
        assert shown in help_text, shown
    assert "Exits with 1 when some file was not classified, and 2 when nothing" in help_text


@pytest.mark.parametrize(
    ("args", "message", "returncode"),
    [
        ([str(DATA / "missing.jpg"), "--token", "t"], "no such file or folder", 1),
        ([str(DATA), "--token", "t", "--top-k", "0"], "--top-k must be between 1 and 1000", 1),
        ([str(DATA), "--token", "t", "--per-request", "0"], "--per-request must be 1 or more", 1),
        ([str(DATA)], "an API token is needed", 2),
        ([str(REPO / "kafka_wire"), "--token", "t"], "no image files found", 1),
        ([str(DATA), "--token", "t", "--server", "http://127.0.0.1:9"], "cannot reach", 2),
        (
            [str(DATA), "--token", "t", "--server", "http://127.0.0.1:9", "--batch", "new"],
            "cannot reach",
            2,
        ),
    ],
)
def test_submit_refuses_bad_arguments_with_a_clear_message(args, message, returncode, monkeypatch):
    monkeypatch.delenv("INFERENCEHUB_TOKEN", raising=False)
    with pytest.raises(CommandError, match=message) as refused:
        call_command("submit", *args)
    assert refused.value.returncode == returncode


def test_one_shot_commands_exit_non_zero_on_bad_arguments():
    completed = subprocess.run(
        manage("purge_images", "--older-than", "-1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert "--older-than must be 0 or more days" in completed.stderr


def stored_job(name: str) -> Job:
    upload = SimpleUploadedFile(name, (DATA / name).read_bytes())
    (job,) = uploads.create_jobs(owner=None, uploads=[upload], top_k=1)
    return job


@pytest.mark.django_db
def test_purge_images_deletes_old_originals_and_keeps_the_jobs():
    old, recent, unfinished = (
        stored_job("fox.png"),
        stored_job("toaster.png"),
        stored_job("fox.png"),
    )
    storage = old.image.storage
    long_ago = timezone.now() - timedelta(days=40)
    Job.objects.filter(pk=old.pk).update(status=Job.Status.SUCCEEDED, finished_at=long_ago)
    Job.objects.filter(pk=recent.pk).update(
        status=Job.Status.SUCCEEDED, finished_at=timezone.now() - timedelta(days=2)
    )
    Job.objects.filter(pk=unfinished.pk).update(created_at=long_ago)
    old_name = old.image.name

    call_command("purge_images", "--older-than", "30")

    old.refresh_from_db()
    assert old.image.name == "" and old.status == Job.Status.SUCCEEDED
    assert not storage.exists(old_name)
    for kept in (recent, unfinished):
        kept.refresh_from_db()
        assert storage.exists(kept.image.name)


@pytest.mark.django_db
def test_purge_images_with_zero_days_keeps_everything(capsys):
    job = stored_job("fox.png")
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.SUCCEEDED, finished_at=timezone.now() - timedelta(days=400)
    )
    call_command("purge_images", "--older-than", "0")
    assert "kept forever" in capsys.readouterr().out
    assert job.image.storage.exists(job.image.name)


@pytest.mark.django_db
def test_stack_status_shows_services_topics_groups_and_jobs(kafka_topics, capsys):
    stored_job("fox.png")
    call_command("stack_status")
    out = capsys.readouterr().out
    for line in ("database   ok", "kafka      ok", "redis      ok", "queued        1"):
        assert line in out
    _, results_topic = kafka_topics
    assert f"{results_topic}[3]" in out and "bridge " in out
    # No worker reads the unregistered requests topic: its empty group is not shown as if
    # something were wrong (the topic itself shows once something was sent to it).
    assert "0 alive (dead)" not in out


@pytest.mark.django_db
def test_stack_status_exits_1_naming_an_unreachable_service(capsys):
    with (
        override_settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9"),
        pytest.raises(CommandError, match="unreachable: kafka"),
    ):
        call_command("stack_status")
    assert "kafka      UNREACHABLE" in capsys.readouterr().out


def test_consume_results_stops_on_sigterm_with_exit_0(kafka_topics, start_process):
    group = f"test-sigterm-{uuid.uuid4().hex[:6]}"
    bridge = start_process(processes.bridge(PYTHON, "--group-id", group), name="bridge-sigterm")
    assert bridge.stop(signal.SIGTERM, timeout=60) == 0
    assert "result-bridge: stopped" in bridge.log_path.read_text()


@pytest.mark.parametrize("command", ["export_model", "predict", "submit"])
def test_every_option_of_a_user_command_says_what_it_does(command):
    from django.core.management import load_command_class

    app = {"export_model": "predictions", "predict": "workers", "submit": "predictions"}[command]
    parser = load_command_class(app, command).create_parser("manage.py", command)
    own = [
        action
        for action in parser._actions
        if action.option_strings and action.dest not in DJANGO_COMMON_OPTIONS
    ]
    assert own
    assert [action.dest for action in own if not action.help] == []


# What every Django command has; its own options are the rest.
DJANGO_COMMON_OPTIONS = {
    "help",
    "version",
    "verbosity",
    "settings",
    "pythonpath",
    "traceback",
    "no_color",
    "force_color",
    "skip_checks",
}


@pytest.fixture
def interrupted_while_waiting(user, settings, monkeypatch) -> str:
    """Ctrl-C comes while submit waits for its jobs, which wait in the database, unfinished;
    returns the user's token."""
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(InferenceHubClient, "wait", interrupted)
    return Token.objects.create(user=user).key


@pytest.mark.django_db(transaction=True)
def test_submit_cancels_what_it_sent_when_interrupted_with_the_flag(
    live_server, interrupted_while_waiting
):
    token = interrupted_while_waiting
    with pytest.raises(CommandError, match="interrupted: 2 job"):
        call_command(
            "submit",
            str(DATA / "fox.png"),
            str(DATA / "bolete.jpg"),
            server=live_server.url,
            token=token,
            timeout_per_job=60,
            cancel_on_interrupt=True,
        )

    jobs = list(Job.objects.all())
    assert [job.status for job in jobs] == [Job.Status.CANCELLED] * 2
    # --timeout-per-job gave each a deadline a minute after its upload.
    assert all(
        timedelta(seconds=55) < job.deadline - job.created_at <= timedelta(seconds=60)
        for job in jobs
    )


@pytest.mark.django_db(transaction=True)
def test_submit_without_the_flag_leaves_the_jobs_sent_when_interrupted(
    live_server, interrupted_while_waiting
):
    token = interrupted_while_waiting
    with pytest.raises(KeyboardInterrupt):
        call_command("submit", str(DATA / "fox.png"), server=live_server.url, token=token)
    assert Job.objects.get().status == Job.Status.QUEUED
