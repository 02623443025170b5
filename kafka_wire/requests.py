"""Producing inference requests: the Django side's way onto the requests topic."""

from collections.abc import Mapping

from kafka_wire.contract import InferenceRequest, encode_key, encode_request
from kafka_wire.producer import BatchProducer, get_producer

# Short enough for a Celery task to give up and retry while the broker is away.
PUBLISH_TIMEOUT_S = 15.0


def publish_requests(
    requests_by_topic: dict[str, list[InferenceRequest]],
    headers: Mapping[str, list[tuple[str, bytes]]] | None = None,
) -> None:
    """Produce each topic's requests and wait until the broker has every one (acks=all);
    raises one of kafka_wire.producer.TRANSIENT_ERRORS otherwise. headers: each job's
    record headers, by job id (kafka_wire/headers.py)."""
    producer = BatchProducer(get_producer())
    for topic, requests in requests_by_topic.items():
        for request in requests:
            producer.produce(
                topic,
                key=encode_key(request.job_id),
                value=encode_request(request),
                headers=(headers or {}).get(request.job_id, []),
            )
    producer.flush_or_raise(PUBLISH_TIMEOUT_S)
