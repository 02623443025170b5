"""predictions/client.py's wait against the live server: held requests (`?wait=`) instead
of polling every job, Retry-After when the server's holding slots are taken, and the
timeout."""

import itertools
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
import requests
from django.utils import timezone
from rest_framework.authtoken.models import Token

from common.limits import TOP_K_DEFAULT, WAIT_MAX_SECONDS
from predictions import client as client_module
from predictions.client import InferenceHubClient, WaitStopped, WaitTimeout
from predictions.models import Job
from tests.conftest import REPO
from tests.factories import JobFactory, finish_later

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client(live_server, user):
    return InferenceHubClient(live_server.url, Token.objects.create(user=user).key)


@pytest.fixture
def sent(monkeypatch):
    """(when, path, wait) of each request the client sends, in order."""
    sent = []
    real = requests.request

    def counting(method, url, **kwargs):
        wait = (kwargs.get("params") or {}).get("wait")
        sent.append((time.monotonic(), urlsplit(url).path, wait))
        return real(method, url, **kwargs)

    monkeypatch.setattr(client_module.requests, "request", counting)
    return sent


def test_waiting_sends_one_held_request_per_job_not_one_per_job_per_half_second(client, user, sent):
    jobs = [JobFactory(owner=user, status=Job.Status.SUBMITTED) for _ in range(4)]
    ids = [str(job.pk) for job in jobs]
    # The last job finishes first, while the client is still waiting for the others.
    finisher = finish_later(jobs, [1.0, 2.0, 2.5, 0.5])
    progress = []
    started = time.monotonic()
    finished = client.wait(
        ids, on_progress=lambda seen: progress.append({i: j["status"] for i, j in seen.items()})
    )
    elapsed = time.monotonic() - started
    finisher.join()
    assert list(finished) == ids
    assert {job["status"] for job in finished.values()} == {"succeeded"}
    assert finished[ids[0]]["predictions"][0]["label"] == "red fox"
    assert 2.5 <= elapsed < 10
    # Polling every half second asks about each unfinished job each time: over a dozen
    # requests by now.
    assert [(path, wait) for _, path, wait in sent] == [(f"/api/jobs/{i}/", 30) for i in ids]
    assert progress == [{i: "succeeded" for i in ids[:n]} for n in range(1, 5)]


def test_an_answer_with_retry_after_makes_the_client_wait_before_asking_again(
    client, user, sent, settings
):
    # No holding slot: every ?wait= of an unfinished job is answered at once with
    # Retry-After: 1, by the real server.
    settings.WEB_HELD_REQUESTS = 0
    job = JobFactory(owner=user, status=Job.Status.QUEUED)
    finisher = finish_later([job], [3.0])
    finished = client.wait([str(job.pk)])
    finisher.join()
    assert finished[str(job.pk)]["status"] == "succeeded"
    # Asking again at once would have sent hundreds of requests in those 3 s.
    assert 3 <= len(sent) <= 5, sent
    times = [when for when, *_ in sent]
    assert min(later - earlier for earlier, later in itertools.pairwise(times)) >= 1.0


def test_running_out_of_time_raises_wait_timeout_with_every_job_as_last_seen(client, user, sent):
    stuck = JobFactory(owner=user, status=Job.Status.SUBMITTED)
    queued = JobFactory(owner=user, status=Job.Status.QUEUED)
    done = JobFactory(owner=user, status=Job.Status.SUCCEEDED, finished_at=timezone.now())
    ids = [str(job.pk) for job in (stuck, queued, done)]
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"^2 of 3 jobs unfinished after 1\.5 s$") as timeout:
        client.wait(ids, timeout_s=1.5)
    elapsed = time.monotonic() - started
    assert {i: job["status"] for i, job in timeout.value.jobs.items()} == dict(
        zip(ids, ["submitted", "queued", "succeeded"], strict=True)
    )
    # The time left, rounded up: the hold overshoots by under a second (the bound leaves
    # room for a busy machine).
    assert 1.5 <= elapsed < 5
    # The stuck job was held until the time was up; the others, not asked about until
    # then, are still fetched once each, without a hold.
    assert [(path, wait) for _, path, wait in sent] == [
        (f"/api/jobs/{ids[0]}/", 2),
        (f"/api/jobs/{ids[1]}/", 0),
        (f"/api/jobs/{ids[2]}/", 0),
    ]


def test_a_server_away_for_a_moment_does_not_end_the_wait(client, user, sent, monkeypatch):
    job = JobFactory(owner=user, status=Job.Status.SUCCEEDED, finished_at=timezone.now())
    real = client_module.requests.request  # the counting one
    away = iter(["unreachable", "unavailable"])

    def flaky(method, url, **kwargs):
        match next(away, None):
            case "unreachable":
                sent.append((time.monotonic(), "refused", None))
                raise requests.ConnectionError("connection refused")
            case "unavailable":
                sent.append((time.monotonic(), "503", None))
                unavailable = requests.Response()
                unavailable.status_code = 503
                unavailable.headers["Retry-After"] = "2"
                unavailable._content = b'{"error": "the database is unavailable"}'
                return unavailable
        return real(method, url, **kwargs)

    monkeypatch.setattr(client_module.requests, "request", flaky)
    finished = client.wait([str(job.pk)], timeout_s=10)
    assert finished[str(job.pk)]["status"] == "succeeded"
    [(refused, *_), (unavailable, *_), (answered, path, _)] = sent
    assert path == f"/api/jobs/{job.pk}/"
    # 1 s after the refused connection; the 503's Retry-After after it.
    assert unavailable - refused >= 1.0 and answered - unavailable >= 2.0


def test_a_job_deleted_meanwhile_stops_the_wait_with_every_job_seen(client, user):
    done = JobFactory(owner=user, status=Job.Status.SUCCEEDED, finished_at=timezone.now())
    gone = JobFactory(owner=user, status=Job.Status.QUEUED)
    never_asked = JobFactory(owner=user, status=Job.Status.QUEUED)
    gone_id = str(gone.pk)
    gone.delete()
    with pytest.raises(WaitStopped, match=f"^waiting stopped at job {gone_id}: HTTP 404") as stop:
        client.wait([str(done.pk), gone_id, str(never_asked.pk)])
    assert not isinstance(stop.value, WaitTimeout)
    assert {i: job["status"] for i, job in stop.value.jobs.items()} == {str(done.pk): "succeeded"}


def test_the_client_reads_the_servers_limits_without_django():
    # The client caps its holds with the server's own WAIT_MAX_SECONDS (a longer one
    # would be refused with 400): common/limits.py must load where Django cannot.
    blocked = "import sys; sys.modules['django'] = None; import predictions.client as c; "
    shown = "print(c.WAIT_MAX_SECONDS, c.TOP_K_DEFAULT)"
    run = subprocess.run(
        [sys.executable, "-c", blocked + shown], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(WAIT_MAX_SECONDS), str(TOP_K_DEFAULT)]


def test_cancel_cancels_the_unfinished_jobs_and_leaves_the_finished_ones(client, user):
    queued = JobFactory(owner=user)
    done = JobFactory(owner=user, status=Job.Status.SUCCEEDED)

    assert client.cancel([str(queued.pk), str(done.pk)]) == 1

    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses == {queued.pk: Job.Status.CANCELLED, done.pk: Job.Status.SUCCEEDED}
