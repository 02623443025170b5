"""Results of a model with random weights say so wherever they are shown: the API, the
batch page (the job page, the admin, `submit`'s table: their own tests)."""

import pytest

from predictions.models import Job
from tests.factories import BatchFactory, JobFactory, PredictionFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("weights", "said"), [("random", True), ("imagenet", False), ("", False)])
def test_the_api_says_whether_a_job_ran_with_random_weights(client, user, weights, said):
    job = JobFactory(owner=user, status=Job.Status.SUCCEEDED, model_weights=weights)
    client.force_login(user)
    body = client.get(f"/api/jobs/{job.pk}/").json()
    assert body["random_weights"] is said
    assert body["model"]["weights"] == weights


def test_the_batch_page_marks_each_random_weights_result(client, user):
    batch = BatchFactory(owner=user)
    random = JobFactory(owner=user, batch=batch, seq=0, status="succeeded", model_weights="random")
    real = JobFactory(owner=user, batch=batch, seq=1, status="succeeded", model_weights="imagenet")
    for job in (random, real):
        PredictionFactory(job=job)
    client.force_login(user)
    page = client.get(f"/batches/{batch.pk}/").content.decode()
    assert page.count("random weights: not a real classification") == 1
