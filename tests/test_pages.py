"""The server-rendered pages: sign-in, the upload page, result pages and job images."""

import io
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from PIL import Image

from predictions import services, uploads
from predictions.models import Job
from tests.conftest import DATA
from tests.factories import (
    BatchFactory,
    JobFactory,
    PredictionFactory,
    UserFactory,
    staff_user,
)

pytestmark = pytest.mark.django_db


def stored_job(owner, name: str = "fox.png") -> Job:
    """A job with a real stored original (its preprocessing is never enqueued: the test's
    transaction is rolled back, so on_commit callbacks do not run)."""
    upload = SimpleUploadedFile(name, (DATA / name).read_bytes())
    return uploads.create_jobs(owner=owner, uploads=[upload], top_k=5)[0]


def test_the_upload_page_sends_anonymous_visitors_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_signing_in_on_the_login_page_leads_to_the_upload_page(client):
    UserFactory(username="carol", password="carol-password")
    page = client.get("/accounts/login/")
    assert b'name="password"' in page.content
    response = client.post(
        "/accounts/login/", {"username": "carol", "password": "carol-password", "next": "/"}
    )
    assert response.status_code == 302 and response["Location"] == "/"
    upload_page = client.get("/")
    assert b'type="file"' in upload_page.content
    assert b"carol" in upload_page.content


def test_a_wrong_password_is_refused_with_a_message(client):
    UserFactory(username="carol", password="carol-password")
    response = client.post("/accounts/login/", {"username": "carol", "password": "nope"})
    assert response.status_code == 200
    assert b'role="alert"' in response.content
    assert "_auth_user_id" not in client.session


def test_signing_out_takes_a_post_and_says_so(client):
    client.force_login(UserFactory(username="dora"))
    asked = client.get("/accounts/logout/")
    assert asked.status_code == 200 and "_auth_user_id" in client.session
    assert b"Signed in as dora" in asked.content and b'method="post"' in asked.content
    signed_out = client.post("/accounts/logout/", follow=True)
    assert signed_out.redirect_chain == [("/accounts/login/", 302)]
    assert b"You are signed out." in signed_out.content
    assert "_auth_user_id" not in client.session
    assert client.get("/accounts/logout/")["Location"] == "/accounts/login/"


def test_the_site_has_an_icon(client):
    response = client.get("/favicon.ico", follow=True)
    assert response.status_code == 200
    assert response.redirect_chain == [("/static/predictions/favicon.svg", 301)]
    assert b'rel="icon"' in client.get("/accounts/login/").content


def test_the_job_page_links_the_original_and_shows_each_stage_with_its_duration(client):
    from datetime import timedelta

    owner = UserFactory()
    job = stored_job(owner)
    moment = job.created_at
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.FAILED,
        error="boom",
        attempts=2,
        attempt_started_at=moment + timedelta(seconds=10),
        admitted_at=moment + timedelta(seconds=10, milliseconds=5),
        preprocessed_at=moment + timedelta(seconds=10, milliseconds=45),
        finished_at=moment + timedelta(seconds=10, milliseconds=50),
    )
    client.force_login(owner)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'href="/jobs/{job.pk}/original/" download' in page
    # A job that fails again says so, not only its attempts count.
    assert "Failed again, on attempt 2: boom" in page
    assert "Stages of attempt 2, times in UTC" in page
    assert "+40 ms" in page and "+5 ms" in page
    assert "." + f"{moment:%f}"[:3] + "</time>" in page  # milliseconds, not microseconds


def test_the_original_is_reachable_with_an_api_token_and_from_the_job_answer(client, live_server):
    import requests
    from rest_framework.authtoken.models import Token

    owner = UserFactory()
    job = stored_job(owner, "toaster.png")
    token = Token.objects.create(user=owner).key
    for scheme in ("Token", "Bearer"):
        answer = requests.get(
            f"{live_server.url}/api/jobs/{job.pk}/", headers={"Authorization": f"{scheme} {token}"}
        ).json()
        url = answer["image"]["original_url"]
        assert url == f"{live_server.url}/jobs/{job.pk}/original/"
        original = requests.get(url, headers={"Authorization": f"{scheme} {token}"})
        assert original.status_code == 200
        assert original.content == (DATA / "toaster.png").read_bytes()
    other = Token.objects.create(user=UserFactory()).key
    refused = requests.get(url, headers={"Authorization": f"Token {other}"})
    assert refused.status_code == 404
    bad = requests.get(url, headers={"Authorization": "Token nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "Invalid token."


def test_the_upload_page_warns_about_random_weights(client, settings):
    settings.MODEL_WEIGHTS = "random"
    client.force_login(UserFactory())
    assert b"random weights" in client.get("/").content
    settings.MODEL_WEIGHTS = "imagenet"
    assert b"random weights" not in client.get("/").content


def test_anonymous_visitors_get_the_upload_page_when_anonymous_uploads_are_on(client, settings):
    settings.ALLOW_ANONYMOUS_UPLOADS = True
    assert client.get("/").status_code == 200


def test_the_job_page_shows_top_k_timings_and_the_random_weights_warning(client):
    owner = UserFactory()
    job = JobFactory(owner=owner, status=Job.Status.SUCCEEDED, model_weights="random")
    PredictionFactory(job=job, rank=1, label="red fox", score=0.75)
    PredictionFactory(job=job, rank=2, label="kit fox", score=0.2)
    client.force_login(owner)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert page.index("red fox") < page.index("kit fox")
    assert "width:75%" in page
    assert "random weights" in page
    assert "preprocessed" in page and "stored" in page
    assert "data-live" not in page  # finished: the page stops refreshing itself


def test_an_unfinished_job_page_refreshes_itself(client):
    owner = UserFactory()
    job = JobFactory(owner=owner, status=Job.Status.SUBMITTED)
    client.force_login(owner)
    assert b"data-live" in client.get(f"/jobs/{job.pk}/").content


def test_the_batch_page_counts_jobs_per_status_and_refreshes_while_unfinished(client):
    owner = UserFactory()
    batch = BatchFactory(owner=owner)
    done = JobFactory(owner=owner, batch=batch, seq=0, status=Job.Status.SUCCEEDED)
    PredictionFactory(job=done, label="toaster")
    failed = JobFactory(owner=owner, batch=batch, seq=1, status=Job.Status.FAILED)
    failed.error = "preprocessing failed: truncated"
    failed.save()
    running = JobFactory(owner=owner, batch=batch, seq=2, status=Job.Status.QUEUED)
    client.force_login(owner)
    page = client.get(f"/batches/{batch.pk}/").content.decode()
    assert "data-live" in page
    assert (
        'data-summary="1 queued, 0 preprocessed, 0 submitted, 1 succeeded, 1 failed, '
        '0 cancelled, 0 expired"'
    ) in page
    assert "toaster" in page and "preprocessing failed: truncated" in page
    running.status = Job.Status.SUCCEEDED
    running.save()
    assert "data-live" not in client.get(f"/batches/{batch.pk}/").content.decode()


def test_the_job_page_offers_cancel_while_the_job_is_unfinished_and_its_button_cancels_it(
    client,
):
    job = JobFactory(status=Job.Status.SUBMITTED)
    client.force_login(job.owner)
    assert "Cancel</button>" in client.get(f"/jobs/{job.pk}/").content.decode()

    answer = client.post(f"/jobs/{job.pk}/cancel/")

    assert answer.status_code == 302
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Cancel</button>" not in page and "data-live" not in page


def test_the_batch_pages_button_cancels_its_unfinished_jobs_and_no_one_elses_may(client):
    owner = UserFactory()
    batch = BatchFactory(owner=owner)
    queued = JobFactory(owner=owner, batch=batch, seq=0)
    done = JobFactory(owner=owner, batch=batch, seq=1, status=Job.Status.SUCCEEDED)
    client.force_login(UserFactory())
    assert client.post(f"/batches/{batch.pk}/cancel/").status_code == 404
    client.force_login(owner)
    assert "Cancel its unfinished jobs" in client.get(f"/batches/{batch.pk}/").content.decode()

    client.post(f"/batches/{batch.pk}/cancel/")

    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses == {queued.pk: Job.Status.CANCELLED, done.pk: Job.Status.SUCCEEDED}


def test_lists_show_no_image_for_a_job_that_failed_before_its_image_was_decoded(client):
    """The image view can make no thumbnail of such a job: an <img> of it would be a broken
    image. A job that failed later (in inference, say) keeps its thumbnail."""
    owner = staff_user("view_job")
    batch = BatchFactory(owner=owner)
    common = {"owner": owner, "batch": batch, "status": Job.Status.FAILED}
    never_decoded = JobFactory(seq=0, error="preprocessing failed: truncated", **common)
    failed_later = JobFactory(seq=1, preprocessed_at=timezone.now(), **common)
    purged = JobFactory(seq=2, image="", status=Job.Status.SUCCEEDED, owner=owner, batch=batch)
    client.force_login(owner)
    for url in ("/my/jobs/", f"/batches/{batch.pk}/", "/admin/predictions/job/"):
        page = client.get(url).content.decode()
        assert f"/jobs/{never_decoded.pk}/image/" not in page, url
        assert f"/jobs/{purged.pk}/image/" not in page, url
        assert f'src="/jobs/{failed_later.pk}/image/96/"' in page, url
    for url in ("/my/jobs/", f"/batches/{batch.pk}/"):
        page = client.get(url).content.decode()
        assert page.count('<span class="placeholder">no image</span>') == 2, url
    assert "no image" in client.get("/admin/predictions/job/").content.decode()


def test_my_jobs_and_the_batch_page_say_in_which_time_zone_their_times_are(client, settings):
    settings.TIME_ZONE = "Europe/Paris"
    owner = UserFactory()
    job = JobFactory(owner=owner, batch=BatchFactory(owner=owner), seq=0)
    client.force_login(owner)
    mine = client.get("/my/jobs/").content.decode()
    assert "uploaded (CET)" in mine or "uploaded (CEST)" in mine
    local = timezone.localtime(job.created_at, ZoneInfo("Europe/Paris"))
    assert f'<time datetime="{local.isoformat()}">' in mine
    batch = client.get(f"/batches/{job.batch_id}/").content.decode()
    made = timezone.localtime(job.batch.created_at, ZoneInfo("Europe/Paris"))
    assert "Made <time" in batch and f"{made:%Y-%m-%d %H:%M:%S %Z}</time>" in batch


def test_the_owner_of_a_failed_job_tries_it_again_from_its_page(client):
    owner = UserFactory()
    job = JobFactory(owner=owner, status=Job.Status.FAILED, error="inference failed: boom")
    client.force_login(owner)
    assert "Try again" in client.get(f"/jobs/{job.pk}/").content.decode()
    response = client.post(f"/jobs/{job.pk}/retry/")
    assert (response.status_code, response["Location"]) == (302, f"/jobs/{job.pk}/")
    job.refresh_from_db()
    assert (job.status, job.attempts, job.error) == (Job.Status.QUEUED, 2, "")
    assert "Try again" not in client.get(f"/jobs/{job.pk}/").content.decode()


def test_only_the_owner_may_try_a_failed_job_again(client):
    job = JobFactory(owner=UserFactory(), status=Job.Status.FAILED)
    assert client.post(f"/jobs/{job.pk}/retry/").status_code == 302  # to the login page
    client.force_login(UserFactory())
    assert client.post(f"/jobs/{job.pk}/retry/").status_code == 404
    assert client.get(f"/jobs/{job.pk}/retry/").status_code == 405
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED


def test_pages_and_images_are_hidden_from_other_users_but_shown_to_staff(client):
    owner = UserFactory()
    job = stored_job(owner)
    batch = BatchFactory(owner=owner)
    urls = [f"/jobs/{job.pk}/", f"/batches/{batch.pk}/", f"/jobs/{job.pk}/image/96/"]
    client.force_login(UserFactory())
    assert [client.get(url).status_code for url in urls] == [404, 404, 404]
    client.force_login(staff_user("view_job", "view_batch"))
    assert [client.get(url).status_code for url in urls] == [200, 200, 200]
    client.logout()
    # Signed out, the pages ask to sign in (the link may be one's own); the image does not.
    assert [client.get(url).status_code for url in urls] == [302, 302, 404]


def test_an_anonymous_job_is_shown_to_whoever_has_its_id(client):
    job = stored_job(None)
    assert client.get(f"/jobs/{job.pk}/").status_code == 200
    assert client.get(f"/jobs/{job.pk}/image/480/").status_code == 200


def test_the_job_image_is_a_small_jpeg_of_the_stored_original(client):
    owner = UserFactory()
    job = stored_job(owner, "toaster.png")  # an RGBA PNG: flattened for the JPEG
    client.force_login(owner)
    response = client.get(f"/jobs/{job.pk}/image/96/")
    assert response["Content-Type"] == "image/jpeg"
    assert response["Cache-Control"] == "private, max-age=86400"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "JPEG"
        assert max(image.size) == 96
    assert client.get(f"/jobs/{job.pk}/image/5000/").status_code == 404


def test_stored_originals_are_not_served_as_media_files(client):
    owner = UserFactory()
    job = stored_job(owner)
    client.force_login(owner)
    assert client.get(f"/media/{job.image.name}").status_code == 404


def test_the_original_is_served_as_uploaded_to_the_owner_and_staff_only(client):
    owner = UserFactory()
    job = stored_job(owner, "toaster.png")
    url = f"/jobs/{job.pk}/original/"
    client.force_login(owner)
    response = client.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == (DATA / "toaster.png").read_bytes()
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"] == 'inline; filename="toaster.png"'
    assert response["X-Content-Type-Options"] == "nosniff"
    client.force_login(staff_user("view_job"))
    assert client.get(url).status_code == 200
    client.force_login(UserFactory())
    assert client.get(url).status_code == 404
    client.logout()
    # Signed out, the owner's link leads to signing in first.
    assert client.get(url)["Location"] == f"/accounts/login/?next={url}"


def test_a_purged_original_is_not_found(client):
    owner = UserFactory()
    job = stored_job(owner)
    Job.objects.filter(pk=job.pk).update(finished_at=job.created_at)
    assert services.purge_old_images(older_than_days=1, now=job.created_at + timedelta(days=2))
    client.force_login(owner)
    assert client.get(f"/jobs/{job.pk}/original/").status_code == 404


def test_the_pages_style_sheet_and_scripts_are_served(client):
    for path in ("site.css", "upload.js", "live.js"):
        response = client.get(f"/static/predictions/{path}")
        assert response.status_code == 200, path
        response.close()


def test_page_routes_have_names_apart_from_the_apis():
    # A shared name sent the job page's Try again to the API (reverse takes the last).
    from inferencehub.urls import router
    from predictions.urls import urlpatterns

    pages = {url.name for url in urlpatterns}
    assert "job-page-retry" in pages
    assert not pages & {url.name for url in router.urls}
