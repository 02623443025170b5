"""Waiting without polling (?wait=N, a batch's event stream) and big batches (the batch
detail's pages, the export), against the live server."""

import csv
import io
import json

import pytest
import requests

from predictions import events as events_module
from predictions.models import Job
from tests.factories import BatchFactory, JobFactory, PredictionFactory, UserFactory, finish_later

pytestmark = pytest.mark.django_db(transaction=True)


def test_wait_holds_the_answer_until_the_job_has_finished(api, user):
    job = JobFactory(owner=user, status=Job.Status.SUBMITTED)
    thread = finish_later([job], [1.5])
    response = api.get(f"{api.base_url}/api/jobs/{job.pk}/", params={"wait": 20})
    thread.join()
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["predictions"][0]["label"] == "red fox"
    # Without wait, the same moment's answer is the job as it is.
    other = JobFactory(owner=user, status=Job.Status.SUBMITTED)
    assert api.get(f"{api.base_url}/api/jobs/{other.pk}/").json()["status"] == "submitted"


def test_wait_out_of_range_or_unknown_parameters_answer_400(api, user):
    job = JobFactory(owner=user)
    for params in ({"wait": 31}, {"wait": -1}, {"wait": "soon"}, {"wiat": 5}):
        response = api.get(f"{api.base_url}/api/jobs/{job.pk}/", params=params)
        assert response.status_code == 400, params
        assert next(iter(params)) in response.json()["error"]


def test_wait_answers_at_once_when_no_holding_slot_is_free(api, user, settings):
    settings.WEB_HELD_REQUESTS = 0
    job = JobFactory(owner=user, status=Job.Status.QUEUED)
    thread = finish_later([job], [3])
    response = api.get(f"{api.base_url}/api/jobs/{job.pk}/", params={"wait": 20})
    thread.join()
    assert response.json()["status"] == "queued"
    assert response.headers["Retry-After"] == "1"


def read_events(response: requests.Response):
    """(event, data) pairs of a text/event-stream answer, as they arrive."""
    kind, data = None, None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
        elif line == "" and kind:
            yield kind, data
            kind, data = None, None


def test_the_batch_event_stream_sends_each_job_change_and_the_counts(api, user, monkeypatch):
    monkeypatch.setattr(events_module, "STREAM_SECONDS", 10)
    batch = BatchFactory(owner=user)
    done = JobFactory(owner=user, batch=batch, seq=0, status=Job.Status.FAILED, error="bad")
    waiting = JobFactory(owner=user, batch=batch, seq=1, status=Job.Status.SUBMITTED)
    thread = finish_later([waiting], [2])
    url = f"{api.base_url}/api/batches/{batch.pk}/events"
    with api.get(url, params={"since": 0}, stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = read_events(response)
        first = [next(events) for _ in range(3)]
        assert [kind for kind, _ in first] == ["job", "job", "counts"]
        assert {data["id"]: data["status"] for _, data in first[:2]} == {
            str(done.pk): "failed",
            str(waiting.pk): "submitted",
        }
        assert first[2][1]["counts"]["failed"] == 1 and first[2][1]["total"] == 2
        kind, data = next(events)
        assert (kind, data["id"], data["status"]) == ("job", str(waiting.pk), "succeeded")
        assert data["predictions"][0]["label"] == "red fox"
        kind, data = next(events)
        assert kind == "counts" and data["counts"]["succeeded"] == 1
    thread.join()


def test_the_event_stream_of_someone_elses_batch_is_404_in_json(api):
    batch = BatchFactory(owner=UserFactory())
    response = api.get(f"{api.base_url}/api/batches/{batch.pk}/events")
    assert response.status_code == 404 and "error" in response.json()


def test_the_batch_detail_pages_its_jobs(api, user):
    batch = BatchFactory(owner=user)
    jobs = [JobFactory(owner=user, batch=batch, seq=n) for n in range(7)]
    url = f"{api.base_url}/api/batches/{batch.pk}/"
    first = api.get(url, params={"page_size": 3}).json()
    assert first["total"] == first["jobs_count"] == 7
    assert [job["seq"] for job in first["jobs"]] == [0, 1, 2]
    assert first["previous"] is None
    second = api.get(first["next"]).json()
    assert [job["seq"] for job in second["jobs"]] == [3, 4, 5]
    ranged = api.get(url, params={"seq_start": 5, "seq_end": 6}).json()
    assert [job["id"] for job in ranged["jobs"]] == [str(job.pk) for job in jobs[5:]]
    assert ranged["jobs_count"] == 2 and ranged["next"] is None
    assert api.get(url, params={"pagesize": 3}).status_code == 400


def test_a_batch_exports_as_csv_and_json(api, user):
    batch = BatchFactory(owner=user)
    fox = JobFactory(
        owner=user, batch=batch, seq=0, status=Job.Status.SUCCEEDED, original_name="fox, 1.png"
    )
    PredictionFactory(job=fox, rank=1, label="red fox", score=0.75)
    PredictionFactory(job=fox, rank=2, label="kit fox", score=0.2)
    JobFactory(owner=user, batch=batch, seq=1, status=Job.Status.FAILED, error="bad pixels")
    url = f"{api.base_url}/api/batches/{batch.pk}/export"
    response = api.get(url, params={"format": "csv"})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")
    assert f"batch-{batch.pk}.csv" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["seq"], r["file_name"], r["status"], r["label"]) for r in rows] == [
        ("0", "fox, 1.png", "succeeded", "red fox"),
        ("1", rows[1]["file_name"], "failed", ""),
    ]
    assert rows[0]["score"] == "0.75" and rows[1]["error"] == "bad pixels"
    exported = api.get(url, params={"format": "json"}).json()
    assert [p["label"] for p in exported["jobs"][0]["predictions"]] == ["red fox", "kit fox"]
    assert api.get(url, params={"format": "xml"}).status_code == 400
    other = BatchFactory(owner=UserFactory())
    assert api.get(f"{api.base_url}/api/batches/{other.pk}/export").status_code == 404


def test_a_batch_is_named_when_made_and_its_list_counts_its_jobs(api, user):
    made = api.post(f"{api.base_url}/api/batches/", json={"name": "holiday photos"})
    assert made.status_code == 201, made.text
    assert made.json()["name"] == "holiday photos"
    batch_id = made.json()["id"]
    for n, status in enumerate([Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.QUEUED]):
        JobFactory(owner=user, batch_id=batch_id, seq=n, status=status)
    [listed] = [b for b in api.get(f"{api.base_url}/api/batches/").json()["results"]]
    assert listed["name"] == "holiday photos"
    assert listed["counts"] == {"jobs": 3, "finished": 2, "failed": 1}
    refused = api.post(f"{api.base_url}/api/batches/", json={"title": "x"})
    assert refused.status_code == 400
    assert refused.json()["error"] == "title: unknown field; a batch takes only: name, priority"


def test_a_batch_is_deleted_with_its_jobs_by_its_owner_only(api, user, live_server):
    from rest_framework.authtoken.models import Token

    from tests.factories import staff_user

    batch = BatchFactory(owner=user)
    jobs = [JobFactory(owner=user, batch=batch, seq=n) for n in range(2)]
    url = f"{api.base_url}/api/batches/{batch.pk}/"
    for other, status in ((UserFactory(), 404), (staff_user("view_batch", "view_job"), 403)):
        key = Token.objects.create(user=other).key
        answer = requests.delete(url, headers={"Authorization": f"Token {key}"})
        assert answer.status_code == status, answer.text
    assert Job.objects.filter(batch=batch).count() == 2
    assert api.delete(url).status_code == 204
    assert not Job.objects.filter(pk__in=[job.pk for job in jobs]).exists()
    assert api.get(url).status_code == 404
