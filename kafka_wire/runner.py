"""A consumer loop that hands batches of messages to a handler, dead-letters what the handler
could not handle, and commits only what was handled.

The runner knows nothing about what the messages mean: a handler is a plain function of a
list of confluent_kafka Messages, testable without a broker. It returns a Poison for each
message it could not handle (undecodable, or failing on its own) and handles the rest; the
runner dead-letters each Poison (producer.send_to_dead_letter) and stores the batch's offsets
only once every dead letter is delivered. The handler raises only when the whole batch
failed, e.g. its output could not be delivered; the runner then rewinds and redoes the batch.
Delivery is therefore at least once. One place for the dead-letter rule, as Sentry's arroyo
does it: each handler keeps only its domain reaction (an error result, a failed job).
"""

import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from common import metrics
from common.lanes import lane_places
from kafka_wire.config import consumer_config
from kafka_wire.producer import BatchProducer, new_producer, send_to_dead_letter

logger = logging.getLogger(__name__)

# How long one poll blocks while idle: the bound on how late a shutdown is noticed.
POLL_TIMEOUT_S = 0.5
THROUGHPUT_LOG_INTERVAL_S = 60.0
MAX_RETRY_BACKOFF_S = 30.0


@dataclass(frozen=True)
class Poison:
    """A message its handler could not handle, and why: the runner dead-letters it."""

    message: Message
    reason: str


# A handler returns the batch's poison messages; None (or nothing) when there was none.
Handler = Callable[[list[Message]], list[Poison] | None]


def subscribed_consumer(group_id: str, topics: list[str]) -> Consumer:
    """A consumer of the project's settings (config.consumer_config) subscribed to topics."""
    consumer = Consumer(consumer_config(group_id))
    consumer.subscribe(topics)
    return consumer


class BatchConsumer:
    """Polls batches from a subscribed consumer, hands them to a handler, then stores their
    offsets for librdkafka to commit."""

    def __init__(
        self,
        consumer: Consumer,
        handle_batch: Handler,
        *,
        max_batch_size: int,
        max_batch_delay_ms: int,
        busy_batch_delay_ms: int | None = None,
        name: str = "consumer",
        retry_backoff_s: float = 1.0,
        dead_letters: BatchProducer | None = None,
    ) -> None:
        """busy_batch_delay_ms, when given, replaces max_batch_delay_ms after a batch of more
        than one message: messages arriving faster than one per delay are gathered into
        fewer, larger batches, while one message at a time still waits only
        max_batch_delay_ms. dead_letters produces the dead letters (default: a producer of
        its own, made at the first poison message)."""
        busy_batch_delay_ms = (
            max_batch_delay_ms if busy_batch_delay_ms is None else busy_batch_delay_ms
        )
        if max_batch_size < 1 or min(max_batch_delay_ms, busy_batch_delay_ms) < 0:
            raise ValueError("max_batch_size must be >= 1 and the batch delays >= 0")
        self.consumer = consumer
        self.handle_batch = handle_batch
        self.max_batch_size = max_batch_size
        self.max_batch_delay_ms = max_batch_delay_ms
        self.busy_batch_delay_ms = busy_batch_delay_ms
        self.busy = False
        self.name = name
        self.retry_backoff_s = retry_backoff_s
        self.dead_letters = dead_letters
        self.shutdown = False
        self.consecutive_failures = 0
        self.messages_since_log = 0
        self.batches_since_log = 0
        self.last_log_at = time.monotonic()

    def run(self) -> None:
        """Process batches until SIGTERM or SIGINT, then close the consumer."""
        signal.signal(signal.SIGTERM, self.request_shutdown)
        signal.signal(signal.SIGINT, self.request_shutdown)
        logger.info(
            "%s: starting with max_batch_size=%d max_batch_delay_ms=%d",
            self.name,
            self.max_batch_size,
            self.max_batch_delay_ms,
        )
        try:
            while not self.shutdown:
                self.process_one()
                self.log_throughput_when_due()
        finally:
            # close() leaves the group at once, so the partitions move without waiting
            # for the session timeout.
            self.consumer.close()
            logger.info("%s: stopped", self.name)

    def request_shutdown(self, signum, frame) -> None:
        # Only a flag: the batch under way finishes, and close() commits its stored offsets.
        self.shutdown = True

    def process_one(self) -> bool:
        """Handle one batch; returns whether there was any message to handle."""
        batch = self.poll_batch()
        if not batch:
            return False
        try:
            self.dead_letter(self.handle_batch(batch) or [])
        except Exception:
            self.consecutive_failures += 1
            logger.exception(
                "%s: batch of %d failed (%d in a row); it will be redone",
                self.name,
                len(batch),
                self.consecutive_failures,
            )
            self.rewind(batch)
            self.back_off()
            return True
        self.consecutive_failures = 0
        self.store_offsets(batch)
        self.messages_since_log += len(batch)
        self.batches_since_log += 1
        self.record_metrics(batch)
        return True

    def dead_letter(self, poisoned: list[Poison]) -> None:
        """Produce each poison message to the dead-letter topic and wait for every one: until
        they are delivered, the batch's offsets are not stored (DeliveryError redoes it)."""
        if not poisoned:
            return
        if self.dead_letters is None:
            self.dead_letters = BatchProducer(new_producer())
        for poison in poisoned:
            send_to_dead_letter(self.dead_letters, poison.message, poison.reason)
        self.dead_letters.flush_or_raise()

    def record_metrics(self, batch: list[Message]) -> None:
        metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
        metrics.MESSAGES_CONSUMED.labels(self.name).inc(len(batch))
        for (topic, partition), offset in next_offsets(batch).items():
            # cached=True reads the end offset of the last fetch: no broker round trip.
            _, high = self.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )
            if high >= 0:
                metrics.CONSUMER_LAG.labels(self.name, topic, str(partition)).set(
                    max(0, high - offset)
                )

    def poll_batch(self) -> list[Message]:
        """Wait briefly for a first message, then gather more until the batch is full or
        the batch delay (busy_batch_delay_ms after a batch of several) has passed since the
        first one arrived."""
        first = self.consumer.poll(POLL_TIMEOUT_S)
        metrics.CONSUMER_HEALTH.polled()
        if not self.is_data(first):
            self.busy = False
            return []
        batch = [first]
        delay_ms = self.busy_batch_delay_ms if self.busy else self.max_batch_delay_ms
        deadline = time.monotonic() + delay_ms / 1000
        while len(batch) < self.max_batch_size:
            remaining_s = max(0.0, deadline - time.monotonic())
            messages = self.consumer.consume(self.max_batch_size - len(batch), timeout=remaining_s)
            batch.extend(message for message in messages if self.is_data(message))
            # Past the deadline one last non-blocking consume takes what is already fetched.
            if remaining_s == 0.0:
                break
        self.busy = len(batch) > 1
        return batch

    def is_data(self, message: Message | None) -> bool:
        return is_data(message, self.name)

    def store_offsets(self, batch: list[Message]) -> None:
        """Mark the batch handled. librdkafka commits the stored offsets every
        KAFKA_COMMIT_INTERVAL_MS, when a partition is revoked and on close: a synchronous
        commit per batch cost a broker round trip and a write to __consumer_offsets per batch
        (docs/performance.md). A crash redoes at most that interval's batches, which results
        being idempotent by job id makes harmless."""
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in next_offsets(batch).items()
        ]
        try:
            self.consumer.store_offsets(offsets=offsets)
        except KafkaException as error:
            # E.g. the partitions were revoked by a rebalance: their new owner redoes
            # the batch from the last commit.
            logger.warning("%s: offsets not stored, batch may be redone: %s", self.name, error)

    def rewind(self, batch: list[Message]) -> None:
        """Seek each partition of the batch back to its first message in the batch."""
        first_offsets: dict[tuple[str, int], int] = {}
        for message in batch:
            key = (message.topic(), message.partition())
            first_offsets[key] = min(first_offsets.get(key, message.offset()), message.offset())
        for (topic, partition), offset in first_offsets.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as error:
                # Not ours any more: the new owner starts from the last commit anyway.
                logger.warning(
                    "%s: could not rewind %s[%d]: %s", self.name, topic, partition, error
                )

    def back_off(self) -> None:
        delay_s = min(
            MAX_RETRY_BACKOFF_S, self.retry_backoff_s * 2 ** (self.consecutive_failures - 1)
        )
        deadline = time.monotonic() + delay_s
        # Short naps so a shutdown request is honoured during a long backoff.
        while not self.shutdown and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def log_throughput_when_due(self) -> None:
        elapsed_s = time.monotonic() - self.last_log_at
        if elapsed_s < THROUGHPUT_LOG_INTERVAL_S:
            return
        average_batch = (
            self.messages_since_log / self.batches_since_log if self.batches_since_log else 0.0
        )
        logger.info(
            "%s: %.1f messages/s, average batch size %.1f over the last %.0f s",
            self.name,
            self.messages_since_log / elapsed_s,
            average_batch,
            elapsed_s,
        )
        self.messages_since_log = 0
        self.batches_since_log = 0
        self.last_log_at = time.monotonic()


def is_data(message: Message | None, name: str) -> bool:
    """Whether a polled message is one to handle; raises a fatal error, logs the others."""
    if message is None:
        return False
    error = message.error()
    if error is None:
        return True
    if error.fatal():
        raise KafkaException(error)
    if error.code() != KafkaError._PARTITION_EOF:
        # librdkafka recovers from the others (broker down, rebalance) by itself.
        logger.warning("%s: consumer error: %s", name, error)
    return False


# While every lane is empty, how long a wait on one lane lasts before the next lane's turn:
# a message arriving on another lane is seen at most this much later.
LANE_WAIT_SLICE_S = 0.01


class Lanes:
    """The priority lanes of one requests topic read as one consumer: a consumer per lane
    (each in its own group, so each commits its own offsets), whose fetched messages wait
    in a buffer of their own, at most a batch of them, until a batch is taken by the lane
    rule (common/lanes.py). Offsets, seeks and watermarks go to the consumer of the
    message's topic, so BatchConsumer stores each batch's offsets only after its work, per
    consumer, as with one."""

    def __init__(
        self, lanes: dict[str, tuple[str, Consumer]], *, share: float, name: str = "lanes"
    ) -> None:
        """lanes: each lane's topic and consumer, in the order the lanes are served."""
        self.order = list(lanes)
        self.consumers = dict(lanes.values())
        self.topics = {lane: topic for lane, (topic, _) in lanes.items()}
        self.share = share
        self.name = name
        self.buffers: dict[str, deque[Message]] = {lane: deque() for lane in lanes}
        self.credit: dict[str, float] = {}

    @classmethod
    def subscribed(cls, lanes: dict[str, tuple[str, str]], *, share: float, name: str) -> "Lanes":
        """Lanes of consumers of the project's settings, lanes giving each lane's topic and
        group. A partition taken away by a rebalance takes its buffered messages with it:
        its new owner reads them from the last commit."""
        consumers = {
            lane: (topic, Consumer(consumer_config(group)))
            for lane, (topic, group) in lanes.items()
        }
        read = cls(consumers, share=share, name=name)
        for topic, consumer in read.consumers.items():
            consumer.subscribe([topic], on_revoke=read.forget, on_lost=read.forget)
        return read

    def waiting(self) -> int:
        return sum(len(buffer) for buffer in self.buffers.values())

    def fill(self, limit: int, timeout_s: float) -> None:
        """Top each lane's buffer up to `limit` with what its consumer has fetched; when
        that brings nothing, wait up to timeout_s for a message on any lane, a short slice
        on each in turn."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = [self._top_up(lane, limit, 0.0) for lane in self.order]
            if any(got) or time.monotonic() >= deadline:
                return
            for lane in self.order:
                wait_s = min(LANE_WAIT_SLICE_S, deadline - time.monotonic())
                if wait_s <= 0:
                    return
                if self._top_up(lane, limit, wait_s):
                    return
            if all(len(buffer) >= limit for buffer in self.buffers.values()):
                return

    def _top_up(self, lane: str, limit: int, timeout_s: float) -> bool:
        # One message even into a full buffer: a consumer not polled for
        # max.poll.interval.ms leaves its group. The rule serves every waiting lane within
        # 1/share rounds, so a buffer outgrows its limit by at most that many.
        room = max(1, limit - len(self.buffers[lane]))
        consumer = self.consumers[self.topics[lane]]
        messages = [m for m in consumer.consume(room, timeout=timeout_s) if is_data(m, self.name)]
        self.buffers[lane].extend(messages)
        return bool(messages)

    def take(self, size: int) -> list[Message]:
        """The next batch of at most `size`, each lane's oldest buffered messages, as many
        of each as the lane rule gives it."""
        waiting = {lane: len(buffer) for lane, buffer in self.buffers.items()}
        places, self.credit = lane_places(waiting, size, share=self.share, credit=self.credit)
        batch: list[Message] = []
        for lane in self.order:
            batch += [self.buffers[lane].popleft() for _ in range(places[lane])]
        return batch

    def forget(self, consumer: Consumer | None, partitions: list[TopicPartition]) -> None:
        """Drop the buffered messages of these partitions (revoked, or rewound: a seek
        fetches them again)."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for lane, buffer in self.buffers.items():
            self.buffers[lane] = deque(m for m in buffer if (m.topic(), m.partition()) not in gone)

    # What BatchConsumer asks of its consumer, each sent to the consumer of the topic.

    def store_offsets(self, *, offsets: list[TopicPartition]) -> None:
        failure = None
        for topic, consumer in self.consumers.items():
            mine = [tp for tp in offsets if tp.topic == topic]
            if not mine:
                continue
            try:
                consumer.store_offsets(offsets=mine)
            except KafkaException as error:
                # The other lanes' offsets are still stored.
                failure = failure or error
        if failure is not None:
            raise failure

    def seek(self, position: TopicPartition) -> None:
        self.forget(None, [position])
        self.consumers[position.topic].seek(position)

    def get_watermark_offsets(self, partition: TopicPartition, cached: bool = False):
        return self.consumers[partition.topic].get_watermark_offsets(partition, cached=cached)

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()


class LaneBatchConsumer(BatchConsumer):
    """A BatchConsumer of priority lanes (Lanes): each batch is gathered as one consumer's
    is, and made by the lane rule from what the lanes have fetched."""

    consumer: Lanes

    def poll_batch(self) -> list[Message]:
        lanes = self.consumer
        # Topped up even with messages left from the last batch: a lower lane's leftovers
        # must not go before a higher lane's messages fetched meanwhile.
        lanes.fill(self.max_batch_size, 0.0 if lanes.waiting() else POLL_TIMEOUT_S)
        metrics.CONSUMER_HEALTH.polled()
        if not lanes.waiting():
            self.busy = False
            return []
        delay_ms = self.busy_batch_delay_ms if self.busy else self.max_batch_delay_ms
        deadline = time.monotonic() + delay_ms / 1000
        while lanes.waiting() < self.max_batch_size:
            remaining_s = max(0.0, deadline - time.monotonic())
            lanes.fill(self.max_batch_size, remaining_s)
            # Past the deadline one last non-blocking fill takes what is already fetched.
            if remaining_s == 0.0:
                break
        batch = lanes.take(self.max_batch_size)
        self.busy = len(batch) > 1
        return batch


def next_offsets(batch: list[Message]) -> dict[tuple[str, int], int]:
    """For each (topic, partition) of the batch, the offset after its last message."""
    offsets: dict[tuple[str, int], int] = {}
    for message in batch:
        key = (message.topic(), message.partition())
        offsets[key] = max(offsets.get(key, 0), message.offset() + 1)
    return offsets
