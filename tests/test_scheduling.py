"""Fair shares between uploaders: jobs wait in the database and the dispatcher admits them
round-robin over owners (predictions/selectors.py, pipeline.dispatch_jobs)."""

import time

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import Max

from predictions import selectors
from predictions.models import Job
from predictions.pipeline import dispatch_jobs
from tests.conftest import DATA
from tests.factories import JobFactory, UserFactory


def test_round_robin_shares_give_every_owner_a_turn_before_anyones_second():
    shares = selectors.round_robin_shares
    assert shares({7: 300, 3: 1, None: 2}, 4) == ({7: 1, 3: 1, None: 2}, None)
    assert shares({7: 300, 3: 1}, 3) == ({7: 2, 3: 1}, 7)
    assert shares({7: 2}, 64) == ({7: 2}, 7)
    assert shares({7: 2, 3: 5}, 0) == ({7: 0, 3: 0}, "")
    # The turn goes on after the owner served last: 7 then 3 (after 7, from the start).
    assert shares({7: 300, 3: 300, 5: 300}, 2, after=5) == ({7: 1, 3: 1, 5: 0}, 3)


@pytest.mark.django_db
def test_a_jobs_queue_position_is_its_place_in_the_dispatchers_order(settings):
    """Each waiting job's position is how many the dispatcher admits before it."""
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 1
    first, second = UserFactory(), UserFactory()
    jobs = [JobFactory(owner=first) for _ in range(3)] + [JobFactory(owner=second)]
    positions = {job.pk: selectors.queue_position(job) for job in jobs}
    # Round-robin over owners: first's oldest, second's only job, then first's others.
    assert [positions[job.pk] for job in jobs] == [0, 2, 3, 1]
    admitted = []
    for _ in jobs:
        assert dispatch_jobs() == 1
        [job] = Job.objects.filter(status=Job.Status.QUEUED, admitted_at__isnull=False)
        admitted.append(job.pk)
        # It finishes, which frees the one place in flight.
        Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)
    assert [positions[pk] for pk in admitted] == [0, 1, 2, 3]


@pytest.mark.django_db(transaction=True)
def test_one_uploaders_backlog_does_not_hold_up_anothers_job(pipeline, api):
    """A has 300 jobs waiting (real images); B uploads one after the dispatcher has
    admitted A's first ones: B's job is admitted and finished before most of A's."""
    name = default_storage.save(
        "originals/fairness/fox.png", ContentFile((DATA / "fox.png").read_bytes())
    )
    uploader_a = UserFactory(username="uploader-a")
    backlog = JobFactory.create_batch(
        300, owner=uploader_a, top_k=1, image=name, image_format="PNG"
    )
    assert dispatch_jobs() > 0
    response = api.post(
        f"{api.base_url}/api/jobs/",
        files={"image": ("bolete.jpg", (DATA / "bolete.jpg").read_bytes())},
        data={"top_k": "1"},
    )
    assert response.status_code == 202, response.text
    b_job = response.json()["id"]
    deadline = time.monotonic() + 600
    while Job.objects.exclude(status__in=Job.FINISHED).exists():
        assert time.monotonic() < deadline, "the jobs did not finish within 600 s"
        time.sleep(1)
    b = Job.objects.get(pk=b_job)
    a_jobs = Job.objects.filter(pk__in=[job.pk for job in backlog])
    assert b.status == Job.Status.SUCCEEDED
    assert a_jobs.filter(status=Job.Status.SUCCEEDED).count() == 300
    # FIFO would have put B behind all 300. Round-robin lets in at most the cap of A's
    # before B (admitted before B uploaded) and the rest of the round B is admitted in.
    ahead_at_most = 2 * settings.DISPATCH_IN_FLIGHT_PER_MODEL
    assert a_jobs.filter(admitted_at__gt=b.admitted_at).count() >= 300 - ahead_at_most
    assert a_jobs.filter(finished_at__gt=b.finished_at).count() >= 300 - ahead_at_most
    assert a_jobs.aggregate(last=Max("finished_at"))["last"] > b.finished_at
