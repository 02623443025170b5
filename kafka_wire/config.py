"""librdkafka configuration shared by every producer and consumer of the project."""

from dataclasses import dataclass

from django.conf import settings

from common.lanes import LANES, NORMAL

# Long enough to ride out a broker restart; a message still undelivered after this
# fails its delivery report, and the batch that produced it is redone.
MESSAGE_TIMEOUT_MS = 60_000


def client_config(**overrides) -> dict:
    """Where the brokers are, how to reach them securely, and how long to wait for a silent
    one before giving a request up: the base of every producer, consumer and admin client."""
    config = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "socket.timeout.ms": settings.KAFKA_SOCKET_TIMEOUT_MS,
        **security_config(),
    }
    config.update(overrides)
    return config


def security_config() -> dict:
    """The KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_* settings in librdkafka's
    terms (settings.py has checked they fit together)."""
    protocol = settings.KAFKA_SECURITY_PROTOCOL
    config = {"security.protocol": protocol}
    if protocol == "PLAINTEXT":
        return config
    optional = {
        "ssl.ca.location": settings.KAFKA_SSL_CA_LOCATION,
        "ssl.certificate.location": settings.KAFKA_SSL_CERTIFICATE_LOCATION,
        "ssl.key.location": settings.KAFKA_SSL_KEY_LOCATION,
        "ssl.key.password": settings.KAFKA_SSL_KEY_PASSWORD,
    }
    config.update({key: value for key, value in optional.items() if value})
    if protocol == "SASL_SSL":
        config.update(
            {
                "sasl.mechanism": settings.KAFKA_SASL_MECHANISM,
                "sasl.username": settings.KAFKA_SASL_USERNAME,
                "sasl.password": settings.KAFKA_SASL_PASSWORD,
            }
        )
    return config


def producer_config(**overrides) -> dict:
    """Producer settings: idempotent, acknowledged by all in-sync replicas, compressed."""
    config = {
        **client_config(),
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
    """Consumer settings: librdkafka commits, every KAFKA_COMMIT_INTERVAL_MS, only the offsets
    the runner stored after a batch was handled (runner.BatchConsumer.store_offsets)."""
    config = {
        **client_config(),
        "group.id": group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": settings.KAFKA_COMMIT_INTERVAL_MS,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": False,
        "session.timeout.ms": settings.KAFKA_SESSION_TIMEOUT_MS,
    }
    config.update(overrides)
    return config


def kafka_names(prefix: str) -> dict[str, str]:
    """Topics and consumer groups of their own for one run (a test run, a benchmark, a stack of
    the fault suite), as the environment variables the settings read; each starts with prefix."""
    return {
        "KAFKA_REQUESTS_TOPIC": f"{prefix}-requests",
        "KAFKA_RESULTS_TOPIC": f"{prefix}-results",
        "KAFKA_DEAD_LETTER_TOPIC": f"{prefix}-dead-letters",
        "KAFKA_CANCELLATIONS_TOPIC": f"{prefix}-cancellations",
        "KAFKA_WORKER_GROUP": f"{prefix}-workers",
        "KAFKA_BRIDGE_GROUP": f"{prefix}-bridge",
    }


def lane_name(name: str, lane: str) -> str:
    """The topic (or consumer group) of a lane of a requests topic (or of its worker
    group): the name itself for normal, so that the topics and groups of before the lanes
    are normal's, and the name with -high or -low for the others."""
    return name if lane == NORMAL else f"{name}-{lane}"


@dataclass(frozen=True)
class ModelRoute:
    """Where one registered model version's requests go, and who reads them."""

    requests_topic: str
    worker_group: str

    def lanes(self) -> dict[str, tuple[str, str]]:
        """Each priority lane's requests topic and worker group, in the order served."""
        return lanes_of(self.requests_topic, self.worker_group)


def lanes_of(requests_topic: str, worker_group: str) -> dict[str, tuple[str, str]]:
    """Each lane's topic and group of a requests topic and its worker group. A group of
    its own per lane: a worker reads each lane with a consumer of its own, and the normal
    lane's group keeps counting one member per worker."""
    return {
        lane: (lane_name(requests_topic, lane), lane_name(worker_group, lane)) for lane in LANES
    }


def model_route(name: str, version: int) -> ModelRoute:
    """The one place model topic and group names are made (docs/message-contract.md).

    Built on the requests topic and worker group settings, so a test run's or a benchmark's
    prefix (kafka_names) gives every model topics of that run's own."""
    suffix = f".{name}.v{version}"
    return ModelRoute(
        requests_topic=settings.KAFKA_REQUESTS_TOPIC + suffix,
        worker_group=settings.KAFKA_WORKER_GROUP + suffix,
    )
