"""A job as the API answers with it: built directly (predictions.serializers.JobSerializer
.to_representation), it must stay exactly what DRF makes from the declared fields, which
the schema describes."""

import json

import pytest
from django.test import RequestFactory
from django.utils import timezone
from rest_framework import serializers
from rest_framework.utils.encoders import JSONEncoder

from predictions.models import Job
from predictions.serializers import JobSerializer
from registry.services import register_version
from tests.factories import BatchFactory, JobFactory, PredictionFactory
from webhooks.models import Attempt, Delivery

pytestmark = pytest.mark.django_db


def as_declared(job: Job, context: dict) -> dict:
    """What DRF's ModelSerializer makes of the job from JobSerializer's declared fields."""
    return serializers.ModelSerializer.to_representation(JobSerializer(context=context), job)


def as_json(data) -> str:
    return json.dumps(data, cls=JSONEncoder, sort_keys=True)


def test_every_kind_of_job_is_answered_as_its_declared_fields_say():
    now = timezone.now()
    queued = JobFactory()
    in_batch = JobFactory(batch=BatchFactory(), seq=3, top_k=2)
    succeeded = JobFactory(
        status=Job.Status.SUCCEEDED,
        model_name="resnet50",
        model_weights="random",
        runtime="openvino",
        precision="int8",
        worker="w1",
        inference_batch_size=4,
        inference_ms=12.5,
        preprocess_ms=1.25,
        preprocessed_at=now,
        submitted_at=now,
        inferred_at=now,
        finished_at=now,
    )
    PredictionFactory(job=succeeded, rank=1, score=0.75)
    PredictionFactory(job=succeeded, rank=2, score=0.125)
    failed = JobFactory(status=Job.Status.FAILED, error="preprocessing failed: bad", attempts=2)
    version = register_version(name="colours", source="keras", input_size=64, classes=3)
    routed = JobFactory(routed_to=version)
    hook = "https://hooks.example.com/done"
    waiting_for_its_callback = JobFactory(callback_url=hook)
    called_back = JobFactory(status=Job.Status.FAILED, callback_url=hook, finished_at=now)
    delivery = Delivery.objects.create(
        job=called_back, job_attempt=1, url=hook, state=Delivery.State.DELIVERED
    )
    Attempt.objects.create(delivery=delivery, error="ReadTimeout: 10 s", duration_ms=10000.0)
    Attempt.objects.create(delivery=delivery, status_code=204, duration_ms=2.5)
    context = {"request": RequestFactory().get("/api/jobs/"), "model_ready": {version.pk: True}}
    # The job's own answer also says where a waiting job stands ("queue").
    own = {**context, "queue": True}
    for job in (queued, in_batch, succeeded, failed, routed, waiting_for_its_callback, called_back):
        job = Job.objects.select_related("routed_to__model").get(pk=job.pk)
        for variant in (context, own):
            answer = JobSerializer(job, context=variant).data
            assert as_json(answer) == as_json(as_declared(job, variant)), job.status
    assert JobSerializer(queued, context=own).data["queue"] is not None
    assert len(JobSerializer(succeeded, context=context).data["predictions"]) == 2
    assert JobSerializer(waiting_for_its_callback).data["callback"]["state"] == "waiting"
    callback = JobSerializer(called_back).data["callback"]
    assert [a["status_code"] for a in callback["attempts"]] == [None, 204]
