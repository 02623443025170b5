"""One Kafka producer per process, for the server side (Celery tasks and the bridge)."""

import os
import threading

from confluent_kafka import KafkaError, KafkaException, Producer
from django.conf import settings

from kafka_bridge.config import producer_config
from kafka_bridge.contract import InferenceRequest, encode_key, encode_request

_producer: Producer | None = None
_producer_pid: int | None = None
_lock = threading.Lock()


def get_producer() -> Producer:
    """The process's producer, created on first use (after Celery forks its children)."""
    global _producer, _producer_pid
    with _lock:
        if _producer is None or _producer_pid != os.getpid():
            _producer = Producer(producer_config())
            _producer_pid = os.getpid()
        return _producer


def publish_requests(requests: list[InferenceRequest], *, timeout: float = 15.0) -> None:
    """Produce the requests and wait until the broker has every one (acks=all), or raise."""
    errors: list[KafkaError] = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    producer = get_producer()
    for request in requests:
        producer.produce(
            settings.KAFKA_REQUESTS_TOPIC,
            key=encode_key(request.job_id),
            value=encode_request(request),
            on_delivery=on_delivery,
        )
    remaining = producer.flush(timeout)
    if errors:
        raise KafkaException(errors[0])
    if remaining:
        raise KafkaException(
            KafkaError(KafkaError._MSG_TIMED_OUT, f"requests not delivered within {timeout}s")
        )
