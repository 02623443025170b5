"""Completion webhooks in the domain: an upload's callback_url is checked and put on each of
its jobs; a job's finishing makes one delivery per attempt of the job, whatever tells of
it twice, with its task enqueued after commit; an address refused at send time is
recorded and not called. Sending for real: tests/test_webhook_delivery.py."""

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from common.callbacks import AllowList
from kafka_wire.contract import ClassScore, InferenceResult
from predictions import pipeline, services
from predictions.models import Job
from predictions.signals import job_finished
from predictions.uploads import UploadError, create_batch, upload_images
from tests.conftest import DATA
from tests.factories import JobFactory, UserFactory
from webhooks import services as webhooks
from webhooks.models import Delivery

pytestmark = [pytest.mark.domain, pytest.mark.django_db]

HOOK = "https://hooks.example.com/inferencehub"


@pytest.fixture(autouse=True)
def hooks_host_allowed(settings) -> None:
    # Allow-listed by name, so that no test here asks DNS.
    settings.WEBHOOK_ALLOWED_NETWORKS = AllowList(hosts=frozenset({"hooks.example.com"}))


def image(name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, (DATA / name).read_bytes())


def fox(job: Job) -> InferenceResult:
    return InferenceResult(
        job_id=str(job.pk), ok=True, predictions=[ClassScore(277, "red fox", 0.9)]
    )


def delivery_tasks(sent_tasks) -> list[list]:
    return [args for name, args in sent_tasks.calls if name == webhooks.DELIVER_TASK]


def test_an_upload_puts_its_callback_url_on_each_of_its_jobs(django_capture_on_commit_callbacks):
    alice = UserFactory()
    batch = create_batch(owner=alice)
    with django_capture_on_commit_callbacks(execute=True):
        upload = upload_images(
            uploader=alice,
            files=[image("fox.png"), image("toaster.png")],
            top_k=3,
            batch_id=batch.pk,
            callback_url=HOOK,
        )
    assert [Job.objects.get(pk=job.pk).callback_url for job in upload.jobs] == [HOOK, HOOK]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "must be an http or https URL"),
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "is a cloud metadata address"),
        ("http://[::ffff:10.0.0.1]/", "is a private address"),
    ],
)
def test_an_upload_with_a_refused_callback_url_is_refused_naming_the_field(url, reason):
    with pytest.raises(UploadError, match=f"^callback_url .*{reason}") as refused:
        upload_images(uploader=UserFactory(), files=[image("fox.png")], top_k=3, callback_url=url)
    assert refused.value.status == 400
    assert not Job.objects.exists()


def test_an_anonymous_upload_may_not_ask_for_a_webhook(settings):
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(UploadError, match="^callback_url needs a signed-in user"):
        upload_images(
            uploader=AnonymousUser(), files=[image("fox.png")], top_k=3, callback_url=HOOK
        )


def test_a_stored_result_makes_one_delivery_sent_after_commit(
    django_capture_on_commit_callbacks, sent_tasks
):
    job = JobFactory(status=Job.Status.SUBMITTED, callback_url=HOOK)
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.record_results(results=[fox(job)])
    delivery = Delivery.objects.get()
    assert (delivery.job_id, delivery.job_attempt, delivery.url, delivery.state) == (
        job.pk,
        1,
        HOOK,
        Delivery.State.PENDING,
    )
    assert delivery_tasks(sent_tasks) == [[delivery.pk]]


def test_a_failed_job_is_delivered_too(django_capture_on_commit_callbacks, sent_tasks):
    job = JobFactory(status=Job.Status.SUBMITTED, callback_url=HOOK)
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.fail_job(job_id=job.pk, reason="the image is a teapot")
    assert Delivery.objects.get().job_id == job.pk
    assert len(delivery_tasks(sent_tasks)) == 1


def test_cancelled_and_expired_jobs_are_delivered_too(
    django_capture_on_commit_callbacks, sent_tasks
):
    cancelled, expired, expiring = (
        JobFactory(status=Job.Status.SUBMITTED, callback_url=HOOK) for _ in range(3)
    )
    late = InferenceResult(job_id=str(expiring.pk), ok=False, expired=True, error="too late")
    with django_capture_on_commit_callbacks(execute=True):
        services.cancel_job(job=cancelled)
        pipeline.expire_job(job_id=expired.pk, reason="its deadline passed in the queue")
        pipeline.record_results(results=[late])
    delivered = dict(Delivery.objects.values_list("job_id", "job__status"))
    assert delivered == {
        cancelled.pk: Job.Status.CANCELLED,
        expired.pk: Job.Status.EXPIRED,
        expiring.pk: Job.Status.EXPIRED,
    }
    assert len(delivery_tasks(sent_tasks)) == 3


def test_a_result_applied_twice_makes_no_second_delivery(
    django_capture_on_commit_callbacks, sent_tasks
):
    job = JobFactory(status=Job.Status.SUBMITTED, callback_url=HOOK)
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.record_results(results=[fox(job)])
        pipeline.record_results(results=[fox(job)])
        # And a transition that announces the same attempt again.
        job_finished.send(sender=Job, job_ids=[job.pk])
    assert Delivery.objects.count() == 1


def test_a_job_without_callback_url_gets_no_delivery(
    django_capture_on_commit_callbacks, sent_tasks
):
    job = JobFactory(status=Job.Status.SUBMITTED)
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.record_results(results=[fox(job)])
    assert not Delivery.objects.exists()
    assert delivery_tasks(sent_tasks) == []


def test_a_rerun_job_is_told_again_in_a_delivery_of_its_new_attempt(
    django_capture_on_commit_callbacks,
):
    job = JobFactory(status=Job.Status.SUBMITTED, callback_url=HOOK)
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.record_results(results=[fox(job)])
    services.rerun_jobs(jobs=[job], top_k=1)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUBMITTED)
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.record_results(results=[fox(job)])
    assert list(Delivery.objects.order_by("job_attempt").values_list("job_attempt", flat=True)) == [
        1,
        2,
    ]


def test_an_address_refused_at_send_time_ends_the_delivery_refused_and_is_not_called(
    django_capture_on_commit_callbacks, monkeypatch
):
    """The URL passed at upload (here: its host allow-listed then) and resolves, by the time
    of sending, to an address that may not be called."""
    job = JobFactory(status=Job.Status.SUBMITTED, callback_url="http://10.1.2.3/hook")
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.record_results(results=[fox(job)])

    def no_post(*args, **kwargs):
        raise AssertionError("a refused address was called")

    monkeypatch.setattr("webhooks.services.requests.Session.post", no_post)
    delivery = Delivery.objects.get()
    assert webhooks.attempt_delivery(delivery_pk=delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.state == Delivery.State.REFUSED
    attempt = delivery.attempts.get()
    assert attempt.status_code is None
    assert attempt.error == "refused, not sent: is refused: 10.1.2.3 is a private address"


def test_a_delivery_taken_by_one_task_is_not_attempted_by_another(
    django_capture_on_commit_callbacks, monkeypatch
):
    """The broker may hand a task out twice; the second finds the delivery leased."""
    job = JobFactory(status=Job.Status.SUBMITTED, callback_url=HOOK)
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.record_results(results=[fox(job)])
    delivery = Delivery.objects.get()
    calls = []

    def second_task_meanwhile(*args, **kwargs):
        calls.append(args)
        assert webhooks.attempt_delivery(delivery_pk=delivery.pk) is None
        raise webhooks.requests.ConnectionError("refused")

    monkeypatch.setattr("webhooks.services.requests.Session.post", second_task_meanwhile)
    delay = webhooks.attempt_delivery(delivery_pk=delivery.pk)
    assert len(calls) == 1
    assert 0.5 <= delay <= 1.0
    assert delivery.attempts.get().error == "ConnectionError: refused"


def test_a_pending_delivery_whose_task_was_lost_is_sent_again_by_beat(sent_tasks):
    job = JobFactory(status=Job.Status.SUCCEEDED, callback_url=HOOK)
    lost = Delivery.objects.create(
        job=job, job_attempt=1, url=HOOK, next_attempt_at=timezone.now() - timedelta(minutes=5)
    )
    Delivery.objects.create(job=JobFactory(), job_attempt=1, url=HOOK)  # due now: has its task
    assert webhooks.send_due_deliveries() == 1
    assert delivery_tasks(sent_tasks) == [[lost.pk]]
