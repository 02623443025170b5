"""What a worker does with requests nobody wants any more (workers/worker.py): a cancelled
job's request is dropped before the batch is predicted, one past its deadline is answered
expired; and the bounded set of cancelled ids the worker reads them into
(kafka_wire/cancellations.py). Stub model and producer, no broker."""

import time
import uuid

import numpy as np

from kafka_wire.cancellations import CancellationReader, CancelledJobs
from kafka_wire.contract import InferenceRequest, encode_cancellation, encode_key, encode_request
from tests.test_serving import RecordingProducer, StubMessage, StubModel, results_by_job
from workers.worker import InferenceHandler


def request(offset: int, **fields) -> tuple[str, StubMessage]:
    job_id = str(uuid.uuid4())
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    value = encode_request(
        InferenceRequest(job_id=job_id, top_k=1, image=image, submitted_at_ms=1, **fields)
    )
    return job_id, StubMessage(encode_key(job_id), value, offset)


def test_a_cancelled_jobs_request_is_dropped_before_the_batch_is_predicted():
    model, producer = StubModel(), RecordingProducer()
    (cancelled, a), (kept, b), (also_kept, c) = request(0), request(1), request(2)
    jobs = CancelledJobs()
    jobs.add(cancelled)

    poisoned = InferenceHandler(model, producer, results_topic="results", cancelled=jobs)([a, b, c])

    # One predict of the two still wanted; no answer for the cancelled one, and no dead
    # letter: the runner commits its offset with the batch's.
    assert model.batch_sizes == [2]
    assert set(results_by_job(producer)) == {kept, also_kept}
    assert poisoned == []


def test_a_request_past_its_deadline_is_answered_expired_and_not_predicted():
    model, producer = StubModel(), RecordingProducer()
    now_ms = int(time.time() * 1000)
    late, a = request(0, deadline_ms=now_ms - 2000)
    on_time, b = request(1, deadline_ms=now_ms + 60_000)

    InferenceHandler(model, producer, results_topic="results")([a, b])

    assert model.batch_sizes == [1]
    results = results_by_job(producer)
    assert results[on_time].ok
    assert results[late].expired and not results[late].ok
    assert "deadline passed" in results[late].error


def test_a_batch_of_only_unwanted_requests_predicts_nothing():
    model, producer = StubModel(), RecordingProducer()
    cancelled, a = request(0)
    jobs = CancelledJobs()
    jobs.add(cancelled)
    InferenceHandler(model, producer, results_topic="results", cancelled=jobs)([a])
    assert model.batch_sizes == []
    assert producer.produced == []


def test_the_set_of_cancelled_jobs_forgets_the_oldest_past_its_capacity():
    jobs = CancelledJobs(capacity=2)
    for job_id in ("a", "b", "c"):
        jobs.add(job_id)
    assert "a" not in jobs
    assert "b" in jobs and "c" in jobs
    assert len(jobs) == 2


def test_the_reader_keeps_the_job_of_each_cancellation_and_ignores_what_is_not_one():
    reader = CancellationReader("cancellations")
    job_id = str(uuid.uuid4())
    reader.read(encode_cancellation(job_id))
    reader.read(b"junk")
    reader.read(None)  # a tombstone
    assert job_id in reader.jobs
    assert len(reader.jobs) == 1
