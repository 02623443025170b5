"""librdkafka configuration shared by every producer and consumer of the project."""

from django.conf import settings

# Long enough to ride out a broker restart; a message still undelivered after this
# fails its delivery report, and the batch that produced it is redone.
MESSAGE_TIMEOUT_MS = 60_000


def producer_config(**overrides) -> dict:
    """Producer settings: idempotent, acknowledged by all in-sync replicas, compressed."""
    config = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.KAFKA_COMPRESSION,
        "linger.ms": settings.KAFKA_LINGER_MS,
        "message.timeout.ms": MESSAGE_TIMEOUT_MS,
        # The Java client's key hashing, so producers in any language put a job's
        # messages on the same partition.
        "partitioner": "murmur2_random",
    }
    config.update(overrides)
    return config


def consumer_config(group_id: str, **overrides) -> dict:
    """Consumer settings: offsets are committed by the runner only after a batch is handled."""
    config = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": False,
    }
    config.update(overrides)
    return config
