"""Listing one's jobs: the API's filters (mine, owner, several statuses, label, file name,
ordering, page_size), unknown parameters refused, and the My jobs page."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token

from common.limits import PAGE_SIZE_MAX
from predictions import services
from predictions.models import Job
from tests.factories import (
    BatchFactory,
    JobFactory,
    PredictionFactory,
    UserFactory,
    staff_user,
)

pytestmark = pytest.mark.django_db(transaction=True)


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["results"]]


def get(api, path: str, **params):
    return api.get(f"{api.base_url}{path}", params=params)


def test_several_statuses_comma_separated_or_repeated(api, user):
    queued = JobFactory(owner=user, status=Job.Status.QUEUED)
    failed = JobFactory(owner=user, status=Job.Status.FAILED)
    JobFactory(owner=user, status=Job.Status.SUCCEEDED)
    expected = {str(queued.pk), str(failed.pk)}
    assert set(ids(get(api, "/api/jobs/", status="queued,failed"))) == expected
    assert set(ids(get(api, "/api/jobs/", status=["queued", "failed"]))) == expected
    response = get(api, "/api/jobs/", status="queued,done")
    assert response.status_code == 400 and "done is not a status" in response.json()["error"]


def test_unknown_query_parameters_are_refused_naming_them(api):
    response = get(api, "/api/jobs/", stauts="failed", colour="red")
    assert response.status_code == 400
    body = response.json()
    assert set(body["fields"]) == {"colour", "stauts"}
    assert "colour: unknown query parameter" in body["error"]


def test_label_and_file_name_filters(api, user):
    fox = JobFactory(owner=user, status=Job.Status.SUCCEEDED, original_name="Holiday-Fox.png")
    PredictionFactory(job=fox, rank=1, label="red fox, Vulpes vulpes")
    toaster = JobFactory(owner=user, status=Job.Status.SUCCEEDED, original_name="kitchen.jpg")
    PredictionFactory(job=toaster, rank=1, label="toaster")
    PredictionFactory(job=toaster, rank=2, label="kit fox")  # not its top-1
    assert ids(get(api, "/api/jobs/", label="FOX")) == [str(fox.pk)]
    assert ids(get(api, "/api/jobs/", name="holiday")) == [str(fox.pk)]
    assert ids(get(api, "/api/jobs/", name="kitchen", label="toast")) == [str(toaster.pk)]


def test_ordering_and_page_size_are_honoured(api, user):
    now = timezone.now()
    jobs = [JobFactory(owner=user, created_at=now - timedelta(minutes=n)) for n in range(5)]
    newest_first = [str(job.pk) for job in jobs]
    assert ids(get(api, "/api/jobs/", page_size=2)) == newest_first[:2]
    assert ids(get(api, "/api/jobs/", page_size=2, page=3)) == newest_first[4:]
    assert ids(get(api, "/api/jobs/", ordering="created_at")) == newest_first[::-1]
    by_name = sorted(jobs, key=lambda job: job.original_name)
    assert ids(get(api, "/api/jobs/", ordering="original_name")) == [str(j.pk) for j in by_name]
    for bad in ({"page_size": PAGE_SIZE_MAX + 1}, {"page_size": 0}, {"ordering": "owner"}):
        assert get(api, "/api/jobs/", **bad).status_code == 400


def test_staff_filter_their_own_jobs_with_mine_and_anyones_with_owner(live_server, api, user):
    staff = staff_user("view_job")
    staff_api = type(api)()
    staff_api.headers["Authorization"] = f"Bearer {Token.objects.create(user=staff).key}"
    staff_api.base_url = live_server.url
    own = JobFactory(owner=staff)
    alices = JobFactory(owner=user)
    assert set(ids(get(staff_api, "/api/jobs/"))) == {str(own.pk), str(alices.pk)}
    assert ids(get(staff_api, "/api/jobs/", mine="true")) == [str(own.pk)]
    assert ids(get(staff_api, "/api/jobs/", owner="alice")) == [str(alices.pk)]
    # A user's list is their own, with or without mine; owner is for staff.
    assert ids(get(api, "/api/jobs/", mine="true")) == [str(alices.pk)]
    refused = get(api, "/api/jobs/", owner=staff.username)
    assert refused.status_code == 400 and "only staff" in refused.json()["error"]


def test_staff_who_see_every_job_are_told_each_jobs_owner(live_server, api, user):
    staff = staff_user("view_job")
    staff_api = type(api)()
    staff_api.headers["Authorization"] = f"Bearer {Token.objects.create(user=staff).key}"
    staff_api.base_url = live_server.url
    alices = JobFactory(owner=user)
    listed = {job["id"]: job["owner"] for job in get(staff_api, "/api/jobs/").json()["results"]}
    assert listed == {str(alices.pk): "alice"}
    assert get(staff_api, f"/api/jobs/{alices.pk}/").json()["owner"] == "alice"
    # Their own jobs' owners are no news to users: the field is for staff.
    assert get(api, f"/api/jobs/{alices.pk}/").json()["owner"] is None


def test_the_uploads_file_name_is_stored_and_searchable(api, image_bytes):
    files = [("image", ("Garden Bolete.jpg", image_bytes["bolete.jpg"], "image/jpeg"))]
    uploaded = api.post(f"{api.base_url}/api/jobs/", files=files)
    assert uploaded.status_code == 202, uploaded.text
    assert uploaded.json()["image"]["name"] == "Garden Bolete.jpg"
    assert ids(get(api, "/api/jobs/", name="garden")) == [uploaded.json()["id"]]
    services.delete_job(job=Job.objects.get(pk=uploaded.json()["id"]))


def test_a_retried_jobs_timings_are_those_of_its_current_attempt(api, user):
    long_ago = timezone.now() - timedelta(hours=2)
    job = JobFactory(owner=user, status=Job.Status.FAILED, created_at=long_ago)
    Job.objects.filter(pk=job.pk).update(attempt_started_at=long_ago)
    response = api.post(f"{api.base_url}/api/jobs/{job.pk}/retry/")
    assert response.status_code == 202
    job.refresh_from_db()
    # The stored result of the new attempt, as the bridge would store it.
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.SUCCEEDED, finished_at=job.attempt_started_at + timedelta(seconds=2)
    )
    body = get(api, f"/api/jobs/{job.pk}/").json()
    assert body["attempts"] == 2
    assert body["attempt_started_at"] > body["created_at"]
    assert body["timings"]["total_ms"] == pytest.approx(2000)


def test_my_jobs_page_lists_only_ones_own_jobs_with_filters_and_pages(client, settings):
    settings.DEBUG = False
    me = UserFactory(is_staff=True)  # staff too see only their own jobs here
    JobFactory(owner=UserFactory(), original_name="someone-else.jpg")
    batch = BatchFactory(owner=me)
    now = timezone.now()
    for n in range(30):
        JobFactory(
            owner=me,
            batch=batch if n < 3 else None,
            seq=n if n < 3 else None,
            status=Job.Status.FAILED if n % 10 == 0 else Job.Status.SUCCEEDED,
            original_name=f"mine-{n:02}.jpg",
            created_at=now - timedelta(minutes=n),
        )
    client.force_login(me)
    first = client.get("/my/jobs/").content.decode()
    assert "30 jobs" in first and "someone-else" not in first
    assert "mine-00.jpg" in first and "mine-25.jpg" not in first and "page 1 of 2" in first
    second = client.get("/my/jobs/?page=2").content.decode()
    assert "mine-25.jpg" in second and "mine-00.jpg" not in second
    failed = client.get("/my/jobs/?status=failed&status=queued").content.decode()
    assert "3 jobs" in failed and "mine-10.jpg" in failed and "mine-11.jpg" not in failed
    assert "3 jobs" in client.get(f"/my/jobs/?batch={batch.pk}").content.decode()
    assert "1 job<" in client.get("/my/jobs/?name=MINE-07").content.decode()
    # The short id the page shows finds the batch too.
    assert "3 jobs" in client.get(f"/my/jobs/?batch={str(batch.pk)[:8]}").content.decode()
    wrong = client.get("/my/jobs/?batch=nope").content.decode()
    assert "batch: must be a batch id or its first 8 or more hex digits" in wrong
    assert "mine-00.jpg" not in wrong  # nothing listed unfiltered under the error


def test_my_jobs_page_asks_to_sign_in(client):
    response = client.get("/my/jobs/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/my/jobs/"
