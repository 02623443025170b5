"""The workers' priority lanes (kafka_wire.runner.Lanes, LaneBatchConsumer): batches taken
high first with a share kept for the lower lanes, offsets stored and rewinds sent per
lane's consumer; against in-memory consumers."""

import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from common.lanes import HIGH, LOW, NORMAL
from kafka_wire.runner import POLL_TIMEOUT_S, LaneBatchConsumer, Lanes
from tests.test_runner_batching import FakeConsumer, FakeMessage

TOPICS = {HIGH: "requests-high", NORMAL: "requests", LOW: "requests-low"}


def lanes_of(counts: dict[str, int], *, at: float = 0.0, share: float = 1 / 8) -> Lanes:
    """Lanes whose consumers each have counts[lane] messages, arriving `at` seconds on."""
    return Lanes(
        {
            lane: (
                topic,
                FakeConsumer([(at, FakeMessage(topic, 0, i)) for i in range(counts.get(lane, 0))]),
            )
            for lane, topic in TOPICS.items()
        },
        share=share,
    )


def runner_of(lanes: Lanes, handler=lambda batch: None, **options) -> LaneBatchConsumer:
    options.setdefault("max_batch_size", 8)
    options.setdefault("max_batch_delay_ms", 50)
    return LaneBatchConsumer(lanes, handler, retry_backoff_s=0.0, **options)


def lanes_in(batch) -> list[str]:
    lane_of = {topic: lane for lane, topic in TOPICS.items()}
    return [lane_of[message.topic()] for message in batch]


def test_a_batch_takes_the_high_lane_first_and_keeps_a_share_for_each_waiting_lower_lane():
    runner = runner_of(lanes_of({HIGH: 40, NORMAL: 40, LOW: 40}))
    # 1/8 of a batch of 8 each for normal and low; the rest high, oldest first.
    batch = runner.poll_batch()
    assert lanes_in(batch) == [HIGH] * 6 + [NORMAL, LOW]
    assert [message.offset() for message in batch[:6]] == list(range(6))
    assert lanes_in(runner.poll_batch()) == [HIGH] * 6 + [NORMAL, LOW]


def test_a_lane_alone_fills_whole_batches():
    runner = runner_of(lanes_of({LOW: 20}))
    assert lanes_in(runner.poll_batch()) == [LOW] * 8


def test_high_requests_arriving_behind_a_low_backlog_go_into_the_next_batch():
    lanes = lanes_of({LOW: 100})
    urgent = FakeConsumer([(0.3, FakeMessage(TOPICS[HIGH], 0, i)) for i in range(3)])
    lanes.consumers[TOPICS[HIGH]] = urgent
    runner = runner_of(lanes)
    assert lanes_in(runner.poll_batch()) == [LOW] * 8
    time.sleep(0.35)
    assert lanes_in(runner.poll_batch()) == [HIGH] * 3 + [LOW] * 5


def test_offsets_are_stored_per_lanes_consumer_after_the_batch_is_handled():
    lanes = lanes_of({HIGH: 3, LOW: 2})
    handled = []
    runner = runner_of(lanes, handled.append)
    assert runner.process_one()
    assert lanes_in(handled[0]) == [HIGH] * 3 + [LOW] * 2
    assert lanes.consumers[TOPICS[HIGH]].stored == [[(TOPICS[HIGH], 0, 3)]]
    assert lanes.consumers[TOPICS[LOW]].stored == [[(TOPICS[LOW], 0, 2)]]
    assert lanes.consumers[TOPICS[NORMAL]].stored == []


def test_a_failed_batch_rewinds_each_lanes_consumer_and_drops_what_it_had_buffered_after():
    lanes = lanes_of({HIGH: 20, LOW: 20})

    def fail(batch):
        raise RuntimeError("results not delivered")

    runner = runner_of(lanes, fail)
    assert runner.process_one()
    assert lanes.consumers[TOPICS[HIGH]].seeks == [(TOPICS[HIGH], 0, 0)]
    assert lanes.consumers[TOPICS[LOW]].seeks == [(TOPICS[LOW], 0, 0)]
    # Fetched again after the seek: none of the buffered ones is handed out twice.
    assert lanes.waiting() == 0
    assert all(consumer.stored == [] for consumer in lanes.consumers.values())


def test_idle_lanes_give_an_empty_batch_after_the_poll_timeout():
    runner = runner_of(lanes_of({}))
    started = time.monotonic()
    assert runner.poll_batch() == []
    assert POLL_TIMEOUT_S <= time.monotonic() - started < POLL_TIMEOUT_S + 0.3


def test_closing_closes_every_lanes_consumer():
    lanes = lanes_of({})
    lanes.close()
    assert all(consumer.closed for consumer in lanes.consumers.values())


def test_a_revoked_partition_takes_its_buffered_messages_with_it():
    lanes = lanes_of({LOW: 20})
    lanes.fill(8, 0.0)
    assert lanes.waiting() == 8
    lanes.forget(None, [TopicPartition(TOPICS[LOW], 0)])
    assert lanes.waiting() == 0


def test_one_lanes_offsets_refused_leave_the_others_stored_and_say_so():
    lanes = lanes_of({HIGH: 2, LOW: 2})

    def refuse(*, offsets):
        raise KafkaException(KafkaError(KafkaError._STATE, "revoked"))

    lanes.consumers[TOPICS[HIGH]].store_offsets = refuse
    runner = runner_of(lanes)
    assert runner.process_one()
    # Logged by the runner; the low lane's batch is still marked handled.
    assert lanes.consumers[TOPICS[LOW]].stored == [[(TOPICS[LOW], 0, 2)]]
