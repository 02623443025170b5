"""Topic admin: creating the project's topics, reporting how far each consumer group has read
them, and checking that a broker answers (the consumers' preflight)."""

import logging
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings
from django.core.management.base import CommandError

from common.limits import CANCELLATION_RETENTION_S
from kafka_wire.config import ModelRoute, client_config, consumer_config, lanes_of

logger = logging.getLogger(__name__)

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


def project_topics(models: list[ModelRoute] = ()) -> dict[str, str | None]:
    """Each topic of the project and the consumer group that reads it, with the requests
    topics and groups of each registered model version in models: a requests topic per
    priority lane (config.lanes_of)."""
    unregistered = lanes_of(settings.KAFKA_REQUESTS_TOPIC, settings.KAFKA_WORKER_GROUP)
    return {
        **dict(unregistered.values()),
        settings.KAFKA_RESULTS_TOPIC: settings.KAFKA_BRIDGE_GROUP,
        settings.KAFKA_DEAD_LETTER_TOPIC: None,
        # Read whole by every worker, by partition assignment rather than in a group.
        settings.KAFKA_CANCELLATIONS_TOPIC: None,
        **{topic: group for route in models for topic, group in route.lanes().values()},
    }


def admin_client(timeout_s: float = ADMIN_TIMEOUT_S, **overrides) -> AdminClient:
    return AdminClient(
        client_config(
            **{"socket.connection.setup.timeout.ms": int(timeout_s * 1000)},
            **overrides,
        )
    )


class KafkaUnreachable(ConnectionError):
    """No broker answered; the message says why."""


class KafkaRefused(KafkaUnreachable):
    """A broker answered but refused this client (its login or a certificate); the message
    names the setting to fix. Waiting does not help, unlike a broker that is down."""


def check_reachable(timeout_s: float) -> None:
    """Return when a broker answers within timeout_s; raise KafkaUnreachable (KafkaRefused
    when a broker refused this client) saying why when none does."""
    # Raised here, once the client is gone: a traceback holding it would keep its
    # threads retrying the refused connection.
    failure = why_unreachable(timeout_s)
    if failure is not None:
        raise failure


def preflight() -> None:
    """What a consumer command (run_worker, consume_results) checks before it starts: a
    refused login or an untrusted certificate stops it here, naming the setting (CommandError),
    rather than leaving librdkafka retrying in the log and the consumer idle forever. A broker
    that is down only warns: it may come back, and the consumer waits for it."""
    try:
        check_reachable(ADMIN_TIMEOUT_S)
    except KafkaRefused as error:
        raise CommandError(f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS}: {error}") from None
    except KafkaUnreachable as error:
        logger.warning("Kafka not reachable yet, waiting for it: %s", error)


def why_unreachable(timeout_s: float) -> KafkaUnreachable | None:
    errors: list[KafkaError] = []
    admin = admin_client(timeout_s, error_cb=errors.append)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # serves error_cb: the per-connection errors say why
        return explain_failure(exc.args[0], errors)
    return None if metadata.brokers else KafkaUnreachable("no broker answered")


def explain_failure(failure: KafkaError, errors: list[KafkaError]) -> KafkaUnreachable:
    """The most telling of a failed connection's errors, with the setting it points at."""
    for error in errors:
        text = error.str()
        if error.code() == KafkaError._AUTHENTICATION:
            return KafkaRefused(
                "the broker refused the login: check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD "
                f"and KAFKA_SASL_MECHANISM ({text})"
            )
        if "certificate verify failed" in text:
            return KafkaRefused(
                f"the broker's certificate is not trusted: check KAFKA_SSL_CA_LOCATION ({text})"
            )
        if "alert bad certificate" in text or "alert certificate required" in text:
            return KafkaRefused(
                "the broker refused this client's certificate: check "
                f"KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION ({text})"
            )
    detail = errors[0].str() if errors else failure.str()
    return KafkaUnreachable(f"no broker answered at KAFKA_BOOTSTRAP_SERVERS ({detail})")


def topic_config(name: str) -> dict[str, str]:
    """A topic's own settings: the cancellations topic keeps the latest message per job
    (compaction), and only for as long as a request can be waiting in Kafka, so that a
    worker reading it from the start reads a bounded number of ids."""
    if name != settings.KAFKA_CANCELLATIONS_TOPIC:
        return {}
    return {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(CANCELLATION_RETENTION_S * 1000),
    }


def ensure_topics(admin: AdminClient | None = None, models: list[ModelRoute] = ()) -> list[str]:
    """Create the missing project topics (with those of models); returns the names it created.

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
            config=topic_config(name),
        )
        for name in project_topics(models)
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


def describe_topics(topics: dict[str, str | None] | None = None) -> list[PartitionLag]:
    """End offset, committed offset and lag of every partition of topics (a topic and the
    group that reads it; default: the project topics).

    Raises KafkaException when the broker cannot be reached.
    """
    topics = project_topics() if topics is None else topics
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


# How long a young cluster may take to elect a group's coordinator: on a loaded machine,
# well past one admin request's timeout.
COORDINATOR_WAIT_S = 120.0


def committed_offsets(
    consumer: Consumer, partitions: list[TopicPartition], wait_s: float = ADMIN_TIMEOUT_S
) -> list:
    """The group's committed offsets, waiting up to wait_s for its coordinator."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return consumer.committed(partitions, timeout=ADMIN_TIMEOUT_S)
        except KafkaException as error:
            if error.args[0].code() not in COORDINATOR_NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_for_group_coordinators(wait_s: float = COORDINATOR_WAIT_S) -> None:
    """Return once the project's consumer groups have a coordinator (a new cluster creates
    __consumer_offsets on the first request); raise KafkaException after wait_s."""
    for topic, group in project_topics().items():
        if group is None:
            continue
        consumer = Consumer(consumer_config(group))
        try:
            committed_offsets(consumer, [TopicPartition(topic, 0)], wait_s)
        finally:
            consumer.close()


@dataclass(frozen=True)
class GroupState:
    # Members of the consumer group now: the live workers.
    members: int
    # Messages of its topic the group has still to read (from the start when it has
    # committed nothing); None when the topic does not exist.
    lag: int | None


def group_states(routes: list[ModelRoute]) -> dict[ModelRoute, GroupState]:
    """Live members and lag of each route's worker group, as the brokers see them.

    Raises KafkaException when the broker cannot be reached.
    """
    if not routes:
        return {}
    admin = admin_client()
    groups = sorted({route.worker_group for route in routes})
    futures = admin.describe_consumer_groups(groups, request_timeout=ADMIN_TIMEOUT_S)
    members = {
        group: len(future.result(timeout=ADMIN_TIMEOUT_S).members)
        for group, future in futures.items()
    }
    # The lag of every lane: a request waits in whichever.
    lane_of = {topic: route for route in routes for topic, _ in route.lanes().values()}
    rows = describe_topics(
        {topic: group for route in routes for topic, group in route.lanes().values()}
    )
    lags: dict[ModelRoute, int] = {}
    for row in rows:
        route = lane_of[row.topic]
        lags[route] = lags.get(route, 0) + (row.lag or 0)
    return {route: GroupState(members[route.worker_group], lags.get(route)) for route in routes}
