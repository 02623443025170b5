"""Producing: one producer per process, batches whose delivery is awaited, and dead letters."""

import logging
import os
import threading
import time

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from django.conf import settings

from common import metrics
from kafka_wire.config import producer_config
from kafka_wire.headers import request_id_headers, request_id_of

logger = logging.getLogger(__name__)

# Dead-letter reasons can hold whole tracebacks; headers should stay small.
MAX_REASON_CHARS = 2000

_producer: Producer | None = None
_producer_pid: int | None = None
_lock = threading.Lock()


def new_producer() -> Producer:
    """A producer of the project's settings (config.producer_config)."""
    return Producer(producer_config())


def get_producer() -> Producer:
    """The process's producer, created on first use (after Celery forks its children)."""
    global _producer, _producer_pid
    with _lock:
        if _producer is None or _producer_pid != os.getpid():
            _producer = new_producer()
            _producer_pid = os.getpid()
        return _producer


class DeliveryError(Exception):
    """Some message of a batch was not acknowledged by Kafka."""


# What a caller waits out and tries again: no broker answering, or a message not acknowledged.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (KafkaException, DeliveryError)


class BatchProducer:
    """Wraps a Producer so a caller can produce a batch and then fail it as a whole when any
    of it was not delivered."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.failures: list[KafkaError] = []

    def produce(
        self, topic: str, *, key: bytes | None, value: bytes, headers: list | None = None
    ) -> None:
        self.producer.produce(
            topic, key=key, value=value, headers=headers, on_delivery=self.on_delivery
        )

    def on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failures.append(error)

    def flush_or_raise(self, timeout_s: float = 90.0) -> None:
        """Wait for every delivery report; DeliveryError if any message failed or is still pending.

        The default outlasts message.timeout.ms, by which librdkafka reports every message."""
        undelivered = self.producer.flush(timeout_s)
        failures, self.failures = self.failures, []
        if failures or undelivered:
            raise DeliveryError(
                f"{len(failures)} messages failed and {undelivered} are still pending; "
                f"first failure: {failures[0] if failures else 'none'}"
            )


def send_to_dead_letter(producer: BatchProducer | Producer, message: Message, reason: str) -> None:
    """Produce a message that cannot be handled, unchanged, to the dead-letter topic (the
    runner does, for each poison message its handler signals).

    The Kafka headers say why and where it came from (docs/message-contract.md)."""
    key = message.key()
    # Keys are job ids by the contract; a garbage key is still worth logging.
    job_id = key.decode(errors="replace") if key else None
    request_id = request_id_of(message)
    logger.warning(
        "dead-lettering %s[%d]@%d (job %s): %s",
        message.topic(),
        message.partition(),
        message.offset(),
        job_id,
        reason,
        extra={"job_id": job_id, "request_id": request_id or "-"},
    )
    metrics.DEAD_LETTERS.labels(message.topic()).inc()
    headers = [
        *request_id_headers(request_id),
        ("error", reason[:MAX_REASON_CHARS].encode(errors="replace")),
        ("source_topic", message.topic().encode()),
        ("source_partition", str(message.partition()).encode()),
        ("source_offset", str(message.offset()).encode()),
        ("failed_at", str(int(time.time() * 1000)).encode()),
    ]
    producer.produce(
        settings.KAFKA_DEAD_LETTER_TOPIC, key=message.key(), value=message.value(), headers=headers
    )
