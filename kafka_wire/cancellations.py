"""Cancellations on Kafka: the API produces the id of each cancelled job to a compacted
topic (KAFKA_CANCELLATIONS_TOPIC, keyed by job id); every worker reads that topic whole,
in a thread of its own, into a bounded set that its handler checks once per batch.

Best effort by design: the database is where a cancellation is decided, and the bridge
ignores a result for a job that is no longer waiting for one. The topic only saves the
worker the inference of requests nobody wants any more, so when it cannot be reached the
API logs it and the worker infers as it did before.
"""

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from common.limits import CANCELLATIONS_REMEMBERED
from kafka_wire.config import client_config
from kafka_wire.contract import ContractError, decode_cancellation, encode_cancellation, encode_key
from kafka_wire.producer import TRANSIENT_ERRORS, BatchProducer, get_producer

logger = logging.getLogger(__name__)

# Short: the cancelling request waits for it, and the cancellation stands without it.
PUBLISH_TIMEOUT_S = 5.0
POLL_TIMEOUT_S = 0.5
# How long the reader waits for the topic's partitions before trying again.
METADATA_TIMEOUT_S = 5.0


def publish_cancellations(topic: str, job_ids: Iterable[str]) -> bool:
    """Produce a cancellation per job and wait for the broker; False (logged) when Kafka
    did not take them all."""
    producer = BatchProducer(get_producer())
    ids = [str(job_id) for job_id in job_ids]
    try:
        for job_id in ids:
            producer.produce(topic, key=encode_key(job_id), value=encode_cancellation(job_id))
        producer.flush_or_raise(PUBLISH_TIMEOUT_S)
    except TRANSIENT_ERRORS as error:
        logger.warning(
            "cancellation of %d job(s) not told to the workers (%s); their results will be ignored",
            len(ids),
            error,
        )
        return False
    return True


class CancelledJobs:
    """The ids of cancelled jobs read so far, at most `capacity`, the oldest forgotten
    first. Written by the reader thread and read by the handler: each operation is one
    dict operation, which the GIL makes atomic."""

    def __init__(self, capacity: int = CANCELLATIONS_REMEMBERED) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, job_id: str) -> None:
        self._ids[job_id] = None
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class CancellationReader(threading.Thread):
    """Reads the cancellations topic from its beginning and then as it grows into jobs.
    Every partition is assigned (no consumer group: each worker needs every cancellation,
    and commits nothing); a daemon thread, so it never holds the worker's shutdown."""

    def __init__(self, topic: str, jobs: CancelledJobs | None = None) -> None:
        super().__init__(name="cancellation reader", daemon=True)
        self.topic = topic
        self.jobs = jobs if jobs is not None else CancelledJobs()
        self.stopped = threading.Event()
        # Set once every cancellation that was on the topic when reading began has been
        # read, or when there is no topic yet (nothing to wait for): a starting worker
        # waits for it (a while) before taking requests.
        self.caught_up = threading.Event()
        # Per partition, the end offset at the start not yet read up to.
        self._behind: dict[int, int] = {}

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        consumer = Consumer(
            client_config(
                # Required by the client; never joined, since partitions are assigned.
                **{"group.id": f"cancellation-reader-{uuid.uuid4()}"},
                **{"enable.auto.commit": False, "enable.partition.eof": False},
            )
        )
        try:
            self.assign(consumer)
            while not self.stopped.is_set():
                message = consumer.poll(POLL_TIMEOUT_S)
                if message is None:
                    continue
                if message.error() is not None:
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        logger.warning("cancellations: %s", message.error())
                    continue
                self.read(message.value())
                self._note_read(message.partition(), message.offset())
        finally:
            consumer.close()

    def assign(self, consumer: Consumer) -> None:
        """Every partition of the topic, from the beginning; waits while the topic or the
        broker is away, inference going on meanwhile."""
        while not self.stopped.is_set():
            try:
                metadata = consumer.list_topics(self.topic, timeout=METADATA_TIMEOUT_S)
            except KafkaException as error:
                logger.warning("cancellations topic unreachable (%s); retrying", error)
                continue
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                if not self.caught_up.is_set():
                    logger.warning(
                        "cancellations topic %s not found (manage.py kafka_topics create "
                        "makes it); cancelled requests are inferred until it is",
                        self.topic,
                    )
                    self.caught_up.set()
                self.stopped.wait(METADATA_TIMEOUT_S)
                continue
            partitions = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in topic.partitions]
            try:
                for partition in partitions:
                    low, high = consumer.get_watermark_offsets(
                        partition, timeout=METADATA_TIMEOUT_S
                    )
                    if high > low:
                        self._behind[partition.partition] = high
            except KafkaException as error:
                logger.warning("cancellations topic unreachable (%s); retrying", error)
                self._behind.clear()
                continue
            consumer.assign(partitions)
            if not self._behind:
                self.caught_up.set()
            return

    def _note_read(self, partition: int, offset: int) -> None:
        end = self._behind.get(partition)
        if end is not None and offset + 1 >= end:
            del self._behind[partition]
            if not self._behind:
                self.caught_up.set()

    def read(self, value: bytes | None) -> None:
        if value is None:  # a tombstone: nothing to drop
            return
        try:
            self.jobs.add(decode_cancellation(value))
        except ContractError as error:
            logger.warning("cancellation ignored: %s", error)
