"""The Django admin as operators use it: access, fast lists, search, filters and actions."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from predictions import pipeline, uploads
from predictions.models import Batch, Job, Prediction
from tests.conftest import DATA
from tests.factories import BatchFactory, JobFactory, PredictionFactory, UserFactory

pytestmark = pytest.mark.django_db

JOBS_URL = "/admin/predictions/job/"


@pytest.fixture
def operator(client):
    """A staff user with the app's permissions (not a superuser), signed in."""
    user = UserFactory(is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="predictions"))
    client.force_login(user)
    return user


def many_jobs(count: int) -> list[Job]:
    owners = [UserFactory(), UserFactory()]
    batch = BatchFactory(owner=owners[0])
    jobs = Job.objects.bulk_create(
        JobFactory.build(
            owner=owners[i % 2],
            batch=batch if i % 3 == 0 else None,
            seq=i if i % 3 == 0 else None,
            status=Job.Status.SUCCEEDED,
            model_name="resnet50",
            worker=f"worker{i % 2}",
        )
        for i in range(count)
    )
    Prediction.objects.bulk_create(
        PredictionFactory.build(job=job, rank=rank, label=f"class {rank}", score=1 / (rank + 1))
        for job in jobs
        for rank in range(1, 6)
    )
    return jobs


def stored_job(owner, status: str = Job.Status.FAILED) -> Job:
    upload = SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes())
    job = uploads.create_jobs(owner=owner, uploads=[upload], top_k=5)[0]
    Job.objects.filter(pk=job.pk).update(status=status, error="boom" if status == "failed" else "")
    return Job.objects.get(pk=job.pk)


def changelist_queries(client, url: str = JOBS_URL) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_non_staff_users_cannot_use_the_admin(client):
    job = JobFactory()
    client.force_login(UserFactory())
    for url in ("/admin/", JOBS_URL, f"{JOBS_URL}{job.pk}/change/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")


def test_staff_browse_jobs_batches_and_predictions(client, operator):
    job = JobFactory(status=Job.Status.SUCCEEDED, batch=BatchFactory(), seq=0)
    PredictionFactory(job=job, label="bolete", score=0.9)
    for url in (
        JOBS_URL,
        f"{JOBS_URL}{job.pk}/change/",
        "/admin/predictions/batch/",
        f"/admin/predictions/batch/{job.batch_id}/change/",
        "/admin/predictions/prediction/",
    ):
        assert client.get(url).status_code == 200, url


def test_the_job_list_shows_thumbnail_top_1_and_latency(client, operator):
    job = many_jobs(1)[0]
    page = client.get(JOBS_URL).content.decode()
    assert f'src="/jobs/{job.pk}/image/96/"' in page
    assert "class 1" in page and "0.500" in page
    assert "worker0" in page and "resnet50" in page


def test_the_job_list_takes_the_same_few_queries_for_200_jobs_as_for_20(
    client, operator, django_assert_max_num_queries
):
    many_jobs(20)
    with_20 = changelist_queries(client)
    many_jobs(180)
    with django_assert_max_num_queries(12):
        assert client.get(JOBS_URL).status_code == 200
    assert changelist_queries(client) == with_20
    print(f"job changelist: {with_20} queries for 20 and for 200 jobs")


def test_batch_and_prediction_lists_take_few_queries(client, operator):
    many_jobs(200)
    batches = changelist_queries(client, "/admin/predictions/batch/")
    predictions = changelist_queries(client, "/admin/predictions/prediction/")
    assert batches <= 12 and predictions <= 12
    print(f"batch changelist: {batches} queries, prediction changelist: {predictions} queries")


def test_search_finds_a_job_by_id_or_by_label(client, operator):
    job, other = JobFactory(), JobFactory()
    PredictionFactory(job=job, label="hen-of-the-woods")
    PredictionFactory(job=other, label="goldfish")
    by_id = client.get(JOBS_URL, {"q": str(job.pk)}).context["cl"].result_list
    by_label = client.get(JOBS_URL, {"q": "hen-of"}).context["cl"].result_list
    assert [j.pk for j in by_id] == [j.pk for j in by_label] == [job.pk]


def test_filters_by_status_batch_and_owner(client, operator):
    batch = BatchFactory()
    in_batch = JobFactory(batch=batch, seq=0, status=Job.Status.FAILED)
    JobFactory(status=Job.Status.SUCCEEDED)

    def listed(**params):
        return {j.pk for j in client.get(JOBS_URL, params).context["cl"].result_list}

    assert listed(status__exact="failed") == {in_batch.pk}
    assert listed(batch=str(batch.pk)) == {in_batch.pk}
    assert listed(batch="not-a-uuid") == set()
    assert listed(owner=in_batch.owner.username) == {in_batch.pk}


def test_the_job_page_shows_the_image_predictions_and_stage_timings(client, operator):
    job = stored_job(operator, Job.Status.SUCCEEDED)
    PredictionFactory(job=job, label="red fox")
    page = client.get(f"{JOBS_URL}{job.pk}/change/").content.decode()
    assert f'src="/jobs/{job.pk}/image/480/"' in page
    assert "red fox" in page
    assert "submitted to Kafka" in page
    assert client.get(f"/jobs/{job.pk}/image/480/")["Content-Type"] == "image/jpeg"


def test_every_link_on_a_jobs_admin_page_to_its_original_serves_it(client, operator):
    job = stored_job(UserFactory())
    page = client.get(f"{JOBS_URL}{job.pk}/change/").content.decode()
    links = re.findall(r'href="([^"]*(?:original|media)[^"]*)"', page)
    assert links, "no link to the original"
    for link in links:
        response = client.get(link)
        assert response.status_code == 200, link
        assert b"".join(response.streaming_content) == (DATA / "fox.png").read_bytes()


def test_retry_puts_failed_jobs_back_in_the_queue(
    client, operator, django_capture_on_commit_callbacks
):
    failed = stored_job(operator)
    PredictionFactory(job=failed)
    succeeded = stored_job(operator, Job.Status.SUCCEEDED)
    with django_capture_on_commit_callbacks() as callbacks:
        client.post(
            JOBS_URL,
            {"action": "retry_failed", "_selected_action": [failed.pk, succeeded.pk]},
        )
    failed.refresh_from_db()
    succeeded.refresh_from_db()
    assert (failed.status, failed.attempts, failed.error) == (Job.Status.QUEUED, 2, "")
    assert not failed.predictions.exists()
    assert succeeded.status == Job.Status.SUCCEEDED
    # The job waits its turn: the dispatcher runs once the reset is committed.
    assert [c for c in callbacks if c is pipeline.dispatch_or_leave_to_beat] == [
        pipeline.dispatch_or_leave_to_beat
    ]


def test_re_run_restarts_finished_jobs_with_the_top_k_given(client, operator):
    job = stored_job(operator, Job.Status.SUCCEEDED)
    client.post(JOBS_URL, {"action": "rerun_with_top_k", "_selected_action": [job.pk], "top_k": 3})
    job.refresh_from_db()
    assert (job.status, job.top_k, job.attempts) == (Job.Status.QUEUED, 3, 2)


def test_re_run_without_a_valid_top_k_changes_nothing(client, operator):
    job = stored_job(operator, Job.Status.SUCCEEDED)
    response = client.post(
        JOBS_URL,
        {"action": "rerun_with_top_k", "_selected_action": [job.pk], "top_k": "0"},
        follow=True,
    )
    assert "top-k" in response.content.decode()
    job.refresh_from_db()
    assert (job.status, job.top_k) == (Job.Status.SUCCEEDED, 5)


def test_deleting_jobs_removes_their_stored_images(
    client, operator, django_capture_on_commit_callbacks
):
    jobs = [stored_job(operator), stored_job(operator)]
    storage = jobs[0].image.storage
    assert all(storage.exists(job.image.name) for job in jobs)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            JOBS_URL,
            {"action": "delete_selected", "_selected_action": [j.pk for j in jobs], "post": "yes"},
        )
    assert not Job.objects.exists()
    assert not any(storage.exists(job.image.name) for job in jobs)


def test_deleting_a_batch_removes_its_jobs_stored_images(
    client, operator, django_capture_on_commit_callbacks
):
    batch = uploads.create_batch(owner=operator)
    upload = SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes())
    job = uploads.create_jobs(owner=operator, uploads=[upload], top_k=5, batch=batch)[0]
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/admin/predictions/batch/{batch.pk}/delete/", {"post": "yes"})
    assert not Batch.objects.exists()
    assert not job.image.storage.exists(job.image.name)


def test_the_admin_is_headed_inferencehub(client, operator):
    page = client.get("/admin/").content.decode()
    assert '<a href="/admin/">InferenceHub</a>' in page
    assert "<title>Jobs, batches and predictions | InferenceHub</title>" in page


def test_the_job_list_shows_short_ids_file_names_and_random_weights(client, operator):
    job = JobFactory(original_name="garden-fox.png", model_name="resnet50", model_weights="random")
    page = client.get(JOBS_URL).content.decode()
    assert f'<span title="{job.pk}">{str(job.pk)[:8]}</span>' in page
    assert f">{job.pk}</a>" not in page  # the full id would widen the list
    assert "garden-fox.png" in page
    assert "resnet50 <strong>random weights</strong>" in page


def test_search_finds_a_job_by_file_name(client, operator):
    job = JobFactory(original_name="garden-fox.png")
    JobFactory(original_name="toaster.png")
    found = client.get(JOBS_URL, {"q": "garden-fox"}).context["cl"].result_list
    assert [j.pk for j in found] == [job.pk]


def test_the_job_page_is_read_only_without_save_buttons(client, operator):
    job = stored_job(operator, Job.Status.SUCCEEDED)
    PredictionFactory(job=job, score=0.123456789)
    url = f"{JOBS_URL}{job.pk}/change/"
    page = client.get(url).content.decode()
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert "0.123" in page and "0.1234" not in page
    client.post(url, {"status": "queued", "top_k": "9"})
    job.refresh_from_db()
    assert (job.status, job.top_k) == (Job.Status.SUCCEEDED, 5)


def test_the_prediction_list_rounds_scores_and_says_random_weights(client, operator):
    PredictionFactory(job=JobFactory(model_weights="random"), score=0.987654321)
    page = client.get("/admin/predictions/prediction/").content.decode()
    assert "0.988" in page and "0.9876" not in page
    assert "<strong>random weights</strong>" in page


def test_a_job_whose_original_was_purged_shows_no_image(client, operator):
    job = stored_job(operator, Job.Status.SUCCEEDED)
    Job.objects.filter(pk=job.pk).update(image="")
    listed = client.get(JOBS_URL).content.decode()
    detail = client.get(f"{JOBS_URL}{job.pk}/change/").content.decode()
    for page in (listed, detail):
        assert f"/jobs/{job.pk}/image/" not in page
    assert "The original was purged" in detail


def test_search_and_the_batch_filter_take_the_short_ids_the_lists_show(client, operator):
    batch = BatchFactory()
    job, other = JobFactory(batch=batch, seq=0), JobFactory()

    def listed(**params):
        return [j.pk for j in client.get(JOBS_URL, params).context["cl"].result_list]

    short = str(job.pk)[:8]
    assert listed(q=short) == [job.pk]
    assert listed(q=str(job.pk)[:13].upper()) == [job.pk]  # with its hyphen, in capitals
    assert listed(batch=str(batch.pk)[:8]) == [job.pk]
    assert listed(batch=str(batch.pk)[:7]) == []  # too short to be an id
    assert other.pk not in listed(q=short)
    batches = client.get("/admin/predictions/batch/", {"q": str(batch.pk)[:8]})
    assert [b.pk for b in batches.context["cl"].result_list] == [batch.pk]


def test_re_run_with_a_top_k_out_of_range_says_what_is_wrong(client, operator):
    job = stored_job(operator, Job.Status.SUCCEEDED)
    response = client.post(
        JOBS_URL,
        {"action": "rerun_with_top_k", "_selected_action": [job.pk], "top_k": "2000"},
        follow=True,
    )
    page = response.content.decode()
    assert "No action selected" not in page
    assert "Top-k: Ensure this value is less than or equal to 1000." in page
    job.refresh_from_db()
    assert (job.status, job.top_k) == (Job.Status.SUCCEEDED, 5)


def test_retry_says_which_selected_jobs_it_skipped(client, operator):
    failed, succeeded = stored_job(operator), stored_job(operator, Job.Status.SUCCEEDED)
    response = client.post(
        JOBS_URL,
        {"action": "retry_failed", "_selected_action": [failed.pk, succeeded.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "1 failed job(s) queued again." in page
    assert "1 job(s) skipped: only failed jobs are retried." in page


def test_the_cancel_action_cancels_the_unfinished_selected_jobs_and_says_what_it_skipped(
    client, operator
):
    queued, succeeded = (
        stored_job(operator, Job.Status.QUEUED),
        stored_job(operator, Job.Status.SUCCEEDED),
    )
    response = client.post(
        JOBS_URL,
        {"action": "cancel_selected", "_selected_action": [queued.pk, succeeded.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "1 job(s) cancelled." in page
    assert "1 job(s) skipped: only unfinished jobs are cancelled." in page
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses == {queued.pk: Job.Status.CANCELLED, succeeded.pk: Job.Status.SUCCEEDED}


def test_total_ms_counts_the_current_attempt_as_the_api_does(client, operator):
    from datetime import timedelta

    from django.utils import timezone

    finished = timezone.now()
    job = JobFactory(
        owner=operator,
        status=Job.Status.SUCCEEDED,
        created_at=finished - timedelta(minutes=3),  # the first upload, before a retry
        attempt_started_at=finished - timedelta(milliseconds=90),
        finished_at=finished,
    )
    row = client.get(JOBS_URL).context["cl"].result_list[0]
    assert row.pk == job.pk
    assert client.get(JOBS_URL).content.decode().count(">90</td>") == 1
    assert job.total_ms == 90


def test_the_job_list_reads_no_distinct_values_of_the_jobs_table(client, operator):
    many_jobs(20)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(JOBS_URL).status_code == 200
    scans = [q["sql"] for q in queries if "DISTINCT" in q["sql"] and "predictions_job" in q["sql"]]
    assert scans == []


def test_a_search_by_label_or_file_name_reads_no_distinct_join(client, operator):
    job, other = JobFactory(original_name="garden.jpg"), JobFactory(original_name="hen.jpg")
    PredictionFactory(job=job, label="hen-of-the-woods")
    PredictionFactory(job=job, rank=2, label="hen")
    PredictionFactory(job=other, label="goldfish")
    with CaptureQueriesContext(connection) as queries:
        found = client.get(JOBS_URL, {"q": "hen"}).context["cl"].result_list
    # Once each, though both its predictions match, and the file name matches as well.
    assert sorted(j.pk for j in found) == sorted([job.pk, other.pk])
    listing = [q["sql"] for q in queries if "FROM `predictions_job`" in q["sql"]]
    assert listing and not any("DISTINCT" in sql for sql in listing)
