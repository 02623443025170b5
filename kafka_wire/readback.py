"""Reading topics back between two moments: what the load test's cancel part
(bench/loadtest.py) uses to see, from the messages themselves, which jobs' requests reached
Kafka and which of them a worker answered.

Every partition is assigned (no consumer group joined, nothing committed): reading changes
no consumer's offsets.
"""

import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from kafka_wire.config import client_config

TIMEOUT_S = 10.0

# (topic, partition) -> offset
Offsets = dict[tuple[str, int], int]


def _consumer() -> Consumer:
    return Consumer(
        client_config(
            # Required by the client; never joined, since partitions are assigned.
            **{"group.id": f"readback-{uuid.uuid4()}"},
            **{"enable.auto.commit": False, "enable.partition.eof": False},
        )
    )


def _ends(consumer: Consumer, topics: list[str]) -> Offsets:
    metadata = consumer.list_topics(timeout=TIMEOUT_S).topics
    ends = {}
    for topic in topics:
        if topic not in metadata or metadata[topic].error is not None:
            continue
        for partition in metadata[topic].partitions:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=TIMEOUT_S
            )
            ends[(topic, partition)] = high
    return ends


def end_offsets(topics: list[str]) -> Offsets:
    """Where each partition of topics ends now (a topic that does not exist has none): the
    start of a later read_since."""
    consumer = _consumer()
    try:
        return _ends(consumer, topics)
    finally:
        consumer.close()


def read_since(
    start: Offsets, timeout_s: float = 120.0
) -> list[tuple[str, bytes | None, bytes | None]]:
    """Each message (topic, key, value) written to start's partitions since start, up to
    where they end when called; TimeoutError if they cannot all be read in timeout_s."""
    consumer = _consumer()
    try:
        ends = _ends(consumer, sorted({topic for topic, _ in start}))
        behind = {
            where: end for where, end in ends.items() if where in start and end > start[where]
        }
        consumer.assign([TopicPartition(topic, p, start[(topic, p)]) for topic, p in behind])
        messages = []
        deadline = time.monotonic() + timeout_s
        while behind:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(behind)} partition(s) not read back in {timeout_s} s")
            for message in consumer.consume(num_messages=500, timeout=1.0):
                where = (message.topic(), message.partition())
                if message.error() is None and message.offset() < behind.get(where, -1):
                    messages.append((message.topic(), message.key(), message.value()))
            # The next offset to read: past the end once every message before it was read.
            for position in consumer.position([TopicPartition(t, p) for t, p in behind]):
                if position.offset >= behind[(position.topic, position.partition)]:
                    del behind[(position.topic, position.partition)]
        return messages
    finally:
        consumer.close()
