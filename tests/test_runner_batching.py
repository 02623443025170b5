"""Batching, commit, rewind and dead-letter logic of the consumer runner, against an
in-memory consumer, and its dead letters against the real Kafka."""

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from kafka_wire.config import consumer_config, producer_config
from kafka_wire.producer import BatchProducer, DeliveryError, send_to_dead_letter
from kafka_wire.runner import BatchConsumer, Poison
from kafka_wire.topics import admin_client


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, error: KafkaError | None = None):
        self._topic, self._partition, self._offset, self._error = topic, partition, offset, error

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def error(self):
        return self._error

    def key(self):
        return b"key"

    def headers(self):
        return None

    def value(self):
        return b"value"


class FakeConsumer:
    """Delivers scheduled messages once their time (seconds after creation) has come,
    honouring poll/consume timeouts like librdkafka; records stored offsets and seeks."""

    def __init__(self, schedule: list[tuple[float, FakeMessage]]):
        self.started = time.monotonic()
        self.pending = sorted(schedule, key=lambda item: item[0])
        self.stored: list[list[tuple[str, int, int]]] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.closed = False

    def _take(self, count: int, timeout: float) -> list[FakeMessage]:
        deadline = time.monotonic() + timeout
        taken = []
        while len(taken) < count:
            now = time.monotonic() - self.started
            if self.pending and self.pending[0][0] <= now:
                taken.append(self.pending.pop(0)[1])
                continue
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            if self.pending:
                wait = min(wait, self.pending[0][0] - now)
            time.sleep(max(wait, 0.0005))
        return taken

    def poll(self, timeout: float):
        taken = self._take(1, timeout)
        return taken[0] if taken else None

    def consume(self, num_messages: int, timeout: float):
        return self._take(num_messages, timeout)

    def store_offsets(self, *, offsets):
        self.stored.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))

    def seek(self, position):
        self.seeks.append((position.topic, position.partition, position.offset))

    def get_watermark_offsets(self, partition, cached=False):
        # As librdkafka answers before its first fetch statistics: unknown.
        return (-1, -1)

    def close(self):
        self.closed = True


def messages_now(count: int, *, topic: str = "requests", partition: int = 0, first_offset: int = 0):
    return [(0.0, FakeMessage(topic, partition, first_offset + i)) for i in range(count)]


def make_runner(consumer, handler=lambda batch: None, **options) -> BatchConsumer:
    options.setdefault("max_batch_size", 4)
    options.setdefault("max_batch_delay_ms", 50)
    return BatchConsumer(consumer, handler, retry_backoff_s=0.0, **options)


def offsets_of(batch) -> list[int]:
    return [message.offset() for message in batch]


def test_batch_closes_at_max_size():
    consumer = FakeConsumer(messages_now(10))
    runner = make_runner(consumer, max_batch_size=4, max_batch_delay_ms=5_000)
    started = time.monotonic()
    assert offsets_of(runner.poll_batch()) == [0, 1, 2, 3]
    assert offsets_of(runner.poll_batch()) == [4, 5, 6, 7]
    # A full batch does not wait for the delay.
    assert time.monotonic() - started < 1.0


def test_batch_closes_at_delay_after_first_message():
    schedule = [
        (0.0, FakeMessage("requests", 0, 0)),
        (0.02, FakeMessage("requests", 0, 1)),
        (0.6, FakeMessage("requests", 0, 2)),
    ]
    consumer = FakeConsumer(schedule)
    runner = make_runner(consumer, max_batch_size=32, max_batch_delay_ms=150)
    started = time.monotonic()
    assert offsets_of(runner.poll_batch()) == [0, 1]
    elapsed = time.monotonic() - started
    assert 0.14 <= elapsed < 0.5
    # The late message starts the next batch.
    assert offsets_of(runner.poll_batch()) == [2]


def test_busy_delay_follows_a_batch_of_several_and_ends_with_a_single_message():
    schedule = [
        # A batch of two: the next batch waits the busy delay for a second message ...
        (0.0, FakeMessage("requests", 0, 0)),
        (0.0, FakeMessage("requests", 0, 1)),
        (0.2, FakeMessage("requests", 0, 2)),
        # ... none comes within it, and a message alone ends the busy spell: the next
        # batch waits only the short delay.
        (0.8, FakeMessage("requests", 0, 3)),
        (0.9, FakeMessage("requests", 0, 4)),
    ]
    consumer = FakeConsumer(schedule)
    runner = make_runner(
        consumer, max_batch_size=32, max_batch_delay_ms=20, busy_batch_delay_ms=400
    )
    assert offsets_of(runner.poll_batch()) == [0, 1]
    assert offsets_of(runner.poll_batch()) == [2]
    assert time.monotonic() - consumer.started >= 0.58
    assert offsets_of(runner.poll_batch()) == [3]
    assert offsets_of(runner.poll_batch()) == [4]


def test_one_message_at_a_time_never_waits_the_busy_delay():
    schedule = [(0.1 * i, FakeMessage("requests", 0, i)) for i in range(4)]
    consumer = FakeConsumer(schedule)
    runner = make_runner(
        consumer, max_batch_size=32, max_batch_delay_ms=10, busy_batch_delay_ms=5_000
    )
    started = time.monotonic()
    assert [offsets_of(runner.poll_batch()) for _ in range(4)] == [[0], [1], [2], [3]]
    assert time.monotonic() - started < 1.0


def test_zero_delay_still_takes_messages_already_fetched():
    consumer = FakeConsumer(messages_now(3))
    runner = make_runner(consumer, max_batch_size=8, max_batch_delay_ms=0)
    assert offsets_of(runner.poll_batch()) == [0, 1, 2]


def test_idle_poll_returns_empty_batch_and_process_one_reports_no_work():
    consumer = FakeConsumer([])
    handled = []
    runner = make_runner(consumer, handled.append)
    assert runner.process_one() is False
    assert handled == [] and consumer.stored == []


def test_stores_next_offset_per_partition_after_handler_returns():
    schedule = [
        (0.0, FakeMessage("requests", 0, 7)),
        (0.0, FakeMessage("requests", 1, 3)),
        (0.0, FakeMessage("requests", 0, 8)),
        (0.0, FakeMessage("requests", 1, 4)),
    ]
    consumer = FakeConsumer(schedule)
    seen_stored_during_handler = []

    def handler(batch):
        seen_stored_during_handler.append(list(consumer.stored))

    runner = make_runner(consumer, handler, max_batch_size=4)
    assert runner.process_one() is True
    assert seen_stored_during_handler == [[]]
    assert consumer.stored == [[("requests", 0, 9), ("requests", 1, 5)]]
    assert consumer.seeks == []


def test_handler_failure_stores_nothing_and_rewinds_each_partition():
    schedule = [
        (0.0, FakeMessage("requests", 0, 7)),
        (0.0, FakeMessage("requests", 2, 40)),
        (0.0, FakeMessage("requests", 0, 8)),
        (0.0, FakeMessage("requests", 2, 41)),
    ]
    consumer = FakeConsumer(schedule)

    def handler(batch):
        raise DeliveryError("broker unavailable")

    runner = make_runner(consumer, handler, max_batch_size=4)
    assert runner.process_one() is True
    assert consumer.stored == []
    assert sorted(consumer.seeks) == [("requests", 0, 7), ("requests", 2, 40)]
    assert runner.consecutive_failures == 1


def test_success_after_failure_resets_the_failure_count():
    consumer = FakeConsumer(messages_now(2))
    calls = []

    def handler(batch):
        calls.append(offsets_of(batch))
        if len(calls) == 1:
            raise RuntimeError("first try fails")

    runner = make_runner(consumer, handler, max_batch_size=1)
    runner.process_one()
    runner.process_one()
    assert calls == [[0], [1]]
    assert consumer.stored == [[("requests", 0, 2)]]
    assert runner.consecutive_failures == 0


def test_error_events_are_skipped_and_partition_eof_is_silent(caplog):
    schedule = [
        (0.0, FakeMessage("requests", 0, -1, KafkaError(KafkaError._PARTITION_EOF))),
        (0.0, FakeMessage("requests", 0, -1, KafkaError(KafkaError._TRANSPORT, "broker down"))),
        (0.0, FakeMessage("requests", 0, 5)),
    ]
    consumer = FakeConsumer(schedule)
    runner = make_runner(consumer, max_batch_size=4, max_batch_delay_ms=20)
    batches = [runner.poll_batch() for _ in range(3)]
    assert [offsets_of(batch) for batch in batches if batch] == [[5]]
    assert "broker down" in caplog.text
    assert "PARTITION_EOF" not in caplog.text


def test_fatal_errors_raise():
    fatal = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    consumer = FakeConsumer([(0.0, FakeMessage("requests", 0, -1, fatal))])
    runner = make_runner(consumer)
    with pytest.raises(KafkaException):
        runner.poll_batch()


def test_run_stops_on_shutdown_flag_and_closes_the_consumer():
    consumer = FakeConsumer(messages_now(3))
    handled = []
    runner = make_runner(consumer, max_batch_size=1, max_batch_delay_ms=0)

    def handler(batch):
        handled.append(offsets_of(batch))
        if len(handled) == 2:
            runner.request_shutdown(None, None)

    runner.handle_batch = handler
    runner.run()
    # The batch during which shutdown was asked for is still committed.
    assert handled == [[0], [1]]
    assert consumer.stored[-1] == [("requests", 0, 2)]
    assert consumer.closed


def test_run_closes_the_consumer_when_the_loop_raises():
    fatal = KafkaError(KafkaError._FATAL, "fatal", fatal=True)
    consumer = FakeConsumer([(0.0, FakeMessage("requests", 0, -1, fatal))])
    with pytest.raises(KafkaException):
        make_runner(consumer).run()
    assert consumer.closed


class FakeProducer:
    def __init__(self, fail_with: KafkaError | None = None, pending_after_flush: int = 0):
        self.fail_with = fail_with
        self.pending_after_flush = pending_after_flush
        self.produced = []
        self.callbacks = []

    def produce(self, topic, *, key, value, headers=None, on_delivery=None):
        self.produced.append((topic, key, value, headers))
        self.callbacks.append(on_delivery)

    def flush(self, timeout):
        for callback in self.callbacks:
            callback(self.fail_with, None)
        self.callbacks = []
        return self.pending_after_flush


def test_batch_producer_passes_when_everything_is_delivered():
    producer = BatchProducer(FakeProducer())
    producer.produce("results", key=b"k", value=b"v")
    producer.flush_or_raise()


def test_batch_producer_raises_on_failed_or_pending_deliveries():
    failing = BatchProducer(FakeProducer(fail_with=KafkaError(KafkaError._MSG_TIMED_OUT)))
    failing.produce("results", key=b"k", value=b"v")
    with pytest.raises(DeliveryError, match="1 messages failed"):
        failing.flush_or_raise()
    # The failure belongs to that batch only.
    failing.flush_or_raise()

    stuck = BatchProducer(FakeProducer(pending_after_flush=2))
    stuck.produce("results", key=b"k", value=b"v")
    with pytest.raises(DeliveryError, match="2 are still pending"):
        stuck.flush_or_raise()


def test_dead_letter_keeps_the_original_bytes_and_says_why(settings):
    settings.KAFKA_DEAD_LETTER_TOPIC = "dead-letters"
    producer = FakeProducer()
    send_to_dead_letter(producer, FakeMessage("requests", 3, 17), "undecodable request: bad magic")
    [(topic, key, value, headers)] = producer.produced
    assert (topic, key, value) == ("dead-letters", b"key", b"value")
    headers = dict(headers)
    assert headers["error"] == b"undecodable request: bad magic"
    assert headers["source_topic"] == b"requests"
    assert headers["source_partition"] == b"3"
    assert headers["source_offset"] == b"17"
    assert abs(int(headers["failed_at"]) - time.time() * 1000) < 60_000


def test_poison_messages_are_dead_lettered_before_the_batch_offsets_are_stored(settings):
    settings.KAFKA_DEAD_LETTER_TOPIC = "dead-letters"
    consumer = FakeConsumer(messages_now(3, first_offset=10))
    dead_letters = FakeProducer()
    stored_when_dead_lettered = []

    def handler(batch):
        return [Poison(batch[1], "undecodable request: bad magic")]

    def flush(timeout):
        stored_when_dead_lettered.append(list(consumer.stored))
        return FakeProducer.flush(dead_letters, timeout)

    dead_letters.flush = flush
    runner = make_runner(consumer, handler, dead_letters=BatchProducer(dead_letters))
    assert runner.process_one() is True
    [(topic, _, _, headers)] = dead_letters.produced
    assert topic == "dead-letters"
    assert dict(headers)["error"] == b"undecodable request: bad magic"
    assert dict(headers)["source_offset"] == b"11"
    # The good messages of the batch go on: the whole batch is stored, after the dead letter.
    assert stored_when_dead_lettered == [[]]
    assert consumer.stored == [[("requests", 0, 13)]]


def test_an_undelivered_dead_letter_fails_the_batch():
    consumer = FakeConsumer(messages_now(2, first_offset=5))
    dead_letters = BatchProducer(FakeProducer(pending_after_flush=1))
    runner = make_runner(
        consumer, lambda batch: [Poison(batch[0], "poison")], dead_letters=dead_letters
    )
    runner.process_one()
    assert consumer.stored == []
    assert consumer.seeks == [("requests", 0, 5)]
    assert runner.consecutive_failures == 1


def read_all(topic: str, count: int) -> list:
    reader = Consumer(consumer_config(f"{topic}-reader"))
    reader.subscribe([topic])
    messages = []
    deadline = time.monotonic() + 30
    while len(messages) < count and time.monotonic() < deadline:
        message = reader.poll(1.0)
        if message is not None and message.error() is None:
            messages.append(message)
    reader.close()
    return messages


@pytest.mark.services
def test_a_handlers_poison_signal_ends_on_the_dead_letter_topic_and_the_batch_is_committed(
    settings,
):
    topic = f"test-poison-{uuid.uuid4().hex[:8]}"
    settings.KAFKA_DEAD_LETTER_TOPIC = f"{topic}-dead-letters"
    group = f"{topic}-group"
    admin = admin_client()
    created = admin.create_topics(
        [
            NewTopic(name, num_partitions=1, replication_factor=1)
            for name in (topic, settings.KAFKA_DEAD_LETTER_TOPIC)
        ]
    )
    for future in created.values():
        future.result(30)
    job_id = str(uuid.uuid4())
    try:
        producer = Producer(producer_config())
        for value in (b"good", b"poison", b"good"):
            producer.produce(topic, key=job_id.encode(), value=value)
        assert producer.flush(30) == 0
        handled = []

        def handler(batch):
            handled.extend(message.value() for message in batch)
            if len(handled) == 3:
                runner.request_shutdown(None, None)
            return [
                Poison(message, "inference failed: poison image")
                for message in batch
                if message.value() == b"poison"
            ]

        consumer = Consumer(consumer_config(group))
        consumer.subscribe([topic])
        runner = BatchConsumer(consumer, handler, max_batch_size=3, max_batch_delay_ms=2_000)
        deadline = time.monotonic() + 60
        while not runner.shutdown and time.monotonic() < deadline:
            runner.process_one()
        consumer.close()
        assert handled == [b"good", b"poison", b"good"]

        [dead] = read_all(settings.KAFKA_DEAD_LETTER_TOPIC, 1)
        assert (dead.key(), dead.value()) == (job_id.encode(), b"poison")
        headers = dict(dead.headers())
        assert headers["error"] == b"inference failed: poison image"
        assert (headers["source_topic"], headers["source_partition"]) == (topic.encode(), b"0")
        assert headers["source_offset"] == b"1"
        # The whole batch, poison included, is committed: the partition moves on.
        reader = Consumer(consumer_config(group))
        try:
            [committed] = reader.committed([TopicPartition(topic, 0)], timeout=30)
        finally:
            reader.close()
        assert committed.offset == 3
    finally:
        admin.delete_topics([topic, settings.KAFKA_DEAD_LETTER_TOPIC])
