import threading
import time

import factory
from django.contrib.auth import get_user_model

from kafka_wire.contract import ClassScore, InferenceResult
from predictions import pipeline
from predictions.models import Batch, Job, Prediction


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-for-tests")


def staff_user(*codenames: str, **fields):
    """A staff user (not a superuser) with these permissions of the predictions app, e.g.
    "view_job": being staff alone grants nothing over other users' jobs."""
    from django.contrib.auth.models import Permission

    user = UserFactory(**{"is_staff": True, **fields})
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="predictions", codename__in=codenames)
    )
    return user


class BatchFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Batch

    owner = factory.SubFactory(UserFactory)


class JobFactory(factory.django.DjangoModelFactory):
    """A job row with no stored file; use uploads.create_jobs when the image matters."""

    class Meta:
        model = Job

    owner = factory.SubFactory(UserFactory)
    image = "originals/none"
    original_name = factory.Sequence(lambda n: f"photo{n}.jpg")
    image_format = "JPEG"
    image_width = 640
    image_height = 480
    image_bytes = 1000


class PredictionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Prediction

    job = factory.SubFactory(JobFactory)
    rank = 1
    class_id = factory.Sequence(lambda n: n % 1000)
    label = factory.Sequence(lambda n: f"label{n}")
    score = 0.5


def finish_later(jobs: list[Job], after_s: list[float]) -> threading.Thread:
    """Store each job's result (a red fox, 0.9) after_s seconds from now, in a thread, as
    the bridge does while a client waits."""
    started = time.monotonic()

    def finish():
        for job, at in sorted(zip(jobs, after_s, strict=True), key=lambda pair: pair[1]):
            time.sleep(max(0.0, started + at - time.monotonic()))
            # Through the service, which tells the requests held for the job.
            fox = ClassScore(class_id=277, label="red fox", score=0.9)
            pipeline.record_results(
                results=[InferenceResult(job_id=str(job.pk), ok=True, predictions=[fox])]
            )

    thread = threading.Thread(target=finish)
    thread.start()
    return thread
