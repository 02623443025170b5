"""The result bridge: its handler over real encoded messages with fake sinks, and the storing
path behind the sinks the consume_results command wires, down to rows in MariaDB."""

import time
import uuid

import pytest

from kafka_wire.contract import ClassScore, InferenceResult, encode_result
from kafka_wire.runner import Poison
from predictions.bridge import STORE_CHUNK, handle_results
from predictions.management.commands import consume_results
from predictions.models import Job
from predictions.tasks import store_results
from tests.factories import JobFactory


class Message:
    """What the runner hands a handler: a consumed message's key, value and position."""

    def __init__(self, key: bytes | None, value: bytes, offset: int = 0) -> None:
        self._key, self._value, self._offset = key, value, offset

    def topic(self) -> str:
        return "results"

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list | None:
        return None

    def value(self) -> bytes:
        return self._value


class Sinks:
    def __init__(self) -> None:
        self.stored: list[list[InferenceResult]] = []
        self.failed: list[tuple[str, str]] = []

    def handle(self, messages: list[Message]) -> list[Poison]:
        return handle_results(
            messages,
            store=self.stored.append,
            fail_job=lambda job_id, reason: self.failed.append((job_id, reason)),
        )


def ok_result(job_id: str, *labels: str) -> InferenceResult:
    return InferenceResult(
        job_id=job_id,
        ok=True,
        predictions=[ClassScore(i, label, 0.5 / (i + 1)) for i, label in enumerate(labels)],
        worker="host:1",
        model="resnet50",
        weights="random",
        batch_size=2,
        inference_ms=12.5,
        inferred_at_ms=1_700_000_000_000,
    )


def message_of(result: InferenceResult, offset: int = 0) -> Message:
    return Message(result.job_id.encode(), encode_result(result), offset)


def test_decoded_results_reach_the_store_sink_as_they_were_sent():
    sent = [
        ok_result(str(uuid.uuid4()), "tench", "goldfish"),
        InferenceResult(job_id=str(uuid.uuid4()), ok=False, error="model exploded"),
    ]
    sinks = Sinks()
    poisoned = sinks.handle([message_of(result, offset) for offset, result in enumerate(sent)])
    assert sinks.stored == [sent]
    assert sinks.failed == [] and poisoned == []


def test_results_are_stored_in_chunks():
    sent = [ok_result(str(uuid.uuid4()), "tench") for _ in range(STORE_CHUNK * 2 + 1)]
    sinks = Sinks()
    sinks.handle([message_of(result) for result in sent])
    assert [len(chunk) for chunk in sinks.stored] == [STORE_CHUNK, STORE_CHUNK, 1]
    assert [result for chunk in sinks.stored for result in chunk] == sent


def test_an_undecodable_result_is_signalled_poison_and_fails_its_job_while_the_rest_is_stored():
    job_id = str(uuid.uuid4())
    good = ok_result(str(uuid.uuid4()), "tench")
    garbage = Message(job_id.encode(), b"IHUB\x01\x02 not a result", offset=7)
    sinks = Sinks()
    [poison] = sinks.handle([garbage, message_of(good, offset=8)])

    assert sinks.stored == [[good]]
    [(failed_job, reason)] = sinks.failed
    assert failed_job == job_id
    assert reason.startswith("the worker's result could not be read: ")
    # The runner dead-letters it (tests/test_runner_batching.py).
    assert poison.message is garbage
    assert poison.reason.startswith("undecodable result: ")


def test_an_undecodable_result_without_a_job_key_is_only_signalled_poison():
    sinks = Sinks()
    poisoned = sinks.handle([Message(b"not-a-uuid", b"junk"), Message(None, b"junk")])
    assert sinks.stored == [] and sinks.failed == []
    assert len(poisoned) == 2


@pytest.mark.django_db
def test_the_store_task_writes_what_the_bridge_decoded():
    job = JobFactory(top_k=2, status=Job.Status.SUBMITTED)
    sent = ok_result(str(job.pk), "tench", "goldfish", "shark")
    sinks = Sinks()
    sinks.handle([message_of(sent)])
    # The task's body, fed what the store sink puts on the queue.
    store_results([result.to_dict() for result in sinks.stored[0]])

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert list(job.predictions.values_list("rank", "class_id", "label", "score")) == [
        (1, 0, "tench", 0.5),
        (2, 1, "goldfish", 0.25),
    ]
    assert (job.worker, job.model_name, job.model_weights) == ("host:1", "resnet50", "random")
    assert (job.inference_batch_size, job.inference_ms) == (2, 12.5)
    assert job.inferred_at.timestamp() == 1_700_000_000


@pytest.mark.django_db(transaction=True)
def test_the_commands_sinks_store_results_and_fail_jobs_through_celery(celery_worker):
    stored = JobFactory(top_k=1, status=Job.Status.SUBMITTED)
    failed = JobFactory(top_k=1, status=Job.Status.SUBMITTED)
    handle_results(
        [message_of(ok_result(str(stored.pk), "tench")), Message(str(failed.pk).encode(), b"x")],
        store=consume_results.store,
        fail_job=consume_results.fail,
    )
    deadline = time.monotonic() + 60
    while Job.objects.filter(pk__in=[stored.pk, failed.pk], finished_at=None).exists():
        assert time.monotonic() < deadline, "Celery did not store the results within 60 s"
        time.sleep(0.2)
    stored.refresh_from_db()
    failed.refresh_from_db()
    assert stored.status == Job.Status.SUCCEEDED
    assert list(stored.predictions.values_list("label", flat=True)) == ["tench"]
    assert failed.status == Job.Status.FAILED
    assert failed.error.startswith("the worker's result could not be read: ")
