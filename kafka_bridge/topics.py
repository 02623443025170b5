"""Creating the project's topics and reporting how far each consumer group has read them."""

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings

from kafka_bridge.config import consumer_config

# Short, so a command run against a stopped broker fails in seconds rather than minutes.
ADMIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    end_offset: int
    # None for a topic no group of ours consumes (the dead letters).
    group: str | None
    # None when the group has not committed on this partition yet.
    committed: int | None
    # How many messages the group has still to read; from the start of the
    # partition when it has committed nothing (auto.offset.reset is earliest).
    lag: int | None


def project_topics() -> dict[str, str | None]:
    """Each topic of the project and the consumer group that reads it."""
    return {
        settings.KAFKA_REQUESTS_TOPIC: settings.KAFKA_WORKER_GROUP,
        settings.KAFKA_RESULTS_TOPIC: settings.KAFKA_BRIDGE_GROUP,
        settings.KAFKA_DEAD_LETTER_TOPIC: None,
    }


def admin_client() -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
            "socket.connection.setup.timeout.ms": int(ADMIN_TIMEOUT_S * 1000),
        }
    )


def ensure_topics(admin: AdminClient | None = None) -> list[str]:
    """Create the missing project topics; returns the names it created.

    Raises KafkaException when the broker cannot be reached or refuses a topic.
    """
    admin = admin or admin_client()
    # Fails fast with a KafkaException when no broker answers.
    existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    missing = [
        NewTopic(
            name,
            num_partitions=settings.KAFKA_TOPIC_PARTITIONS,
            replication_factor=settings.KAFKA_REPLICATION_FACTOR,
        )
        for name in project_topics()
        if name not in existing
    ]
    if not missing:
        return []
    created = []
    futures = admin.create_topics(missing, operation_timeout=ADMIN_TIMEOUT_S)
    for name, future in futures.items():
        try:
            future.result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as error:
            # Another process created it between our listing and our request.
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        else:
            created.append(name)
    return created


def describe_topics() -> list[PartitionLag]:
    """End offset, committed offset and lag of every partition of the project topics.

    Raises KafkaException when the broker cannot be reached.
    """
    topics = project_topics()
    metadata = admin_client().list_topics(timeout=ADMIN_TIMEOUT_S).topics
    rows = []
    for topic, group in topics.items():
        if topic not in metadata or metadata[topic].error is not None:
            continue
        partitions = sorted(metadata[topic].partitions)
        # committed() reads the group's offsets without joining the group.
        consumer = Consumer(consumer_config(group or "inferencehub-describe"))
        try:
            committed = {}
            if group is not None:
                for position in committed_offsets(
                    consumer, [TopicPartition(topic, p) for p in partitions]
                ):
                    committed[position.partition] = (
                        position.offset if position.offset >= 0 else None
                    )
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=ADMIN_TIMEOUT_S
                )
                group_offset = committed.get(partition)
                lag = None
                if group is not None:
                    lag = high - (group_offset if group_offset is not None else low)
                rows.append(PartitionLag(topic, partition, high, group, group_offset, lag))
        finally:
            consumer.close()
    return rows


# A young cluster answers these while it creates __consumer_offsets and elects the
# group's coordinator; the answer comes a moment later.
COORDINATOR_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def committed_offsets(consumer: Consumer, partitions: list[TopicPartition]) -> list:
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while True:
        try:
            return consumer.committed(partitions, timeout=ADMIN_TIMEOUT_S)
        except KafkaException as error:
            if error.args[0].code() not in COORDINATOR_NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
