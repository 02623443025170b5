"""Priority lanes (docs/scheduling.md): the share rule (common/lanes.py), the dispatcher's
admission order between lanes and the high lane's places beyond the cap, and the request
going to its lane's topic."""

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from common.lanes import HIGH, LOW, NORMAL, lane_places
from kafka_wire.config import lane_name
from predictions import pipeline, selectors
from predictions.models import Job, Priority
from predictions.uploads import UploadError, create_batch, upload_images
from tests.conftest import DATA
from tests.factories import JobFactory, UserFactory

pytestmark = [pytest.mark.domain, pytest.mark.django_db]

SHARE = 1 / 8


def test_higher_lanes_take_a_batch_less_the_share_kept_for_each_waiting_lower_lane():
    taken, _ = lane_places({HIGH: 100, NORMAL: 100, LOW: 100}, 32, share=SHARE)
    assert taken == {HIGH: 24, NORMAL: 4, LOW: 4}
    taken, _ = lane_places({HIGH: 100, LOW: 100}, 32, share=SHARE)
    assert taken == {HIGH: 28, NORMAL: 0, LOW: 4}


def test_places_a_lane_leaves_unused_go_to_the_others():
    taken, _ = lane_places({HIGH: 3, NORMAL: 100, LOW: 1}, 32, share=SHARE)
    assert taken == {HIGH: 3, NORMAL: 28, LOW: 1}
    taken, _ = lane_places({LOW: 50}, 32, share=SHARE)
    assert taken == {HIGH: 0, NORMAL: 0, LOW: 32}


def test_with_rounds_smaller_than_one_over_the_share_a_lower_lane_is_served_by_its_credit():
    credit: dict = {}
    served = []
    for _ in range(16):
        taken, credit = lane_places({HIGH: 100, LOW: 100}, 1, share=SHARE, credit=credit)
        served.append(next(lane for lane, n in taken.items() if n))
    # One round in eight, never starved, never more.
    assert served.count(LOW) == 2
    assert served[7] == LOW and served[15] == LOW


def test_a_lane_with_nothing_waiting_banks_no_credit():
    _, credit = lane_places({HIGH: 100}, 1, share=SHARE, credit={LOW: 0.5})
    assert credit == {}


def waiting(owner, lane: str, count: int, start) -> list[Job]:
    return [
        JobFactory(owner=owner, priority=lane, created_at=start + timedelta(seconds=index))
        for index in range(count)
    ]


def admitted_count(jobs: list[Job]) -> int:
    return Job.objects.filter(pk__in=[job.pk for job in jobs], admitted_at__isnull=False).count()


def test_dispatch_admits_high_jobs_first_and_keeps_a_share_for_low_ones(settings):
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 16
    settings.DISPATCH_HIGH_EXTRA_IN_FLIGHT = 0
    start = timezone.now() - timedelta(minutes=1)
    low = waiting(UserFactory(), LOW, 20, start)
    high = waiting(UserFactory(), HIGH, 20, start + timedelta(minutes=1))

    assert pipeline.dispatch_jobs() == 16
    # 1/8 of 16 places kept for the low lane, though its jobs are older.
    assert (admitted_count(high), admitted_count(low)) == (14, 2)


def test_a_high_job_is_admitted_beyond_a_cap_full_of_low_ones(settings):
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 4
    settings.DISPATCH_HIGH_EXTRA_IN_FLIGHT = 2
    start = timezone.now() - timedelta(minutes=1)
    low = waiting(UserFactory(), LOW, 10, start)
    assert pipeline.dispatch_jobs() == 4

    urgent = waiting(UserFactory(), HIGH, 3, start + timedelta(minutes=1))
    more_low = waiting(UserFactory(), LOW, 1, start + timedelta(minutes=1))
    # The cap is full: only high jobs pass, and only up to their own places.
    assert pipeline.dispatch_jobs() == 2
    assert (admitted_count(urgent), admitted_count(low + more_low)) == (2, 4)


def test_owners_take_turns_within_a_lane(settings):
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 4
    settings.DISPATCH_HIGH_EXTRA_IN_FLIGHT = 0
    start = timezone.now() - timedelta(minutes=1)
    alice, bob = UserFactory(), UserFactory()
    a = waiting(alice, HIGH, 5, start)
    b = waiting(bob, HIGH, 5, start + timedelta(milliseconds=1))

    assert pipeline.dispatch_jobs() == 4
    assert (admitted_count(a), admitted_count(b)) == (2, 2)


def test_a_waiting_jobs_position_counts_the_higher_lanes_waiting_before_it():
    start = timezone.now() - timedelta(minutes=1)
    alice, bob = UserFactory(), UserFactory()
    waiting(alice, LOW, 3, start)
    waiting(alice, HIGH, 2, start + timedelta(minutes=1))
    [normal] = waiting(bob, NORMAL, 1, start + timedelta(minutes=2))
    [late_high] = waiting(bob, HIGH, 1, start + timedelta(minutes=3))

    assert selectors.queue_position(normal) == 3  # alice's 2 and bob's high, not the low
    assert selectors.queue_position(late_high) == 1  # after alice's first, by turn


def test_a_request_goes_to_its_lanes_topic(settings, published_requests):
    jobs = {}
    for lane in Priority.values:
        jobs[lane] = JobFactory(admitted_at=timezone.now(), priority=lane)
        jobs[lane].image.save(str(jobs[lane].pk), ContentFile((DATA / "fox.png").read_bytes()))

    pipeline.preprocess_and_submit(job_ids=[str(job.pk) for job in jobs.values()])

    base = settings.KAFKA_REQUESTS_TOPIC
    assert {topic: [r.job_id for r in rs] for topic, rs in published_requests.items()} == {
        base: [str(jobs[NORMAL].pk)],
        lane_name(base, HIGH): [str(jobs[HIGH].pk)],
        lane_name(base, LOW): [str(jobs[LOW].pk)],
    }
    assert lane_name(base, HIGH) == f"{base}-high"


def fox() -> SimpleUploadedFile:
    return SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes())


def test_an_upload_takes_its_priority_else_its_batchs_else_normal(image_store):
    alice = UserFactory()
    urgent = create_batch(owner=alice, priority=HIGH)

    def priority_of(**fields) -> str:
        [job] = upload_images(uploader=alice, files=[fox()], top_k=1, **fields).jobs
        return Job.objects.get(pk=job.pk).priority

    assert priority_of() == NORMAL
    assert priority_of(priority=LOW) == LOW
    assert priority_of(batch_id=urgent.pk) == HIGH
    assert priority_of(batch_id=urgent.pk, priority=LOW) == LOW


def test_an_unknown_priority_is_refused_naming_the_field(image_store):
    refusal = "priority must be one of high, normal, low, got 'urgent'"
    with pytest.raises(UploadError, match=refusal):
        upload_images(uploader=UserFactory(), files=[fox()], top_k=1, priority="urgent")
    assert not Job.objects.exists()
